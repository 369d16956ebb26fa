"""The trainer's GPU memory containment: the cap's fraction, the estimate it reports, and how a
CUDA out-of-memory error under the cap becomes the cause GPUMemoryExceeded (pure parts; the cap
itself on a real GPU is tests/trainer/test_gpu_memory_cap.py)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from finetune_api.memory import CUDA_CONTEXT_BYTES, GPU_MEMORY_EXCEEDED, estimate_from_config
from finetune_api.spec import FineTuneJobSpec
from finetune_operator.reports.model import parse_report, parse_termination
from finetune_trainer import gpu_memory as g
from finetune_trainer.launch import Worker, failure_cause
from finetune_trainer.progress import termination_message

GiB = 2**30
CONFIG = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
          "intermediate_size": 11008, "vocab_size": 32000, "num_attention_heads": 32}
HUB = {"hub": {"repo": "org/model"}}


def spec(resources: dict[str, Any] | None = None) -> FineTuneJobSpec:
    return FineTuneJobSpec.model_validate({
        "model": {"name": "m", "source": HUB}, "dataset": {"source": HUB, "cutoffLen": 512},
        "training": {"batchSize": 1}, "resources": resources or {}})


def test_cap_fraction() -> None:
    total = 80 * GiB
    assert g.cap_fraction(20 * GiB, total) == (20 * GiB - CUDA_CONTEXT_BYTES) / total
    assert g.cap_fraction(200 * GiB, total) == 1.0  # more than the device: the whole device
    with pytest.raises(ValueError, match="does not hold the CUDA context"):
        g.cap_fraction(CUDA_CONTEXT_BYTES, total)
    with pytest.raises(ValueError, match="reports 0 bytes"):
        g.cap_fraction(20 * GiB, 0)


class OutOfMemoryError(RuntimeError):
    """Named like torch.OutOfMemoryError (the classifier goes by the name and the text)."""


def test_classify_only_cuda_oom_under_a_cap() -> None:
    cap = g.Cap(share=20 * GiB, total=80 * GiB, fraction=0.24)
    oom = OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
    est = estimate_from_config(spec(), CONFIG)
    exceeded = g.classify(oom, cap, est)
    assert isinstance(exceeded, g.GPUMemoryExceeded) and exceeded.cause == GPU_MEMORY_EXCEEDED
    assert "share of 20.0 GiB per GPU" in str(exceeded) and "raise resources.gpuMemory" in \
        str(exceeded)
    assert g.classify(oom, None, est) is None  # whole GPU: the usual failure
    assert g.classify(ValueError("bad data"), cap, est) is None
    try:  # wrapped by another exception (accelerate/DeepSpeed re-raise): still found
        try:
            raise oom
        except OutOfMemoryError as inner:
            raise RuntimeError("step failed") from inner
    except RuntimeError as outer:
        assert g.classify(outer, cap, None) is not None


def test_plan_and_report(tmp_path: Path) -> None:
    est, share, note = g.plan(spec({"gpuMemory": "auto"}), CONFIG)
    assert est is not None and share == est.total and note == ""
    est2, share2, _ = g.plan(spec({"gpuMemory": "30Gi"}), CONFIG)
    assert est2 == est and share2 == 30 * GiB
    none, share3, note3 = g.plan(spec({"gpuMemory": "auto"}), None)
    assert none is None and share3 is None and "cannot cap the job" in note3
    _, _, bad = g.plan(spec(), {**CONFIG, "hidden_size": -1})
    assert "hidden_size=-1 is outside" in bad
    cap = g.Cap(share=share, total=80 * GiB, fraction=0.3)
    payload = g.report_of(est, cap)
    assert payload is not None
    # the operator accepts what the trainer sends
    report = parse_report(json.dumps({"step": 0, "state": "loading",
                                      "gpuMemory": payload}).encode())
    assert report.gpu_memory is not None and report.gpu_memory.per_gpu == est.total
    assert report.gpu_memory.share == share
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    assert g.read_model_config(str(tmp_path)) == CONFIG
    (tmp_path / "config.json").write_text("[1, 2]")
    assert g.read_model_config(str(tmp_path)) is None
    assert g.read_model_config("org/model") is None


def test_cause_reaches_the_termination_message(tmp_path: Path) -> None:
    text = termination_message(reason="Error", message="GPUMemoryExceeded: ...", final_step=0,
                               adapter_path="", merged_path="", metrics={}, checkpoint=None,
                               cause=GPU_MEMORY_EXCEEDED)
    msg = parse_termination(text)
    assert msg is not None and msg.cause == GPU_MEMORY_EXCEEDED
    plain = parse_termination(termination_message(
        reason="Error", message="x", final_step=0, adapter_path="", merged_path="", metrics={},
        checkpoint=None))
    assert plain is not None and plain.cause is None
    # the supervisor keeps a worker's cause in the pod's message
    result = tmp_path / "rank-0.json"
    result.write_text(text)
    assert failure_cause(Worker(0, 0, 1, result, status=1)) == GPU_MEMORY_EXCEEDED
    result.write_text(json.dumps({"reason": "Error", "cause": "Anything"}))
    assert failure_cause(Worker(0, 0, 1, result, status=1)) == ""
