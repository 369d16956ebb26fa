"""Tokenized datasets on disk: written once (by local rank 0), memory-mapped by every rank.

An entry ``<cache dir>/<key>/`` holds every record's token ids and labels as flat int32 files,
the record offsets and flags (kept, truncated) as ``.npy`` and ``meta.json``; readers map the
files (``numpy.memmap``), so a rank holds no copy of the tokens in its heap. The key is a hash
of (data file content, tokenizer, chat template, cutoffLen, trainOnPrompt, format, cache
version): a later attempt of the same job finds the entry and skips tokenization; any change
makes a new key. The split and packing are cheap and done on read, so they are not in the key.

Writers build into a private temporary directory and rename it into place (atomic; if two
writers race, the first rename wins). A writer that meets a malformed record leaves
``<key>.error`` with the message for this run, so the waiting ranks fail with the same message.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from finetune_trainer.data_formats import DataError, DataStopped
from finetune_trainer.templates import Example

log = logging.getLogger(__name__)

CACHE_VERSION = 2
POLL_SECONDS = 0.2


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """A hash of what decides the tokens: vocabulary, merges, normalisation, special tokens."""
    h = hashlib.sha256(type(tokenizer).__name__.encode())
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        h.update(backend.to_str().encode())
    else:  # slow tokenizers: the vocabulary in id order
        h.update(json.dumps(sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1]))
                 .encode())
    for attr in ("bos_token", "eos_token", "pad_token", "unk_token", "padding_side"):
        h.update(f"{attr}={getattr(tokenizer, attr, None)}\n".encode())
    h.update(json.dumps(getattr(tokenizer, "init_kwargs", {}).get("add_bos_token")).encode())
    return h.hexdigest()


def cache_key(data_hash: str, tokenizer: Any, template: str | None, cutoff_len: int,
              train_on_prompt: bool, fmt: str) -> str:
    parts = [f"v{CACHE_VERSION}", data_hash, tokenizer_fingerprint(tokenizer),
             hashlib.sha256(str(template).encode()).hexdigest(), str(cutoff_len),
             str(train_on_prompt), fmt]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:32]


@dataclass
class TokenStore:
    """Every record's tokens: ``ids[offsets[i]:offsets[i+1]]``; ``kept[i]`` False = dropped."""

    ids: np.ndarray
    labels: np.ndarray
    offsets: np.ndarray
    kept: np.ndarray
    truncated: np.ndarray
    notes: list[str]

    @property
    def records(self) -> int:
        return len(self.kept)

    def length(self, i: int) -> int:
        return int(self.offsets[i + 1] - self.offsets[i])

    def example(self, i: int) -> Example:
        a, b = int(self.offsets[i]), int(self.offsets[i + 1])
        return Example(self.ids[a:b].tolist(), self.labels[a:b].tolist())


class StoreWriter:
    """Appends examples to the flat files of a new entry."""

    def __init__(self, path: Path) -> None:
        path.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._ids = (path / "ids.i32").open("wb")
        self._labels = (path / "labels.i32").open("wb")
        self._offsets = [0]
        self._kept = bytearray()
        self._truncated = bytearray()

    def add(self, ex: Example | None, truncated: bool) -> None:
        if ex is None:
            self._offsets.append(self._offsets[-1])
        else:
            self._ids.write(np.asarray(ex.input_ids, dtype=np.int32).tobytes())
            self._labels.write(np.asarray(ex.labels, dtype=np.int32).tobytes())
            self._offsets.append(self._offsets[-1] + len(ex.input_ids))
        self._kept.append(ex is not None)
        self._truncated.append(truncated)

    def close(self, notes: list[str]) -> None:
        for f in (self._ids, self._labels):
            f.flush()
            os.fsync(f.fileno())
            f.close()
        np.save(self.path / "offsets.npy", np.asarray(self._offsets, dtype=np.int64))
        np.save(self.path / "kept.npy", np.frombuffer(bytes(self._kept), dtype=np.bool_))
        np.save(self.path / "truncated.npy",
                np.frombuffer(bytes(self._truncated), dtype=np.bool_))
        (self.path / "meta.json").write_text(json.dumps(
            {"version": CACHE_VERSION, "records": len(self._kept), "notes": notes}))

    def abort(self) -> None:
        for f in (self._ids, self._labels):
            f.close()
        shutil.rmtree(self.path, ignore_errors=True)


def _flat(path: Path, in_memory: bool) -> np.ndarray:
    if path.stat().st_size == 0:
        return np.zeros(0, dtype=np.int32)
    if in_memory:
        return np.fromfile(path, dtype=np.int32)
    return np.memmap(path, dtype=np.int32, mode="r")


def open_store(path: Path, in_memory: bool = False) -> TokenStore:
    meta = json.loads((path / "meta.json").read_text())
    return TokenStore(
        ids=_flat(path / "ids.i32", in_memory), labels=_flat(path / "labels.i32", in_memory),
        offsets=np.load(path / "offsets.npy"), kept=np.load(path / "kept.npy"),
        truncated=np.load(path / "truncated.npy"), notes=list(meta.get("notes", [])))


def run_token() -> str:
    """The same on every local rank of one launch, different across attempts."""
    keys = ("FINETUNE_ATTEMPT", "TORCHELASTIC_RUN_ID", "TORCHELASTIC_RESTART_COUNT")
    return "/".join(os.environ.get(k, "") for k in keys) + f"/{os.getppid()}"


def build_store(path: Path, fill: Callable[[StoreWriter], list[str]],
                in_memory: bool = False) -> TokenStore:
    """Build an entry at ``path`` (via a private tmp dir and a rename) and open it."""
    tmp = path.with_name(f".tmp-{path.name}-{socket.gethostname()}-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    writer = StoreWriter(tmp)
    try:
        notes = fill(writer)
        writer.close(notes)
    except BaseException:
        writer.abort()
        raise
    try:
        os.rename(tmp, path)
    except OSError:  # another writer won the race: theirs is the same data
        shutil.rmtree(tmp, ignore_errors=True)
    return open_store(path, in_memory)


def cached_store(root: Path, key: str, fill: Callable[[StoreWriter], list[str]],
                 is_writer: bool, stopped: Callable[[], bool]) -> TokenStore:
    """The entry for ``key``: opened if present; else built (writer) or waited for (others)."""
    path = root / key
    error = root / f"{key}.error"
    if (path / "meta.json").exists():
        log.info("dataset: using the tokenized cache %s", path)
        return open_store(path)
    root.mkdir(parents=True, exist_ok=True)
    if is_writer:
        error.unlink(missing_ok=True)
        t0 = time.monotonic()
        try:
            store = build_store(path, fill)
        except DataError as e:
            error.write_text(json.dumps({"run": run_token(), "message": str(e)}))
            raise
        _prune(root, keep=key)
        log.info("dataset: tokenized %d records in %.1fs into %s", store.records,
                 time.monotonic() - t0, path)
        return store
    log.info("dataset: waiting for local rank 0 to tokenize into %s", path)
    while True:
        if (path / "meta.json").exists():
            return open_store(path)
        try:
            failed = json.loads(error.read_text())
        except (OSError, ValueError):
            failed = None
        if failed and failed.get("run") == run_token():
            raise DataError(failed["message"])
        if stopped():
            raise DataStopped("stopped while waiting for the tokenized dataset")
        time.sleep(POLL_SECONDS)


def _prune(root: Path, keep: str) -> None:
    """Entries of other keys are stale (the data, tokenizer or settings changed)."""
    for p in root.iterdir():
        if p.name != keep and not p.name.startswith(".tmp-") and p.is_dir():
            shutil.rmtree(p, ignore_errors=True)
            log.info("dataset: removed the stale tokenized cache %s", p.name)
