"""admit(snapshot, now) -> PolicyResult: the queue, quota, gang and preemption policy, pure.

Order. Waiting jobs are sorted by effective priority = base priority (the PriorityClass value)
+ min(aging_cap, aging_rate_per_minute * minutes waited), then creation time, then name (then
namespace and uid, for a total order). Minutes waited count from the job's *first* queue entry
(``QueuedJob.first_queued_at``, default its creation), so a job that was preempted, suspended or
requeued keeps its place. Aging is capped, so a job overtakes a higher band only when the cap is
configured larger than the gap between the bands.

Walk. One pass in that order. A job is admitted when its namespace is under
maxRunningJobsPerNamespace, every ResourceQuota that charges it (its namespace and GPU
resource, and whose scopes match it: PriorityClass In/NotIn/Exists, NotTerminating, ...) has room
for gpus * nodes, and the nodes have room: every pod (one per node) on a distinct schedulable
node that matches its nodeSelector/tolerations and has `gpus` free. A multi-node job is admitted
whole or not at all. Admitting takes the GPUs and quota for the rest of the walk.

Placement. A job with ``expected_seconds`` goes to the nodes whose expected busy time (the
latest ``expected_end_at`` of the jobs there, an unknown one counting as now) it extends least,
then best fit (fewest free GPUs), then name: jobs that end about together share nodes, so nodes
empty out whole for 8-GPU and multi-node jobs instead of keeping a few GPUs busy long after the
rest of the node is free, and an empty node (extended by the whole run time) is taken last. A
job without ``expected_seconds`` gets best fit. (The kube-scheduler binds; each pod prefers
the node admit() placed it on, by a preferred node affinity: build/pod.py ``preferred_node``.)

Reservations (starvation freedom). A job that does not fit does not stop the walk: smaller jobs
behind it may use what is left. That alone can starve a big job forever (every GPU that frees up
is taken by a small job before enough free up together), so a blocked job that has waited past
its aging bound (``Policy.reserve_threshold_seconds``: by default the time its aging takes to
reach the cap) *reserves* what it needs: its gang's worth of GPUs on the nodes where it can start
soonest (nodes no other reservation holds, then the earliest time enough GPUs free up there by
the running jobs' ``expected_end_at``), and the quota that charges it. Jobs ahead of it may still
use reserved GPUs; jobs behind it may not, except by backfill. The bound: an aged job waits at
most for the jobs ahead of it in the order plus the running jobs on its reserved nodes; a job of
a higher band that keeps arriving stays ahead only while its base priority exceeds the aged
job's base + cap.

Bounded reservations. The first reservation in a GPU pool is always made (it guarantees
progress); each further one only while all reservations together keep at most
``Policy.max_reserved_idle_share`` of the pool's free GPUs (at the start of the walk) idle.
A job refused a reservation waits like any other and may reserve in a later pass.

Backfill. A job behind a reservation may use reserved GPUs (or reserved quota) only when it is
expected to end before that reservation can start: its ``expected_seconds`` is at most the
reserved job's expected start on that node. Unknown is conservative on both sides: a queued job
without ``expected_seconds`` never backfills, and a running job without ``expected_end_at``
counts as ending now, so a reservation waiting on it starts "now" and nothing backfills there.
So backfill never delays a reserved job beyond the running jobs' own ETAs.

Preemption. Only for a job whose PriorityClass is in ``Policy.preempting_priority_classes``,
and only when it cannot fit otherwise. Victims are running jobs of strictly lower *base*
priority that have run at least ``min_runtime_before_preemption_seconds`` and are not already
stopping, chosen greedily by least work since their last checkpoint (GPU-seconds since the last
checkpoint, or since start), then lower priority; then every victim that turns out unnecessary
is dropped again, so the set is minimal in that sense and does make the job fit (node capacity,
and the quota and job count of its namespace when the victims are in it). No set, no preemption.
A ModelServer (``serving``) is never a victim unless ``Policy.serving_preemptible``: an
endpoint that users call is not stopped to make room for training by default.

Stopping jobs. GPUs of jobs already being preempted (``RunningJob.preempting``) are *pending*:
they are free once those jobs exit. A job that would fit with pending GPUs claims them (they are
reserved for it) and waits; it does not preempt anything else. So a preemptor whose victims are
in flight causes no further preemptions, and two preemptors never count the same GPUs.

Impossible jobs. A job that asks more GPUs per pod than any eligible node's allocatable, more
such nodes than exist, or more GPUs in total than its namespace's quota `hard` can never be
admitted; it is reported in ``PolicyResult.impossible`` (not in the queue), so the operator can end
it with that reason. A resource that no node offers at all is *not* impossible (nodes may not have
registered yet): the job waits with ``NoMatchingNodes``.

Unbound pods. Pods of admitted jobs that the scheduler has not bound yet do not appear in the
nodes' free GPUs; admit() places them virtually (best fit) first so their GPUs are not handed out
twice. Jobs whose pods do not exist yet (``counted_in_quota=False``) are added to quota usage.
"""

from __future__ import annotations

import math
from bisect import insort
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime
from functools import cached_property

from finetune_operator.admission.capacity import Pool, QuotaBook, Signature, signature
from finetune_operator.admission.model import (
    Admission,
    Impossible,
    ImpossibleCode,
    Policy,
    PolicyResult,
    Preemption,
    QueuedJob,
    Quota,
    RunningJob,
    Snapshot,
    SnapshotJob,
    WaitCode,
    Waiting,
)


def _named(name: str) -> str:
    return f"{name} " if name else ""


def _in(name: str) -> str:
    return f" (ResourceQuota {name})" if name else ""


def effective_priority(job: QueuedJob, now: datetime, policy: Policy) -> float:
    minutes = max(0.0, (now - job.waiting_since).total_seconds() / 60.0)
    return job.priority + min(policy.aging_cap, policy.aging_rate_per_minute * minutes)


def next_reorder(jobs: Iterable[QueuedJob], now: datetime, policy: Policy) -> float | None:
    """Seconds from ``now`` until aging may next change the queue order of ``jobs`` (None:
    never). Every job ages at the same rate until it reaches the cap, so two jobs swap only
    after one of them is capped: the soonest of a job reaching the cap and an uncapped job
    reaching the effective priority of a capped one above it."""
    rate = policy.aging_rate_per_minute / 60.0
    if rate <= 0:
        return None
    soonest = math.inf
    ranked: list[tuple[float, bool]] = []  # (effective priority, capped)
    for j in jobs:
        aged = rate * max(0.0, (now - j.waiting_since).total_seconds())
        if aged < policy.aging_cap:
            soonest = min(soonest, (policy.aging_cap - aged) / rate)
        ranked.append((j.priority + min(policy.aging_cap, aged), aged >= policy.aging_cap))
    below: float | None = None  # the highest uncapped effective priority so far
    for eff, capped in sorted(ranked):
        if not capped:
            below = eff
        elif below is not None:
            soonest = min(soonest, (eff - below) / rate)
    return None if soonest == math.inf else soonest


def queue_order(jobs: Iterable[QueuedJob], now: datetime, policy: Policy) -> list[QueuedJob]:
    """Jobs in admission order (highest effective priority first)."""
    return sorted(jobs, key=lambda j: (-effective_priority(j, now, policy), j.created_at,
                                       j.name, j.namespace, j.uid))


def work_since_checkpoint(job: RunningJob, now: datetime) -> float:
    """GPU-seconds that would be redone if the job stopped now without saving."""
    since = job.last_checkpoint_at or job.started_at
    return max(1, job.total_gpus) * max(0.0, (now - since).total_seconds())


class _Admitter:
    def __init__(self, snapshot: Snapshot, now: datetime) -> None:
        self.now = now
        self.policy = snapshot.policy
        self.pools: dict[str, Pool] = {}
        self._nodes = snapshot.nodes
        self.quota = QuotaBook(snapshot.quotas)
        self.running_count: dict[str, int] = defaultdict(int)
        self.placement_of: dict[str, tuple[str, ...]] = {}
        self.stopping: dict[str, RunningJob] = {}
        self.admitted: list[Admission] = []
        self.preempted: list[Preemption] = []
        self.waiting: list[Waiting] = []
        self.impossible: list[Impossible] = []
        # shapes that found nothing; the state only gets tighter during a walk, so a later job
        # of the same shape (and, for victims, no higher priority) would not find anything either
        self._no_pending: set[tuple[object, ...]] = set()
        self._no_victims: dict[tuple[object, ...], int] = {}

        running = sorted(snapshot.running, key=lambda r: (r.namespace, r.name, r.uid))
        self.running_uids = {r.uid for r in running}
        self.quota.at_least(r for r in running if r.counted_in_quota)
        for r in running:
            if r.gpus > 0:
                pool = self.pool(r.gpu_resource)
                unbound = max(0, r.nodes - len(r.placement))
                extra: tuple[str, ...] = ()
                if unbound:
                    extra = pool.place_excluding(r.gpus, unbound, r.placement) or ()
                    pool.take(extra, r.gpus)
                self.placement_of[r.uid] = (*r.placement, *extra)
                if not r.counted_in_quota:
                    self.quota.take(r)
            if r.preempting:
                self._mark_stopping(r)
            else:
                self.running_count[r.namespace] += 1
        for pool in self.pools.values():
            pool.snapshot_initial()
        # possible victims, cheapest first; and per resource and node
        self.work = {r.uid: work_since_checkpoint(r, now) for r in running}
        self.candidates = sorted(
            (r for r in running if not r.preempting),
            key=lambda r: (self.work[r.uid], r.priority, r.namespace, r.name, r.uid),
        )
        self.on_node: dict[str, dict[str, list[RunningJob]]] = defaultdict(
            lambda: defaultdict(list))
        for r in self.candidates:
            for node in self.placement_of.get(r.uid, ()):
                self.on_node[r.gpu_resource][node].append(r)
        # per resource and node: (seconds until expected end, GPUs) of the jobs holding GPUs
        # there; unknown ends count as "now" (conservative for the jobs waiting on them)
        self.ends: dict[str, dict[str, list[tuple[float, int]]]] = defaultdict(
            lambda: defaultdict(list))
        self.quota_ends: dict[int, list[tuple[float, int]]] = defaultdict(list)  # per quota
        for r in self.candidates:
            left = (0.0 if r.expected_end_at is None
                    else max(0.0, (r.expected_end_at - now).total_seconds()))
            for node in self.placement_of.get(r.uid, ()):
                self.ends[r.gpu_resource][node].append((left, r.gpus))
            for i in self.quota.ids(r):
                self.quota_ends[i].append((left, r.total_gpus))
        for per_node in self.ends.values():  # kept sorted: soonest end first
            for node_ends in per_node.values():
                node_ends.sort()
        for quota_ends in self.quota_ends.values():
            quota_ends.sort()

    def pool(self, resource: str) -> Pool:
        if resource not in self.pools:
            self.pools[resource] = Pool(resource, self._nodes)
            self.pools[resource].snapshot_initial()
        return self.pools[resource]

    def _mark_stopping(self, r: RunningJob) -> None:
        self.stopping[r.uid] = r
        if r.gpus > 0:
            self.pool(r.gpu_resource).add_pending(self.placement_of.get(r.uid, ()), r.gpus)
            self.quota.add_pending(r)

    # --- the walk ------------------------------------------------------------------------------

    def run(self, queued: Iterable[QueuedJob]) -> PolicyResult:
        jobs = [j for j in queued if j.uid not in self.running_uids]
        for job in queue_order(jobs, self.now, self.policy):
            self.consider(job)
        return PolicyResult(admit=tuple(self.admitted), preempt=tuple(self.preempted),
                         waiting=tuple(self.waiting), impossible=tuple(self.impossible))

    def consider(self, job: QueuedJob) -> None:
        eff = effective_priority(job, self.now, self.policy)
        pool = self.pool(job.gpu_resource) if job.gpus > 0 else None
        sig = signature(job)
        if pool is not None and self._impossible(job, pool, sig):
            return
        ns, res = job.namespace, job.gpu_resource
        limit = self.policy.max_running_jobs_per_namespace
        over_limit = bool(limit) and self.running_count[ns] >= limit
        quota_ok = pool is None or self.quota.fits(job)
        placement = () if pool is None else pool.place(job.gpus, job.nodes, sig)
        backfill = False
        if (pool is not None and not over_limit and job.expected_seconds is not None
                and (placement is None or not quota_ok)):
            # backfill: GPUs and quota reserved for jobs that cannot start before it ends
            if not quota_ok:
                quota_ok = self.quota.fits_backfill(job, job.expected_seconds)
            if placement is None and pool.reservations:
                placement = pool.place_backfill(job.gpus, job.nodes, sig,
                                                job.expected_seconds)
                backfill = True
        if not over_limit and quota_ok and placement is not None:
            if pool is not None and job.expected_seconds is not None and not backfill:
                placement = self._place_by_ends(job, pool, sig) or placement
            if pool is not None:
                pool.take(placement, job.gpus)
                self.quota.take(job)
                left = job.expected_seconds or 0.0
                for node in placement:
                    insort(self.ends[res][node], (left, job.gpus))
                for i in self.quota.ids(job):
                    insort(self.quota_ends[i], (left, job.total_gpus))
            self.running_count[ns] += 1
            self.admitted.append(Admission(job=job, placement=placement, effective_priority=eff))
            return

        position = len(self.waiting) + 1
        if pool is not None and not over_limit:
            claimed = self._claim_pending(job, pool, sig)
            if claimed is not None:
                stopping = [r for r in self.stopping.values() if r.gpu_resource == res and (
                    set(self.placement_of.get(r.uid, ())) & set(claimed) or r.namespace == ns)]
                self._wait(job, position, eff, WaitCode.AWAITING_PREEMPTED,
                           f"waiting for {max(1, len(stopping))} preempted job(s) to stop",
                           reserved=True)
                return
        if job.priority_class in self.policy.preempting_priority_classes:
            victims = self._choose_victims(job, pool, sig, over_limit)
            if victims:
                self._preempt(job, victims, pool, sig)
                self._wait(job, position, eff, WaitCode.PREEMPTING,
                           f"preempting {len(victims)} lower-priority job(s) to make room: "
                           f"{', '.join(v.key for v in victims)}", reserved=True)
                return

        code, reason = self._blocker(job, pool, sig, over_limit, quota_ok)
        if job.priority_class in self.policy.preempting_priority_classes:
            reason += "; preempting lower-priority jobs would not make room"
        reserved = False
        if pool is not None and code in (WaitCode.QUOTA, WaitCode.CAPACITY, WaitCode.PRIORITY):
            reserved = self._reserve_if_aged(job, pool, sig, quota_ok)
            if reserved:
                reason += f"; {res} held for it (waited past the aging bound)"
        self._wait(job, position, eff, code, reason, reserved=reserved)

    def _place_by_ends(self, job: QueuedJob, pool: Pool,
                       sig: Signature) -> tuple[str, ...] | None:
        """For a job with an expected run time: the nodes whose expected busy time (the latest
        expected end of the jobs on them) it extends least, then best fit. A job that ends
        before the node's other jobs costs nothing; an empty node costs its whole run time, so
        empty nodes stay last as in best fit."""
        ends = self.ends[job.gpu_resource]
        seconds = job.expected_seconds or 0.0

        def cost(name: str, available: int) -> tuple[float, int]:
            node_ends = ends.get(name)
            busy_until = node_ends[-1][0] if node_ends else 0.0
            return max(0.0, seconds - busy_until), available

        return pool.place_scored(job.gpus, job.nodes, sig, cost)

    def _wait(self, job: QueuedJob, position: int, eff: float, code: WaitCode, reason: str,
              reserved: bool = False) -> None:
        self.waiting.append(Waiting(job=job, position=position, code=code, reason=reason,
                                    effective_priority=eff, reserved=reserved))

    # --- why it waits ----------------------------------------------------------------------------

    def _impossible(self, job: QueuedJob, pool: Pool, sig: Signature) -> bool:
        res = job.gpu_resource
        hard = self.quota.hard(job)
        if hard is not None and job.total_gpus > hard[0]:
            self.impossible.append(Impossible(
                job=job, code=ImpossibleCode.QUOTA,
                reason=f"needs {job.total_gpus} {res} in total but quota {job.namespace} allows "
                f"at most {hard[0]} (ResourceQuota {_named(hard[1])}requests.{res}); lower "
                "resources.gpus or resources.nodes, or raise the quota"))
            return True
        largest, count = pool.allocatable_stats(job.gpus, sig)
        if largest == 0:
            return False  # no node offers it (yet): waits with NoMatchingNodes
        if largest < job.gpus:
            self.impossible.append(Impossible(
                job=job, code=ImpossibleCode.NODE_CAPACITY,
                reason=f"needs {job.gpus} {res} per pod but the largest node has {largest} "
                "allocatable; lower resources.gpus (and raise resources.nodes)"))
            return True
        if count < job.nodes:
            self.impossible.append(Impossible(
                job=job, code=ImpossibleCode.NODE_CAPACITY,
                reason=f"needs {job.nodes} nodes with {job.gpus} {res} allocatable each but "
                f"only {count} node(s) have that many; lower resources.nodes or resources.gpus"))
            return True
        return False

    def _blocker(self, job: QueuedJob, pool: Pool | None, sig: Signature, over_limit: bool,
                 quota_ok: bool) -> tuple[WaitCode, str]:
        ns, res = job.namespace, job.gpu_resource
        if over_limit or pool is None:  # CPU jobs only ever wait for the namespace limit
            return (WaitCode.NAMESPACE_LIMIT,
                    f"namespace {ns} already runs {self.running_count[ns]} jobs "
                    "(maxRunningJobsPerNamespace); wait for one to finish")
        # no count: the jobs ahead may be other tenants' (their number is not this tenant's to
        # know, and would change the text whenever anyone's job moves); status.queue.position
        # is the job's place among its own namespace's waiting jobs
        ahead = len(self.admitted) + len(self.waiting)
        behind = "waiting behind higher-priority jobs"
        if not quota_ok:
            if ahead and self.quota.fitted_initially(job):
                return WaitCode.PRIORITY, f"{behind} for quota {ns}"
            return (WaitCode.QUOTA,
                    f"needs {job.total_gpus} {res}; quota {ns} has "
                    f"{self.quota.available(job)} free{_in(self.quota.tightest(job))}; lower "
                    "resources.gpus or wait")
        if not pool.offers(sig):
            return WaitCode.NO_NODES, self._no_nodes(res, pool, sig)
        if ahead and pool.fitted_initially(job.gpus, job.nodes, sig):
            return WaitCode.PRIORITY, behind
        if job.nodes == 1:
            return (WaitCode.CAPACITY, f"needs {job.gpus} {res} on one node; largest free node "
                    f"has {pool.largest_available(sig)}")
        return (WaitCode.CAPACITY,
                f"needs {job.nodes} nodes with {job.gpus} {res} free each; "
                f"{pool.count_available(job.gpus, sig)} node(s) have that")

    @cached_property
    def _offered(self) -> list[str]:
        """Every extended resource some node advertises (computed once per admission pass)."""
        return sorted({r for n in self._nodes for r, v in n.allocatable.items() if v > 0})

    def _no_nodes(self, res: str, pool: Pool, sig: Signature) -> str:
        """Why no node can take the job: on a fresh install mostly that no node advertises the
        resource at all (no device plugin, or the GPUs go by another resource name)."""
        if not pool.nodes:
            others = [r for r in self._offered if r != res]
            seen = (f"; the nodes offer {', '.join(others[:4])}"
                    + (" and more" if len(others) > 4 else "") if others else "")
            return (f"no node offers {res} (in its status.allocatable){seen}: on a new cluster "
                    "the GPU device plugin (or the GPU Operator) is usually missing, so install "
                    "it; if the GPUs go by another resource name, set resources.gpuResource "
                    "(allowed by the chart's policy.gpuResources) or the chart's "
                    "trainer.gpuResource; the job waits until a node offers it")
        if pool.eligible(sig) is not None:
            return (f"no schedulable node matching resources.nodeSelector/tolerations offers "
                    f"{res} ({len(pool.nodes)} node(s) offer it, with other labels or taints, "
                    "or cordoned); change resources.nodeSelector/tolerations or wait for nodes")
        return (f"no schedulable node offers {res}: the {len(pool.nodes)} node(s) that offer it "
                "are cordoned (kubectl uncordon); wait for nodes")

    def _reserve_if_aged(self, job: QueuedJob, pool: Pool, sig: Signature,
                         quota_ok: bool) -> bool:
        threshold = self.policy.reserve_threshold_seconds
        if threshold is None or (self.now - job.waiting_since).total_seconds() < threshold:
            return False
        start = self._quota_start(job)
        if quota_ok:  # capacity is what blocks it: hold GPUs where it can start soonest
            share = self.policy.max_reserved_idle_share
            bounded = share is not None and pool.reservations > 0
            budget = (share or 0.0) * pool.free_initial
            if bounded and pool.idle_reserved > budget:
                return False  # bounded: the first reservation alone guarantees progress
            targets = self._reservation_targets(job, pool, sig)
            if len(targets) < job.nodes:
                return False
            names = tuple(name for _, name in targets)
            if bounded and pool.idle_reserved + pool.idle_if_reserved(names, job.gpus) > budget:
                return False
            start = max(start, *(at for at, _ in targets))
            pool.hold(names, job.gpus, start)
        # its quota, so jobs behind it in the namespace cannot keep using it up
        self.quota.reserve(job, start=start)
        return True

    def _quota_start(self, job: QueuedJob) -> float:
        """Seconds until every quota that charges the job has room for it, by the expected
        ends of the jobs charged to it (0 when it has room now, or an end is unknown)."""
        book, start = self.quota, 0.0
        for i in book.ids(job):
            have = book.free[i] + book.pending[i] - book.reserved[i]
            at = 0.0 if have >= job.total_gpus else math.inf
            for left, gpus in self.quota_ends[i] if at else ():
                have += gpus
                if have >= job.total_gpus:
                    at = left
                    break
            start = max(start, at)
        return start

    def _reservation_targets(self, job: QueuedJob, pool: Pool,
                             sig: Signature) -> list[tuple[float, str]]:
        """(expected start, node) of the `nodes` nodes where the job can start soonest: nodes
        no other reservation holds first, then by when enough GPUs free up there (running
        jobs' expected ends), then most available GPUs, then name."""
        ends = self.ends[job.gpu_resource]
        nodes = list(pool.candidates(job.gpus, sig))
        free = [n for n in nodes if not n.reserved]
        ranked = []
        # held nodes only rank after free ones: look at them only when there are too few
        for node in free if len(free) >= job.nodes else nodes:
            have, start = node.free + node.pending - node.reserved, math.inf
            if have >= job.gpus:
                start = 0.0
            else:
                for left, gpus in ends.get(node.name, ()):
                    have += gpus
                    if have >= job.gpus:
                        start = left
                        break
            ranked.append((node.reserved > 0, start, -node.avail_pending, node.name))
        ranked.sort()
        return [(start, name) for _, start, _, name in ranked[:job.nodes]]

    # --- stopping jobs and preemption ------------------------------------------------------------

    def _claim_pending(self, job: QueuedJob, pool: Pool, sig: Signature) -> tuple[str, ...] | None:
        """Fits once stopping jobs exit: hold those GPUs (and quota) for this job."""
        ns, res = job.namespace, job.gpu_resource
        if not (pool.pending_total or self.quota.has_pending(job)):
            return None
        shape = (res, job.gpus, job.nodes, sig, ns)
        if shape in self._no_pending:
            return None
        quota_pending = self.quota.available_pending(job)
        placement = pool.place_with(job.gpus, job.nodes, sig)
        if placement is None or (quota_pending is not None and quota_pending < job.total_gpus):
            self._no_pending.add(shape)
            return None
        pool.reserve(placement, job.gpus)
        self.quota.reserve(job)
        return placement

    def _choose_victims(self, job: QueuedJob, pool: Pool | None, sig: Signature,
                        over_limit: bool) -> list[RunningJob]:
        """A small set of victims whose stop makes `job` fit, or [] when there is none.

        Capacity: per eligible node, the cheapest victims on it (least work since checkpoint,
        then lower priority) that free enough GPUs there; the `nodes` cheapest such nodes.
        Then quota and the namespace job limit, cheapest victims first. Then every victim whose
        removal keeps the job fitting is dropped again, the most expensive first."""
        ns, res = job.namespace, job.gpu_resource
        shape = (res, job.gpus, job.nodes, sig, ns, over_limit)
        if self._no_victims.get(shape, -(2**63)) >= job.priority:
            return []
        min_runtime = self.policy.min_runtime_before_preemption_seconds

        serving_ok = self.policy.serving_preemptible

        def may_preempt(v: RunningJob) -> bool:
            return (v.uid not in self.stopping and v.priority < job.priority
                    and (serving_ok or not v.serving)
                    and (self.now - v.started_at).total_seconds() >= min_runtime)

        fit = _VictimFit(self, job, pool, sig, over_limit)
        chosen: dict[str, RunningJob] = {}
        if pool is not None and fit.nodes_ok < job.nodes:
            options: list[tuple[float, int, str, list[RunningJob]]] = []
            on_node = self.on_node[res]
            for node, base in fit.base.items():
                got, cost, picked = base, 0.0, []
                for v in on_node.get(node, ()) if base < job.gpus else ():
                    if may_preempt(v):
                        picked.append(v)
                        cost += self.work[v.uid]
                        got += v.gpus
                        if got >= job.gpus:
                            break
                if got >= job.gpus:
                    options.append((cost, max((v.priority for v in picked), default=0), node,
                                     picked))
            options.sort(key=lambda o: o[:3])  # least work, then lower priority, then name
            for *_, picked in options[:job.nodes]:
                for v in picked:
                    if v.uid not in chosen:
                        chosen[v.uid] = v
                        fit.add(v)
        if not fit.ok():
            for v in self.candidates:
                if v.uid not in chosen and may_preempt(v) and fit.helps(v):
                    chosen[v.uid] = v
                    fit.add(v)
                    if fit.ok():
                        break
        if not fit.ok():
            self._no_victims[shape] = max(self._no_victims.get(shape, -(2**63)), job.priority)
            return []
        for v in sorted(chosen.values(), key=lambda r: -self.work[r.uid]):
            if fit.can_remove(v):
                fit.remove(v)
                del chosen[v.uid]
        return sorted(chosen.values(), key=lambda r: (self.work[r.uid],
                                                      r.priority, r.namespace, r.name))

    def _preempt(self, job: QueuedJob, victims: list[RunningJob], pool: Pool | None,
                 sig: Signature) -> None:
        for v in victims:
            work = self.work[v.uid]
            self.preempted.append(Preemption(
                victim=v, preemptor=job,
                reason=f"preempted to make room for {job.key} ({job.priority_class}, priority "
                f"{job.priority} > {v.priority}); {work:.0f} GPU-seconds since its last "
                "checkpoint"))
            self._mark_stopping(v)
            self.running_count[v.namespace] -= 1
        if pool is not None:
            placement = pool.place_with(job.gpus, job.nodes, sig)
            if placement is not None:
                pool.reserve(placement, job.gpus)
            self.quota.reserve(job)


class _VictimFit:
    """Would `job` fit if these victims stopped? Kept up to date as victims come and go."""

    def __init__(self, adm: _Admitter, job: QueuedJob, pool: Pool | None, sig: Signature,
                 over_limit: bool) -> None:
        self.adm, self.job, self.pool = adm, job, pool
        ns = job.namespace
        limit = adm.policy.max_running_jobs_per_namespace
        self.slots_needed = adm.running_count[ns] - limit + 1 if over_limit else 0
        self.base = pool.pending_base(sig) if pool is not None else {}
        book = adm.quota
        # per quota that charges the job: GPUs still missing there (pending counted as free)
        self.quota_short = {} if pool is None else {
            i: job.total_gpus - max(0, book.free[i] + book.pending[i] - book.reserved[i])
            for i in book.ids(job)}
        self.quota_freed: dict[int, int] = defaultdict(int)
        self.extra: dict[str, int] = defaultdict(int)
        self.nodes_ok = sum(1 for a in self.base.values() if a >= job.gpus)
        self.slots = 0

    def _gives(self, v: RunningJob) -> tuple[int, tuple[int, ...], tuple[str, ...]]:
        """(job slots, quotas, eligible nodes) where stopping `v` frees something for this job
        (it frees v.total_gpus in each of those quotas)."""
        job = self.job
        same_ns = v.namespace == job.namespace
        same_res = self.pool is not None and v.gpu_resource == job.gpu_resource
        nodes = (tuple(n for n in self.adm.placement_of.get(v.uid, ()) if n in self.base)
                 if same_res else ())
        quotas = (tuple(i for i in self.adm.quota.ids(v) if i in self.quota_short)
                  if same_ns and same_res else ())
        return int(same_ns), quotas, nodes

    def helps(self, v: RunningJob) -> bool:
        """Whether `v` frees something still missing."""
        slots, quotas, nodes = self._gives(v)
        return bool((slots and self.slots < self.slots_needed)
                    or any(self.quota_freed[i] < self.quota_short[i] for i in quotas)
                    or (nodes and self.nodes_ok < self.job.nodes))

    def _apply(self, v: RunningJob, sign: int) -> None:
        slots, quotas, nodes = self._gives(v)
        self.slots += sign * slots
        for i in quotas:
            self.quota_freed[i] += sign * v.total_gpus
        for n in nodes:
            before = self.base[n] + self.extra[n] >= self.job.gpus
            self.extra[n] += sign * v.gpus
            after = self.base[n] + self.extra[n] >= self.job.gpus
            self.nodes_ok += int(after) - int(before)

    def add(self, v: RunningJob) -> None:
        self._apply(v, +1)

    def remove(self, v: RunningJob) -> None:
        self._apply(v, -1)

    def can_remove(self, v: RunningJob) -> bool:
        self.remove(v)
        ok = self.ok()
        self.add(v)
        return ok

    def ok(self) -> bool:
        return (self.slots >= self.slots_needed
                and all(self.quota_freed[i] >= short for i, short in self.quota_short.items())
                and (self.pool is None or self.nodes_ok >= self.job.nodes))


def admit(snapshot: Snapshot, now: datetime) -> PolicyResult:
    """Which queued jobs to admit, which running jobs to preempt, and why the rest wait.

    Pure and deterministic: the same snapshot and `now` give the same decisions, whatever the
    order of the input sequences. See the module docstring for the policy.
    """
    return _Admitter(snapshot, now).run(snapshot.queued)


class Walk:
    """The admitter's state after a walk (``admit_kept``), kept so that a job arriving later
    can be considered after the walk without walking again (``jobs/decide.py``'s quiet
    rounds). Only sound while the walk is ``quiet()``: every job it left waiting is held by
    its own namespace (quota or job limit) and nothing is stopping, reserved or claimed, so a
    job admitted into free GPUs and free quota of another namespace changes no other verdict."""

    def __init__(self, adm: _Admitter) -> None:
        self._adm = adm
        self.policy = adm.policy
        self.quotas: tuple[Quota, ...] = tuple(adm.quota.quotas)

    def quiet(self) -> bool:
        a = self._adm
        return (not a.preempted and not a.stopping
                and all(p.reservations == 0 and p.pending_total == 0 for p in a.pools.values())
                and not any(a.quota.reserved) and not any(a.quota.pending)
                and all(not w.reserved and w.code in (WaitCode.QUOTA, WaitCode.NAMESPACE_LIMIT)
                        for w in a.waiting))

    def waiting_namespaces(self) -> set[str]:
        return {w.job.namespace for w in self._adm.waiting}

    def placement(self, uid: str) -> tuple[str, ...] | None:
        """The nodes the walk counts a running or admitted job on."""
        got = self._adm.placement_of.get(uid)
        if got is not None:
            return got
        return next((a.placement for a in self._adm.admitted if a.job.uid == uid), None)

    def quota_free(self) -> list[int]:
        """Per quota (``quotas``' order): what the walk left free."""
        return list(self._adm.quota.free)

    def quota_ids(self, job: SnapshotJob) -> tuple[int, ...]:
        return self._adm.quota.ids(job)

    def consider(self, job: QueuedJob) -> Admission | None:
        """One more waiting job after the walk: its admission when it fits now. None: it
        does not, and the state is spent (the caller decides afresh)."""
        a = self._adm
        n = len(a.admitted)
        a.consider(job)
        if len(a.admitted) > n:
            return a.admitted[n]
        return None


def admit_kept(snapshot: Snapshot, now: datetime) -> tuple[PolicyResult, Walk]:
    """``admit()``, and the state its walk left (``Walk``)."""
    adm = _Admitter(snapshot, now)
    return adm.run(snapshot.queued), Walk(adm)
