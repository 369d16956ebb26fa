"""The operator's in-memory view of the cluster, fed by list+watch (no LIST per cycle).

One :class:`Reflector` per watched collection lists it once (paginated), then watches from the
list's resourceVersion with bookmarks; it relists only when the watch expires (410 Gone) or at
start-up, and re-watches from the last seen resourceVersion after a dropped connection. Each
object is reduced by a *transform* to what the operator reads (``slim_*`` below) before it is
stored, so memory holds neither managedFields nor pods of other workloads: pods not ours are
kept only as (node, extended-resource requests), and only when they request some. The slim
records are typed (``finetune_operator.slim``: ``SlimPod``, ``SlimUsage``, ``SlimNode``,
``SlimQuota``); extended-resource counts in them are ints, parsed once here.

A store calls ``on_change(kind, key, old, new)`` only when the transformed value changed, so a
node heartbeat or a status rewrite that changes nothing the operator reads wakes nobody.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from kubernetes.client.exceptions import ApiException

from finetune_api.labels import MANAGED_BY_LABEL, MANAGED_BY_VALUE, POD_LABELS
from finetune_api.quantity import count
from finetune_operator.admission.snapshot import pod_requests
from finetune_operator.reports.model import BadReport, parse_termination
from finetune_operator.slim import (
    Counts,
    SlimCondition,
    SlimContainer,
    SlimContainerStatus,
    SlimNode,
    SlimPod,
    SlimPodMeta,
    SlimPodSpec,
    SlimPodStatus,
    SlimQuota,
    SlimQuotaSpec,
    SlimTermination,
    SlimUsage,
)

log = logging.getLogger(__name__)

Transform = Callable[[dict[str, Any]], Any]
OnChange = Callable[[str, str, Any, Any], None]


class Store:
    """key -> transformed object; thread-safe; values are treated as immutable.

    Several reflectors may fill one store, each its own *part* (one per watched namespace when
    the operator watches a list of them; "" when one reflector lists the whole collection): a
    relist replaces only the keys of its part, never another namespace's. ``synced`` is set
    once every expected part (``expect``) has been listed."""

    def __init__(self, kind: str, on_change: OnChange | None = None) -> None:
        self.kind = kind
        self._items: dict[str, Any] = {}
        self._parts: dict[str, set[str]] = {}   # part -> its keys
        self._part_of: dict[str, str] = {}      # key -> its part
        self._expected: set[str] = set()
        self._listed: set[str] = set()
        self._lock = threading.Lock()
        self._on_change = on_change
        self.synced = threading.Event()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: str) -> Any:
        return self._items.get(key)

    def items(self) -> list[tuple[str, Any]]:
        with self._lock:
            return list(self._items.items())

    def values(self) -> list[Any]:
        with self._lock:
            return list(self._items.values())

    def snapshot(self) -> dict[str, Any]:
        """key -> value as of now (a copy: later puts do not change it)."""
        with self._lock:
            return dict(self._items)

    def expect(self, part: str) -> None:
        """A reflector will fill ``part``: the store is synced only once it has listed it."""
        with self._lock:
            self._expected.add(part)

    def _own(self, key: str, part: str) -> None:
        """Under the lock: ``key`` belongs to ``part`` (moved if another part had it)."""
        was = self._part_of.get(key)
        if was is not None and was != part:
            self._parts.get(was, set()).discard(key)
        self._part_of[key] = part
        self._parts.setdefault(part, set()).add(key)

    def _disown(self, key: str) -> None:
        was = self._part_of.pop(key, None)
        if was is not None:
            self._parts.get(was, set()).discard(key)

    def put(self, key: str, value: Any, notify: bool = True, part: str = "",
            only_new: bool = False) -> None:
        """Insert/replace (None deletes) in ``part``; notifies when the value changed
        (``notify=False``: the operator's own write, which it planned already). A value older
        than the one stored (``resource_version``, e.g. a lagging watch event after the operator
        stored the response of its own write) is ignored; so is any value for a key already
        stored with ``only_new`` (``add``)."""
        with self._lock:
            old = self._items.get(key)
            if value is not None and old is not None and (only_new or _older(value, old)):
                return
            if value is None:
                self._items.pop(key, None)
                self._disown(key)
            else:
                self._items[key] = value
                self._own(key, part)
        if notify and old != value and self._on_change is not None:
            self._on_change(self.kind, key, old, value)

    def add(self, key: str, value: Any, part: str = "") -> None:
        """Insert unless present: ``value`` is an object as its create returned it, the oldest
        version of that object, and what its watch delivered meanwhile (the pod bound, running)
        is as new or newer. Values without a ``resource_version`` (slim pods) need this; ``put``
        would replace the newer one and the cache would keep the stale state until the object
        changes again."""
        self.put(key, value, part=part, only_new=True)

    def replace(self, items: dict[str, Any], part: str = "") -> None:
        """After a (re)list of ``part``: its keys become exactly ``items`` (the other parts are
        untouched); notifies the differences."""
        with self._lock:
            mine = self._parts.get(part, set())
            old = {k: self._items.get(k) for k in mine | items.keys()}
            for key in mine - items.keys():
                self._items.pop(key, None)
                self._disown(key)
            for key, value in items.items():
                self._items[key] = value
                self._own(key, part)
            self._listed.add(part)
            done = self._expected <= self._listed
        if self._on_change is not None:
            for key in old:
                if old.get(key) != items.get(key):
                    self._on_change(self.kind, key, old.get(key), items.get(key))
        if done:
            self.synced.set()


def _older(new: Any, old: Any) -> bool:
    """Whether ``new`` is an older version than ``old`` (both carry a numeric ``rv``)."""
    a, b = getattr(new, "rv", None), getattr(old, "rv", None)
    return bool(a and b and a.isdigit() and b.isdigit() and int(a) < int(b))


def object_key(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    ns = meta.get("namespace")
    return f"{ns}/{meta.get('name')}" if ns else str(meta.get("name"))


@dataclass
class Source:
    """What one reflector watches: a collection path and optional server-side selectors."""

    path: str
    label_selector: str | None = None
    field_selector: str | None = None


class Reflector:
    """list, then watch from the list's resourceVersion; 410 -> relist; errors -> backoff."""

    def __init__(self, kube: Any, source: Source, store: Store, transform: Transform,
                 stop: threading.Event, key: Callable[[dict[str, Any]], str] = object_key,
                 watch_timeout_seconds: int = 300, part: str = "") -> None:
        self.kube, self.source, self.store, self.transform = kube, source, store, transform
        self.key, self.stop, self.part = key, stop, part
        store.expect(part)
        self.watch_timeout = watch_timeout_seconds
        self.resource_version = ""
        self.relists = 0
        self.missing = False
        self._thread = threading.Thread(target=self._run, name=f"watch-{store.kind}",
                                        daemon=True)

    def start(self) -> None:
        self._thread.start()

    def _slim(self, obj: dict[str, Any]) -> Any:
        try:
            return self.transform(obj)
        except (KeyError, TypeError, ValueError) as e:  # malformed object: skip, never crash
            log.warning("%s %s: cannot read (%s); ignored", self.store.kind, object_key(obj), e)
            return None

    def _list(self) -> None:
        s = self.source
        items, rv = self.kube.list_raw(s.path, s.label_selector, s.field_selector)
        self.store.replace({self.key(o): v for o in items if (v := self._slim(o)) is not None},
                           self.part)
        self.resource_version = rv
        self.relists += 1

    def _events(self) -> Iterator[tuple[str, dict[str, Any]]]:
        s = self.source
        events: Iterator[tuple[str, dict[str, Any]]] = self.kube.watch_raw(
            s.path, self.resource_version, s.label_selector, s.field_selector, self.watch_timeout)
        return events

    def _run(self) -> None:
        delay, need_list = 0.5, True
        while not self.stop.is_set():
            try:
                if need_list:
                    self._list()
                    need_list = False
                for typ, obj in self._events():
                    if self.stop.is_set():
                        return
                    rv = (obj.get("metadata") or {}).get("resourceVersion")
                    if typ == "ERROR":
                        code = obj.get("code")
                        log.info("%s watch: %s (%s); %s", self.store.kind, obj.get("reason"),
                                 code, "relisting" if code == 410 else "re-watching")
                        need_list = code == 410
                        break
                    if typ == "BOOKMARK":
                        self.resource_version = rv or self.resource_version
                        continue
                    value = None if typ == "DELETED" else self._slim(obj)
                    self.store.put(self.key(obj), value, part=self.part)
                    self.resource_version = rv or self.resource_version
                delay = 0.5
            except ApiException as e:
                need_list = need_list or e.status == 410
                if e.status == 404:  # the API is not installed (e.g. an optional CRD)
                    if not self.missing:
                        log.info("%s: not served by the API server; checking every 30s",
                                 self.store.kind)
                    self.missing = True
                    self.stop.wait(30.0)
                    continue
                log.warning("%s watch failed: %s %s; retrying in %.1fs", self.store.kind,
                            e.status, e.reason, delay)
                self.stop.wait(delay)
                delay = min(30.0, delay * 2)
            except Exception as e:  # connection reset, timeout, bad JSON: re-watch
                log.warning("%s watch interrupted (%s: %s); retrying in %.1fs", self.store.kind,
                            type(e).__name__, e, delay)
                self.stop.wait(delay + random.uniform(0, delay / 2))
                delay = min(30.0, delay * 2)


def wait_synced(stores: list[Store], timeout: float) -> bool:
    end = time.monotonic() + timeout
    return all(s.synced.wait(max(0.0, end - time.monotonic())) for s in stores)


# ---------------------------------------------------------------- transforms (pure)
# Each returns a typed slim record (finetune_operator.slim); extended-resource quantities are
# parsed here, once, and kept as int.


def _counts(quantities: Mapping[str, Any]) -> Counts:
    """The extended resources (names with a "/") of a quantity map, as whole counts."""
    return {k: count(v) for k, v in quantities.items() if "/" in k}


def _requests(pod: Mapping[str, Any]) -> list[SlimContainer]:
    """What a pod takes from its node, as one container's requests (empty: nothing)."""
    req = pod_requests(pod)
    return [{"resources": {"requests": req}}] if req else []


def slim_pod(pod: dict[str, Any]) -> SlimPod:
    """What the state machine reads of one of our pods (jobs/pods.py): identity, attempt/rank
    labels, owner, deletion, node, phase, conditions, container states, and what it takes from
    its node (the operator's own share of node usage)."""
    meta, spec, st = pod["metadata"], pod.get("spec") or {}, pod.get("status") or {}
    labels = meta.get("labels") or {}
    out_meta: SlimPodMeta = {
        "name": meta["name"], "namespace": meta.get("namespace"), "uid": meta.get("uid"),
        "labels": {k: labels[k] for k in POD_LABELS if k in labels},
        "ownerReferences": [{"kind": r.get("kind"), "uid": r.get("uid"),
                             "controller": r.get("controller")}
                            for r in meta.get("ownerReferences") or []],
    }
    if meta.get("deletionTimestamp"):
        out_meta["deletionTimestamp"] = meta["deletionTimestamp"]
        out_meta["deletionGracePeriodSeconds"] = meta.get("deletionGracePeriodSeconds")
    if meta.get("creationTimestamp"):
        out_meta["creationTimestamp"] = meta["creationTimestamp"]
    conds: list[SlimCondition] = [
        {"type": c.get("type"), "status": c.get("status"), "reason": c.get("reason"),
         "message": c.get("message")}
        for c in st.get("conditions") or []
        if c.get("type") in ("DisruptionTarget", "PodScheduled", "Ready")]
    cstats: list[SlimContainerStatus] = []
    raw: str | None = None  # the first terminated container's message
    for c in st.get("containerStatuses") or []:
        state = dict(c.get("state") or {})
        if isinstance(term := state.get("terminated"), dict) and term:
            if raw is None:  # the container jobs/pods.py reads: the first terminated one
                raw = str(term.get("message") or "")
            state["terminated"] = {k: v for k, v in term.items() if k != "message"}
        cstats.append({"name": c.get("name"), "state": state,
                       "restartCount": c.get("restartCount", 0)})
    out_st: SlimPodStatus = {"phase": st.get("phase"), "conditions": conds,
                             "containerStatuses": cstats}
    if raw:
        out_st["termination"] = termination(raw)
    if st.get("reason"):
        out_st["reason"] = st["reason"]
    if st.get("message"):
        out_st["message"] = str(st["message"])[:512]
    out_spec: SlimPodSpec = {"nodeName": spec.get("nodeName")}
    if containers := _requests(pod):
        out_spec["containers"] = containers
    return {"metadata": out_meta, "spec": out_spec, "status": out_st}


def termination(raw: str) -> SlimTermination:
    """A termination message, parsed strictly (reports/model.py) once, here: a message that
    breaks the model is not kept (``rejected`` says why, for the report channel's count); plain
    text (the log tail a crashed trainer leaves) is kept as its last 512 characters."""
    rejected: list[BadReport] = []
    parsed = parse_termination(raw, rejected.append)
    tail = "" if parsed is not None or raw.lstrip().startswith("{") else "".join(
        c for c in raw.strip()[-512:] if c.isprintable() or c == "\n")
    bad = (rejected[0].reason, rejected[0].detail) if rejected else None
    return {"parsed": parsed, "logTail": tail, "rejected": bad}


def slim_usage(pod: dict[str, Any]) -> SlimUsage | None:
    """A pod of another workload as what it takes from a node: only pods bound to a node that
    request extended resources; everything else is not kept. The operator's own pods are
    counted from the pods store instead (one source with their placement: two watches would
    see a binding at different moments and a GPU could be handed out twice)."""
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if labels.get(MANAGED_BY_LABEL) == MANAGED_BY_VALUE:
        return None
    spec, status = pod.get("spec") or {}, pod.get("status") or {}
    # bound, or nominated by the scheduler after it preempted for it (the GPUs it freed are
    # spoken for: admitting a job onto them would be preempted again)
    node = spec.get("nodeName") or status.get("nominatedNodeName")
    if not node or status.get("phase") in ("Succeeded", "Failed"):
        return None
    containers = _requests(pod)
    if not containers:
        return None
    return {"spec": {"nodeName": str(node), "containers": containers},
            "status": {"phase": "Running"}}


def slim_node(node: dict[str, Any]) -> SlimNode:
    meta, spec, st = node["metadata"], node.get("spec") or {}, node.get("status") or {}
    ready = next((c.get("status") for c in st.get("conditions") or []
                  if c.get("type") == "Ready"), "Unknown")
    return {"metadata": {"name": meta["name"], "labels": dict(meta.get("labels") or {})},
            "spec": {"taints": [{"key": t.get("key"), "value": t.get("value"),
                                 "effect": t.get("effect")}
                                for t in spec.get("taints") or []],
                     "unschedulable": bool(spec.get("unschedulable"))},
            "status": {"allocatable": _counts(st.get("allocatable") or {}), "ready": ready}}


def slim_quota(rq: dict[str, Any]) -> SlimQuota:
    meta, spec, st = rq["metadata"], rq.get("spec") or {}, rq.get("status") or {}
    hard = _counts(st.get("hard") or {})
    used = {k: v for k, v in _counts(st.get("used") or {}).items() if k in hard}
    out_spec: SlimQuotaSpec = {}
    if spec.get("scopes"):
        out_spec["scopes"] = list(spec["scopes"])
    if spec.get("scopeSelector"):
        out_spec["scopeSelector"] = spec["scopeSelector"]
    return {"metadata": {"name": meta["name"], "namespace": meta.get("namespace")},
            "spec": out_spec, "status": {"hard": hard, "used": used}}


def slim_object(obj: dict[str, Any]) -> dict[str, Any]:
    """A small object of our own API group (a FineTuneSweep): everything but managedFields."""
    meta = {k: v for k, v in (obj.get("metadata") or {}).items() if k != "managedFields"}
    return {**obj, "metadata": meta}


def priority_value(pc: dict[str, Any]) -> int:
    return int(pc.get("value") or 0)


__all__ = [
    "Counts", "OnChange", "Reflector", "SlimNode", "SlimPod", "SlimQuota", "SlimUsage", "Source",
    "Store", "Transform", "object_key", "priority_value", "slim_node", "slim_object",
    "slim_pod", "slim_quota", "slim_usage", "wait_synced",
]
