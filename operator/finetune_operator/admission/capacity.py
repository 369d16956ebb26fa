"""Mutable bookkeeping for one admit() call: GPUs per node (a bucketed index for fast best-fit
placement) and GPU quota per namespace. Private to the admission package."""

from __future__ import annotations

import math
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Sequence

from finetune_operator.admission.model import NodeInfo, QueuedJob, Quota, SnapshotJob, Toleration

# (sorted nodeSelector items, tolerations): jobs with the same signature see the same nodes.
Signature = tuple[tuple[tuple[str, str], ...], tuple[Toleration, ...]]


def signature(job: QueuedJob) -> Signature:
    return tuple(sorted(job.node_selector.items())), tuple(job.tolerations)


def _eligible_node(node: NodeInfo, sig: Signature) -> bool:
    selector, tolerations = sig
    if any(node.labels.get(k) != v for k, v in selector):
        return False
    return all(
        taint.effect == "PreferNoSchedule" or any(t.tolerates(taint) for t in tolerations)
        for taint in node.taints
    )


class _Node:
    __slots__ = ("allocatable", "free", "name", "pending", "reserved", "schedulable")

    def __init__(self, name: str, allocatable: int, free: int, schedulable: bool) -> None:
        self.name = name
        self.allocatable = allocatable
        self.free = free
        self.reserved = 0  # held back for a job ahead in the queue (aged, or awaiting victims)
        self.pending = 0  # held by stopping (preempted) jobs; free once they exit
        self.schedulable = schedulable

    @property
    def avail(self) -> int:
        return max(0, self.free - self.reserved)

    @property
    def avail_pending(self) -> int:
        return max(0, self.free + self.pending - self.reserved)


class Pool:
    """GPUs of one resource name (e.g. nvidia.com/gpu) across the nodes that offer it.

    Schedulable nodes sit in buckets keyed by their available GPUs (free minus reserved), each
    bucket a sorted list of names, so best-fit placement walks only the buckets that fit and a
    job that fits nowhere is rejected in O(1).
    """

    def __init__(self, resource: str, nodes: Sequence[NodeInfo]) -> None:
        self.resource = resource
        infos = sorted((n for n in nodes if n.allocatable.get(resource, 0) > 0),
                       key=lambda n: n.name)
        self._infos = {n.name: n for n in infos}
        self.nodes: dict[str, _Node] = {
            n.name: _Node(n.name, n.allocatable[resource],
                          max(0, min(n.free.get(resource, 0), n.allocatable[resource])),
                          not n.unschedulable)
            for n in infos
        }
        self._buckets: dict[int, list[str]] = {}
        self._keys: list[int] = []  # sorted bucket keys with a non-empty bucket
        for node in self.nodes.values():
            if node.schedulable:
                self._add(node.name, node.avail)
        self._eligible: dict[Signature, frozenset[str] | None] = {}
        self._initial: dict[str, int] | None = None
        self._cache: dict[tuple[object, ...], object] = {}  # facts fixed for the whole round
        self.pending_total = 0
        # reservations: per node, the earliest expected start (seconds from now) of the jobs
        # holding GPUs there; GPUs held idle by them; how many there are in this pool
        self.reserved_start: dict[str, float] = {}
        self.idle_reserved = 0
        self.reservations = 0
        self.free_initial = 0
        # every change of a node's free, reserved or pending GPUs bumps the version; the slower
        # placements (O(nodes) each) are kept per shape while it stays the same: a walk asks
        # them for many waiting jobs of one shape in a row, with nothing moving in between
        self.version = 0
        self._memo: dict[tuple[object, ...], tuple[int, tuple[str, ...] | None]] = {}

    # --- bucket index ------------------------------------------------------------------------

    def _add(self, name: str, avail: int) -> None:
        bucket = self._buckets.get(avail)
        if bucket is None:
            bucket = self._buckets[avail] = []
            insort(self._keys, avail)
        insort(bucket, name)

    def _remove(self, name: str, avail: int) -> None:
        bucket = self._buckets[avail]
        del bucket[bisect_left(bucket, name)]
        if not bucket:
            del self._buckets[avail]
            del self._keys[bisect_left(self._keys, avail)]

    def _update(self, name: str, free: int = 0, reserved: int = 0, pending: int = 0) -> None:
        self.version += 1  # what the memo of the slower paths is valid for
        node = self.nodes[name]
        before = node.avail
        node.free += free
        node.reserved += reserved
        node.pending += pending
        if node.schedulable and node.avail != before:
            self._remove(name, before)
            self._add(name, node.avail)

    # --- eligibility (nodeSelector, taints) --------------------------------------------------

    def eligible(self, sig: Signature) -> frozenset[str] | None:
        """Names of the nodes a job with this signature may use; None means all of them."""
        if sig not in self._eligible:
            names = frozenset(n for n, info in self._infos.items() if _eligible_node(info, sig))
            self._eligible[sig] = None if len(names) == len(self._infos) else names
        return self._eligible[sig]

    def _iter(self, eligible: frozenset[str] | None, schedulable_only: bool) -> Iterable[_Node]:
        for node in self.nodes.values():
            if (eligible is None or node.name in eligible) and (
                node.schedulable or not schedulable_only
            ):
                yield node

    def offers(self, sig: Signature) -> bool:
        """Whether any schedulable eligible node has this resource at all."""
        key = ("offers", sig)
        if key not in self._cache:
            self._cache[key] = any(True for _ in self._iter(self.eligible(sig), True))
        return bool(self._cache[key])

    def allocatable_stats(self, gpus: int, sig: Signature) -> tuple[int, int]:
        """(largest allocatable, nodes with allocatable >= gpus) over eligible nodes, cordoned
        ones included: what the cluster could ever offer a pod."""
        key = ("alloc", gpus, sig)
        if key not in self._cache:
            largest, count = 0, 0
            for node in self._iter(self.eligible(sig), schedulable_only=False):
                largest = max(largest, node.allocatable)
                count += node.allocatable >= gpus
            self._cache[key] = (largest, count)
        return self._cache[key]  # type: ignore[return-value]

    # --- placement on what is available now ---------------------------------------------------

    def place(self, gpus: int, pods: int, sig: Signature) -> tuple[str, ...] | None:
        """Best fit: the `pods` distinct nodes with the fewest available GPUs >= `gpus`."""
        if not self._keys or self._keys[-1] < gpus:
            return None
        return self._place(gpus, pods, self.eligible(sig))

    def place_excluding(
        self, gpus: int, pods: int, exclude: Iterable[str]
    ) -> tuple[str, ...] | None:
        """Best fit on any node except `exclude` (unbound pods of a partly bound gang)."""
        skip = set(exclude)
        return self._place(gpus, pods, frozenset(n for n in self.nodes if n not in skip)
                           if skip else None)

    def _place(self, gpus: int, pods: int,
               eligible: frozenset[str] | None) -> tuple[str, ...] | None:
        if not self._keys or self._keys[-1] < gpus:
            return None
        picked: list[str] = []
        for key in self._keys[bisect_left(self._keys, gpus):]:
            for name in self._buckets[key]:
                if eligible is None or name in eligible:
                    picked.append(name)
                    if len(picked) == pods:
                        return tuple(picked)
        return None

    def place_scored(self, gpus: int, pods: int, sig: Signature,
                     score: Callable[[str, int], tuple[float, ...]]) -> tuple[str, ...] | None:
        """The `pods` distinct nodes with available GPUs >= `gpus` of lowest `score(name,
        available)` (ties by name)."""
        if not self._keys or self._keys[-1] < gpus:
            return None
        eligible = self.eligible(sig)
        fits = [(score(name, key), name) for key in self._keys[bisect_left(self._keys, gpus):]
                for name in self._buckets[key] if eligible is None or name in eligible]
        if len(fits) < pods:
            return None
        return (min(fits)[1],) if pods == 1 else tuple(name for _, name in sorted(fits)[:pods])

    def largest_available(self, sig: Signature) -> int:
        eligible = self.eligible(sig)
        for key in reversed(self._keys):
            if eligible is None or any(n in eligible for n in self._buckets[key]):
                return key
        return 0

    def count_available(self, gpus: int, sig: Signature) -> int:
        eligible = self.eligible(sig)
        return sum(
            1 for key in self._keys[bisect_left(self._keys, gpus):]
            for name in self._buckets[key] if eligible is None or name in eligible
        )

    def take(self, placement: Iterable[str], gpus: int) -> None:
        for name in placement:
            self._update(name, free=-gpus)

    def reserve(self, placement: Iterable[str], gpus: int, start: float = 0.0) -> None:
        """Hold `gpus` on each node for a job expected to start in `start` seconds (0: any
        moment, e.g. a preemptor waiting for its victims: nothing backfills there)."""
        for name in placement:
            self._update(name, reserved=gpus)
            self.reserved_start[name] = min(self.reserved_start.get(name, math.inf), start)

    def add_pending(self, placement: Iterable[str], gpus: int) -> None:
        for name in placement:
            if name in self.nodes:
                self._update(name, pending=gpus)
                self.pending_total += gpus

    # --- slower paths: pending GPUs, preemption, reservations ---------------------------------

    def _memoized(self, key: tuple[object, ...],
                  compute: Callable[[], tuple[str, ...] | None]) -> tuple[str, ...] | None:
        got = self._memo.get(key)
        if got is not None and got[0] == self.version:
            return got[1]
        result = compute()
        self._memo[key] = (self.version, result)
        return result

    def place_with(self, gpus: int, pods: int, sig: Signature) -> tuple[str, ...] | None:
        """Best fit counting the GPUs of stopping jobs (pending) as free."""
        def compute() -> tuple[str, ...] | None:
            fits = sorted(
                (node.avail_pending, node.name)
                for node in self._iter(self.eligible(sig), schedulable_only=True)
                if node.avail_pending >= gpus
            )
            return tuple(name for _, name in fits[:pods]) if len(fits) >= pods else None

        return self._memoized(("with", gpus, pods, sig), compute)

    def pending_base(self, sig: Signature) -> dict[str, int]:
        """Available GPUs (pending counted as free) of the eligible schedulable nodes, *not*
        clamped at 0: GPUs a victim frees first refill what is reserved for jobs ahead."""
        return {n.name: n.free + n.pending - n.reserved
                for n in self._iter(self.eligible(sig), schedulable_only=True)}

    def snapshot_initial(self) -> None:
        self._initial = {n.name: n.avail for n in self.nodes.values() if n.schedulable}
        self.free_initial = sum(self._initial.values())

    def idle_if_reserved(self, placement: Iterable[str], gpus: int) -> int:
        """Free GPUs a reservation of `gpus` on these nodes would keep from other jobs."""
        return sum(min(self.nodes[n].avail, gpus) for n in placement)

    def hold(self, placement: Iterable[str], gpus: int, start: float) -> None:
        """Reserve `gpus` on each node for a job expected to start in `start` seconds."""
        placement = tuple(placement)
        self.idle_reserved += self.idle_if_reserved(placement, gpus)
        self.reservations += 1
        self.reserve(placement, gpus, start)

    def place_backfill(self, gpus: int, pods: int, sig: Signature,
                       seconds: float) -> tuple[str, ...] | None:
        """Best fit on GPUs that are free but reserved, for a job expected to end within
        `seconds`: only on nodes whose reservations cannot start before then, so no reserved
        job is delayed by it."""
        def compute() -> tuple[str, ...] | None:
            fits = sorted(
                (node.free, node.name)
                for node in self._iter(self.eligible(sig), schedulable_only=True)
                if node.free >= gpus and (node.avail >= gpus
                                          or seconds <= self.reserved_start.get(node.name, 0.0))
            )
            return tuple(name for _, name in fits[:pods]) if len(fits) >= pods else None

        return self._memoized(("backfill", gpus, pods, sig, seconds), compute)

    def candidates(self, gpus: int, sig: Signature) -> Iterable[_Node]:
        """Eligible schedulable nodes big enough for a pod of `gpus`."""
        return (n for n in self._iter(self.eligible(sig), True) if n.allocatable >= gpus)

    def fitted_initially(self, gpus: int, pods: int, sig: Signature) -> bool:
        """Whether the job would have fitted before this round's admissions and reservations."""
        key = ("initial", gpus, sig)
        if key not in self._cache:
            eligible = self.eligible(sig)
            self._cache[key] = sum(1 for name, avail in (self._initial or {}).items()
                                   if avail >= gpus and (eligible is None or name in eligible))
        fitting = self._cache[key]
        assert isinstance(fitting, int)
        return fitting >= pods


class QuotaBook:
    """GPU quota: per matching ResourceQuota, what is free now, held by stopping jobs, reserved.

    A job (or running job) is charged to every quota that matches it (namespace, resource and
    scopes, as the API server does); it fits when every one of them has room. Quotas that do not
    match it are ignored. Methods take the job; `gpus` defaults to its total."""

    def __init__(self, quotas: Iterable[Quota]) -> None:
        self.quotas = list(quotas)
        self.free = [q.free for q in self.quotas]
        self.initial = list(self.free)
        self.pending = [0] * len(self.quotas)
        self.reserved = [0] * len(self.quotas)
        # per quota: earliest expected start (seconds from now) of the jobs it is reserved for
        self.reserved_start = [math.inf] * len(self.quotas)
        self._by_ns: dict[tuple[str, str], list[int]] = {}
        for i, q in enumerate(self.quotas):
            self._by_ns.setdefault((q.namespace, q.resource), []).append(i)
        self._ids: dict[tuple[object, ...], tuple[int, ...]] = {}

    def at_least(self, holding: Iterable[SnapshotJob]) -> None:
        """Each quota counts at least the GPUs of ``holding`` (jobs whose pods exist): a
        quota's ``status.used`` can lag behind its pods (the quota controller recomputes it
        from an informer that may not have the newest pods yet, and writes the lower figure;
        the API server then admits a pod past ``hard`` too). Seen at 5,000 jobs: 81 pods
        under a quota of 80. Call before any job is charged."""
        seen = [0] * len(self.quotas)
        for job in holding:
            for i in self.ids(job):
                seen[i] += job.total_gpus
        for i, q in enumerate(self.quotas):
            if seen[i] > q.used:
                self.free[i] = self.initial[i] = max(0, q.hard - seen[i])

    def ids(self, job: SnapshotJob) -> tuple[int, ...]:
        """Indices of the quotas that charge this job."""
        key = (job.namespace, job.gpu_resource, job.priority_class, job.terminating,
               job.best_effort)
        if key not in self._ids:
            self._ids[key] = tuple(i for i in self._by_ns.get(key[:2], ())
                                   if self.quotas[i].matches(job))
        return self._ids[key]

    def limited(self, job: SnapshotJob) -> bool:
        return bool(self.ids(job))

    def hard(self, job: SnapshotJob) -> tuple[int, str] | None:
        """(smallest hard limit, its quota's name) among the quotas that charge the job."""
        ids = self.ids(job)
        if not ids:
            return None
        i = min(ids, key=lambda i: self.quotas[i].hard)
        return self.quotas[i].hard, self.quotas[i].name

    def available(self, job: SnapshotJob) -> int | None:
        ids = self.ids(job)
        if not ids:
            return None
        return min(max(0, self.free[i] - self.reserved[i]) for i in ids)

    def available_pending(self, job: SnapshotJob) -> int | None:
        ids = self.ids(job)
        if not ids:
            return None
        return min(max(0, self.free[i] + self.pending[i] - self.reserved[i]) for i in ids)

    def tightest(self, job: SnapshotJob) -> str:
        """Name of the matching quota with the least room (for messages)."""
        ids = self.ids(job)
        if not ids:
            return ""
        i = min(ids, key=lambda i: self.free[i] - self.reserved[i])
        return self.quotas[i].name

    def fits(self, job: SnapshotJob) -> bool:
        avail = self.available(job)
        return avail is None or avail >= job.total_gpus

    def fits_backfill(self, job: SnapshotJob, seconds: float) -> bool:
        """Fits when quota reserved for jobs that cannot start within `seconds` counts as
        free: a job that ends by then delays none of them."""
        need = job.total_gpus
        return all(self.free[i] >= need and (self.free[i] - self.reserved[i] >= need
                                             or seconds <= self.reserved_start[i])
                   for i in self.ids(job))

    def fitted_initially(self, job: SnapshotJob) -> bool:
        return all(self.initial[i] >= job.total_gpus for i in self.ids(job))

    def has_pending(self, job: SnapshotJob) -> bool:
        return any(self.pending[i] for i in self.ids(job))

    def take(self, job: SnapshotJob, gpus: int | None = None) -> None:
        for i in self.ids(job):
            self.free[i] -= job.total_gpus if gpus is None else gpus

    def reserve(self, job: SnapshotJob, gpus: int | None = None, start: float = 0.0) -> None:
        """Hold quota for a job expected to start in `start` seconds (0: any moment)."""
        for i in self.ids(job):
            self.reserved[i] += job.total_gpus if gpus is None else gpus
            self.reserved_start[i] = min(self.reserved_start[i], start)

    def add_pending(self, job: SnapshotJob) -> None:
        for i in self.ids(job):
            self.pending[i] += job.total_gpus
