"""The data pipeline at scale: streamed reading (chunk boundaries, line numbers), parquet, the
tokenized cache (reuse, keys, local rank 0 builds while the others wait, errors shared) and
SIGTERM during tokenization or the wait (real signals to real processes)."""

from __future__ import annotations

import json
import logging
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_trainer import data_formats
from finetune_trainer.data import DataError, build_examples, read_records
from tests.builders.trainer import DATA, ROOT, trainer_env

from .helpers import wait_until

pytestmark = pytest.mark.trainer

ALPACA = [{"instruction": f"Say {i} in words.", "input": "x" * (i % 7),
           "output": f"The number {i}" + " and more" * (i % 5)} for i in range(60)]


def as_tuples(train: Any) -> list[tuple[list[int], list[int], Any]]:
    return [(e.input_ids, e.labels, e.position_ids) for e in train]


def test_json_array_streams_across_chunk_boundaries(tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Tiny chunks: records, numbers and literals cut anywhere still parse, lines are right."""
    monkeypatch.setattr(data_formats, "CHUNK", 7)
    recs: list[Any] = [*ALPACA[:20], {"text": "é ü 中文 " * 30}, 12345, True, None]
    f = tmp_path / "d.json"
    f.write_text("[\n" + ",\n".join(json.dumps(r, indent=1 if i % 3 else None, ensure_ascii=False)
                                    for i, r in enumerate(recs)) + "\n]\n", encoding="utf-8")
    got = read_records(f)
    assert [v for _, v in got] == recs
    text = f.read_text(encoding="utf-8")
    for line, value in got:  # each record starts on the line reported
        assert text.splitlines()[line - 1].lstrip(", ").startswith(
            json.dumps(value, ensure_ascii=False)[:1])
    assert len({line for line, _ in got}) == len(recs)


def test_json_array_error_names_the_line_deep_in_the_file(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(data_formats, "CHUNK", 64)
    lines = ["["] + [json.dumps(r) + "," for r in ALPACA[:40]] + ['{"instruction": "q",,}', "]"]
    f = tmp_path / "d.json"
    f.write_text("\n".join(lines))
    with pytest.raises(DataError, match=r"d.json:42: not valid JSON"):
        read_records(f)
    f.write_text("\n".join(lines[:30]))
    with pytest.raises(DataError, match=r"d.json:\d+: (unterminated JSON array|not valid JSON)"):
        read_records(f)


def test_invalid_utf8_names_the_byte(tmp_path: Path) -> None:
    f = tmp_path / "d.jsonl"
    f.write_bytes(b'{"text": "a"}\n{"text": "\xff"}\n')
    with pytest.raises(DataError, match=r"not UTF-8 text .* at byte 24"):
        read_records(f)


def test_parquet_gives_the_same_examples_as_jsonl(tiny_tokenizer: Any, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [json.loads(line) for line in (DATA / "messages.jsonl").read_text().splitlines()
            if line.strip()]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet")
    a = build_examples(str(DATA / "messages.jsonl"), "messages", tiny_tokenizer, 128, False, 0.1,
                       False, 7)
    b = build_examples(str(tmp_path / "m.parquet"), "messages", tiny_tokenizer, 128, False, 0.1,
                       False, 7)
    assert as_tuples(a[0]) == as_tuples(b[0]) and as_tuples(a[1]) == as_tuples(b[1])
    bad = [{"instruction": "q", "output": "a"}] * 3 + [{"instruction": "q", "output": None}]
    pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
    with pytest.raises(DataError, match=r"bad.parquet:row 4: field 'output' is missing"):
        build_examples(str(tmp_path / "bad.parquet"), "alpaca", tiny_tokenizer, 64, False, 0.0,
                       False, 1)


def test_cache_is_reused_and_keyed_by_data_and_settings(tiny_tokenizer: Any, tmp_path: Path,
                                                        caplog: pytest.LogCaptureFixture) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    cache = tmp_path / "cache"
    caplog.set_level(logging.INFO, logger="finetune_trainer.data_cache")
    ref = build_examples(str(f), "alpaca", tiny_tokenizer, 64, False, 0.1, True, 7)
    first = build_examples(str(f), "alpaca", tiny_tokenizer, 64, False, 0.1, True, 7,
                           cache_dir=cache)
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1 and "tokenized 60 records" in caplog.text
    caplog.clear()
    again = build_examples(str(f), "alpaca", tiny_tokenizer, 64, False, 0.1, True, 7,
                           cache_dir=cache)
    assert "using the tokenized cache" in caplog.text and "tokenized 60" not in caplog.text
    for run in (first, again):
        assert as_tuples(run[0]) == as_tuples(ref[0]) and as_tuples(run[1]) == as_tuples(ref[1])
        assert run[2].train_tokens == ref[2].train_tokens
    # the split and packing are not in the key; cutoff and data content are
    build_examples(str(f), "alpaca", tiny_tokenizer, 64, False, 0.3, False, 1, cache_dir=cache)
    assert [p.name for p in cache.iterdir() if p.is_dir()] == [entries[0].name]
    build_examples(str(f), "alpaca", tiny_tokenizer, 32, False, 0.1, False, 7, cache_dir=cache)
    second = [p for p in cache.iterdir() if p.is_dir()]
    assert len(second) == 1 and second[0].name != entries[0].name, "stale entry pruned"
    f.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:-1]))
    _, _, stats = build_examples(str(f), "alpaca", tiny_tokenizer, 32, False, 0.1, False, 7,
                                 cache_dir=cache)
    assert stats.records == 59


RANK_SCRIPT = """
import json, logging, sys
logging.basicConfig(level=logging.INFO)
from transformers import AutoTokenizer
from finetune_trainer.stop import StopFlag
from finetune_trainer.data import DataError, DataStopped, build_examples
flag = StopFlag()
flag.install()
tok = AutoTokenizer.from_pretrained(sys.argv[1])
print("ready", flush=True)
try:
    train, evals, stats = build_examples(sys.argv[2], "alpaca", tok, 64, False, 0.1, False, 7,
                                         cache_dir=sys.argv[3], stop=flag)
except DataStopped as e:
    print("stopped:", e, flush=True)
    sys.exit(0)
except DataError as e:
    print("error:", e, flush=True)
    sys.exit(2)
print(json.dumps({"train": [e.input_ids for e in train], "tokens": stats.train_tokens}))
"""


def start_rank(tmp: Path, model: Path, data: Path, cache: Path, rank: int,
               name: str) -> tuple[subprocess.Popen[bytes], Path]:
    log = tmp / f"{name}.log"
    proc = subprocess.Popen([sys.executable, "-c", RANK_SCRIPT, str(model), str(data),
                             str(cache)], cwd=ROOT, stdout=log.open("wb"),
                            stderr=subprocess.STDOUT, env=trainer_env({"LOCAL_RANK": str(rank)}))
    return proc, log


def test_local_rank_0_tokenizes_while_the_others_wait(tiny_model: Path, tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ALPACA))
    cache = tmp_path / "cache"
    waiter, wlog = start_rank(tmp_path, tiny_model, f, cache, 1, "rank1")
    wait_until("rank 1 waits", lambda: "waiting for local rank 0" in wlog.read_text(),
               waiter, wlog)
    writer, log0 = start_rank(tmp_path, tiny_model, f, cache, 0, "rank0")
    assert writer.wait(120) == 0, log0.read_text()
    assert waiter.wait(120) == 0, wlog.read_text()
    out0 = json.loads(log0.read_text().splitlines()[-1])
    out1 = json.loads(wlog.read_text().splitlines()[-1])
    assert out0 == out1 and out0["tokens"] > 0
    assert "tokenized 60 records" in log0.read_text()
    assert "tokenized 60 records" not in wlog.read_text()


def test_waiting_ranks_fail_with_rank_0s_data_error(tiny_model: Path, tmp_path: Path) -> None:
    f = tmp_path / "a.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in ALPACA[:5]) + '{"instruction": "q"}\n')
    cache = tmp_path / "cache"
    waiter, wlog = start_rank(tmp_path, tiny_model, f, cache, 1, "rank1")
    wait_until("rank 1 waits", lambda: "waiting for local rank 0" in wlog.read_text(),
               waiter, wlog)
    writer, log0 = start_rank(tmp_path, tiny_model, f, cache, 0, "rank0")
    assert writer.wait(120) == 2 and waiter.wait(120) == 2
    for log in (log0, wlog):
        assert f"error: {f}:6: field 'output' is missing" in log.read_text()


@pytest.mark.parametrize("rank", [0, 1])
def test_sigterm_during_tokenization_or_the_wait_stops_cleanly(tiny_model: Path, tmp_path: Path,
                                                               rank: int) -> None:
    """rank 0: SIGTERM while it tokenizes; rank 1: while it waits for a rank 0 that never
    comes. Both raise DataStopped (the trainer exits 0, Preempted) and leave no cache entry."""
    f = tmp_path / "a.jsonl"
    with f.open("w") as out:
        for i in range(200_000 if rank == 0 else 10):
            out.write(json.dumps(ALPACA[i % len(ALPACA)]) + "\n")
    cache = tmp_path / "cache"
    proc, log = start_rank(tmp_path, tiny_model, f, cache, rank, f"rank{rank}")
    if rank == 0:
        wait_until("tokenization started",
                   lambda: cache.exists() and any(p.name.startswith(".tmp-")
                                                  for p in cache.iterdir()), proc, log)
    else:
        wait_until("rank 1 waits", lambda: "waiting for local rank 0" in log.read_text(),
                   proc, log)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(60) == 0, log.read_text()
    assert "stopped:" in log.read_text()
    assert not cache.exists() or not list(cache.iterdir()), "no partial entry left"
