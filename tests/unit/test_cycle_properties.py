"""The pure cycle never raises (issue 19, deliverable 2): any spec the parser accepts, any stored
status (hostile strings and numbers included), any report the report channel accepts and any
trainer pod go through snapshot.decide and, for each job, reconcile.plan, due_at, the write
classification and the metrics sample without an exception, and no job is left out as invalid
(every value is bounded where it enters)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from finetune_api.job import FineTuneJob
from finetune_api.spec import MAX_SECONDS
from finetune_operator.jobs.cycle import sample as _sample
from finetune_operator.jobs.decide import decide
from finetune_operator.jobs.reconcile import Ctx, JobVerdict, due_at, plan
from finetune_operator.jobs.writes import classify
from finetune_operator.reports.model import BadReport, ProgressReport, parse_report
from tests.builders.jobs import job_body, make_settings
from tests.builders.pods import make_pod

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)
CLASSES = {"finetune-critical": 100000, "finetune-high": 10000, "finetune-normal": 1000,
           "finetune-low": 100}
SETTINGS = make_settings(allowed_priority_classes=list(CLASSES))
TIMING = {"pods_ready_timeout": 600.0, "force_delete_margin": 60.0,
          "unschedulable_grace": 900.0}  # no "ttl": finished jobs kept (setting unset)
NODES = [{"metadata": {"name": f"node-{i}", "labels": {}}, "spec": {},
          "status": {"allocatable": {"nvidia.com/gpu": "8"}, "ready": "True"}}
         for i in range(2)]

# what a stored status may hold where the operator writes a time: its own values, the extremes,
# what old operators wrote (a year < 1000 without zero padding), hand edits and garbage
TIMES = st.one_of(
    st.none(),
    st.sampled_from(["999-01-01T00:00:00Z", "0999-01-01T00:00:00Z", "1000-01-01T00:00:00Z",
                     "0001-01-01T00:00:00Z", "9999-12-31T23:59:59Z", "2026-01-02T12:00:00",
                     "2026-01-02T12:00:00+14:00", "2026-13-45T99:99:99Z", "garbage", "",
                     "2026-01-02T11:59:59.999999999Z"]),
    st.datetimes(min_value=dt.datetime(1, 1, 2), max_value=dt.datetime(9999, 12, 30),
                 timezones=st.just(dt.UTC)).map(lambda t: t.isoformat().replace("+00:00", "Z")),
    st.text(max_size=30),
)
NUMBERS = st.one_of(st.floats(allow_nan=True, allow_infinity=True), st.integers(-2**70, 2**70))
COUNTS = st.integers(0, 2**40)
PHASES = st.sampled_from([None, "Queued", "Admitted", "Running", "Preempting", "Suspended",
                          "Succeeded", "Failed"])


@st.composite
def stored_status(draw: st.DrawFn) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": draw(PHASES), "attempt": draw(st.integers(0, 3)),
        "failures": draw(st.integers(0, 20)), "preemptions": draw(st.integers(0, 20)),
        "activeSeconds": draw(NUMBERS), "startRequeues": draw(st.integers(0, 5)),
        "effectivePriorityClass": draw(st.one_of(st.none(), st.sampled_from(list(CLASSES)))),
        "stopReason": draw(st.sampled_from([None, "suspend", "preempted", "x"])),
        "progressAttempt": draw(st.one_of(st.none(), st.integers(0, 3))),
    }
    for key in ("startTime", "completionTime", "admittedAt", "queuedSince", "retryAfter",
                "unschedulableSince", "firstQueuedAt"):
        status[key] = draw(TIMES)
    if draw(st.booleans()):
        status["checkpoint"] = {"step": draw(COUNTS), "path": "checkpoints/c",
                                "savedAt": draw(TIMES), "saveSeconds": draw(NUMBERS)}
    if draw(st.booleans()):
        status["progress"] = {"step": draw(COUNTS), "totalSteps": draw(st.one_of(st.none(),
                                                                              COUNTS)),
                              "etaSeconds": draw(NUMBERS), "loss": draw(NUMBERS),
                              "updatedAt": draw(TIMES)}
    return {k: v for k, v in status.items() if v is not None}


@st.composite
def a_job(draw: st.DrawFn, index: int) -> FineTuneJob:
    spec: dict[str, Any] = {
        "suspend": draw(st.booleans()),
        "activeDeadlineSeconds": draw(st.one_of(st.none(), st.integers(1, MAX_SECONDS))),
        "ttlSecondsAfterFinished": draw(st.one_of(st.none(), st.integers(0, MAX_SECONDS))),
    }
    body = job_body(f"j{index}", f"team-{draw(st.sampled_from('abc'))}",
                    gpus=draw(st.integers(0, 16)), nodes=draw(st.integers(1, 3)),
                    priority_class=draw(st.sampled_from(list(CLASSES))),
                    created=draw(TIMES) or "2026-01-02T11:00:00Z",
                    status=draw(stored_status()),
                    **{k: v for k, v in spec.items() if v is not None})
    try:
        return FineTuneJob.from_body(body)
    except (ValidationError, ValueError):
        assume(False)
        raise


@st.composite
def a_report(draw: st.DrawFn) -> ProgressReport | None:
    """A report as the channel hands it on: only what parse_report accepts."""
    if draw(st.booleans()):
        return None
    body: dict[str, Any] = {"step": draw(COUNTS), "etaSeconds": draw(NUMBERS),
                            "loss": draw(NUMBERS), "updatedAt": draw(TIMES)}
    if draw(st.booleans()):
        body["resumedFromStep"] = draw(st.one_of(st.none(), COUNTS))
    if draw(st.booleans()):
        body["checkpoint"] = {"step": draw(COUNTS), "path": "checkpoints/c",
                              "savedAt": draw(TIMES), "saveSeconds": draw(NUMBERS)}
    try:
        return parse_report(json.dumps({k: v for k, v in body.items() if v is not None})
                            .encode())
    except (BadReport, ValueError):
        return None


@st.composite
def its_pods(draw: st.DrawFn, job: FineTuneJob) -> list[dict[str, Any]]:
    attempt = job.status.attempt
    if attempt < 1 or not draw(st.booleans()):
        return []
    exit_code = draw(st.sampled_from([None, 0, 1, 2, 137]))
    message = draw(st.sampled_from([None, "plain text", "{not json"])) if exit_code is None \
        else {"reason": draw(st.sampled_from(["Completed", "Preempted"])),
              "finalStep": draw(COUNTS),
              "checkpoint": {"step": draw(COUNTS), "path": "checkpoints/c",
                             "savedAt": draw(TIMES)}}
    return [make_pod(job, draw(st.integers(max(1, attempt - 1), attempt)), rank,
                     exit_code=exit_code, message=message, deleting=draw(st.booleans()),
                     disruption=draw(st.sampled_from([None, "PreemptionByScheduler",
                                                      "DeletionByTaintManager"])))
            for rank in range(job.spec.resources.nodes)]


@st.composite
def cluster(draw: st.DrawFn) -> tuple[list[FineTuneJob], dict[str, list[dict]],
                                      dict[str, ProgressReport | None]]:
    jobs = [draw(a_job(i)) for i in range(draw(st.integers(1, 3)))]
    pods = {j.metadata.uid: draw(its_pods(j)) for j in jobs}
    reports = {j.metadata.uid: draw(a_report()) for j in jobs}
    return jobs, pods, reports


@settings(max_examples=200, deadline=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(cluster())
def test_the_pure_cycle_never_raises(world: tuple[list[FineTuneJob], dict[str, list[dict]],
                                                  dict[str, ProgressReport | None]]) -> None:
    jobs, pods, reports = world
    active = [p for ps in pods.values() for p in ps
              if p["status"]["phase"] not in ("Succeeded", "Failed")]
    decisions = decide(jobs, pods, CLASSES, SETTINGS, NODES, active, [], NOW)
    assert decisions.invalid == {}
    for job in jobs:
        uid = job.metadata.uid
        ctx = Ctx(now=NOW, backoff_seconds=SETTINGS.backoff_seconds(job.status.failures + 1),
                  priority_class=job.spec.priority_class_name,
                  watched_report=reports[uid])
        pl = plan(job, pods[uid], decisions.get(uid, JobVerdict()), ctx)
        due_at(job, pl.status, pods[uid], TIMING, NOW)
        classify(job.status.to_wire(), pl.status.to_wire())
        _sample(job, pl.status)
