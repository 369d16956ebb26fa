"""The local node agent against the real control plane: pods run as real processes, get real
SIGTERMs with their grace period, real service-account tokens, and report real statuses."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch

from finetune_dev.nodeagent import (
    AGENT_LABEL,
    AgentProcess,
    find_log,
    pod_dir,
    pvc_dir,
    start_agent,
)
from finetune_dev.nodeagent.runner import start_time
from finetune_dev.nodeagent.sources import raw

from ..kube import Cluster, priority_class, restricted, short_id, wait_for

pytestmark = pytest.mark.cluster

TERMINAL = ("Succeeded", "Failed")


# ---------------------------------------------------------------- fixtures and helpers


def _live_processes(root: Path) -> list[str]:
    """Pid files under root whose process still runs (same pid and start time)."""
    alive = []
    for pf in root.glob("pods/*/*.pid"):
        pid, started, _node = pf.read_text().split()
        if start_time(int(pid)) == int(started):
            alive.append(f"{pf}: pid {pid}")
    return alive


def _stop_and_check(cluster: Cluster, agent: AgentProcess) -> None:
    try:
        rc = agent.stop()
        assert rc == 0, f"agent exited with {rc}:\n{agent.log_tail()}"
        assert not _live_processes(agent.root), "stray container processes after agent stop"
    finally:
        cluster.kubectl("delete", "node", agent.node, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def agent(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProcess]:
    a = start_agent(f"na-{short_id()}", 2, root=tmp_path_factory.mktemp("nodeagent"),
                    cfg=cluster.cfg)
    yield a
    _stop_and_check(cluster, a)


def _pod(name: str, node: str, code: str, *, grace: int = 10,
         container: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    """A pod pinned to the agent's node running `python -c code`; `container` adds fields
    (env, volumeMounts, ...) to its one container, `spec` to the pod spec."""
    main = {"name": "main", "image": "ignored.invalid/by-the-agent:1",
            "command": ["python", "-c", code], **(container or {})}
    return restricted({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": grace,
                                "nodeSelector": {"kubernetes.io/hostname": node},
                                "containers": [main], **spec}})


def _read(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    try:
        return raw(cluster.core().read_namespaced_pod, name, ns)
    except client.ApiException as e:
        if e.status == 404:
            return None
        raise


def _create(cluster: Cluster, ns: str, obj: dict[str, Any]) -> None:
    cluster.core().create_namespaced_pod(ns, obj)  # type: ignore[arg-type]


def _wait_phase(cluster: Cluster, ns: str, name: str, phases: tuple[str, ...],
                timeout: float = 60) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        p = _read(cluster, ns, name)
        return p if p and (p.get("status") or {}).get("phase") in phases else None

    return wait_for(f"pod {ns}/{name} in {phases}", check, timeout)


def _terminated(pod: dict[str, Any]) -> dict[str, Any]:
    return pod["status"]["containerStatuses"][0]["state"]["terminated"]


def _claim(cluster: Cluster, ns: str, name: str) -> None:
    """A class-less claim: the agent binds it to a hostPath PV so the scheduler can place pods."""
    cluster.apply({"apiVersion": "v1", "kind": "PersistentVolumeClaim",
                   "metadata": {"name": name, "namespace": ns},
                   "spec": {"accessModes": ["ReadWriteOnce"],
                            "resources": {"requests": {"storage": "1Gi"}}}})


class PodEvents(threading.Thread):
    """Every watch event of one pod until it is deleted (statuses a poll could miss)."""

    def __init__(self, cluster: Cluster, ns: str, name: str) -> None:
        super().__init__(daemon=True)
        self.core, self.ns, self.name = cluster.core(), ns, name
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.started_watch = threading.Event()

    def run(self) -> None:
        w = watch.Watch()
        for ev in w.stream(self.core.list_namespaced_pod, self.ns, timeout_seconds=120,
                           field_selector=f"metadata.name={self.name}"):
            self.started_watch.set()
            self.events.append((ev["type"], ev["raw_object"]))
            if ev["type"] == "DELETED":
                return

    def last_terminated(self) -> dict[str, Any]:
        for _, obj in reversed(self.events):
            for s in (obj.get("status") or {}).get("containerStatuses") or []:
                if "terminated" in s.get("state", {}):
                    return s["state"]["terminated"]
        raise AssertionError(f"no terminated status among {len(self.events)} events")

    def conditions(self) -> set[tuple[str, str]]:
        return {(c["type"], c.get("reason", "")) for _, obj in self.events
                for c in (obj.get("status") or {}).get("conditions") or []}


def _delete_and_watch(cluster: Cluster, ns: str, name: str, grace: int) -> tuple[PodEvents, float]:
    events = PodEvents(cluster, ns, name)
    events.start()
    events.started_watch.wait(10)
    t0 = time.monotonic()
    cluster.core().delete_namespaced_pod(name, ns, grace_period_seconds=grace)
    wait_for(f"pod {ns}/{name} gone", lambda: _read(cluster, ns, name) is None, grace + 30)
    elapsed = time.monotonic() - t0
    events.join(10)
    return events, elapsed


# ---------------------------------------------------------------- node


def test_node_registered_ready_and_lease_renewed(cluster: Cluster, agent: AgentProcess) -> None:
    core, coord = cluster.core(), client.CoordinationV1Api(cluster.api)
    node = raw(core.read_node, agent.node)
    assert node["metadata"]["labels"][AGENT_LABEL] == "true"
    assert node["metadata"]["labels"]["kubernetes.io/hostname"] == agent.node
    assert "kwok.x-k8s.io/node" not in (node["metadata"].get("annotations") or {})
    assert node["status"]["allocatable"]["nvidia.com/gpu"] == "2"
    assert node["status"]["capacity"]["nvidia.com/gpu"] == "2"

    def ready_untainted() -> dict[str, Any] | None:
        """Ready, and the node lifecycle controller has removed its not-ready taint (it does
        so asynchronously, some time after the agent reports Ready: wait on it, not a sleep)."""
        n = raw(core.read_node, agent.node)
        ready = next(c for c in n["status"]["conditions"] if c["type"] == "Ready")
        tainted = [t for t in n["spec"].get("taints") or [] if "not-ready" in t["key"]]
        return n if ready["status"] == "True" and not tainted else None

    wait_for("the node Ready without the not-ready taint", ready_untainted, 60, interval=0.5)

    def lease() -> dict[str, Any]:
        return raw(coord.read_namespaced_lease, agent.node, "kube-node-lease")["spec"]

    first = lease()
    assert first["holderIdentity"] == agent.node and first["leaseDurationSeconds"] == 40
    wait_for("lease renewed", lambda: lease()["renewTime"] > first["renewTime"], 30, interval=1)


# ---------------------------------------------------------------- running pods

CONFIG_CODE = r"""
import json, os, sys
out = {
    "greeting": open("/mnt/na-test/etc/app/greet/greeting.txt").read(),
    "token_file": open("/mnt/na-test/etc/creds/token").read(),
    "input": open("/mnt/na-test/data/input.txt").read(),
    "env": {k: os.environ[k] for k in ("MODE", "TOKEN", "POD_UID", "POD_IP", "COMBINED",
                                       "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT")},
    "python": sys.executable,
}
for key, path in (("config_read_only", "/mnt/na-test/etc/app/x"),
                  ("pvc_mount_read_only", "/mnt/na-test/ro-data/x")):
    try:
        open(path, "w")
        out[key] = False
    except OSError:
        out[key] = True
open("/mnt/na-test/scratch/s.txt", "w").write("scratch")
out["scratch"] = open("/mnt/na-test/scratch/s.txt").read()
open("/mnt/na-test/nested/sub.txt", "w").write("via subPath")
json.dump(out, open("/mnt/na-test/data/out.json", "w"))
print("RESULT", json.dumps(out))
"""


def test_pod_reads_config_and_env_and_writes_volumes(cluster: Cluster, namespace: str,
                                                     agent: AgentProcess) -> None:
    cluster.apply([
        {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"},
         "data": {"greeting.txt": "hello from a ConfigMap", "mode": "fast"}},
        {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "creds"},
         "stringData": {"token": "s3cret"}}], namespace)
    _claim(cluster, namespace, "data")
    data = pvc_dir(agent.root, namespace, "data")
    data.mkdir(parents=True, exist_ok=True)
    (data / "input.txt").write_text("pre-filled by the test")
    env = [{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}},
           {"name": "TOKEN", "valueFrom": {"secretKeyRef": {"name": "creds", "key": "token"}}},
           {"name": "POD_UID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.uid"}}},
           {"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}},
           {"name": "COMBINED", "value": "$(MODE)-mode"}]
    volumes = [{"name": "cfg", "configMap": {"name": "settings", "items": [
                   {"key": "greeting.txt", "path": "greet/greeting.txt"}]}},
               {"name": "creds", "secret": {"secretName": "creds"}},
               {"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
               {"name": "scratch", "emptyDir": {"medium": "Memory"}}]
    mounts = [{"name": "cfg", "mountPath": "/mnt/na-test/etc/app"},  # read-only all the same
              {"name": "data", "mountPath": "/mnt/na-test/ro-data", "readOnly": True},
              {"name": "creds", "mountPath": "/mnt/na-test/etc/creds", "readOnly": True},
              {"name": "data", "mountPath": "/mnt/na-test/data"},
              {"name": "data", "mountPath": "/mnt/na-test/nested", "subPath": "sub"},
              {"name": "scratch", "mountPath": "/mnt/na-test/scratch"}]
    _create(cluster, namespace, _pod("reader", agent.node, CONFIG_CODE, volumes=volumes,
                                     container={"env": env, "volumeMounts": mounts}))
    pod = _wait_phase(cluster, namespace, "reader", TERMINAL, 90)
    log = find_log(agent.root, namespace, "reader", "main")
    assert pod["status"]["phase"] == "Succeeded", (log and log.read_text(), pod["status"])
    term = _terminated(pod)
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert term["startedAt"] <= term["finishedAt"]
    assert pod["status"]["podIP"] == "127.0.0.1" and pod["status"]["hostIP"] == "127.0.0.1"

    out = json.loads((data / "out.json").read_text())
    assert out["greeting"] == "hello from a ConfigMap" and out["token_file"] == "s3cret"
    assert out["input"] == "pre-filled by the test"
    assert out["env"] == {"MODE": "fast", "TOKEN": "s3cret", "POD_UID": pod["metadata"]["uid"],
                          "POD_IP": "127.0.0.1", "COMBINED": "fast-mode",
                          "KUBERNETES_SERVICE_HOST": "127.0.0.1",
                          "KUBERNETES_SERVICE_PORT": str(cluster.cfg.ports.apiserver)}
    assert out["config_read_only"] is True and out["pvc_mount_read_only"] is True
    assert out["scratch"] == "scratch"
    assert Path(out["python"]).parent == Path(sys.executable).parent
    assert (data / "sub" / "sub.txt").read_text() == "via subPath"
    assert log is not None and "RESULT" in log.read_text()
    assert cluster.get("pvc", "data", namespace)["status"]["phase"] == "Bound"  # type: ignore[index]


def test_failures_report_exit_code_and_termination_message(cluster: Cluster, namespace: str,
                                                           agent: AgentProcess) -> None:
    _create(cluster, namespace, _pod("fails", agent.node, "import sys\n"
            "open('/dev/termination-log', 'w').write('boom: bad input on line 3')\nsys.exit(3)"))
    _create(cluster, namespace, _pod("fallback", agent.node,
            "import sys\nprint('last words on stderr', file=sys.stderr)\nsys.exit(4)",
            container={"terminationMessagePolicy": "FallbackToLogsOnError"}))
    no_command = _pod("no-command", agent.node, "")
    del no_command["spec"]["containers"][0]["command"]
    _create(cluster, namespace, no_command)

    fails = _wait_phase(cluster, namespace, "fails", TERMINAL)
    assert fails["status"]["phase"] == "Failed"
    term = _terminated(fails)
    assert (term["exitCode"], term["reason"]) == (3, "Error")
    assert term["message"] == "boom: bad input on line 3"

    fallback = _terminated(_wait_phase(cluster, namespace, "fallback", TERMINAL))
    assert fallback["exitCode"] == 4 and "last words on stderr" in fallback["message"]

    unsupported = _wait_phase(cluster, namespace, "no-command", TERMINAL)
    assert unsupported["status"]["phase"] == "Failed"
    assert unsupported["status"]["reason"] == "Unsupported"
    assert "ignores images" in unsupported["status"]["message"]


def test_start_errors_and_waiting_reasons(cluster: Cluster, namespace: str,
                                          agent: AgentProcess) -> None:
    missing = _pod("missing-binary", agent.node, "")
    missing["spec"]["containers"][0]["command"] = ["no-such-binary-here", "--flag"]
    _create(cluster, namespace, missing)
    _create(cluster, namespace, _pod("root-not-allowed", agent.node, "print('never')",
                                     securityContext={"runAsNonRoot": True}))
    _create(cluster, namespace, _pod(
        "late-config", agent.node, "print(open('/mnt/na-test/cfg/k').read())",
        volumes=[{"name": "cfg", "configMap": {"name": "late"}}],
        container={"volumeMounts": [{"name": "cfg", "mountPath": "/mnt/na-test/cfg"}]}))

    term = _terminated(_wait_phase(cluster, namespace, "missing-binary", TERMINAL))
    assert (term["exitCode"], term["reason"]) == (128, "StartError")
    assert "executable file not found in PATH: no-such-binary-here" in term["message"]

    def waiting(name: str) -> dict[str, Any] | None:
        p = _read(cluster, namespace, name) or {}
        statuses = (p.get("status") or {}).get("containerStatuses") or [{}]
        return statuses[0].get("state", {}).get("waiting")

    root = wait_for("runAsNonRoot pod waiting", lambda: waiting("root-not-allowed"), 30)
    assert root["reason"] == "CreateContainerConfigError" and "runAsUser" in root["message"]
    late = wait_for("late-config pod waiting", lambda: waiting("late-config"), 30)
    assert late["reason"] == "ContainerCreating" and "ConfigMap" in late["message"]
    assert f"{namespace}/late" in late["message"]
    cluster.apply({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "late"},
                   "data": {"k": "arrived"}}, namespace)
    done = _wait_phase(cluster, namespace, "late-config", TERMINAL, 60)  # retried on resync
    assert done["status"]["phase"] == "Succeeded"
    log = find_log(agent.root, namespace, "late-config", "main")
    assert log is not None and log.read_text().strip() == "arrived"
    assert _read(cluster, namespace, "root-not-allowed")["status"]["phase"] == "Pending"  # type: ignore[index]


TRAP_CODE = r"""
import pathlib, signal, sys, time
data = pathlib.Path("/mnt/na-test/data")
def on_term(*_):
    (data / "term-seen").write_text("SIGTERM")
    if {exit_on_term}:
        time.sleep(1)  # "saving a checkpoint"
        (data / "saved").write_text("saved")
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
(data / "ready").write_text("ready")
while True:
    time.sleep(0.1)
"""


def _trap_pod(name: str, node: str, *, exit_on_term: bool, grace: int,
              **spec: Any) -> dict[str, Any]:
    return _pod(name, node, TRAP_CODE.format(exit_on_term=exit_on_term), grace=grace,
                volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}}],
                container={"volumeMounts": [{"name": "data", "mountPath": "/mnt/na-test/data"}]},
                **spec)


def _wait_ready_file(data: Path) -> None:
    wait_for(f"{data}/ready written by the process", lambda: (data / "ready").exists(), 60)


def test_delete_sends_sigterm_and_pod_goes_away(cluster: Cluster, namespace: str,
                                               agent: AgentProcess) -> None:
    _claim(cluster, namespace, "data")
    data = pvc_dir(agent.root, namespace, "data")
    _create(cluster, namespace, _trap_pod("graceful", agent.node, exit_on_term=True, grace=30))
    running = _wait_phase(cluster, namespace, "graceful", ("Running",), 90)
    assert running["status"]["containerStatuses"][0]["ready"] is True
    _wait_ready_file(data)

    events, elapsed = _delete_and_watch(cluster, namespace, "graceful", 30)
    assert (data / "term-seen").read_text() == "SIGTERM"
    assert (data / "saved").read_text() == "saved"
    assert elapsed < 20, f"a process exiting 1 s after SIGTERM took {elapsed:.1f}s to go away"
    term = events.last_terminated()
    assert (term["exitCode"], term["reason"]) == (0, "Completed")
    assert events.events[-1][0] == "DELETED"


def test_process_ignoring_sigterm_is_killed_after_grace(cluster: Cluster, namespace: str,
                                                        agent: AgentProcess) -> None:
    _claim(cluster, namespace, "data")
    data = pvc_dir(agent.root, namespace, "data")
    _create(cluster, namespace, _trap_pod("stubborn", agent.node, exit_on_term=False, grace=30))
    pod = _wait_phase(cluster, namespace, "stubborn", ("Running",), 90)
    _wait_ready_file(data)
    pid_file = pod_dir(agent.root, namespace, "stubborn", pod["metadata"]["uid"]) / "main.pid"
    pid, started, _ = pid_file.read_text().split()

    events, elapsed = _delete_and_watch(cluster, namespace, "stubborn", 3)
    assert (data / "term-seen").read_text() == "SIGTERM"
    assert 3 <= elapsed < 20, elapsed
    term = events.last_terminated()
    assert (term["exitCode"], term["reason"]) == (137, "Error")
    assert start_time(int(pid)) != int(started), "the process survived its SIGKILL"


SELF_PATCH_CODE = r"""
import json, os, sys
from kubernetes import client, config
config.load_incluster_config()
v1 = client.CoreV1Api()
name, ns = os.environ["POD_NAME"], os.environ["POD_NAMESPACE"]
progress = {"finetune.dev/progress": json.dumps({"step": 7, "state": "training"})}
v1.patch_namespaced_pod(name, ns, {"metadata": {"annotations": progress}})
for forbidden in (lambda: v1.patch_namespaced_pod("someone-else", ns, {"metadata": {}}),
                  lambda: v1.list_namespaced_pod(ns)):
    try:
        forbidden()
        sys.exit("the token may do more than its Role allows")
    except client.ApiException as e:
        assert e.status == 403, e
try:
    open(os.environ["ADMIN_KUBECONFIG"])
    sys.exit("the admin kubeconfig is readable from the pod")
except OSError:
    pass
print("uid", os.getuid(), "groups", os.getgroups())
open("/mnt/na-test/data/who", "w").write(f"{os.getuid()} {os.getgid()} {sorted(os.getgroups())}")
"""


def test_service_account_token_patches_own_pod_as_non_root(cluster: Cluster, namespace: str,
                                                           agent: AgentProcess) -> None:
    """The agent's default API token (kube-api-access) under the operator's security context
    (uid 1000, fsGroup 1000): the in-pod token is the pod's ServiceAccount's and nothing more.
    (Trainer pods no longer mount it: see test_projected_report_token_reaches_the_operator...)"""
    name = "progress"
    rbac = "rbac.authorization.k8s.io/v1"
    cluster.apply([
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "trainer"}},
        {"apiVersion": rbac, "kind": "Role", "metadata": {"name": "self-patch"},
         "rules": [{"apiGroups": [""], "resources": ["pods"], "resourceNames": [name],
                    "verbs": ["get", "patch"]}]},
        {"apiVersion": rbac, "kind": "RoleBinding", "metadata": {"name": "self-patch"},
         "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role",
                     "name": "self-patch"},
         "subjects": [{"kind": "ServiceAccount", "name": "trainer", "namespace": namespace}]}],
        namespace)
    _claim(cluster, namespace, "data")
    env = [{"name": n, "valueFrom": {"fieldRef": {"fieldPath": f"metadata.{f}"}}}
           for n, f in (("POD_NAME", "name"), ("POD_NAMESPACE", "namespace"))]
    env += [{"name": "ADMIN_KUBECONFIG", "value": str(cluster.kubeconfig)},
            {"name": "HOME", "value": "/tmp"}]
    _create(cluster, namespace, _pod(
        name, agent.node, SELF_PATCH_CODE, serviceAccountName="trainer",
        securityContext={"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                         "fsGroup": 1000, "fsGroupChangePolicy": "OnRootMismatch"},
        volumes=[{"name": "data", "persistentVolumeClaim": {"claimName": "data"}},
                 {"name": "tmp", "emptyDir": {}}],
        container={"env": env, "volumeMounts": [{"name": "data", "mountPath": "/mnt/na-test/data"},
                                                {"name": "tmp", "mountPath": "/tmp"}],
                   "securityContext": {"allowPrivilegeEscalation": False,
                                       "capabilities": {"drop": ["ALL"]}}}))
    pod = _wait_phase(cluster, namespace, name, TERMINAL, 90)
    log = find_log(agent.root, namespace, name, "main")
    assert pod["status"]["phase"] == "Succeeded", (log and log.read_text(), pod["status"])
    progress = json.loads(pod["metadata"]["annotations"]["finetune.dev/progress"])
    assert progress == {"step": 7, "state": "training"}
    who = pvc_dir(agent.root, namespace, "data") / "who"
    assert who.read_text() == "1000 1000 [1000]"
    assert (who.stat().st_uid, who.stat().st_gid) == (1000, 1000)  # setgid dir from fsGroup


def test_scheduler_preemption_delivers_sigterm(cluster: Cluster, namespace: str,
                                              agent: AgentProcess) -> None:
    """A higher-priority pod preempts a running one: the victim gets a real SIGTERM and its
    grace period, saves, exits 0, and the preemptor then runs on the freed GPUs."""
    sid = short_id()
    low, high = f"na-low-{sid}", f"na-high-{sid}"
    cluster.apply([priority_class(low, 100), priority_class(high, 1000)])
    try:
        _claim(cluster, namespace, "data")
        data = pvc_dir(agent.root, namespace, "data")
        gpus = {"requests": {"nvidia.com/gpu": "2"}, "limits": {"nvidia.com/gpu": "2"}}
        victim = _trap_pod("victim", agent.node, exit_on_term=True, grace=30,
                           priorityClassName=low)
        victim["spec"]["containers"][0]["resources"] = gpus
        _create(cluster, namespace, victim)
        _wait_phase(cluster, namespace, "victim", ("Running",), 90)
        _wait_ready_file(data)
        events = PodEvents(cluster, namespace, "victim")
        events.start()
        events.started_watch.wait(10)
        _create(cluster, namespace, _pod("preemptor", agent.node, "print('got the GPUs')",
                                         priorityClassName=high, container={"resources": gpus}))
        done = _wait_phase(cluster, namespace, "preemptor", TERMINAL, 120)
        assert done["status"]["phase"] == "Succeeded"
        events.join(30)
        assert (data / "saved").read_text() == "saved"
        assert ("DisruptionTarget", "PreemptionByScheduler") in events.conditions()
        assert (events.last_terminated()["exitCode"], events.events[-1][0]) == (0, "DELETED")
    finally:
        cluster.kubectl("delete", "priorityclass", low, high, "--ignore-not-found")


# ---------------------------------------------------------------- the report channel's token

REPORT_AUDIENCE = "finetune.dev/operator"

REPORT_CODE = r"""
import os, sys
from finetune_api.trainer_config import ReportConfig
from finetune_trainer.progress import ReportSink
api_token = "/var/run/secrets/kubernetes.io/serviceaccount/token"
if os.path.exists(api_token):
    sys.exit("an API token is mounted although automountServiceAccountToken is false")
cfg = ReportConfig.model_validate_json(os.environ["REPORT_CONFIG"])
sink = ReportSink(cfg)
sink.send({"step": 5, "totalSteps": 10, "state": "training"})
sink.close(60)
"""


def test_projected_report_token_reaches_the_operator_as_this_pod(
        cluster: Cluster, namespace: str, agent: AgentProcess) -> None:
    """The trainer pod's only credential, as the operator builds it: a projected token with
    the operator's audience (minted by the agent with TokenRequest, bound to the pod), no API
    token. The pod pushes a report with it; the operator's server verifies it by TokenReview
    and attributes it to this pod (name and uid)."""
    from finetune_operator.jobs.build.pod import report_token_volume
    from finetune_operator.kube.client import Kube
    from finetune_operator.reports.channel import start_channel
    from finetune_operator.settings import OperatorSettings

    settings = OperatorSettings(report_audience=REPORT_AUDIENCE)
    received: list[tuple[Any, Any]] = []
    channel = start_channel(settings, Kube(cluster.api).token_review,
                            lambda who, report: received.append((who, report)),
                            host="127.0.0.1", port=0)
    try:
        volume, mount = report_token_volume(settings)
        name = "reporter"
        _create(cluster, namespace, _pod(
            name, agent.node, REPORT_CODE, automountServiceAccountToken=False,
            securityContext={"runAsNonRoot": True, "runAsUser": 1000, "runAsGroup": 1000,
                             "fsGroup": 1000},
            volumes=[volume, {"name": "tmp", "emptyDir": {}}],
            container={"env": [{"name": "REPORT_CONFIG",
                                "value": channel.config.model_dump_json(by_alias=True)},
                               {"name": "HOME", "value": "/tmp"}],
                       "volumeMounts": [mount, {"name": "tmp", "mountPath": "/tmp"}]}))
        pod = _wait_phase(cluster, namespace, name, TERMINAL, 90)
        log = find_log(agent.root, namespace, name, "main")
        assert pod["status"]["phase"] == "Succeeded", (log and log.read_text(), pod["status"])
        assert [(w.namespace, w.pod, w.uid) for w, _ in received] == [
            (namespace, name, pod["metadata"]["uid"])], log and log.read_text()
        assert received[0][1].to_wire() == {"step": 5, "totalSteps": 10, "state": "training"}
    finally:
        channel.stop()


def test_projected_token_is_minted_for_the_pod_and_refreshed(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    """volumes.prepare mints the token with the source's audience and expiry, bound to the
    pod; refresh_tokens re-mints it past 80% of its life and replaces the file."""
    import os
    from datetime import timedelta

    from finetune_dev.nodeagent import volumes
    from finetune_dev.nodeagent.agent import utcnow
    from finetune_dev.nodeagent.sources import Objects
    from finetune_operator.http.identity import identity_from_review
    from finetune_operator.kube.client import Kube

    made = cluster.core().create_namespaced_pod(namespace, restricted({  # type: ignore[arg-type]
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "parked"},
        "spec": {"automountServiceAccountToken": False,
                 "nodeSelector": {"finetune.dev/test-nowhere": "true"},
                 "containers": [{"name": "main", "image": "ignored.invalid/x:1"}],
                 "volumes": [{"name": "report-token", "projected": {"sources": [
                     {"serviceAccountToken": {"audience": REPORT_AUDIENCE,
                                              "expirationSeconds": 3600,
                                              "path": "token"}}]}}]}}))
    pod = cluster.api.sanitize_for_serialization(made)
    now = utcnow()
    vols = volumes.prepare(cluster.core(), Objects(cluster.core(), namespace), pod,
                           tmp_path, tmp_path / "root", {}, now)
    [tok] = vols.tokens
    assert (tok.expires - now) > timedelta(minutes=59)
    kube = Kube(cluster.api)
    first = tok.path.read_text()
    me = (namespace, "parked", pod["metadata"]["uid"])
    ident = identity_from_review(kube.token_review(first, [REPORT_AUDIENCE]), REPORT_AUDIENCE)
    assert ident is not None and (ident.namespace, ident.pod, ident.uid) == me
    assert identity_from_review(kube.token_review(first, ["other.example"]),
                                "other.example") is None

    volumes.apply_fs_group(vols, 1000, on_root_mismatch=False)  # as for a pod with fsGroup
    volumes.refresh_tokens(cluster.core(), pod, vols.tokens, now + timedelta(minutes=30))
    assert tok.path.read_text() == first  # not due yet
    volumes.refresh_tokens(cluster.core(), pod, vols.tokens, now + timedelta(minutes=49))
    second = tok.path.read_text()
    assert second != first
    assert os.stat(tok.path).st_gid == 1000  # a non-root pod can still read the new token
    ident = identity_from_review(kube.token_review(second, [REPORT_AUDIENCE]), REPORT_AUDIENCE)
    assert ident is not None and (ident.namespace, ident.pod, ident.uid) == me


# ---------------------------------------------------------------- names and ports (network.py)


def test_port_translation_and_hosts_file_are_pure() -> None:
    from finetune_dev.nodeagent import network

    ports = {29500: 21234}
    assert network.translate_argv(["--master-port=29500", "29500", "h:29500", "295001", "x"],
                                  ports) == ["--master-port=21234", "21234", "h:21234",
                                             "295001", "x"]
    assert network.translate_env({"MASTER_PORT": "29500", "N": "2"}, ports) == {
        "MASTER_PORT": "21234", "N": "2"}
    pod = {"metadata": {"name": "j-a1-1", "namespace": "ns"},
           "spec": {"hostname": "j-a1-1", "subdomain": "j-workers",
                    "hostAliases": [{"ip": "10.0.0.9", "hostnames": ["extra"]}]}}
    peer = {"metadata": {"name": "j-a1-0"}, "spec": {"hostname": "j-a1-0",
                                                      "subdomain": "j-workers"}}
    text = network.hosts_file(pod, [peer, pod], "j-workers", "127.0.0.1 localhost\n")
    lines = text.splitlines()
    assert lines[0] == "127.0.0.1 localhost"  # the host's entries come first
    assert "127.0.0.1\tj-a1-0.j-workers.ns.svc.cluster.local j-a1-0.j-workers.ns.svc " \
        "j-a1-0.j-workers.ns j-a1-0.j-workers" in lines
    assert any(ln.startswith("127.0.0.1\tj-a1-1.j-workers.ns.svc.cluster.local") for ln in lines)
    assert "127.0.0.1\tj-workers.ns.svc.cluster.local j-workers.ns.svc j-workers.ns" in lines
    assert lines[-1] == "10.0.0.9\textra"


def test_port_registry_is_stable_per_key_and_distinct_between_keys(tmp_path: Path) -> None:
    from finetune_dev.nodeagent import network

    a = network.allocate(tmp_path, "ns/svc/uid/attempt-1", [29500, 29501])
    assert network.allocate(tmp_path, "ns/svc/uid/attempt-1", [29500, 29501]) == a
    b = network.allocate(tmp_path, "ns/svc/uid/attempt-2", [29500, 29501])
    assert len({*a.values(), *b.values()}) == 4
    assert all(network.PORT_RANGE[0] <= p <= network.PORT_RANGE[1] for p in [*a.values(),
                                                                              *b.values()])


RENDEZVOUS_CODE = """
import os, socket, sys, time
port = int(sys.argv[1].split("=")[1])
assert port == int(os.environ["PORT"]), (sys.argv, os.environ["PORT"])
if os.environ["ROLE"] == "server":
    srv = socket.create_server(("", port))
    conn, _ = srv.accept()
    conn.sendall(os.environ["GANG"].encode())
    conn.close()
else:
    for _ in range(600):
        try:
            c = socket.create_connection((os.environ["PEER"], port), 1)
            break
        except OSError:
            time.sleep(0.1)
    print("GOT", c.recv(100).decode(), port, flush=True)
"""


def test_pods_behind_a_headless_service_meet_by_name_on_a_port_of_their_own(
        cluster: Cluster, namespace: str, agent: AgentProcess) -> None:
    """Two gangs at once, each a server and a client behind its own headless Service, both
    declaring containerPort 9000: each client reaches its server by DNS name, and the two
    servers do not collide on the one host (each gang gets a host port of its own)."""
    gangs = ("talk-a", "talk-b")
    for gang in gangs:
        cluster.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": gang},
                       "spec": {"clusterIP": "None", "selector": {"gang": gang},
                                "publishNotReadyAddresses": True,
                                "ports": [{"name": "talk", "port": 9000,
                                           "targetPort": "talk"}]}}, namespace)
    for role in ("server", "client"):
        for gang in gangs:
            env = [{"name": "ROLE", "value": role}, {"name": "GANG", "value": gang},
                   {"name": "PORT", "value": "9000"},
                   {"name": "PEER", "value": f"server.{gang}.{namespace}.svc"}]
            pod = _pod(f"{gang}-{role}", agent.node, RENDEZVOUS_CODE, hostname=role,
                       subdomain=gang, container={
                           "env": env, "args": ["--port=$(PORT)"],
                           "ports": [{"name": "talk", "containerPort": 9000}]})
            pod["metadata"]["labels"] = {"gang": gang}
            _create(cluster, namespace, pod)
    seen = {}
    for gang in gangs:
        for role in ("server", "client"):
            p = _wait_phase(cluster, namespace, f"{gang}-{role}", TERMINAL, 120)
            log = find_log(agent.root, namespace, f"{gang}-{role}", "main")
            text = log.read_text() if log else ""
            assert p["status"]["phase"] == "Succeeded", (text, p["status"])
        got = text.split("GOT ", 1)[1].split()
        assert got[0] == gang
        seen[gang] = int(got[1])
    assert 9000 not in seen.values() and len(set(seen.values())) == 2, seen

# ---------------------------------------------------------------- agent restart and stop


def test_agent_restart_fails_lost_pods_and_stop_terminates_children(
        cluster: Cluster, namespace: str, tmp_path: Path) -> None:
    root = tmp_path / "agent"
    agent = start_agent(f"na-restart-{short_id()}", 2, root=root, cfg=cluster.cfg)
    try:
        _claim(cluster, namespace, "data")
        data = pvc_dir(root, namespace, "data")
        _create(cluster, namespace, _trap_pod("lost", agent.node, exit_on_term=True, grace=5))
        lost = _wait_phase(cluster, namespace, "lost", ("Running",), 90)
        _wait_ready_file(data)
        pid, started, _ = (pod_dir(root, namespace, "lost", lost["metadata"]["uid"])
                           / "main.pid").read_text().split()

        agent.kill()  # a crash: the container process survives its agent
        assert start_time(int(pid)) == int(started)
        agent = start_agent(agent.node, 2, root=root, cfg=cluster.cfg)
        failed = _wait_phase(cluster, namespace, "lost", TERMINAL, 60)
        assert (failed["status"]["phase"], failed["status"]["reason"]) == (
            "Failed", "NodeAgentRestarted")
        assert _terminated(failed)["reason"] == "ContainerStatusUnknown"
        assert start_time(int(pid)) != int(started), "the orphaned process was not stopped"
        assert (data / "term-seen").exists(), "the orphan got no SIGTERM before its SIGKILL"

        (data / "ready").unlink()
        _create(cluster, namespace, _trap_pod("stopped", agent.node, exit_on_term=True, grace=20))
        _wait_phase(cluster, namespace, "stopped", ("Running",), 90)
        _wait_ready_file(data)
        (data / "saved").unlink(missing_ok=True)
    finally:
        _stop_and_check(cluster, agent)
    stopped = _wait_phase(cluster, namespace, "stopped", TERMINAL, 10)
    assert (stopped["status"]["phase"], stopped["status"]["reason"]) == ("Failed", "Terminated")
    assert _terminated(stopped)["exitCode"] == 0
    assert (data / "saved").read_text() == "saved"
    assert any(c["type"] == "DisruptionTarget" and c["reason"] == "TerminationByKubelet"
               for c in stopped["status"]["conditions"])
