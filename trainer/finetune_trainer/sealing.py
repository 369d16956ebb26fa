"""Sealing checkpoints beside training: fsync, marker, rename and retention on a thread.

Writing a checkpoint (weights, optimizer, scheduler, RNG, trainer state) stays in the step loop:
the state must be captured at its step. Sealing it (``checkpoint.finalize``: fsync of every file
and directory, the COMPLETE marker, the rename into place, then retention) is disk flushes only,
so it runs on a thread of its own while the next steps train. Nothing about the contract changes:
a checkpoint counts once its marker and rename are on disk, which is when :attr:`Sealer.sealed`
names it.

One seal at a time, in step order: :meth:`Sealer.submit` first waits for the previous one.
:meth:`Sealer.wait` is called before anything that needs the checkpoint sealed (the next save,
the end of training, a preemption's exit); an error of the thread (disk full) is raised there,
in the training thread, as a failed save always was.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from finetune_trainer import checkpoint as ck

log = logging.getLogger(__name__)


class Sealer:
    def __init__(self, root: Path, job_uid: str, keep: int,
                 on_sealed: Callable[[ck.CheckpointInfo], None]) -> None:
        self.root = root
        self.job_uid = job_uid
        self.keep = keep
        self.on_sealed = on_sealed  # called on the thread once a checkpoint is sealed
        self.sealed: ck.CheckpointInfo | None = None  # the newest sealed by this process
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, tmp: Path, final: Path, step: int, saved_at: str, started: float) -> None:
        """Seal ``tmp`` as ``final`` on the thread; ``started`` (monotonic) is when writing it
        began: the marker's saveSeconds is the time to write it and flush its files."""
        self.wait()
        self._thread = threading.Thread(
            target=self._seal, args=(tmp, final, step, saved_at, started),
            name=f"seal-{step}", daemon=True)
        self._thread.start()

    def wait(self) -> ck.CheckpointInfo | None:
        """Until the seal in flight (if any) is done; the newest sealed checkpoint."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        if self._error is not None:
            err, self._error = self._error, None
            raise err
        return self.sealed

    def _seal(self, tmp: Path, final: Path, step: int, saved_at: str, started: float) -> None:
        try:
            sealed_in = time.monotonic()
            info = ck.finalize(tmp, final, step, self.job_uid, saved_at,
                               time.monotonic() - started)
            deleted = ck.apply_retention(self.root, self.keep, self.job_uid)
            self.sealed = info
            self.on_sealed(info)
            log.info("checkpoint %s saved in %.2fs (sealed in %.2fs beside training)%s",
                     final.name, info.save_seconds or 0.0, time.monotonic() - sealed_in,
                     f"; retention deleted steps {deleted}" if deleted else "")
        except BaseException as e:  # raised in the training thread by wait()
            self._error = e
