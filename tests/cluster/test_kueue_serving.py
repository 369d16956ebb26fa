"""ModelServers in admission mode kueue against the real Kueue v0.17.0 (out of cluster) on the
local control plane with kwok GPU nodes: a server gets its own Workload, Kueue admits it, the
operator creates its pod with the flavor's constraints, its GPU counts in the ClusterQueue's
usage, a same-band job waits for it, a higher band makes Kueue evict it (the operator stops its
pod and clears the reservation, Kueue admits it again once the quota frees), deleting it frees
the quota, and an idle operator writes nothing.

The pods need not run the server: a kwok pod is Running with an address nothing answers on, so
the server stays Starting (the runtime is probed, never reached); admission is what is tested.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_api.labels import SERVER_LABEL
from finetune_operator.kueue.workload import JOB_UID_LABEL
from tests.builders import kueue as kq
from tests.builders.kueue import job, running
from tests.builders.server_cases import valid_server
from tests.kube import Cluster, wait_for
from tests.operator_proc import OperatorProcess, complete, job_status, wait_phase

pytestmark = pytest.mark.timeout(300)

ROOT = Path(__file__).resolve().parents[2]
SERVER_CRD = ROOT / "crds" / "modelservers.finetune.dev.yaml"


@pytest.fixture(scope="module")
def kueue_serving_operator(cluster: Cluster, crd_installed: Any, priority_classes: Any,
                           kueue: Path, tmp_path_factory: pytest.TempPathFactory,
                           ) -> Iterator[OperatorProcess]:
    """The operator in admission mode kueue with serving on, and a WorkloadPriorityClass per
    band."""
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SERVER_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/modelservers.finetune.dev")
    kq.priority_classes(cluster, ["finetune-critical", "finetune-high", "finetune-normal",
                                  "finetune-low"])
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator-kueue-serving"),
                         env={"FINETUNE_ADMISSION_MODE": "kueue", "FINETUNE_SERVING": "true"})
    op.start()
    yield op
    op.stop()


def server(name: str = "chat", band: str = "finetune-normal") -> dict[str, Any]:
    """A transformers server of 1 GPU for queue ``lq``, no adapters, no node selector of its
    own (the flavor Kueue assigns places it)."""
    body = kq.queued(valid_server(name), "lq")
    body["spec"].update(runtime="transformers", adapters=[], priorityClassName=band,
                        model={"name": "tiny", "source": {"hub": {"repo": "example/tiny"}}})
    return body


def server_obj(cluster: Cluster, ns: str, name: str = "chat") -> dict[str, Any] | None:
    return cluster.get("modelserver", name, ns)


def server_status(cluster: Cluster, ns: str, name: str = "chat") -> dict[str, Any]:
    return dict((server_obj(cluster, ns, name) or {}).get("status") or {})


def server_workload(cluster: Cluster, ns: str, name: str = "chat") -> dict[str, Any] | None:
    obj = server_obj(cluster, ns, name)
    if obj is None:
        return None
    got = [w for w in kq.workloads(cluster, ns)
           if w["metadata"]["labels"].get(JOB_UID_LABEL) == obj["metadata"]["uid"]]
    return got[0] if got else None


def server_pods(cluster: Cluster, ns: str, name: str = "chat") -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "pods", "-n", ns, "-l", f"{SERVER_LABEL}={name}", "-o",
                          "json").stdout
    return [p for p in json.loads(out)["items"] if not p["metadata"].get("deletionTimestamp")]


def gpus_used(cluster: Cluster, ns: str) -> int:
    """The GPUs the ClusterQueue of ``ns`` has admitted (``status.flavorsUsage``)."""
    for cq in json.loads(cluster.kubectl("get", "clusterqueues.kueue.x-k8s.io", "-o",
                                         "json").stdout)["items"]:
        if cq["spec"]["namespaceSelector"]["matchLabels"][
                "kubernetes.io/metadata.name"] == ns:
            return sum(int(r.get("total") or 0)
                       for f in (cq.get("status") or {}).get("flavorsUsage") or []
                       for r in f.get("resources") or [] if r["name"] == "nvidia.com/gpu")
    raise AssertionError(f"no ClusterQueue for namespace {ns}")


def admitted_with_pod(cluster: Cluster, ns: str) -> dict[str, Any]:
    """The server's one pod, once its Workload is admitted (and not evicted)."""
    def ready() -> dict[str, Any] | None:
        wl = server_workload(cluster, ns)
        pods = server_pods(cluster, ns)
        if wl is None or kq.condition(wl, "Admitted").get("status") != "True" or \
                kq.condition(wl, "Evicted").get("status") == "True" or len(pods) != 1:
            return None
        return pods[0]
    got = wait_for("the server admitted by Kueue with its pod", ready, 60)
    assert got is not None
    return got


def test_server_is_admitted_by_kueue_evicted_by_a_higher_band_and_frees_its_quota(
        cluster: Cluster, kueue_serving_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    ns, _ = queues(2)
    cluster.apply(server(), ns)
    pod = admitted_with_pod(cluster, ns)
    # its own Workload: owned by the server, one pod set of its one pod, its band
    wl = server_workload(cluster, ns)
    assert wl is not None
    owner = wl["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"]) == ("ModelServer", "chat"), owner
    (ps,) = wl["spec"]["podSets"]
    assert (ps["name"], ps["count"]) == ("server", 1)
    assert ps["template"]["spec"]["containers"][0]["resources"]["requests"][
        "nvidia.com/gpu"] == "1"
    assert wl["spec"]["priorityClassRef"]["name"] == "finetune-normal"
    # the pod carries the flavor's node labels (the server named none); its GPU is counted
    assert pod["spec"]["nodeSelector"] and all(
        k.startswith("finetune.dev/test") for k in pod["spec"]["nodeSelector"]), pod["spec"]
    wait_for("the server's GPU in the ClusterQueue's usage", lambda: gpus_used(cluster, ns) == 1,
             30)
    st = server_status(cluster, ns)
    assert st.get("pod") == pod["metadata"]["name"] and st.get("gpus") == 1, st

    # a job of the same band that needs both GPUs waits: Kueue does not preempt an equal band
    cluster.apply(job("same", 2), ns)
    wait_for("the job waits in Kueue", lambda: "insufficient unused quota" in (
        job_status(cluster, ns, "same").get("queue") or {}).get("reason", ""), 30)
    assert [p["metadata"]["uid"] for p in server_pods(cluster, ns)] == [pod["metadata"]["uid"]]

    cluster.kubectl("delete", "finetunejob", "same", "-n", ns)

    # a higher band: Kueue evicts the server (ClusterQueue preemption withinClusterQueue:
    # LowerPriority; the operator's serving_preemptible does not apply in this mode), the
    # operator stops its pod and clears the reservation, the job runs
    cluster.apply(job("urgent", 2, "finetune-high"), ns)
    running(cluster, ns, "urgent")
    assert server_pods(cluster, ns) == []
    st = wait_for("the server waits for Kueue again", lambda: (
        lambda s: s if s.get("phase") == "Queued" and "Kueue" in s.get("reason", "")
        else None)(server_status(cluster, ns)), 30)
    assert st.get("gpus") == 0, st
    wl = server_workload(cluster, ns)
    assert wl is not None and not (wl.get("status") or {}).get("admission"), wl
    assert kq.condition(wl, "Evicted").get("reason") == "Preempted", wl
    # the job's quota back: Kueue admits the same Workload again, the server gets a new pod
    complete(cluster, ns, "urgent")
    wait_phase(cluster, ns, "urgent", "Succeeded", 60)
    pod2 = admitted_with_pod(cluster, ns)
    assert pod2["metadata"]["uid"] != pod["metadata"]["uid"]
    again = server_workload(cluster, ns)
    assert again is not None and again["metadata"]["uid"] == wl["metadata"]["uid"]

    # deleting the server deletes its Workload (owner reference) and frees its GPU for a job
    # that waits
    cluster.apply(job("after", 2), ns)
    wait_for("the next job waits in Kueue", lambda: "Kueue" in (
        job_status(cluster, ns, "after").get("queue") or {}).get("reason", ""), 30)
    cluster.kubectl("delete", "modelserver", "chat", "-n", ns)
    wait_for("the server's Workload deleted", lambda: not [
        w for w in kq.workloads(cluster, ns)
        if w["metadata"]["ownerReferences"][0]["kind"] == "ModelServer"], 60)
    running(cluster, ns, "after")


def workload_writes(op: OperatorProcess) -> float:
    """The operator process's API writes to Workloads (finetune_api_requests_total)."""
    total = 0.0
    for line in op.metrics().splitlines():
        if line.startswith("finetune_api_requests_total{") and \
                'resource="workload' in line.lower() and \
                any(f'verb="{v}"' in line for v in ("create", "patch", "delete", "update")):
            total += float(line.split()[-1])
    return total


def test_a_waiting_server_shows_kueues_message_and_an_idle_one_costs_no_write(
        cluster: Cluster, kueue_serving_operator: OperatorProcess, kueue: Path,
        queues: Callable[..., tuple[str, str]]) -> None:
    ns, _ = queues(1)
    cluster.apply(job("first", 1), ns)
    running(cluster, ns, "first")
    cluster.apply(server(), ns)
    st = wait_for("the server waits with Kueue's message", lambda: (
        lambda s: s if "insufficient unused quota" in s.get("reason", "") else None)(
        server_status(cluster, ns)), 30)
    assert st.get("phase") == "Queued" and "LocalQueue lq" in st["reason"], st
    conds = {c["type"]: c for c in st.get("conditions") or []}
    assert conds["Admitted"]["status"] == "False", conds
    assert server_pods(cluster, ns) == []  # no pod before Kueue admits
    complete(cluster, ns, "first")
    admitted_with_pod(cluster, ns)
    # settled (the status names the pod and the runtime it waits for): then nothing is written
    wait_for("the server's status settled", lambda: (
        lambda s: s.get("phase") == "Starting" and s.get("pod"))(server_status(cluster, ns)), 30)
    wait_for("PodsReady on the server's Workload", lambda: kq.condition(
        server_workload(cluster, ns), "PodsReady").get("status") == "True", 30)

    def versions() -> tuple[str, str]:
        wl, obj = server_workload(cluster, ns), server_obj(cluster, ns)
        assert wl is not None and obj is not None
        return wl["metadata"]["resourceVersion"], obj["metadata"]["resourceVersion"]

    def cycles() -> float:
        return sum(float(line.split()[-1]) for line in
                   kueue_serving_operator.metrics().splitlines()
                   if line.startswith("finetune_scheduling_cycle_seconds_count"))

    before, start = versions(), cycles()
    before_uid = (server_workload(cluster, ns) or {}).get("metadata", {}).get("uid")
    wait_for("several cycles", lambda: cycles() >= start + 5, 60)
    assert versions() == before
    # a restart changes nothing either: the same pod, the same Workload at the same version
    pods = [p["metadata"]["uid"] for p in server_pods(cluster, ns)]
    assert workload_writes(kueue_serving_operator) >= 2  # the counter sees them: create, PodsReady
    kueue_serving_operator.kill()
    kueue_serving_operator.start()
    wait_for("several cycles after the restart", lambda: cycles() >= 5, 60)
    assert [p["metadata"]["uid"] for p in server_pods(cluster, ns)] == pods
    # the restarted operator wrote nothing to its Workload (its own counter: Kueue may touch
    # the Workload's status itself, e.g. when another test's queues go away)
    assert workload_writes(kueue_serving_operator) == 0, (
        "the restarted operator wrote the server's Workload:\n" + "\n".join(
            line for line in kueue_serving_operator.log(tail=None).splitlines()
            if "Workload" in line)[-4000:])
    assert (server_workload(cluster, ns) or {}).get("metadata", {}).get("uid") == before_uid

    # its resources changed while admitted: the old reservation is given back (the pod stops,
    # the Workload is replaced) and Kueue admits the new one (no GPU: nothing of the quota)
    old_wl = server_workload(cluster, ns)
    assert old_wl is not None
    cluster.kubectl("patch", "modelserver", "chat", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"resources": {"gpus": 0}}}')
    new_wl = wait_for("a new Workload for the new spec", lambda: (
        lambda w: w if w is not None and w["metadata"]["uid"] != old_wl["metadata"]["uid"]
        else None)(server_workload(cluster, ns)), 60)
    assert "nvidia.com/gpu" not in new_wl["spec"]["podSets"][0]["template"]["spec"][
        "containers"][0]["resources"]["requests"]
    pod = admitted_with_pod(cluster, ns)
    assert pod["metadata"]["uid"] not in pods
    wait_for("no GPU of the queue used", lambda: gpus_used(cluster, ns) == 0, 30)
