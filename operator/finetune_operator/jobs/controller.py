"""The FineTuneJob controller: the composition of its parts, wired by constructor arguments.

- ``lease.py``: leadership (the Lease on its own timer) and fencing (``may_write``);
- ``feeds.py``: the watch caches, the pod index, dirty tracking, report intake;
- ``cycle.py``: one scheduling cycle (the admitter's decisions -> per-job plans);
- ``executor.py``: the plans' writes (coalescing, two pools, retries, outcome metrics);
- ``children.py``: creating an attempt's children.

This module runs them: the lease thread, and the cycle thread (leader only, debounced by
``debounce()``, woken by a change or by the first due timer; a new job after a quiet admission
round is decided at once).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import threading
from typing import Any

from finetune_api.trainer_config import ReportConfig
from finetune_operator import metrics
from finetune_operator.admission import Admitter
from finetune_operator.heap import Heap
from finetune_operator.jobs.children import Children
from finetune_operator.jobs.cycle import Cycle
from finetune_operator.jobs.decide import NativeAdmitter
from finetune_operator.jobs.executor import Executor, Timers
from finetune_operator.jobs.feeds import Feeds, OnTermination
from finetune_operator.jobs.lease import LEASE_NAME, Fence, Leadership
from finetune_operator.jobs.ports import Clock, JobKube, SystemClock
from finetune_operator.kube import cache
from finetune_operator.kueue.admitter import KueueAdmitter
from finetune_operator.kueue.sync import WorkloadSync
from finetune_operator.serving.runner import ServingRunner
from finetune_operator.serving.runtime import HttpRuntime
from finetune_operator.settings import OperatorSettings
from finetune_operator.slim import SlimPod
from finetune_operator.sweep.runner import SweepRunner

__all__ = ["LEASE_NAME", "Controller", "Fence"]

log = logging.getLogger("finetune_operator")


def debounce(last_start: float, now: float, interval: float, arrived: bool) -> float:
    """Seconds to wait before the next cycle: a burst of watch events makes one cycle at most
    every ``interval`` (min_cycle_interval_seconds; more cycles would not decide better, and
    would rewrite wait reasons more often), except for a new job that a quiet round decides
    (``arrived``), at once."""
    if arrived:
        return 0.0
    return max(0.0, last_start + interval - now)


class Controller:
    """``report_config`` goes into every trainer config (the report channel's URL and CA);
    ``on_termination`` is told about a termination message that breaks the model (the report
    channel's rejections count and log it once per pod); ``admitter`` decides admission (the
    native policy unless another is given); ``fence`` is the one ``kube`` was built with
    (``Kube(fence=fence.may_write)``): the Lease moves it, every write checks it."""

    def __init__(self, kube: JobKube, settings: OperatorSettings, namespace: str | None = None,
                 identity: str | None = None, *, clock: Clock | None = None,
                 report_config: ReportConfig | None = None,
                 on_termination: OnTermination = lambda pod_key, bad: None,
                 admitter: Admitter | None = None, fence: Fence | None = None) -> None:
        self.kube, self.settings = kube, settings
        self.clock: Clock = clock or SystemClock()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self.heap = Heap()  # the loop's full garbage collections stay short (heap.py)
        self.lease = Leadership(
            kube, settings, self.clock,
            namespace or os.environ.get("POD_NAMESPACE", "default"),
            # stable across restarts of the same pod, so a restarted leader re-acquires at once
            identity or os.environ.get("POD_NAME") or socket.gethostname(),
            on_change=self._leadership_changed, fence=fence)
        self.timers = Timers()
        self.feeds = Feeds(kube, settings, self._wake.set, on_termination,
                           on_impostor=self._warn_impostor, may_write=self.lease.may_write)
        self.children = Children(kube, settings, self.feeds, report_config, self._wake.set)
        self.executor = Executor(kube, settings, self.clock, self.feeds, self.children,
                                 self.timers, self.lease.may_write, self._wake.set)
        kueue = settings.admission.admission_mode == "kueue"
        if admitter is None:
            admitter = KueueAdmitter(settings) if kueue else NativeAdmitter(settings)
        workloads = WorkloadSync(kube, settings, self.feeds.workloads.get,
                                 self.clock.monotonic) if kueue else None
        serving = ServingRunner(kube, HttpRuntime(), settings,
                                on_created_pod=self.feeds.created_server_pod) \
            if settings.cycle.serving else None
        self.cycle = Cycle(settings, self.clock, self.feeds, admitter,
                           self.executor, self.children, self.timers, SweepRunner(kube),
                           self.lease.may_write, self._wake.set, workloads, serving)
        self.last_cycle: float | None = None  # monotonic end of the last completed cycle
        self._threads: list[threading.Thread] = []

    def _leadership_changed(self, held: bool) -> None:
        self.feeds.mark_capacity_changed()
        self._wake.set()

    def _warn_impostor(self, pod: SlimPod) -> None:
        self.executor.warn_impostor(pod)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        self.feeds.start()
        for target, name in ((self._lease_loop, "lease"), (self._run, "cycle")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stop.set()
        self.feeds.stop_event.set()
        self._wake.set()
        for t in self._threads:
            t.join(timeout=10)
        self.executor.shutdown()
        self.lease.release()

    def wake(self) -> None:
        self._wake.set()

    @property
    def leader(self) -> bool:
        return self.lease.leader

    @property
    def cycles(self) -> int:
        return self.cycle.count

    @property
    def queue_view(self) -> dict[str, list[dict[str, Any]]]:
        return self.cycle.queue_view

    def may_write(self) -> bool:
        return self.lease.may_write()

    def idle(self) -> bool:
        """No job waits to be planned (every change seen was planned)."""
        return not self.feeds.pending

    def healthy(self) -> bool:
        """False when this leader has completed no cycle for ``health_stale_cycles`` periods."""
        if not self.lease.leader:
            return True
        s, now = self.settings, self.clock.monotonic()
        limit = s.endpoints.health_stale_cycles * s.cycle.admission_interval_seconds
        started = self.lease.started_leading or now
        return now - (self.last_cycle or started) < limit + 30.0

    def ready(self) -> bool:
        """The watch caches are filled (a standby is ready too: it can take over at once)."""
        return self.feeds.synced()

    # ------------------------------------------------------------------ threads

    def _lease_loop(self) -> None:
        self.lease.run(self._stop)

    def _run(self) -> None:
        s, clock = self.settings, self.clock
        stores = self.feeds.scheduling_stores()
        while not self._stop.is_set():
            if cache.wait_synced(stores, 1.0):
                break
        last_start = 0.0
        while not self._stop.is_set():
            timeout = s.cycle.admission_interval_seconds
            first_due = self.timers.first()
            if first_due is not None:
                timeout = max(0.0, min(timeout, first_due - clock.time()))
            self._wake.wait(timeout)
            self._wake.clear()
            # a new job after a quiet round is decided at once (its round is cheap); in a burst
            # of creates, where rounds walk every job, cycles stay debounced
            pause = debounce(last_start, clock.monotonic(), s.cycle.min_cycle_interval_seconds,
                             self.feeds.take_arrived() and self.cycle.quiet)
            if pause > 0:
                self._stop.wait(pause)
            if self._stop.is_set() or not self.lease.may_write():
                continue
            last_start = clock.monotonic()
            try:
                self.run_cycle(clock.now())
                self.last_cycle = clock.monotonic()
            except Exception:  # one bad cycle must not kill the loop; the next one retries
                metrics.count_cycle_error("cycle")
                log.exception("scheduling cycle failed; retrying")
            metrics.observe_cycle(clock.monotonic() - last_start)
            self.heap.after_cycle()

    def run_cycle(self, now: dt.datetime) -> None:
        self.cycle.run(now)
