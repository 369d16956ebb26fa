"""A recording fake of the job controller's ``JobKube`` and a fake ``Clock``: the controller's
cycle driven by hand, without a cluster or threads.

    kube = RecordingJobKube([job_body("bot")])
    clock = FakeClock()
    ctrl = Controller(kube, make_settings(), namespace="ops", identity="test", clock=clock)
    ctrl.lease.grant(3600)          # lead without a Lease
    load(ctrl, kube)                # the caches hold what the fake holds
    ctrl.run_cycle(clock.now())
    kube.writes == [("patch", "FineTuneJob", "team-a/bot"), ("create", "ConfigMap", ...), ...]

Job statuses are merge-patched into the fake's bodies and every write bumps the
resourceVersion, as the API server does; created objects are kept (pods too, so a test can
move them along with ``set_pod``).
"""

from __future__ import annotations

import copy
import datetime as dt
import threading
from collections.abc import Iterator, Mapping
from typing import Any

from finetune_operator.jobs.controller import Controller
from finetune_operator.jobs.feeds import job_entry, uid_key
from finetune_operator.kube import cache
from tests.builders.jobs import _merge

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)

Write = tuple[str, str, str]  # (verb, kind, namespace/name)


class FakeClock:
    """Wall and monotonic time that move only when told (``advance``)."""

    def __init__(self, now: dt.datetime = NOW) -> None:
        self._now = now
        self._mono = 1000.0

    def now(self) -> dt.datetime:
        return self._now

    def time(self) -> float:
        return self._now.timestamp()

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> dt.datetime:
        self._now += dt.timedelta(seconds=seconds)
        self._mono += seconds
        return self._now


class RecordingJobKube:
    """Implements ``finetune_operator.jobs.ports.JobKube``; records each write as
    (verb, kind, namespace/name), the Events' reasons and the delete grace periods."""

    def __init__(self, bodies: list[dict[str, Any]] | None = None) -> None:
        self.jobs = {(b["metadata"]["namespace"], b["metadata"]["name"]): b
                     for b in bodies or []}
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}  # (kind, ns, name)
        self.calls: list[Write] = []
        self.events: list[tuple[str, str, str]] = []  # (namespace/name, reason, message)
        self.graces: dict[str, int | None] = {}       # deleted pod -> grace seconds given
        self._lock = threading.Lock()
        self._rv = 100

    def _record(self, verb: str, kind: str, ns: str, name: str) -> None:
        with self._lock:
            self.calls.append((verb, kind, f"{ns}/{name}"))
            self._rv += 1

    def writes(self, key: str | None = None) -> list[Write]:
        with self._lock:
            return [c for c in self.calls if key is None or c[2] == key]

    # reads (the reflectors'; unit tests load the caches with ``load`` instead)
    def list_raw(self, path: str, label_selector: str | None = None,
                 field_selector: str | None = None, page: int = 500,
                 ) -> tuple[list[dict[str, Any]], str]:
        return [], str(self._rv)

    def watch_raw(self, path: str, resource_version: str, label_selector: str | None = None,
                  field_selector: str | None = None, timeout_seconds: int = 300,
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
        return iter(())

    # writes
    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any],
                         resource_version: str | None = None) -> dict[str, Any] | None:
        self._record("patch", "FineTuneJob", namespace, name)
        body = self.jobs.get((namespace, name))
        if body is None:
            return None
        body["status"] = _merge(body.get("status") or {}, status)  # RFC 7386
        body["metadata"]["resourceVersion"] = str(self._rv)
        return copy.deepcopy(body)

    def create_or_get(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        key = (obj["kind"], meta["namespace"], meta["name"])
        if key in self.objects:
            return copy.deepcopy(self.objects[key])
        self._record("create", obj["kind"], meta["namespace"], meta["name"])
        got = {**obj, "metadata": {**meta, "uid": f"uid-{meta['name']}",
                                   "resourceVersion": str(self._rv)}}
        if obj["kind"] == "Pod":
            got.setdefault("status", {"phase": "Pending"})
        self.objects[key] = got
        return copy.deepcopy(got)

    create_or_patch = create_or_get
    create_child = create_or_get

    def delete_pod(self, namespace: str, name: str, uid: str | None = None,
                   grace_seconds: int | None = None) -> bool:
        self._record("delete", "Pod", namespace, name)
        self.graces[f"{namespace}/{name}"] = grace_seconds
        return self.objects.pop(("Pod", namespace, name), None) is not None

    def create_workload(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        meta = obj["metadata"]
        key = ("Workload", meta["namespace"], meta["name"])
        if key in self.objects:
            return None
        self._record("create", "Workload", meta["namespace"], meta["name"])
        self.objects[key] = got = {**obj, "metadata": {**meta, "uid": f"uid-{meta['name']}",
                                                       "resourceVersion": str(self._rv)}}
        return copy.deepcopy(got)

    def patch_workload(self, namespace: str, name: str, body: dict[str, Any],
                       resource_version: str, status: bool = False) -> dict[str, Any] | None:
        self._record("patch", "workloads/status" if status else "Workload", namespace, name)
        got = self.objects.get(("Workload", namespace, name))
        if got is None:
            return None
        merged: dict[str, Any] = _merge(got, {k: v for k, v in body.items() if k != "metadata"})
        merged["metadata"]["resourceVersion"] = str(self._rv)
        self.objects[("Workload", namespace, name)] = merged
        return copy.deepcopy(merged)

    def delete_workload(self, namespace: str, name: str, uid: str) -> bool:
        self._record("delete", "Workload", namespace, name)
        return self.objects.pop(("Workload", namespace, name), None) is not None

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        self._record("delete", "FineTuneJob", namespace, name)
        return self.jobs.pop((namespace, name), None) is not None

    def event(self, job: Mapping[str, Any], type_: str, reason: str, message: str,
              now: dt.datetime, kind: str = "FineTuneJob") -> None:
        meta = job["metadata"]
        self._record("create", "Event", meta["namespace"], meta["name"])
        with self._lock:
            self.events.append((f"{meta['namespace']}/{meta['name']}", reason, message))

    def hold_lease(self, namespace: str, name: str, identity: str, duration_s: int,
                   now: dt.datetime, known: dict[str, Any] | None = None,
                   ) -> tuple[bool, dict[str, Any] | None]:
        return True, {"spec": {"holderIdentity": identity}}

    def release_lease(self, namespace: str, name: str, identity: str) -> None:
        pass

    # the sweep runner's (SweepKube)
    def create_trial(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        self._record("create", "FineTuneJob", body["metadata"]["namespace"],
                     body["metadata"]["name"])
        return body, True

    def patch_sweep_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self._record("patch", "FineTuneSweep", namespace, name)
        return True

    def stop_trial(self, namespace: str, name: str, uid: str,
                   annotations: dict[str, Any]) -> bool:
        self._record("patch", "FineTuneJob", namespace, name)
        return True

    # the serving runner's (ServingKube)
    def create_server_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        meta = obj["metadata"]
        self._record("create", obj["kind"], meta["namespace"], meta["name"])
        made = {**obj, "metadata": {**meta, "uid": f"uid-{meta['name']}"}}
        self.objects.setdefault((obj["kind"], meta["namespace"], meta["name"]), made)
        return self.objects[(obj["kind"], meta["namespace"], meta["name"])]

    def delete_server_pod(self, namespace: str, name: str, uid: str) -> bool:
        self._record("delete", "Pod", namespace, name)
        return self.objects.pop(("Pod", namespace, name), None) is not None

    def patch_server_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        self._record("patch", "ModelServer", namespace, name)
        return True

    # helpers for tests
    def pods(self) -> list[dict[str, Any]]:
        return [o for (kind, _, _), o in self.objects.items() if kind == "Pod"]


def gpu_node(name: str = "node-0", gpus: int = 8) -> dict[str, Any]:
    return {"metadata": {"name": name},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)},
                       "conditions": [{"type": "Ready", "status": "True"}]}}


def load(ctrl: Controller, kube: RecordingJobKube, nodes: list[dict[str, Any]] | None = None,
         classes: dict[str, int] | None = None) -> None:
    """The controller's caches filled from what the fake holds (what the watches would do):
    priority classes, nodes, the jobs and the pods."""
    f = ctrl.feeds
    for name, value in (classes or {"finetune-critical": 100000, "finetune-high": 10000,
                                    "finetune-normal": 1000, "finetune-low": 100}).items():
        f.classes.put(name, value)
    for node in nodes if nodes is not None else [gpu_node()]:
        f.nodes.put(node["metadata"]["name"], cache.slim_node(node))
    sync(ctrl, kube)


def sync(ctrl: Controller, kube: RecordingJobKube) -> None:
    """Watch events for everything the fake holds now (jobs and pods; deleted pods go)."""
    f = ctrl.feeds
    for body in list(kube.jobs.values()):
        body["metadata"].setdefault("resourceVersion", "1")
        f.jobs.put(body["metadata"]["uid"], job_entry(copy.deepcopy(body)))
    live = {uid_key(p) for p in kube.pods()}
    for key, _ in f.pods.items():
        if key not in live:
            f.pods.put(key, None)
    for pod in kube.pods():
        f.pods.put(uid_key(pod), cache.slim_pod(copy.deepcopy(pod)))
