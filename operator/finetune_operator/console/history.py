"""The curves' history: what the console has seen of each job's ``status.progress`` on its
watch, kept per job (by uid) and bounded, in memory and in one small JSON Lines file per job
under the console's own state directory (``~/.cache/finetune-console`` for ``kubectl finetune
console``; an ``emptyDir`` in the chart's in-cluster mode).

Why this source (docs/console.md "Where the curves come from"): the operator already writes
every trainer report into ``status.progress`` (step, loss, learning rate, tokens/s) and the
console already watches the jobs, so the history costs no status write, no extra API call and
nothing in the trainer; it does not live in the operator, so an operator restart loses nothing;
a console restart loses nothing either (the file). What it cannot have is what happened while no
console watched: the page says so (the first point's time), and Prometheus is the source that
has it where one is configured.

One line per event, ``{"k": "p", ...}`` a point, ``"c"`` a new checkpoint, ``"x"`` a
preemption; ``cap`` points per job at most: past it, every other point of the older half is
dropped (the curve keeps its shape and its whole span) and the file is rewritten. Thread-safe.
"""

from __future__ import annotations

import json
import os
import re
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_UID = re.compile(r"^[A-Za-z0-9-]{1,64}$")


@dataclass(frozen=True)
class Point:
    step: int
    attempt: int
    loss: float | None = None
    lr: float | None = None
    tps: float | None = None  # tokens per second
    at: str = ""  # status.progress.updatedAt


@dataclass(frozen=True)
class Mark:
    """``kind`` ``checkpoint`` (a checkpoint sealed at ``step``) or ``preemption`` (the job
    was preempted after ``step``)."""

    kind: str
    step: int
    attempt: int
    at: str = ""


@dataclass
class Curve:
    points: list[Point] = field(default_factory=list)
    marks: list[Mark] = field(default_factory=list)
    preemptions: int = 0  # status.preemptions as last seen
    checkpoint: int | None = None  # status.checkpoint.step as last seen
    loaded: bool = False


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) else None


def thin(points: list[Point], cap: int) -> list[Point]:
    """At most ``cap`` points: every other point of the older half dropped until it fits."""
    while len(points) > cap:
        half = len(points) // 2
        points = points[:half:2] + points[half:]
    return points


class History:
    """``directory`` None: memory only (tests of the view)."""

    def __init__(self, directory: Path | None, cap: int = 400, max_jobs: int = 2000) -> None:
        self.directory, self.cap, self.max_jobs = directory, cap, max_jobs
        self._curves: dict[str, Curve] = {}
        self._lock = threading.Lock()
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _file(self, uid: str) -> Path | None:
        if self.directory is None or not _UID.match(uid):
            return None
        return self.directory / f"{uid}.jsonl"

    def _curve(self, uid: str) -> Curve:
        c = self._curves.get(uid)
        if c is None:
            if len(self._curves) >= self.max_jobs:  # forget the oldest seen
                self._curves.pop(next(iter(self._curves)))
            c = self._curves[uid] = Curve()
        if not c.loaded:
            c.loaded = True
            path = self._file(uid)
            if path is not None and path.exists():
                self._load(c, path)
        return c

    @staticmethod
    def _load(c: Curve, path: Path) -> None:
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                d = json.loads(line)
                if d.get("k") == "p":
                    c.points.append(Point(int(d["step"]), int(d["attempt"]), _num(d.get("loss")),
                                          _num(d.get("lr")), _num(d.get("tps")),
                                          str(d.get("at", ""))))
                elif d.get("k") in ("c", "x"):
                    c.marks.append(Mark("checkpoint" if d["k"] == "c" else "preemption",
                                        int(d["step"]), int(d["attempt"]), str(d.get("at", ""))))
                elif d.get("k") == "s":
                    c.preemptions = int(d.get("preemptions", 0))
                    c.checkpoint = d.get("checkpoint")
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn last line after a crash: skipped

    def _append(self, uid: str, records: list[dict[str, Any]]) -> None:
        path = self._file(uid)
        if path is None or not records:
            return
        with path.open("a", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, separators=(",", ":")) + "\n")

    def _rewrite(self, uid: str, c: Curve) -> None:
        path = self._file(uid)
        if path is None:
            return
        tmp = path.with_suffix(".tmp")
        with tmp.open("w", encoding="utf-8") as f:
            for p in c.points:
                f.write(json.dumps(_point_record(p), separators=(",", ":")) + "\n")
            for m in c.marks:
                f.write(json.dumps(_mark_record(m), separators=(",", ":")) + "\n")
            f.write(json.dumps({"k": "s", "preemptions": c.preemptions,
                                "checkpoint": c.checkpoint}) + "\n")
        os.replace(tmp, path)

    def observe(self, job: Mapping[str, Any]) -> bool:
        """Take what ``job``'s status shows that the curve lacks; True when something was."""
        meta, st = job.get("metadata") or {}, job.get("status") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return False
        progress = st.get("progress") or {}
        attempt = int(st.get("progressAttempt") or st.get("attempt") or 0)
        step = progress.get("step")
        with self._lock:
            c = self._curve(uid)
            records: list[dict[str, Any]] = []
            last_step = c.points[-1].step if c.points else 0
            preemptions = int(st.get("preemptions") or 0)
            unseen = not c.points and not c.marks and c.checkpoint is None and not c.preemptions
            if preemptions > c.preemptions and unseen:
                # first sight of a job preempted before: where is unknown, so no mark
                c.preemptions = preemptions
                records.append({"k": "s", "preemptions": preemptions,
                                "checkpoint": c.checkpoint})
            elif preemptions > c.preemptions:
                # where it stopped: the status's step when it has one (the step the trainer
                # reached on the way out), else the last point seen
                at_step = step if isinstance(step, int) and step > 0 else last_step
                m = Mark("preemption", at_step, attempt, str(progress.get("updatedAt", "")))
                c.marks.append(m)
                records += [_mark_record(m), {"k": "s", "preemptions": preemptions,
                                              "checkpoint": c.checkpoint}]
                c.preemptions = preemptions
            ck = (st.get("checkpoint") or {}).get("step")
            if isinstance(ck, int) and ck > 0 and ck != c.checkpoint:
                m = Mark("checkpoint", ck, attempt, str((st.get("checkpoint") or {}).get(
                    "savedAt", "")))
                c.marks.append(m)
                c.checkpoint = ck
                records += [_mark_record(m), {"k": "s", "preemptions": c.preemptions,
                                              "checkpoint": ck}]
            if isinstance(step, int) and step > 0 and _num(progress.get("loss")) is not None:
                p = Point(step, attempt, _num(progress.get("loss")),
                          _num(progress.get("learningRate")), _num(progress.get("tokensPerSecond")),
                          str(progress.get("updatedAt", "")))
                known = {(q.attempt, q.step) for q in c.points[-50:]}
                if (p.attempt, p.step) not in known:
                    c.points.append(p)
                    records.append(_point_record(p))
            if not records:
                return False
            if len(c.points) > self.cap:
                c.points = thin(c.points, self.cap)
                c.marks = c.marks[-self.cap:]
                self._rewrite(uid, c)
            else:
                self._append(uid, records)
            return True

    def curve(self, uid: str) -> Curve:
        """A copy of the job's curve (empty when never seen)."""
        with self._lock:
            c = self._curve(uid)
            return Curve(list(c.points), list(c.marks), c.preemptions, c.checkpoint, True)


def _point_record(p: Point) -> dict[str, Any]:
    out: dict[str, Any] = {"k": "p", "step": p.step, "attempt": p.attempt, "at": p.at}
    for k in ("loss", "lr", "tps"):
        v = getattr(p, k)
        if v is not None:
            out[k] = v
    return out


def _mark_record(m: Mark) -> dict[str, Any]:
    return {"k": "c" if m.kind == "checkpoint" else "x", "step": m.step, "attempt": m.attempt,
            "at": m.at}
