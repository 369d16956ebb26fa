"""Progress channel (file + push to the operator's report endpoint over HTTPS) and the
termination message. The endpoint is the operator's real ReportServer."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from finetune_api.trainer_config import ReportConfig
from finetune_operator.http import tls
from finetune_operator.reports.model import parse_report, parse_termination
from finetune_trainer.progress import (
    MESSAGE_LIMIT,
    STANDBY_TRIES,
    TERMINATION_LIMIT,
    FileSink,
    ProgressReporter,
    ReportSink,
    build_reporter,
    eta_seconds,
    progress_payload,
    termination_message,
    write_termination_log,
)
from tests.builders.trainer import POD, TOKEN, Endpoint, report_endpoint

pytestmark = pytest.mark.unit


class ListSink:
    def __init__(self) -> None:
        self.sent: list[dict[str, Any]] = []

    def send(self, payload: dict[str, Any]) -> None:
        self.sent.append(payload)

    def close(self, timeout: float) -> None:
        return None


def test_reports_are_rate_limited_except_forced() -> None:
    sink = ListSink()
    r = ProgressReporter([sink], min_interval=5.0)
    assert r.report({"step": 1}, now=100.0)
    assert not r.report({"step": 2}, now=103.0)
    assert r.report({"step": 3}, now=103.5, force=True)  # after a checkpoint
    assert not r.report({"step": 4}, now=108.0)
    assert r.report({"step": 5}, now=108.6)
    assert [p["step"] for p in sink.sent] == [1, 3, 5]
    assert r.last == {"step": 5}


def test_a_failing_sink_never_stops_training() -> None:
    class Boom(ListSink):
        def send(self, payload: dict[str, Any]) -> None:
            raise RuntimeError("down")

    ok = ListSink()
    r = ProgressReporter([Boom(), ok], min_interval=0)
    assert r.report({"step": 1}, now=1.0)
    assert ok.sent == [{"step": 1}]


def test_payload_matches_the_contract() -> None:
    p = progress_payload(step=120, total_steps=300, epoch=1.2, loss=0.8312345678,
                         learning_rate=1.6e-4, tokens_per_second=5400.04, eta_seconds=210.0,
                         now=1795521600.0, state="training", resumed_from_step=100,
                         checkpoint={"step": 100, "path": "checkpoints/checkpoint-100"})
    assert p == {"step": 120, "totalSteps": 300, "epoch": 1.2, "loss": 0.831235,
                 "learningRate": 1.6e-4, "tokensPerSecond": 5400.0, "etaSeconds": 210.0,
                 "updatedAt": "2026-11-24T12:00:00Z", "resumedFromStep": 100,
                 "state": "training",
                 "checkpoint": {"step": 100, "path": "checkpoints/checkpoint-100"}}
    # unknowns are left out rather than sent as null
    q = progress_payload(step=0, total_steps=10, epoch=None, loss=None, learning_rate=None,
                         tokens_per_second=None, eta_seconds=None, now=0.0, state="loading",
                         resumed_from_step=None, checkpoint=None)
    assert set(q) == {"step", "totalSteps", "updatedAt", "state"}
    # what the trainer sends is what the operator's strict model accepts
    assert parse_report(json.dumps(p).encode()).to_wire() == {**p, "checkpoint": {
        "step": 100, "path": "checkpoints/checkpoint-100"}}
    assert parse_report(json.dumps(q).encode()).step == 0


def test_eta_uses_the_pace_of_this_run() -> None:
    assert eta_seconds(step=60, total=100, start_step=50, elapsed=20.0) == 80.0
    assert eta_seconds(step=50, total=100, start_step=50, elapsed=5.0) is None


def test_file_sink_writes_atomically(tmp_path: Path) -> None:
    f = tmp_path / "sub" / "progress.json"
    FileSink(f).send({"step": 3})
    assert json.loads(f.read_text()) == {"step": 3}
    assert [p.name for p in f.parent.iterdir()] == ["progress.json"]


def test_termination_message_fits_the_kubelet_limit() -> None:
    text = termination_message(reason="Error", message="x" * 10000, final_step=0,
                               adapter_path="", merged_path="", metrics={}, checkpoint=None)
    assert len(text.encode()) <= TERMINATION_LIMIT
    body = json.loads(text)
    assert body["reason"] == "Error" and body["message"].endswith("[truncated]")
    assert len(body["message"]) == MESSAGE_LIMIT
    parsed = parse_termination(text)
    assert parsed is not None and parsed.message == body["message"]
    ok = json.loads(termination_message(
        reason="Completed", message="done", final_step=300, adapter_path="output/adapter",
        merged_path="", metrics={"evalLoss": 0.91}, checkpoint={"step": 300}))
    assert ok == {"reason": "Completed", "message": "done", "finalStep": 300,
                  "adapterPath": "output/adapter", "mergedPath": "",
                  "metrics": {"evalLoss": 0.91}, "checkpoint": {"step": 300}}


def test_termination_log_write_failure_is_not_fatal(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    write_termination_log(str(tmp_path / "f" / "x" / "log"), "{}")  # parent is a file


# --- the report channel against the operator's ReportServer ----------------------------------

@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with report_endpoint(tmp_path) as e:
        yield e


def test_reports_reach_the_operator_with_the_projected_token(endpoint: Endpoint) -> None:
    r = build_reporter(None, endpoint.config, 0.0)
    r.report({"step": 7, "totalSteps": 10, "state": "training"}, now=1.0)
    r.close(timeout=10)
    assert len(endpoint.received) == 1
    who, report = endpoint.received[0]
    assert who == POD
    assert report.to_wire() == {"step": 7, "totalSteps": 10, "state": "training"}
    assert endpoint.tokens_seen == [TOKEN]


def test_the_token_file_is_read_at_every_report(endpoint: Endpoint) -> None:
    """The kubelet rotates the projected token: the next report uses the new one."""
    sink = ReportSink(endpoint.config)
    sink.send({"step": 1})
    assert sink.flush(timeout=10)
    endpoint.token_file.write_text("projected-token-2")
    sink.send({"step": 2})
    sink.close(timeout=10)
    assert endpoint.tokens_seen == [TOKEN, "projected-token-2"]
    assert [rep.step for _, rep in endpoint.received] == [1, 2]


def test_a_standby_replica_is_tried_again_until_the_leader_answers(endpoint: Endpoint) -> None:
    """The Service may give the connection to a standby (503): the same report goes out again
    on a new connection, so it reaches the leader without waiting for the next report."""
    answers = iter([False, False, True])
    endpoint.server.serving = lambda: next(answers, True)
    sink = ReportSink(endpoint.config)
    sink.send({"step": 5})
    sink.close(timeout=10)
    assert [rep.step for _, rep in endpoint.received] == [5]
    assert endpoint.tokens_seen == [TOKEN]  # the standby answered before reading the token


def test_a_standby_that_stays_one_gives_up_after_a_few_tries(endpoint: Endpoint) -> None:
    tried: list[bool] = []
    endpoint.server.serving = lambda: tried.append(False) or False
    sink = ReportSink(endpoint.config)
    sink.send({"step": 5})
    assert sink.flush(timeout=30)
    sink.close(timeout=10)
    assert len(tried) == STANDBY_TRIES and endpoint.received == []


def test_refusals_log_one_warning_and_training_goes_on(
        endpoint: Endpoint, caplog: pytest.LogCaptureFixture) -> None:
    endpoint.token_file.write_text("stolen")  # the server answers 401 every time
    sink = ReportSink(endpoint.config, timeout=5)
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.progress"):
        for i in range(3):
            sink.send({"step": i})
            assert sink.flush(timeout=10)  # this one went out (and was refused)
    warnings = [r.getMessage() for r in caplog.records if "cannot report" in r.getMessage()]
    assert len(warnings) == 1 and "HTTP 401" in warnings[0]
    assert endpoint.received == []


def test_a_server_with_another_ca_is_not_trusted(endpoint: Endpoint, tmp_path: Path,
                                                 caplog: pytest.LogCaptureFixture) -> None:
    other = tls.generate(["127.0.0.1"], tmp_path / "other")
    config = endpoint.config.model_copy(update={"ca_pem": other.ca_pem})
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.progress"):
        r = build_reporter(None, config, 0.0)
        r.report({"step": 1}, now=1.0)
        r.close(timeout=10)
    assert endpoint.received == [] and endpoint.tokens_seen == []  # the token never left
    assert any("CERTIFICATE_VERIFY_FAILED" in r.getMessage() for r in caplog.records)


def test_unreachable_endpoint_logs_one_warning(endpoint: Endpoint,
                                              caplog: pytest.LogCaptureFixture) -> None:
    config = endpoint.config.model_copy(update={"url": "https://127.0.0.1:1/v1/reports"})
    sink = ReportSink(config, timeout=2)
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.progress"):
        for i in range(3):
            sink.send({"step": i})
            assert sink.flush(timeout=10)
    assert len([r for r in caplog.records if "cannot report" in r.getMessage()]) == 1


def test_a_bad_ca_pem_turns_the_channel_off_not_training(
        caplog: pytest.LogCaptureFixture) -> None:
    bad = ReportConfig(url="https://127.0.0.1:1/v1/reports", ca_pem="not a pem")
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.progress"):
        r = build_reporter(None, bad, 0.0)
    assert r.sinks == []
    assert any("report channel off" in rec.getMessage() for rec in caplog.records)
