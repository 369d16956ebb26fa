"""A cluster as the watch caches hold it, for the admitter's tests (tests/unit/jobs/
test_decide_*.py): jobs, pods, nodes and quotas, changed by random events; a changed job or pod
is a new object, as the caches make it."""

from __future__ import annotations

import datetime as dt
import random
from dataclasses import dataclass, field
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.times import rfc3339
from finetune_operator.admission import ClusterView
from tests.builders.jobs import make_job, make_settings
from tests.builders.pods import make_pod

NOW = dt.datetime(2026, 1, 1, 12, 0, tzinfo=dt.UTC)
GPU = "nvidia.com/gpu"
BANDS = ["finetune-critical", "finetune-high", "finetune-normal", "finetune-low"]
CLASSES = {"finetune-critical": 100000, "finetune-high": 10000, "finetune-normal": 1000,
           "finetune-low": 100}
SETTINGS = make_settings(allowed_priority_classes=BANDS, max_running_jobs_per_namespace=3,
                         min_runtime_before_preemption_seconds=120)
NAMESPACES = ["team-a", "team-b", "team-c"]


def node(name: str, gpus: int = 8, pool: str = "a", cordoned: bool = False,
         taint: bool = False) -> dict[str, Any]:
    taints = [{"key": "dedicated", "value": "big", "effect": "NoSchedule"}] if taint else []
    return {"metadata": {"name": name, "labels": {"pool": pool}},
            "spec": {"taints": taints, "unschedulable": cordoned},
            "status": {"allocatable": {GPU: gpus}, "ready": "True"}}


def quota(ns: str, hard: int, used: int) -> dict[str, Any]:
    key = f"requests.{GPU}"
    return {"metadata": {"name": "gpus", "namespace": ns}, "spec": {"hard": {key: hard}},
            "status": {"hard": {key: hard}, "used": {key: used}}}


@dataclass
class World:
    """The caches' view; a changed job or pod is a new object, as the watch caches make it."""

    rng: random.Random
    now: dt.datetime = NOW
    jobs: dict[str, FineTuneJob] = field(default_factory=dict)
    pods: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    nodes: list[dict[str, Any]] = field(default_factory=list)
    hard: dict[str, int] = field(default_factory=dict)
    classes: dict[str, int] = field(default_factory=lambda: dict(CLASSES))
    made: int = 0

    def view(self) -> ClusterView:
        ours = [p for ps in self.pods.values() for p in ps]
        used: dict[str, int] = {}
        for uid, ps in self.pods.items():
            ns = self.jobs[uid].metadata.namespace
            for p in ps:
                if p["status"]["phase"] not in ("Succeeded", "Failed"):
                    used[ns] = used.get(ns, 0) + self.jobs[uid].spec.resources.gpus
        return ClusterView(jobs=list(self.jobs.values()), pods_by_uid=dict(self.pods),
                           classes=dict(self.classes), nodes=list(self.nodes),
                           active_pods=ours,
                           quotas=[quota(ns, h, used.get(ns, 0)) for ns, h in self.hard.items()])

    def ago(self, seconds: float) -> str:
        return rfc3339(self.now - dt.timedelta(seconds=seconds))

    # --- events -------------------------------------------------------------------------------

    def add(self) -> None:
        rng, i = self.rng, self.made
        self.made += 1
        cls = rng.choice(BANDS)
        status: dict[str, Any] = {"phase": "Queued", "effectivePriorityClass": cls,
                                  "queuedSince": self.ago(rng.randint(0, 600))}
        if rng.random() < 0.3:  # requeued: aging counts from the first queue entry
            status["firstQueuedAt"] = self.ago(rng.randint(0, 7200))
        if rng.random() < 0.15:  # backing off
            status["retryAfter"] = self.ago(-rng.randint(1, 600))
        if rng.random() < 0.05:  # not parsed: the entry counts from now
            status["queuedSince"] = "garbage"
        kw: dict[str, Any] = {}
        resources: dict[str, Any] = {}
        if rng.random() < 0.2:
            resources["nodeSelector"] = {"pool": rng.choice(["a", "b"])}
        if rng.random() < 0.1:
            resources["tolerations"] = [{"key": "dedicated", "operator": "Exists",
                                         "effect": "NoSchedule"}]
        if resources:
            kw["resources"] = resources
        if rng.random() < 0.3:
            kw["active_deadline_seconds"] = rng.choice([600, 3600])
        if rng.random() < 0.05:
            kw["suspend"] = True
        job = make_job(f"job-{i}", rng.choice(NAMESPACES), gpus=rng.choice([1, 2, 4, 8, 16]),
                       priority_class=cls, nodes=rng.choice([1, 1, 1, 2]), uid=f"u{i}",
                       created=self.ago(rng.randint(0, 7200)), status=status, **kw)
        self.jobs[job.metadata.uid] = job

    def edit(self, uid: str, **status: Any) -> None:
        old = self.jobs[uid]
        body = old.model_dump(by_alias=True, exclude_none=True)
        body["status"] = {**body["status"], **status}
        self.jobs[uid] = FineTuneJob.from_body(body)

    def start(self) -> None:
        """A queued job admitted and its pods bound (or one of them not yet)."""
        queued = [u for u, j in self.jobs.items() if (j.status.phase or "Queued") == "Queued"
                  and u not in self.pods]
        if not queued or not self.nodes:
            return
        uid = self.rng.choice(sorted(queued))
        self.edit(uid, phase="Running", attempt=1, admittedAt=self.ago(self.rng.randint(0, 900)),
                  startTime=self.ago(self.rng.randint(0, 600)),
                  progress={"step": 1, "etaSeconds": self.rng.choice([60.0, 3600.0])})
        job = self.jobs[uid]
        self.pods[uid] = [make_pod(job, 1, r, node=self.rng.choice(
            [self.rng.choice(self.nodes)["metadata"]["name"], None]))
            for r in range(job.spec.resources.nodes)]

    def pod_change(self) -> None:
        if not self.pods:
            return
        uid = self.rng.choice(sorted(self.pods))
        job = self.jobs[uid]
        phase = self.rng.choice(["Succeeded", "Failed", "Running"])
        self.pods[uid] = [make_pod(job, 1, r, phase=phase,
                                   node=self.rng.choice(self.nodes)["metadata"]["name"]
                                   if self.nodes else None)
                          for r in range(job.spec.resources.nodes)]
        if phase != "Running" and self.rng.random() < 0.5:  # the job moves on
            self.edit(uid, phase="Succeeded")

    def step(self) -> str:
        rng = self.rng
        kind = rng.choices(["add", "delete", "edit", "start", "pod", "node", "quota", "class",
                            "time"], weights=[30, 8, 8, 10, 10, 5, 5, 2, 20])[0]
        if kind == "add":
            for _ in range(rng.randint(1, 3)):
                self.add()
        elif kind == "delete" and self.jobs:
            uid = rng.choice(sorted(self.jobs))
            del self.jobs[uid]
            self.pods.pop(uid, None)
        elif kind == "edit" and self.jobs:
            uid = rng.choice(sorted(self.jobs))
            self.edit(uid, **rng.choice([
                {"phase": "Preempting"}, {"phase": "Queued", "attempt": 1},
                {"retryAfter": self.ago(-30)}, {"effectivePriorityClass": rng.choice(BANDS)},
                {"checkpoint": {"step": 1, "savedAt": self.ago(rng.randint(-60, 900))}}]))
        elif kind == "start":
            self.start()
        elif kind == "pod":
            self.pod_change()
        elif kind == "node":
            if self.nodes and rng.random() < 0.3:
                self.nodes.pop(rng.randrange(len(self.nodes)))
            else:
                self.nodes.append(node(f"node-{self.made}-{len(self.nodes)}",
                                       rng.choice([4, 8]), rng.choice(["a", "b"]),
                                       cordoned=rng.random() < 0.1, taint=rng.random() < 0.2))
        elif kind == "quota":
            self.hard[rng.choice(NAMESPACES)] = rng.choice([8, 16, 32, 64])
        elif kind == "class":
            cls = rng.choice(BANDS)
            self.classes[cls] = self.classes[cls] + rng.choice([-1, 1])
        else:  # past retry delays, aging steps and the reservation bound (~100 min)
            self.now += dt.timedelta(seconds=rng.choice([1, 7, 60, 361, 1800, 3600]))
        return kind
