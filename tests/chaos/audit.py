"""A watch-based audit of the operator's pods during the chaos run: every pod ever created per
(job, attempt, rank), GPUs bound per node at every event, and pods deleted before they finished
(the evictions a preemption makes). Survives API server restarts (re-lists on errors)."""

from __future__ import annotations

import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from kubernetes import client, watch

SELECTOR = "app.kubernetes.io/managed-by=finetune-operator"


@dataclass
class Audit:
    namespaces: set[str]
    capacity: dict[str, int]                       # node -> GPUs
    uids: dict[tuple[str, str, str, str], set[str]] = field(
        default_factory=lambda: defaultdict(set))  # (ns, job, attempt, rank) -> pod uids
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)  # uid -> last view
    evicted: set[tuple[str, str, str]] = field(default_factory=set)  # (ns, job, attempt)
    succeeded: set[str] = field(default_factory=set)
    overcommit: list[str] = field(default_factory=list)
    max_bound: dict[str, int] = field(default_factory=dict)
    events: int = 0
    relists: int = 0

    def observe(self, typ: str, pod: dict[str, Any]) -> None:
        meta, spec, st = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
        if meta.get("namespace") not in self.namespaces:
            return
        self.events += 1
        labels = meta.get("labels") or {}
        key = (meta["namespace"], labels.get("finetune.dev/job", "?"),
               labels.get("finetune.dev/attempt", "?"), labels.get("finetune.dev/rank", "?"))
        uid = meta["uid"]
        self.uids[key].add(uid)
        phase = st.get("phase")
        if phase == "Succeeded":
            self.succeeded.add(uid)
        deleted = typ == "DELETED" or bool(meta.get("deletionTimestamp"))
        if deleted and uid not in self.succeeded and phase not in ("Succeeded", "Failed"):
            self.evicted.add(key[:3])
        gpus = sum(int((c.get("resources") or {}).get("requests", {}).get("nvidia.com/gpu", 0))
                   for c in spec.get("containers") or [])
        active = typ != "DELETED" and phase not in ("Succeeded", "Failed")
        self.pods[uid] = {"node": spec.get("nodeName"), "gpus": gpus, "active": active,
                          "key": key}
        bound: dict[str, int] = defaultdict(int)
        for p in self.pods.values():
            if p["active"] and p["node"]:
                bound[p["node"]] += p["gpus"]
        for node, n in bound.items():
            self.max_bound[node] = max(self.max_bound.get(node, 0), n)
            if n > self.capacity.get(node, 0):
                self.overcommit.append(f"{node}: {n} GPUs bound > {self.capacity.get(node)}")

    def vanished(self, present: set[str]) -> None:
        """After a relist: pods deleted while the watch was down (the operator's deletions:
        nothing else deletes these pods during the run)."""
        for uid, p in self.pods.items():
            if uid not in present and p["active"]:
                p["active"] = False
                if uid not in self.succeeded:
                    self.evicted.add(p["key"][:3])

    def duplicates(self) -> dict[tuple[str, str, str, str], int]:
        return {k: len(v) for k, v in self.uids.items() if len(v) > 1}


def run_audit(api: client.ApiClient, audit: Audit, stop: threading.Event) -> threading.Thread:
    core = client.CoreV1Api(api)

    def loop() -> None:
        rv = None
        while not stop.is_set():
            try:
                if rv is None:
                    pods = core.list_pod_for_all_namespaces(label_selector=SELECTOR,
                                                            _request_timeout=10)
                    seen = set()
                    for p in pods.items:
                        body = api.sanitize_for_serialization(p)
                        seen.add(body["metadata"]["uid"])
                        audit.observe("ADDED", body)
                    audit.vanished(seen)
                    rv = pods.metadata.resource_version
                    audit.relists += 1
                w = watch.Watch()
                for ev in w.stream(core.list_pod_for_all_namespaces, label_selector=SELECTOR,
                                   resource_version=rv, timeout_seconds=30,
                                   _request_timeout=40):
                    obj = ev["raw_object"]
                    audit.observe(ev["type"], obj)
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if stop.is_set():
                        return
            except Exception:  # API server restarting, 410 Gone: list again
                rv = None
                time.sleep(0.5)

    t = threading.Thread(target=loop, name="audit", daemon=True)
    t.start()
    return t
