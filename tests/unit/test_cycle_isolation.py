"""The controller's cycle (jobs/cycle.py), failure isolation (issue 19, deliverable 2): a job
whose data one per-job step cannot process (snapshot entry, decision words, plan, write
classification, timers, metrics sample) gets an InvalidData condition, an Event and a count,
once per problem; it is left out of that cycle, and every other job is admitted and executed
as usual.

The Controller runs against a recording fake of its JobKube (tests/builders/jobkube.py; the real
calls are exercised on the real control plane in tests/cluster/test_failure_isolation.py)."""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from finetune_api.job import FineTuneJob
from finetune_operator.jobs import cycle as cycle_module
from finetune_operator.jobs import decide as snapshot
from finetune_operator.jobs.controller import Controller
from finetune_operator.jobs.executor import Executor
from finetune_operator.jobs.feeds import job_entry
from finetune_operator.metrics import REGISTRY
from tests.builders.jobkube import FakeClock, RecordingJobKube, gpu_node, load
from tests.builders.jobs import job_body, make_settings

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
GOOD = (("team-a", "first"), ("team-c", "last"))
BAD = ("team-b", "bad")


@pytest.fixture
def cluster() -> Iterator[tuple[Controller, RecordingJobKube]]:
    bodies = [job_body(name, ns, gpus=gpus, created=f"2026-01-02T11:0{i}:00Z")
              for i, (ns, name, gpus) in enumerate(
                  [(*GOOD[0], 1), (*BAD, 1), (*GOOD[1], 1)])]
    kube = RecordingJobKube(bodies)
    ctrl = Controller(kube, make_settings(), namespace="ops", identity="test",
                      clock=FakeClock(NOW))
    ctrl.lease.grant(3600)
    load(ctrl, kube, [gpu_node()], {"finetune-high": 10000})
    yield ctrl, kube
    ctrl.lease.leader = False
    ctrl.stop()


def run_cycle(ctrl: Controller, at: dt.datetime) -> None:
    """One cycle, and its background writes landed (the next cycle sees them)."""
    ctrl.run_cycle(at)
    ctrl.executor.drain()


def status(kube: RecordingJobKube, ns: str, name: str) -> dict[str, Any]:
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
    "snapshot": (snapshot, "entry_recipe"),
    "plan": (cycle_module, "plan"),
    "write": (Executor, "write_kind"),
    "deadline": (cycle_module, "due_at"),
    "metrics": (cycle_module, "sample"),
}


@pytest.mark.parametrize("stage", list(STAGES))
def test_a_failing_step_leaves_only_that_job_out(
        stage: str, cluster: tuple[Controller, RecordingJobKube],
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
    ctrl.feeds.jobs.put(bad_uid, job_entry(body))
    for i in range(4, 7):
        run_cycle(ctrl, NOW + dt.timedelta(seconds=i))
    st = status(kube, bad_ns, bad_name)
    assert st.get("phase") == "Admitted", st
    cond = next(c for c in st["conditions"] if c["type"] == "InvalidData")
    assert cond["status"] == "False", cond
    assert ("create", "Pod", f"{bad_key}-a1-0") in kube.calls


def test_a_failing_decision_leaves_only_that_job_out(
        cluster: tuple[Controller, RecordingJobKube], monkeypatch: pytest.MonkeyPatch) -> None:
    """The decision words (tenant_words) of a job that cannot fit (9 GPUs, the node has 8):
    it is left out, and the jobs created before and after it are admitted."""
    ctrl, kube = cluster
    bad_ns = BAD[0]
    body = kube.jobs[BAD]
    body["spec"]["resources"]["gpus"] = 9
    ctrl.feeds.jobs.put(body["metadata"]["uid"], job_entry(copy.deepcopy(body)))
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
