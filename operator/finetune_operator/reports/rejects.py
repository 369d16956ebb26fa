"""Dropped reports: counted in ``finetune_report_rejected_total{reason}`` and logged once per pod.

The label is the reason only (a fixed set, :data:`~.model.REJECT_REASONS`), never a namespace,
job or pod name: a tenant must not be able to grow the metric's cardinality or read another
tenant's names from it. Who sent what goes to the operator's log, once per pod and reason, so a
pod that sends garbage every second does not flood the log either.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from finetune_operator.metrics import REPORT_REJECTED
from finetune_operator.reports.model import BadReport

log = logging.getLogger(__name__)


class Rejections:
    """``reject(who, bad)``: count always; log the first rejection per (who, reason).

    ``who`` is ``namespace/pod`` for an authenticated pod; ``None`` (unauthenticated) is logged
    at most once per ``quiet_seconds`` with the number suppressed in between."""

    def __init__(self, max_remembered: int = 10_000, quiet_seconds: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.max_remembered = max_remembered
        self.quiet_seconds = quiet_seconds
        self.clock = clock
        self._lock = threading.Lock()
        self._logged: set[tuple[str, str]] = set()
        self._anon_last: float | None = None
        self._anon_suppressed = 0

    def reject(self, who: str | None, bad: BadReport) -> None:
        REPORT_REJECTED.labels(bad.reason).inc()
        with self._lock:
            if who is None:
                now = self.clock()
                if self._anon_last is not None and now - self._anon_last < self.quiet_seconds:
                    self._anon_suppressed += 1
                    return
                suppressed, self._anon_last, self._anon_suppressed = (
                    self._anon_suppressed, now, 0)
            else:
                key = (who, bad.reason)
                if key in self._logged:
                    return
                if len(self._logged) >= self.max_remembered:
                    self._logged.clear()
                self._logged.add(key)
        if who is None:
            more = f" ({suppressed} more since the last such line)" if suppressed else ""
            log.warning("report channel: dropped a report from an unauthenticated client: "
                        "%s%s; a trainer needs its projected token (audience in the "
                        "operator's settings)", bad.detail, more)
        else:
            log.warning("report channel: dropped a report from pod %s: %s (%s); further "
                        "rejections of this pod for this reason are only counted "
                        "(finetune_report_rejected_total)", who, bad.reason, bad.detail)

    def forget(self, who: str) -> None:
        """Log this pod's next rejection again (e.g. when its job is gone)."""
        with self._lock:
            self._logged = {k for k in self._logged if k[0] != who}
