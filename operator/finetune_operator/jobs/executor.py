"""Executing the cycle's plans: which status writes are worth sending now (coalescing, the
queue-status token bucket), the writes themselves (status first, then children, deletions,
Events) on two thread pools, the jobs with a write in flight, retries with backoff, and the
metrics of each plan's outcomes once its writes landed."""

from __future__ import annotations

import datetime as dt
import functools
import logging
import os
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor, wait
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_api.job import FineTuneJob
from finetune_api.times import parse_time, rfc3339
from finetune_operator import metrics
from finetune_operator.jobs import ownership
from finetune_operator.jobs.children import Children, child_body
from finetune_operator.jobs.decide import problem
from finetune_operator.jobs.feeds import Feeds, JobEntry, job_entry
from finetune_operator.jobs.pods import Pod
from finetune_operator.jobs.ports import Clock, JobKube
from finetune_operator.jobs.reconcile import Outcome, OutcomeKind, Plan
from finetune_operator.jobs.writes import Change, classify, merge_patch
from finetune_operator.kube import client as k8s
from finetune_operator.settings import OperatorSettings

log = logging.getLogger("finetune_operator")

Work = tuple[FineTuneJob, Plan, Change]


class Timers:
    """job uid -> the epoch second at which it is planned again (retries, coalesced writes,
    the state machine's own timers)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._due: dict[str, float] = {}

    def schedule(self, uid: str, at: float) -> None:
        with self._lock:
            cur = self._due.get(uid)
            if cur is None or at < cur:
                self._due[uid] = at

    def first(self) -> float | None:
        with self._lock:
            return min(self._due.values(), default=None)

    def take_due(self, epoch: float, skip: set[str]) -> set[str]:
        """The jobs due by ``epoch`` (not those in ``skip``: they stay scheduled)."""
        with self._lock:
            due = {u for u, t in self._due.items() if t <= epoch and u not in skip}
            for u in due:
                del self._due[u]
            return due

    def forget(self, uid: str) -> None:
        with self._lock:
            self._due.pop(uid, None)


class Executor:
    def __init__(self, kube: JobKube, settings: OperatorSettings, clock: Clock, feeds: Feeds,
                 children: Children, timers: Timers, may_write: Callable[[], bool],
                 wake: Callable[[], None]) -> None:
        self.kube, self.settings, self.clock, self.feeds = kube, settings, clock, feeds
        self.children, self.timers = children, timers
        self.may_write, self.wake = may_write, wake
        self._lock = threading.Lock()
        self.pool = ThreadPoolExecutor(settings.cycle.max_concurrent_writes,
                                       thread_name_prefix="write")
        self.background = ThreadPoolExecutor(max(1, settings.cycle.max_concurrent_writes // 2),
                                             thread_name_prefix="write-status")
        self._inflight: set[str] = set()  # jobs with a write in flight
        self._queued: dict[str, Future[bool]] = {}  # waiting jobs' background status writes
        self._pending: set[Future[Any]] = set()
        self._last_write: dict[tuple[str, Change], float] = {}
        self._failures: dict[str, int] = {}  # consecutive execution errors per job
        self._metric_errors: dict[str, str] = {}  # recording a job's metrics failed: logged once
        # queue-text writes of all waiting jobs together (a token bucket, 10 s of burst)
        self._queue_tokens = settings.cycle.queue_status_writes_per_second * 10
        self._queue_tokens_at = clock.time()

    def shutdown(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        self.background.shutdown(wait=True, cancel_futures=True)

    def drain(self, timeout: float = 10.0) -> None:
        """Wait until every write submitted so far landed, and the Events those writes handed
        to the background writer (tests: the next cycle sees them)."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                pending = list(self._pending)
            if not pending:
                return
            _, not_done = wait(pending, max(0.0, deadline - time.monotonic()))
            assert not not_done, f"writes still in flight after {timeout}s: {self.inflight()}"

    def inflight(self) -> set[str]:
        with self._lock:
            return set(self._inflight)

    def forget(self, uid: str) -> None:
        with self._lock:
            self._failures.pop(uid, None)
            self._metric_errors.pop(uid, None)
            for ch in Change:
                self._last_write.pop((uid, ch), None)

    # ------------------------------------------------------------------ coalescing

    def write_kind(self, job: FineTuneJob, pl: Plan, epoch: float) -> Change:
        """MATERIAL/NONE pass through; coalesced kinds wait for their interval (a timer)."""
        s, uid = self.settings, job.metadata.uid
        change = classify(job.status.to_wire(), pl.status.to_wire())
        if change in (Change.NONE, Change.MATERIAL):
            return change
        interval = (s.cycle.progress_write_interval_seconds if change == Change.PROGRESS
                    else s.cycle.queue_status_interval_seconds)
        last = self._last_write.get((uid, change))
        if last is not None and epoch - last < interval:
            self.timers.schedule(uid, last + interval)
            return Change.NONE
        if change == Change.QUEUE:  # and all waiting jobs together: a token bucket
            rate = s.cycle.queue_status_writes_per_second
            self._queue_tokens = min(rate * 10, self._queue_tokens
                                     + (epoch - self._queue_tokens_at) * rate)
            self._queue_tokens_at = epoch
            if self._queue_tokens < 1:
                self.timers.schedule(uid, epoch + max(1.0, 1 / rate) + (hash(uid) % 100) / 100)
                return Change.NONE
            self._queue_tokens -= 1
        return change

    # ------------------------------------------------------------------ execute

    def execute_all(self, work: list[Work], now: dt.datetime) -> None:
        """Writes that change who holds GPUs (admissions, stops, deletions, phase changes of
        running jobs) run now, and the cycle waits for them: the next cycle decides on their
        result. They run in two waves: every status of the cycle first (the decisions, one
        patch each), then the children and deletions of the jobs whose status landed, so a
        burst of admissions is recorded at the rate of status patches, not of pod creates
        (each job keeps its order: status, then children). Status-only writes of waiting jobs
        (their first Queued status, a new wait reason) and every plan's Events go to a
        background pool and do not hold the next cycle back; a job with a write in flight is
        not planned again until it lands."""
        now_work: list[Work] = []
        for job, pl, change in work:
            if not (change or pl.create_attempt or pl.delete_pods or pl.force_delete_pods
                    or pl.delete_job):
                self.record(job, pl)
                continue
            with self._lock:
                self._inflight.add(job.metadata.uid)
            if (pl.status.phase == "Queued" and not pl.create_attempt and not pl.delete_pods
                    and not pl.force_delete_pods):
                fut = self._submit(self.background, job, self._write_all, pl, change, now)
                with self._lock:
                    if not fut.done():
                        self._queued[job.metadata.uid] = fut
            else:
                now_work.append((job, pl, change))
        firsts = [(w, self.pool.submit(self._guarded, self._write_status, *w, now))
                  for w in now_work]
        seconds = []
        for (job, pl, change), first in firsts:
            if first.result():  # its status landed (or it had none): its children follow
                seconds.append(self._submit(self.pool, job, self._write_children, pl,
                                            change, now))
            else:
                self._landed(job.metadata.uid)
        for f in seconds:
            f.result()

    def _submit(self, pool: ThreadPoolExecutor, job: FineTuneJob,
                step: Callable[[FineTuneJob, Plan, Change, dt.datetime], bool],
                pl: Plan, change: Change, now: dt.datetime) -> Future[bool]:
        """One job's last step: the job leaves ``_inflight`` once it landed."""
        fut = pool.submit(self._guarded, step, job, pl, change, now)
        self._track(fut, job.metadata.uid)
        return fut

    def _track(self, fut: Future[Any], uid: str | None) -> None:
        """``drain`` waits for ``fut`` until it is done; then ``uid`` (a job's last step, or
        None for its Events) leaves ``_inflight``."""
        with self._lock:  # its callback (under this lock) removes it once it landed
            if not fut.done():
                self._pending.add(fut)
        fut.add_done_callback(functools.partial(self._landed, uid))

    def overtake(self, uids: set[str]) -> set[str]:
        """The jobs among ``uids`` whose background status write has not started yet: it is
        cancelled and they are no longer in flight, so the cycle plans them now (their new
        plan is written against the stored status and supersedes it). A waiting job the
        policy admits never waits behind the queue texts of thousands of others, and its
        GPUs never go to a lower-priority job meanwhile."""
        with self._lock:
            queued = [(uid, self._queued.get(uid)) for uid in uids]
        return {uid for uid, fut in queued if fut is not None and fut.cancel()}

    def _landed(self, uid: str | None, done: Future[Any] | None = None) -> None:
        with self._lock:
            if done is not None:
                self._pending.discard(done)
            if uid is None:
                return
            self._inflight.discard(uid)
            if done is not None and self._queued.get(uid) is done:
                del self._queued[uid]
        if self.feeds.is_dirty(uid):
            self.wake()

    def _guarded(self, step: Callable[[FineTuneJob, Plan, Change, dt.datetime], bool],
                 job: FineTuneJob, pl: Plan, change: Change, now: dt.datetime) -> bool:
        """One step of a job's plan; True when it landed and the next step may follow."""
        uid = job.metadata.uid
        if not self.may_write():
            self.feeds.mark_dirty(uid)
            return False
        try:
            if not step(job, pl, change, now):
                return False
            with self._lock:
                self._failures.pop(uid, None)
            return True
        except ApiException as e:  # one job's trouble must not stall the others
            if e.status == 409:  # a newer object is on its way through the watch
                self.feeds.mark_dirty(uid)
                return False
            self.retry_later(uid)
            log.warning("FineTuneJob %s: %s %s; retrying with backoff", job.key, e.status,
                        k8s.api_message(e) or e.reason)
        except k8s.Fenced:  # the Lease lapsed mid-plan: whoever leads next plans it again
            self.feeds.mark_dirty(uid)
        except OSError as e:
            self.retry_later(uid)
            log.warning("FineTuneJob %s: %s; retrying with backoff", job.key, e)
        except Exception:
            metrics.count_cycle_error("job")
            self.retry_later(uid)
            if self._failures.get(uid) == 1:
                log.exception("FineTuneJob %s: executing the plan failed; retrying with "
                              "backoff", job.key)
        return False

    def _write_all(self, job: FineTuneJob, pl: Plan, change: Change, now: dt.datetime) -> bool:
        return (self._write_status(job, pl, change, now)
                and self._write_children(job, pl, change, now))

    def _write_status(self, job: FineTuneJob, pl: Plan, change: Change,
                      now: dt.datetime) -> bool:
        """The plan's status patch (none: nothing to do); False when the job is gone."""
        if not change:
            return True
        ns, name, uid = job.metadata.namespace, job.metadata.name, job.metadata.uid
        entry = self.feeds.jobs.get(uid)
        res = self.kube.patch_job_status(ns, name, merge_patch(job.status.to_wire(),
                                                               pl.status.to_wire()),
                                         entry.rv if entry is not None else None)
        if res is None:
            return False  # deleted meanwhile
        written = job_entry(res)  # see our own write before the watch does; no replan:
        self.feeds.jobs.put(uid, written, notify=False,  # this status is what was planned
                            part=self.feeds.part(ns))
        self.feeds.wrote(uid)
        if written.trial is not None:
            self.feeds.mark_sweeps_dirty()
        at = now.timestamp()
        with self._lock:
            self._last_write[(uid, change)] = at
            if change == Change.MATERIAL:  # a material write carries progress and queue
                self._last_write[(uid, Change.PROGRESS)] = at
                self._last_write[(uid, Change.QUEUE)] = at
        failpoint("after-status-patch", pl.status.phase)
        return True

    def _write_children(self, job: FineTuneJob, pl: Plan, change: Change,
                        now: dt.datetime) -> bool:
        """After the status: children, pod and job deletions; the Events in the background
        (they change no decision); then the plan's metrics."""
        k, ns, name, uid = self.kube, job.metadata.namespace, job.metadata.name, job.metadata.uid
        if pl.create_attempt is not None:
            self.children.create(job, pl)
        for pod in pl.delete_pods:
            k.delete_pod(ns, pod["metadata"]["name"], pod["metadata"].get("uid"))
        for pod in pl.force_delete_pods:
            log.warning("FineTuneJob %s: force-deleting pod %s stuck terminating on a lost "
                        "node", job.key, pod["metadata"]["name"])
            k.delete_pod(ns, pod["metadata"]["name"], pod["metadata"].get("uid"), 0)
        if pl.delete_job:
            k.delete_job(ns, name, uid)
        if pl.events:
            self._track(self.background.submit(self._events, job, pl.events, now), None)
        self.record(job, pl)
        return True

    def _events(self, job: FineTuneJob, events: list[tuple[str, str, str]],
                now: dt.datetime) -> None:
        body = child_body(job)
        try:
            for type_, reason, message in events:
                self.kube.event(body, type_, reason, message, now)
        except (ApiException, OSError, k8s.Fenced) as e:  # an Event is not worth a retry
            log.warning("FineTuneJob %s: an Event was not written: %s", job.key, e)

    def retry_later(self, uid: str) -> None:
        """After an API error or an exception for one job: plan it again with backoff
        (0.5 s doubling to 60 s), not every cycle; others are not affected."""
        with self._lock:
            n = self._failures.get(uid, 0)
            self._failures[uid] = n + 1
        self.timers.schedule(uid, self.clock.time() + min(60.0, 0.5 * 2 ** n))
        self.wake()

    def reject(self, e: JobEntry, now: dt.datetime) -> None:
        """An object the models cannot read fails once, naming the fields."""
        if not self.may_write():
            return
        self.pool.submit(self._reject, e, now)

    def _reject(self, e: JobEntry, now: dt.datetime) -> None:
        meta = e.raw_meta or {}
        msg = f"FineTuneJob {meta.get('namespace')}/{meta.get('name')}: invalid spec: {e.error}"
        log.error(msg)
        try:
            self.kube.patch_job_status(str(meta.get("namespace")), str(meta.get("name")), {
                "phase": "Failed", "conditions": [{
                    "type": "Failed", "status": "True", "reason": "InvalidSpec",
                    "message": msg, "lastTransitionTime": rfc3339(now)}]})
            self.kube.event({"metadata": meta}, "Warning", "InvalidSpec", msg, now)
        except (ApiException, OSError) as ex:
            log.warning("could not mark %s Failed: %s", meta.get("name"), ex)

    def warn_impostor(self, pod: Pod) -> None:
        """A Warning Event on the impostor in its own namespace, naming no job: the job it
        names may be another tenant's."""
        meta = pod["metadata"]
        log.warning("pod %s/%s is not a trainer pod this operator created for the job its "
                    "owner reference names; ignored", meta.get("namespace"), meta["name"])
        self.background.submit(self.kube.event, pod, "Warning", ownership.IMPOSTOR_REASON,
                               ownership.IMPOSTOR_MESSAGE, self.clock.now(), kind="Pod")

    # ------------------------------------------------------------------ metrics

    def record(self, job: FineTuneJob, pl: Plan) -> None:
        """Recorded after the job's writes (and for the no-write plans, in the cycle): a job
        whose metrics cannot be recorded is counted and logged once; its writes stand."""
        try:
            record_outcomes(job, pl)
        except Exception as e:
            text, uid = problem("metrics", e), job.metadata.uid
            with self._lock:
                new = self._metric_errors.get(uid) != text
                self._metric_errors[uid] = text
            if new:
                metrics.count_invalid_data(job.metadata.namespace, "metrics")
                log.error("FineTuneJob %s: %s; its other metrics and writes go on", job.key,
                          text)


def record_outcomes(job: FineTuneJob, pl: Plan) -> None:
    """The plan's outcomes and the job's progress, into metrics.py."""
    ns, st = job.metadata.namespace, pl.status
    cls = st.effective_priority_class or ""
    for o in pl.outcomes:
        record_outcome(job, pl, o, cls)
    if st.progress is not None and st.phase in ("Running", "Admitted", "Preempting"):
        started = parse_time(st.start_time or st.admitted_at)
        metrics.set_job_progress(ns, job.metadata.name, st.progress, st.checkpoint,
                                 checkpoint_interval_steps=job.spec.checkpoint.interval_steps,
                                 started_at=started.timestamp() if started else None)
    elif st.phase in ("Succeeded", "Failed"):
        metrics.forget_job(ns, job.metadata.name)


def record_outcome(job: FineTuneJob, pl: Plan, o: Outcome, cls: str) -> None:
    ns = job.metadata.namespace
    match o.kind:
        case OutcomeKind.ADMISSION:
            metrics.observe_admission(ns, cls, o.wait_seconds)
        case OutcomeKind.PREEMPTION:
            metrics.count_preemption(ns, cls, o.reason)
        case OutcomeKind.FAILURE:
            metrics.count_failure(ns, o.reason)
        case OutcomeKind.COMPLETION:
            metrics.count_completion(ns)
        case OutcomeKind.LOST_WORK:
            prog = pl.status.progress
            left = (prog.total_steps or 0) - prog.step if prog else 0
            per_step = prog.eta_seconds / left if prog and prog.eta_seconds and left > 0 \
                else 0.0
            metrics.count_lost_work(ns, o.steps,
                                    o.steps * per_step * job.spec.resources.total_gpus)


def failpoint(where: str, phase: str | None) -> None:
    """Crash-test hook: FINETUNE_FAILPOINT=after-status-patch:Admitted makes the process die
    right after patching a status into that phase (before creating/deleting children), so the
    restart-safety tests can stop the operator at exactly that instant. With a ``:stop`` suffix
    the process SIGSTOPs itself there instead, once (the fencing test SIGCONTs it after another
    replica took over). Unset in production."""
    spec = os.environ.get("FINETUNE_FAILPOINT")
    if spec and spec == f"{where}:{phase}":
        log.error("failpoint %s reached: exiting", spec)
        os._exit(137)
    if spec and spec == f"{where}:{phase}:stop":
        log.error("failpoint %s reached: stopping (SIGSTOP)", spec)
        del os.environ["FINETUNE_FAILPOINT"]
        os.kill(os.getpid(), signal.SIGSTOP)
