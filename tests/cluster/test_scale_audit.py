"""The scale benchmark's correctness audits, small enough for `make test` (counts, never
times): 300 one-GPU FineTuneJobs in three priority classes over three namespaces with a GPU
quota each, created while the operator is stopped (so the set it must admit is known), then
three waves of admissions (every running pod completed in between).

Audited as benchmarks/bench_scale.py does on both systems (benchmarks/scale/audit.py):
pods per namespace never above its quota (sampled on every pod event), 0 rejected pod
creates (FailedCreate Events, 403s in the operator's log), no lower-priority job admitted while
a higher one of its namespace waited, FIFO within a priority, and exactly the expected set of
jobs admitted. Kueue is not run here: the side-by-side comparison is the benchmark's (it needs
a Kueue build); this test holds our side of the audits in CI.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from scale import audit
from scale.load import MERGE, Api, Watch
from scale.track import Decisions, PodTrack

from ..kube import wait_for
from ..operator_proc import ftj

pytestmark = pytest.mark.cluster

NAMESPACES, QUOTA, JOBS, WAVES = 3, 8, 300, 3
MIX = ["finetune-high", "finetune-normal", "finetune-low"]
JOB_LABEL = "finetune.dev/job"
DONE = '{"reason": "Completed", "finalStep": 1}'


def rejected_creates(operator, namespaces: list[str]) -> list[str]:  # type: ignore[no-untyped-def]
    """Lines of the operator's log where the API server refused a pod create in the test's
    namespaces (quota exceeded, 403)."""
    return [line[-300:] for line in operator.log(tail=None).splitlines()
            if any(f" {ns}/" in line for ns in namespaces) and (
                "PodCreateFailed" in line or "exceeded quota" in line
                or (re.search(r"\b403\b", line) is not None and "pod" in line.lower()))]


def test_mixed_priority_audit(cluster, operator, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    namespaces = [make_namespace(gpu_quota=QUOTA) for _ in range(NAMESPACES)]
    selector = gpu_nodes(2, 16)  # 32 GPUs > 24 of quota: the quotas are what binds
    operator.stop()  # every job exists before the operator starts: a known admitted set
    cfg = cluster.cfg
    api = Api(cfg.host, cfg.ports.apiserver, cfg.state_dir / "pki")
    track, decisions = PodTrack(JOB_LABEL), Decisions()
    watches = [Watch(api, f"/api/v1/namespaces/{ns}/pods", track.on_event,
                     selector=JOB_LABEL).start() for ns in namespaces]
    watches += [Watch(api, f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs",
                      decisions.on_ftj).start() for ns in namespaces]
    try:
        names = [f"j-{i:05d}" for i in range(JOBS)]
        calls = [(f"/apis/finetune.dev/v1alpha1/namespaces/{namespaces[i % NAMESPACES]}/"
                  "finetunejobs",
                  ftj(name, 1, audit.priority_of(i, NAMESPACES, MIX), selector,
                      resources={"gpus": 1, "cpu": "100m", "memory": "64Mi",
                                 "nodeSelector": selector}))
                 for i, name in enumerate(names)]
        done = api.many("POST", calls, workers=8, allow=())
        applied = {f"{namespaces[i % NAMESPACES]}/{n}": t
                   for i, (n, t) in enumerate(zip(names, done, strict=True))}
        home = make_namespace()  # the operator's own (its Lease): no jobs there
        operator.start(FINETUNE_NAMESPACES=",".join(namespaces), POD_NAMESPACE=home)

        capacity = NAMESPACES * QUOTA
        for wave in range(WAVES):
            wait_for(f"wave {wave + 1}: {capacity} pods Running (or a pod create refused)",
                     lambda: (track.n_running() >= capacity
                              or rejected_creates(operator, namespaces)),
                     120, 0.5)
            assert not rejected_creates(operator, namespaces), (
                f"audit '0 rejected pod creates' failed in wave {wave + 1}: the operator "
                "admitted past a namespace's quota: " + "; ".join(
                    rejected_creates(operator, namespaces)[:3]))
            if wave == WAVES - 1:
                break
            with track.lock:
                running = sorted(track.running)
            body = {"status": {"phase": "Succeeded", "containerStatuses": [{
                "name": "trainer", "image": "finetune-operator/trainer:test", "imageID": "",
                "ready": False, "restartCount": 0, "started": False,
                "state": {"terminated": {"exitCode": 0, "reason": "Completed",
                                         "message": DONE, "startedAt": "2026-01-01T00:00:00Z",
                                         "finishedAt": "2026-01-01T00:00:01Z"}}}]}}
            api.many("PATCH", [(f"/api/v1/namespaces/{k.split('/')[0]}/pods/"
                                f"{k.split('/')[1]}/status", body) for k in running],
                     workers=8, content_type=MERGE, allow=())
            wait_for(f"wave {wave + 1}: the completed pods to leave the running set",
                     lambda gone=set(running): not (gone & track.running), 60, 0.5)
        want = WAVES * capacity
        wait_for(f"{want} jobs decided", lambda: len(decisions.copy()[0]) >= want, 60, 0.5)
    finally:
        for w in watches:
            w.stop()
        operator.stop()
        operator.start()  # the module's other tests get the operator as they found it

    decided, _ = decisions.copy()
    # 1. never above quota: the most pods holding GPUs at once in each namespace
    assert max(track.max_live.values()) <= QUOTA, track.max_live
    assert max(track.max_live.values()) == QUOTA  # the audit saw the quota reached
    # 2. no rejected pod create
    events = [e for ns in namespaces for e in api.list_all(
        f"/api/v1/namespaces/{ns}/events?fieldSelector=reason%3DFailedCreate")[0]]
    assert events == [], [e.get("message") for e in events[:3]]
    assert rejected_creates(operator, namespaces) == []
    # 3./4. priority before FIFO, per namespace
    created_at, decided_at = decisions.server_times()
    seen = [audit.Seen(j.split("/")[0], j.split("/")[1],
                       audit.PRIORITIES[audit.priority_of(int(j.split("/")[1][2:]),
                                                          NAMESPACES, MIX)],
                       created_at[j], decided_at.get(j)) for j in applied]
    order = audit.order_violations(seen, grace=2.0)
    assert (order["priority"], order["fifo"]) == (0, 0), order["examples"]
    # 5. exactly the jobs that had to go first: per namespace the first WAVES*QUOTA by
    # priority, then creationTimestamp, then name (the operator's documented order)
    created = {f"{ns}/{j['metadata']['name']}": j["metadata"]["creationTimestamp"]
               for ns in namespaces for j in api.list_all(
                   f"/apis/finetune.dev/v1alpha1/namespaces/{ns}/finetunejobs")[0]}
    expected = set()
    for ns in namespaces:
        mine = sorted((s for s in seen if s.ns == ns),
                      key=lambda s: (-s.priority, created[f"{s.ns}/{s.name}"], s.name))
        expected |= {f"{ns}/{s.name}" for s in mine[:WAVES * QUOTA]}
    assert set(decided) == expected, (sorted(set(decided) - expected)[:5],
                                      sorted(expected - set(decided))[:5])
