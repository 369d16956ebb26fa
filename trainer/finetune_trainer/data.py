"""Dataset files -> tokenized training examples.

Formats (``spec.dataset.format``), one record per JSONL line, per element of a JSON array or per
parquet row (``data_formats``):

* ``alpaca``: ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant]]}``
* ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}``
* ``messages`` (OpenAI style): ``{"messages": [{"role": "system"|"user"|"assistant"|"tool",
  "content": str | [{"type": "text", "text": str}]}]}``
* ``text``: ``{"text": str}``

Chat formats are rendered with the tokenizer's chat template, or a ChatML fallback whose
assistant turns end with EOS (``templates``). Labels: by default only assistant turns (their
content and the template's end-of-turn marker) carry a loss; ``dataset.trainOnPrompt: true``
trains on every token. Examples are truncated to ``cutoffLen`` tokens; an example left with no
trainable token is dropped (counted and logged). ``text`` examples end with the EOS token and
train on every token.

Pipeline: the file is streamed (linear time, one chunk in memory), records are rendered and
tokenized in batches (one tokenizer call per batch) and written to a token store on disk
(``data_cache``). With a cache directory (the job's work dir) the store is built once, by local
rank 0, while the other local ranks wait; later attempts reuse it. Every rank then memory-maps
it: examples are materialised one at a time by the data loader. SIGTERM (the trainer's
``StopFlag``) during hashing, reading, tokenization or the wait raises ``DataStopped`` within one
batch.

Packing (``training.packing``) puts whole examples one after another into rows of at most
``cutoffLen`` tokens, with ``position_ids`` restarting at each example and no attention mask,
so the model's packed-sequence masking keeps examples from attending to each other; the first
token of each packed example carries no label.

A malformed record raises ``DataError`` naming the file, the line and the field.
"""

from __future__ import annotations

import logging
import os
import random
import shutil
import tempfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, overload

import torch

from finetune_api.trainer_config import TrainerConfig
from finetune_trainer.data_cache import (
    StoreWriter,
    TokenStore,
    build_store,
    cache_key,
    cached_store,
)
from finetune_trainer.data_formats import (
    CHAT_ROLES,
    DATA_SUFFIXES,
    SHAREGPT_ROLES,
    DataError,
    DatasetUnavailable,
    DataStopped,
    hash_file,
    iter_records,
    pick_split_file,
    read_records,
    record_to_messages,
    record_to_text,
    where,
)
from finetune_trainer.templates import (
    FALLBACK_CHAT_TEMPLATE,
    IGNORE,
    Example,
    assistant_spans,
    ensure_chat_template,
    tokenize_chat,
    tokenize_rendered,
    tokenize_text,
    tokenize_texts,
)

__all__ = [
    "CHAT_ROLES", "DATA_CACHE_DIR", "FALLBACK_CHAT_TEMPLATE", "IGNORE", "SHAREGPT_ROLES",
    "Collator", "DataError", "DataStats", "DataStopped", "DatasetUnavailable", "Example",
    "ExampleDataset", "build_examples", "fetch_hub_split", "pack", "pick_split_file",
    "read_records", "record_to_messages", "resolve_dataset_file", "split_indices",
    "tokenize_chat", "tokenize_text", "truncate",
]

log = logging.getLogger(__name__)

DATA_CACHE_DIR = "data-cache"
BATCH = 256
LOG_EVERY = 50_000


@dataclass
class DataStats:
    records: int = 0
    dropped_no_labels: int = 0
    truncated: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    train_tokens: int = 0
    notes: list[str] = field(default_factory=list)


def resolve_dataset_file(cfg: TrainerConfig) -> str:
    """The local dataset file: the mounted path, or a download from the hub source."""
    hub = cfg.spec.dataset.source.hub
    if hub is None or cfg.paths.dataset.startswith("/"):  # a local file (pinned hub snapshot)
        return cfg.paths.dataset
    return fetch_hub_split(cfg, cfg.paths.dataset, hub.split)


def fetch_hub_split(cfg: TrainerConfig, repo: str, split: str) -> str:
    """Download a hub dataset repo's data files (into the work dir) and pick ``split``'s file."""
    from huggingface_hub import snapshot_download

    from finetune_trainer.model import read_hub_token

    local = snapshot_download(
        repo, repo_type="dataset", allow_patterns=[f"*{s}" for s in DATA_SUFFIXES],
        token=read_hub_token(cfg.hub_token_file),
        cache_dir=str(Path(cfg.paths.work_dir) / "hub-cache"))
    return str(pick_split_file(list(Path(local).rglob("*")), split, repo))


# --- tokenization ----------------------------------------------------------------------------


def truncate(ex: Example, cutoff_len: int) -> tuple[Example, bool]:
    if len(ex) <= cutoff_len:
        return ex, False
    return Example(ex.input_ids[:cutoff_len], ex.labels[:cutoff_len]), True


def _tokenize_batch(batch: list[tuple[int, Any]], path: str, fmt: str, tokenizer: Any,
                    train_on_prompt: bool) -> list[Example]:
    if fmt == "text":
        return tokenize_texts(tokenizer, [record_to_text(obj, where(path, n))
                                          for n, obj in batch])
    rendered = []
    for n, obj in batch:
        at = where(path, n)
        msgs = record_to_messages(obj, fmt, at)
        try:
            rendered.append(assistant_spans(tokenizer, msgs))
        except DataError:
            raise
        except Exception as e:  # the template raised (e.g. roles must alternate)
            raise DataError(f"{at}: the chat template rejected this conversation: {e}") \
                from None
    return tokenize_rendered(tokenizer, rendered, train_on_prompt)


def _batches(it: Iterator[tuple[int, Any]], size: int,
             stopped: Callable[[], bool]) -> Iterator[list[tuple[int, Any]]]:
    batch: list[tuple[int, Any]] = []
    for rec in it:
        batch.append(rec)
        if len(batch) == size:
            if stopped():
                raise DataStopped("stopped while tokenizing the dataset")
            yield batch
            batch = []
    if stopped():
        raise DataStopped("stopped while tokenizing the dataset")
    if batch:
        yield batch


def _fill(path: str, fmt: str, tokenizer: Any, cutoff_len: int, train_on_prompt: bool,
          stopped: Callable[[], bool]) -> Callable[[StoreWriter], list[str]]:
    """Stream the file into a store writer; the DataErrors that concern the whole file."""
    def fill(w: StoreWriter) -> list[str]:
        n = kept = truncated = 0
        for batch in _batches(iter_records(path), BATCH, stopped):
            for ex in _tokenize_batch(batch, path, fmt, tokenizer, train_on_prompt):
                ex, cut = truncate(ex, cutoff_len)
                keep = max(ex.labels[1:], default=IGNORE) != IGNORE  # any trainable token
                w.add(ex if keep else None, cut)
                kept += keep
                truncated += cut
            if (n + len(batch)) // LOG_EVERY > n // LOG_EVERY:
                log.info("dataset: tokenized %d records", n + len(batch))
            n += len(batch)
        if not n:
            raise DataError(f"{path}: the dataset has no records")
        if not kept:
            raise DataError(f"{path}: no record has a trainable token within dataset.cutoffLen="
                            f"{cutoff_len}; raise cutoffLen or shorten the prompts")
        return []
    return fill


def tokenize_dataset(path: str, fmt: str, tokenizer: Any, cutoff_len: int,
                     train_on_prompt: bool, cache_dir: str | Path | None = None,
                     stop: Any = None) -> TokenStore:
    """Every record tokenized, truncated and flagged, in a token store.

    With ``cache_dir``: looked up by key, else built by local rank 0 (``LOCAL_RANK``) while the
    others wait, and memory-mapped. Without: built in a temporary directory and read into
    memory. ``stop`` is the trainer's StopFlag (anything with ``requested``)."""
    def stopped() -> bool:
        return bool(stop is not None and stop.requested)

    fill = _fill(path, fmt, tokenizer, cutoff_len, train_on_prompt, stopped)
    if cache_dir is None:
        tmp = Path(tempfile.mkdtemp(prefix="finetune-data-"))
        try:
            return build_store(tmp / "store", fill, in_memory=True)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    key = cache_key(hash_file(path, stopped), tokenizer,
                    None if fmt == "text" else tokenizer.chat_template, cutoff_len,
                    train_on_prompt, fmt)
    is_writer = os.environ.get("LOCAL_RANK", "0") == "0"
    return cached_store(Path(cache_dir), key, fill, is_writer, stopped)


# --- split, packing, views ---------------------------------------------------------------------


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, eval) index split; eval gets >= 1 record when fraction > 0."""
    idx = list(range(n))
    if fraction <= 0 or n < 2:
        return idx, []
    rng = random.Random(seed)
    rng.shuffle(idx)
    n_eval = min(n - 1, max(1, round(n * fraction)))
    return sorted(idx[n_eval:]), sorted(idx[:n_eval])


def pack_rows(lengths: Sequence[int], cutoff_len: int) -> list[tuple[int, int]]:
    """Greedy in-order packing: [start, end) ranges of examples, each row <= cutoff_len."""
    rows: list[tuple[int, int]] = []
    start, used = 0, 0
    for i, n in enumerate(lengths):
        if used and used + n > cutoff_len:
            rows.append((start, i))
            start, used = i, 0
        used += n
    if used:
        rows.append((start, len(lengths)))
    return rows


def _packed(parts: Sequence[Example]) -> Example:
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in parts:
        ids += ex.input_ids
        labels += [IGNORE, *ex.labels[1:]]
        pos += list(range(len(ex)))
    return Example(ids, labels, pos)


def pack(examples: list[Example], cutoff_len: int) -> list[Example]:
    """Greedy in-order packing of whole examples into rows of at most ``cutoff_len`` tokens."""
    return [_packed(examples[a:b]) for a, b in pack_rows([len(e) for e in examples], cutoff_len)]


class ExampleView(Sequence[Example]):
    """Selected records of a token store, materialised one at a time (optionally packed)."""

    def __init__(self, store: TokenStore, records: list[int],
                 rows: list[tuple[int, int]] | None = None) -> None:
        self.store, self.records, self.rows = store, records, rows

    def __len__(self) -> int:
        return len(self.rows) if self.rows is not None else len(self.records)

    @overload
    def __getitem__(self, i: int) -> Example: ...
    @overload
    def __getitem__(self, i: slice) -> list[Example]: ...

    def __getitem__(self, i: int | slice) -> Example | list[Example]:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(i)
        if self.rows is None:
            return self.store.example(self.records[i])
        a, b = self.rows[i]
        return _packed([self.store.example(r) for r in self.records[a:b]])

    def tokens(self) -> int:
        return sum(self.store.length(r) for r in self.records)


def build_examples(path: str, fmt: str, tokenizer: Any, cutoff_len: int, train_on_prompt: bool,
                   validation_split: float, packing: bool, seed: int,
                   cache_dir: str | Path | None = None,
                   stop: Any = None) -> tuple[ExampleView, ExampleView, DataStats]:
    """Read, validate, tokenize, split and (optionally) pack. Raises DataError, DataStopped.

    ``cache_dir`` (the job's ``<workDir>/data-cache``) keeps the tokenized store across
    attempts and shares it between local ranks; ``stop`` is the trainer's StopFlag."""
    stats = DataStats()
    if fmt != "text":
        note = ensure_chat_template(tokenizer)
        if note:
            stats.notes.append(note)
    store = tokenize_dataset(path, fmt, tokenizer, cutoff_len, train_on_prompt, cache_dir, stop)
    stats.records = store.records
    stats.truncated = int(store.truncated.sum())
    stats.dropped_no_labels = int(store.records - store.kept.sum())
    kept = store.kept
    train_idx, eval_idx = split_indices(store.records, validation_split, seed)
    train_rec = [i for i in train_idx if kept[i]]
    eval_rec = [i for i in eval_idx if kept[i]]
    if stats.dropped_no_labels:
        stats.notes.append(
            f"dropped {stats.dropped_no_labels} of {stats.records} records with no trainable "
            f"token after truncation to dataset.cutoffLen={cutoff_len}")
    if not train_rec:
        raise DataError(f"{path}: no record has a trainable token within dataset.cutoffLen="
                        f"{cutoff_len}; raise cutoffLen or shorten the prompts")
    train, evals = ExampleView(store, train_rec), ExampleView(store, eval_rec)
    if packing:
        train = ExampleView(store, train_rec,
                            pack_rows([store.length(r) for r in train_rec], cutoff_len))
        evals = ExampleView(store, eval_rec,
                            pack_rows([store.length(r) for r in eval_rec], cutoff_len))
    stats.train_examples, stats.eval_examples = len(train), len(evals)
    stats.train_tokens = train.tokens()
    return train, evals, stats


# --- torch glue ------------------------------------------------------------------------------


class ExampleDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    def __init__(self, examples: Sequence[Example]) -> None:
        self.examples = examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict[str, list[int]]:
        ex = self.examples[i]
        item = {"input_ids": ex.input_ids, "labels": ex.labels}
        if ex.position_ids is not None:
            item["position_ids"] = ex.position_ids
        return item


@dataclass
class Collator:
    """Right-pads a batch; packed rows get position_ids and no attention mask."""

    pad_id: int

    def __call__(self, batch: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        n = max(len(b["input_ids"]) for b in batch)
        packed = "position_ids" in batch[0]
        ids, labels, extra = [], [], []
        for b in batch:
            pad = n - len(b["input_ids"])
            ids.append(b["input_ids"] + [self.pad_id] * pad)
            labels.append(b["labels"] + [IGNORE] * pad)
            if packed:
                extra.append(b["position_ids"] + list(range(pad)))
            else:
                extra.append([1] * len(b["input_ids"]) + [0] * pad)
        out = {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
        out["position_ids" if packed else "attention_mask"] = torch.tensor(extra)
        return out
