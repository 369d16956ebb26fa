"""The progress channel on a real training run: every report the trainer sends passes the
operator's strict parsing (the channel's pure tests are in tests/unit/trainer/test_progress.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from finetune_operator.metrics import REGISTRY
from finetune_operator.reports.model import REJECT_REASONS
from tests.builders.trainer import POD, Endpoint, config_dict, report_endpoint, write_config

from .helpers import run_trainer

pytestmark = pytest.mark.trainer


@pytest.fixture
def endpoint(tmp_path: Path) -> Iterator[Endpoint]:
    with report_endpoint(tmp_path) as e:
        yield e


def test_a_real_training_run_reports_only_what_the_strict_model_accepts(
        endpoint: Endpoint, tiny_model: Path, tmp_path: Path) -> None:
    """The trainer's real reports (loading, training, after each checkpoint, done) all pass the
    operator's strict parsing: no rejection is counted, checkpoint paths are relative."""

    def rejections() -> dict[str, float]:
        return {r: REGISTRY.get_sample_value("finetune_report_rejected_total", {"reason": r})
                or 0.0 for r in REJECT_REASONS}

    before = rejections()
    work = tmp_path / "work"
    cfg = config_dict(tiny_model, work, report=endpoint.config.to_wire())
    config = write_config(tmp_path / "config.yaml", cfg)
    assert run_trainer(config, tmp_path / "trainer.log") == 0, (
        (tmp_path / "trainer.log").read_text()[-3000:])
    reports = [r for _, r in endpoint.received]
    assert reports, (tmp_path / "trainer.log").read_text()[-3000:]
    assert rejections() == before
    assert reports[0].state == "loading" and reports[-1].state == "done"
    assert reports[-1].step == reports[-1].total_steps == 14
    steps = [r.step for r in reports]
    assert steps == sorted(steps)
    saved = {r.checkpoint.path for r in reports if r.checkpoint is not None}
    assert "checkpoints/checkpoint-10" in saved, saved
    assert {who for who, _ in endpoint.received} == {POD}
