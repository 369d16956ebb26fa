"""Pure: which status changes are worth an API write, and the merge patch that makes them.

A status is written at once when something a user acts on changed (phase, conditions other
than the waiting message, counters, output). Two kinds of change are coalesced instead:
progress mirroring (``progress``, ``checkpoint``: at most one write per job per
``progress_write_interval_seconds``, newest report wins) and the waiting job's queue text
(``queue`` and the Admitted=False message: at most one per ``queue_status_interval_seconds``).
"""

from __future__ import annotations

from enum import IntEnum
from typing import Any

# lostSteps/progressAttempt change once per attempt (a resume): written at once, so the lost
# work counted from them is counted once
PROGRESS_KEYS = ("progress", "checkpoint")
QUEUE_KEYS = ("queue",)


class Change(IntEnum):
    NONE = 0
    PROGRESS = 1
    QUEUE = 2
    MATERIAL = 3


def _without(status: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    out = {k: v for k, v in status.items() if k not in keys}
    conds = []
    for c in out.get("conditions") or []:
        if c.get("type") == "Admitted" and c.get("status") == "False" and "queue" in keys:
            c = {k: v for k, v in c.items() if k not in ("message", "lastTransitionTime")}
        conds.append(c)
    if conds:
        out["conditions"] = conds
    return out


def classify(old: dict[str, Any], new: dict[str, Any]) -> Change:
    """The strongest kind of change from ``old`` to ``new`` (wire-format statuses)."""
    if old == new:
        return Change.NONE
    both = PROGRESS_KEYS + QUEUE_KEYS
    if _without(old, both) != _without(new, both):
        return Change.MATERIAL
    if _without(old, PROGRESS_KEYS) != _without(new, PROGRESS_KEYS):
        return Change.QUEUE
    return Change.PROGRESS


def merge_patch(old: Any, new: Any) -> Any:
    """RFC 7386 merge patch turning ``old`` into ``new``: removed keys become explicit nulls at
    every depth, so a previous attempt's nested fields (progress.loss, etaSeconds, ...) cannot
    survive a merge."""
    if not isinstance(old, dict) or not isinstance(new, dict):
        return new
    patch: dict[str, Any] = {}
    for key in old.keys() | new.keys():
        if key not in new:
            patch[key] = None
        elif key not in old:
            patch[key] = new[key]
        elif old[key] != new[key]:
            patch[key] = merge_patch(old[key], new[key])
    return patch
