"""One scheduling cycle (leader only): the caches' view -> the admitter's decisions -> for each
job that is due, its steps in guards (plan, write kind, next timer, metrics sample) -> the
plans, handed to the executor. Also the queue view the visibility endpoint serves.

1. the admitter (``admission/seam.py``; the native policy today) decides over the cached view;
2. ``reconcile.plan()`` (the pure state machine) runs for the jobs that are dirty, whose
   decision changed, or whose timer is due (retry, pods-ready timeout, deadline, a coalesced
   write);
3. the executor runs the plans' writes (``executor.py``).

A job whose data one per-job step cannot process gets an InvalidData condition and sits out
of scheduling until it changes; every other job goes on.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_api.job import FineTuneJob
from finetune_api.server import ModelServer
from finetune_api.status import FineTuneJobStatus
from finetune_api.times import parse_time
from finetune_operator import metrics
from finetune_operator.admission import Admitter, ClusterView, JobVerdict
from finetune_operator.jobs.children import Children
from finetune_operator.jobs.decide import policy_error, problem
from finetune_operator.jobs.executor import Executor, Timers, Work
from finetune_operator.jobs.feeds import Feeds, JobEntry
from finetune_operator.jobs.pods import INVALID_DATA, Pod, set_invalid_data
from finetune_operator.jobs.ports import Clock
from finetune_operator.jobs.reconcile import Ctx, Plan, due_at, plan, wants_admission
from finetune_operator.jobs.writes import Change, classify
from finetune_operator.kube.client import api_message
from finetune_operator.kueue.sync import WorkloadSync
from finetune_operator.reports.model import ProgressReport
from finetune_operator.serving.runner import ServingRunner
from finetune_operator.settings import OperatorSettings
from finetune_operator.sweep.runner import SweepRunner

log = logging.getLogger("finetune_operator")


class JobDataError(Exception):
    """A per-job step of the cycle could not process this job's data."""

    def __init__(self, step: str, problem: str) -> None:
        super().__init__(problem)
        self.step, self.problem = step, problem


# steps after the admission policy: a job failing one sits out of it until it plans again
# (the policy and the metrics sample see every job every cycle: their problems clear there)
HELD_STEPS = frozenset({"plan", "write", "deadline"})


def sample(job: FineTuneJob, st: FineTuneJobStatus) -> dict[str, Any]:
    """One job's row of the queue metrics (metrics.observe_queue)."""
    phase = st.phase or "Queued"
    since = parse_time(st.queued_since) if phase == "Queued" else None
    return {"namespace": job.metadata.namespace, "name": job.metadata.name, "phase": phase,
            "priority_class": st.effective_priority_class or "",
            "gpus": job.spec.resources.total_gpus,
            "queued_since": since.timestamp() if since else None,
            "eval": {k: v for k, v in st.output.metrics.items() if k in metrics.EVAL_METRICS}
            if st.output else {}}


class Cycle:
    def __init__(self, settings: OperatorSettings, clock: Clock, feeds: Feeds,
                 admitter: Admitter, executor: Executor, children: Children, timers: Timers,
                 sweeps: SweepRunner, may_write: Callable[[], bool],
                 wake: Callable[[], None], workloads: WorkloadSync | None = None,
                 serving: ServingRunner | None = None) -> None:
        self.settings, self.clock, self.feeds, self.admitter = settings, clock, feeds, admitter
        self.serving = serving  # ModelServers (serving/), when settings.cycle.serving
        self.workloads = workloads  # admission mode kueue: the jobs' Workloads kept in step
        self.executor, self.children, self.timers = executor, children, timers
        self.sweeps, self.may_write, self.wake = sweeps, may_write, wake
        self._lock = threading.Lock()
        self.count = 0  # cycles completed
        self._last_decision: dict[str, JobVerdict] = {}
        # jobs whose data a per-job step could not process: uid -> (step, problem); after a
        # step of the plan, the job sits out of the admission policy until it plans again
        self._invalid: dict[str, tuple[str, str]] = {}
        self._sweep_retry_at = 0.0
        self.queue_view: dict[str, list[dict[str, Any]]] = {}
        self._held: set[str] = set()  # the jobs the last cycle left out of the admitter's view
        self.quiet = False  # the last admission round decided only what changed
        # each job's metrics row, with the object it was sampled from; a cycle visits only the
        # jobs that may have changed (``_visit``) and keeps every other row
        self._rows: dict[str, tuple[FineTuneJob | None, dict[str, Any]]] = {}
        self._resample: set[str] = set()  # sampled from a plan's status: sampled again
        self._observed: tuple[int, dict[str, float]] | None = None  # rows version, quotas
        self._rows_version = 0
        self.visited = 0  # jobs the last cycle looked at (its per-job steps)

    def _forget(self, uid: str) -> None:
        self._last_decision.pop(uid, None)
        self._drop_row(uid)
        self._resample.discard(uid)
        with self._lock:
            self._invalid.pop(uid, None)
        self.timers.forget(uid)
        self.children.forget(uid)
        self.executor.forget(uid)
        if self.workloads is not None:
            self.workloads.forget(uid)

    def run(self, now: dt.datetime) -> None:
        """One cycle at ``now``: decide, plan what is due, execute (the writes that move GPUs
        landed when it returns; status-only writes may still be in flight)."""
        feeds = self.feeds
        inflight = self.executor.inflight()
        got = feeds.take(inflight)
        for uid in got.gone:
            self._forget(uid)
        by_uid: dict[str, JobEntry] = feeds.jobs.snapshot()
        entries = by_uid.values()
        with self._lock:  # a job whose plan failed holds no decision that others wait on
            invalid = dict(self._invalid)
        held = {uid for uid, (step, _) in invalid.items() if step in HELD_STEPS}
        # for the admitter's quiet rounds: every job whose object, pods or place in the view
        # may differ from the previous view's
        changed = frozenset(got.dirty | got.written | inflight | got.gone
                            | (held ^ self._held))
        self._held = held
        jobs = [e.job for e in entries if e.job is not None and e.uid not in held]
        classes = dict(feeds.classes.items())
        ours = [p for ps in got.pods_by_uid.values() for p in ps]
        kueue = self.workloads is not None
        servers = feeds.servers.values() if self.serving is not None else []
        server_pods = feeds.pods_by_server() if servers else {}
        # native: each server as an entry of the policy's snapshot; kueue: the servers, each
        # admitted by its own Workload (kueue/admitter.py)
        server_subjects: list[ModelServer] = []
        server_entries: list[Any] = []
        if self.serving is not None and servers and kueue:
            server_subjects = self.serving.subjects(servers)
            server_entries = list(server_subjects)
        elif self.serving is not None and servers:
            server_entries = list(self.serving.entries(servers, server_pods, classes, now))
        decisions = self.admitter.decide(ClusterView(
            jobs=jobs, pods_by_uid=got.pods_by_uid, classes=classes, nodes=feeds.nodes.values(),
            active_pods=feeds.usage.values() + ours, quotas=feeds.quotas.values(),
            workloads=dict(feeds.workloads.items()) if kueue else {},
            flavors=dict(feeds.flavors.items()) if kueue else {},
            shared_gpus=[g for gs in feeds.shared_gpus.values() for g in gs],
            claim_uses=[u for us in feeds.claims.values() for u in us],
            servers=server_entries, changed=changed, capacity_changed=got.capacity_changed,
            quotas_changed=got.quotas_changed,
            job_by_uid=lambda uid: None if uid in held or (e := by_uid.get(uid)) is None
            else e.job), now)
        metrics.count_admission_round(decisions.full)
        self.quiet = decisions.full is None
        epoch = now.timestamp()
        todo = set(got.dirty)
        last = self._last_decision
        for uid, d in decisions.by_uid.items():
            if (prev := last.get(uid)) is not d:  # quiet rounds reuse verdicts
                if prev == d:
                    last[uid] = d  # the same verdict: compared by identity next time
                else:
                    todo.add(uid)
        todo |= self.timers.take_due(epoch, inflight)
        # a waiting job the policy admits now: its queued status write (not started) yields
        inflight -= self.executor.overtake({uid for uid in todo & inflight
                                            if (v := decisions.by_uid.get(uid)) and v.admit})
        todo -= inflight  # planned again once its write landed (it stays dirty until then)
        if (got.capacity_changed or got.quotas_changed) and self.count == 0:
            todo |= {e.uid for e in entries}
        # every job whose plan, row or InvalidData state may differ from the last cycle's
        visit = (todo | got.dirty | got.written | inflight | self._resample
                 | invalid.keys() | decisions.invalid.keys())
        self._resample = set()
        rows = self._rows
        work: list[Work] = []
        self.visited = 0
        for e in entries:
            if e.uid not in visit:
                continue
            self.visited += 1
            if e.job is None:
                self._drop_row(e.uid)
                if e.uid in todo and not e.failed:
                    self.executor.reject(e, now)
                continue
            job, uid = e.job, e.uid
            try:  # every per-job step: a job whose data fails one is left out of this cycle
                if (bad := decisions.invalid.get(uid)) is not None:
                    raise JobDataError(*bad)
                pl, change, row = self._job_steps(
                    job, decisions.get(uid, JobVerdict()) if uid in todo else None,
                    got.pods_by_uid.get(uid, []), got.reports.get(uid), classes, now)
            except JobDataError as bad:
                self._drop_row(uid)
                if (left := self._left_out(job, bad, now)) is not None:
                    work.append(left)
                continue
            if pl is not None:
                work.append((job, pl, change))
                self._resample.add(uid)  # its row is the plan's: the stored status's next
            kept = rows.get(uid)
            rows[uid] = (job if pl is None else None, row)  # None: never reused as is
            if kept is None or (kept[1] is not row and kept[1] != row):
                self._rows_version += 1
            if uid in invalid and (pl is not None or uid not in held):  # processed again
                with self._lock:
                    self._invalid.pop(uid, None)
                if pl is None:  # planned next cycle: its InvalidData condition clears
                    feeds.mark_dirty(uid)
                    self.wake()
        for uid in [u for u in visit if u in rows and u not in by_uid]:
            self._drop_row(uid)  # gone between the feeds' take and the snapshot
        observed = (self._rows_version, decisions.quotas)
        if observed != self._observed:  # the gauges change only with a row or a quota
            metrics.observe_queue({"jobs": [row for _, row in rows.values()],
                                   "quotas": decisions.quotas})
            self._observed = observed
        self.queue_view = decisions.queue_view
        self.executor.execute_all(work, now)
        if self.workloads is not None and self.may_write():
            self.workloads.sync(jobs, got.pods_by_uid, classes, now)
        self._sync_sweeps(feeds.jobs.values(), now)  # after this cycle's writes landed
        if self.serving is not None and servers and self.may_write():
            # the same verdicts; servers deleted since are simply absent
            self.serving.sync(servers, server_pods, jobs, decisions.by_uid, classes, now)
        if self.workloads is not None and self.serving is not None and self.may_write():
            self.workloads.sync_servers(server_subjects, server_pods, classes, now)
        self.count += 1

    def _drop_row(self, uid: str) -> None:
        """The job has no metrics row (not parsed, or left out of this cycle)."""
        if self._rows.pop(uid, None) is not None:
            self._rows_version += 1

    def _sync_sweeps(self, entries: list[JobEntry], now: dt.datetime) -> None:
        """Sweeps create their trials as ordinary FineTuneJobs (sweep/): only when a sweep or
        one of its trials changed."""
        if self.clock.monotonic() < self._sweep_retry_at:
            return
        dirty = self.feeds.take_sweeps_dirty()
        sweeps = self.feeds.sweeps.values()
        if not dirty:
            return
        if not sweeps:  # the last sweep is gone: so are its series
            metrics.observe_sweeps([])
            return
        trials = [e.trial for e in entries if e.trial is not None]
        try:
            self.sweeps.sync(sweeps, trials, now)
        except (ApiException, OSError) as e:
            text = api_message(e) if isinstance(e, ApiException) else str(e)
            log.warning("sweeps: %s; retrying in 10s", text or e)
            self._sweep_retry_at = self.clock.monotonic() + 10.0
            self.feeds.mark_sweeps_dirty()

    def _timing(self) -> dict[str, float]:
        s = self.settings
        out = {"pods_ready_timeout": s.cycle.pods_ready_timeout_seconds,
               "force_delete_margin": s.cycle.force_delete_margin_seconds,
               "unschedulable_grace": s.cycle.unschedulable_grace_seconds}
        if s.cycle.ttl_seconds_after_finished is not None:  # absent: finished jobs are kept
            out["ttl"] = float(s.cycle.ttl_seconds_after_finished)
        return out

    def _job_steps(self, job: FineTuneJob, decision: JobVerdict | None, pods: list[Pod],
                   seen: tuple[int, ProgressReport] | None, classes: dict[str, int],
                   now: dt.datetime) -> tuple[Plan | None, Change, dict[str, Any]]:
        """One job's part of the cycle (a plan only when ``decision`` is given: the job is
        due): its plan, which write it needs, its next timer, its metrics sample. Raises
        JobDataError naming the step that failed; nothing of the job is kept then."""
        step, pl, change, due, status = "plan", None, Change.NONE, None, job.status
        try:
            if decision is not None:
                self._last_decision[job.metadata.uid] = decision
                pl = self._plan(job, pods, decision, seen, classes, now)
                set_invalid_data(pl.status, None, now, job.metadata.generation)
                step = "write"
                change = self.executor.write_kind(job, pl, now.timestamp())
                step = "deadline"
                due = due_at(job, pl.status, pods, self._timing(), now)
                status = pl.status
            step = "metrics"
            if pl is None and (kept := self._rows.get(job.metadata.uid)) is not None \
                    and kept[0] is job:
                row = kept[1]
            else:
                row = sample(job, status)
        except Exception as e:
            raise JobDataError(step, problem(step, e)) from e
        if due is not None:
            self.timers.schedule(job.metadata.uid, due.timestamp())
        return pl, change, row

    def _left_out(self, job: FineTuneJob, bad: JobDataError, now: dt.datetime) -> Work | None:
        """A job whose data a step could not process: counted and logged once per problem,
        and its InvalidData condition with a Warning Event (written only when the stored
        condition differs: once per problem, also across restarts)."""
        uid, step, text = job.metadata.uid, bad.step, bad.problem
        with self._lock:
            new = self._invalid.get(uid) != (step, text)
            self._invalid[uid] = (step, text)
        self._last_decision.pop(uid, None)  # decided afresh once it can be
        if new:
            metrics.count_invalid_data(job.metadata.namespace, step)
            metrics.count_cycle_error("job")
            log.error("FineTuneJob %s: %s; left out of scheduling until it changes, every "
                      "other job goes on", job.key, text, exc_info=bad.__cause__)
        try:
            st = job.status.model_copy(deep=True)
            set_invalid_data(st, text, now, job.metadata.generation)
            said = next(c.message for c in st.conditions if c.type == INVALID_DATA)
            change = classify(job.status.to_wire(), st.to_wire())
        except Exception:  # not even the condition can be written: the log says it
            if new:
                log.exception("FineTuneJob %s: could not write its InvalidData condition",
                              job.key)
            return None
        if not change:
            return None
        return job, Plan(status=st, events=[("Warning", INVALID_DATA, said)]), change

    def _plan(self, job: FineTuneJob, pods: list[Pod], decision: JobVerdict,
              seen: tuple[int, ProgressReport] | None, classes: dict[str, int],
              now: dt.datetime) -> Plan:
        s = self.settings
        cls, err = policy_error(job, s, classes)
        check = wants_admission(job, now) or job.status.phase is None
        ctx = Ctx(now=now, backoff_seconds=s.backoff_seconds(job.status.failures + 1),
                  priority_class=cls, policy_error=err if check else None,
                  watched_report=seen[1] if seen and seen[0] == job.status.attempt else None,
                  create_error=self.children.create_error(job.metadata.uid, job.status.attempt),
                  node_ready=self.feeds.node_ready,
                  pods_ready_timeout_seconds=s.cycle.pods_ready_timeout_seconds,
                  max_start_requeues=s.cycle.max_pods_ready_requeues,
                  force_delete_margin_seconds=s.cycle.force_delete_margin_seconds,
                  unschedulable_grace_seconds=s.cycle.unschedulable_grace_seconds,
                  max_gpus_per_node=s.admission.max_gpus_per_node,
                  ttl_seconds_after_finished=s.cycle.ttl_seconds_after_finished)
        return plan(job, pods, decision, ctx)
