"""``spec.evaluation``: score the trained model on a held-out test set, after training.

Runs in the trainer process on its own devices, on the model in memory, once training is
complete (train.py calls :func:`run` between the final checkpoint and the export). Metrics,
as the termination message's ``metrics`` (so ``status.output.metrics``) and
``output/eval_results.json``:

* ``testLoss``: mean negative log-likelihood per label token over the test set (labels as in
  training: assistant turns for chat formats, every token for ``text``); ``testPerplexity`` =
  ``exp(testLoss)``. Always.
* Chat formats with ``generate: true``: the prompt is the conversation up to its last assistant
  turn, the reference is that turn. Answers are generated (greedy at ``temperature: 0``, else
  sampled; ``maxNewTokens``) and scored the way LLaMA-Factory's predict mode does
  (``ComputeSimilarity``): ROUGE-1/2/L F-scores of ``rouge_chinese`` on jieba-segmented text,
  BLEU-4 of ``nltk``'s ``sentence_bleu`` on characters with ``SmoothingFunction().method3``, each
  x100 and rounded to 4 decimals per example, then averaged (``testRouge1``, ``testRouge2``,
  ``testRougeL``, ``testBleu4``); plus ``testExactMatch``: the percentage of answers equal to the
  reference after stripping whitespace. The answers go to ``output/eval_predictions.jsonl``.
* ``testExamples``: how many test records were scored (the first ``maxExamples``).

Interruptible: a SIGTERM (the trainer's StopFlag) is honoured between batches and between
generated answers; :func:`run` then returns ``{}`` and the caller reports a preemption. The next
attempt resumes from the final checkpoint (no training step is repeated) and evaluates again.
A finished evaluation is a resume-safe marker: ``eval_results.json`` records the step and a
fingerprint of the evaluation settings, and a later attempt at the same step reuses it instead
of evaluating twice (e.g. when the export after it was interrupted).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from finetune_api.spec import EvaluationSpec
from finetune_api.trainer_config import TrainerConfig
from finetune_trainer.checkpoint import write_atomic
from finetune_trainer.data import (
    IGNORE,
    Collator,
    DataError,
    assistant_spans,
    ensure_chat_template,
    iter_records,
    record_to_messages,
    record_to_text,
    tokenize_rendered,
    tokenize_texts,
    truncate,
    where,
)

log = logging.getLogger(__name__)

RESULTS_FILE = "output/eval_results.json"
PREDICTIONS_FILE = "output/eval_predictions.jsonl"
GENERATION_METRICS = ("testRouge1", "testRouge2", "testRougeL", "testBleu4", "testExactMatch")


# ---- scoring (pure) ------------------------------------------------------------------------

def _jieba() -> Any:
    import jieba

    jieba.setLogLevel(logging.CRITICAL)
    return jieba


def similarity(prediction: str, reference: str) -> dict[str, float]:
    """One example's ROUGE-1/2/L and BLEU-4 (x100, 4 decimals) as LLaMA-Factory computes them."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba = _jieba()
    hypothesis = list(jieba.cut(prediction))
    ref_tokens = list(jieba.cut(reference))
    if not " ".join(hypothesis).split() or not " ".join(ref_tokens).split():
        rouge = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(ref_tokens))[0]
    bleu = sentence_bleu([list(reference)], list(prediction),
                         smoothing_function=SmoothingFunction().method3)
    return {"testRouge1": round(rouge["rouge-1"]["f"] * 100, 4),
            "testRouge2": round(rouge["rouge-2"]["f"] * 100, 4),
            "testRougeL": round(rouge["rouge-l"]["f"] * 100, 4),
            "testBleu4": round(float(bleu) * 100, 4)}


def score_generations(predictions: list[str], references: list[str]) -> dict[str, float]:
    """Averages over the examples (LLaMA-Factory's ``predict_*`` values) plus exact match."""
    if not predictions:
        return {}
    per = [similarity(p, r) for p, r in zip(predictions, references, strict=True)]
    out = {k: float(statistics.fmean(s[k] for s in per)) for k in per[0]}
    out["testExactMatch"] = 100.0 * sum(p.strip() == r.strip()
                                        for p, r in zip(predictions, references, strict=True)) \
        / len(predictions)
    return out


def loss_metrics(nll_sum: float, tokens: int) -> dict[str, float]:
    if tokens == 0:
        return {}
    loss = nll_sum / tokens
    return {"testLoss": loss, "testPerplexity": math.exp(min(loss, 700.0))}


# ---- the test set ------------------------------------------------------------------------

def test_file(cfg: TrainerConfig) -> str:
    """The local test-set file: the mounted path, or a download from the hub source."""
    ev = cfg.spec.evaluation
    assert ev is not None and cfg.paths.eval_dataset
    hub = ev.dataset.source.hub
    if hub is None or cfg.paths.eval_dataset.startswith("/"):  # local (pinned hub snapshot)
        return cfg.paths.eval_dataset
    from huggingface_hub import snapshot_download

    from finetune_trainer.data import pick_split_file
    from finetune_trainer.model import read_hub_token

    local = snapshot_download(
        cfg.paths.eval_dataset, repo_type="dataset",
        allow_patterns=["*.jsonl", "*.json", "*.parquet"],
        token=read_hub_token(cfg.hub_token_file),
        cache_dir=str(Path(cfg.paths.work_dir) / "hub-cache"))
    return str(pick_split_file(list(Path(local).rglob("*")), hub.split, cfg.paths.eval_dataset))


def _first(records: Iterable[tuple[int, Any]], n: int) -> list[tuple[int, Any]]:
    out: list[tuple[int, Any]] = []
    for rec in records:
        if len(out) == n:
            break
        out.append(rec)
    return out


def split_prompt(msgs: list[dict[str, str]]) -> tuple[list[dict[str, str]], str]:
    """(conversation before the last assistant turn, that turn's content)."""
    last = max(i for i, m in enumerate(msgs) if m["role"] == "assistant")
    return msgs[:last], msgs[last]["content"]


def fingerprint(cfg: TrainerConfig) -> str:
    ev = cfg.spec.evaluation
    data = {"evaluation": ev.to_wire() if ev else None, "file": cfg.paths.eval_dataset,
            "cutoffLen": cfg.spec.dataset.cutoff_len,
            "trainOnPrompt": cfg.spec.dataset.train_on_prompt}
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


# ---- running on the model ------------------------------------------------------------------

class _Stopped(Exception):
    pass


def _check(flag: Any) -> None:
    if flag is not None and flag.requested:
        raise _Stopped


def _nll(model: Any, tokenizer: Any, examples: list[Any], batch_size: int, device: Any,
         flag: Any) -> tuple[float, int]:
    import torch

    collate = Collator(pad_id=tokenizer.pad_token_id)
    total, tokens = 0.0, 0
    with torch.no_grad():
        for i in range(0, len(examples), batch_size):
            _check(flag)
            chunk = examples[i:i + batch_size]
            batch = collate([{"input_ids": e.input_ids, "labels": e.labels} for e in chunk])
            batch = {k: v.to(device) for k, v in batch.items()}
            logits = model(input_ids=batch["input_ids"],
                           attention_mask=batch["attention_mask"]).logits.float()
            labels = batch["labels"][:, 1:]
            logp = torch.nn.functional.cross_entropy(
                logits[:, :-1].reshape(-1, logits.size(-1)), labels.reshape(-1),
                ignore_index=IGNORE, reduction="sum")
            total += float(logp)
            tokens += int((labels != IGNORE).sum())
    return total, tokens


def _generate(model: Any, tokenizer: Any, prompts: list[list[dict[str, str]]],
              gen: Any, device: Any, flag: Any) -> list[str]:
    import torch

    out = []
    kwargs: dict[str, Any] = {"max_new_tokens": gen.max_new_tokens,
                              "pad_token_id": tokenizer.pad_token_id,
                              "eos_token_id": tokenizer.eos_token_id}
    if gen.temperature > 0:
        kwargs.update(do_sample=True, temperature=gen.temperature)
    else:
        kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
    was_cache = getattr(model.config, "use_cache", None)
    model.config.use_cache = True
    try:
        with torch.no_grad():
            for msgs in prompts:
                _check(flag)
                text = tokenizer.apply_chat_template(msgs, tokenize=False,
                                                     add_generation_prompt=True)
                ids = tokenizer(text, add_special_tokens=False, return_tensors="pt")
                ids = {k: v.to(device) for k, v in ids.items()}
                res = model.generate(**ids, **kwargs)
                new = res[0, ids["input_ids"].shape[1]:]
                out.append(tokenizer.decode(new, skip_special_tokens=True).strip())
    finally:
        if was_cache is not None:
            model.config.use_cache = was_cache
    return out


def evaluate(model: Any, tokenizer: Any, path: str, fmt: str, ev: EvaluationSpec,
             cutoff_len: int, train_on_prompt: bool, batch_size: int = 4,
             flag: Any = None) -> tuple[dict[str, float], list[dict[str, str]]]:
    """(metrics, predictions) of ``model`` on the first ``maxExamples`` records of ``path``.
    Raises _Stopped when the flag is set, DataError for a malformed test set."""
    device = next(model.parameters()).device
    records = _first(iter_records(path), ev.max_examples)
    if not records:
        raise DataError(f"{path}: the test set (spec.evaluation.dataset) has no records")
    chat = fmt != "text"
    if chat:
        ensure_chat_template(tokenizer)
        convs = [record_to_messages(obj, fmt, where(path, n)) for n, obj in records]
        examples = tokenize_rendered(tokenizer, [assistant_spans(tokenizer, m) for m in convs],
                                     train_on_prompt)
    else:
        convs = []
        examples = tokenize_texts(tokenizer, [record_to_text(obj, where(path, n))
                                              for n, obj in records])
    examples = [truncate(e, cutoff_len)[0] for e in examples]
    examples = [e for e in examples if max(e.labels[1:], default=IGNORE) != IGNORE]
    model.eval()
    metrics = loss_metrics(*_nll(model, tokenizer, examples, batch_size, device, flag))
    predictions: list[dict[str, str]] = []
    if chat and ev.generate:
        pairs = [split_prompt(m) for m in convs]
        answers = _generate(model, tokenizer, [p for p, _ in pairs], ev.generation, device,
                            flag)
        refs = [r for _, r in pairs]
        metrics.update(score_generations(answers, refs))
        predictions = [{"predict": a, "label": r} for a, r in zip(answers, refs, strict=True)]
    metrics["testExamples"] = float(len(records))
    return metrics, predictions


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)


def load_results(work_dir: Path, step: int, fp: str) -> dict[str, float] | None:
    """The metrics of an evaluation finished at this step with these settings, if any."""
    try:
        data = json.loads((work_dir / RESULTS_FILE).read_text())
    except (OSError, ValueError):
        return None
    if data.get("step") != step or data.get("fingerprint") != fp:
        return None
    return {k: float(v) for k, v in (data.get("metrics") or {}).items()}


def run(cfg: TrainerConfig, trainer: Any, tokenizer: Any, flag: Any) -> dict[str, float]:
    """Evaluate the trained model (rank 0) if the job asks for it; ``{}`` when it does not, on
    other ranks, and when a SIGTERM interrupted it (the caller then reports a preemption)."""
    ev = cfg.spec.evaluation
    if ev is None or not trainer.is_world_process_zero():
        return {}
    work_dir = Path(cfg.paths.work_dir)
    step = int(trainer.state.global_step)
    fp = fingerprint(cfg)
    done = load_results(work_dir, step, fp)
    if done is not None:
        log.info("evaluation: reusing %s (step %d)", RESULTS_FILE, step)
        return done
    model = trainer.accelerator.unwrap_model(trainer.model)
    path = test_file(cfg)
    fmt = ev.dataset.format or cfg.spec.dataset.format
    log.info("evaluation: scoring %s (%s, at most %d records)", path, fmt, ev.max_examples)
    try:
        metrics, predictions = evaluate(
            model, tokenizer, path, fmt, ev, cfg.spec.dataset.cutoff_len,
            cfg.spec.dataset.train_on_prompt, cfg.spec.training.batch_size, flag)
    except _Stopped:
        log.warning("evaluation interrupted by %s; it runs again after the resume",
                    getattr(flag, "signal_name", "a signal"))
        return {}
    finally:
        model.train()
    if predictions:
        _write_atomic(work_dir / PREDICTIONS_FILE,
                      "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in predictions))
    _write_atomic(work_dir / RESULTS_FILE, json.dumps(
        {"step": step, "fingerprint": fp, "metrics": metrics}, indent=2, sort_keys=True))
    log.info("evaluation: %s", ", ".join(f"{k}={v:.4g}" for k, v in sorted(metrics.items())))
    return metrics
