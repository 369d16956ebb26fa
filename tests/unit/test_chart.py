"""The Helm chart, rendered with `helm template` for the main value combinations."""

from __future__ import annotations

import base64
import itertools
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from finetune_operator.settings import SECTION_OF, OperatorSettings, env_name
from tests.builders.chart import (
    CHART,
    CLUSTER_SCOPED,
    NAMESPACE,
    ROOT,
    metric_names,
    needed_grants,
    of_kind,
    one,
    render,
    render_fails,
    run_helm,
    value_args,
)

pytestmark = pytest.mark.unit

FULLNAME = "finetune-operator"
MONITORING_ON = {"monitoring": {"serviceMonitor": {"enabled": True},
                                "prometheusRule": {"enabled": True},
                                "dashboard": {"enabled": True}}}
COMBINATIONS: dict[str, dict[str, Any]] = {
    "defaults": {},
    "monitoring": MONITORING_ON,
    "no-crds": {"crds": {"install": False}},
    "namespaced": {"watchNamespaces": ["team-a", "team-b"]},
    "kueue": {"admission": {"mode": "kueue"}},
    "sharing": {"gpuSharing": {"deviceClass": "gpu-shared.example.com"}},
    "custom-classes": {
        "priorityClasses": {
            "bands": [{"name": "ft-urgent", "value": 9000}, {"name": "ft-batch", "value": 1000}],
            "preempting": ["ft-urgent"],
        },
        "defaultPriorityClass": "ft-batch",
    },
}


@pytest.fixture(scope="module")
def rendered() -> dict[str, list[dict[str, Any]]]:
    return {name: render(values) for name, values in COMBINATIONS.items()}


def deployment(docs: list[dict[str, Any]]) -> dict[str, Any]:
    return one(docs, "Deployment", FULLNAME)


def container(docs: list[dict[str, Any]]) -> dict[str, Any]:
    (c,) = deployment(docs)["spec"]["template"]["spec"]["containers"]
    return c


def env_of(docs: list[dict[str, Any]]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container(docs)["env"] if "value" in e}


# ---- lint -------------------------------------------------------------------------------

@pytest.mark.parametrize("combo", ["defaults", "monitoring", "namespaced", "kueue",
                                   "sharing"])
def test_helm_lint_strict_clean(combo: str) -> None:
    proc = run_helm("lint", "--strict", str(CHART), *value_args(COMBINATIONS[combo]))
    assert "0 chart(s) failed" in proc.stdout
    assert "[WARNING]" not in proc.stdout and "[ERROR]" not in proc.stdout, proc.stdout


# ---- RBAC -------------------------------------------------------------------------------

def rbac_rules(docs: list[dict[str, Any]]) -> list[tuple[str, dict[str, Any]]]:
    return [(d["metadata"]["name"], r) for d in docs if d["kind"] in ("Role", "ClusterRole")
            for r in d.get("rules", [])]


@pytest.mark.parametrize("combo", list(COMBINATIONS))
def test_rbac_has_no_wildcards(rendered: dict[str, list[dict[str, Any]]], combo: str) -> None:
    rules = rbac_rules(rendered[combo])
    assert rules
    for role, rule in rules:
        for key in ("verbs", "resources", "apiGroups", "resourceNames", "nonResourceURLs"):
            for item in rule.get(key, []):
                assert "*" not in item, f"{role}: wildcard in {key}: {rule}"


def grants(docs: list[dict[str, Any]], role: str) -> dict[tuple[str, str], set[str]]:
    out: dict[tuple[str, str], set[str]] = {}
    for name, rule in rbac_rules(docs):
        if name != role:
            continue
        for group in rule["apiGroups"]:
            for res in rule["resources"]:
                out.setdefault((group, res), set()).update(rule["verbs"])
    return out


READ = {"get", "list", "watch"}
LEADER_RULES = [
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"], "verbs": ["create"]},
    {"apiGroups": ["coordination.k8s.io"], "resources": ["leases"],
     "resourceNames": ["finetune-operator-leader"], "verbs": ["get", "update"]},
]
@pytest.mark.parametrize("combo", ["defaults", "kueue", "sharing"])
def test_operator_rbac_is_exactly_what_the_code_calls(
    rendered: dict[str, list[dict[str, Any]]], combo: str,
) -> None:
    """With admission.mode kueue the operator also gets exactly the Workload and
    ResourceFlavor calls of kueue/sync.py and its watches, with gpuSharing.deviceClass the DRA
    reads and the claim templates; without, none of them."""
    docs = rendered[combo]
    operator_roles = [FULLNAME, f"{FULLNAME}-cluster", f"{FULLNAME}-leader"]
    granted: dict[tuple[str, str], set[str]] = {}
    for role in operator_roles:
        for key, verbs in grants(docs, role).items():
            granted.setdefault(key, set()).update(verbs)
    needed = needed_grants(kueue=combo == "kueue", sharing=combo == "sharing")
    missing = {k: sorted(v - granted.get(k, set())) for k, v in needed.items()
               if v - granted.get(k, set())}
    extra = {k: sorted(v - needed.get(k, set())) for k, v in granted.items()
             if v - needed.get(k, set())}
    assert not missing and not extra, (
        "the chart's operator RBAC (templates/rbac.yaml) differs from the calls in "
        "kube/client.py:\n"
        f"  missing (the operator would get 403): {missing}\n"
        f"  granted but never called (remove): {extra}")
    # cluster-scoped resources can only be granted by the ClusterRoleBinding'd role
    namespaced = grants(docs, FULLNAME)
    assert not {res for (_, res) in namespaced} & CLUSTER_SCOPED, namespaced
    leader = one(docs, "Role", f"{FULLNAME}-leader")
    assert leader["metadata"]["namespace"] == NAMESPACE
    assert leader["rules"] == LEADER_RULES
    loop_src = (ROOT / "operator" / "finetune_operator" / "jobs" / "lease.py").read_text()
    assert f'LEASE_NAME = "{LEADER_RULES[1]["resourceNames"][0]}"' in loop_src
    # the operator takes the Lease's namespace from POD_NAMESPACE (downward API)
    (pod_ns,) = [e for e in container(docs)["env"] if e["name"] == "POD_NAMESPACE"]
    assert pod_ns["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    for _, rule in rbac_rules(docs):
        assert not {"bind", "escalate", "impersonate"} & set(rule["verbs"]), rule
        assert "secrets" not in rule.get("resources", []), rule  # (nonResourceURLs: none)


def test_rbac_diff_catches_a_drift(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The derivation is not vacuous: the operator's calls include its core writes."""
    needed = needed_grants()
    assert {"create", "delete"} <= needed[("", "pods")]
    assert "patch" in needed[("finetune.dev", "finetunejobs/status")]
    assert {"list", "watch"} <= needed[("", "nodes")]
    # no update (replace) of a job: the operator patches only a sweep's trials (an annotation)
    assert "update" not in grants(rendered["defaults"], FULLNAME)[
        ("finetune.dev", "finetunejobs")]


def test_user_roles_aggregate(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    edit = one(docs, "ClusterRole", f"{FULLNAME}-edit")
    view = one(docs, "ClusterRole", f"{FULLNAME}-view")
    # as Kueue: the editor is granted explicitly, not to everyone with the built-in edit role
    assert "rbac.authorization.k8s.io/aggregate-to-edit" not in edit["metadata"]["labels"]
    assert edit["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-admin"] == "true"
    assert view["metadata"]["labels"]["rbac.authorization.k8s.io/aggregate-to-view"] == "true"
    editor = {"create", "update", "patch", "delete", "get", "list", "watch"}
    # what `kubectl finetune` reads besides the finetune.dev kinds: describe (events, pods),
    # logs (pods/log), top (resourcequotas), list --queue (without the operator's Service, the
    # trainer ConfigMap naming an operator run outside the cluster); read-only, in the
    # namespace the role is bound in
    cli_reads = {("", r): READ for r in ("pods", "events", "resourcequotas", "configmaps")}
    cli_reads[("", "pods/log")] = {"get"}
    assert grants(docs, f"{FULLNAME}-edit") == {
        ("finetune.dev", "finetunejobs"): editor, ("finetune.dev", "finetunesweeps"): editor,
        ("finetune.dev", "modelservers"): editor,
        ("finetune.dev", "finetunejobs/status"): {"get"},
        ("finetune.dev", "finetunesweeps/status"): {"get"},
        ("finetune.dev", "modelservers/status"): {"get"}, **cli_reads,
        ("", "persistentvolumeclaims"): {"get", "list"}}  # kubectl finetune output
    assert grants(docs, f"{FULLNAME}-view") == {
        **{("finetune.dev", r): READ for r in ("finetunejobs", "finetunejobs/status",
                                               "finetunesweeps", "finetunesweeps/status",
                                               "modelservers", "modelservers/status")},
        **cli_reads}
    for role in (edit, view):  # never secrets, never a write outside finetune.dev
        for rule in role["rules"]:
            assert "secrets" not in rule["resources"], rule
            if rule["apiGroups"] != ["finetune.dev"]:
                assert set(rule["verbs"]) <= READ, rule
    opted = one(render({"rbac": {"aggregateEditToEdit": True, "aggregateEditToAdmin": False}}),
                "ClusterRole", f"{FULLNAME}-edit")["metadata"]["labels"]
    assert opted.get("rbac.authorization.k8s.io/aggregate-to-edit") == "true"
    assert "rbac.authorization.k8s.io/aggregate-to-admin" not in opted
    names = {d["metadata"]["name"] for d in of_kind(render({"rbac": {"userRoles": False}}),
                                                      "ClusterRole")}
    assert f"{FULLNAME}-edit" not in names and f"{FULLNAME}-view" not in names


def test_copy_out_is_opt_in_for_the_user_role() -> None:
    """rbac.copyOut adds exactly what the printed copy-out commands use (kubectl run, cp,
    delete pod) to the -edit role, and nothing to -view."""
    docs = render({"rbac": {"copyOut": True}})
    base = grants(render(), f"{FULLNAME}-edit")
    assert grants(docs, f"{FULLNAME}-edit") == {
        **base, ("", "pods"): base[("", "pods")] | {"create", "delete"},
        ("", "pods/exec"): {"create"}}
    assert grants(docs, f"{FULLNAME}-view") == grants(render(), f"{FULLNAME}-view")


def test_clusterwide_binding(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    crbs = {d["roleRef"]["name"]: d for d in of_kind(docs, "ClusterRoleBinding")}
    assert set(crbs) == {FULLNAME, f"{FULLNAME}-cluster", f"{FULLNAME}-metrics-reader"}
    for crb in (crbs[FULLNAME], crbs[f"{FULLNAME}-cluster"]):
        assert crb["subjects"] == [
            {"kind": "ServiceAccount", "name": FULLNAME, "namespace": NAMESPACE}]
    rbs = {d["roleRef"]["name"]: d for d in of_kind(docs, "RoleBinding")}
    assert set(rbs) == {f"{FULLNAME}-leader", f"{FULLNAME}-queue-proxy"}
    assert rbs[f"{FULLNAME}-leader"]["metadata"]["namespace"] == NAMESPACE
    assert one(docs, "ServiceAccount", FULLNAME)


def test_queue_proxy_reaches_the_report_service_only(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """`list --queue` from a laptop: get the report Service (the plugin finds it by name before
    any job was admitted) and services/proxy on its HTTPS port (by port name and number, as a
    client may write either), nothing else; the operator authorises each caller per namespace
    itself."""
    docs = rendered["defaults"]
    role = one(docs, "Role", f"{FULLNAME}-queue-proxy")
    service = one(docs, "Service", f"{FULLNAME}-reports")
    port = service["spec"]["ports"][0]
    assert role["metadata"]["namespace"] == NAMESPACE
    assert role["rules"] == [{
        "apiGroups": [""], "resources": ["services"], "verbs": ["get"],
        "resourceNames": [f"{FULLNAME}-reports"]}, {
        "apiGroups": [""], "resources": ["services/proxy"], "verbs": ["get"],
        "resourceNames": [f"https:{FULLNAME}-reports:{port['name']}",
                          f"https:{FULLNAME}-reports:{port['port']}"]}]
    # what the plugin looks the Service up by (cli/endpoint.py): the chart's labels and, for a
    # release named finetune-operator in finetune-system, its name
    from finetune_operator.cli import endpoint

    labels = service["metadata"]["labels"]
    assert dict(kv.split("=") for kv in endpoint.SERVICE_SELECTOR.split(",")).items() <= \
        labels.items()
    assert {p["name"] for p in service["spec"]["ports"]} == {endpoint.PORT_NAME}
    assert endpoint.DEFAULT_NAMESPACE == NAMESPACE
    assert service["metadata"]["name"] == endpoint.DEFAULT_SERVICE
    binding = one(docs, "RoleBinding", f"{FULLNAME}-queue-proxy")
    assert binding["subjects"] == [{"kind": "Group", "name": "system:authenticated",
                                    "apiGroup": "rbac.authorization.k8s.io"}]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    off = render({"rbac": {"queueProxy": {"subjects": []}}})
    assert not [d for d in off if d["metadata"]["name"] == f"{FULLNAME}-queue-proxy"]


def test_namespaced_watch_binds_per_namespace(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["namespaced"]
    assert {d["roleRef"]["name"] for d in of_kind(docs, "ClusterRoleBinding")} == {
        f"{FULLNAME}-cluster", f"{FULLNAME}-metrics-reader"}
    rbs = [rb for rb in of_kind(docs, "RoleBinding") if rb["roleRef"]["kind"] == "ClusterRole"]
    assert sorted(rb["metadata"]["namespace"] for rb in rbs) == ["team-a", "team-b"]
    for rb in rbs:
        assert rb["roleRef"] == {"apiGroup": "rbac.authorization.k8s.io",
                                 "kind": "ClusterRole", "name": FULLNAME}
        assert rb["subjects"][0]["namespace"] == NAMESPACE
    assert env_of(docs)["FINETUNE_NAMESPACES"] == "team-a,team-b"


def test_existing_service_account() -> None:
    docs = render({"serviceAccount": {"create": False, "name": "ops-sa"}})
    assert of_kind(docs, "ServiceAccount") == []
    assert deployment(docs)["spec"]["template"]["spec"]["serviceAccountName"] == "ops-sa"
    assert {s["name"] for d in of_kind(docs, "ClusterRoleBinding") for s in d["subjects"]
            if d["roleRef"]["name"] != f"{FULLNAME}-metrics-reader"} == {"ops-sa"}
    assert "serviceAccount.name is required" in render_fails(
        {"serviceAccount": {"create": False}})


# ---- Deployment -------------------------------------------------------------------------

@pytest.mark.parametrize("combo", list(COMBINATIONS))
def test_deployment_leader_and_standby_restricted(
    rendered: dict[str, list[dict[str, Any]]], combo: str
) -> None:
    dep = deployment(rendered[combo])
    assert dep["spec"]["replicas"] == 2  # a leader and a warm standby (the Lease decides)
    assert dep["spec"]["strategy"] == {
        "type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}}
    pod = dep["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] != 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod)
    assert all("hostPath" not in v for v in pod.get("volumes", []))
    c = container(rendered[combo])
    sc = c["securityContext"]
    assert sc["allowPrivilegeEscalation"] is False
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["runAsNonRoot"] is True
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    assert "privileged" not in sc
    assert c["command"] == ["finetune-operator"]
    assert c["resources"]["requests"] and c["resources"]["limits"]["memory"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": 8080, "health": 8081, "reports": 8443}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}


def test_env_is_the_operator_settings_1to1(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(rendered["defaults"])
    finetune = {k: v for k, v in env.items() if k.startswith("FINETUNE_")}
    assert set(finetune) == {env_name(f) for f in SECTION_OF}
    # The chart's defaults are the operator's defaults, except three on purpose: installed by
    # the chart, no namespace may use the preempting band until the platform team grants it,
    # trainers report to the chart's own Service, with the chart's certificate.
    chart = OperatorSettings.from_env(finetune)
    bare = OperatorSettings()
    assert chart.admission.allowed_priority_classes == [
        c for c in bare.admission.allowed_priority_classes
        if c not in bare.admission.preempting_priority_classes]
    assert chart.reports.report_url == f"https://{FULLNAME}-reports.{NAMESPACE}.svc:8443/v1/reports"
    # and every replica serves the chart's report certificate (not one made per process)
    tls = ("report_tls_cert_file", "report_tls_key_file", "report_tls_ca_file")
    assert [chart.value(f) for f in tls] == [
        f"/etc/finetune/reports-tls/{f}" for f in ("tls.crt", "tls.key", "ca.crt")]
    assert chart.replace(allowed_priority_classes=bare.admission.allowed_priority_classes,
                         report_url=bare.reports.report_url,
                         **{f: bare.value(f) for f in tls}) == bare


def test_env_follows_values() -> None:
    values = {
        "watchNamespaces": ["team-a"],
        "allowedPriorityClasses": ["finetune-high", "finetune-low"],
        "namespacePriorityClasses": {"team-a": ["finetune-low"]},
        "defaultPriorityClass": "finetune-low",
        "priorityClasses": {"preempting": ["finetune-critical", "finetune-high"]},
        "queue": {"agingRatePerMinute": 2.5, "agingCap": 1500000,
                  "maxRunningJobsPerNamespace": 3, "admissionIntervalSeconds": 0.5,
                  "minCycleIntervalSeconds": 0.1, "maxConcurrentWrites": 4,
                  "progressWriteIntervalSeconds": 7, "queueStatusIntervalSeconds": 11},
        "preemption": {"minRuntimeBeforePreemptionSeconds": 90},
        "jobs": {"podsReadyTimeoutSeconds": 120, "maxPodsReadyRequeues": 1,
                 "forceDeleteMarginSeconds": 5, "unschedulableGraceSeconds": 30,
                 "maxGpusPerNode": 8, "ttlSecondsAfterFinished": 3600, "sweeps": False},
        "leaderElection": {"leaseDurationSeconds": 30, "renewSeconds": 10, "retrySeconds": 3},
        "apiTimeoutSeconds": 20,
        "apiQps": 50,
        "apiBurst": 100,
        "healthStaleCycles": 4,
        "trainer": {"image": {"repository": "registry.example/acme/trainer", "tag": "1.2.3"},
                    "gpuResource": "nvidia.com/mig-1g.10gb", "gracePeriodSeconds": 240,
                    "backoffBaseSeconds": 5, "serviceAccount": "trainers"},
        "ports": {"metrics": 9090, "health": 9091, "reports": 9443},
        "reports": {"audience": "ft.example/reports", "tls": {"secretName": "reports-cert"}},
    }
    docs = render(values)
    env = {k: v for k, v in env_of(docs).items() if k.startswith("FINETUNE_")}
    s = OperatorSettings.from_env(env)
    assert s == OperatorSettings(
        namespaces=["team-a"],
        allowed_priority_classes=["finetune-high", "finetune-low"],
        namespace_priority_classes={"team-a": ["finetune-low"]},
        default_priority_class="finetune-low",
        preempting_priority_classes=["finetune-critical", "finetune-high"],
        aging_rate_per_minute=2.5, aging_cap=1500000, max_running_jobs_per_namespace=3,
        admission_interval_seconds=0.5, min_runtime_before_preemption_seconds=90,
        trainer_image="registry.example/acme/trainer:1.2.3", gpu_resource="nvidia.com/mig-1g.10gb",
        grace_period_seconds=240, backoff_base_seconds=5, metrics_port=9090, health_port=9091,
        min_cycle_interval_seconds=0.1, max_concurrent_writes=4,
        progress_write_interval_seconds=7, queue_status_interval_seconds=11,
        pods_ready_timeout_seconds=120, max_pods_ready_requeues=1,
        force_delete_margin_seconds=5, unschedulable_grace_seconds=30, max_gpus_per_node=8,
        ttl_seconds_after_finished=3600, sweeps=False, lease_duration_seconds=30,
        lease_renew_seconds=10, lease_retry_seconds=3, api_timeout_seconds=20,
        api_qps=50, api_burst=100,
        health_stale_cycles=4, trainer_service_account="trainers", report_port=9443,
        report_url=f"https://{FULLNAME}-reports.{NAMESPACE}.svc:9443/v1/reports",
        report_audience="ft.example/reports",
        report_tls_cert_file="/etc/finetune/reports-tls/tls.crt",
        report_tls_key_file="/etc/finetune/reports-tls/tls.key",
        report_tls_ca_file="/etc/finetune/reports-tls/ca.crt",
    )
    ports = {p["name"]: p["containerPort"] for p in container(docs)["ports"]}
    assert ports == {"metrics": 9090, "health": 9091, "reports": 9443}
    svc = one(docs, "Service", f"{FULLNAME}-metrics")
    assert svc["spec"]["ports"][0]["port"] == 9090
    assert one(docs, "Service", f"{FULLNAME}-reports")["spec"]["ports"][0]["port"] == 9443
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert {"name": "reports-tls", "secret": {"secretName": "reports-cert"}} in pod["volumes"]
    assert {"name": "reports-tls", "mountPath": "/etc/finetune/reports-tls",
            "readOnly": True} in container(docs)["volumeMounts"]
    url = "https://reports.example:443/v1/reports"
    other = env_of(render({"reports": {"url": url}}))
    assert other["FINETUNE_REPORT_URL"] == url


def registry_host(image: str) -> str | None:
    """The registry host of an image reference (the first component when it looks like one)."""
    first, slash, _ = image.partition("/")
    return first if slash and ("." in first or ":" in first or first == "localhost") else None


def test_default_images(rendered: dict[str, list[dict[str, Any]]]) -> None:
    env = env_of(rendered["defaults"])
    # the operator's own image is the admin's to resolve (the runtime's registries)
    assert container(rendered["defaults"])["image"] == "finetune-operator/operator:0.1.0"
    assert registry_host("finetune-operator/operator:0.1.0") is None
    # the image tenants' jobs run by default (and may name): fully qualified, so no namesake on
    # another registry (Docker Hub for a short name) can stand in for it
    assert env["FINETUNE_TRAINER_IMAGE"] == "localhost/finetune-operator/trainer:0.1.0"
    assert registry_host(env["FINETUNE_TRAINER_IMAGE"]) == "localhost"
    assert OperatorSettings().trainer.trainer_image == env["FINETUNE_TRAINER_IMAGE"]


# ---- PriorityClasses ------------------------------------------------------------------------

def test_default_priority_classes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    pcs = {d["metadata"]["name"]: d for d in of_kind(rendered["defaults"], "PriorityClass")}
    assert list(pcs) == ["finetune-critical", "finetune-high", "finetune-normal", "finetune-low"]
    assert [pc["value"] for pc in pcs.values()] == [10000, 7500, 5000, 2500]
    # one preemptor: the kube-scheduler never evicts anything for a FineTuneJob's pod
    assert {pc["preemptionPolicy"] for pc in pcs.values()} == {"Never"}
    assert env_of(rendered["defaults"])["FINETUNE_PREEMPTING_PRIORITY_CLASSES"] == \
        "finetune-critical"
    assert all(pc["globalDefault"] is False for pc in pcs.values())
    # bands leave room for aging: gaps exceed the default aging cap
    values = sorted(pc["value"] for pc in pcs.values())
    assert min(b - a for a, b in itertools.pairwise(values)) > 999


def test_kueue_mode_mirrors_each_band_as_a_workload_priority_class(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """admission.mode kueue: the setting reaches the operator, and Kueue gets a
    WorkloadPriorityClass per band with the band's value (kueue/workload.py names it)."""
    assert env_of(rendered["defaults"])["FINETUNE_ADMISSION_MODE"] == "native"
    assert not of_kind(rendered["defaults"], "WorkloadPriorityClass")
    docs = rendered["kueue"]
    assert env_of(docs)["FINETUNE_ADMISSION_MODE"] == "kueue"
    pcs = {d["metadata"]["name"]: d["value"] for d in of_kind(docs, "PriorityClass")}
    wpcs = {d["metadata"]["name"]: d["value"] for d in of_kind(docs, "WorkloadPriorityClass")}
    assert wpcs == pcs and len(wpcs) == 4


def test_custom_priority_classes(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["custom-classes"]
    pcs = {d["metadata"]["name"]: d for d in of_kind(docs, "PriorityClass")}
    assert {n: (pc["value"], pc["preemptionPolicy"]) for n, pc in pcs.items()} == {
        "ft-urgent": (9000, "Never"), "ft-batch": (1000, "Never")}
    env = env_of(docs)
    assert env["FINETUNE_ALLOWED_PRIORITY_CLASSES"] == "ft-batch"  # the preempting band: granted
    assert env["FINETUNE_PREEMPTING_PRIORITY_CLASSES"] == "ft-urgent"
    assert env["FINETUNE_DEFAULT_PRIORITY_CLASS"] == "ft-batch"


def test_priority_classes_not_created_when_disabled() -> None:
    docs = render({"priorityClasses": {"create": False}})
    assert of_kind(docs, "PriorityClass") == []
    assert env_of(docs)["FINETUNE_ALLOWED_PRIORITY_CLASSES"] == \
        "finetune-high,finetune-normal,finetune-low"


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"defaultPriorityClass": "system-cluster-critical"},
         "defaultPriorityClass \"system-cluster-critical\" is not in the allowed classes"),
        ({"priorityClasses": {"preempting": ["finetune-urgent"]}},
         "priorityClasses.preempting names \"finetune-urgent\", which is not in"),
        ({"ports": {"metrics": 8080, "health": 8080, "reports": 8443}},
         "give each its own port"),
        ({"replicaCount": 2, "podDisruptionBudget": {"minAvailable": 2}},
         "podDisruptionBudget.minAvailable (2) must be below replicaCount (2)"),
        ({"ports": {"metrics": 8080, "health": 8081, "reports": 8081}},
         "give each its own port"),
        ({"priorityClasses": {"preempting": ["finetune-critical", "finetune-high",
                                             "finetune-normal", "finetune-low"]}},
         "is not in the allowed classes"),
        ({"trainer": {"image": {"repository": "finetune-operator/trainer"}}},
         "trainer.image.repository \"finetune-operator/trainer\" does not start with a registry"),
        ({"trainer": {"image": {"repository": "trainer"}}}, "does not start with a registry host"),
    ],
)
def test_inconsistent_values_fail_with_reason(values: dict[str, Any], message: str) -> None:
    assert message in render_fails(values)


# ---- apply-time policy, network, disruption, helm test ---------------------------------------

def policy_values(docs: list[dict[str, Any]]) -> dict[str, Any]:
    """The values rendered into the policy: its variables whose expression is a JSON literal."""
    vap = one(docs, "ValidatingAdmissionPolicy", f"{FULLNAME}-jobs")
    out: dict[str, Any] = {}
    for var in vap["spec"]["variables"]:
        try:
            out[var["name"]] = json.loads(var["expression"])
        except json.JSONDecodeError:
            continue
    return out


def test_policy_default_withholds_the_preempting_band(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["defaults"]
    assert policy_values(docs) == {
        "allowedClasses": ["finetune-high", "finetune-normal", "finetune-low"],
        "namespaceClasses": {},
        "prefixes": [],
        "defaultRepository": "localhost/finetune-operator/trainer",
        "defaultImagePattern": "^localhost/finetune-operator/trainer(:[A-Za-z0-9_][A-Za-z0-9_.-]"
                               "{0,127}(@sha256:[0-9a-f]{64})?|@sha256:[0-9a-f]{64})$",
        "imageFromPodCreators": True,
        "tolerationKeys": ["nvidia.com/gpu"],
        "nodeSelectorKeys": ["kubernetes.io/arch", "node.kubernetes.io/instance-type",
                             "topology.kubernetes.io/zone", "nvidia.com/gpu.product",
                             "nvidia.com/gpu.memory"],
        "gpuResources": ["nvidia.com/gpu", "nvidia.com/mig-*"],
        "maxStorageSize": "1Ti",
        "storageClasses": [],
        "checkedPaths": [
            "image", "priorityClassName", "resources.gpuResource", "checkpoint.storage.size",
            "checkpoint.storage.storageClassName", "model.source.hub.tokenSecretRef.name",
            "dataset.source.hub.tokenSecretRef.name", "model.source.pvc.claimName",
            "dataset.source.pvc.claimName", "checkpoint.storage.claimName",
            "dataset.source.configMap.name", "evaluation.dataset.source.hub.tokenSecretRef.name",
            "evaluation.dataset.source.pvc.claimName", "evaluation.dataset.source.configMap.name",
            "model.source.s3.credentialsSecret", "dataset.source.s3.credentialsSecret",
            "evaluation.dataset.source.s3.credentialsSecret", "output.s3.credentialsSecret"],
    }
    from finetune_api.sweep import FIELD_PATHS  # every checked path can be swept
    assert set(policy_values(docs)["checkedPaths"]) <= set(FIELD_PATHS)
    # the operator enforces the same list
    assert env_of(docs)["FINETUNE_ALLOWED_PRIORITY_CLASSES"].split(",") == \
        policy_values(docs)["allowedClasses"]
    vap = one(docs, "ValidatingAdmissionPolicy", f"{FULLNAME}-jobs")
    assert vap["spec"]["failurePolicy"] == "Fail"
    assert "paramKind" not in vap["spec"]  # see the template: params can get lost upstream
    (rule,) = vap["spec"]["matchConstraints"]["resourceRules"]
    assert rule["resources"] == ["finetunejobs", "finetunesweeps"]
    assert set(rule["operations"]) == {"CREATE", "UPDATE"}
    (cond,) = vap["spec"]["matchConditions"]  # the operator's own trials were checked as a sweep
    assert f"system:serviceaccount:{NAMESPACE}:{FULLNAME}'" in cond["expression"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding", f"{FULLNAME}-jobs")
    assert binding["spec"] == {"policyName": f"{FULLNAME}-jobs", "validationActions": ["Deny"]}
    text = json.dumps(vap["spec"])
    for field in ("spec.priorityClassName", "spec.image", "tokenSecretRef", "claimName",
                  "configMap", "spec.resources.tolerations", "spec.resources.nodeSelector",
                  "resources.gpuResource", "checkpoint.storage.size",
                  "checkpoint.storage.storageClassName"):
        assert field in text, field


def test_policy_follows_values() -> None:
    docs = render({
        "namespacePriorityClasses": {"team-a": ["finetune-critical", "finetune-normal"]},
        "watchNamespaces": ["team-a", "team-b"],
        "trainer": {"image": {"repository": "registry.example/acme/trainer"},
                    "gpuResource": "example.com/tpu"},
        "policy": {"imagePrefixes": ["registry.example/ml/"], "imageFromPodCreators": False,
                   "tolerationKeys": [], "nodeSelectorKeys": ["pool"], "enabled": True,
                   "gpuResources": ["nvidia.com/mig-*"], "maxCheckpointStorageSize": "",
                   "checkpointStorageClasses": ["fast-ssd"]},
    })
    vals = policy_values(docs)
    assert vals["namespaceClasses"] == {"team-a": ["finetune-critical", "finetune-normal"]}
    assert vals["prefixes"] == ["registry.example/ml/"]
    assert vals["defaultRepository"] == "registry.example/acme/trainer"
    # the operator's default GPU resource is always allowed
    assert vals["gpuResources"] == ["nvidia.com/mig-*", "example.com/tpu"]
    assert vals["maxStorageSize"] == "" and vals["storageClasses"] == ["fast-ssd"]
    assert vals["imageFromPodCreators"] is False
    assert vals["tolerationKeys"] == [] and vals["nodeSelectorKeys"] == ["pool"]
    binding = one(docs, "ValidatingAdmissionPolicyBinding")
    assert binding["spec"]["matchResources"]["namespaceSelector"]["matchExpressions"] == [
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": ["team-a", "team-b"]}]
    off = render({"policy": {"enabled": False, "imagePrefixes": [], "imageFromPodCreators": True,
                             "tolerationKeys": [], "nodeSelectorKeys": []}})
    for kind in ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"):
        assert of_kind(off, kind) == []


def test_default_image_is_matched_as_a_whole_reference() -> None:
    repo = "registry.example/acme/trainer"
    pattern = policy_values(render({"trainer": {"image": {"repository": repo}}}))[
        "defaultImagePattern"]
    digest = "@sha256:" + "a" * 64
    cases = {
        f"{repo}:1.2.3": True, f"{repo}{digest}": True, f"{repo}:1.2.3{digest}": True,
        repo: False,                          # no tag: whatever "latest" is that day
        f"{repo}-evil:1": False, f"{repo}/evil:1": False, f"{repo}:1/evil": False,
        "registryXexample/acme/trainer:1": False,   # the dot is a dot
        f"{repo}:1 evil": False, f"{repo}:-1": False, f"{repo}@sha256:abc": False,
        f"evil.example/{repo}:1": False,
    }
    # RE2 (CEL matches()) and Python agree on this subset: anchors, classes, counted repeats
    assert {image: re.search(pattern, image) is not None for image in cases} == cases


def test_policy_reference_checks(rendered: dict[str, list[dict[str, Any]]]) -> None:
    vap = one(rendered["defaults"], "ValidatingAdmissionPolicy", f"{FULLNAME}-jobs")
    refs = {m.group(1): v for v in vap["spec"]["validations"]
            if (m := re.search(r"'([\w.]+) names ", v["messageExpression"]))}
    assert len(refs) == 13  # 9 + the four S3 credentialsSecret references
    for path, v in refs.items():
        verbs = re.findall(r"\.check\('(\w+)'\)", v["expression"])
        # the checkpoint claim is mounted read-write: get is not enough
        assert verbs == (["get", "update"] if path == "checkpoint.storage.claimName"
                         else ["get"]), path
        # an unchanged reference passes only when the spec did not change at all
        assert "&& !variables.edited)" in v["expression"], path
    (edited,) = [var for var in vap["spec"]["variables"] if var["name"] == "edited"]
    assert edited["expression"] == "!variables.create && object.spec != oldObject.spec"


def test_network_policy_guards_metrics_and_opens_reports(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    docs = rendered["defaults"]
    netpol = one(docs, "NetworkPolicy", FULLNAME)
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert netpol["spec"]["podSelector"]["matchLabels"].items() <= pod_labels.items()
    assert netpol["spec"]["policyTypes"] == ["Ingress"]
    by_port = {r["ports"][0]["port"]: r.get("from") for r in netpol["spec"]["ingress"]}
    assert set(by_port) == {"metrics", "reports"}  # health: nothing (kubelet probes from node)
    assert by_port["metrics"] == [{
        "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
        "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    # any source: trainer pods of every namespace and the API server's service proxy (not a
    # pod: `kubectl finetune list --queue`); the operator authenticates every request itself
    assert by_port["reports"] is None
    names = {p["name"] for p in container(docs)["ports"]}
    assert set(by_port) <= names
    reports = one(docs, "Service", f"{FULLNAME}-reports")
    assert reports["spec"]["ports"] == [{"name": "reports", "port": 8443,
                                         "targetPort": "reports", "protocol": "TCP"}]
    assert reports["spec"]["selector"].items() <= pod_labels.items()
    assert of_kind(render({"networkPolicy": {"enabled": False, "prometheus": {
        "namespace": "monitoring", "podLabels": {}}}}), "NetworkPolicy") == []


def test_pdb_and_helm_test_pod(rendered: dict[str, list[dict[str, Any]]]) -> None:
    docs = rendered["defaults"]
    pdb = one(docs, "PodDisruptionBudget", FULLNAME)
    pod_labels = deployment(docs)["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb["spec"]["minAvailable"] == 1 and "maxUnavailable" not in pdb["spec"]
    test_pod = one(docs, "Pod", f"{FULLNAME}-test-api")
    assert test_pod["metadata"]["annotations"]["helm.sh/hook"] == "test"
    spec = test_pod["spec"]
    assert spec["serviceAccountName"] == FULLNAME and spec["restartPolicy"] == "Never"
    (c,) = spec["containers"]
    assert c["image"] == container(docs)["image"]
    assert c["securityContext"]["allowPrivilegeEscalation"] is False
    script = c["command"][-1]
    compile(script, "helm-test", "exec")  # valid Python
    assert "finetunejobs.finetune.dev" in script and "list_cluster_custom_object" in script
    ns_docs = rendered["namespaced"]
    assert "ns = \"team-a\"" in one(ns_docs, "Pod")["spec"]["containers"][0]["command"][-1]


def test_replicas_spread_across_nodes_and_keep_one_through_drains(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """High availability: the replicas prefer different nodes (soft: a one-node cluster still
    runs them all), and a drain evicts one only while another is ready; 1 replica, no PDB."""
    spec = deployment(rendered["defaults"])["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    (spread,) = spec["template"]["spec"]["topologySpreadConstraints"]
    assert (spread["topologyKey"], spread["whenUnsatisfiable"], spread["maxSkew"]) == (
        "kubernetes.io/hostname", "ScheduleAnyway", 1)
    assert spread["labelSelector"]["matchLabels"].items() <= pod_labels.items()
    assert spread["matchLabelKeys"] == ["pod-template-hash"]  # a rollout spreads its own pods
    three = render({"replicaCount": 3, "podDisruptionBudget": {"minAvailable": 2}})
    assert deployment(three)["spec"]["replicas"] == 3
    assert one(three, "PodDisruptionBudget", FULLNAME)["spec"]["minAvailable"] == 2
    single = render({"replicaCount": 1})
    assert deployment(single)["spec"]["replicas"] == 1
    assert of_kind(single, "PodDisruptionBudget") == []


def report_tls_secret(docs: list[dict[str, Any]]) -> dict[str, bytes]:
    secret = one(docs, "Secret", f"{FULLNAME}-reports-tls")
    assert secret["type"] == "kubernetes.io/tls"
    return {k: base64.b64decode(v) for k, v in secret["data"].items()}


def test_one_report_certificate_for_every_replica(
        rendered: dict[str, list[dict[str, Any]]]) -> None:
    """Every replica serves the chart's certificate, so a trainer configured by one leader
    still verifies the next one; it names the reports URL's host and its key is the cert's."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    docs = rendered["defaults"]
    data = report_tls_secret(docs)
    cert = x509.load_pem_x509_certificate(data["tls.crt"])
    cert.verify_directly_issued_by(x509.load_pem_x509_certificate(data["ca.crt"]))
    key = serialization.load_pem_private_key(data["tls.key"], None)
    assert key.public_key() == cert.public_key()
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == [f"{FULLNAME}-reports.{NAMESPACE}.svc",
                                                     "localhost"]  # as reports/tls.py makes
    assert [str(ip) for ip in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert {"name": "reports-tls", "secret": {"secretName": f"{FULLNAME}-reports-tls"}} \
        in pod["volumes"]
    other = report_tls_secret(render({"reports": {"url": "https://reports.example/v1/r"}}))
    san = x509.load_pem_x509_certificate(other["tls.crt"]).extensions.get_extension_for_class(
        x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["reports.example", "localhost"]
    named = render({"reports": {"tls": {"secretName": "reports-cert"}}})
    assert [d for d in of_kind(named, "Secret") if "reports" in d["metadata"]["name"]] == []


# ---- CRD --------------------------------------------------------------------------------

CRD_SOURCES = sorted((ROOT / "crds").glob("*.yaml"))  # `make crd`: every kind the operator serves
CRD_COPIES = CHART / "files" / "crds"


def test_chart_crds_are_the_generated_crds_byte_for_byte() -> None:
    from finetune_api.server import SERVER_PLURAL
    from finetune_api.sweep import SWEEP_PLURAL
    from finetune_operator.kube.client import GROUP, PLURAL

    assert [p.name for p in CRD_SOURCES] == [f"{PLURAL}.{GROUP}.yaml",
                                             f"{SWEEP_PLURAL}.{GROUP}.yaml",
                                             f"{SERVER_PLURAL}.{GROUP}.yaml"]
    for source in CRD_SOURCES:
        copy = CRD_COPIES / source.name
        assert copy.is_file(), f"{copy} missing: run scripts/sync-chart-crd.sh (make crd does)"
        assert copy.read_bytes() == source.read_bytes(), (
            f"the chart's {source.name} differs from crds/: run scripts/sync-chart-crd.sh "
            "(make crd does)")


def test_every_crd_rendered_with_keep_policy(rendered: dict[str, list[dict[str, Any]]]) -> None:
    """The chart installs (and, as a template, upgrades) every CRD in crds/: a sweep applied
    after `helm install` finds its kind (tests/cluster/test_helm_install.py applies one)."""
    crds = of_kind(rendered["defaults"], "CustomResourceDefinition")
    assert sorted(c["metadata"]["name"] for c in crds) == [p.stem for p in CRD_SOURCES]
    for source in CRD_SOURCES:
        crd = one(crds, "CustomResourceDefinition", source.stem)
        generated = yaml.safe_load(source.read_text())
        assert crd["spec"] == generated["spec"]  # copied verbatim
        assert crd["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
        assert generated["metadata"].get("labels", {}).items() <= \
            crd["metadata"]["labels"].items()
        assert crd["metadata"]["labels"]["app.kubernetes.io/managed-by"] == "Helm"
    kinds = {c["spec"]["names"]["kind"] for c in crds}
    assert kinds == {"FineTuneJob", "FineTuneSweep", "ModelServer"}
    for unkept in of_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition"):
        assert "helm.sh/resource-policy" not in unkept["metadata"].get("annotations", {})
    assert len(of_kind(render({"crds": {"keep": False}}), "CustomResourceDefinition")) == 3
    assert of_kind(rendered["no-crds"], "CustomResourceDefinition") == []


# ---- monitoring ---------------------------------------------------------------------------

def test_monitoring_objects_only_when_enabled(rendered: dict[str, list[dict[str, Any]]]) -> None:
    for kind in ("ServiceMonitor", "PrometheusRule"):
        assert of_kind(rendered["defaults"], kind) == []
    assert of_kind(rendered["defaults"], "ConfigMap") == []
    docs = rendered["monitoring"]
    sm = one(docs, "ServiceMonitor")
    svc = one(docs, "Service", f"{FULLNAME}-metrics")
    assert sm["spec"]["selector"]["matchLabels"].items() <= svc["metadata"]["labels"].items()
    assert svc["spec"]["selector"].items() <= (
        deployment(docs)["spec"]["template"]["metadata"]["labels"].items())
    (endpoint,) = sm["spec"]["endpoints"]
    assert endpoint["port"] == svc["spec"]["ports"][0]["name"] == "metrics"
    assert endpoint["honorLabels"] is True  # keep the FineTuneJob's namespace/job labels
    rule = one(docs, "PrometheusRule")
    alerts = {r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]}
    assert alerts == {"FineTuneJobStuckInQueue", "FineTuneCheckpointTooOld",
                      "FineTuneFailureRateHigh"}


def test_metrics_are_scraped_over_https_by_bound_readers_only(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    """/metrics wants a token allowed to get /metrics: the chart's reader role grants exactly
    that to metrics.readers, and its ServiceMonitor presents Prometheus's token over HTTPS."""
    docs = rendered["monitoring"]
    role = one(docs, "ClusterRole", f"{FULLNAME}-metrics-reader")
    assert role["rules"] == [{"nonResourceURLs": ["/metrics"], "verbs": ["get"]}]
    binding = one(docs, "ClusterRoleBinding", f"{FULLNAME}-metrics-reader")
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "prometheus-k8s", "namespace": "monitoring"}]
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["scheme"] == "https"
    assert endpoint["bearerTokenFile"] == "/var/run/secrets/kubernetes.io/serviceaccount/token"
    assert endpoint["tlsConfig"] == {  # the report channel's certificate, verified
        "ca": {"secret": {"name": f"{FULLNAME}-reports-tls", "key": "ca.crt"}},
        "serverName": f"{FULLNAME}-reports.{NAMESPACE}.svc"}
    env = env_of(docs)
    assert env["FINETUNE_METRICS_TLS_CERT_FILE"] == env["FINETUNE_METRICS_TLS_KEY_FILE"] == ""

    docs = render({**MONITORING_ON, "metrics": {
        "tls": {"secretName": "metrics-cert"},
        "readers": [{"namespace": "obs", "name": "prom-a"}, {"namespace": "obs", "name": "b"}]}})
    (endpoint,) = one(docs, "ServiceMonitor")["spec"]["endpoints"]
    assert endpoint["tlsConfig"] == {
        "ca": {"secret": {"name": "metrics-cert", "key": "ca.crt"}},
        "serverName": f"{FULLNAME}-metrics.{NAMESPACE}.svc"}
    env = env_of(docs)
    assert env["FINETUNE_METRICS_TLS_CERT_FILE"] == "/etc/finetune/metrics-tls/tls.crt"
    assert env["FINETUNE_METRICS_TLS_KEY_FILE"] == "/etc/finetune/metrics-tls/tls.key"
    pod = deployment(docs)["spec"]["template"]["spec"]
    assert {"name": "metrics-tls", "secret": {"secretName": "metrics-cert"}} in pod["volumes"]
    assert {"name": "metrics-tls", "mountPath": "/etc/finetune/metrics-tls",
            "readOnly": True} in container(docs)["volumeMounts"]
    assert [s["name"] for s in one(docs, "ClusterRoleBinding", f"{FULLNAME}-metrics-reader")[
        "subjects"]] == ["prom-a", "b"]
    # no readers: the role stays (bind it yourself), no binding
    docs = render({"metrics": {"readers": []}})
    assert one(docs, "ClusterRole", f"{FULLNAME}-metrics-reader")
    assert f"{FULLNAME}-metrics-reader" not in {
        d["metadata"]["name"] for d in of_kind(docs, "ClusterRoleBinding")}


def test_monitoring_extra_labels() -> None:
    docs = render({"monitoring": {
        "serviceMonitor": {"enabled": True, "labels": {"release": "kps"}},
        "prometheusRule": {"enabled": True, "labels": {"release": "kps"}},
        "alerts": {"labels": {"team": "ml-platform"}}}})
    assert one(docs, "ServiceMonitor")["metadata"]["labels"]["release"] == "kps"
    rule = one(docs, "PrometheusRule")
    assert rule["metadata"]["labels"]["release"] == "kps"
    for r in rule["spec"]["groups"][0]["rules"]:
        assert r["labels"]["team"] == "ml-platform" and r["labels"]["severity"] == "warning"


DASHBOARD = CHART / "dashboards" / "finetune.json"


def test_dashboard_configmap_for_grafana_sidecar(
    rendered: dict[str, list[dict[str, Any]]],
) -> None:
    cm = one(rendered["monitoring"], "ConfigMap", f"{FULLNAME}-dashboard")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(cm["data"]["finetune.json"]) == json.loads(DASHBOARD.read_text())
    other = render({"monitoring": {"dashboard": {"enabled": True, "namespace": "grafana"}}})
    assert one(other, "ConfigMap", f"{FULLNAME}-dashboard")["metadata"]["namespace"] == "grafana"


def test_dashboard_queries_use_real_metrics_and_cover_the_topics() -> None:
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    used = {m for e in exprs for m in re.findall(r"\bfinetune_[a-z_]+", e)}
    assert used <= metric_names(), f"unknown metrics: {sorted(used - metric_names())}"
    text = "\n".join(exprs)
    for needle in (
        "finetune_queue_depth", "histogram_quantile(0.5", "histogram_quantile(0.95",
        "finetune_admission_wait_seconds_bucket", "finetune_gpus_allocated",
        "finetune_gpu_quota", "finetune_job_step", "finetune_job_total_steps",
        "finetune_job_loss", "finetune_preemptions_total", "finetune_lost_work_gpu_seconds_total",
        "time() - max by (namespace, job) (finetune_job_last_checkpoint_timestamp_seconds",
    ):
        assert needle in text, f"dashboard has no panel using {needle}"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    assert {v["name"] for v in dash["templating"]["list"]} == {"datasource", "namespace"}


# ---- values schema ------------------------------------------------------------------------

SCHEMA = json.loads((CHART / "values.schema.json").read_text())
# Free-form maps (labels, annotations, node selectors, namespace -> classes): keys are the
# user's, values are still typed.
MAP_PATHS = {
    "namespacePriorityClasses", "podAnnotations", "podLabels", "nodeSelector",
    "serviceAccount.annotations", "monitoring.serviceMonitor.labels",
    "monitoring.prometheusRule.labels", "monitoring.dashboard.labels", "monitoring.alerts.labels",
    "networkPolicy.prometheus.podLabels",
}
# Kubernetes objects passed through unchanged (validated by the API server).
PASSTHROUGH_PATHS = {
    "affinity.nodeAffinity", "affinity.podAffinity", "affinity.podAntiAffinity",
    "extraEnv[].valueFrom",
}


def walk_objects(node: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    out = []
    if node.get("type") == "object":
        out.append((path, node))
    for key, sub in node.get("properties", {}).items():
        out += walk_objects(sub, f"{path}.{key}" if path else key)
    if isinstance(node.get("items"), dict):
        out += walk_objects(node["items"], f"{path}[]")
    return out


def test_schema_closes_every_object() -> None:
    objects = walk_objects(SCHEMA)
    assert len(objects) > 20
    for path, node in objects:
        if path in MAP_PATHS:
            assert isinstance(node.get("additionalProperties"), dict), path
        elif path in PASSTHROUGH_PATHS:
            continue
        else:
            assert node.get("additionalProperties") is False, f"{path or '<root>'} is open"


def test_values_yaml_keys_are_all_in_the_schema() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())

    def check(v: dict[str, Any], s: dict[str, Any], path: str) -> None:
        for key, sub in v.items():
            p = f"{path}.{key}" if path else key
            assert key in s.get("properties", {}), f"{p} is not in values.schema.json"
            if isinstance(sub, dict) and p not in MAP_PATHS:
                check(sub, s["properties"][key], p)

    check(values, SCHEMA, "")


@pytest.mark.parametrize(
    "values",
    [
        {"replicas": 2},                                        # unknown top-level key
        {"queue": {"agingcap": 5}},                             # misspelled nested key
        {"monitoring": {"alerts": {"stuckInQueue": {"minutes": 5}}}},
        {"priorityClasses": {"bands": [{"name": "x", "value": 1, "preempt": True}]}},
        {"extraEnv": [{"name": "FINETUNE_AGING_CAP", "value": "5"}]},  # settings come from values
        {"queue": {"agingCap": -1}},
        {"image": {"pullPolicy": "Sometimes"}},
        {"policy": {"imagePrefixes": ["registry.example/ml"]}},  # would match .../ml-evil too
        {"policy": {"tolerationKeys": [""]}},
        {"policy": {"gpuResources": ["*"]}},                   # a prefix of every resource
        {"policy": {"gpuResources": ["nvidia.com/*"]}},
        {"policy": {"maxCheckpointStorageSize": "lots"}},
        {"policy": {"checkpointStorageClasses": ["Fast SSD"]}},
        {"podDisruptionBudget": {"maxUnavailable": 1}},        # minAvailable is the key
        {"podDisruptionBudget": {"minAvailable": -1}},
        {"replicaCount": 0},
    ],
)
def test_schema_rejects_unknown_or_invalid_values(values: dict[str, Any]) -> None:
    err = render_fails(values)
    assert "values don't meet the specifications of the schema" in err, err


# ---- Dockerfile <-> chart ---------------------------------------------------------------

def dockerfile_final_stage() -> list[tuple[str, str]]:
    lines = (ROOT / "Dockerfile.operator").read_text().replace("\\\n", " ").splitlines()
    instructions = [(ln.split(None, 1)[0].upper(), ln.split(None, 1)[1].strip())
                    for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    last_from = max(i for i, (op, _) in enumerate(instructions) if op == "FROM")
    return instructions[last_from:]


def test_dockerfile_matches_the_chart(rendered: dict[str, list[dict[str, Any]]]) -> None:
    stage = dict(dockerfile_final_stage())
    assert json.loads(stage["ENTRYPOINT"]) == container(rendered["defaults"])["command"]
    exposed = {int(p.split("/")[0]) for p in shlex.split(stage["EXPOSE"])}
    ports = {p["containerPort"] for p in container(rendered["defaults"])["ports"]}
    # EXPOSE is documentation only; every port it names is one the chart opens
    assert {8080, 8081} <= exposed <= ports == {8080, 8081, 8443}
    uid = int(stage["USER"].split(":")[0])
    pod = deployment(rendered["defaults"])["spec"]["template"]["spec"]
    assert uid == pod["securityContext"]["runAsUser"] == 1000
    text = (ROOT / "Dockerfile.operator").read_text()
    assert re.search(r"^ARG (PYTHON|BASE)_IMAGE=python:3\.11-slim", text, re.M), text
    assert re.search(r"pip install --no-deps \./api \./operator \\$", text, re.M), text
    assert text.count("FROM ") >= 2  # multi-stage: build tools stay in the builder


def test_dockerignore_keeps_the_context_small() -> None:
    ignore = (ROOT / "Dockerfile.operator.dockerignore").read_text().split()
    assert ignore[ignore.index("*")] == "*"  # everything excluded, then re-included
    # the api and the operator only: no trainer, no dev tooling, no tests
    assert {a for a in ignore if a.startswith("!") and a.endswith("/")} == {"!api/", "!operator/"}


def test_chart_files_not_packaged_by_mistake() -> None:
    # promtool tests stay out of the chart package
    assert not list(Path(CHART).rglob("*.test.yaml"))
