"""The checkpoint contract: atomic finalize, completeness, newest-complete, retention."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from finetune_trainer import checkpoint as ck
from finetune_trainer.config import ConfigError

pytestmark = pytest.mark.unit

UID = "uid-1"


def make_ckpt(root: Path, step: int, uid: str = UID, payload: bytes = b"weights") -> Path:
    tmp = ck.tmp_dir_for(root, step, "a1")
    tmp.mkdir(parents=True)
    (tmp / "model.safetensors").write_bytes(payload)
    (tmp / "sub").mkdir()
    (tmp / "sub" / "optimizer.pt").write_bytes(b"opt")
    ck.finalize(tmp, ck.final_dir_for(root, step), step, uid, "2026-11-24T12:00:00Z", 0.5)
    return ck.final_dir_for(root, step)


def test_finalize_renames_and_writes_marker(tmp_path: Path) -> None:
    path = make_ckpt(tmp_path, 10)
    assert path.name == "checkpoint-10" and ck.is_complete(path, UID)
    assert not list(tmp_path.glob(".tmp-*"))
    marker = json.loads((path / ck.MARKER).read_text())
    assert marker["step"] == 10 and marker["jobUid"] == UID
    assert marker["files"] == {"model.safetensors": 7, "sub/optimizer.pt": 3}


def test_newest_complete_ignores_partial_and_foreign(tmp_path: Path) -> None:
    make_ckpt(tmp_path, 5)
    make_ckpt(tmp_path, 10)
    # a higher-numbered directory without a marker (HF-style crash during save)
    (tmp_path / "checkpoint-20").mkdir()
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"half")
    # an in-progress temporary sibling
    ck.tmp_dir_for(tmp_path, 15, "a2").mkdir()
    # a complete checkpoint of another job uid (stale run)
    make_ckpt(tmp_path, 30, uid="other")
    # a checkpoint whose file was truncated after the marker was written
    bad = make_ckpt(tmp_path, 25)
    (bad / "model.safetensors").write_bytes(b"w")
    newest = ck.newest_complete(tmp_path, UID)
    assert newest is not None and newest.step == 10
    assert newest.saved_at == "2026-11-24T12:00:00Z"


def test_no_checkpoint_means_fresh_start(tmp_path: Path) -> None:
    assert ck.newest_complete(tmp_path / "missing", UID) is None
    assert ck.newest_complete(tmp_path, UID) is None


def test_clean_partials_removes_tmp_and_incomplete_only(tmp_path: Path) -> None:
    make_ckpt(tmp_path, 5)
    (tmp_path / "checkpoint-20").mkdir()
    ck.tmp_dir_for(tmp_path, 15, "a2").mkdir()
    removed = {p.name for p in ck.clean_partials(tmp_path, UID)}
    assert removed == {"checkpoint-20", ".tmp-checkpoint-15-a2"}
    assert ck.is_complete(tmp_path / "checkpoint-5", UID)


@pytest.mark.parametrize(("steps", "keep", "doomed"), [
    ([], 2, []),
    ([5], 1, []),
    ([5, 10, 15], 2, [5]),
    ([15, 5, 10, 20], 1, [5, 10, 15]),
    ([5, 10], 0, [5]),  # keep is at least 1: the newest complete one always stays
])
def test_plan_retention_never_deletes_newest(steps: list[int], keep: int,
                                             doomed: list[int]) -> None:
    assert ck.plan_retention(steps, keep) == doomed
    if steps:
        assert max(steps) not in ck.plan_retention(steps, keep)


def test_apply_retention_counts_only_complete_checkpoints(tmp_path: Path) -> None:
    for s in (5, 10, 15):
        make_ckpt(tmp_path, s)
    (tmp_path / "checkpoint-20").mkdir()  # partial: not counted, so 15 stays the newest
    assert ck.apply_retention(tmp_path, 1, UID) == [5, 10]
    assert [c.step for c in ck.complete_checkpoints(tmp_path, UID)] == [15]


def test_finalize_replaces_an_incomplete_leftover(tmp_path: Path) -> None:
    (tmp_path / "checkpoint-5").mkdir()
    (tmp_path / "checkpoint-5" / "junk").write_text("x")
    path = make_ckpt(tmp_path, 5)
    assert ck.is_complete(path, UID) and not (path / "junk").exists()


def test_claim_work_dir_refuses_another_uid(tmp_path: Path) -> None:
    ck.claim_work_dir(tmp_path, "team-a", "bot", "uid-1")
    ck.claim_work_dir(tmp_path, "team-a", "bot", "uid-1")  # same job: fine
    with pytest.raises(ConfigError, match=r"paths.workDir: .* belongs to job team-a/bot uid uid-1"):
        ck.claim_work_dir(tmp_path, "team-a", "bot", "uid-2")


def test_report_paths_are_relative_to_work_dir(tmp_path: Path) -> None:
    path = make_ckpt(tmp_path / "checkpoints", 5)
    info = ck.newest_complete(path.parent, UID)
    assert info is not None
    report = info.to_report(tmp_path)
    assert report.pop("saveSeconds") >= 0.5  # the writing, plus the flush of its files
    assert report == {"step": 5, "path": "checkpoints/checkpoint-5",
                      "savedAt": "2026-11-24T12:00:00Z"}
