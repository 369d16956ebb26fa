"""The checkpoint contract on the volume: atomic save, completeness, newest-complete, retention.

Layout under the job's work dir (``docs/contracts.md``)::

    checkpoints/checkpoint-<step>/             complete: holds the marker file COMPLETE
    checkpoints/.tmp-checkpoint-<step>-<tag>/  being written; never read, removed on start

A checkpoint is written into the temporary sibling, every file and the directory are fsynced,
the marker (JSON: step, job uid, file sizes) is written and fsynced last, and the directory is
renamed into place. A crash at any point leaves either the previous state or a complete
checkpoint. Resume reads only directories whose marker parses, names the same step and job uid
and lists files that are all present with their recorded sizes.

Retention keeps the ``keep`` newest complete checkpoints and never deletes the newest one; it
removes the marker before the files, so a half-deleted checkpoint is never taken for complete.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

CHECKPOINTS_DIR = "checkpoints"
PREFIX = "checkpoint-"
TMP_PREFIX = ".tmp-checkpoint-"
MARKER = "COMPLETE"
JOB_FILE = "job.json"
TRAINER_STATE_FILE = "trainer_state.json"  # written by the HF Trainer into every checkpoint
_STEP_RE = re.compile(r"^checkpoint-(\d+)$")


@dataclass(frozen=True)
class CheckpointInfo:
    step: int
    path: Path
    saved_at: str = ""
    save_seconds: float | None = None

    def to_report(self, work_dir: Path) -> dict[str, Any]:
        """The ``checkpoint`` object of the progress/termination contract (path relative)."""
        try:
            rel = str(self.path.relative_to(work_dir))
        except ValueError:
            rel = str(self.path)
        out: dict[str, Any] = {"step": self.step, "path": rel, "savedAt": self.saved_at}
        if self.save_seconds is not None:
            out["saveSeconds"] = round(self.save_seconds, 3)
        return out


def step_of(path: Path) -> int | None:
    m = _STEP_RE.match(path.name)
    return int(m.group(1)) if m else None


def read_marker(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_complete(path: Path, job_uid: str | None = None) -> bool:
    """True when ``path`` is a checkpoint this job can resume from (see module doc)."""
    marker = read_marker(path)
    if marker is None or marker.get("step") != step_of(path):
        return False
    if job_uid is not None and marker.get("jobUid") != job_uid:
        log.warning("ignoring %s: written for job uid %s, not %s", path, marker.get("jobUid"),
                    job_uid)
        return False
    files = marker.get("files")
    if not isinstance(files, dict) or not files:
        return False
    for rel, size in files.items():
        f = path / rel
        try:
            if f.stat().st_size != size:
                return False
        except OSError:
            return False
    return True


def training_finished(path: Path) -> bool:
    """True when the checkpoint is the last step of its run (its trainer state says so)."""
    try:
        state = json.loads((path / TRAINER_STATE_FILE).read_text(encoding="utf-8"))
        return 0 < int(state["max_steps"]) <= int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return False


def list_checkpoint_dirs(root: Path) -> list[tuple[int, Path]]:
    """All ``checkpoint-<step>`` directories (complete or not), oldest first."""
    if not root.is_dir():
        return []
    found = [(s, p) for p in root.iterdir() if p.is_dir() and (s := step_of(p)) is not None]
    return sorted(found)


def complete_checkpoints(root: Path, job_uid: str | None = None) -> list[CheckpointInfo]:
    out = []
    for step, path in list_checkpoint_dirs(root):
        if is_complete(path, job_uid):
            marker = read_marker(path) or {}
            out.append(CheckpointInfo(step, path, str(marker.get("savedAt", "")),
                                      marker.get("saveSeconds")))
    return out


def newest_complete(root: Path, job_uid: str | None = None) -> CheckpointInfo | None:
    """The checkpoint to resume from, or None. Partial and foreign ones are ignored."""
    done = complete_checkpoints(root, job_uid)
    return done[-1] if done else None


def plan_retention(complete_steps: list[int], keep: int) -> list[int]:
    """Steps to delete so that ``keep`` newest complete checkpoints stay (never the newest)."""
    keep = max(1, keep)
    ordered = sorted(set(complete_steps))
    return ordered[:-keep] if len(ordered) > keep else []


def _remove_checkpoint(path: Path) -> None:
    try:
        (path / MARKER).unlink()
        _fsync_dir(path)
    except FileNotFoundError:
        pass
    shutil.rmtree(path, ignore_errors=True)


def apply_retention(root: Path, keep: int, job_uid: str | None = None) -> list[int]:
    """Delete old complete checkpoints per ``plan_retention``; returns the deleted steps."""
    done = complete_checkpoints(root, job_uid)
    doomed = set(plan_retention([c.step for c in done], keep))
    for c in done:
        if c.step in doomed:
            log.info("retention: deleting %s (keep %d)", c.path, keep)
            _remove_checkpoint(c.path)
    return sorted(doomed)


def clean_partials(root: Path, job_uid: str | None = None) -> list[Path]:
    """Remove temporary and incomplete checkpoint directories (left by a crash or a kill)."""
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    for p in sorted(root.iterdir()):
        partial = p.is_dir() and p.name.startswith(TMP_PREFIX)
        incomplete = p.is_dir() and step_of(p) is not None and not is_complete(p, job_uid)
        if partial or incomplete:
            log.warning("removing partial checkpoint %s (never completed)", p)
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def tmp_dir_for(root: Path, step: int, tag: str) -> Path:
    return root / f"{TMP_PREFIX}{step}-{tag}"


def final_dir_for(root: Path, step: int) -> Path:
    return root / f"{PREFIX}{step}"


def _fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some filesystems do not support fsync on directories
        pass
    finally:
        os.close(fd)


def fsync_tree(path: Path) -> dict[str, int]:
    """fsync every file and directory under ``path``; returns {relative file: size}."""
    sizes: dict[str, int] = {}
    for dirpath, _dirs, files in os.walk(path):
        d = Path(dirpath)
        for name in files:
            f = d / name
            _fsync_file(f)
            sizes[str(f.relative_to(path))] = f.stat().st_size
        _fsync_dir(d)
    return sizes


def write_atomic(path: Path, text: str, durable: bool = True) -> None:
    """Write a small file atomically (tmp + rename): readers see the old or the new text, never
    a part. ``durable`` also fsyncs the file and its directory, so the new text survives a
    node crash; without it (a progress file, rewritten every few seconds) a crash may keep the
    old text, and the write costs no disk flush."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        if durable:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def finalize(tmp: Path, final: Path, step: int, job_uid: str, saved_at: str,
             save_seconds: float) -> CheckpointInfo:
    """Seal a fully written temporary checkpoint: fsync, marker, rename into place.

    ``save_seconds`` is the time writing it took; the marker's ``saveSeconds`` adds the flush of
    its files (the bulk of sealing), so it is what a preemption waits for: the grace period is
    computed from it."""
    flushing = time.monotonic()
    sizes = fsync_tree(tmp)
    save_seconds += time.monotonic() - flushing
    marker = {"step": step, "jobUid": job_uid, "savedAt": saved_at,
              "saveSeconds": round(save_seconds, 3), "files": sizes}
    with open(tmp / MARKER, "w", encoding="utf-8") as f:
        json.dump(marker, f, indent=1, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(tmp)
    if final.exists():
        # An incomplete leftover with the same name (a complete one is never re-saved).
        shutil.rmtree(final)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    return CheckpointInfo(step, final, saved_at, save_seconds)


def claim_work_dir(work_dir: Path, namespace: str, name: str, uid: str) -> None:
    """Record the job identity in the work dir; refuse a dir that belongs to another job uid.

    The operator already keys ``workDir`` by uid; this guards against a reused path, so a stale
    run's checkpoints are never resumed into a new job.
    """
    from finetune_trainer.config import ConfigError

    work_dir.mkdir(parents=True, exist_ok=True)
    job_file = work_dir / JOB_FILE
    if job_file.exists():
        try:
            owner = json.loads(job_file.read_text(encoding="utf-8"))
        except ValueError:
            owner = {}
        if owner.get("uid") != uid:
            raise ConfigError(
                f"paths.workDir: {work_dir} belongs to job {owner.get('namespace')}/"
                f"{owner.get('name')} uid {owner.get('uid')}, not uid {uid}; refusing to resume "
                "a stale run - give the job its own workDir (the operator keys it by uid)"
            )
        return
    write_atomic(job_file, json.dumps({"namespace": namespace, "name": name, "uid": uid}))
