"""spec.evaluation: each metric against a hand-computed value on a tiny fixture, then the real
trainer evaluating after training, interrupted by a real SIGTERM and resumed without training
again."""

from __future__ import annotations

import json
import math
import signal
from pathlib import Path
from typing import Any

import pytest

from finetune_api.spec import EvaluationSpec
from finetune_trainer.evaluation import (
    RESULTS_FILE,
    evaluate,
    loss_metrics,
    score_generations,
    similarity,
    split_prompt,
)
from tests.builders.trainer import DATA, config_dict, read_json, write_config

from .helpers import run_trainer, start_trainer, wait_until

pytestmark = pytest.mark.trainer

MESSAGES = DATA / "messages.jsonl"


# ---- the scores, by hand -------------------------------------------------------------------

def test_rouge_and_bleu_of_a_prefix_answer() -> None:
    """pred "the cat sat", ref "the cat sat on the mat" (jieba words; ROUGE on n-gram *sets*,
    as rouge_chinese counts them; BLEU-4 on characters)."""
    s = similarity("the cat sat", "the cat sat on the mat")
    # ROUGE-1: pred {the, cat, sat}, ref {the, cat, sat, on, mat}: P = 3/3, R = 3/5
    assert s["testRouge1"] == round(100 * 2 * 1 * 0.6 / 1.6, 4) == 75.0
    # ROUGE-2: pred {the cat, cat sat}, ref has 5 distinct bigrams: P = 2/2, R = 2/5
    assert s["testRouge2"] == round(100 * 2 * 1 * 0.4 / 1.4, 4) == 57.1429
    # ROUGE-L: LCS 3 words; P = 3/3, R = 3/6 (words, not distinct)
    assert s["testRougeL"] == round(100 * 2 * 1 * 0.5 / 1.5, 4) == 66.6667
    # BLEU-4: every char n-gram of the 11-char prediction is in the 22-char reference, so the
    # precisions are 1 and BLEU is the brevity penalty exp(1 - 22/11)
    assert s["testBleu4"] == round(100 * math.exp(1 - 22 / 11), 4) == 36.7879


def test_rouge_and_bleu_of_a_partial_answer() -> None:
    """pred "hello world", ref "hello there" (same length: no brevity penalty)."""
    s = similarity("hello world", "hello there")
    assert s["testRouge1"] == 50.0  # P = R = 1/2
    assert s["testRouge2"] == 0.0  # no shared bigram
    assert s["testRougeL"] == 50.0  # LCS 1 of 2 words
    # clipped character n-gram matches: 1-grams 7/11 (h e l l o ' ' r), 2-grams 5/10
    # (he el ll lo 'o '), 3-grams 4/9, 4-grams 3/8; no zero count, so smoothing does nothing
    expected = 100 * (7 / 11 * 5 / 10 * 4 / 9 * 3 / 8) ** 0.25
    assert s["testBleu4"] == round(expected, 4) == 47.9878


def test_empty_answers_score_zero() -> None:
    assert similarity("", "Paris") == {"testRouge1": 0.0, "testRouge2": 0.0, "testRougeL": 0.0,
                                       "testBleu4": 0.0}


def test_averages_and_exact_match() -> None:
    preds = ["the cat sat", "hello world", "Paris "]
    refs = ["the cat sat on the mat", "hello there", "Paris"]
    m = score_generations(preds, refs)
    assert m["testRouge1"] == pytest.approx((75.0 + 50.0 + 100.0) / 3)
    assert m["testRouge2"] == pytest.approx((57.1429 + 0.0 + 0.0) / 3)  # "Paris": no bigram
    assert m["testBleu4"] == pytest.approx((36.7879 + 47.9878 + similarity("Paris ", "Paris")
                                            ["testBleu4"]) / 3)
    assert m["testExactMatch"] == pytest.approx(100 / 3)  # only "Paris " (stripped) matches
    assert score_generations([], []) == {}


def test_loss_and_perplexity_from_token_sums() -> None:
    assert loss_metrics(6.0, 4) == {"testLoss": 1.5, "testPerplexity": math.exp(1.5)}
    assert loss_metrics(0.0, 0) == {}


def test_prompt_is_everything_before_the_last_assistant_turn() -> None:
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    assert split_prompt(msgs) == (msgs[:3], "d")


# ---- on a real tiny model --------------------------------------------------------------------

def _uniform_model(tiny_model: Path) -> Any:
    """The tiny model with a zero output layer: every next-token distribution is uniform, so
    the loss per label token is exactly ln(vocab size)."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        model.get_output_embeddings().weight.zero_()
    return model


def test_loss_and_perplexity_of_a_uniform_model_are_ln_v_and_v(tiny_model: Path,
                                                                tiny_tokenizer: Any) -> None:
    model = _uniform_model(tiny_model)
    vocab = model.get_output_embeddings().weight.shape[0]
    ev = EvaluationSpec.model_validate({"dataset": {"source": {"configMap": {
        "name": "d", "key": "k"}}}, "generate": False, "maxExamples": 3})
    metrics, predictions = evaluate(model, tiny_tokenizer, str(MESSAGES), "messages", ev,
                                    cutoff_len=128, train_on_prompt=False)
    assert metrics["testLoss"] == pytest.approx(math.log(vocab), rel=1e-6)
    assert metrics["testPerplexity"] == pytest.approx(vocab, rel=1e-5)
    assert metrics["testExamples"] == 3.0
    assert predictions == [] and "testRouge1" not in metrics


def test_generation_metrics_on_a_tiny_model_are_deterministic(tiny_model: Path,
                                                              tiny_tokenizer: Any) -> None:
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    ev = EvaluationSpec.model_validate({"dataset": {"source": {"configMap": {
        "name": "d", "key": "k"}}}, "generation": {"maxNewTokens": 6}, "maxExamples": 2})
    first, preds = evaluate(model, tiny_tokenizer, str(MESSAGES), "messages", ev, 128, False)
    again, preds2 = evaluate(model, tiny_tokenizer, str(MESSAGES), "messages", ev, 128, False)
    assert first == again and preds == preds2  # temperature 0: greedy
    assert [p["label"] for p in preds] == ["The capital of France is Paris.",
                                           "The capital of Japan is Tokyo."]
    assert set(first) == {"testLoss", "testPerplexity", "testRouge1", "testRouge2", "testRougeL",
                          "testBleu4", "testExactMatch", "testExamples"}
    # the scores are those of the generated answers against the references
    expect = score_generations([p["predict"] for p in preds], [p["label"] for p in preds])
    assert {k: first[k] for k in expect} == expect
    assert all(0.0 <= first[k] <= 100.0 for k in expect)


def test_a_set_stop_flag_interrupts_the_evaluation(tiny_model: Path,
                                                   tiny_tokenizer: Any) -> None:
    from finetune_trainer.evaluation import _Stopped
    from finetune_trainer.stop import StopFlag

    flag = StopFlag()
    flag.requested = True
    ev = EvaluationSpec.model_validate({"dataset": {"source": {"configMap": {
        "name": "d", "key": "k"}}}})
    with pytest.raises(_Stopped):
        evaluate(_uniform_model(tiny_model), tiny_tokenizer, str(MESSAGES), "messages", ev, 128,
                 False, flag=flag)


# ---- the real trainer: after training, SIGTERM, resume -----------------------------------------

def _config(tiny_model: Path, tmp: Path, **evaluation: Any) -> tuple[Path, dict[str, Any]]:
    work = tmp / "work"
    data = config_dict(tiny_model, work, spec={
        "training": {"maxSteps": 6},
        "checkpoint": {"intervalSteps": 3, "keep": 2},
        "evaluation": {"dataset": {"source": {"configMap": {"name": "test", "key": "t.jsonl"}}},
                       **evaluation}},
        paths={"evalDataset": str(MESSAGES)})
    return write_config(tmp / "config.yaml", data), data


def test_trainer_evaluates_after_training_and_reports_the_metrics(tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    config, data = _config(tiny_model, tmp_path, generation={"maxNewTokens": 4}, maxExamples=3)
    assert run_trainer(config, tmp_path / "log") == 0, (tmp_path / "log").read_text()[-3000:]
    term = read_json(data["terminationLog"])
    assert term["reason"] == "Completed"
    metrics = term["metrics"]
    for key in ("testLoss", "testPerplexity", "testRouge1", "testRouge2", "testRougeL",
                "testBleu4", "testExactMatch"):
        assert key in metrics, metrics
    assert metrics["testExamples"] == 3.0
    assert metrics["testPerplexity"] == pytest.approx(math.exp(metrics["testLoss"]))
    assert len(json.dumps(term)) < 4096  # the termination message stays bounded
    work = Path(data["paths"]["workDir"])
    results = json.loads((work / RESULTS_FILE).read_text())
    assert results["step"] == 6
    # the termination message rounds the values (it stays < 4 KiB); the file keeps them whole
    assert {k: metrics[k] for k in results["metrics"]} == {
        k: pytest.approx(v, rel=1e-5) for k, v in results["metrics"].items()}
    assert "evalLoss" in metrics and "trainLoss" in metrics  # training's own metrics stay
    assert (work / "output" / "adapter").is_dir()  # the results sit beside the adapter
    lines = (work / "output" / "eval_predictions.jsonl").read_text().splitlines()
    assert len(lines) == 3 and set(json.loads(lines[0])) == {"predict", "label"}


def test_sigterm_during_evaluation_resumes_without_training_again(tiny_model: Path,
                                                                  tmp_path: Path) -> None:
    # enough generation that the evaluation is still running when the signal arrives
    config, data = _config(tiny_model, tmp_path, generation={"maxNewTokens": 64},
                           maxExamples=40)
    log = tmp_path / "log"
    proc = start_trainer(config, log)
    wait_until("the evaluation", lambda: log.exists() and "evaluation: scoring" in
               log.read_text(errors="replace"), proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(120) == 0, log.read_text()[-3000:]
    term = read_json(data["terminationLog"])
    assert term["reason"] == "Preempted", term
    assert "during the evaluation" in term["message"]
    work = Path(data["paths"]["workDir"])
    assert not (work / RESULTS_FILE).exists()

    assert run_trainer(config, log) == 0, log.read_text()[-3000:]
    term = read_json(data["terminationLog"])
    assert term["reason"] == "Completed" and "testLoss" in term["metrics"]
    progress = read_json(data["progress"]["file"])
    assert progress["resumedFromStep"] == 6  # resumed at the final step: no step trained again
    saved = json.loads((work / RESULTS_FILE).read_text())["metrics"]
    assert {k: term["metrics"][k] for k in saved} == {
        k: pytest.approx(v, rel=1e-5) for k, v in saved.items()}
