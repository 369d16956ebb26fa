"""The only module that talks to the Kubernetes API.

The operator reads the cluster through list+watch streams of raw JSON (``list_raw`` and
``watch_raw``, fed into the in-memory cache of ``cache.py``) and writes through a few
idempotent calls: create (409 -> read the existing object, never adopt it), delete that
tolerates 404, status merge patches guarded by resourceVersion, Events and the leader Lease.
Every request has a timeout and is counted by verb and resource (``Kube.calls`` and the
``finetune_api_requests_total`` metric), so tests can hold a job lifecycle to a write budget.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from typing import Any
from urllib.parse import quote

import urllib3
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_api import GROUP, PLURAL, VERSION
from finetune_api.server import SERVER_PLURAL
from finetune_api.sweep import SWEEP_PLURAL
from finetune_api.times import parse_time
from finetune_operator import metrics
from finetune_operator.jobs.ports import Refused

log = logging.getLogger(__name__)

WRITE_VERBS = frozenset({"create", "patch", "update", "replace", "delete"})

# Collection paths of what the operator watches (cluster-wide, or per namespace).
JOBS_PATH = f"/apis/{GROUP}/{VERSION}/{PLURAL}"
PODS_PATH = "/api/v1/pods"
NODES_PATH = "/api/v1/nodes"
QUOTAS_PATH = "/api/v1/resourcequotas"
CLASSES_PATH = "/apis/scheduling.k8s.io/v1/priorityclasses"
SWEEPS_PATH = f"/apis/{GROUP}/{VERSION}/{SWEEP_PLURAL}"
SERVERS_PATH = f"/apis/{GROUP}/{VERSION}/{SERVER_PLURAL}"
# GPU sharing: the DRA objects the admission reads
SLICES_PATH = "/apis/resource.k8s.io/v1/resourceslices"
CLAIMS_PATH = "/apis/resource.k8s.io/v1/resourceclaims"
# admission mode kueue (kueue/): the Workloads the operator owns and Kueue's ResourceFlavors
WORKLOADS_PATH = "/apis/kueue.x-k8s.io/v1beta2/workloads"
FLAVORS_PATH = "/apis/kueue.x-k8s.io/v1beta2/resourceflavors"
_NAMESPACED = {JOBS_PATH: (f"/apis/{GROUP}/{VERSION}", PLURAL),
               SWEEPS_PATH: (f"/apis/{GROUP}/{VERSION}", SWEEP_PLURAL),
               SERVERS_PATH: (f"/apis/{GROUP}/{VERSION}", SERVER_PLURAL),
               PODS_PATH: ("/api/v1", "pods"), QUOTAS_PATH: ("/api/v1", "resourcequotas"),
               WORKLOADS_PATH: ("/apis/kueue.x-k8s.io/v1beta2", "workloads")}
_RESOURCE = {SWEEPS_PATH: SWEEP_PLURAL, SERVERS_PATH: SERVER_PLURAL, JOBS_PATH: PLURAL,
             PODS_PATH: "pods",
             NODES_PATH: "nodes", QUOTAS_PATH: "resourcequotas", CLASSES_PATH: "priorityclasses",
             WORKLOADS_PATH: "workloads", FLAVORS_PATH: "resourceflavors",
             SLICES_PATH: "resourceslices", CLAIMS_PATH: "resourceclaims"}
_KIND_PATH = {"Pod": ("/api/v1", "pods"), "ConfigMap": ("/api/v1", "configmaps"),
              "PersistentVolumeClaim": ("/api/v1", "persistentvolumeclaims"),
              "Service": ("/api/v1", "services"), "ServiceAccount": ("/api/v1", "serviceaccounts"),
              "Event": ("/api/v1", "events"),
              "Role": ("/apis/rbac.authorization.k8s.io/v1", "roles"),
              "RoleBinding": ("/apis/rbac.authorization.k8s.io/v1", "rolebindings"),
              "FineTuneJob": (f"/apis/{GROUP}/{VERSION}", PLURAL),
              "Lease": ("/apis/coordination.k8s.io/v1", "leases"),
              "Workload": ("/apis/kueue.x-k8s.io/v1beta2", "workloads"),
              "ResourceClaimTemplate": ("/apis/resource.k8s.io/v1", "resourceclaimtemplates")}
MERGE_PATCH = "application/merge-patch+json"
# Writes that do not change the cluster's state: allowed to every replica (see Kube's fence).
UNFENCED = frozenset({"Lease", "tokenreviews", "subjectaccessreviews"})


class Unreachable(OSError):
    """The API server gave no answer within the request timeout (or the connection broke):
    nothing says whether a write landed; the caller retries as after any transport error."""


class Fenced(OSError):
    """A write refused before it was sent: this replica does not hold the leader Lease (any
    more). The leader that does will plan it again."""


def api_message(e: ApiException) -> str:
    """The API server's message of an error (its Status body), at most 300 characters."""
    try:
        return str(json.loads(e.body or "{}").get("message", ""))[:300]
    except (ValueError, AttributeError, TypeError):
        return str(e.body)[:300]


def _no_read_retries() -> urllib3.Retry:
    """A request that timed out is not sent again: one call costs at most the request timeout
    (urllib3 retries idempotent calls 3 times by default: 4x the timeout), so a paused API
    server cannot hold the Lease thread past the Lease."""
    return urllib3.Retry(total=1, read=0, redirect=0, status=0)


def load_client(kubeconfig: str | None = None, pool_size: int = 32) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig; a connection pool
    large enough for the concurrent writes of one cycle plus the watch streams."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()  # type: ignore[no-untyped-call, unused-ignore]
            cfg = client.Configuration.get_default_copy()
            cfg.connection_pool_maxsize, cfg.retries = pool_size, _no_read_retries()
            return client.ApiClient(cfg)
        except config.ConfigException:
            pass
    cfg = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=cfg)  # type: ignore[no-untyped-call, unused-ignore]
    cfg.connection_pool_maxsize, cfg.retries = pool_size, _no_read_retries()
    return client.ApiClient(cfg)


def collection_path(path: str, namespace: str | None) -> str:
    """A watched collection, narrowed to one namespace when given."""
    if namespace is None or path not in _NAMESPACED:
        return path
    prefix, plural = _NAMESPACED[path]
    return f"{prefix}/namespaces/{quote(namespace)}/{plural}"


def object_path(kind: str, namespace: str | None, name: str | None = None) -> str:
    prefix, plural = _KIND_PATH[kind]
    base = f"{prefix}/namespaces/{quote(namespace)}/{plural}" if namespace else \
        f"{prefix}/{plural}"
    return f"{base}/{quote(name)}" if name else base


# Every (verb, resource) the operator calls, declared here and nowhere else: the chart's
# ClusterRole grants exactly these (tests/unit/test_chart.py diffs them); a call outside this
# set is logged as an error at run time and caught by the tests.
JOB_SURFACE: frozenset[tuple[str, str]] = frozenset({
    ("list", PLURAL), ("watch", PLURAL), ("patch", f"{PLURAL}/status"), ("delete", PLURAL),
    ("list", "pods"), ("watch", "pods"), ("create", "Pod"), ("get", "Pod"), ("delete", "Pod"),
    ("list", "nodes"), ("watch", "nodes"),
    ("list", "resourcequotas"), ("watch", "resourcequotas"),
    ("list", "priorityclasses"), ("watch", "priorityclasses"),
    ("create", "ConfigMap"), ("get", "ConfigMap"),
    ("create", "PersistentVolumeClaim"), ("get", "PersistentVolumeClaim"),
    ("create", "Service"), ("get", "Service"), ("patch", "Service"),
    ("create", "Event"),
    ("get", "Lease"), ("create", "Lease"), ("replace", "Lease"),
    ("create", "tokenreviews"), ("create", "subjectaccessreviews"),
})
# the FineTuneSweep controller (sweep/): its sweeps, and the trial FineTuneJobs it creates/stops
SWEEP_SURFACE: frozenset[tuple[str, str]] = frozenset({
    ("list", SWEEP_PLURAL), ("watch", SWEEP_PLURAL), ("patch", f"{SWEEP_PLURAL}/status"),
    ("create", PLURAL), ("get", PLURAL), ("patch", PLURAL),
})
# GPU sharing (settings shared_gpu_device_class): the shareable GPUs (ResourceSlices), what the
# allocated ResourceClaims hold of them, and each shared attempt's claim template
SHARING_SURFACE: frozenset[tuple[str, str]] = frozenset({
    ("list", "resourceslices"), ("watch", "resourceslices"),
    ("list", "resourceclaims"), ("watch", "resourceclaims"),
    ("create", "ResourceClaimTemplate"), ("get", "ResourceClaimTemplate"),
})
# admission mode kueue (kueue/sync.py): the Workload of each job, and the flavors Kueue assigns
KUEUE_SURFACE: frozenset[tuple[str, str]] = frozenset({
    ("list", "workloads"), ("watch", "workloads"), ("create", "Workload"),
    ("patch", "Workload"), ("patch", "workloads/status"), ("delete", "Workload"),
    ("list", "resourceflavors"), ("watch", "resourceflavors"),
})
# the ModelServer controller (serving/): its servers and their status; the server's pod and
# Service are created with JOB_SURFACE's pod and service verbs
SERVING_SURFACE: frozenset[tuple[str, str]] = frozenset({
    ("list", SERVER_PLURAL), ("watch", SERVER_PLURAL), ("patch", f"{SERVER_PLURAL}/status"),
    ("create", "Pod"), ("get", "Pod"), ("delete", "Pod"), ("create", "Service"),
    ("get", "Service"),
})
API_SURFACE: frozenset[tuple[str, str]] = (JOB_SURFACE | SWEEP_SURFACE | KUEUE_SURFACE
                                           | SHARING_SURFACE | SERVING_SURFACE)
# the web console (finetune_operator.console), every call as the signed-in user: what it reads
# and the user's own actions (create with dry run, suspend/resume, delete, a dataset ConfigMap)
CONSOLE_SURFACE: frozenset[tuple[str, str]] = frozenset({
    ("list", PLURAL), ("watch", PLURAL), ("get", PLURAL), ("create", PLURAL), ("patch", PLURAL),
    ("delete", PLURAL), ("list", SWEEP_PLURAL), ("get", SWEEP_PLURAL), ("list", "events"),
    ("list", "resourcequotas"), ("list", "namespaces"), ("list", "priorityclasses"),
    ("create", "ConfigMap"), ("create", "selfsubjectaccessreviews"),
    ("create", "selfsubjectreviews"), ("create", "subjectaccessreviews"),
})


def _base(path: str) -> str:
    """/api/v1/namespaces/x/pods -> /api/v1/pods (the key of _RESOURCE)."""
    parts = path.split("/")
    if "namespaces" in parts:
        i = parts.index("namespaces")
        parts = parts[:i] + parts[i + 2:]
    return "/".join(parts)


class TokenBucket:
    """Client-side rate limit of every API call together (``FINETUNE_API_QPS`` /
    ``FINETUNE_API_BURST``), the token bucket of client-go's QPS/burst: ``burst`` calls go at
    once, then one per ``1/qps`` seconds. A caller past the bucket reserves the next token and
    sleeps until it is due (outside the lock: waiting callers queue in arrival order, each
    for its own slot). ``qps`` 0 = no limit. Clock and sleep are injectable (tests)."""

    def __init__(self, qps: float, burst: int = 0,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep) -> None:
        self.qps = qps
        self.burst = burst if burst > 0 else max(1, math.ceil(2 * qps))
        self._clock, self._sleep = clock, sleep
        self._tokens = float(self.burst)
        self._at = clock()
        self._lock = threading.Lock()
        self.waits = 0  # calls that had to wait for a token

    def acquire(self) -> float:
        """Take one token, waiting for it if none is left; the seconds waited (0 = none)."""
        if self.qps <= 0:
            return 0.0
        with self._lock:
            now = self._clock()
            self._tokens = min(float(self.burst), self._tokens + (now - self._at) * self.qps)
            self._at = now
            self._tokens -= 1
            wait = -self._tokens / self.qps if self._tokens < 0 else 0.0
            if wait:
                self.waits += 1
        if wait:
            self._sleep(wait)
        return wait


class Kube:
    """``fence`` is checked right before every write but the UNFENCED ones: the operator
    passes its Lease's (``jobs/lease.py`` ``Fence.may_write``), so a deposed leader (paused
    past its Lease) sends nothing; without one every write is sent (tools, tests).
    ``limiter`` is the one token bucket every call takes a token from before it is sent
    (``FINETUNE_API_QPS``; none = no client-side limit)."""

    def __init__(self, api: client.ApiClient, timeout_seconds: float = 10.0,
                 fence: Callable[[], bool] = lambda: True,
                 limiter: TokenBucket | None = None,
                 surface: frozenset[tuple[str, str]] = API_SURFACE,
                 headers: Mapping[str, str | tuple[str, ...]] | None = None) -> None:
        self.api = api
        self.timeout = timeout_seconds
        self.calls: Counter[str] = Counter()
        self._fence = fence
        self._limiter = limiter
        self._surface = surface  # the (verb, resource) pairs this program may call
        # sent with every request (impersonation); a tuple value is one header line per item
        # (Impersonate-Group: the API server reads each line as one group, never a list)
        self._headers = dict(headers or {})

    def _count(self, verb: str, resource: str) -> None:
        """Count a call about to be sent, once the limiter gave it a token; a write while
        fenced raises Fenced instead."""
        if verb in WRITE_VERBS and resource not in UNFENCED and not self._fence():
            raise Fenced(f"{verb} {resource}: this replica does not hold the leader Lease; "
                         "the write is left to the leader")
        if self._limiter is not None:
            self._limiter.acquire()
        self.calls[f"{verb} {resource}"] += 1
        metrics.count_api_request(verb, resource)
        if (verb, resource) not in self._surface:
            log.error("API call %s %s is not in this client's surface (kube.client.API_SURFACE "
                      "or CONSOLE_SURFACE; the chart's RBAC grants only those): add it there and "
                      "to the chart", verb, resource)

    def writes(self, exclude: tuple[str, ...] = ("Lease",)) -> int:
        """API writes so far (create/patch/replace/delete), leader-election Lease excluded."""
        return sum(n for k, n in self.calls.items()
                   if k.split(" ", 1)[0] in WRITE_VERBS and k.split(" ", 1)[1] not in exclude)

    # ------------------------------------------------------------------ raw JSON requests

    def _request(self, method: str, path: str, query: list[tuple[str, Any]] | None = None,
                 body: Any = None, content_type: str = "application/json",
                 timeout: float | tuple[float, float] | None = None, stream: bool = False) -> Any:
        """One request; returns the decoded JSON body (or the raw response when streaming).
        Non-2xx raises ApiException with the server's status and message."""
        headers = {"Accept": "application/json", "Content-Type": content_type,
                   **{k: v for k, v in self._headers.items() if isinstance(v, str)}}
        _, url, serialized, _, _ = self.api.param_serialize(
            method, path, query_params=query or [], header_params=headers,
            auth_settings=["BearerToken"])
        hdrs: Mapping[str, str] = serialized
        repeated = [(k, v) for k, vs in self._headers.items() if not isinstance(vs, str)
                    for v in vs]
        if repeated:  # a dict holds one value per name: these go as separate header lines
            lines = urllib3.HTTPHeaderDict(serialized)
            for k, v in repeated:
                lines.add(k, v)
            hdrs = lines
        limit = timeout if timeout is not None else self.timeout
        try:
            resp = self.api.rest_client.request(  # type: ignore[no-untyped-call, unused-ignore]
                method, url, headers=hdrs, body=body, _request_timeout=limit)
        except urllib3.exceptions.HTTPError as e:  # timeout, refused, reset: an OSError
            raise Unreachable(f"{method} {path}: no answer from the API server (timeout "
                              f"{limit}s): {e}") from e
        raw = resp.response
        if not 200 <= resp.status <= 299:
            data = raw.data
            raw.release_conn()
            exc = ApiException(status=resp.status, reason=resp.reason)
            exc.body = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
            raise exc
        if stream:
            return raw
        data = raw.data
        raw.release_conn()
        return json.loads(data) if data else {}

    def list_raw(self, path: str, label_selector: str | None = None,
                 field_selector: str | None = None,
                 page: int = 500) -> tuple[list[dict[str, Any]], str]:
        """Every object of a collection (paginated) and the list's resourceVersion."""
        items: list[dict[str, Any]] = []
        cont: str | None = None
        while True:
            q: list[tuple[str, Any]] = [("limit", page)]
            if label_selector:
                q.append(("labelSelector", label_selector))
            if field_selector:
                q.append(("fieldSelector", field_selector))
            if cont:
                q.append(("continue", cont))
            self._count("list", _RESOURCE.get(_base(path), path))
            res = self._request("GET", path, q, timeout=(self.timeout, 120))
            items.extend(res.get("items") or [])
            meta = res.get("metadata") or {}
            cont = meta.get("continue")
            if not cont:
                return items, str(meta.get("resourceVersion") or "")

    def watch_raw(self, path: str, resource_version: str, label_selector: str | None = None,
                  field_selector: str | None = None, timeout_seconds: int = 300,
                  ) -> Iterator[tuple[str, dict[str, Any]]]:
        """(type, object) events from resourceVersion on, with bookmarks; ends when the server
        closes the stream. An ERROR event carries a Status (410 Gone: relist)."""
        q: list[tuple[str, Any]] = [("watch", "true"), ("resourceVersion", resource_version),
                                    ("allowWatchBookmarks", "true"),
                                    ("timeoutSeconds", timeout_seconds)]
        if label_selector:
            q.append(("labelSelector", label_selector))
        if field_selector:
            q.append(("fieldSelector", field_selector))
        self._count("watch", _RESOURCE.get(_base(path), path))
        raw = self._request("GET", path, q, stream=True,
                            timeout=(self.timeout, timeout_seconds + 30))
        try:
            buf = b""
            for chunk in raw.stream(64 * 1024, decode_content=True):
                buf += chunk
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    if line.strip():
                        ev = json.loads(line)
                        yield str(ev.get("type")), ev.get("object") or {}
        finally:
            raw.release_conn()

    # ------------------------------------------------------------------ writes

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any],
                         resource_version: str | None = None) -> dict[str, Any] | None:
        """Merge-patch the status; with resource_version the write fails with 409 when the job
        changed meanwhile (optimistic concurrency). Returns the updated job, None when gone."""
        self._count("patch", f"{PLURAL}/status")
        body: dict[str, Any] = {"status": status}
        if resource_version:
            body["metadata"] = {"resourceVersion": resource_version}
        try:
            res: dict[str, Any] = self._request("PATCH", object_path("FineTuneJob", namespace, name)
                                      + "/status", body=body, content_type=MERGE_PATCH)
            return res
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to report on
                raise
            return None

    def create_workload(self, obj: dict[str, Any]) -> dict[str, Any] | None:
        """Create a job's Kueue Workload; None when one of that name exists already (the
        watch brings it; the name is derived from the job's uid)."""
        try:
            return self.create(obj)
        except ApiException as e:
            if e.status != 409:
                raise
            return None

    def patch_workload(self, namespace: str, name: str, body: dict[str, Any],
                       resource_version: str, status: bool = False) -> dict[str, Any] | None:
        """Merge-patch a Workload (``status``: its status subresource), guarded by its
        resourceVersion (409 when Kueue changed it meanwhile: planned again from the watch).
        None when it is gone."""
        self._count("patch", "workloads/status" if status else "Workload")
        path = object_path("Workload", namespace, name) + ("/status" if status else "")
        body = {**body, "metadata": {"resourceVersion": resource_version}}
        try:
            res: dict[str, Any] = self._request("PATCH", path, body=body,
                                                content_type=MERGE_PATCH)
            return res
        except ApiException as e:
            if e.status != 404:
                raise
            return None

    def delete_workload(self, namespace: str, name: str, uid: str) -> bool:
        """Delete a job's Workload (that uid only); False when already gone."""
        self._count("delete", "Workload")
        try:
            self._request("DELETE", object_path("Workload", namespace, name),
                          body={"preconditions": {"uid": uid}})
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise

    def delete_job(self, namespace: str, name: str, uid: str) -> bool:
        """Delete a finished job (ttlSecondsAfterFinished); its children go by owner reference."""
        self._count("delete", PLURAL)
        try:
            self._request("DELETE", object_path("FineTuneJob", namespace, name), body={
                "propagationPolicy": "Background", "preconditions": {"uid": uid}})
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise

    def create(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create; raises ApiException (409 when the name exists)."""
        kind, ns = obj["kind"], obj["metadata"].get("namespace")
        self._count("create", kind)
        res: dict[str, Any] = self._request("POST", object_path(kind, ns), body=obj)
        return res

    def get(self, kind: str, namespace: str | None, name: str) -> dict[str, Any]:
        self._count("get", kind)
        res: dict[str, Any] = self._request("GET", object_path(kind, namespace, name))
        return res

    def create_or_get(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create; on 409 return the existing object (deterministic names make this
        idempotent). The caller checks that the existing object is its own (owner uid)."""
        try:
            return self.create(obj)
        except ApiException as e:
            if e.status != 409:
                raise
        return self.get(obj["kind"], obj["metadata"].get("namespace"), obj["metadata"]["name"])

    def create_or_patch(self, obj: dict[str, Any]) -> dict[str, Any]:
        """For children whose content changes per attempt (Service selector): create, or
        merge-patch the existing one (the caller checked it is its own)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        try:
            return self.create(obj)
        except ApiException as e:
            if e.status != 409:
                raise
        existing = self.get(kind, ns, name)
        owners = {r.get("uid") for r in existing.get("metadata", {}).get("ownerReferences") or []}
        mine = {r.get("uid") for r in obj["metadata"].get("ownerReferences") or []}
        if not owners & mine:
            return existing  # not ours: never patched; the caller reports the conflict
        self._count("patch", kind)
        res: dict[str, Any] = self._request("PATCH", object_path(kind, ns, name), body=obj,
                                  content_type=MERGE_PATCH)
        return res

    def create_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        """An attempt's child (``jobs.ports.JobKube.create_child``): a Service is created or
        patched, anything else created or read; a refusal the user must fix (quota, webhook,
        policy: 400/403/404/422) raises ``Refused`` with the server's message."""
        try:
            return (self.create_or_patch(obj) if obj["kind"] == "Service"
                    else self.create_or_get(obj))
        except ApiException as e:
            if e.status in (403, 400, 422, 404):
                raise Refused(api_message(e) or str(e.reason)) from e
            raise

    def delete_pod(self, namespace: str, name: str, uid: str | None = None,
                   grace_seconds: int | None = None) -> bool:
        """Graceful delete honouring the pod's grace period (grace_seconds=0: force, for a pod
        stuck Terminating on a lost node); False when already gone."""
        self._count("delete", "Pod")
        body: dict[str, Any] = {}
        if grace_seconds is not None:
            body["gracePeriodSeconds"] = grace_seconds
        if uid:
            body["preconditions"] = {"uid": uid}
        try:
            self._request("DELETE", object_path("Pod", namespace, name), body=body or None)
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise

    def event(self, job: Mapping[str, Any], type_: str, reason: str, message: str, now: dt.datetime,
              kind: str = "FineTuneJob") -> None:
        """A Kubernetes Event on the FineTuneJob, or on a Pod with ``kind="Pod"`` (best effort:
        never fails the reconcile)."""
        meta = job["metadata"]
        ts = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        api_version = "v1" if kind == "Pod" else f"{GROUP}/{VERSION}"
        ev = {"apiVersion": "v1", "kind": "Event",
              "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
              "involvedObject": {"apiVersion": api_version, "kind": kind,
                                 "name": meta["name"], "namespace": meta["namespace"],
                                 "uid": meta.get("uid")},
              "reason": reason, "message": message[:1024], "type": type_, "count": 1,
              "firstTimestamp": ts, "lastTimestamp": ts,
              "source": {"component": "finetune-operator"},
              "reportingComponent": "finetune.dev/operator",
              "reportingInstance": "finetune-operator"}
        try:
            self.create(ev)
        except ApiException as e:
            log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"],
                        meta["name"], e.reason)

    # ------------------------------------------------------------------ visibility authz

    def may_list_jobs(self, token: str, namespace: str | None) -> bool:
        """Whether the bearer of ``token`` may list FineTuneJobs in ``namespace`` (None:
        cluster-wide): a TokenReview, then a SubjectAccessReview for that user."""
        attrs: dict[str, Any] = {"verb": "list", "group": GROUP, "resource": PLURAL}
        if namespace:
            attrs["namespace"] = namespace
        return bool(self.may_access(token, {"resourceAttributes": attrs}))

    def may_access(self, token: str, attributes: dict[str, Any]) -> bool | None:
        """Whether the bearer of ``token`` may do what ``attributes`` (a SubjectAccessReview's
        ``resourceAttributes`` or ``nonResourceAttributes``) say: a TokenReview (the API
        server's own audience), then a SubjectAccessReview for that user. None when the token
        is not authenticated (HTTP 401 for the caller; False is a 403)."""
        self._count("create", "tokenreviews")
        review = self._request("POST", "/apis/authentication.k8s.io/v1/tokenreviews", body={
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
            "spec": {"token": token}})
        st = review.get("status") or {}
        if not st.get("authenticated"):
            return None
        user = st.get("user") or {}
        self._count("create", "subjectaccessreviews")
        sar = self._request("POST", "/apis/authorization.k8s.io/v1/subjectaccessreviews", body={
            "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
            "spec": {"user": user.get("username"), "groups": user.get("groups") or [],
                     "uid": user.get("uid"), "extra": user.get("extra") or {}, **attributes}})
        return bool((sar.get("status") or {}).get("allowed"))

    # ------------------------------------------------------------------ leader election

    def hold_lease(self, namespace: str, name: str, identity: str, duration_s: int,
                   now: dt.datetime, known: dict[str, Any] | None = None
                   ) -> tuple[bool, dict[str, Any] | None]:
        """Acquire or renew a coordination Lease: (held, the Lease as last written/read).
        ``known`` is the Lease from the previous call: a renewal is then one PUT guarded by
        its resourceVersion (a GET only after a conflict)."""
        micro = now.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        lease = known
        if lease is None:
            try:
                lease = self.get("Lease", namespace, name)
            except ApiException as e:
                if e.status != 404:
                    raise
                body = {"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
                        "metadata": {"name": name, "namespace": namespace},
                        "spec": {"holderIdentity": identity, "leaseDurationSeconds": duration_s,
                                 "acquireTime": micro, "renewTime": micro,
                                 "leaseTransitions": 0}}
                try:
                    return True, self.create(body)
                except ApiException as e2:
                    if e2.status == 409:
                        return False, None
                    raise
        spec = lease.setdefault("spec", {})
        holder = spec.get("holderIdentity")
        renew = parse_time(spec.get("renewTime"))  # total: a bad value is "never renewed"
        expired = renew is None or (now - renew).total_seconds() > (
            spec.get("leaseDurationSeconds") or duration_s)
        if holder != identity and not expired:
            return False, lease
        if holder != identity:
            spec["acquireTime"] = micro
            spec["leaseTransitions"] = int(spec.get("leaseTransitions") or 0) + 1
        spec.update(holderIdentity=identity, renewTime=micro, leaseDurationSeconds=duration_s)
        self._count("replace", "Lease")
        try:
            res: dict[str, Any] = self._request("PUT", object_path("Lease", namespace, name),
                                                body=lease)
            return True, res
        except ApiException as e:
            if e.status == 409:  # someone else wrote it: read it fresh next time
                return False, None
            raise

    def release_lease(self, namespace: str, name: str, identity: str) -> None:
        """Give the Lease up (only if still ours) so a standby takes over without waiting."""
        lease = self.get("Lease", namespace, name)
        spec = lease.get("spec") or {}
        if spec.get("holderIdentity") != identity:
            return
        spec["holderIdentity"] = None
        spec["renewTime"] = None
        lease["spec"] = spec
        self._count("replace", "Lease")
        self._request("PUT", object_path("Lease", namespace, name), body=lease)


    # ================================================ web console (console/api.py) =========
    def call(self, verb: str, resource: str, method: str, path: str,
             query: list[tuple[str, Any]] | None = None, body: Any = None,
             content_type: str = "application/json") -> Any:
        """One counted request (``verb resource`` as the surface names it): the decoded JSON
        answer; non-2xx raises ApiException with the server's Status as its body."""
        self._count(verb, resource)
        return self._request(method, path, query, body, content_type)
    # ============================================ end web console (console/api.py) =========

    # ============================================================ FineTuneSweep (sweep/) ====
    # Used by finetune_operator.sweep.SweepRunner only; additive. Its (verb, resource) pairs are
    # SWEEP_SURFACE above.

    def list_sweeps(self, namespaces: list[str]) -> list[dict[str, Any]]:
        """FineTuneSweeps of the watched namespaces (every namespace when empty)."""
        api = client.CustomObjectsApi(self.api)
        self._count("list", SWEEP_PLURAL)
        if not namespaces:
            res: Any = api.list_cluster_custom_object(GROUP, VERSION, SWEEP_PLURAL,
                                                      _request_timeout=30)
            return list(res["items"])
        out: list[dict[str, Any]] = []
        for ns in namespaces:
            page: Any = api.list_namespaced_custom_object(GROUP, VERSION, ns, SWEEP_PLURAL,
                                                          _request_timeout=30)
            out.extend(page["items"])
        return out

    def create_trial(self, body: dict[str, Any]) -> tuple[dict[str, Any], bool]:
        """Create a sweep's trial FineTuneJob; on 409 read the one that exists (the caller
        checks its owner: a job the sweep does not own is never adopted). (object, created)."""
        api = client.CustomObjectsApi(self.api)
        ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
        self._count("create", PLURAL)
        try:
            res: Any = api.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body,
                                                           _request_timeout=30)
            return dict(res), True
        except ApiException as e:
            if e.status != 409:
                raise
        self._count("get", PLURAL)
        got: Any = api.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, name,
                                                    _request_timeout=30)
        return dict(got), False

    def patch_sweep_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch a FineTuneSweep's status; False when the sweep is gone."""
        self._count("patch", f"{SWEEP_PLURAL}/status")
        return self._patch_custom_status(SWEEP_PLURAL, namespace, name, status)

    def _patch_custom_status(self, plural: str, namespace: str, name: str,
                             status: dict[str, Any]) -> bool:
        """Merge-patch the status of one of our custom objects (the call counted by the
        caller); False when it is gone."""
        api = client.CustomObjectsApi(self.api)
        try:
            api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, plural, name,
                                                      {"status": status},
                                                      _request_timeout=30)
            return True
        except ApiException as e:
            if e.status != 404:
                raise
            return False

    def stop_trial(self, namespace: str, name: str, uid: str, annotations: dict[str, Any]) -> bool:
        """Early stop: ``spec.suspend: true`` (a graceful, checkpointed stop) plus the given
        annotations, in one merge patch guarded by the trial's uid; False when it is gone."""
        api = client.CustomObjectsApi(self.api)
        self._count("patch", PLURAL)
        body = {"metadata": {"uid": uid, "annotations": annotations},
                "spec": {"suspend": True}}
        try:
            api.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name, body,
                                               _request_timeout=30)
            return True
        except ApiException as e:
            if e.status in (404, 409, 422):  # gone, or another job of that name
                return False
            raise
    # ========================================================== end FineTuneSweep (sweep/) ===

    # ============================================================ ModelServer (serving/) ====
    # Used by finetune_operator.serving.ServingRunner only; additive. Its (verb, resource)
    # pairs are SERVING_SURFACE above.

    def create_server_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        """A server's pod or Service: created, or the existing one read (409; the caller
        checks its owner)."""
        return self.create_or_get(obj)

    def delete_server_pod(self, namespace: str, name: str, uid: str) -> bool:
        """A server pod that no longer fits its spec (a new claim to mount): deleted gracefully;
        False when already gone."""
        return self.delete_pod(namespace, name, uid)

    def patch_server_status(self, namespace: str, name: str, status: dict[str, Any]) -> bool:
        """Merge-patch a ModelServer's status; False when the server is gone."""
        self._count("patch", f"{SERVER_PLURAL}/status")
        return self._patch_custom_status(SERVER_PLURAL, namespace, name, status)
    # ========================================================= end ModelServer (serving/) ===


    # ============================================== report channel (http/identity.py) =======
    # Used by finetune_operator.http.identity.TokenAuthenticator only; additive.

    def token_review(self, token: str, audiences: list[str]) -> dict[str, Any]:
        """TokenReview of a trainer's projected token for ``audiences``: the review's ``status``
        (``authenticated``, ``audiences``, ``user.username``/``extra`` with the pod's name and
        uid). Raises ApiException when the API server cannot answer."""
        self._count("create", "tokenreviews")
        body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                     "spec": {"token": token, "audiences": list(audiences)}}
        res = client.AuthenticationV1Api(self.api).create_token_review(body, _request_timeout=10)
        out: dict[str, Any] = self.api.sanitize_for_serialization(res).get("status") or {}  # type: ignore[no-untyped-call, unused-ignore]
        return out
    # ========================================== end report channel (http/identity.py) =======
