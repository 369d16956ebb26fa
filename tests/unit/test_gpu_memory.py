"""The GPU memory estimate (finetune_api.memory), its spec fields, its status and its view."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api import memory as m
from finetune_api.spec import FineTuneJobSpec
from finetune_operator.jobs.pods import apply_progress, observe
from finetune_operator.reports.model import BadReport, parse_report, parse_termination
from finetune_operator.view.describe import gpu_memory_text, spec_fields

GiB = 2**30
# The published config.json of Llama-2-7B and -13B (model cards): 6.74 B and 13.0 B parameters.
LLAMA_7B = {"model_type": "llama", "hidden_size": 4096, "num_hidden_layers": 32,
            "intermediate_size": 11008, "vocab_size": 32000, "num_attention_heads": 32,
            "num_key_value_heads": 32, "tie_word_embeddings": False}
LLAMA_13B = {**LLAMA_7B, "hidden_size": 5120, "num_hidden_layers": 40,
             "intermediate_size": 13824, "num_attention_heads": 40, "num_key_value_heads": 40}
HUB = {"hub": {"repo": "org/model"}}


def spec(**kw: Any) -> FineTuneJobSpec:
    d: dict[str, Any] = {"model": {"name": "m", "source": HUB},
                         "dataset": {"source": HUB, "cutoffLen": kw.pop("cutoff", 512)},
                         "training": {"batchSize": kw.pop("batch", 1),
                                      **kw.pop("training", {})}}
    d.update(kw)
    return FineTuneJobSpec.model_validate(d)


def est(s: FineTuneJobSpec, cfg: dict[str, Any] = LLAMA_7B) -> m.Estimate:
    return m.estimate_from_config(s, cfg)


# ---- the shape ------------------------------------------------------------------------------


def test_parameters_of_published_configs() -> None:
    assert round(m.shape_from_config(LLAMA_7B).total_parameters() / 1e9, 2) == 6.74
    assert round(m.shape_from_config(LLAMA_13B).total_parameters() / 1e9, 1) == 13.0


def test_lora_trainable_matches_peft_count() -> None:
    # PEFT reports 39,976,960 trainable parameters for Llama-2-7B, r=16, all linear layers
    assert est(spec()).trainable == 39_976_960
    # r=8 on q_proj and v_proj: 4,194,304 (the count of PEFT's own LoRA example)
    assert est(spec(lora={"rank": 8, "targetModules": ["q_proj", "v_proj"]})).trainable \
        == 4_194_304


def test_camel_case_summary_and_other_names() -> None:
    camel = {"hiddenSize": 4096, "numHiddenLayers": 32, "intermediateSize": 11008,
             "vocabSize": 32000, "numAttentionHeads": 32}
    gpt2 = {"model_type": "gpt2", "n_embd": 768, "n_layer": 12, "n_head": 12,
            "vocab_size": 50257, "tie_word_embeddings": True}
    assert m.shape_from_config(camel) == m.shape_from_config(LLAMA_7B | {"model_type": None})
    shape = m.shape_from_config(gpt2)
    assert (shape.intermediate_size, shape.gated_mlp, shape.tie_word_embeddings) == \
        (3072, False, True)
    assert round(shape.total_parameters() / 1e6) == 124  # GPT-2 small, biases aside


@pytest.mark.parametrize("bad,words", [
    ({**LLAMA_7B, "hidden_size": 10**9}, "hidden_size=1000000000 is outside"),
    ({**LLAMA_7B, "vocab_size": -1}, "vocab_size=-1 is outside"),
    ({**LLAMA_7B, "num_hidden_layers": 1.5}, "num_hidden_layers must be a whole number"),
    ({**LLAMA_7B, "num_hidden_layers": True}, "must be a whole number"),
    ({k: v for k, v in LLAMA_7B.items() if k != "vocab_size"}, "vocab_size is missing"),
    ({**LLAMA_7B, "num_key_value_heads": 64}, "num_key_value_heads=64 is outside 1..32"),
    ({**LLAMA_7B, "hidden_size": 4095}, "not a multiple of num_attention_heads"),
    ({**LLAMA_7B, "parameters": 10**14}, "parameters=100000000000000 is outside"),
])
def test_absurd_configs_give_a_clear_error(bad: dict[str, Any], words: str) -> None:
    with pytest.raises(m.EstimateError, match=words):
        m.shape_from_config(bad)


def test_estimate_beyond_any_gpu_is_an_error_not_a_figure() -> None:
    huge = {**LLAMA_7B, "hidden_size": 65536, "num_attention_heads": 1024,
            "num_key_value_heads": 1024, "num_hidden_layers": 1024, "vocab_size": 4194304,
            "intermediate_size": 1048576}
    s = spec(batch=4096, cutoff=1048576, training={"attnImplementation": "eager"})
    with pytest.raises(m.EstimateError, match="beyond any GPU"):
        est(s, huge)
    with pytest.raises(m.EstimateError, match="CPU job"):
        est(spec(resources={"gpus": 0}))


# ---- the estimate ---------------------------------------------------------------------------


def test_monotone_in_batch_sequence_and_rank() -> None:
    totals = [est(spec(batch=b)).total for b in (1, 2, 4, 8)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    totals = [est(spec(cutoff=c)).total for c in (256, 512, 1024, 2048)]
    assert totals == sorted(totals) and len(set(totals)) == 4
    ranks = [est(spec(lora={"rank": r})) for r in (4, 16, 64, 256)]
    assert [e.trainable for e in ranks] == [e.trainable for e in sorted(ranks, key=lambda e:
                                                                         e.trainable)]
    assert [e.total for e in ranks] == sorted(e.total for e in ranks)
    assert len({e.total for e in ranks}) == 4


def test_qlora_below_lora_below_full() -> None:
    q4 = est(spec(method="qlora", quantization={"bits": 4}))
    q8 = est(spec(method="qlora", quantization={"bits": 8}))
    lora = est(spec())
    full = est(spec(method="full"))
    assert q4.total < q8.total < lora.total < full.total
    assert q4.weights < q8.weights < lora.weights < full.weights


def test_published_ranges() -> None:
    """docs/scheduling.md's table: batch 1, 512 tokens, bf16, defaults otherwise."""
    assert 16 * GiB <= est(spec()).total <= 24 * GiB                         # 7B LoRA
    assert 6 * GiB <= est(spec(method="qlora", quantization={})).total <= 12 * GiB
    full = est(spec(method="full"))
    assert full.weights + full.gradients + full.optimizer >= 112 * 10**9  # 16 B/param + more
    assert 28 * GiB <= est(spec(), LLAMA_13B).total <= 40 * GiB              # 13B LoRA


def test_gradient_checkpointing_cuts_activations() -> None:
    plain = est(spec(batch=4, cutoff=2048))
    gc = est(spec(batch=4, cutoff=2048, training={"gradientCheckpointing": True}))
    assert gc.activations * 4 < plain.activations
    assert gc.weights == plain.weights


def test_eager_attention_adds_the_attention_matrix() -> None:
    assert est(spec(training={"attnImplementation": "eager"})).activations > \
        est(spec()).activations


def test_zero_shards_by_gpu_count() -> None:
    def full(stage: int, gpus: int, **ds: Any) -> m.Estimate:
        return est(spec(method="full", resources={"gpus": gpus},
                        distributed={"deepspeed": {"stage": stage, **ds}}))

    one, eight = full(3, 1), full(3, 8)
    assert eight.optimizer == one.optimizer // 8
    assert eight.gradients == one.gradients // 8
    assert eight.weights < one.weights / 4  # / 8 plus two gathered layers
    z1, z2 = full(1, 8), full(2, 8)
    assert z1.optimizer == eight.optimizer and z1.gradients == one.gradients
    assert z2.gradients == eight.gradients and z2.weights == full(2, 1).weights
    assert full(2, 8, offloadOptimizer=True).optimizer == 0
    offloaded = full(3, 8, offloadParams=True)
    assert offloaded.weights < eight.weights
    # several nodes count: 2 nodes x 4 GPUs shard like 8 GPUs
    two_nodes = est(spec(method="full", resources={"gpus": 4, "nodes": 2},
                         distributed={"deepspeed": {"stage": 3}}))
    assert two_nodes.total == eight.total


def test_overhead_and_margin_are_stated() -> None:
    e = est(spec())
    sub = e.weights + e.gradients + e.optimizer + e.activations
    assert e.overhead == m.CUDA_CONTEXT_BYTES + int(sub * m.FRAGMENTATION)
    assert e.margin == int((sub + e.overhead) * m.SAFETY_MARGIN)
    assert e.breakdown()["total"] == e.total == sub + e.overhead + e.margin


# ---- the spec fields ------------------------------------------------------------------------


def test_gpu_memory_field_bounds() -> None:
    assert spec(resources={"gpuMemory": "20Gi"}).resources.gpu_memory == "20Gi"
    assert spec(resources={"gpuMemory": "auto"}).resources.gpu_memory == "auto"
    for bad in ("512Mi", "2Ti", "lots", "1e30", "-4Gi", "20Gi ", "99999999Gi"):
        with pytest.raises(ValidationError):
            spec(resources={"gpuMemory": bad})
    with pytest.raises(ValidationError, match=r"needs resources\.gpus >= 1"):
        spec(resources={"gpuMemory": "20Gi", "gpus": 0})


def test_model_config_summary_bounds() -> None:
    ok = {"hiddenSize": 4096, "numHiddenLayers": 32, "numAttentionHeads": 32,
          "vocabSize": 32000}
    s = spec(model={"name": "m", "source": HUB, "config": ok})
    assert m.spec_shape(s) == m.shape_from_config(ok)
    for bad in ({**ok, "hiddenSize": 10**6}, {**ok, "numKeyValueHeads": 64},
                {**ok, "hiddenSize": 4095}, {**ok, "parameters": 10**14}, {**ok, "extra": 1}):
        with pytest.raises(ValidationError):
            spec(model={"name": "m", "source": HUB, "config": bad})


def test_share_bytes() -> None:
    e = est(spec())
    assert m.share_bytes(spec(), e) is None
    assert m.share_bytes(spec(resources={"gpuMemory": "24Gi"}), e) == 24 * GiB
    assert m.share_bytes(spec(resources={"gpuMemory": "auto"}), e) == e.total
    assert m.share_bytes(spec(resources={"gpuMemory": "auto"}), None) is None


# ---- status and describe --------------------------------------------------------------------

SUMMARY = {"hiddenSize": 4096, "numHiddenLayers": 32, "numAttentionHeads": 32,
           "vocabSize": 32000, "intermediateSize": 11008}


def _job(spec_: dict[str, Any], status: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": "j", "namespace": "ns"}, "spec": spec_,
            "status": status or {}}


def test_spec_status_and_its_rendering() -> None:
    base = {"model": {"name": "m", "source": HUB, "config": SUMMARY},
            "dataset": {"source": HUB, "cutoffLen": 512}, "training": {"batchSize": 1},
            "resources": {"gpuMemory": "24Gi"}}
    st = m.spec_status(FineTuneJobSpec.model_validate(base))
    assert st is not None and st.source == "spec" and st.share == 24 * GiB
    assert st.per_gpu == est(spec(), SUMMARY).total
    wire = st.to_wire()
    text = gpu_memory_text(_job(base, {"gpuMemory": wire}))
    assert text is not None
    assert text.startswith(f"{st.per_gpu / GiB:.1f} GiB per GPU estimated (weights ")
    assert "from spec.model.config" in text and "capped at 24.0 GiB" in text
    # not in status yet: computed from the spec, the same text
    assert gpu_memory_text(_job(base)) == text
    assert any("gpuMemory 24Gi per GPU" in f["value"] for f in spec_fields(_job(base)))


def test_rendering_without_estimate_and_cpu_jobs() -> None:
    no_cfg = {"model": {"name": "m", "source": HUB}, "dataset": {"source": HUB},
              "resources": {"gpuMemory": "auto"}}
    assert m.spec_status(FineTuneJobSpec.model_validate(no_cfg)) is None
    text = gpu_memory_text(_job(no_cfg))
    assert text is not None and text.startswith("share auto per GPU; no estimate yet")
    cpu = {"model": {"name": "m", "source": HUB}, "dataset": {"source": HUB},
           "resources": {"gpus": 0}}
    assert gpu_memory_text(_job(cpu)) is None
    msg = gpu_memory_text(_job(no_cfg, {"gpuMemory": {"message": "model config: x"}}))
    assert msg == "no estimate: model config: x"
    # a value that is not a byte count renders as '?', never raises
    odd = gpu_memory_text(_job(no_cfg, {"gpuMemory": {"perGpu": "lots", "source": "trainer"}}))
    assert odd is not None and odd.startswith("? per GPU") and "config.json (trainer)" in odd


# ---- the trainer's report and cause ---------------------------------------------------------


def test_progress_report_carries_the_trainer_estimate() -> None:
    from finetune_api.status import FineTuneJobStatus, GpuMemoryStatus

    e = est(spec())
    gm = m.status_of(e, "trainer", 24 * GiB).model_dump(
        by_alias=True, exclude_none=True, exclude={"message", "request", "raises",
                                                   "attempt_share"})
    report = parse_report(json.dumps({"step": 0, "state": "loading", "gpuMemory": gm}).encode())
    st = FineTuneJobStatus()
    # the operator's own fields (the share this attempt holds, a raise) survive the report
    st.gpu_memory = GpuMemoryStatus(attempt_share=36 * GiB, request=36 * GiB, raises=1)
    apply_progress(st, report, 1, dt.datetime(2026, 1, 1, tzinfo=dt.UTC))
    assert st.gpu_memory is not None
    assert (st.gpu_memory.per_gpu, st.gpu_memory.share, st.gpu_memory.source) == \
        (e.total, 24 * GiB, "trainer")
    assert (st.gpu_memory.attempt_share, st.gpu_memory.request, st.gpu_memory.raises) == \
        (36 * GiB, 36 * GiB, 1)
    for bad in ({**gm, "perGpu": 2**51}, {**gm, "source": "spec"}, {**gm, "weights": -1},
                {**gm, "perGpu": 1.5}):
        with pytest.raises(BadReport):
            parse_report(json.dumps({"step": 0, "gpuMemory": bad}).encode())


def test_termination_cause_tells_gpu_memory_exceeded_apart() -> None:
    text = json.dumps({"reason": "Error", "message": "GPUMemoryExceeded: ...",
                       "cause": "GPUMemoryExceeded"})
    msg = parse_termination(text)
    assert msg is not None and msg.cause == m.GPU_MEMORY_EXCEEDED
    rejected: list[BadReport] = []
    assert parse_termination(json.dumps({"reason": "Error", "cause": "Other"}),
                             rejected.append) is None
    assert len(rejected) == 1
    pod = {"metadata": {"name": "j-a1-0", "labels": {}}, "status": {
        "phase": "Failed",
        "containerStatuses": [{"state": {"terminated": {"exitCode": 1, "reason": "Error"}}}],
        "termination": {"parsed": msg, "logTail": "", "rejected": None}}}
    view = observe([pod], 1, True)  # type: ignore[list-item]
    assert view.failure is not None and view.gpu_memory_exceeded
    assert "GPUMemoryExceeded" in view.failure
