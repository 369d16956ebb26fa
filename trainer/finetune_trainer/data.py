"""Dataset files -> tokenized training examples.

Formats (``spec.dataset.format``), one record per JSONL line or per element of a JSON array:

* ``alpaca``: ``{"instruction", "input"?, "output", "system"?, "history"?: [[user, assistant]]}``
* ``sharegpt``: ``{"conversations": [{"from": "human"|"gpt"|"system", "value"}], "system"?}``
* ``messages`` (OpenAI style): ``{"messages": [{"role": "system"|"user"|"assistant"|"tool",
  "content": str | [{"type": "text", "text": str}]}]}``
* ``text``: ``{"text": str}``

Chat formats are rendered with the tokenizer's chat template. Fallback when the tokenizer has
none: ChatML (``<|im_start|>{role}\\n{content}<|im_end|>\\n``, ``FALLBACK_CHAT_TEMPLATE``), logged
once. Labels: by default only assistant turns (their content and the template's end-of-turn
text) carry a loss; ``dataset.trainOnPrompt: true`` trains on every token. Examples are
truncated to ``cutoffLen`` tokens; an example left with no trainable token is dropped (counted and
logged). ``text`` examples end with the EOS token and train on every token.

Packing (``training.packing``) puts whole examples one after another into rows of at most
``cutoffLen`` tokens, with ``position_ids`` restarting at each example and no attention mask,
so the model's packed-sequence masking keeps examples from attending to each other; the first
token of each packed example carries no label.

A malformed record raises ``DataError`` naming the file, the line and the field.
"""

from __future__ import annotations

import itertools
import json
import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from finetune_operator.api.trainer_config import TrainerConfig

from .config import ConfigError

log = logging.getLogger(__name__)

IGNORE = -100

FALLBACK_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "observation": "tool", "tool": "tool",
}


class DatasetUnavailable(RuntimeError):
    """The dataset file cannot be read (yet): a retryable failure (exit code 1)."""


class DataError(ConfigError):
    """A malformed dataset (exit code 2); the message names file, line and field."""


@dataclass
class Example:
    input_ids: list[int]
    labels: list[int]
    position_ids: list[int] | None = None

    def __len__(self) -> int:
        return len(self.input_ids)


@dataclass
class DataStats:
    records: int = 0
    dropped_no_labels: int = 0
    truncated: int = 0
    train_examples: int = 0
    eval_examples: int = 0
    train_tokens: int = 0
    notes: list[str] = field(default_factory=list)


# --- reading -------------------------------------------------------------------------------


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """(line number, parsed value) for each record of a .jsonl or .json file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as e:
        # not a DataError (exit 2, never retried): the volume may be filled later, so the
        # operator retries this failure up to backoffLimit
        raise DatasetUnavailable(f"{p}: cannot read the dataset ({e.strerror}); check "
                                 "dataset.source and that the data is on the volume") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{p}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    stripped = text.lstrip()
    if p.suffix == ".json" or (p.suffix != ".jsonl" and stripped.startswith("[")):
        return _read_json_array(p, text)
    out = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            out.append((n, json.loads(line)))
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno}); "
                            "each line of a JSONL file must be one JSON object") from None
    return out


def _read_json_array(p: Path, text: str) -> list[tuple[int, Any]]:
    dec = json.JSONDecoder()
    i = len(text) - len(text.lstrip())
    if i >= len(text) or text[i] != "[":
        raise DataError(f"{p}:1: a .json dataset must be an array of records")
    i += 1
    out: list[tuple[int, Any]] = []
    while True:
        while i < len(text) and text[i] in " \t\r\n,":
            i += 1
        if i >= len(text):
            raise DataError(f"{p}:{text.count(chr(10)) + 1}: unterminated JSON array")
        if text[i] == "]":
            return out
        line = text.count("\n", 0, i) + 1
        try:
            value, i = dec.raw_decode(text, i)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{e.lineno}: not valid JSON ({e.msg} at column {e.colno})") \
                from None
        out.append((line, value))


def pick_split_file(files: list[Path], split: str, repo: str) -> Path:
    """The one .json/.jsonl file of a hub dataset repo that holds ``split``."""
    data = sorted(f for f in files if f.suffix in (".json", ".jsonl"))
    named = [f for f in data if f.stem == split or f.stem.startswith(f"{split}-")
             or f.parent.name == split]
    if len(named) == 1:
        return named[0]
    if not named and len(data) == 1:
        return data[0]
    listing = ", ".join(f.name for f in data) or "none"
    raise DataError(
        f"spec.dataset.source.hub.split: cannot pick one .json/.jsonl file for split {split!r} "
        f"in {repo} (files: {listing}); publish the split as one JSONL file named {split}.jsonl"
    )


def resolve_dataset_file(cfg: TrainerConfig) -> str:
    """The local dataset file: the mounted path, or a download from the hub source."""
    hub = cfg.spec.dataset.source.hub
    if hub is None:
        return cfg.paths.dataset
    from huggingface_hub import snapshot_download

    from .model import read_hub_token

    local = snapshot_download(
        cfg.paths.dataset, repo_type="dataset", allow_patterns=["*.jsonl", "*.json"],
        token=read_hub_token(cfg.hub_token_file),
        cache_dir=str(Path(cfg.paths.work_dir) / "hub-cache"))
    return str(pick_split_file(list(Path(local).rglob("*")), hub.split, cfg.paths.dataset))


# --- record -> conversation ------------------------------------------------------------------


def _req_str(obj: dict[str, Any], key: str, where: str, optional: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if optional:
            return ""
        raise DataError(f"{where}: field '{key}' is missing")
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(f"{where}: field '{key}' must be a string, got {type(v).__name__}")
    return v


def _content(v: Any, where: str, fld: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for j, part in enumerate(v):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise DataError(f"{where}: field '{fld}[{j}]' must be "
                                "{\"type\": \"text\", \"text\": str} (only text is supported)")
            parts.append(part["text"])
        return "".join(parts)
    raise DataError(f"{where}: field '{fld}' must be a string or a list of text parts, "
                    f"got {type(v).__name__}")


def _need_assistant(msgs: list[dict[str, str]], where: str, fld: str) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{where}: field '{fld}' has no assistant message, so nothing to learn")
    return msgs


def record_to_messages(obj: Any, fmt: str, where: str) -> list[dict[str, str]]:
    """A chat-format record as [{"role", "content"}] (roles normalised)."""
    if not isinstance(obj, dict):
        raise DataError(f"{where}: a record must be a JSON object, got {type(obj).__name__}")
    if fmt == "alpaca":
        instruction = _req_str(obj, "instruction", where)
        inp = _req_str(obj, "input", where, optional=True)
        output = _req_str(obj, "output", where)
        msgs: list[dict[str, str]] = []
        system = _req_str(obj, "system", where, optional=True)
        if system:
            msgs.append({"role": "system", "content": system})
        history = obj.get("history") or []
        if not isinstance(history, list):
            raise DataError(f"{where}: field 'history' must be a list of [user, assistant] pairs")
        for j, pair in enumerate(history):
            if not (isinstance(pair, list) and len(pair) == 2
                    and all(isinstance(x, str) for x in pair)):
                raise DataError(f"{where}: field 'history[{j}]' must be [user, assistant] strings")
            msgs += [{"role": "user", "content": pair[0]},
                     {"role": "assistant", "content": pair[1]}]
        prompt = f"{instruction}\n\n{inp}" if inp else instruction
        msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        return msgs
    if fmt == "sharegpt":
        conv = obj.get("conversations")
        if not isinstance(conv, list) or not conv:
            raise DataError(f"{where}: field 'conversations' must be a non-empty list")
        msgs = []
        system = _req_str(obj, "system", where, optional=True)
        if system:
            msgs.append({"role": "system", "content": system})
        for j, turn in enumerate(conv):
            fld = f"conversations[{j}]"
            if not isinstance(turn, dict):
                raise DataError(f"{where}: field '{fld}' must be an object with 'from' and 'value'")
            who = turn.get("from")
            if who not in SHAREGPT_ROLES:
                raise DataError(f"{where}: field '{fld}.from' must be one of "
                                f"{', '.join(sorted(SHAREGPT_ROLES))}, got {who!r}")
            msgs.append({"role": SHAREGPT_ROLES[who],
                         "content": _content(turn.get("value"), where, f"{fld}.value")})
        return _need_assistant(msgs, where, "conversations")
    if fmt == "messages":
        raw = obj.get("messages")
        if not isinstance(raw, list) or not raw:
            raise DataError(f"{where}: field 'messages' must be a non-empty list")
        msgs = []
        for j, m in enumerate(raw):
            fld = f"messages[{j}]"
            if not isinstance(m, dict):
                raise DataError(f"{where}: field '{fld}' must be an object with 'role' and "
                                "'content'")
            role = m.get("role")
            if role not in CHAT_ROLES:
                raise DataError(f"{where}: field '{fld}.role' must be one of "
                                f"{', '.join(CHAT_ROLES)}, got {role!r}")
            if "content" not in m:
                raise DataError(f"{where}: field '{fld}.content' is missing")
            msgs.append({"role": role, "content": _content(m["content"], where,
                                                           f"{fld}.content")})
        return _need_assistant(msgs, where, "messages")
    raise DataError(f"dataset.format: {fmt!r} is not a chat format")


# --- tokenization ----------------------------------------------------------------------------


def ensure_chat_template(tokenizer: Any) -> str | None:
    """Install the ChatML fallback when the tokenizer has no template; returns the note."""
    if getattr(tokenizer, "chat_template", None):
        return None
    tokenizer.chat_template = FALLBACK_CHAT_TEMPLATE
    return ("the tokenizer has no chat template; using the ChatML fallback "
            "(<|im_start|>role ... <|im_end|>)")


def _render(tokenizer: Any, msgs: list[dict[str, str]], gen: bool) -> str:
    out = tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    return out if isinstance(out, str) else str(out)


def assistant_spans(tokenizer: Any,
                    msgs: list[dict[str, str]]) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans of the assistant turns.

    A span runs from the end of the generation prompt before the turn to the end of the turn as
    the template renders it (so it includes the end-of-turn marker). Templates that are not
    prefix-stable fall back to the span of the message content.
    """
    full = _render(tokenizer, msgs, gen=False)
    spans: list[tuple[int, int]] = []
    cursor = 0
    for i, m in enumerate(msgs):
        if m["role"] != "assistant":
            continue
        before = _render(tokenizer, msgs[:i], gen=True) if i else ""
        upto = _render(tokenizer, msgs[: i + 1], gen=False)
        if full.startswith(upto) and upto.startswith(before) and len(before) >= cursor:
            start, end = len(before), len(upto)
        else:
            start = full.find(m["content"], cursor)
            if start < 0:
                continue
            end = start + len(m["content"])
        spans.append((start, end))
        cursor = end
    return full, spans


def _label_by_offsets(ids: list[int], offsets: Sequence[tuple[int, int]],
                      spans: list[tuple[int, int]]) -> list[int]:
    labels = []
    for tid, (s, _e) in zip(ids, offsets, strict=True):
        inside = any(a <= s < b for a, b in spans)
        labels.append(tid if inside else IGNORE)
    return labels


def tokenize_chat(tokenizer: Any, msgs: list[dict[str, str]], train_on_prompt: bool) -> Example:
    full, spans = assistant_spans(tokenizer, msgs)
    ids: list[int] = []
    labels: list[int] = []
    if getattr(tokenizer, "is_fast", False):
        enc = tokenizer(full, add_special_tokens=False, return_offsets_mapping=True)
        ids = list(enc["input_ids"])
        labels = list(ids) if train_on_prompt else _label_by_offsets(
            ids, enc["offset_mapping"], spans)
        return Example(ids, labels)
    # Slow tokenizers have no offsets: tokenize segment by segment.
    bounds = sorted({0, len(full), *[x for sp in spans for x in sp]})
    for a, b in itertools.pairwise(bounds):
        seg: list[int] = list(tokenizer(full[a:b], add_special_tokens=False)["input_ids"])
        trained = train_on_prompt or any(s <= a < e for s, e in spans)
        ids += seg
        labels += seg if trained else [IGNORE] * len(seg)
    return Example(ids, labels)


def tokenize_text(tokenizer: Any, text: str) -> Example:
    ids = list(tokenizer(text, add_special_tokens=True)["input_ids"])
    eos = tokenizer.eos_token_id
    if eos is not None and (not ids or ids[-1] != eos):
        ids.append(eos)
    return Example(ids, list(ids))


def truncate(ex: Example, cutoff_len: int) -> tuple[Example, bool]:
    if len(ex) <= cutoff_len:
        return ex, False
    return Example(ex.input_ids[:cutoff_len], ex.labels[:cutoff_len]), True


def pack(examples: list[Example], cutoff_len: int) -> list[Example]:
    """Greedy in-order packing of whole examples into rows of at most ``cutoff_len`` tokens."""
    rows: list[Example] = []
    ids: list[int] = []
    labels: list[int] = []
    pos: list[int] = []
    for ex in examples:
        if ids and len(ids) + len(ex) > cutoff_len:
            rows.append(Example(ids, labels, pos))
            ids, labels, pos = [], [], []
        ids += ex.input_ids
        labels += [IGNORE, *ex.labels[1:]]
        pos += list(range(len(ex)))
    if ids:
        rows.append(Example(ids, labels, pos))
    return rows


def split_indices(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Deterministic (train, eval) index split; eval gets >= 1 record when fraction > 0."""
    idx = list(range(n))
    if fraction <= 0 or n < 2:
        return idx, []
    rng = random.Random(seed)
    rng.shuffle(idx)
    n_eval = min(n - 1, max(1, round(n * fraction)))
    return sorted(idx[n_eval:]), sorted(idx[:n_eval])


def tokenize_records(records: list[tuple[int, Any]], path: str, fmt: str, tokenizer: Any,
                     cutoff_len: int, train_on_prompt: bool,
                     stats: DataStats) -> list[Example]:
    out = []
    for line, obj in records:
        where = f"{path}:{line}"
        if fmt == "text":
            if not isinstance(obj, dict):
                raise DataError(f"{where}: a record must be a JSON object, got "
                                f"{type(obj).__name__}")
            text = _req_str(obj, "text", where)
            if not text.strip():
                raise DataError(f"{where}: field 'text' is empty")
            ex = tokenize_text(tokenizer, text)
        else:
            msgs = record_to_messages(obj, fmt, where)
            try:
                ex = tokenize_chat(tokenizer, msgs, train_on_prompt)
            except DataError:
                raise
            except Exception as e:  # the template raised (e.g. roles must alternate)
                raise DataError(f"{where}: the chat template rejected this conversation: {e}") \
                    from None
        ex, cut = truncate(ex, cutoff_len)
        stats.truncated += int(cut)
        if all(lab == IGNORE for lab in ex.labels[1:]):
            stats.dropped_no_labels += 1
            continue
        out.append(ex)
    return out


def build_examples(path: str, fmt: str, tokenizer: Any, cutoff_len: int, train_on_prompt: bool,
                   validation_split: float, packing: bool,
                   seed: int) -> tuple[list[Example], list[Example], DataStats]:
    """Read, validate, tokenize, split and (optionally) pack. Raises DataError."""
    stats = DataStats()
    if fmt != "text":
        note = ensure_chat_template(tokenizer)
        if note:
            stats.notes.append(note)
    records = read_records(path)
    stats.records = len(records)
    if not records:
        raise DataError(f"{path}: the dataset has no records")
    train_idx, eval_idx = split_indices(len(records), validation_split, seed)
    train = tokenize_records([records[i] for i in train_idx], path, fmt, tokenizer, cutoff_len,
                             train_on_prompt, stats)
    evals = tokenize_records([records[i] for i in eval_idx], path, fmt, tokenizer, cutoff_len,
                             train_on_prompt, stats)
    if stats.dropped_no_labels:
        stats.notes.append(
            f"dropped {stats.dropped_no_labels} of {stats.records} records with no trainable "
            f"token after truncation to dataset.cutoffLen={cutoff_len}")
    if not train:
        raise DataError(f"{path}: no record has a trainable token within dataset.cutoffLen="
                        f"{cutoff_len}; raise cutoffLen or shorten the prompts")
    if packing:
        train, evals = pack(train, cutoff_len), pack(evals, cutoff_len)
    stats.train_examples, stats.eval_examples = len(train), len(evals)
    stats.train_tokens = sum(len(e) for e in train)
    return train, evals, stats


# --- torch glue ------------------------------------------------------------------------------


class ExampleDataset(torch.utils.data.Dataset[dict[str, list[int]]]):
    def __init__(self, examples: list[Example]) -> None:
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
