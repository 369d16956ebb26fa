"""Training a tiny model on the CPU: loss goes down, SIGTERM + restart is exact, SIGKILL mid-save
is survivable. Real trainer subprocesses get real signals."""

from __future__ import annotations

import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import checkpoint as ck
from finetune_trainer.callbacks import (
    EVAL_DELAY_ENV,
    EVAL_DELAY_STEP_ENV,
    SAVE_DELAY_ENV,
    SAVE_DELAY_STEP_ENV,
)
from tests.builders.trainer import DATA, config_dict, read_json, write_config

from .helpers import (
    Run,
    max_diff,
    run_trainer,
    sigterm_at,
    start_launcher,
    start_trainer,
    wait_until,
)

pytestmark = pytest.mark.trainer

MAX_STEPS = 14  # checkpoints every 5 steps: 5, 10 and the final 14
METHODS: dict[str, dict[str, Any]] = {
    "lora": {},
    "full": {"method": "full", "lora": None, "training": {"learningRate": 0.002}},
}
WEIGHTS = {"lora": "output/adapter/adapter_model.safetensors",
           "full": "output/merged/model.safetensors"}


@pytest.fixture(scope="module")
def baseline(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], Run]:
    """The uninterrupted run for a method (run once per module, in a subprocess)."""
    cache: dict[str, Run] = {}

    def get(method: str) -> Run:
        if method not in cache:
            r = Run(tmp_path_factory.mktemp(f"baseline-{method}"), tiny_model,
                    METHODS[method])
            assert r.run() == 0, r.output()
            cache[method] = r
        return cache[method]

    return get


def mean_loss(model: Any, tokenizer: Any) -> float:
    import torch

    from finetune_trainer.data import Collator, build_examples

    train, _, _ = build_examples(str(DATA / "messages.jsonl"), "messages", tokenizer, 128,
                                 False, 0.0, False, 7)
    batch = Collator(tokenizer.pad_token_id)(
        [{"input_ids": e.input_ids, "labels": e.labels} for e in train])
    with torch.no_grad():
        return float(model.eval()(**batch).loss)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_training_lowers_the_loss(method: str, baseline: Callable[[str], Run],
                                  tiny_model: Path, tiny_tokenizer: Any) -> None:
    from transformers import AutoModelForCausalLM

    r = baseline(method)
    term = r.term()
    assert term["reason"] == "Completed" and term["finalStep"] == MAX_STEPS
    before = mean_loss(AutoModelForCausalLM.from_pretrained(tiny_model), tiny_tokenizer)
    trained: Any
    if method == "lora":
        from peft import PeftModel

        assert term["adapterPath"] == "output/adapter" and term["mergedPath"] == ""
        trained = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                            str(r.work / "output/adapter"))
    else:
        assert term["adapterPath"] == "" and term["mergedPath"] == "output/merged"
        trained = AutoModelForCausalLM.from_pretrained(r.work / "output/merged")
    after = mean_loss(trained, tiny_tokenizer)
    assert after < before - 0.5, (before, after)
    assert term["metrics"]["trainLoss"] > 0 and term["metrics"]["evalLoss"] > 0
    # artefacts of the contract: retention kept 2 complete checkpoints, TensorBoard logs
    assert [c.step for c in ck.complete_checkpoints(r.work / "checkpoints", "uid-1234")] == [
        10, MAX_STEPS]
    assert term["checkpoint"]["path"] == f"checkpoints/checkpoint-{MAX_STEPS}"
    # a checkpoint holds what a resume reads; the model card and tokenizer go to the export only
    last = {f.name for f in (r.work / term["checkpoint"]["path"]).iterdir()}
    assert {"optimizer.pt", "scheduler.pt", "trainer_state.json", "COMPLETE"} <= last
    assert not last & {"README.md", "tokenizer.json", "tokenizer_config.json"}, last
    export = r.work / (term["adapterPath"] or term["mergedPath"])
    assert (export / "tokenizer.json").exists()
    card = (export / "README.md").read_text()  # the model card, adapter and merged model alike
    assert "## Base model" in card and f"Optimizer steps: {MAX_STEPS}" in card, card
    assert list((r.work / "logs").glob("events.out.tfevents.*"))
    p = r.prog()
    assert p["state"] == "done" and p["step"] == p["totalSteps"] == MAX_STEPS
    assert p["tokensPerSecond"] > 0 and "resumedFromStep" not in p


@pytest.mark.parametrize("method", ["lora", "full"])
def test_sigterm_then_restart_is_exact(method: str, baseline: Callable[[str], Run],
                                       tiny_model: Path, tmp_path: Path) -> None:
    base = baseline(method)
    r = Run(tmp_path / method, tiny_model, METHODS[method])
    # 6 steps per epoch: ask for a stop in the second epoch, between periodic saves
    rc, seconds = sigterm_at(r.config, r.progress, r.log, step=7)
    assert rc == 0, r.output()
    assert seconds < 30, "saves and exits well within a grace period"
    term = r.term()
    stopped = term["finalStep"]
    assert term["reason"] == "Preempted", term
    assert 7 <= stopped < MAX_STEPS
    assert term["checkpoint"]["step"] == stopped  # saved at the step boundary it stopped on
    assert ck.is_complete(r.work / f"checkpoints/checkpoint-{stopped}", "uid-1234")
    # the operator learns it from the last progress report, sent once the checkpoint is sealed
    assert r.prog()["checkpoint"]["step"] == stopped
    assert "SIGTERM received" in r.output()

    assert r.run() == 0, r.output()
    term2, prog2 = r.term(), r.prog()
    assert term2["reason"] == "Completed" and term2["finalStep"] == MAX_STEPS
    assert prog2["resumedFromStep"] == stopped
    lost_steps = stopped - prog2["resumedFromStep"]
    assert lost_steps == 0
    assert max_diff(base.work / WEIGHTS[method], r.work / WEIGHTS[method]) <= 1e-6
    assert term2["metrics"]["evalLoss"] == pytest.approx(base.term()["metrics"]["evalLoss"],
                                                         abs=1e-6)


def test_sigterm_during_evaluation_saves_first_then_resumes_exact(
        baseline: Callable[[str], Run], tiny_model: Path, tmp_path: Path) -> None:
    """Through the pod's launch path with one process: an evaluation in progress (here made
    slow: 300 s per batch) is abandoned, the checkpoint of that step is saved, exit 0."""
    base = baseline("lora")
    r = Run(tmp_path / "eval", tiny_model, METHODS["lora"])
    proc = start_launcher(r.config, r.log, 1, {EVAL_DELAY_ENV: "300", EVAL_DELAY_STEP_ENV: "5"})
    # step 5 is an evaluation step and a checkpoint step: the evaluation runs first
    wait_until("the evaluation of step 5", lambda: "evaluation batch at step 5 delayed"
               in r.log.read_text(errors="replace"), proc, r.log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, r.output()  # not the 300 s the evaluation batch would take
    term = r.term()
    assert term["reason"] == "Preempted" and term["finalStep"] == 5, term
    assert term["checkpoint"]["step"] == 5
    assert ck.is_complete(r.work / "checkpoints/checkpoint-5", "uid-1234")
    out = r.log.read_text(errors="replace")
    assert "evaluation at step 5 abandoned" in out
    assert "rendezvous 127.0.0.1:" in out, "one process also gets the env:// variables"

    assert r.launch() == 0, r.output()
    assert r.term()["reason"] == "Completed" and r.prog()["resumedFromStep"] == 5
    assert max_diff(base.work / WEIGHTS["lora"], r.work / WEIGHTS["lora"]) <= 1e-6
    assert r.term()["metrics"]["evalLoss"] == pytest.approx(base.term()["metrics"]["evalLoss"],
                                                            abs=1e-6)


def test_sigterm_after_the_last_step_skips_evaluation_and_export(
        baseline: Callable[[str], Run], tiny_model: Path, tmp_path: Path) -> None:
    """Training done and saved, the final evaluation in progress: SIGTERM ends the attempt
    (exit 0, Preempted at the last step); the next attempt only evaluates and exports."""
    base = baseline("lora")
    r = Run(tmp_path / "late", tiny_model, METHODS["lora"])
    proc = start_launcher(r.config, r.log, 1,
                          {EVAL_DELAY_ENV: "300", EVAL_DELAY_STEP_ENV: str(MAX_STEPS)})
    wait_until("the evaluation of the last step", lambda: f"evaluation batch at step {MAX_STEPS}"
               " delayed" in r.log.read_text(errors="replace"), proc, r.log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, r.output()
    term = r.term()
    assert term["reason"] == "Preempted" and term["finalStep"] == MAX_STEPS, term
    assert "after training, before export" in term["message"]
    assert term["checkpoint"]["step"] == MAX_STEPS
    assert not (r.work / "output/adapter").exists()

    assert r.launch() == 0, r.output()
    term2 = r.term()
    assert term2["reason"] == "Completed" and term2["finalStep"] == MAX_STEPS
    assert r.prog()["resumedFromStep"] == MAX_STEPS, "no step trained twice or added"
    assert "training already finished at step 14" in r.log.read_text(errors="replace")
    assert max_diff(base.work / WEIGHTS["lora"], r.work / WEIGHTS["lora"]) <= 1e-6
    assert term2["metrics"]["evalLoss"] == pytest.approx(base.term()["metrics"]["evalLoss"],
                                                         abs=1e-6)


def test_sigterm_while_loading_exits_0_without_training(tiny_model: Path,
                                                       tmp_path: Path) -> None:
    r = Run(tmp_path / "early", tiny_model, METHODS["lora"])
    proc = start_trainer(r.config, r.log)
    wait_until("the loading report", lambda: r.progress.exists(), proc, r.log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, r.output()
    term = r.term()
    assert term["reason"] == "Preempted"
    if term["finalStep"] == 0:  # the usual case: the signal landed while loading
        assert ("before training started" in term["message"]
                or "while preparing the dataset" in term["message"]) and "checkpoint" not in term
    else:  # loading won the race: it stopped at the first step boundary, with a checkpoint
        assert term["checkpoint"]["step"] == term["finalStep"]


def test_sigkill_during_checkpoint_write_keeps_the_previous_one(
        baseline: Callable[[str], Run], tiny_model: Path, tmp_path: Path) -> None:
    base = baseline("lora")
    r = Run(tmp_path / "killed", tiny_model, METHODS["lora"])
    tmp = r.work / "checkpoints" / ".tmp-checkpoint-10-a0"
    proc = start_trainer(r.config, r.log, {SAVE_DELAY_ENV: "60", SAVE_DELAY_STEP_ENV: "10"})
    # the save of step 10 has written weights, optimizer and state, and not yet the marker
    wait_until("the checkpoint-10 write", lambda: (tmp / "trainer_state.json").exists(), proc,
               r.log)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait(30) == -signal.SIGKILL
    assert (tmp / "optimizer.pt").exists() and not (tmp / ck.MARKER).exists()
    assert not (r.work / "checkpoints/checkpoint-10").exists()
    newest = ck.newest_complete(r.work / "checkpoints", "uid-1234")
    assert newest is not None and newest.step == 5

    assert r.run() == 0, r.output()
    assert r.prog()["resumedFromStep"] == 5
    assert r.term()["finalStep"] == MAX_STEPS
    assert not tmp.exists(), "the partial checkpoint is cleaned up on start"
    assert max_diff(base.work / WEIGHTS["lora"], r.work / WEIGHTS["lora"]) <= 1e-6


def test_stale_work_dir_of_another_uid_is_refused(baseline: Callable[[str], Run],
                                                  tiny_model: Path, tmp_path: Path) -> None:
    base = baseline("lora")
    data = config_dict(tiny_model, base.work, job={"uid": "uid-new"},
                       progress={"file": str(tmp_path / "p.json")},
                       terminationLog=str(tmp_path / "t.json"))
    cfg = write_config(tmp_path / "c.yaml", data)
    assert run_trainer(cfg, tmp_path / "log") == 2
    assert "refusing to resume a stale run" in read_json(data["terminationLog"])["message"]


def test_malformed_dataset_exits_2_naming_file_line_and_field(tiny_model: Path,
                                                             tmp_path: Path) -> None:
    bad = tmp_path / "bad.jsonl"
    good = (DATA / "alpaca.jsonl").read_text().splitlines()
    bad.write_text("\n".join([*good[:2], '{"instruction": "q", "outptu": "a"}', *good[2:]]))
    data = config_dict(tiny_model, tmp_path / "w", dataset="alpaca.jsonl")
    data["paths"]["dataset"] = str(bad)
    cfg = write_config(tmp_path / "c.yaml", data)
    assert run_trainer(cfg, tmp_path / "log") == 2
    msg = read_json(data["terminationLog"])["message"]
    assert msg.startswith(f"{bad}:3: field 'output' is missing"), msg


def test_packing_text_and_a_merged_model_that_serves(tiny_model: Path, tmp_path: Path) -> None:
    """output/merged loads on its own (model + tokenizer + generation config) and computes what
    the base model with the adapter computes."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from finetune_trainer import train
    from finetune_trainer.config import parse_config

    cfg = parse_config(config_dict(tiny_model, tmp_path / "w", dataset="text.jsonl", spec={
        "training": {"maxSteps": 4, "packing": True}, "dataset": {"validationSplit": 0.1},
        "output": {"mergeAdapter": True}}))
    out = train.run(cfg)
    assert out.reason == "Completed" and out.final_step == 4
    assert out.merged_path == "output/merged" and "evalLoss" in out.metrics
    merged_dir = tmp_path / "w/output/merged"
    assert (merged_dir / "generation_config.json").is_file()
    assert not list(merged_dir.glob("adapter_*")), "a plain model, not an adapter"
    tok = AutoTokenizer.from_pretrained(merged_dir)
    merged = AutoModelForCausalLM.from_pretrained(merged_dir).eval()
    peft = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model),
                                     str(tmp_path / "w/output/adapter")).eval()
    x = tok("The capital of France is Paris.", return_tensors="pt")
    assert x["input_ids"].shape[1] > 3
    with torch.no_grad():
        a, b = merged(**x).logits, peft(**x).logits
    assert float((a - b).abs().max()) <= 1e-4
    assert not torch.allclose(a, AutoModelForCausalLM.from_pretrained(tiny_model)(**x).logits,
                              atol=1e-4), "the adapter changed something"


def test_epochs_and_gradient_accumulation_in_process(tiny_model: Path, tmp_path: Path) -> None:
    from finetune_trainer import train
    from finetune_trainer.config import parse_config

    cfg = parse_config(config_dict(tiny_model, tmp_path / "w", dataset="sharegpt.jsonl", spec={
        "training": {"maxSteps": 0, "epochs": 1, "gradientAccumulationSteps": 2,
                     "gradientCheckpointing": True}}))
    out = train.run(cfg)
    # 24 records, batch 4, accumulation 2: 6 micro-batches -> 3 optimizer steps
    assert out.reason == "Completed" and out.final_step == 3


# --- GPU-only paths --------------------------------------------------------------------------


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


needs_gpu = pytest.mark.skipif(
    not _cuda(), reason="no NVIDIA GPU on this machine (torch.cuda.is_available() is False)")


@pytest.mark.gpu
@needs_gpu
def test_qlora_run_on_gpu(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("bitsandbytes", reason="bitsandbytes is not installed (gpu extra)")
    r = Run(tmp_path / "qlora", tiny_model, {
        "method": "qlora", "quantization": {"bits": 4, "type": "nf4", "doubleQuant": True},
        "resources": {"gpus": 1}, "training": {"maxSteps": 6}})
    assert r.run({"CUDA_VISIBLE_DEVICES": "0"}) == 0, r.output()
    assert r.term()["reason"] == "Completed"
    assert (r.work / WEIGHTS["lora"]).exists()


@pytest.mark.gpu
@needs_gpu
def test_deepspeed_zero2_run_on_gpu(tiny_model: Path, tmp_path: Path) -> None:
    pytest.importorskip("deepspeed", reason="deepspeed is not installed (gpu extra)")
    r = Run(tmp_path / "ds", tiny_model, {
        "distributed": {"deepspeed": {"stage": 2}}, "resources": {"gpus": 1},
        "training": {"maxSteps": 6}})
    # through the pod's launch path, with no RANK/WORLD_SIZE/MASTER_* of our own: the launcher
    # provides them, so DeepSpeed creates its process group instead of looking for MPI
    assert r.launch(1, {"CUDA_VISIBLE_DEVICES": "0"}) == 0, r.output()
    assert r.term()["reason"] == "Completed"
    assert (r.work / WEIGHTS["lora"]).exists()


def test_sigterm_while_tokenizing_a_large_dataset_exits_0_promptly(tiny_model: Path,
                                                                   tmp_path: Path) -> None:
    """The whole trainer, not only build_examples: SIGTERM while a 60k-record file is read and
    tokenized ends the attempt with exit 0 (Preempted), long before tokenizing could finish."""
    import json as _json

    data = tmp_path / "big.jsonl"
    with data.open("w", encoding="utf-8") as f:
        for i in range(60_000):
            f.write(_json.dumps({"instruction": f"say {i}", "input": "", "output": f"{i} " * 20})
                    + "\n")
    work = tmp_path / "tok" / "work"
    cfg = config_dict(tiny_model, work, "alpaca.jsonl", paths={"dataset": str(data)})
    (tmp_path / "tok").mkdir()
    config = write_config(tmp_path / "tok" / "config.yaml", cfg)
    log = tmp_path / "tok" / "trainer.log"
    proc = start_trainer(config, log)
    progress = Path(cfg["progress"]["file"])
    wait_until("the loading report", lambda: progress.exists(), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()[-3000:]
    term = _json.loads(Path(cfg["terminationLog"]).read_text())
    assert term["reason"] == "Preempted" and term["finalStep"] == 0
    assert "dataset" in term["message"] or "before training started" in term["message"]
