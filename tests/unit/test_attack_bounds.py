"""Issue 19, "bounded at the edge": every value a pod reports or an editor writes is bounded
where it enters. Times are written zero-padded and read back by a total parser; reported times
land in [attempt start, now]; steering numbers are clamped; the grace period has a cap; every
numeric spec field has an upper bound in the CRD; no datetime arithmetic overflows."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as hs
from pydantic import ValidationError

from finetune_api.status import FineTuneJobStatus
from finetune_api.sweep import SweepRange
from finetune_api.times import TIME_MAX, TIME_MIN, parse_time, rfc3339, time_after
from finetune_operator.jobs.build.pod import build_pod, grace_period_seconds
from finetune_operator.jobs.pods import (
    apply_progress,
    apply_stopped_checkpoint,
)
from finetune_operator.jobs.reconcile import ACTIVE_PHASES, due_at
from finetune_operator.reports.model import (
    MAX_ETA_SECONDS,
    MAX_SAVE_SECONDS,
    BadReport,
    check_termination,
    parse_report,
)
from finetune_operator.settings import OperatorSettings, SettingsError
from tests.builders.jobs import make_job, make_settings
from tests.builders.reports import report

ROOT = Path(__file__).resolve().parents[2]
UTC = dt.UTC
NOW = dt.datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
ADMITTED = "2026-03-01T11:00:00Z"
TIMING = {"pods_ready_timeout": 600.0, "unschedulable_grace": 900.0,
          "force_delete_margin": 60.0}  # no "ttl": finished jobs kept (setting unset)

ODD_TIMES: list[Any] = [
    None, "", " ", "garbage", "999-01-01T00:00:00Z", "0000-01-01T00:00:00Z",
    "0001-01-01T00:00:00+01:00", "9999-12-31T23:59:59-23:59", "2026-02-30T00:00:00Z",
    "2026-01-01T25:00:00Z", "2026-01-01T00:00:00+99:00", "1" * 10_000, "2026-01-01T00:00:00Z\x00",
    "-2026-01-01T00:00:00Z", "+002026-01-01T00:00:00Z", "2026-W01-1", 5, 1.5, True, [], {},
]


# ------------------------------------------------------------------------ times


def test_times_are_written_zero_padded_and_read_back() -> None:
    t = dt.datetime(999, 1, 1, tzinfo=UTC)
    assert rfc3339(t) == "0999-01-01T00:00:00Z"  # strftime("%Y") wrote "999-..."
    assert parse_time(rfc3339(t)) == TIME_MIN  # read back, clamped to the plausible range
    assert rfc3339(NOW) == "2026-03-01T12:00:00Z" and parse_time(rfc3339(NOW)) == NOW


@pytest.mark.parametrize("value", ODD_TIMES, ids=repr)
def test_parse_time_is_total(value: Any) -> None:
    t = parse_time(value)
    assert t is None or (t.tzinfo is not None and TIME_MIN <= t <= TIME_MAX)


@given(hs.text(max_size=80))
def test_parse_time_never_raises_for_any_text(value: str) -> None:
    t = parse_time(value)
    assert t is None or TIME_MIN <= t <= TIME_MAX


def test_parse_time_keeps_what_the_api_server_writes() -> None:
    assert parse_time("2026-03-01T12:00:00Z") == NOW
    assert parse_time("2026-03-01T12:00:00.000000Z") == NOW  # MicroTime
    assert parse_time("2026-03-01T13:00:00+01:00") == NOW
    assert parse_time("2026-03-01T12:00:00") == NOW  # no zone: UTC, comparable with now
    assert parse_time("3000-01-01T00:00:00Z") == TIME_MAX


def test_time_arithmetic_saturates() -> None:
    assert time_after(NOW, 10**12) == TIME_MAX
    assert time_after(NOW, 1e300) == TIME_MAX
    assert time_after(NOW, -1e300) == TIME_MIN
    assert time_after(NOW, float("nan")) == NOW
    assert time_after(NOW, 30) == NOW + dt.timedelta(seconds=30)


@pytest.mark.parametrize("phase", ACTIVE_PHASES)
def test_due_at_never_overflows(phase: str) -> None:
    job = make_job(active_deadline_seconds=3600)
    job.spec.active_deadline_seconds = 10**12  # stored before the CRD bound existed
    st = FineTuneJobStatus(phase=phase, attempt=1, admitted_at=ADMITTED, active_seconds=-1e300)
    due = due_at(job, st, [], {**TIMING, "pods_ready_timeout": 1e300}, NOW)
    assert due is None or due <= TIME_MAX


# ------------------------------------------------------------------------ reports


def _report(**checkpoint: Any) -> bytes:
    import json

    return json.dumps({"step": 5, "checkpoint": {"step": 5, "path": "c/5", **checkpoint}}
                      ).encode()


def test_a_report_time_is_clamped_to_a_plausible_range_at_parse() -> None:
    wire = parse_report(_report(savedAt="0999-01-01T00:00:00Z")).to_wire()
    assert wire["checkpoint"]["savedAt"] == "1970-01-01T00:00:00Z"
    wire = parse_report(_report(savedAt="9999-12-31T23:59:59Z")).to_wire()
    assert wire["checkpoint"]["savedAt"] == "2200-01-01T00:00:00Z"
    with pytest.raises(BadReport):  # not a timestamp at all: refused as before
        parse_report(_report(savedAt="999-01-01T00:00:00Z"))


def test_steering_numbers_are_clamped_at_parse() -> None:
    import json

    r = parse_report(json.dumps({
        "step": 5, "etaSeconds": 1e300, "loss": -1e300, "learningRate": 1e300, "epoch": 1e300,
        "tokensPerSecond": 1e300, "checkpoint": {"step": 5, "path": "c", "saveSeconds": 1e9},
    }).encode())
    assert r.eta_seconds == MAX_ETA_SECONDS and r.loss == -1e6 and r.learning_rate == 10.0
    assert r.epoch == 1e6 and r.tokens_per_second == 1e12
    assert r.checkpoint is not None and r.checkpoint.save_seconds == MAX_SAVE_SECONDS
    with pytest.raises(BadReport):
        parse_report(json.dumps({"step": 2**53}).encode())
    msg = check_termination(json.dumps({"reason": "Completed", "metrics": {"evalLoss": 1e300},
                                        "checkpoint": {"step": 1, "path": "c",
                                                       "savedAt": "0999-01-01T00:00:00Z"}}))
    assert msg.metrics == {"evalLoss": 1e15}
    assert msg.to_wire()["checkpoint"]["savedAt"] == "1970-01-01T00:00:00Z"


@pytest.mark.parametrize(("reported", "stored"), [
    ("1000-01-01T00:00:00Z", ADMITTED),             # a liar: as old as this attempt, no older
    ("2026-01-01T00:00:00Z", ADMITTED),             # an earlier attempt's save
    ("2026-03-01T11:30:00Z", "2026-03-01T11:30:00Z"),
    ("2199-01-01T00:00:00Z", "2026-03-01T12:00:00Z"),  # the future: now
    ("garbage", None),
])
def test_reported_times_enter_the_status_within_the_attempt(reported: str,
                                                           stored: str | None) -> None:
    st = FineTuneJobStatus(phase="Running", attempt=2, admitted_at=ADMITTED)
    wire = {"step": 5, "updatedAt": reported,
            "checkpoint": {"step": 5, "path": "c/5", "savedAt": reported}}
    if stored is None:  # not a time: such a report never gets past the channel's model
        with pytest.raises(ValidationError):
            report(wire)
    else:
        apply_progress(st, report(wire), 2, NOW)
        assert st.checkpoint is not None and st.checkpoint.saved_at == stored
        assert st.progress is not None and st.progress.updated_at == stored
    st2 = FineTuneJobStatus(phase="Preempting", attempt=2, admitted_at=ADMITTED)
    apply_stopped_checkpoint(st2, {"step": 5, "path": "c/5", "savedAt": reported}, NOW)
    assert st2.checkpoint is not None and st2.checkpoint.saved_at == stored


def test_a_watched_report_never_rolls_back_the_stopped_trainers_checkpoint() -> None:
    """The last report (checkpoint 1) is re-applied on every pass until the next attempt; the
    termination message named a later save (checkpoint 2): the later one stays."""
    st = FineTuneJobStatus(phase="Preempting", attempt=1, admitted_at=ADMITTED)
    last = report({"step": 1, "checkpoint": {"step": 1, "path": "c/1"}})
    apply_progress(st, last, 1, NOW)
    apply_stopped_checkpoint(st, {"step": 2, "path": "c/2"}, NOW)
    apply_progress(st, last, 1, NOW)
    assert st.checkpoint is not None and st.checkpoint.step == 2
    # the next attempt resumed from an older save (the newer one was incomplete): its word
    apply_progress(st, last, 2, NOW)
    assert st.checkpoint.step == 1


def test_a_checkpoint_restated_by_the_next_attempt_keeps_its_stored_time() -> None:
    """Attempt 2 resumed from attempt 1's save and reports it: it is the same save, stored
    when it was new; clamping it again would move it to attempt 2's admission (a new save for
    the metrics, and no lost work to count)."""
    st = FineTuneJobStatus(phase="Running", attempt=1, admitted_at="2026-01-01T00:00:00Z")
    ck = {"step": 5, "path": "c/5", "savedAt": "2026-01-01T00:10:00Z"}
    apply_progress(st, report({"step": 5, "checkpoint": ck}), 1, NOW)
    st.attempt, st.admitted_at = 2, ADMITTED
    apply_progress(st, report({"step": 5, "checkpoint": ck}), 2, NOW)
    assert st.checkpoint is not None and st.checkpoint.saved_at == "2026-01-01T00:10:00Z"
    apply_progress(st, report({"step": 6, "checkpoint": {**ck, "step": 6, "path": "c/6"}}), 2,
                   NOW)
    assert st.checkpoint.saved_at == ADMITTED  # a new save of attempt 2: within attempt 2


# ------------------------------------------------------------------------ grace period


@pytest.mark.parametrize(("save", "expected"), [
    (100.0, 330), (190.0, 600), (1000.0, 600), (1e9, 600), (1e300, 600), (MAX_SAVE_SECONDS, 600),
])
def test_the_grace_period_is_capped(save: float, expected: int) -> None:
    settings = make_settings()
    assert settings.trainer.max_grace_period_seconds == 600
    assert grace_period_seconds(settings, save) == expected
    pod = build_pod(make_job(), settings, 2, 0, None, save)
    assert pod["spec"]["terminationGracePeriodSeconds"] == expected
    assert grace_period_seconds(make_settings(max_grace_period_seconds=120), save) == 120


def test_the_cap_cannot_be_below_the_minimum() -> None:
    with pytest.raises(SettingsError, match="FINETUNE_GRACE_PERIOD_SECONDS=700 is more than "
                       "FINETUNE_MAX_GRACE_PERIOD_SECONDS=600"):
        OperatorSettings.from_env({"FINETUNE_GRACE_PERIOD_SECONDS": "700"})


# ------------------------------------------------------------------------ spec bounds


def _numeric_without_upper_bound(node: dict[str, Any], path: str) -> list[str]:
    out = []
    if node.get("type") in ("integer", "number"):
        rules = " ".join(r["rule"] for r in node.get("x-kubernetes-validations", []))
        if "maximum" not in node and "enum" not in node and "<" not in rules:
            out.append(path)
    for key, child in (node.get("properties") or {}).items():
        out += _numeric_without_upper_bound(child, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        out += _numeric_without_upper_bound(node["items"], f"{path}[]")
    if isinstance(node.get("additionalProperties"), dict):
        out += _numeric_without_upper_bound(node["additionalProperties"], f"{path}.*")
    return out


@pytest.mark.parametrize("crd", ["finetunejobs.finetune.dev.yaml",
                                 "finetunesweeps.finetune.dev.yaml"])
def test_every_numeric_spec_field_has_an_upper_bound(crd: str) -> None:
    doc = yaml.safe_load((ROOT / "crds" / crd).read_text())
    for version in doc["spec"]["versions"]:
        spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
        assert _numeric_without_upper_bound(spec, "spec") == []


def test_sweep_range_is_bounded() -> None:
    with pytest.raises(ValidationError, match="max"):
        SweepRange(min=0, max=1e300)
    assert SweepRange(min=-1e12, max=1e12).max == 1e12
