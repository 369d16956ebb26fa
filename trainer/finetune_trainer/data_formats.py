"""Dataset files -> records (streamed, linear time) and records -> conversations.

Files: ``.jsonl`` (one record a line), ``.json`` (one array of records) and ``.parquet`` (one
record a row). Readers stream: memory holds one read chunk (JSON), one line (JSONL) or one row
group batch (parquet), never the whole file, and each record comes with its line number (row
number for parquet) for error messages. The ``datasets`` library is not used for reading: it
loads a JSON array whole into memory, its Arrow schema inference rejects valid files whose
records differ in shape (``content`` a string in one message and a list of parts in another)
and it loses the line numbers that ``DataError`` messages promise.
"""

from __future__ import annotations

import codecs
import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from finetune_trainer.config import ConfigError

CHAT_ROLES = ("system", "user", "assistant", "tool")
SHAREGPT_ROLES = {
    "system": "system", "human": "user", "user": "user", "gpt": "assistant",
    "assistant": "assistant", "model": "assistant", "chatgpt": "assistant", "bard": "assistant",
    "observation": "tool", "tool": "tool",
}
DATA_SUFFIXES = (".json", ".jsonl", ".parquet")
CHUNK = 1 << 20


class DatasetUnavailable(RuntimeError):
    """The dataset file cannot be read (yet): a retryable failure (exit code 1)."""


class DataError(ConfigError):
    """A malformed dataset (exit code 2); the message names file, line and field."""


class DataStopped(Exception):
    """SIGTERM arrived while the dataset was being read or tokenized (exit 0, Preempted)."""


# --- reading -------------------------------------------------------------------------------


def where(path: str | Path, n: int) -> str:
    """How a record is named in messages: ``file:line`` (``file:row N`` for parquet)."""
    return f"{path}:row {n}" if str(path).endswith(".parquet") else f"{path}:{n}"


def _open(p: Path) -> IO[bytes]:
    try:
        return p.open("rb")
    except OSError as e:
        # not a DataError (exit 2, never retried): the volume may be filled later, so the
        # operator retries this failure up to backoffLimit
        raise DatasetUnavailable(f"{p}: cannot read the dataset ({e.strerror}); check "
                                 "dataset.source and that the data is on the volume") from None


def _not_utf8(p: Path, e: UnicodeDecodeError, base: int) -> DataError:
    return DataError(f"{p}: not UTF-8 text ({e.reason} at byte {base + e.start})")


def iter_records(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) for each record, streamed; raises DataError naming the line."""
    p = Path(path)
    if p.suffix == ".parquet":
        yield from _iter_parquet(p)
        return
    with _open(p) as f:
        head = f.read(4096)
        f.seek(0)
        first = head.lstrip()[:1]
        if p.suffix == ".json" or (p.suffix != ".jsonl" and first == b"["):
            yield from _iter_json_array(p, f)
        else:
            yield from _iter_jsonl(p, f)


def read_records(path: str | Path) -> list[tuple[int, Any]]:
    """All records of a file as a list (small files and tests; training streams)."""
    return list(iter_records(path))


def _iter_jsonl(p: Path, f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    offset = 0
    for n, raw in enumerate(f, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as e:
            raise _not_utf8(p, e, offset) from None
        offset += len(raw)
        if not line.strip():
            continue
        try:
            yield n, json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno}); "
                            "each line of a JSONL file must be one JSON object") from None


def _iter_json_array(p: Path, f: IO[bytes]) -> Iterator[tuple[int, Any]]:
    """Incremental ``[v, v, ...]`` decoding: one chunk in memory, line numbers counted once."""
    dec = json.JSONDecoder()
    utf8 = codecs.getincrementaldecoder("utf-8")()
    state = {"bytes": 0, "eof": False, "want": CHUNK}
    buf, pos = "", 0
    line_at, line_pos = 1, 0  # line number at buf[line_pos]

    def read_more() -> None:
        nonlocal buf, pos, line_at, line_pos
        raw = f.read(state["want"])
        try:
            text = utf8.decode(raw, final=not raw)
        except UnicodeDecodeError as e:
            raise _not_utf8(p, e, state["bytes"]) from None
        state["bytes"] += len(raw)
        state["eof"] = not raw
        line_at += buf.count("\n", line_pos, pos)
        buf, pos, line_pos = buf[pos:] + text, 0, 0

    def line_of(i: int) -> int:
        nonlocal line_at, line_pos
        line_at += buf.count("\n", line_pos, i)
        line_pos = i
        return line_at

    def skip(chars: str) -> bool:
        """Advance past ``chars``; False at the end of the file."""
        nonlocal pos
        while True:
            while pos < len(buf) and buf[pos] in chars:
                pos += 1
            if pos < len(buf):
                return True
            if state["eof"]:
                return False
            read_more()

    if not skip(" \t\r\n\ufeff") or buf[pos] != "[":
        raise DataError(f"{p}:1: a .json dataset must be an array of records")
    pos += 1
    while True:
        if not skip(" \t\r\n,"):
            raise DataError(f"{p}:{line_of(len(buf))}: unterminated JSON array")
        if buf[pos] == "]":
            return
        try:
            value, end = dec.raw_decode(buf, pos)
            if end == len(buf) and not state["eof"]:  # a number or literal may go on
                raise json.JSONDecodeError("cut", buf, end)
        except json.JSONDecodeError as e:
            if not state["eof"]:
                state["want"] = max(CHUNK, 2 * len(buf))  # a record bigger than a chunk
                read_more()
                continue
            line = line_of(pos) + buf.count("\n", pos, e.pos)
            raise DataError(f"{p}:{line}: not valid JSON ({e.msg} at column {e.colno})") \
                from None
        state["want"] = CHUNK
        yield line_of(pos), value
        pos = end


def _iter_parquet(p: Path) -> Iterator[tuple[int, Any]]:
    try:
        import pyarrow.parquet as pq
    except ImportError:  # pragma: no cover - pyarrow is a trainer dependency
        raise ConfigError(f"{p}: reading parquet needs pyarrow (pip install "
                          "'finetune-operator[trainer]')") from None
    _open(p).close()
    try:
        pf = pq.ParquetFile(p)
    except Exception as e:  # pyarrow raises ArrowInvalid and friends
        raise DataError(f"{p}: not a readable parquet file ({e})") from None
    n = 0
    for batch in pf.iter_batches(batch_size=1024):
        for row in batch.to_pylist():
            n += 1
            yield n, row


def hash_file(path: str | Path, stop: Callable[[], bool] = lambda: False) -> str:
    """Content hash (sha256) of a dataset file, streamed."""
    import hashlib

    h = hashlib.sha256()
    with _open(Path(path)) as f:
        while chunk := f.read(CHUNK * 4):
            h.update(chunk)
            if stop():
                raise DataStopped("stopped while hashing the dataset")
    return h.hexdigest()


def pick_split_file(files: list[Path], split: str, repo: str) -> Path:
    """The one .json/.jsonl/.parquet file of a hub dataset repo that holds ``split``."""
    data = sorted(f for f in files if f.suffix in DATA_SUFFIXES)
    named = [f for f in data if f.stem == split or f.stem.startswith(f"{split}-")
             or f.parent.name == split]
    if len(named) == 1:
        return named[0]
    if not named and len(data) == 1:
        return data[0]
    listing = ", ".join(f.name for f in data) or "none"
    raise DataError(
        f"spec.dataset.source.hub.split: cannot pick one .json/.jsonl/.parquet file for split "
        f"{split!r} in {repo} (files: {listing}); publish the split as one file named "
        f"{split}.jsonl or {split}.parquet"
    )


# --- record -> conversation ------------------------------------------------------------------


def req_str(obj: dict[str, Any], key: str, at: str, optional: bool = False) -> str:
    if key not in obj or obj[key] is None:
        if optional:
            return ""
        raise DataError(f"{at}: field '{key}' is missing")
    v = obj[key]
    if not isinstance(v, str):
        raise DataError(f"{at}: field '{key}' must be a string, got {type(v).__name__}")
    return v


def _content(v: Any, at: str, fld: str) -> str:
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        parts = []
        for j, part in enumerate(v):
            if not (isinstance(part, dict) and part.get("type") == "text"
                    and isinstance(part.get("text"), str)):
                raise DataError(f"{at}: field '{fld}[{j}]' must be "
                                "{\"type\": \"text\", \"text\": str} (only text is supported)")
            parts.append(part["text"])
        return "".join(parts)
    raise DataError(f"{at}: field '{fld}' must be a string or a list of text parts, "
                    f"got {type(v).__name__}")


def _need_assistant(msgs: list[dict[str, str]], at: str, fld: str) -> list[dict[str, str]]:
    if not any(m["role"] == "assistant" for m in msgs):
        raise DataError(f"{at}: field '{fld}' has no assistant message, so nothing to learn")
    return msgs


def _alpaca(obj: dict[str, Any], at: str) -> list[dict[str, str]]:
    instruction = req_str(obj, "instruction", at)
    inp = req_str(obj, "input", at, optional=True)
    output = req_str(obj, "output", at)
    msgs: list[dict[str, str]] = []
    system = req_str(obj, "system", at, optional=True)
    if system:
        msgs.append({"role": "system", "content": system})
    history = obj.get("history") or []
    if not isinstance(history, list):
        raise DataError(f"{at}: field 'history' must be a list of [user, assistant] pairs")
    for j, pair in enumerate(history):
        if not (isinstance(pair, list) and len(pair) == 2
                and all(isinstance(x, str) for x in pair)):
            raise DataError(f"{at}: field 'history[{j}]' must be [user, assistant] strings")
        msgs += [{"role": "user", "content": pair[0]},
                 {"role": "assistant", "content": pair[1]}]
    prompt = f"{instruction}\n\n{inp}" if inp else instruction
    msgs += [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
    return msgs


def _sharegpt(obj: dict[str, Any], at: str) -> list[dict[str, str]]:
    conv = obj.get("conversations")
    if not isinstance(conv, list) or not conv:
        raise DataError(f"{at}: field 'conversations' must be a non-empty list")
    msgs = []
    system = req_str(obj, "system", at, optional=True)
    if system:
        msgs.append({"role": "system", "content": system})
    for j, turn in enumerate(conv):
        fld = f"conversations[{j}]"
        if not isinstance(turn, dict):
            raise DataError(f"{at}: field '{fld}' must be an object with 'from' and 'value'")
        who = turn.get("from")
        if who not in SHAREGPT_ROLES:
            raise DataError(f"{at}: field '{fld}.from' must be one of "
                            f"{', '.join(sorted(SHAREGPT_ROLES))}, got {who!r}")
        msgs.append({"role": SHAREGPT_ROLES[who],
                     "content": _content(turn.get("value"), at, f"{fld}.value")})
    return _need_assistant(msgs, at, "conversations")


def _messages(obj: dict[str, Any], at: str) -> list[dict[str, str]]:
    raw = obj.get("messages")
    if not isinstance(raw, list) or not raw:
        raise DataError(f"{at}: field 'messages' must be a non-empty list")
    msgs = []
    for j, m in enumerate(raw):
        fld = f"messages[{j}]"
        if not isinstance(m, dict):
            raise DataError(f"{at}: field '{fld}' must be an object with 'role' and 'content'")
        role = m.get("role")
        if role not in CHAT_ROLES:
            raise DataError(f"{at}: field '{fld}.role' must be one of "
                            f"{', '.join(CHAT_ROLES)}, got {role!r}")
        if "content" not in m:
            raise DataError(f"{at}: field '{fld}.content' is missing")
        msgs.append({"role": role, "content": _content(m["content"], at, f"{fld}.content")})
    return _need_assistant(msgs, at, "messages")


_CHAT_FORMATS = {"alpaca": _alpaca, "sharegpt": _sharegpt, "messages": _messages}


def record_to_messages(obj: Any, fmt: str, at: str) -> list[dict[str, str]]:
    """A chat-format record as [{"role", "content"}] (roles normalised)."""
    if not isinstance(obj, dict):
        raise DataError(f"{at}: a record must be a JSON object, got {type(obj).__name__}")
    if fmt not in _CHAT_FORMATS:
        raise DataError(f"dataset.format: {fmt!r} is not a chat format")
    return _CHAT_FORMATS[fmt](obj, at)


def record_to_text(obj: Any, at: str) -> str:
    """The ``text`` field of a ``text``-format record."""
    if not isinstance(obj, dict):
        raise DataError(f"{at}: a record must be a JSON object, got {type(obj).__name__}")
    text = req_str(obj, "text", at)
    if not text.strip():
        raise DataError(f"{at}: field 'text' is empty")
    return text
