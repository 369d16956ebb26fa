"""Short full garbage collections for a process that holds thousands of jobs.

At 5,000 jobs the operator holds some 350,000 container objects (parsed jobs, their pods, the
admission cache). CPython's automatic full collection (generation 2) scans every one of them:
measured at 0.3-0.7 s per collection on the 2-core test machine, a pause of the scheduling
cycle that lands on whatever job arrives at that moment. After each full collection the
survivors are frozen (``gc.freeze``: a permanent generation the collector does not scan), so
the next full collection scans only what was made since. Nearly all of the operator's garbage
is freed by reference counting, frozen or not; what the collector alone can free (reference
cycles) is freed as ever while it is young. A frozen object that later falls into a cycle
would stay: every ``rescan_seconds`` the freeze is lifted, so the next full collection scans
everything once (one long pause per period instead of one every few thousand status writes).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable

RESCAN_SECONDS = 900.0


class Heap:
    """Call ``after_cycle`` after each scheduling cycle (the controller's loop does)."""

    def __init__(self, rescan_seconds: float = RESCAN_SECONDS,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.rescan_seconds, self._monotonic = rescan_seconds, monotonic
        self._full = _full_collections()
        self._rescan_at = monotonic() + rescan_seconds
        self.freezes = 0   # full collections whose survivors were frozen
        self.rescans = 0   # freezes lifted

    def after_cycle(self) -> None:
        full = _full_collections()
        if full != self._full:  # a full collection ran: what survived it is long-lived
            self._full = full
            gc.freeze()
            self.freezes += 1
        now = self._monotonic()
        if now >= self._rescan_at:
            self._rescan_at = now + self.rescan_seconds
            gc.unfreeze()
            self.rescans += 1


def _full_collections() -> int:
    return int(gc.get_stats()[2]["collections"])
