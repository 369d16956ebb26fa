"""GPU sharing through DRA, the pure part: what the operator reads of ResourceSlices and
ResourceClaims (admission/devices.py), and the native admitter's shared pass (jobs/decide.py):
shares packed by memory apart from whole jobs, quota by memory fraction, claims in flight
counted, the raised share after GPUMemoryExceeded (jobs/reconcile.py)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from finetune_dev.devcluster.dra import DRIVER, SHARED_CLASS, partition_slices, shared_slice
from finetune_operator.admission import ClusterView
from finetune_operator.admission.devices import ClaimUse, slim_claim, slim_slice
from finetune_operator.jobs.decide import NativeAdmitter
from tests.builders.jobs import make_job, make_settings

GiB = 2**30
NOW = dt.datetime(2026, 12, 7, 12, 0, tzinfo=dt.UTC)
GPU = "nvidia.com/gpu"
SETTINGS = make_settings(shared_gpu_device_class=SHARED_CLASS)
CLASSES = {"finetune-high": 7500, "finetune-normal": 5000}


def node(name: str, gpus: int = 0) -> dict[str, Any]:
    return {"metadata": {"name": name, "labels": {"pool": name}},
            "spec": {"taints": [], "unschedulable": False},
            "status": {"allocatable": {GPU: gpus}, "ready": "True"}}


def quota(ns: str, hard: int, used: int = 0) -> dict[str, Any]:
    key = f"requests.{GPU}"
    return {"metadata": {"name": "gpus", "namespace": ns}, "spec": {"hard": {key: hard}},
            "status": {"hard": {key: hard}, "used": {key: used}}}


def shared_job(name: str, memory: str, ns: str = "team-a", **kw: Any) -> Any:
    return make_job(name, ns, gpus=1, priority_class="finetune-normal",
                    resources={"gpuMemory": memory}, **kw)


def decide(jobs: list[Any], gpus: int = 2, quotas: list[dict[str, Any]] | None = None,
           uses: tuple[ClaimUse, ...] = (), whole_nodes: list[dict[str, Any]] | None = None,
           ) -> Any:
    view = ClusterView(jobs=jobs, pods_by_uid={}, classes=CLASSES,
                       nodes=[node("shared"), *(whole_nodes or [])], active_pods=[],
                       quotas=quotas or [], shared_gpus=slim_slice(shared_slice("shared", gpus),
                                                                   DRIVER),
                       claim_uses=uses)
    return NativeAdmitter(SETTINGS).decide(view, NOW)


def test_only_shareable_devices_of_the_driver_are_read() -> None:
    gpus = slim_slice(shared_slice("n1", 2), DRIVER)
    assert [(g.node, g.name, g.index, g.capacity) for g in gpus] == [
        ("n1", "gpu-0", 0, 80 * GiB), ("n1", "gpu-1", 1, 80 * GiB)]
    assert slim_slice(shared_slice("n1", 2), "other.driver") == ()
    # partitions are exclusive devices (no allowMultipleAllocations): not shareable
    assert all(slim_slice(s, DRIVER) == () for s in partition_slices("n2", 1))
    bad = shared_slice("n1", 1)
    bad["spec"]["devices"][0]["capacity"]["memory"]["value"] = "lots"
    assert slim_slice(bad, DRIVER) == ()  # unreadable capacity: not counted, never a crash


def test_claims_say_what_they_hold() -> None:
    claim = {"metadata": {"namespace": "team-b", "labels": {"finetune.dev/job-uid": "u1"}},
             "status": {"allocation": {"devices": {"results": [
                 {"driver": DRIVER, "pool": "n1", "device": "gpu-0",
                  "consumedCapacity": {"memory": "30Gi"}},
                 {"driver": "other", "pool": "n1", "device": "x"}]}}}}
    assert slim_claim(claim, DRIVER, "finetune.dev/job-uid") == (
        ClaimUse(namespace="team-b", job_uid="u1", pool="n1", device="gpu-0",
                 memory=30 * GiB),)
    assert slim_claim({"metadata": {}, "status": {}}, DRIVER, "x") == ()  # pending


def test_shares_pack_by_memory_and_wait_with_the_reason() -> None:
    jobs = [shared_job(f"s{i}", "30Gi", created=f"2026-12-07T10:0{i}:00Z") for i in range(5)]
    out = decide(jobs)
    admitted = [j.metadata.name for j in jobs if out.by_uid[j.metadata.uid].admit]
    assert admitted == ["s0", "s1", "s2", "s3"]
    v = out.by_uid[jobs[0].metadata.uid]
    assert (v.share, v.placement) == (30 * GiB, ("shared",))
    wait = out.by_uid[jobs[4].metadata.uid]
    assert not wait.admit and "largest free share 20.0 GiB" in wait.reason


def test_claims_already_allocated_take_their_memory() -> None:
    taken = (ClaimUse("other-team", "", "shared", "gpu-0", 70 * GiB),
             ClaimUse("other-team", "", "shared", "gpu-1", 70 * GiB))
    out = decide([shared_job("s", "20Gi")], uses=taken)
    v = next(iter(out.by_uid.values()))
    assert not v.admit and "largest free share 10.0 GiB" in v.reason


def test_quota_counts_the_memory_fraction() -> None:
    # 40 GiB of an 80 GiB GPU is 0.50 GPU: two fill a 1-GPU quota, a 10 GiB third waits
    jobs = [shared_job("a", "40Gi", created="2026-12-07T10:00:00Z"),
            shared_job("b", "40Gi", created="2026-12-07T10:01:00Z"),
            shared_job("c", "10Gi", created="2026-12-07T10:02:00Z")]
    out = decide(jobs, quotas=[quota("team-a", 1)])
    assert [out.by_uid[j.metadata.uid].admit for j in jobs] == [True, True, False]
    assert str(out.by_uid[jobs[2].metadata.uid].code) == "QuotaExhausted"


def test_whole_jobs_see_shares_in_their_quota_and_never_the_shared_pool() -> None:
    running = shared_job("r", "40Gi", status={
        "phase": "Running", "attempt": 1, "gpuMemory": {"attemptShare": 40 * GiB}})
    whole = make_job("w", "team-a", gpus=1, priority_class="finetune-normal")
    uses = (ClaimUse("team-a", running.metadata.uid, "shared", "gpu-0", 40 * GiB),)
    # quota 1 GPU, 0.50 of it shared: a whole GPU does not fit any more
    out = decide([running, whole], quotas=[quota("team-a", 1)], uses=uses,
                 whole_nodes=[node("whole", 8)])
    assert not out.by_uid[whole.metadata.uid].admit
    # with room in quota it runs, on the whole-GPU node
    out = decide([running, whole], quotas=[quota("team-a", 2)], uses=uses,
                 whole_nodes=[node("whole", 8)])
    assert out.by_uid[whole.metadata.uid].admit
    assert out.by_uid[whole.metadata.uid].placement == ("whole",)


def test_without_shared_gpus_a_gpu_memory_job_takes_a_whole_gpu() -> None:
    job = shared_job("s", "30Gi")
    view = ClusterView(jobs=[job], pods_by_uid={}, classes=CLASSES, nodes=[node("whole", 8)],
                       active_pods=[], quotas=[])
    v = NativeAdmitter(SETTINGS).decide(view, NOW).by_uid[job.metadata.uid]
    assert v.admit and v.share is None and v.placement == ("whole",)
