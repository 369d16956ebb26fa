"""Sealing beside training: a checkpoint is sealed (fsync, marker, rename, retention) on a thread,
one at a time in step order; its errors reach the training thread."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from finetune_trainer import checkpoint as ck
from finetune_trainer.sealing import Sealer

pytestmark = pytest.mark.unit

UID = "uid-1"


def written(root: Path, step: int) -> Path:
    """A checkpoint written but not sealed yet (what the training thread hands over)."""
    tmp = ck.tmp_dir_for(root, step, "a1")
    tmp.mkdir(parents=True)
    (tmp / "adapter_model.safetensors").write_bytes(b"w" * step)
    (tmp / "optimizer.pt").write_bytes(b"opt")
    return tmp


def test_seals_in_step_order_on_another_thread_with_retention(tmp_path: Path) -> None:
    seen: list[tuple[int, str]] = []
    sealer = Sealer(tmp_path, UID, keep=2,
                    on_sealed=lambda info: seen.append(
                        (info.step, threading.current_thread().name)))
    for step in (10, 20, 30):
        sealer.submit(written(tmp_path, step), ck.final_dir_for(tmp_path, step), step,
                      "2026-11-29T10:00:00Z", 0.0)
    newest = sealer.wait()
    assert newest is not None and newest.step == 30
    assert [s for s, _ in seen] == [10, 20, 30]
    assert all(name != threading.current_thread().name for _, name in seen)
    # sealed as the contract says: marker with every file, renamed into place, keep=2
    assert [c.step for c in ck.complete_checkpoints(tmp_path, UID)] == [20, 30]
    assert not list(tmp_path.glob(ck.TMP_PREFIX + "*"))
    assert ck.read_marker(ck.final_dir_for(tmp_path, 30))["files"] == {  # type: ignore[index]
        "adapter_model.safetensors": 30, "optimizer.pt": 3}


def test_a_failed_seal_is_raised_in_the_training_thread_once(tmp_path: Path) -> None:
    seen: list[int] = []
    sealer = Sealer(tmp_path, UID, keep=2, on_sealed=lambda info: seen.append(info.step))
    missing = ck.tmp_dir_for(tmp_path, 10, "a1")  # never written: the marker cannot be
    sealer.submit(missing, ck.final_dir_for(tmp_path, 10), 10, "2026-11-29T10:00:00Z", 0.0)
    with pytest.raises(OSError):
        sealer.wait()
    assert seen == [] and ck.newest_complete(tmp_path, UID) is None
    assert sealer.wait() is None  # reported once; the sealer works on
    sealer.submit(written(tmp_path, 20), ck.final_dir_for(tmp_path, 20), 20, "t", 0.0)
    info = sealer.wait()
    assert info is not None and info.step == 20 and seen == [20]


def test_submit_waits_for_the_seal_in_flight(tmp_path: Path) -> None:
    order: list[str] = []
    gate = threading.Event()

    def on_sealed(info: ck.CheckpointInfo) -> None:
        if info.step == 10:
            gate.wait(10)  # the first seal is still running when the second is submitted
        order.append(f"sealed {info.step}")

    sealer = Sealer(tmp_path, UID, keep=5, on_sealed=on_sealed)
    sealer.submit(written(tmp_path, 10), ck.final_dir_for(tmp_path, 10), 10, "t", 0.0)
    threading.Timer(0.2, lambda: (order.append("released"), gate.set())).start()
    sealer.submit(written(tmp_path, 20), ck.final_dir_for(tmp_path, 20), 20, "t", 0.0)
    order.append("submitted 20")
    sealer.wait()
    assert order == ["released", "sealed 10", "submitted 20", "sealed 20"]
