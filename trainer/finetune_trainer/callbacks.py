"""Trainer pieces: the atomic-checkpoint Trainer, the SIGTERM stop and the progress callbacks."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from transformers import Trainer, TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_callback import ExportableState

from finetune_trainer import checkpoint as ck
from finetune_trainer.progress import ProgressReporter, eta_seconds, iso, progress_payload
from finetune_trainer.sealing import Sealer
from finetune_trainer.stop import StopFlag

log = logging.getLogger(__name__)

# Test hook: sleep this long in the middle of writing the checkpoint of step
# FINETUNE_DEBUG_SAVE_DELAY_STEP (after the weights and optimizer, before the marker), so a test
# can SIGKILL a save in flight. Unset in production.
SAVE_DELAY_ENV = "FINETUNE_DEBUG_SAVE_DELAY_SECONDS"
SAVE_DELAY_STEP_ENV = "FINETUNE_DEBUG_SAVE_DELAY_STEP"
# Test hook: sleep this long before each evaluation batch (of step FINETUNE_DEBUG_EVAL_DELAY_STEP
# when set), so a test can send SIGTERM while an evaluation is in progress. Unset in production.
EVAL_DELAY_ENV = "FINETUNE_DEBUG_EVAL_DELAY_SECONDS"
EVAL_DELAY_STEP_ENV = "FINETUNE_DEBUG_EVAL_DELAY_STEP"


@dataclass
class RunState:
    """What the trainer subclass and the callbacks share during one run."""

    work_dir: Path
    ckpt_root: Path
    job_uid: str
    keep: int
    tag: str
    reporter: ProgressReporter
    clock: Callable[[], float] = time.time
    is_main: bool = True
    last_checkpoint: ck.CheckpointInfo | None = None
    resumed_from: int | None = None
    preempted_at: int | None = None
    eval_metrics: dict[str, float] = field(default_factory=dict)
    eval_step: int | None = None
    eval_abandoned: bool = False
    loss: float | None = None
    learning_rate: float | None = None
    start_time: float = 0.0
    start_step: int = 0
    start_tokens: int = 0
    train_called_at: float | None = None  # monotonic, set just before trainer.train()
    checkpoint_changed: bool = False  # a checkpoint was sealed since the last report

    def on_sealed(self, info: ck.CheckpointInfo) -> None:
        """The sealing thread: ``info`` is complete on disk (reported at the next step)."""
        self.last_checkpoint = info
        self.checkpoint_changed = True

    def report_sealed(self, trainer_state: Any) -> bool:
        """Report now when a checkpoint was sealed since the last report; whether it did."""
        if not self.checkpoint_changed:
            return False
        self.checkpoint_changed = False
        self.report(trainer_state, "training", force=True)
        return True

    def checkpoint_report(self) -> dict[str, Any] | None:
        c = self.last_checkpoint
        return c.to_report(self.work_dir) if c else None

    def report(self, trainer_state: Any, state: str, force: bool = False) -> None:
        if not self.is_main:
            return
        now = self.clock()
        if not force and not self.reporter.due(now):
            return
        elapsed = now - self.start_time
        step, total = int(trainer_state.global_step), int(trainer_state.max_steps or 0)
        tokens = int(getattr(trainer_state, "num_input_tokens_seen", 0) or 0) - self.start_tokens
        tps = tokens / elapsed if elapsed > 0 and tokens > 0 else None
        payload = progress_payload(
            step=step, total_steps=total, epoch=trainer_state.epoch, loss=self.loss,
            learning_rate=self.learning_rate, tokens_per_second=tps,
            eta_seconds=eta_seconds(step, total, self.start_step, elapsed), now=now, state=state,
            resumed_from_step=self.resumed_from, checkpoint=self.checkpoint_report())
        self.reporter.report(payload, now, force=force)


class EvalAbandoned(Exception):
    """A stop was requested while evaluating: the evaluation is dropped, the save comes first."""


class CheckpointingTrainer(Trainer):
    """HF Trainer whose checkpoints follow the contract (tmp dir + fsync + marker + rename).

    Everything inside a checkpoint is what the HF Trainer writes (model/adapter, optimizer,
    scheduler, scaler, RNG states, trainer_state.json), so ``train(resume_from_checkpoint=...)``
    restores it exactly; only the directory handling and the retention are ours.

    Two more departures from the HF Trainer, both for the preemption contract and speed:

    * an evaluation checks the stop flag (agreed by all ranks) before every batch; on a stop it
      is abandoned and, inside the training loop, the checkpoint of this step is saved at once
      and training stops (SIGTERM never waits for an evaluation);
    * input tokens are counted on the device without a host sync per micro-batch; the count is
      summed over the ranks (one collective) only when logging and before a checkpoint.
    """

    def __init__(self, *args: Any, run: RunState, flag: StopFlag | None = None,
                 **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.run = run
        self.flag = flag
        self._tokens: Any = None  # device tensor: tokens of this rank since the last flush
        self._in_train = False
        self._written: ck.CheckpointInfo | None = None  # the newest written, maybe unsealed
        self.sealer = Sealer(run.ckpt_root, run.job_uid, run.keep, run.on_sealed) \
            if self.args.should_save else None

    def _barrier(self) -> None:
        self.accelerator.wait_for_everyone()

    # -- token counting without a per-micro-batch sync ----------------------------------------

    def _track_num_input_tokens(self, inputs: dict[str, Any]) -> None:
        mask = inputs.get("attention_mask")
        ids = inputs.get("input_ids")
        if mask is not None:
            n = mask.sum()
        elif ids is not None:
            pad = getattr(self.processing_class, "pad_token_id", None)
            n = (ids != pad).sum() if pad is not None else ids.new_tensor(ids.numel())
        else:
            return
        self._tokens = n if self._tokens is None else self._tokens + n

    def flush_tokens(self) -> None:
        """Add every rank's tokens since the last flush to the state (all ranks call it)."""
        import torch

        local = self._tokens if self._tokens is not None else torch.zeros(
            (), dtype=torch.int64, device=self.args.device)
        total = self.accelerator.reduce(local.to(self.args.device, torch.int64).reshape(1),
                                        reduction="sum")
        self.state.num_input_tokens_seen += int(total.item())
        self._tokens = None

    def log(self, logs: dict[str, float], *args: Any, **kwargs: Any) -> None:
        if self._in_train:
            self.flush_tokens()
        super().log(logs, *args, **kwargs)

    def train(self, *args: Any, **kwargs: Any) -> Any:
        self._in_train = True
        try:
            out = super().train(*args, **kwargs)
        except BaseException:
            if self.sealer is not None:  # a checkpoint written before the failure still counts
                with contextlib.suppress(Exception):
                    self.sealer.wait()
            raise
        finally:
            self._in_train = False
        self.settle()  # training ends with its last checkpoint sealed
        return out

    # -- evaluation that yields to a stop -------------------------------------------------------

    def prediction_step(self, *args: Any, **kwargs: Any) -> Any:
        delay = os.environ.get(EVAL_DELAY_ENV)
        at = os.environ.get(EVAL_DELAY_STEP_ENV)
        if delay and (at is None or int(at) == self.state.global_step):
            log.warning("debug: evaluation batch at step %d delayed by %ss (%s)",
                        self.state.global_step, delay, EVAL_DELAY_ENV)
            _interruptible_sleep(float(delay), self.flag)
        if self.flag is not None and self.flag.agreed(self.args.device):
            raise EvalAbandoned()
        return super().prediction_step(*args, **kwargs)

    def evaluate(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        try:
            return super().evaluate(*args, **kwargs)
        except EvalAbandoned:
            step = int(self.state.global_step)
            log.warning("evaluation at step %d abandoned: %s received; the checkpoint comes "
                        "first", step, getattr(self.flag, "signal_name", None) or "stop")
            self.run.eval_abandoned = True
            if self._in_train and step < int(self.state.max_steps):
                self.control.should_save = True
                self.control.should_training_stop = True
                self.run.preempted_at = step
            return {}

    def _save_checkpoint(self, model: Any, trial: Any) -> None:
        run = self.run
        step = int(self.state.global_step)
        final = ck.final_dir_for(run.ckpt_root, step)
        self.settle()
        if ck.is_complete(final, run.job_uid):
            return  # this step is already saved (e.g. SIGTERM on a periodic save step)
        self.flush_tokens()  # the saved state carries the exact count
        run.report(self.state, "saving", force=True)
        t0 = time.monotonic()
        tmp = ck.tmp_dir_for(run.ckpt_root, step, run.tag)
        if self.args.should_save:
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
        self._barrier()
        self.store_flos()
        with _resume_only(self):
            self.save_model(str(tmp), _internal_call=True)
        if not self.args.save_only_model:
            self._save_optimizer_and_scheduler(str(tmp))
            self._save_scaler(str(tmp))
            self._save_rng_state(str(tmp))
        if self.args.should_save:
            for cb in [c for c in [*self.callback_handler.callbacks, self.control]
                       if isinstance(c, ExportableState)]:
                name = cb.__class__.__name__
                stateful: dict[str, Any] = self.state.stateful_callbacks  # type: ignore[assignment]
                if isinstance(stateful.get(name), list):
                    stateful[name].append(cb.state())
                else:
                    stateful[name] = cb.state()
            self.state.save_to_json(str(tmp / TRAINER_STATE_NAME))
        _debug_delay(step)
        self._barrier()
        self._written = ck.CheckpointInfo(step, final, iso(run.clock()), time.monotonic() - t0)
        if self.sealer is not None:  # fsync, marker, rename, retention: beside the next steps
            self.sealer.submit(tmp, final, step, self._written.saved_at, t0)

    def settle(self) -> None:
        """Until the checkpoint written last is sealed; then every rank names it (all ranks
        call it: before the next save and when training ends)."""
        if self.sealer is not None:
            sealed = self.sealer.wait()
            if sealed is not None:
                self.run.last_checkpoint = sealed
            self.run.report_sealed(self.state)  # now: a preemption exits right after
        self._barrier()
        if self.sealer is None and self._written is not None:
            # global rank 0 sealed it (every rank passed the barrier): the other ranks'
            # termination messages name the same checkpoint
            self.run.last_checkpoint = self._written


@contextlib.contextmanager
def _resume_only(trainer: Trainer) -> Iterator[None]:
    """A checkpoint with what a resume reads, no more: without the README model card PEFT writes
    on every ``save_pretrained`` and without the tokenizer the Trainer saves beside every model.

    PEFT renders the card from a Jinja template through huggingface_hub: 21 of the 30 ms a LoRA
    checkpoint of the benchmark's job took. The tokenizer (megabytes of tokenizer.json for a real
    model, in every checkpoint) is loaded from the model's source on resume, never from a
    checkpoint. The final export (``output/adapter``, ``output/merged``) still has both. Neither
    library has an option for it: the card method is shadowed on the model instance and the
    Trainer's ``processing_class`` unset for the save, both restored after it."""
    model = trainer.accelerator.unwrap_model(trainer.model)
    card = hasattr(model, "create_or_update_model_card")
    tokenizer = trainer.processing_class
    if card:
        model.create_or_update_model_card = lambda *_a, **_k: None
    trainer.processing_class = None
    try:
        yield
    finally:
        trainer.processing_class = tokenizer
        if card:
            del model.create_or_update_model_card


def _interruptible_sleep(seconds: float, flag: StopFlag | None) -> None:
    end = time.monotonic() + seconds
    while time.monotonic() < end and not (flag is not None and flag.requested):
        time.sleep(0.05)


def _debug_delay(step: int) -> None:
    delay = os.environ.get(SAVE_DELAY_ENV)
    at = os.environ.get(SAVE_DELAY_STEP_ENV)
    if delay and (at is None or int(at) == step):
        time.sleep(float(delay))


class StopCallback(TrainerCallback):
    """On SIGTERM: save at this optimizer-step boundary and stop training."""

    def __init__(self, flag: StopFlag, run: RunState) -> None:
        self.flag = flag
        self.run = run

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if state.global_step < state.max_steps and self.flag.agreed(args.device):
            control.should_save = True
            control.should_training_stop = True
            control.should_evaluate = False  # the save comes first; no eval on the way out
            self.run.preempted_at = int(state.global_step)
        return control


class ReportCallback(TrainerCallback):
    """Feeds the progress channel: rate-limited on steps/logs, forced after saves."""

    def __init__(self, run: RunState, resuming: bool) -> None:
        self.run = run
        self.resuming = resuming

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        run = self.run
        run.start_time = run.clock()
        run.start_step = int(state.global_step)
        run.start_tokens = int(getattr(state, "num_input_tokens_seen", 0) or 0)
        run.resumed_from = int(state.global_step) if self.resuming else None
        if run.train_called_at is not None and run.is_main:
            setup = time.monotonic() - run.train_called_at
            if self.resuming:
                log.info("resumed at step %d: weights, optimizer and scheduler restored in %.3fs",
                         state.global_step, setup)
            else:
                log.info("training set up in %.3fs (fresh start)", setup)
        run.report(state, "training", force=True)
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if not self.run.report_sealed(state) and not control.should_log:
            self.run.report(state, "training")
        return control

    def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, Any] | None = None,
               **kwargs: Any) -> Any:
        logs = logs or {}
        if self.run.is_main:
            shown = {k: (round(v, 6) if isinstance(v, float) else v) for k, v in logs.items()
                     if k in ("loss", "learning_rate", "grad_norm", "eval_loss", "epoch")}
            log.info("step %d/%d %s", state.global_step, state.max_steps, shown)
        if "loss" in logs:
            self.run.loss = float(logs["loss"])
        if "learning_rate" in logs:
            self.run.learning_rate = float(logs["learning_rate"])
        self.run.report(state, "training")
        return control

    def on_evaluate(self, args: Any, state: Any, control: Any,
                    metrics: dict[str, float] | None = None, **kwargs: Any) -> Any:
        if metrics:
            self.run.eval_metrics = dict(metrics)
            self.run.eval_step = int(state.global_step)
        return control
