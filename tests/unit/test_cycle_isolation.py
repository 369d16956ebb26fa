"""loop.py's cycle, failure isolation (issue 19, deliverable 2): a job whose data one per-job step
cannot process (snapshot entry, decision words, plan, write classification, timers, metrics
sample) gets an InvalidData condition, an Event and a count, once per problem; it is left out of
that cycle, and every other job is admitted and executed as usual.

The Controller runs against a recording fake of its Kube client (the real calls are exercised
on the real control plane in tests/cluster/test_failure_isolation.py)."""

from __future__ import annotations

import copy
import datetime as dt
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from finetune_api.job import FineTuneJob
from finetune_operator.jobs import controller as loop
from finetune_operator.jobs import decide as snapshot
from finetune_operator.jobs.controller import Controller, job_entry
from finetune_operator.kube import cache
from finetune_operator.metrics import REGISTRY
from tests.builders.jobs import _merge, job_body, make_settings

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
GOOD = (("team-a", "first"), ("team-c", "last"))
BAD = ("team-b", "bad")


class RecordingKube:
    """The Kube calls the Controller makes, recorded; job statuses are merge-patched in place
    and every write bumps the resourceVersion, as the API server does."""

    def __init__(self, bodies: list[dict[str, Any]]) -> None:
        self.jobs = {(b["metadata"]["namespace"], b["metadata"]["name"]): b for b in bodies}
        self.calls: list[tuple[str, str, str]] = []  # (verb, kind, namespace/name)
        self.events: list[tuple[str, str, str]] = []  # (namespace/name, reason, message)
        self._lock = threading.Lock()
        self._rv = 100

    def _record(self, verb: str, kind: str, ns: str, name: str) -> None:
        with self._lock:
            self.calls.append((verb, kind, f"{ns}/{name}"))
            self._rv += 1

    def patch_job_status(self, namespace: str, name: str, status: dict,
                         resource_version: str | None = None) -> dict | None:
        self._record("patch", "FineTuneJob", namespace, name)
        body = self.jobs[(namespace, name)]
        body["status"] = _merge(body.get("status") or {}, status)  # RFC 7386
        body["metadata"]["resourceVersion"] = str(self._rv)
        return copy.deepcopy(body)

    def create_or_get(self, obj: dict) -> dict:
        meta = obj["metadata"]
        self._record("create", obj["kind"], meta["namespace"], meta["name"])
        return {**obj, "metadata": {**meta, "uid": f"uid-{meta['name']}",
                                    "resourceVersion": str(self._rv)}}

    create_or_patch = create_or_get

    def delete_pod(self, namespace: str, name: str, uid: str | None = None,
                   grace_seconds: int | None = None) -> bool:
        self._record("delete", "Pod", namespace, name)
        return True

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        self._record("delete", "FineTuneJob", namespace, name)
        return True

    def event(self, job: dict, type_: str, reason: str, message: str, now: dt.datetime,
              kind: str = "FineTuneJob") -> None:
        meta = job["metadata"]
        self._record("create", "Event", meta["namespace"], meta["name"])
        with self._lock:
            self.events.append((f"{meta['namespace']}/{meta['name']}", reason, message))

    def writes(self, key: str) -> list[tuple[str, str, str]]:
        with self._lock:
            return [c for c in self.calls if c[2] == key]


def _node() -> dict[str, Any]:
    return {"metadata": {"name": "node-0"},
            "status": {"allocatable": {"nvidia.com/gpu": "8"},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


@pytest.fixture
def cluster() -> Iterator[tuple[Controller, RecordingKube]]:
    bodies = [job_body(name, ns, gpus=gpus, created=f"2026-01-02T11:0{i}:00Z")
              for i, (ns, name, gpus) in enumerate(
                  [(*GOOD[0], 1), (*BAD, 1), (*GOOD[1], 1)])]
    kube = RecordingKube(bodies)
    ctrl = Controller(kube, make_settings(), namespace="ops", identity="test")  # type: ignore[arg-type]
    ctrl.leader, ctrl.lease_valid_until = True, time.monotonic() + 3600
    ctrl.classes.put("finetune-high", 10000)
    ctrl.nodes.put("node-0", cache.slim_node(_node()))
    for b in bodies:
        b["metadata"]["resourceVersion"] = "1"
        ctrl.jobs.put(b["metadata"]["uid"], job_entry(copy.deepcopy(b)))
    yield ctrl, kube
    ctrl.leader = False
    ctrl.stop()


def run_cycle(ctrl: Controller, at: dt.datetime) -> None:
    """One cycle, and its background writes landed (the next cycle sees them)."""
    ctrl.cycle(at)
    deadline = time.monotonic() + 10
    while ctrl._inflight:
        assert time.monotonic() < deadline, f"writes still in flight: {ctrl._inflight}"
        time.sleep(0.01)


def status(kube: RecordingKube, ns: str, name: str) -> dict[str, Any]:
    return dict(kube.jobs[(ns, name)].get("status") or {})


def invalid_count(ns: str, stage: str) -> float:
    return REGISTRY.get_sample_value("finetune_invalid_data_total",
                                     {"namespace": ns, "stage": stage}) or 0.0


class Injected(RuntimeError):
    pass


def failing_for(fn: Callable[..., Any], uid: str) -> Callable[..., Any]:
    """``fn``, raising for the one job ``uid`` (a FineTuneJob among the arguments)."""
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if any(isinstance(a, FineTuneJob) and a.metadata.uid == uid for a in args):
            raise Injected("injected failure for this job")
        return fn(*args, **kwargs)
    return wrapper


# the per-job stage functions of the cycle, each replaced by one that fails for one job
STAGES: dict[str, tuple[Any, str]] = {
    "snapshot": (snapshot, "snapshot_entry"),
    "plan": (loop, "plan"),
    "write": (Controller, "_write_kind"),
    "deadline": (loop, "due_at"),
    "metrics": (loop, "_sample"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failing_step_leaves_only_that_job_out(
        stage: str, cluster: tuple[Controller, RecordingKube],
        monkeypatch: pytest.MonkeyPatch) -> None:
    ctrl, kube = cluster
    bad_ns, bad_name = BAD
    bad_key, bad_uid = f"{bad_ns}/{bad_name}", kube.jobs[BAD]["metadata"]["uid"]
    owner, attr = STAGES[stage]
    monkeypatch.setattr(owner, attr, failing_for(getattr(owner, attr), bad_uid))
    before = invalid_count(bad_ns, stage)

    run_cycle(ctrl, NOW)

    for ns, name in GOOD:  # every other job decided and executed as usual
        assert status(kube, ns, name).get("phase") == "Admitted", (stage, name)
        assert ("create", "Pod", f"{ns}/{name}-a1-0") in kube.calls, (stage, kube.calls)
    st = status(kube, bad_ns, bad_name)
    assert st.get("phase") is None and st.get("attempt", 0) == 0, st
    cond = next(c for c in st["conditions"] if c["type"] == "InvalidData")
    assert cond["status"] == "True", cond
    assert "Injected: injected failure" in cond["message"], cond
    assert snapshot.STEPS[stage] in cond["message"], cond
    assert "correct the field named" in cond["message"], cond
    assert [e[1] for e in kube.events if e[0] == bad_key] == ["InvalidData"]
    assert kube.writes(bad_key) == [("patch", "FineTuneJob", bad_key),
                                    ("create", "Event", bad_key)]
    assert invalid_count(bad_ns, stage) == before + 1

    # the same problem next cycles: no write, no Event, no count (the write budget)
    for i in range(1, 4):
        run_cycle(ctrl, NOW + dt.timedelta(seconds=i))
    assert len(kube.writes(bad_key)) == 2, kube.writes(bad_key)
    assert invalid_count(bad_ns, stage) == before + 1

    # fixed (here: the step works again) and the job changes: it is admitted, the condition
    # turns False
    monkeypatch.undo()
    body = copy.deepcopy(kube.jobs[BAD])
    body["metadata"]["resourceVersion"] = "999"
    ctrl.jobs.put(bad_uid, job_entry(body))
    for i in range(4, 7):
        run_cycle(ctrl, NOW + dt.timedelta(seconds=i))
    st = status(kube, bad_ns, bad_name)
    assert st.get("phase") == "Admitted", st
    cond = next(c for c in st["conditions"] if c["type"] == "InvalidData")
    assert cond["status"] == "False", cond
    assert ("create", "Pod", f"{bad_key}-a1-0") in kube.calls


def test_a_failing_decision_leaves_only_that_job_out(
        cluster: tuple[Controller, RecordingKube], monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision words (tenant_words) of a job that cannot fit (9 GPUs, the node has 8):
    it is left out, and the jobs created before and after it are admitted."""
    ctrl, kube = cluster
    bad_ns = BAD[0]
    body = kube.jobs[BAD]
    body["spec"]["resources"]["gpus"] = 9
    ctrl.jobs.put(body["metadata"]["uid"], job_entry(copy.deepcopy(body)))
    words = snapshot.tenant_words

    def failing(text: str, namespace: str, keys: set[str]) -> str:
        if namespace == bad_ns:
            raise Injected("injected failure for this job")
        return words(text, namespace, keys)

    monkeypatch.setattr(snapshot, "tenant_words", failing)
    before = invalid_count(bad_ns, "decision")
    run_cycle(ctrl, NOW)
    assert [status(kube, ns, name).get("phase") for ns, name in GOOD] == ["Admitted"] * 2
    cond = next(c for c in status(kube, *BAD)["conditions"] if c["type"] == "InvalidData")
    assert cond["status"] == "True" and snapshot.STEPS["decision"] in cond["message"], cond
    assert invalid_count(bad_ns, "decision") == before + 1
    assert status(kube, *BAD).get("phase") is None
