"""Leadership: the coordination Lease, renewed on its own timer (never per cycle), and fencing.

A leader whose Lease is about to lapse stops writing before another replica can start:
``may_write`` is false from ``FENCE_MARGIN_SECONDS`` before the Lease this replica last renewed
runs out by its own monotonic clock. The :class:`Fence` holding that state is built first and
given to the API client at its construction (``Kube(fence=fence.may_write)``), which checks it
right before every write, and to the :class:`Leadership` that moves it.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_operator.jobs.ports import Clock, JobKube
from finetune_operator.settings import OperatorSettings

log = logging.getLogger("finetune_operator")
LEASE_NAME = "finetune-operator-leader"
FENCE_MARGIN_SECONDS = 2.0


class Fence:
    """Whether this replica may write now: only while it leads and the Lease it last renewed
    cannot have lapsed. Moved only by :class:`Leadership`; read by everyone who writes."""

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.leader = False
        self.valid_until = 0.0  # monotonic; writes stop FENCE_MARGIN_SECONDS before this

    def may_write(self) -> bool:
        return self.leader and self.clock.monotonic() < self.valid_until - FENCE_MARGIN_SECONDS


class Leadership:
    """The Lease held (or waited for) as ``identity`` in ``namespace``. ``on_change`` is called
    when leadership is acquired or lost (the cycle then looks at every job again); ``fence`` is
    the one the API client checks (a new one when none is given: then only ``may_write``'s
    callers are fenced)."""

    def __init__(self, kube: JobKube, settings: OperatorSettings, clock: Clock, namespace: str,
                 identity: str, on_change: Callable[[bool], None] = lambda held: None,
                 fence: Fence | None = None) -> None:
        self.kube, self.settings, self.clock = kube, settings, clock
        self.namespace, self.identity = namespace, identity
        self.on_change = on_change
        self.fence = fence or Fence(clock)
        self.started_leading: float | None = None  # monotonic

    @property
    def leader(self) -> bool:
        return self.fence.leader

    @leader.setter
    def leader(self, held: bool) -> None:
        self.fence.leader = held

    @property
    def valid_until(self) -> float:
        return self.fence.valid_until

    @valid_until.setter
    def valid_until(self, t: float) -> None:
        self.fence.valid_until = t

    def may_write(self) -> bool:
        """Fencing: only while the Lease we last renewed cannot have lapsed."""
        return self.fence.may_write()

    def grant(self, seconds: float) -> None:
        """Lead for ``seconds`` without a Lease (unit tests: the cycle is driven by hand)."""
        self.leader, self.valid_until = True, self.clock.monotonic() + seconds
        self.started_leading = self.clock.monotonic()

    def renew(self, lease: dict[str, Any] | None) -> dict[str, Any] | None:
        """One acquire-or-renew; returns the Lease as last written/read (for the next one)."""
        s, t = self.settings, self.clock.monotonic()
        # a Lease that lapsed by our own clock (this process was paused, a renewal timed out)
        # is read again before any write: another replica may hold it by now
        known = lease if self.leader and t < self.valid_until else None
        try:
            held, lease = self.kube.hold_lease(self.namespace, LEASE_NAME, self.identity,
                                               s.lease.lease_duration_seconds, self.clock.now(),
                                               known=known)
            if held:
                self.valid_until = t + s.lease.lease_duration_seconds
        except Exception as e:  # timeout, API error: the thread lives on, the Lease decides
            log.warning("leader lease: %s: %s; retrying", type(e).__name__, e)
            # a failed renewal: still ours until the Lease runs out (may_write stops before)
            held, lease = self.leader and self.clock.monotonic() < self.valid_until, None
        if held != self.leader:
            log.warning("%s leadership (%s/%s as %s)", "acquired" if held else "lost",
                        self.namespace, LEASE_NAME, self.identity)
            self.started_leading = self.clock.monotonic() if held else None
            self.leader = held
            self.on_change(held)
        return lease

    def run(self, stop: threading.Event) -> None:
        """The lease thread: renew every ``lease_renew_seconds`` while leading, else try every
        ``lease_retry_seconds``."""
        s, lease = self.settings, None
        while not stop.is_set():
            lease = self.renew(lease)
            stop.wait(s.lease.lease_renew_seconds if self.leader else s.lease.lease_retry_seconds)

    def release(self) -> None:
        """Hand over at once instead of letting the Lease expire (upgrades)."""
        if not self.leader:
            return
        try:
            self.kube.release_lease(self.namespace, LEASE_NAME, self.identity)
            log.warning("released leadership (%s/%s)", self.namespace, LEASE_NAME)
        except (ApiException, OSError) as e:
            log.warning("could not release the leader lease: %s", e)
        self.leader = False
