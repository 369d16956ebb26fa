"""Small jobs share a GPU through Dynamic Resource Allocation (issue 24), on the real control
plane: kwok nodes whose GPUs a fake DRA driver publishes with consumable memory
(finetune_dev/devcluster/dra.py), the real kube-scheduler allocating each shared job's
ResourceClaim, the operator packing shared jobs by memory, charging quota by memory fraction,
and raising a share that ran out of memory without counting a failure."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_dev.devcluster import dra
from tests.kube import Cluster, short_id, wait_for
from tests.operator_proc import OperatorProcess, finish_pod, ftj, job_pods, job_status, wait_phase

pytestmark = [pytest.mark.cluster, pytest.mark.timeout(240)]
GiB = 2**30


@pytest.fixture(scope="module")
def sharing_operator(cluster: Cluster, crd_installed: Path, priority_classes: list[str],
                     tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, tmp_path_factory.mktemp("operator"), env={
        "FINETUNE_SHARED_GPU_DEVICE_CLASS": dra.SHARED_CLASS})
    op.start()
    yield op
    op.stop()


@pytest.fixture
def dra_node(cluster: Cluster) -> Iterator[Callable[[int], dict[str, str]]]:
    """make(gpus) -> the node selector of a fresh kwok node with ``gpus`` shareable 80 GiB GPUs."""
    made: list[str] = []

    def make(gpus: int) -> dict[str, str]:
        sid = short_id()
        made.append(dra.add_dra_node(cluster.cfg, f"dra-{sid}", gpus, "shared",
                                     {"finetune.dev/test": sid}))
        return {"finetune.dev/test": sid}

    yield make
    for name in made:
        dra.remove_dra_node(cluster.cfg, name)


def shared(name: str, memory: str, sel: dict[str, str]) -> dict[str, Any]:
    job = ftj(name, 1, "finetune-normal", sel)
    job["spec"]["resources"]["gpuMemory"] = memory
    return job


def claims(cluster: Cluster, ns: str) -> dict[str, tuple[str, str]]:
    """pod name -> (device, consumed memory) of each allocated claim in ``ns``."""
    out: dict[str, tuple[str, str]] = {}
    items = json.loads(cluster.kubectl("get", "resourceclaims", "-n", ns, "-o", "json").stdout)
    for c in items["items"]:
        results = (((c.get("status") or {}).get("allocation") or {}).get("devices") or {}).get(
            "results") or []
        owner = (c["metadata"].get("ownerReferences") or [{}])[0].get("name", "")
        for r in results:
            out[owner] = (r["device"], (r.get("consumedCapacity") or {}).get("memory", ""))
    return out


def test_shared_jobs_pack_by_memory_and_wait_for_room(
        cluster: Cluster, sharing_operator: OperatorProcess, dra_node,  # type: ignore[no-untyped-def]
        make_namespace: Callable[..., str]) -> None:
    sel = dra_node(2)  # two 80 GiB GPUs
    ns = make_namespace(gpu_quota=2)
    for i in range(4):
        cluster.apply(shared(f"s{i}", "30Gi", sel), ns)
    for i in range(4):
        wait_phase(cluster, ns, f"s{i}", "Running", 60)
    got = wait_for("four claims allocated", lambda: (
        lambda c: c if len(c) == 4 else None)(claims(cluster, ns)), 30)
    # two 30 GiB shares on each 80 GiB GPU; the pods ask no whole GPU
    assert sorted(d for d, _ in got.values()) == ["gpu-0", "gpu-0", "gpu-1", "gpu-1"], got
    assert {m for _, m in got.values()} == {"30Gi"}, got
    pod = job_pods(cluster, ns, "s0")[0]
    assert "nvidia.com/gpu" not in pod["spec"]["containers"][0]["resources"].get("requests", {})
    assert pod["spec"]["resourceClaims"][0]["resourceClaimTemplateName"] == "s0-gpu-a1"
    st = job_status(cluster, ns, "s0")
    assert st["gpuMemory"]["attemptShare"] == 30 * GiB
    # a fifth: 20 GiB left on each GPU, never over a device: it waits, saying why
    cluster.apply(shared("s4", "30Gi", sel), ns)
    st = wait_for("s4 waits for a share", lambda: (lambda s: s if "largest free share 20.0 GiB"
                                                   in (s.get("queue") or {}).get("reason", "")
                                                   else None)(job_status(cluster, ns, "s4")), 30)
    assert st["phase"] == "Queued"
    # one finishes: its share frees and the fifth takes it
    running = [p for p in job_pods(cluster, ns, "s1") if p["status"].get("phase") == "Running"]
    finish_pod(cluster, ns, running[0]["metadata"]["name"], 0, "Completed",
               {"reason": "Completed", "finalStep": 100, "adapterPath": "output/adapter"})
    wait_phase(cluster, ns, "s1", "Succeeded", 60)
    wait_phase(cluster, ns, "s4", "Running", 60)


def test_a_share_counts_its_memory_fraction_against_quota(
        cluster: Cluster, sharing_operator: OperatorProcess, dra_node,  # type: ignore[no-untyped-def]
        make_namespace: Callable[..., str]) -> None:
    sel = dra_node(2)
    ns = make_namespace(gpu_quota=1)
    # 40 GiB of 80 GiB = 0.50 GPU each: two fill a quota of 1 GPU
    cluster.apply(shared("a", "40Gi", sel), ns)
    cluster.apply(shared("b", "40Gi", sel), ns)
    wait_phase(cluster, ns, "a", "Running", 60)
    wait_phase(cluster, ns, "b", "Running", 60)
    # 10 GiB would fit a GPU (the second one is empty) but not the quota
    cluster.apply(shared("c", "10Gi", sel), ns)
    st = wait_for("c waits on quota", lambda: (lambda s: s if s.get("conditions") and any(
        c["type"] == "Admitted" and c["reason"] == "QuotaExhausted" for c in s["conditions"])
        else None)(job_status(cluster, ns, "c")), 30)
    assert "quota" in st["queue"]["reason"].lower(), st


def test_a_share_that_runs_out_of_memory_is_raised_and_its_neighbour_untouched(
        cluster: Cluster, sharing_operator: OperatorProcess, dra_node,  # type: ignore[no-untyped-def]
        make_namespace: Callable[..., str]) -> None:
    sel = dra_node(1)
    ns = make_namespace(gpu_quota=1)
    # a neighbour on the same GPU (30 + 30 GiB of 80)
    cluster.apply(shared("neighbour", "30Gi", sel), ns)
    cluster.apply(shared("oom", "30Gi", sel), ns)
    wait_phase(cluster, ns, "oom", "Running", 60)
    wait_phase(cluster, ns, "neighbour", "Running", 60)
    got = wait_for("both claims on the one GPU", lambda: (
        lambda c: c if len(c) == 2 else None)(claims(cluster, ns)), 30)
    assert {d for d, _ in got.values()} == {"gpu-0"}, got
    (neighbour_pod,) = job_pods(cluster, ns, "neighbour")
    (pod,) = job_pods(cluster, ns, "oom")
    # the trainer's cap stopped it: out of CUDA memory within its share
    finish_pod(cluster, ns, pod["metadata"]["name"], 1, "Error", {
        "reason": "Error", "cause": "GPUMemoryExceeded",
        "message": "GPUMemoryExceeded: CUDA out of memory within the 30.0 GiB share"})
    st = wait_for("attempt 2 running with a larger share", lambda: (
        lambda s: s if s.get("attempt") == 2 and s.get("phase") == "Running" else None)(
        job_status(cluster, ns, "oom")), 90)
    assert st["failures"] == 0, st
    assert (st["gpuMemory"]["raises"], st["gpuMemory"]["request"],
            st["gpuMemory"]["attemptShare"]) == (1, 45 * GiB, 45 * GiB), st["gpuMemory"]
    pods = [p for p in job_pods(cluster, ns, "oom")
            if p["metadata"]["labels"]["finetune.dev/attempt"] == "2"]
    env = {e["name"]: e.get("value") for e in pods[0]["spec"]["containers"][0]["env"]}
    assert env["FINETUNE_GPU_MEMORY_SHARE"] == str(45 * GiB)
    # the neighbour never noticed: the same pod, attempt 1, still running, and it finishes
    (still,) = job_pods(cluster, ns, "neighbour")
    assert still["metadata"]["uid"] == neighbour_pod["metadata"]["uid"]
    nst = job_status(cluster, ns, "neighbour")
    assert (nst["phase"], nst["attempt"], nst["failures"], nst["preemptions"]) == (
        "Running", 1, 0, 0), nst
    finish_pod(cluster, ns, still["metadata"]["name"], 0, "Completed",
               {"reason": "Completed", "finalStep": 100, "adapterPath": "output/adapter"})
    wait_phase(cluster, ns, "neighbour", "Succeeded", 60)
    tpl = cluster.get("resourceclaimtemplate", "oom-gpu-a2", ns)
    assert tpl is not None
    assert tpl["spec"]["spec"]["devices"]["requests"][0]["exactly"]["capacity"]["requests"][
        "memory"] == "45Gi"  # 46080Mi as the API server writes it
