"""What the benchmark's watches saw: pods per job (created, bound, Running; pods holding quota
per namespace and their maximum, sampled on every event) and each job's decision (ours: the
FineTuneJob's `Admitted` condition; Kueue: its Workload's) and unsuspend (Kueue's Job)."""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import Counter
from dataclasses import dataclass, field


@dataclass
class PodTrack:
    job_label: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    added: dict[str, float] = field(default_factory=dict)      # pod key -> first seen
    job_of: dict[str, str] = field(default_factory=dict)       # pod key -> ns/job
    running_at: dict[str, float] = field(default_factory=dict)  # pod key -> first Running
    running: set[str] = field(default_factory=set)              # Running now
    first_pod_of_job: dict[str, float] = field(default_factory=dict)
    bound_of_job: dict[str, float] = field(default_factory=dict)    # ns/job -> first pod bound
    running_of_job: dict[str, float] = field(default_factory=dict)  # ns/job -> first Running
    live: set[str] = field(default_factory=set)  # pods holding quota (not finished, not gone)
    max_live: dict[str, int] = field(default_factory=dict)      # namespace -> most at once
    max_running: dict[str, int] = field(default_factory=dict)   # namespace -> most Running
    _live_ns: Counter[str] = field(default_factory=Counter)
    _running_ns: Counter[str] = field(default_factory=Counter)

    def _set(self, members: set[str], counts: Counter[str], key: str, ns: str, on: bool) -> None:
        if on and key not in members:
            members.add(key)
            counts[ns] += 1
        elif not on and key in members:
            members.discard(key)
            counts[ns] -= 1

    def on_event(self, typ: str, pod: dict, t: float) -> None:
        md = pod["metadata"]
        key = f"{md['namespace']}/{md['name']}"
        job = md.get("labels", {}).get(self.job_label)
        ns = md["namespace"]
        phase = pod.get("status", {}).get("phase")
        with self.lock:
            if typ == "DELETED":
                self._set(self.running, self._running_ns, key, ns, False)
                self._set(self.live, self._live_ns, key, ns, False)
                return
            if key not in self.added:
                self.added[key] = t
                if job:
                    jk = f"{ns}/{job}"
                    self.job_of[key] = jk
                    self.first_pod_of_job.setdefault(jk, t)
            jk = self.job_of.get(key, "")
            if jk and (pod.get("spec") or {}).get("nodeName"):
                self.bound_of_job.setdefault(jk, t)
            self._set(self.live, self._live_ns, key, ns, phase not in ("Succeeded", "Failed"))
            running = phase == "Running" and not md.get("deletionTimestamp")
            self._set(self.running, self._running_ns, key, ns, running)
            if running:
                self.running_at.setdefault(key, t)
                if jk:
                    self.running_of_job.setdefault(jk, t)
            # the audit "never above quota": sampled on every pod event (1 GPU per pod)
            self.max_live[ns] = max(self.max_live.get(ns, 0), self._live_ns[ns])
            self.max_running[ns] = max(self.max_running.get(ns, 0), self._running_ns[ns])

    def n_running(self) -> int:
        with self.lock:
            return len(self.running)


@dataclass
class Decisions:
    """When each job was decided (ours: the FineTuneJob's `Admitted` condition, or a phase past
    it; Kueue: its Workload's `Admitted` condition) and, Kueue only, when its Job was
    unsuspended (`spec.suspend` false), keyed ns/job, first time seen on a watch."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    decided: dict[str, float] = field(default_factory=dict)
    unsuspended: dict[str, float] = field(default_factory=dict)
    # the API server's clock (epoch seconds, 1 s resolution): when the controller decided (its
    # condition's lastTransitionTime) and when the job was created (creationTimestamp); the
    # order audits use these, so one cycle's decisions share a time however long their
    # writes take to land
    decided_at: dict[str, float] = field(default_factory=dict)
    created_at: dict[str, float] = field(default_factory=dict)
    workload_created_at: dict[str, float] = field(default_factory=dict)  # Kueue: ns/job ->

    def _decide(self, key: str, t: float, cond: dict | None = None) -> None:
        with self.lock:
            self.decided.setdefault(key, t)
            if key not in self.decided_at:  # without a condition time: when the watch saw it
                self.decided_at[key] = (epoch(cond["lastTransitionTime"]) if cond and
                                        cond.get("lastTransitionTime") else
                                        time.time() - (time.monotonic() - t))

    def _created(self, key: str, obj: dict) -> None:
        ts = obj["metadata"].get("creationTimestamp")
        if ts and key not in self.created_at:
            with self.lock:
                self.created_at[key] = epoch(ts)

    def on_ftj(self, typ: str, obj: dict, t: float) -> None:
        st = obj.get("status") or {}
        md = obj["metadata"]
        key = f"{md['namespace']}/{md['name']}"
        self._created(key, obj)
        cond = next((c for c in st.get("conditions") or []
                     if c.get("type") == "Admitted" and c.get("status") == "True"), None)
        if typ != "DELETED" and (cond or st.get("phase") in ("Admitted", "Running",
                                                            "Succeeded")):
            self._decide(key, t, cond)

    def on_workload(self, typ: str, wl: dict, t: float) -> None:
        conds = (wl.get("status") or {}).get("conditions") or []
        md = wl["metadata"]
        owners = [o["name"] for o in md.get("ownerReferences") or [] if o.get("kind") == "Job"]
        cond = next((c for c in conds if c["type"] == "Admitted" and c["status"] == "True"),
                    None)
        if owners and md.get("creationTimestamp"):
            with self.lock:
                self.workload_created_at.setdefault(f"{md['namespace']}/{owners[0]}",
                                                    epoch(md["creationTimestamp"]))
        if typ != "DELETED" and owners and cond:
            self._decide(f"{md['namespace']}/{owners[0]}", t, cond)

    def on_job(self, typ: str, job: dict, t: float) -> None:
        md = job["metadata"]
        self._created(f"{md['namespace']}/{md['name']}", job)
        if typ != "DELETED" and (job.get("spec") or {}).get("suspend") is False:
            with self.lock:
                self.unsuspended.setdefault(f"{md['namespace']}/{md['name']}", t)

    def copy(self) -> tuple[dict[str, float], dict[str, float]]:
        with self.lock:
            return dict(self.decided), dict(self.unsuspended)

    def server_times(self, from_workload: bool = False,
                     ) -> tuple[dict[str, float], dict[str, float]]:
        """(created_at, decided_at): the API server's clock, see above; from_workload: a
        Kueue job counts as created when its Workload was."""
        with self.lock:
            created = dict(self.workload_created_at if from_workload else self.created_at)
            return created, dict(self.decided_at)


def epoch(ts: str) -> float:
    """An RFC 3339 timestamp of the API server -> epoch seconds."""
    return dt.datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()
