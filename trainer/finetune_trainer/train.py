"""Thin orchestration: build, resume, train, export, report."""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finetune_api.memory import gib
from finetune_api.trainer_config import TrainerConfig
from finetune_trainer import checkpoint as ck
from finetune_trainer import evaluation, gpu_memory, model_card, outputs, s3, sources
from finetune_trainer.callbacks import CheckpointingTrainer, ReportCallback, RunState, StopCallback
from finetune_trainer.config import ConfigError, Runtime, detect_runtime, resolve_precision
from finetune_trainer.data import (
    DATA_CACHE_DIR,
    Collator,
    DataStopped,
    ExampleDataset,
    build_examples,
    resolve_dataset_file,
)
from finetune_trainer.merge import check_merge_memory, merge_and_save, merge_precision
from finetune_trainer.model import apply_method, deepspeed_config, load_model, load_tokenizer
from finetune_trainer.progress import build_reporter, termination_message
from finetune_trainer.stop import StopFlag
from finetune_trainer.tb_logs import BackgroundTensorBoard

log = logging.getLogger(__name__)

ADAPTER_DIR = "output/adapter"
MERGED_DIR = "output/merged"
LOGS_DIR = "logs"


@dataclass
class Outcome:
    reason: str  # Completed | Preempted
    final_step: int
    message: str = ""
    adapter_path: str = ""
    merged_path: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    checkpoint: dict[str, Any] | None = None
    adapter_uri: str = ""
    merged_uri: str = ""
    sources: list[dict[str, str]] = field(default_factory=list)

    def termination(self) -> str:
        return termination_message(
            reason=self.reason, message=self.message, final_step=self.final_step,
            adapter_path=self.adapter_path, merged_path=self.merged_path, metrics=self.metrics,
            checkpoint=self.checkpoint, adapter_uri=self.adapter_uri,
            merged_uri=self.merged_uri, sources=self.sources)


def training_kwargs(cfg: TrainerConfig, precision: str, rt: Runtime, ckpt_root: Path,
                    has_eval: bool, ds: dict[str, Any] | None) -> dict[str, Any]:
    """TrainingArguments for the spec (pure; the caller constructs the dataclass)."""
    t = cfg.spec.training
    interval = cfg.spec.checkpoint.interval_steps
    return dict(
        output_dir=str(ckpt_root),
        per_device_train_batch_size=t.batch_size,
        per_device_eval_batch_size=t.batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        num_train_epochs=t.epochs if t.epochs > 0 else 1.0,
        max_steps=t.max_steps if t.max_steps > 0 else -1,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler,
        warmup_steps=t.warmup_ratio,  # a float in [0, 1) is a ratio of the total steps
        weight_decay=t.weight_decay,
        max_grad_norm=t.max_grad_norm,
        bf16=precision == "bf16",
        fp16=precision == "fp16",
        activation_checkpointing=t.gradient_checkpointing,
        activation_checkpointing_kwargs={"use_reentrant": False}
        if t.gradient_checkpointing else None,
        seed=t.seed,
        data_seed=t.seed,
        logging_strategy="steps",
        logging_steps=t.logging_steps,
        save_strategy="steps",
        save_steps=interval,
        save_total_limit=None,  # retention is ours (checkpoint.apply_retention)
        eval_strategy="steps" if has_eval else "no",
        eval_steps=interval if has_eval else None,
        report_to="none",  # TensorBoard is attached explicitly (logs/ under the work dir)
        dataloader_num_workers=0,
        remove_unused_columns=False,
        include_num_input_tokens_seen="non_padding",
        disable_tqdm=True,
        use_cpu=not rt.cuda,
        deepspeed=ds,
        ddp_find_unused_parameters=False if rt.world_size > 1 else None,
        restore_callback_states_from_checkpoint=False,
        ignore_data_skip=False,
        save_only_model=False,
        log_level="warning",
    )


def _attempt_tag() -> str:
    """Same on every rank of one attempt, different across attempts (tmp checkpoint dirs)."""
    return "a" + "".join(c for c in os.environ.get("FINETUNE_ATTEMPT", "0") if c.isalnum())


def _seal(tmp: Path, final: Path) -> None:
    ck.fsync_tree(tmp)
    if final.exists():
        shutil.rmtree(final)
    os.rename(tmp, final)


def _export_model(trainer: Any, final: Path, is_main: bool) -> None:
    """``trainer.save_model`` into ``final`` atomically (every rank takes part, rank 0 writes)."""
    tmp = final.with_name(f".tmp-{final.name}")
    if is_main:
        shutil.rmtree(tmp, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    trainer.save_model(str(tmp))
    trainer.accelerator.wait_for_everyone()
    if is_main:
        _seal(tmp, final)
    trainer.accelerator.wait_for_everyone()


def _export_merged(cfg: TrainerConfig, adapter: Path, final: Path, precision: str,
                   local_rank: int, tokenizer: Any) -> None:
    tmp = final.with_name(f".tmp-{final.name}")
    shutil.rmtree(tmp, ignore_errors=True)
    merge_and_save(cfg, adapter, tmp, precision, local_rank, tokenizer)
    _seal(tmp, final)


def run(cfg: TrainerConfig, flag: StopFlag | None = None, rt: Runtime | None = None,
        clock: Callable[[], float] = time.time) -> Outcome:
    """One attempt of the job: resume from the newest complete checkpoint, train, export.

    Returns the outcome (Completed or Preempted); raises ConfigError/DataError for bad input
    and anything else for failures. Writes no termination log (the entrypoint does).
    """
    flag = flag or StopFlag()
    rt = rt or detect_runtime()
    is_main = rt.rank == 0
    work_dir = Path(cfg.paths.work_dir)
    ckpt_root = work_dir / ck.CHECKPOINTS_DIR
    uid = cfg.job.uid
    if is_main:
        ck.claim_work_dir(work_dir, cfg.job.namespace, cfg.job.name, uid)
        ckpt_root.mkdir(parents=True, exist_ok=True)
        for p in ck.clean_partials(ckpt_root, uid):
            log.info("removed partial checkpoint %s", p.name)
    reporter = build_reporter(cfg.progress.file if is_main else None,
                              cfg.report if is_main else None,
                              cfg.progress.min_interval_seconds)
    run_state = RunState(work_dir=work_dir, ckpt_root=ckpt_root, job_uid=uid,
                         keep=cfg.spec.checkpoint.keep, tag=_attempt_tag(), reporter=reporter,
                         clock=clock, is_main=is_main)
    # started now: TensorBoard is imported on its thread while the model loads
    tb = BackgroundTensorBoard(work_dir / LOGS_DIR) if is_main else None
    prepared: dict[str, Any] = {}  # the resolved config and sources (sources.py)
    try:
        try:
            outcome = _run(cfg, flag, rt, run_state, tb, prepared)
        except Exception as e:  # an OOM within the job's memory share has its own cause
            exceeded = gpu_memory.classify(e, prepared.get("gpu_cap"), prepared.get("gpu_est"))
            if exceeded is not None:
                raise exceeded from e
            raise
        resolved: list[sources.Resolved] = prepared.get("sources", [])
        outcome.sources = [r.status() for r in resolved]
        if is_main and outcome.reason == "Completed":
            try:  # the model card counts this attempt as completed
                out = outputs.publish(prepared["cfg"], resolved, outcome.adapter_path,
                                      outcome.merged_path, outcome.final_step, outcome.metrics,
                                      _attempt_tag(), lambda: flag.requested)
            except s3.DownloadStopped:
                outcome = _preempted(run_state, outcome.final_step,
                                     f"by {flag.signal_name} while uploading the output")
                outcome.sources = [r.status() for r in resolved]
            else:
                outcome.adapter_uri, outcome.merged_uri = out.adapter_uri, out.merged_uri
        if is_main:
            model_card.record_attempt(work_dir, _attempt_tag(), outcome.reason,
                                      outcome.final_step)
        return outcome
    finally:
        if tb is not None:
            tb.close()
        reporter.close()


def _run(cfg: TrainerConfig, flag: StopFlag, rt: Runtime, run_state: RunState,
         tb: BackgroundTensorBoard | None, prepared: dict[str, Any]) -> Outcome:
    import transformers

    spec = cfg.spec
    work_dir, ckpt_root, uid = run_state.work_dir, run_state.ckpt_root, run_state.job_uid
    resume = ck.newest_complete(ckpt_root, uid)
    run_state.last_checkpoint = resume
    if run_state.is_main:
        run_state.reporter.report(
            {"state": "loading", "step": resume.step if resume else 0,
             "resumedFromStep": resume.step if resume else None,
             "checkpoint": run_state.checkpoint_report()}, run_state.clock(), force=True)
    if resume:
        log.info("resuming from %s", resume.path.name)

    try:  # every source to local bytes at a pinned revision (S3 downloads cached on the volume)
        cfg, resolved = sources.prepare(cfg, run_state.is_main, _attempt_tag(),
                                        lambda: flag.requested)
    except sources.SourcesStopped:
        return _preempted(run_state, resume.step if resume else 0,
                          f"by {flag.signal_name} while downloading the model and data")
    prepared.update(cfg=cfg, sources=resolved)

    precision, note = resolve_precision(spec.training.precision, rt)
    if note:
        log.warning(note)
    transformers.set_seed(spec.training.seed)
    tokenizer = load_tokenizer(cfg)
    try:  # tokenized once, on local rank 0, cached on the job's volume for later attempts
        train_ex, eval_ex, stats = build_examples(
            resolve_dataset_file(cfg), spec.dataset.format, tokenizer, spec.dataset.cutoff_len,
            spec.dataset.train_on_prompt, spec.dataset.validation_split, spec.training.packing,
            spec.training.seed, cache_dir=work_dir / DATA_CACHE_DIR, stop=flag)
    except DataStopped:
        return _preempted(run_state, resume.step if resume else 0,
                          f"by {flag.signal_name} while preparing the dataset")
    for n in stats.notes:
        log.warning("dataset: %s", n)
    log.info("dataset: %d records -> %d train / %d eval examples (%d train tokens)",
             stats.records, stats.train_examples, stats.eval_examples, stats.train_tokens)

    ds_spec = spec.distributed.deepspeed if spec.distributed else None
    ds = deepspeed_config(ds_spec, precision) if ds_spec is not None else None
    if rt.world_size == 1 and ds is None:
        # One process without DeepSpeed needs no process group: without these variables the
        # HF Trainer does not wrap the model in a one-rank DDP (the launcher always sets them,
        # because DeepSpeed on one GPU needs them to avoid MPI discovery).
        for k in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE"):
            os.environ.pop(k, None)
    # TrainingArguments first: with ZeRO-3 it must exist before the model is created, so the
    # weights are partitioned while loading (HfDeepSpeedConfig).
    args = transformers.TrainingArguments(
        **training_kwargs(cfg, precision, rt, ckpt_root, bool(eval_ex), ds))
    _contain_gpu_memory(cfg, rt, run_state, prepared)  # before any weight is on the GPU
    model = load_model(cfg, precision, rt.local_rank, rt.cuda, ds is not None)
    if run_state.is_main:  # fails now (exit 2), not after training, if the merge cannot fit
        on_cpu = 0 if rt.cuda else sum(p.numel() * p.element_size() for p in model.parameters())
        check_merge_memory(cfg, model, merge_precision(precision, rt.cuda), rt.cuda,
                           rt.local_rank, on_cpu)
    model = apply_method(model, cfg)
    callbacks: list[Any] = [ReportCallback(run_state, resume is not None),
                            StopCallback(flag, run_state)]
    if tb is not None:
        callbacks.append(tb)
    trainer = CheckpointingTrainer(
        model=model, args=args, train_dataset=ExampleDataset(train_ex),
        eval_dataset=ExampleDataset(eval_ex) if eval_ex else None,
        data_collator=Collator(pad_id=tokenizer.pad_token_id), processing_class=tokenizer,
        callbacks=callbacks, run=run_state, flag=flag)
    trainer.remove_callback(transformers.trainer_callback.PrinterCallback)  # we log ourselves

    if flag.agreed(args.device):  # stopped while loading: nothing new to save
        return _preempted(run_state, resume.step if resume else 0, "before training started")

    run_state.train_called_at = time.monotonic()
    training_loss = 0.0
    if resume and ck.training_finished(resume.path) and not _zero3(ds):
        # A previous attempt finished training and was stopped during evaluation or export.
        # Resuming the HF loop at the last step would train one step more: load the final
        # weights instead and do only what is left.
        log.info("training already finished at step %d; evaluating and exporting", resume.step)
        trainer.state = transformers.TrainerState.load_from_json(
            str(resume.path / ck.TRAINER_STATE_FILE))
        trainer._load_from_checkpoint(str(resume.path))
        run_state.start_step = run_state.resumed_from = resume.step
        run_state.start_time = run_state.clock()
        run_state.start_tokens = int(trainer.state.num_input_tokens_seen or 0)
    else:
        out = trainer.train(resume_from_checkpoint=str(resume.path) if resume else None)
        training_loss = float(out.training_loss or 0.0)
        if run_state.is_main:
            log.info("training loop: %.3fs, from step %d to step %d", out.metrics.get(
                "train_runtime", 0.0), run_state.start_step, trainer.state.global_step)
    step = int(trainer.state.global_step)
    if run_state.preempted_at is not None and step < int(trainer.state.max_steps):
        return _preempted(run_state, step, f"by {flag.signal_name}")

    # Training is complete and its last checkpoint saved. Everything after it (evaluation,
    # export, merge) yields to a SIGTERM: the next attempt resumes at the final step and
    # redoes only this part.
    run_state.report(trainer.state, "saving", force=True)
    metrics: dict[str, float] = {}
    if training_loss and run_state.start_step < step:
        metrics["trainLoss"] = training_loss
    if eval_ex:
        ev = run_state.eval_metrics if run_state.eval_step == step else trainer.evaluate()
        if "eval_loss" in ev:
            metrics["evalLoss"] = float(ev["eval_loss"])
    if flag.agreed(args.device):
        return _preempted(run_state, step, f"by {flag.signal_name} after training, before export")
    metrics.update(evaluation.run(cfg, trainer, tokenizer, flag))  # spec.evaluation (issue 13)
    if flag.agreed(args.device):
        return _preempted(run_state, step, f"by {flag.signal_name} during the evaluation")
    adapter_rel = merged_rel = ""
    if spec.method == "full":
        _export_model(trainer, work_dir / MERGED_DIR, run_state.is_main)
        merged_rel = MERGED_DIR
    else:
        _export_model(trainer, work_dir / ADAPTER_DIR, run_state.is_main)
        adapter_rel = ADAPTER_DIR
        if spec.output.merge_adapter:
            merged_rel = MERGED_DIR
            # Only rank 0 merges; the others are done (no barrier: they exit and wait for
            # nothing). The training model is released first so the merge gets the memory.
            if run_state.is_main:
                if flag.requested:
                    return _preempted(run_state, step, f"by {flag.signal_name} before the merge")
                state = trainer.state
                trainer.accelerator.free_memory()  # drops its model/optimizer/engine refs
                del trainer, model
                message = f"completed {step} steps"
                try:
                    _export_merged(cfg, work_dir / ADAPTER_DIR, work_dir / MERGED_DIR,
                                   merge_precision(precision, rt.cuda), rt.local_rank, tokenizer)
                except ConfigError as e:
                    # Checked before training; memory can still be short now (another tenant
                    # on the node): the adapter is the result, the job is not failed for it.
                    log.error("merge skipped: %s", e)
                    merged_rel, message = "", f"{message}; merge skipped: {e}"
                run_state.report(state, "done", force=True)
                log.info("completed at step %d: %s", step, metrics)
                return Outcome("Completed", step, message, adapter_rel, merged_rel, metrics,
                               run_state.checkpoint_report())
    run_state.report(trainer.state, "done", force=True)
    log.info("completed at step %d: %s", step, metrics)
    return Outcome("Completed", step, f"completed {step} steps", adapter_rel, merged_rel,
                   metrics, run_state.checkpoint_report())


def _contain_gpu_memory(cfg: TrainerConfig, rt: Runtime, run_state: RunState,
                        prepared: dict[str, Any]) -> None:
    """Estimate the job's GPU memory from config.json, report it (status.gpuMemory) and, with
    resources.gpuMemory, cap this process's CUDA memory at the share (gpu_memory.py)."""
    if not rt.cuda or cfg.spec.resources.gpus == 0:
        return
    est, share, note = gpu_memory.plan(cfg.spec, gpu_memory.read_model_config(cfg.paths.model))
    if note:
        log.warning("%s", note)
    if est is not None:
        log.info("GPU memory estimate: %s per GPU (%s)", gib(est.total),
                 ", ".join(f"{k} {gib(v)}" for k, v in est.breakdown().items() if k != "total"))
    cap = gpu_memory.apply_cap(share, rt.local_rank) if share is not None else None
    prepared.update(gpu_est=est, gpu_cap=cap)
    payload = gpu_memory.report_of(est, cap)
    if run_state.is_main and payload is not None:
        run_state.reporter.report(
            {"state": "loading", "step": run_state.last_checkpoint.step
             if run_state.last_checkpoint else 0, "gpuMemory": payload},
            run_state.clock(), force=True)


def _zero3(ds: dict[str, Any] | None) -> bool:
    """ZeRO-3 partitions the weights while loading, so a finished run is resumed through the
    HF loop (it may take one step more) rather than by loading the final weights."""
    return bool(ds and ds.get("zero_optimization", {}).get("stage") == 3)


def _preempted(run_state: RunState, step: int, why: str) -> Outcome:
    ckpt = run_state.checkpoint_report()
    last = run_state.last_checkpoint
    msg = f"stopped {why} at step {step}; " + (
        f"checkpoint at step {last.step}" if last else "no checkpoint yet (nothing to resume)")
    log.warning(msg)
    return Outcome("Preempted", step, msg, checkpoint=ckpt)
