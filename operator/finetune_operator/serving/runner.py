"""Thin shell of the ModelServer controller: parse at the edge, plan (pure), write only what
changed, talk to the runtime only when the adapters it should serve differ from what the
status says it serves.

The job controller's cycle (``jobs/cycle.py``) calls ``entries()`` before admission (each
server as a waiting or running entry of the same snapshot as the jobs; in admission mode kueue
``subjects()``, the servers whose Workloads Kueue admits, ``kueue/``) and ``sync()`` after the
jobs' writes, with the same verdicts. Per server: the pods to delete (a stale spec, an exited
runtime, a preemption), the Service and pod to create (admitted, none yet), then the runtime's
adapters: ``GET /v1/models``, a load for each listed adapter that can be served and is not
loaded, an unload for each loaded one no longer listed; then one status patch, only when the
status differs from what is stored. A ready server whose list did not change costs no call.
"""

from __future__ import annotations

import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import ValidationError

from finetune_api.job import FineTuneJob
from finetune_api.server import ModelServer, ModelServerStatus
from finetune_operator.admission import JobVerdict, QueuedJob, RunningJob
from finetune_operator.jobs.writes import merge_patch
from finetune_operator.serving.plan import (
    RuntimeState,
    ServerPlan,
    plan_server,
    resolve_class,
    snapshot_entry,
    status_of,
    wants_runtime_call,
)
from finetune_operator.serving.runtime import RuntimeError_, RuntimePort
from finetune_operator.settings import OperatorSettings

log = logging.getLogger(__name__)

# a refused pod creation is tried again after this long (a quota or policy the user must fix)
CREATE_RETRY_SECONDS = 30.0
# a runtime that did not answer is asked again after this long (the cycle never waits on it
# more than once per period)
PROBE_RETRY_SECONDS = 5.0


class ServingKube(Protocol):
    """What the runner calls (kube.client.Kube; its API surface is kube.client.SERVING_SURFACE)."""

    def create_server_child(self, obj: dict[str, Any]) -> dict[str, Any]: ...
    def delete_server_pod(self, namespace: str, name: str, uid: str) -> bool: ...
    def patch_server_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool: ...


@dataclass
class SyncResult:
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    loaded: list[str] = field(default_factory=list)
    unloaded: list[str] = field(default_factory=list)
    status_patched: list[str] = field(default_factory=list)
    plans: dict[str, ServerPlan] = field(default_factory=dict)


def _format_error(e: ValidationError) -> str:
    parts = []
    for err in e.errors()[:5]:
        loc = ".".join(str(x) for x in err["loc"])
        parts.append(f"{loc}: {err['msg'].removeprefix('Value error, ')}")
    return "; ".join(parts) + "; fix the ModelServer and apply it again"


def parse(body: dict[str, Any]) -> ModelServer | str:
    try:
        return ModelServer.from_body(body)
    except ValidationError as e:
        return _format_error(e)
    except (KeyError, TypeError) as e:
        return f"malformed object: {e}"


class ServingRunner:
    """``on_created_pod``: a pod just created, as the API server returned it (the feeds cache
    it before its watch event, so the next cycle counts it)."""

    def __init__(self, kube: ServingKube, runtime: RuntimePort, settings: OperatorSettings,
                 on_created_pod: Callable[[dict[str, Any]], None] = lambda pod: None,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.kube, self.runtime, self.settings = kube, runtime, settings
        self.on_created_pod, self.monotonic = on_created_pod, monotonic
        # server uid -> (retry at, what failed): a refused creation, an unanswered probe
        self._create_retry: dict[str, tuple[float, str]] = {}
        self._probe_retry: dict[str, tuple[float, str]] = {}

    def entries(self, bodies: Sequence[dict[str, Any]],
                pods_by_server: Mapping[str, list[dict[str, Any]]],
                classes: Mapping[str, int], now: dt.datetime,
                ) -> list[QueuedJob | RunningJob]:
        """Each valid server as the admission snapshot sees it."""
        out: list[QueuedJob | RunningJob] = []
        for body in bodies:
            server = parse(body)
            if isinstance(server, str):
                continue
            cls, problem = resolve_class(server, self.settings, classes)
            pods = pods_by_server.get(server.metadata.uid, [])
            if cls is None or problem is not None:
                if not pods:
                    continue
                cls = server.spec.priority_class_name or ""  # its pod holds GPUs anyway
            entry = snapshot_entry(server, pods, classes.get(cls, 0), cls, self.settings, now)
            if entry is not None:
                out.append(entry)
        return out

    def subjects(self, bodies: Sequence[dict[str, Any]]) -> list[ModelServer]:
        """The valid servers (admission mode kueue: each is admitted by its own Workload,
        ``kueue/``; an invalid one gets its Failed status from ``sync()``)."""
        return [s for b in bodies if not isinstance(s := parse(b), str)]

    def sync(self, bodies: Sequence[dict[str, Any]],
             pods_by_server: Mapping[str, list[dict[str, Any]]],
             jobs: Sequence[FineTuneJob], verdicts: Mapping[str, JobVerdict],
             classes: Mapping[str, int], now: dt.datetime) -> SyncResult:
        out = SyncResult()
        live = {str((b.get("metadata") or {}).get("uid")) for b in bodies}
        for memo in (self._create_retry, self._probe_retry):  # bounded by the live servers
            for uid in set(memo) - live:
                del memo[uid]
        by_ns: dict[str, dict[str, FineTuneJob]] = {}
        for job in jobs:
            by_ns.setdefault(job.metadata.namespace, {})[job.metadata.name] = job
        for body in bodies:
            server = parse(body)
            meta = body.get("metadata") or {}
            if isinstance(server, str):
                self._invalid(meta, body.get("status"), server, out)
                continue
            try:
                self._one(server, pods_by_server.get(server.metadata.uid, []),
                          by_ns.get(server.metadata.namespace, {}),
                          verdicts.get(server.metadata.uid), classes, now, out)
            except Exception:  # one server's failure stays its own; the next cycle retries
                log.exception("ModelServer %s: sync failed; retrying next cycle", server.key)
        return out

    def _invalid(self, meta: dict[str, Any], stored: Any, problem: str,
                 out: SyncResult) -> None:
        status = {"phase": "Failed", "reason": f"invalid ModelServer: {problem}"[:1024]}
        same = isinstance(stored, dict) and {k: stored.get(k) for k in status} == status
        if not same and self.kube.patch_server_status(meta["namespace"], meta["name"], status):
            out.status_patched.append(f"{meta['namespace']}/{meta['name']}")

    def _one(self, server: ModelServer, pods: list[dict[str, Any]],
             jobs: Mapping[str, FineTuneJob], verdict: JobVerdict | None,
             classes: Mapping[str, int], now: dt.datetime, out: SyncResult) -> None:
        ns, key = server.metadata.namespace, server.key
        cls, problem = resolve_class(server, self.settings, classes)
        plan = plan_server(server, pods, jobs, verdict, cls, problem, self.settings)
        out.plans[key] = plan
        for name, uid in plan.delete_pods:
            log.info("ModelServer %s: deleting pod %s: %s", key, name, plan.reason)
            if self.kube.delete_server_pod(ns, name, uid):
                out.deleted.append(f"{ns}/{name}")
        uid = server.metadata.uid
        retry = self._create_retry.get(uid)
        if plan.create_pod is not None and retry is not None and self.monotonic() < retry[0]:
            plan.create_pod = plan.create_service = None  # refused a moment ago: wait
            plan.phase, plan.admitted, plan.pod, plan.reason = "Queued", False, "", retry[1]
        if plan.create_pod is not None and plan.create_service is not None:
            try:
                self.kube.create_server_child(plan.create_service)
                pod = self.kube.create_server_child(plan.create_pod)
            except Exception as e:  # refused (quota, policy) or unreachable: said, retried
                text = getattr(e, "body", None) or str(e)
                plan.phase, plan.admitted, plan.pod = "Queued", False, ""
                plan.reason = f"creating pod {plan.create_pod['metadata']['name']} failed: " \
                              f"{str(text)[:300]}"
                log.warning("ModelServer %s: %s", key, plan.reason)
                self._create_retry[uid] = (self.monotonic() + CREATE_RETRY_SECONDS, plan.reason)
            else:
                self._create_retry.pop(uid, None)
                out.created.append(f"{ns}/{pod['metadata']['name']}")
                self.on_created_pod(pod)
        runtime = self._runtime(server, plan, out)
        results = runtime[1] if runtime is not None else {}
        status = status_of(server, plan, runtime[0] if runtime else None, results, now)
        stored = server.status.to_wire()
        new = ModelServerStatus.model_validate(status).to_wire()
        if new != stored and self.kube.patch_server_status(
                ns, server.metadata.name, merge_patch(stored, new)):
            out.status_patched.append(key)

    def _runtime(self, server: ModelServer, plan: ServerPlan, out: SyncResult,
                 ) -> tuple[RuntimeState, dict[str, str | None]] | None:
        """Ask the runtime and load/unload the difference; (what it serves after, load errors).
        None: the runtime is not asked (its pod does not run yet)."""
        if plan.endpoint is None:
            return None
        st = server.status
        if not wants_runtime_call(server, plan):  # ready and as listed: nothing to ask
            return RuntimeState(loaded=frozenset(st.loaded_adapters)), {}
        endpoint, uid = plan.endpoint, server.metadata.uid
        waited = self._probe_retry.get(uid)
        if waited is not None and self.monotonic() < waited[0]:
            return RuntimeState(error=waited[1]), {}
        try:
            loaded = set(self.runtime.adapters(endpoint))
        except RuntimeError_ as e:
            self._probe_retry[uid] = (self.monotonic() + PROBE_RETRY_SECONDS, str(e))
            return RuntimeState(error=str(e)), {}
        self._probe_retry.pop(uid, None)
        failed_before = {a.name: a.path for a in st.adapters
                         if a.state == "Failed" and st.pod == plan.pod}
        results: dict[str, str | None] = {}
        want = {d.name: d.located for d in plan.desired if d.located is not None}
        for name in sorted(loaded - set(want)):
            try:
                self.runtime.unload(endpoint, name)
                loaded.discard(name)
                out.unloaded.append(f"{server.key}/{name}")
            except RuntimeError_ as e:
                log.warning("ModelServer %s: unloading adapter %s failed: %s", server.key,
                            name, e)
        for name, located in want.items():
            if name in loaded or failed_before.get(name) == located.in_pod:
                continue
            if len(loaded) >= server.spec.limits.max_loras:
                results[name] = (f"limits.maxLoras ({server.spec.limits.max_loras}) adapters "
                                 "are loaded already; raise it")
                continue
            try:
                self.runtime.load(endpoint, name, located.in_pod)
                loaded.add(name)
                results[name] = None
                out.loaded.append(f"{server.key}/{name}")
                log.info("ModelServer %s: loaded adapter %s from %s", server.key, name,
                         located.in_pod)
            except RuntimeError_ as e:
                results[name] = f"loading {located.in_pod} failed: {e}"
                log.warning("ModelServer %s: adapter %s: %s", server.key, name, results[name])
        return RuntimeState(loaded=frozenset(loaded)), results
