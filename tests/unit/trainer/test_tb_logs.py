"""TensorBoard logs written on their own thread: HF's tags and event files, best effort."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
from transformers import TrainerState, TrainingArguments

from finetune_trainer.tb_logs import BackgroundTensorBoard

pytestmark = pytest.mark.unit


def scalars(logs_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(logs_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)]
            for tag in acc.Tags()["scalars"]}


def test_logs_reach_the_event_file_with_hf_tags(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    state = TrainerState()
    tb = BackgroundTensorBoard(tmp_path / "logs")
    model = SimpleNamespace(config=SimpleNamespace(to_json_string=lambda: '{"hidden": 64}'))
    tb.on_train_begin(args, state, None, model=model)
    for step, loss in ((10, 2.5), (20, 1.25)):
        state.global_step = step
        tb.on_log(args, state, None, logs={"loss": loss, "learning_rate": 0.01})
    tb.on_train_end(args, state, None)
    state.global_step = 20
    tb.on_log(args, state, None, logs={"eval_loss": 1.5})  # evaluation after training
    tb.close()
    got = scalars(tmp_path / "logs")
    assert got["train/loss"] == [(10, 2.5), (20, 1.25)]
    assert got["eval/loss"] == [(20, 1.5)]


def test_logs_are_only_written_by_the_main_process(tmp_path: Path) -> None:
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    state = TrainerState(is_world_process_zero=False)
    tb = BackgroundTensorBoard(tmp_path / "logs")
    state.global_step = 10
    tb.on_log(args, state, None, logs={"loss": 2.0})
    tb.close()
    assert "train/loss" not in scalars(tmp_path / "logs")


def test_no_tensorboard_dir_warns_once_and_training_goes_on(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the logs directory should be")
    args = TrainingArguments(output_dir=str(tmp_path / "out"), use_cpu=True, report_to="none")
    state = TrainerState()
    with caplog.at_level(logging.WARNING, logger="finetune_trainer.tb_logs"):
        tb = BackgroundTensorBoard(blocker)
        for step in (1, 2, 3):
            state.global_step = step
            tb.on_log(args, state, None, logs={"loss": 1.0})
        tb.close()
    warnings = [r for r in caplog.records if "TensorBoard" in r.getMessage()]
    assert len(warnings) == 1 and "no logs/ written" in warnings[0].getMessage()
