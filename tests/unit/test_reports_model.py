"""Strict parsing of everything a trainer pod reports: each hostile input is dropped with a
reason from the fixed set, and what passes is bounded (docs/contracts.md "Progress channel")."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from finetune_operator.reports.model import (
    MAX_MESSAGE,
    MAX_METRICS,
    MAX_REPORT_BYTES,
    MAX_TERMINATION_BYTES,
    REJECT_REASONS,
    BadReport,
    ProgressReport,
    TerminationMessage,
    parse_report,
    parse_termination,
)

pytestmark = pytest.mark.unit

GOOD: dict[str, Any] = {
    "step": 120, "totalSteps": 300, "epoch": 1.2, "loss": 0.83, "learningRate": 1.6e-4,
    "tokensPerSecond": 5400.0, "etaSeconds": 210.0, "updatedAt": "2026-11-24T12:00:00Z",
    "resumedFromStep": 100, "state": "training",
    "checkpoint": {"step": 100, "path": "checkpoints/checkpoint-100",
                   "savedAt": "2026-11-24T11:59:00Z", "saveSeconds": 1.7},
}


def _with(**changes: Any) -> bytes:
    body = dict(GOOD)
    for key, value in changes.items():
        if value is _DROP:
            body.pop(key, None)
        else:
            body[key] = value
    return json.dumps(body).encode()


def _ckpt(**changes: Any) -> bytes:
    return _with(checkpoint={**GOOD["checkpoint"], **changes})


_DROP = object()


def _reason(raw: bytes) -> str:
    with pytest.raises(BadReport) as e:
        parse_report(raw)
    assert e.value.reason in REJECT_REASONS
    return e.value.reason


def test_the_contract_example_parses_and_round_trips() -> None:
    r = parse_report(json.dumps(GOOD).encode())
    assert isinstance(r, ProgressReport)
    assert r.to_wire() == GOOD
    assert r.updated_at is not None and r.updated_at.tzinfo is not None
    assert parse_report(b'{"step": 0}').to_wire() == {"step": 0}


def test_timestamps_are_normalised_to_utc() -> None:
    r = parse_report(_with(updatedAt="2026-11-24T13:00:00.123456789+01:00"))
    assert r.to_wire()["updatedAt"] == "2026-11-24T12:00:00Z"
    # the trainer writes savedAt "" when a marker lacks it: no time, not an error
    assert parse_report(_ckpt(savedAt="")).checkpoint.saved_at is None  # type: ignore[union-attr]


@pytest.mark.parametrize("raw", [
    _with(step=True), _with(step=False), _with(totalSteps=True),  # bools are not ints
    _with(step="12"), _with(step=12.0), _with(step=12.5), _with(step=None), _with(step=[12]),
    _with(step={"n": 1}), _with(step=_DROP),  # wrong types, missing
    _with(step=-1), _with(totalSteps=-5), _with(resumedFromStep=-1),  # negative counts
    _with(step=2**53), _with(step=10**30),  # beyond exact JSON integers
    _with(loss="0.8"), _with(loss=True), _with(epoch=-0.5), _with(learningRate=-1e-4),
    _with(tokensPerSecond=-1.0), _with(etaSeconds=-3.0), _with(loss=1e301),
    _with(state="hacking"), _with(state=1), _with(state=""),
    _with(updatedAt=5), _with(updatedAt="garbage"), _with(updatedAt="2026-11-24"),
    _with(updatedAt="2026-13-40T25:61:00Z"), _with(updatedAt="2026-11-24T12:00:00"),
    _with(updatedAt="2026-11-24T12:00:00Z" + " " * 50), _with(updatedAt="x" * 10_000),
    _with(evil=1), _with(total_steps=3), _with(Step=1),  # extra keys, other spellings
    _with(step=301),  # past totalSteps
    _ckpt(path="../../other-job/checkpoints"), _ckpt(path="checkpoints/../../etc"),
    _ckpt(path="/etc/passwd"), _ckpt(path="./checkpoints"), _ckpt(path="a//b"),
    _ckpt(path="checkpoints/\u00e9"), _ckpt(path="c\\..\\x"), _ckpt(path="c\x00x"),
    _ckpt(path="a/" * 200), _ckpt(path=5), _ckpt(step="1"), _ckpt(step=-1),
    _ckpt(savedAt="garbage"), _ckpt(savedAt=1), _ckpt(saveSeconds=-1), _ckpt(extra=1),
    _with(checkpoint=[1, 2]), _with(checkpoint="checkpoint-100"),
    _with(checkpoint={"path": "x"}),
])
def test_hostile_fields_are_invalid(raw: bytes) -> None:
    assert _reason(raw) == "invalid"


@pytest.mark.parametrize("raw", [
    b'{"step": 1, "loss": NaN}', b'{"step": 1, "loss": Infinity}',
    b'{"step": 1, "loss": -Infinity}', b'{"step": 1, "step": 2}',
    b'[{"step": 1}]', b'"step"', b"12", b"null", b"", b"{", b"{'step': 1}",
    b"\xff\xfe{}", b'{"step": 1}{"step": 2}', b'{"step": 1,}',
])
def test_not_json_objects_are_rejected(raw: bytes) -> None:
    assert _reason(raw) == "not-json"


def test_overflowing_floats_are_not_infinite() -> None:
    assert _reason(_with(loss=1e308).replace(b"1e+308", b"1e999")) == "invalid"


@pytest.mark.parametrize("raw", [
    b"[" * 100_000,  # the recursive decoder would hit the recursion limit
    (b'{"step": 1, "checkpoint": {"step": 1, "path": "a", "savedAt": {"x": {"y": [1]}}}}'),
    b'{"a":' * 5 + b"1" + b"}" * 5,
])
def test_deep_nesting_is_refused_before_decoding(raw: bytes) -> None:
    assert _reason(raw[:MAX_REPORT_BYTES]) == "too-deep"


def test_brackets_inside_strings_do_not_count_as_depth() -> None:
    assert _reason(_with(state="[[[[[[{{{{{{")) == "invalid"  # a bad state, not too deep
    assert _reason(_with(state='\\"[[[[[[')) == "invalid"


@pytest.mark.parametrize("size", [MAX_REPORT_BYTES + 1, 1024 * 1024])
def test_large_bodies_are_refused_unread(size: int) -> None:
    raw = b'{"step": 1, "pad": "' + b"x" * size + b'"}'
    assert _reason(raw) == "too-large"


def test_huge_strings_within_the_size_limit_are_invalid() -> None:
    assert _reason(_with(state="t" * 15_000)) == "invalid"
    assert _reason(_ckpt(path="a" * 300)) == "invalid"


def test_errors_name_fields_never_echo_the_pods_input() -> None:
    secret = "s3cr3t-from-the-pod"
    with pytest.raises(BadReport) as e:
        parse_report(_with(state=secret, loss=secret))
    assert secret not in str(e.value) and "state" in e.value.detail


def test_every_accepted_number_is_finite_and_exact() -> None:
    r = parse_report(_with(step=2**53 - 1, totalSteps=_DROP, loss=-1e300, epoch=0))
    assert r.step == 2**53 - 1
    assert all(math.isfinite(v) for v in (r.loss, r.epoch) if v is not None)
    assert parse_report(_with(etaSeconds=210)).eta_seconds == 210.0  # an int is a fine float


# ---- the termination message -----------------------------------------------------------------

DONE = {"reason": "Completed", "message": "completed 300 steps", "finalStep": 300,
        "adapterPath": "output/adapter", "mergedPath": "",
        "metrics": {"eval_loss": 0.91, "train_loss": 0.8},
        "checkpoint": {"step": 300, "path": "checkpoints/checkpoint-300",
                       "savedAt": "2026-11-24T12:00:00Z", "saveSeconds": 2.0}}


def _term(**changes: Any) -> str:
    return json.dumps({**DONE, **changes})


def test_termination_message_parses() -> None:
    msg = parse_termination(json.dumps(DONE))
    assert isinstance(msg, TerminationMessage)
    assert msg.to_wire() == DONE
    assert parse_termination('{"reason": "Error"}') == TerminationMessage(reason="Error")


def test_plain_text_and_empty_messages_are_none_without_a_rejection() -> None:
    rejected: list[BadReport] = []
    for raw in ("", "Traceback (most recent call last):\n  ...\nOSError: boom", "   "):
        assert parse_termination(raw, rejected.append) is None
    assert rejected == []


@pytest.mark.parametrize(("raw", "reason"), [
    (_term(reason="Hacked"), "invalid"), (_term(reason=None), "invalid"),
    (_term(finalStep=-1), "invalid"), (_term(finalStep=True), "invalid"),
    (_term(adapterPath="/etc/shadow"), "invalid"), (_term(mergedPath="../../x"), "invalid"),
    (_term(metrics={"loss": "low"}), "invalid"), (_term(metrics={"loss": True}), "invalid"),
    (_term(metrics={"bad key!": 1.0}), "invalid"), (_term(metrics=[1.0]), "invalid"),
    (_term(metrics={f"m{i}": 1.0 for i in range(MAX_METRICS + 1)}), "invalid"),
    (_term(checkpoint={"step": 1, "path": "/abs"}), "invalid"), (_term(who="me"), "invalid"),
    (_term(message=5), "invalid"),
    ('{"reason": "Completed", "metrics": {"loss": NaN}}', "not-json"),
    ('{"reason": "Completed", "reason": "Error"}', "not-json"),
    ("{" * 50, "too-deep"),
    (_term(message="x" * 5000), "too-large"),
])
def test_hostile_termination_messages_are_none_and_reported(raw: str, reason: str) -> None:
    rejected: list[BadReport] = []
    assert parse_termination(raw, rejected.append) is None
    assert [r.reason for r in rejected] == [reason]


def test_termination_message_is_cut_to_1_kib_and_stripped_of_control_characters() -> None:
    msg = parse_termination(_term(message="\x1b[31mred\x00" + "y" * 3000))
    assert msg is not None
    assert len(msg.message) == MAX_MESSAGE and msg.message.endswith(" [truncated]")
    assert msg.message.startswith("[31mred") and "\x00" not in msg.message
    assert len(json.dumps(DONE)) < MAX_TERMINATION_BYTES
