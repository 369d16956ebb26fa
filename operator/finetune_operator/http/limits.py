"""What one client can make the report port spend, bounded: a token bucket per key (each pod's
reports), one budget shared by every API review the port sends (TokenReview and
SubjectAccessReview, whoever asks), and a short, bounded cache of the reviews' answers.

A review is a request to the API server. Without these, every request with a new token (garbage
costs nothing to make) would be one or two API calls: the cache answers a token seen lately
(allowed or refused) without asking again, and when the budget is spent the caller gets 503 with
``Retry-After`` at once instead of a queue, so neither the API server nor the port's threads are
tied up by a flood.

Hand-rolled (a dict, a lock and a clock each) on purpose: the operator's image has no cache or
rate-limit library, and these few lines are simpler to audit than one more dependency.
"""

from __future__ import annotations

import hashlib
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from typing import Generic, TypeVar

V = TypeVar("V")


class RateLimiter:
    """Token bucket per key: ``burst`` requests at once, then ``rate`` per second."""

    def __init__(self, rate: float, burst: float, max_keys: int = 10_000,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.rate, self.burst, self.max_keys, self.clock = rate, burst, max_keys, clock
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}

    def allow(self, key: str, cost: float = 1) -> bool:
        now = self.clock()
        with self._lock:
            tokens, last = self._buckets.get(key, (self.burst, now))
            tokens = min(self.burst, tokens + (now - last) * self.rate)
            if len(self._buckets) >= self.max_keys and key not in self._buckets:
                # full buckets carry no information: forget them first
                self._buckets = {k: v for k, v in self._buckets.items() if v[0] < self.burst}
            if tokens < cost:
                self._buckets[key] = (tokens, now)
                return False
            self._buckets[key] = (tokens - cost, now)
            return True

    def retry_after(self, cost: float = 1) -> int:
        """Whole seconds until an empty bucket holds ``cost`` again (the ``Retry-After``)."""
        return max(1, math.ceil(cost / self.rate))


class BudgetSpent(Exception):
    """The review budget is spent: answer 503 with ``Retry-After: retry_after``."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(f"the operator's budget of API reviews is spent for now; retry in "
                         f"{retry_after} s")
        self.retry_after = retry_after


class ReviewBudget:
    """All TokenReviews and SubjectAccessReviews of the port together: ``burst`` at once, then
    ``rate`` per second. :meth:`spend` raises :class:`BudgetSpent` instead of waiting."""

    def __init__(self, rate: float, burst: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bucket = RateLimiter(rate, burst, max_keys=1, clock=clock)
        self.refused = 0  # reviews not sent (tests and the docs' cost figures)

    def spend(self, cost: int = 1) -> None:
        if not self._bucket.allow("", cost):
            self.refused += 1
            raise BudgetSpent(self._bucket.retry_after(cost))


def digest(*parts: str) -> bytes:
    """The cache key of a token (and what was asked about it): never the token itself."""
    return hashlib.sha256("\0".join(parts).encode()).digest()


class TtlCache(Generic[V]):
    """At most ``max_entries`` values, each until its own expiry time; the least recently used
    goes first when full. Thread-safe."""

    def __init__(self, max_entries: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.max_entries, self.clock = max_entries, clock
        self._lock = threading.Lock()
        self._items: OrderedDict[bytes, tuple[float, V]] = OrderedDict()

    def get(self, key: bytes) -> tuple[V] | None:
        """``(value,)`` while it is fresh (the value may itself be None), else None."""
        with self._lock:
            hit = self._items.get(key)
            if hit is None or hit[0] <= self.clock():
                return None
            self._items.move_to_end(key)
            return (hit[1],)

    def put(self, key: bytes, value: V, until: float) -> None:
        with self._lock:
            self._items[key] = (until, value)
            self._items.move_to_end(key)
            while len(self._items) > self.max_entries:
                self._items.popitem(last=False)

    def __len__(self) -> int:
        return len(self._items)


Authorize = Callable[[str, str | None], bool]  # (token, namespace or None) -> allowed


class CachedAccess:
    """An :data:`Authorize` (``Kube.may_list_jobs``: a TokenReview, then a SubjectAccessReview)
    behind the shared :class:`ReviewBudget` and a cache of its answers, allowed or refused, for
    ``ttl`` seconds per (token, namespace): a user who refreshes the queue every second costs
    two reviews per ``ttl``, and an RBAC change is seen within ``ttl``."""

    COST = 2  # a TokenReview and a SubjectAccessReview

    def __init__(self, authorize: Authorize, budget: ReviewBudget, *, ttl: float = 10.0,
                 max_entries: int = 4096, clock: Callable[[], float] = time.monotonic) -> None:
        self.authorize, self.budget, self.ttl, self.clock = authorize, budget, ttl, clock
        self.cache: TtlCache[bool] = TtlCache(max_entries, clock)
        self.reviews = 0  # authorize calls made (tests and the docs' cost figures)

    def __call__(self, token: str, namespace: str | None) -> bool:
        key = digest(token, namespace or "")
        hit = self.cache.get(key)
        if hit is not None:
            return hit[0]
        self.budget.spend(self.COST)
        self.reviews += 1
        allowed = self.authorize(token, namespace)
        self.cache.put(key, allowed, self.clock() + self.ttl)
        return allowed
