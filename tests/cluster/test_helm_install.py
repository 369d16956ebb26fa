"""`helm install` the chart into the local cluster; the chart's operator Deployment really runs
(as a process on a local node agent, under the chart's ServiceAccount with a token the agent
mints for its pod) and brings a FineTuneJob to Running.

What the test chooses, and why:
- CRDs on (the chart's default): the chart installs and upgrades both CRDs, FineTuneJob and
  FineTuneSweep, and `kubectl apply -f examples/sweep.yaml` then works. The session fixtures
  (and other modules) applied the same generated CRDs with kubectl already, and deleting them
  would delete every FineTuneJob of concurrently running tests, so the test hands the existing
  CRDs to this release the way Helm adopts resources (its ownership label and annotations);
  Helm then applies the chart's CRDs over them: the release's labels on both, `helm get
  manifest` listing both, an upgrade restoring a label removed by hand, and the keep policy
  leaving both in place after `helm uninstall` show the chart owns and updates them.
- `priorityClasses.create=false`: the session fixtures applied the PriorityClass bands with
  kubectl, and other test modules rely on them staying exactly as they are.
- `watchNamespaces=[<the job's namespace>]`: the installed operator handles only this test's
  namespace, so it never competes with an operator of another test; it also exercises the
  RoleBinding-per-namespace RBAC variant (plus the cluster-wide read ClusterRoleBinding), and
  scopes the chart's ValidatingAdmissionPolicy binding to that namespace.
- Its leader Lease lives in the release namespace (POD_NAMESPACE from the downward API). Before
  installing, the test waits until no test operator holds the Lease in `default` (the module
  -scoped `operator` fixture of other modules is stopped between modules and is not used here).
- A unique trainer image in the values: the trainer pod carries it, which proves the installed
  operator (and not some other one) created the pod.
- The operator pod is pinned with `nodeSelector` + a toleration to a tainted, GPU-less agent
  node that only this test uses; the image is irrelevant (the agent runs `finetune-operator` from
  the venv). HOME=/tmp via extraEnv (uid 1000 cannot enter the agent's default HOME).
"""

from __future__ import annotations

import json
import ssl
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import yaml

from finetune_dev.nodeagent import AgentProcess, find_log
from tests.builders.cli import table
from tests.builders.helm import (
    CHART,
    CRDS,
    EXAMPLES,
    LEASE,
    REFUSED_BY_API,
    adopt_crds,
    helm,
    lease_holder,
    operator_node,
    operator_values,
    wait_lease_free,
)
from tests.builders.users import as_user, user_kubeconfig

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import free_port, ftj, job_pods, scraper_token, wait_phase

pytestmark = pytest.mark.cluster

MakeNamespace = Callable[..., str]  # conftest.make_namespace(gpu_quota=None)
GpuNodes = Callable[[int, int], dict[str, str]]  # conftest.gpu_nodes(count, gpus)


def chart_crds(cluster: Cluster, release: str, namespace: str) -> None:
    """Both CRDs are the release's, as the chart renders them, and served."""
    manifest = helm(cluster, "get", "manifest", release, "--namespace", namespace).stdout
    in_release = {d["metadata"]["name"] for d in yaml.safe_load_all(manifest)
                  if d and d["kind"] == "CustomResourceDefinition"}
    assert in_release == set(CRDS), in_release
    for name in CRDS:
        crd = cluster.get("crd", name)
        assert crd is not None
        labels, notes = crd["metadata"]["labels"], crd["metadata"]["annotations"]
        assert labels["app.kubernetes.io/instance"] == release, labels
        assert labels["helm.sh/chart"].startswith("finetune-operator-"), labels
        assert notes["meta.helm.sh/release-name"] == release
        assert notes["helm.sh/resource-policy"] == "keep"
        assert {"type": "Established", "status": "True"} in [
            {k: c[k] for k in ("type", "status")} for c in crd["status"]["conditions"]]


@pytest.fixture
def agent_node(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
               ) -> Iterator[AgentProcess]:
    with operator_node(cluster, tmp_path_factory.mktemp("helm-agent")) as agent:
        yield agent


@pytest.fixture
def release_namespace(cluster: Cluster) -> Iterator[str]:
    ns = f"ft-system-{short_id()}"
    cluster.create_namespace(ns)
    yield ns
    cluster.kubectl("delete", "namespace", ns, "--wait=false", "--ignore-not-found")


def test_helm_install_runs_the_operator_and_brings_a_job_to_running(
        cluster: Cluster, crd_installed: Path, priority_classes: list[str],
        agent_node: AgentProcess, release_namespace: str, make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes, tmp_path: Path) -> None:
    wait_lease_free(cluster)
    jobs_ns = make_namespace(gpu_quota=4)
    sel = gpu_nodes(1, 2)
    sid = short_id()
    release = f"ft-{sid}"
    metrics_port = free_port()
    trainer_repo = f"example.invalid/helm-{sid}/trainer"
    adopt_crds(cluster, release, release_namespace)
    values = {
        **operator_values(agent_node.node, {"metrics": metrics_port, "health": free_port(),
                                            "reports": free_port()}),
        "watchNamespaces": [jobs_ns],
        "trainer": {"image": {"repository": trainer_repo, "tag": "test"}},
        # the job below pins itself to this test's nodes with this key (the chart's policy
        # limits nodeSelector keys; its binding covers watchNamespaces only)
        "policy": {"nodeSelectorKeys": list(sel)},
        # who may reach the queue view through the API server (`list --queue` below)
        "rbac": {"queueProxy": {"subjects": [{"kind": "ServiceAccount", "name": "alice",
                                              "namespace": jobs_ns}]}},
        # who may scrape /metrics: the chart binds its metrics-reader role to this account
        "metrics": {"readers": [{"namespace": release_namespace, "name": "prometheus"}]},
    }
    values_file = tmp_path / "values.yaml"
    values_file.write_text(yaml.safe_dump(values))
    installed = False
    try:
        helm(cluster, "install", release, str(CHART), "--namespace", release_namespace,
             "--values", str(values_file), "--wait", "--timeout", "150s")
        installed = True
        chart_crds(cluster, release, release_namespace)
        # every kind the operator serves: the sweep example applies (in a namespace of its
        # own, which no operator watches: only the API is tested here)
        sweep_ns = make_namespace()
        applied = cluster.kubectl("apply", "-n", sweep_ns, "-f", str(EXAMPLES / "sweep.yaml"),
                                  check=False)
        assert applied.returncode == 0, applied.stderr
        assert "finetunesweep.finetune.dev/lr-rank created" in applied.stdout, applied.stdout
        # an upgrade applies the chart's CRDs again: a label removed by hand comes back
        cluster.kubectl("label", "crd", CRDS[1], "helm.sh/chart-")
        helm(cluster, "upgrade", release, str(CHART), "--namespace", release_namespace,
             "--values", str(values_file), "--wait", "--timeout", "150s")
        chart_crds(cluster, release, release_namespace)
        pods = json.loads(cluster.kubectl(
            "get", "pods", "-n", release_namespace, "-l", f"app.kubernetes.io/instance={release}",
            "-o", "json").stdout)["items"]
        assert len(pods) == 1, pods
        pod = pods[0]
        assert pod["spec"]["nodeName"] == agent_node.node
        assert pod["spec"]["serviceAccountName"] == f"{release}-finetune-operator"
        assert pod["status"]["phase"] == "Running", pod["status"]
        pod_name = pod["metadata"]["name"]
        log = find_log(agent_node.root, release_namespace, pod_name, "operator")
        assert log is not None, f"no operator log under {agent_node.root}"

        def leads() -> bool:
            holder, fresh = lease_holder(cluster, release_namespace)
            return holder == pod_name and fresh

        try:
            wait_for(f"the chart's operator to hold {release_namespace}/{LEASE}", leads, 60)
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{log.read_text()[-4000:]}") from None

        cluster.apply(ftj("helm-job", 2, "finetune-normal", sel), jobs_ns)
        try:
            st = wait_phase(cluster, jobs_ns, "helm-job", "Running", 60)
        except AssertionError as e:
            raise AssertionError(f"{e}\noperator log:\n{log.read_text()[-4000:]}") from None
        assert (st["attempt"], st["failures"], st["preemptions"]) == (1, 0, 0)
        trainer_pods = job_pods(cluster, jobs_ns, "helm-job")
        assert [p["spec"]["containers"][0]["image"] for p in trainer_pods] == \
            [f"{trainer_repo}:test"], "the trainer pod was not created by the installed operator"
        events = json.loads(cluster.kubectl("get", "events", "-n", jobs_ns, "-o",
                                            "json").stdout)["items"]
        # the first start is the Admitted Event plus the phase (a Running Event only on resume)
        assert "Admitted" in {e["reason"] for e in events
                              if e["involvedObject"]["name"] == "helm-job"}

        # its /metrics (host port: the agent runs pods in the host's network), HTTPS with the
        # report channel's certificate (verified with the CA the trainers got), for the token
        # of the ServiceAccount the chart made a metrics reader
        token = scraper_token(cluster, release_namespace, "prometheus", reader=True, bind=False)
        config = cluster.get("configmap", "helm-job-config", jobs_ns)
        assert config is not None
        ca = yaml.safe_load(config["data"]["config.yaml"])["report"]["caPem"]
        req = urllib.request.Request(f"https://127.0.0.1:{metrics_port}/metrics",
                                     headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=5, context=ssl.create_default_context(
                cadata=ca)) as r:
            text = r.read().decode()
        assert (f'finetune_job_info{{job="helm-job",namespace="{jobs_ns}",phase="Running",'
                f'priority_class="finetune-normal"}} 1.0') in text
        # `list --queue` from outside the cluster, as team members bound only to the chart's
        # user role: through the API server's service proxy to the report Service, which the
        # chart's queue-proxy Role opens to rbac.queueProxy.subjects (alice here) only
        cluster.apply(ftj("helm-wait", 2, "finetune-normal", sel), jobs_ns)  # no GPU free
        wait_phase(cluster, jobs_ns, "helm-wait", "Queued", 60)
        team: dict[str, Path] = {}
        for who in ("alice", "mallory"):
            cluster.kubectl("create", "rolebinding", who, "-n", jobs_ns,
                            f"--clusterrole={release}-finetune-operator-edit",
                            f"--serviceaccount={jobs_ns}:{who}")
            team[who] = user_kubeconfig(cluster, jobs_ns, who, tmp_path / f"{who}.yaml")
        wait_for("RBAC to let alice through the service proxy", lambda: cluster.kubectl(
            "auth", "can-i", "get", "services/https:"
            f"{release}-finetune-operator-reports:reports", "--subresource=proxy", "-n",
            release_namespace, f"--as=system:serviceaccount:{jobs_ns}:alice",
            check=False).stdout.strip() == "yes", 30)
        svc = f"{release}-finetune-operator-reports"
        code, listed, err = as_user(team["mallory"], "list", "--queue")
        assert code == 0, err  # the coarse positions, and why not the exact ones
        assert (f"may not reach the operator's queue view through the API server (get "
                f"services/proxy on https:{svc}:{values['ports']['reports']} in namespace "
                f"{release_namespace})") in listed and "rbac.queueProxy.subjects" in listed, \
            listed
        code, listed, err = as_user(team["alice"], "list", "--queue")
        assert code == 0, err
        # alice passed the API server's RBAC and reached its proxy. This local cluster cannot
        # go further: every pod's IP is 127.0.0.1, which no Endpoints may name, so the API
        # server finds no endpoint for the Service (on a real cluster the operator answers;
        # tests/unit/test_queue_proxy.py covers the proxied request, test_serve.py the
        # forwarded token the operator reviews)
        assert "services/proxy" not in listed and "403" not in listed, listed
        assert f'no endpoints available for service "{svc}"' in listed, listed
        assert next(r for r in table(listed.split("\n", 1)[1])
                    if r["NAME"] == "helm-wait")["QUEUE"] == "1", listed
        cluster.kubectl("delete", "finetunejob", "helm-wait", "-n", jobs_ns)

        # the chart's RBAC sufficed: no request of the operator was refused
        output = log.read_text()
        assert not REFUSED_BY_API.search(output), output[-4000:]
        assert "acquired leadership" in output

        # `helm test`: the chart's test pod (operator image, operator ServiceAccount) finds the
        # API served and readable where the operator works
        def test_pod_log() -> str:  # on the agent (`--logs` needs a kubelet's log endpoint)
            found = find_log(agent_node.root, release_namespace,
                             f"{release}-finetune-operator-test-api", "test")
            return found.read_text() if found else "(no log)"

        try:
            tested = helm(cluster, "test", release, "--namespace", release_namespace,
                          "--timeout", "120s")
        except AssertionError as e:
            raise AssertionError(f"{e}\ntest pod log:\n{test_pod_log()}") from None
        assert "Phase:          Succeeded" in tested.stdout, tested.stdout
        assert f"is served and readable in {jobs_ns}" in test_pod_log()
    finally:
        if installed:
            helm(cluster, "uninstall", release, "--namespace", release_namespace, "--wait",
                 "--timeout", "120s")
    # (the `helm test` pod stays, as Helm keeps test pods for inspection, until the next test)
    wait_for("the operator pod to go", lambda: not json.loads(cluster.kubectl(
        "get", "pods", "-n", release_namespace, "-l",
        f"app.kubernetes.io/instance={release},app.kubernetes.io/component!=test",
        "-o", "json").stdout)["items"], 60)
    assert cluster.get("clusterrole", f"{release}-finetune-operator") is None
    for crd in CRDS:  # crds.keep (the default): uninstalling keeps the CRDs and every object
        kept = cluster.get("crd", crd)
        assert kept is not None, f"helm uninstall deleted {crd}"
        assert kept["metadata"]["annotations"]["helm.sh/resource-policy"] == "keep"
    assert cluster.get("finetunesweep", "lr-rank", sweep_ns) is not None
    # the job and its pod outlive the operator (an uninstall must not stop training)
    assert [p["metadata"]["name"] for p in job_pods(cluster, jobs_ns, "helm-job")] == \
        ["helm-job-a1-0"]
