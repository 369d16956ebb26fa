"""The only module that talks to the Kubernetes API.

Idempotent create-or-get (409 -> read), delete that tolerates 404, status merge patches, and
the list calls the reconcile loop needs for its snapshot. Every call is counted by verb and
resource so tests (and the metrics) can tell how many API calls a job lifecycle costs.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from .api import GROUP, PLURAL, VERSION

log = logging.getLogger(__name__)

MANAGED_BY = "app.kubernetes.io/managed-by=finetune-operator"


def load_client(kubeconfig: str | None = None) -> client.ApiClient:
    """In-cluster credentials when running in a pod, else the kubeconfig."""
    if kubeconfig is None:
        try:
            config.load_incluster_config()
            return client.ApiClient()
        except config.ConfigException:
            pass
    return config.new_client_from_config(config_file=kubeconfig)


class Kube:
    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.rbac = client.RbacAuthorizationV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.sched = client.SchedulingV1Api(api)
        self.calls: Counter[str] = Counter()

    def _count(self, verb: str, resource: str) -> None:
        self.calls[f"{verb} {resource}"] += 1

    # ------------------------------------------------------------------ reads for the snapshot

    def _sanitize(self, obj: Any) -> dict:
        out: dict = self.api.sanitize_for_serialization(obj)
        return out

    def list_jobs(self, namespaces: list[str]) -> list[dict]:
        self._count("list", PLURAL)
        if not namespaces:
            res: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
            return list(res["items"])
        out: list[dict] = []
        for ns in namespaces:
            page: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, ns, PLURAL)
            out.extend(page["items"])
        return out

    def list_managed_pods(self, namespaces: list[str]) -> list[dict]:
        self._count("list", "pods")
        if not namespaces:
            return [self._sanitize(p) for p in
                    self.core.list_pod_for_all_namespaces(label_selector=MANAGED_BY).items]
        return [self._sanitize(p) for ns in namespaces for p in
                self.core.list_namespaced_pod(ns, label_selector=MANAGED_BY).items]

    def list_active_pods(self) -> list[dict]:
        """Every non-terminated pod bound to a node: what uses node capacity."""
        self._count("list", "pods")
        sel = "status.phase!=Succeeded,status.phase!=Failed"
        return [self._sanitize(p) for p in
                self.core.list_pod_for_all_namespaces(field_selector=sel).items]

    def list_quotas(self) -> list[dict]:
        self._count("list", "resourcequotas")
        return [self._sanitize(q) for q in
                self.core.list_resource_quota_for_all_namespaces().items]

    def list_nodes(self) -> list[dict]:
        self._count("list", "nodes")
        return [self._sanitize(n) for n in self.core.list_node().items]

    def list_priority_classes(self) -> dict[str, int]:
        self._count("list", "priorityclasses")
        return {str(pc.metadata.name): int(pc.value or 0)
                for pc in self.sched.list_priority_class().items if pc.metadata}

    # ------------------------------------------------------------------ writes

    def patch_job_status(self, namespace: str, name: str, status: dict) -> None:
        self._count("patch", f"{PLURAL}/status")
        try:
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, namespace, PLURAL, name, {"status": status})
        except ApiException as e:
            if e.status != 404:  # deleted meanwhile: nothing to report on
                raise

    def create_or_get(self, obj: dict) -> dict:
        """Create; on 409 return the existing object (deterministic names make this idempotent)."""
        kind, ns = obj["kind"], obj["metadata"].get("namespace")
        create, read = self._crud(kind)
        self._count("create", kind)
        try:
            return self._sanitize(create(ns, obj))
        except ApiException as e:
            if e.status != 409:
                raise
        self._count("get", kind)
        return self._sanitize(read(obj["metadata"]["name"], ns))

    def create_or_patch(self, obj: dict) -> None:
        """For children whose content changes per attempt (Role rules, Service selector)."""
        kind, ns, name = obj["kind"], obj["metadata"]["namespace"], obj["metadata"]["name"]
        patch = {"Role": self.rbac.patch_namespaced_role,
                 "Service": self.core.patch_namespaced_service}[kind]
        self._count("patch", kind)
        try:
            patch(name, ns, obj)
        except ApiException as e:
            if e.status != 404:
                raise
            self.create_or_get(obj)

    def delete_pod(self, namespace: str, name: str, uid: str | None = None,
                   grace_seconds: int | None = None) -> bool:
        """Graceful delete honouring the pod's grace period; False when already gone."""
        self._count("delete", "Pod")
        body = client.V1DeleteOptions(
            grace_period_seconds=grace_seconds,
            preconditions=client.V1Preconditions(uid=uid) if uid else None,
        )
        try:
            self.core.delete_namespaced_pod(name, namespace, body=body)
            return True
        except ApiException as e:
            if e.status in (404, 409):
                return False
            raise

    def event(self, job: dict, type_: str, reason: str, message: str, now: dt.datetime) -> None:
        """A Kubernetes Event on the FineTuneJob (best effort: never fails the reconcile)."""
        meta = job["metadata"]
        ts = now.strftime("%Y-%m-%dT%H:%M:%SZ")
        ev = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{meta['name']}.",
                                         namespace=meta["namespace"]),
            involved_object=client.V1ObjectReference(
                api_version=f"{GROUP}/{VERSION}", kind="FineTuneJob", name=meta["name"],
                namespace=meta["namespace"], uid=meta.get("uid")),
            reason=reason, message=message[:1024], type=type_, count=1,
            first_timestamp=ts, last_timestamp=ts,
            source=client.V1EventSource(component="finetune-operator"),
            reporting_component="finetune.dev/operator", reporting_instance="finetune-operator",
        )
        self._count("create", "Event")
        try:
            self.core.create_namespaced_event(meta["namespace"], ev)
        except ApiException as e:
            log.warning("could not record event %s on %s/%s: %s", reason, meta["namespace"],
                        meta["name"], e.reason)

    # ------------------------------------------------------------------ leader election

    def hold_lease(self, namespace: str, name: str, identity: str, duration_s: int,
                   now: dt.datetime) -> bool:
        """Acquire or renew a coordination Lease; True while this identity holds it."""
        coord = client.CoordinationV1Api(self.api)
        self._count("get", "Lease")
        micro = now  # MicroTime; the client serializes datetimes as RFC 3339
        try:
            lease = coord.read_namespaced_lease(name, namespace)
        except ApiException as e:
            if e.status != 404:
                raise
            body = client.V1Lease(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace),
                spec=client.V1LeaseSpec(holder_identity=identity, lease_duration_seconds=duration_s,
                                        acquire_time=micro, renew_time=micro))
            self._count("create", "Lease")
            try:
                coord.create_namespaced_lease(namespace, body)
                return True
            except ApiException as e2:
                if e2.status == 409:
                    return False
                raise
        spec = lease.spec or client.V1LeaseSpec()
        lease.spec = spec
        renew = spec.renew_time
        expired = renew is None or (now - renew).total_seconds() > (
            spec.lease_duration_seconds or duration_s)
        if spec.holder_identity != identity and not expired:
            return False
        if spec.holder_identity != identity:
            spec.acquire_time = micro
            spec.lease_transitions = (spec.lease_transitions or 0) + 1
        spec.holder_identity, spec.renew_time = identity, micro
        spec.lease_duration_seconds = duration_s
        self._count("replace", "Lease")
        try:
            coord.replace_namespaced_lease(name, namespace, lease)  # resourceVersion guards races
            return True
        except ApiException as e:
            if e.status == 409:
                return False
            raise

    def release_lease(self, namespace: str, name: str, identity: str) -> None:
        """Give the Lease up (only if still ours) so a standby takes over without waiting."""
        coord = client.CoordinationV1Api(self.api)
        self._count("get", "Lease")
        lease = coord.read_namespaced_lease(name, namespace)
        if lease.spec is None or lease.spec.holder_identity != identity:
            return
        lease.spec.holder_identity = None
        lease.spec.renew_time = None
        self._count("replace", "Lease")
        coord.replace_namespaced_lease(name, namespace, lease)

    # ------------------------------------------------------------------ dispatch

    def _crud(self, kind: str) -> tuple[Callable[[str, dict], Any], Callable[[str, str], Any]]:
        c: Any = self.core  # the client accepts plain dict bodies; its stubs say V1* models
        r: Any = self.rbac
        table: dict[str, tuple[Callable[[str, dict], Any], Callable[[str, str], Any]]] = {
            "Pod": (lambda ns, b: c.create_namespaced_pod(ns, b),
                    lambda n, ns: c.read_namespaced_pod(n, ns)),
            "ConfigMap": (lambda ns, b: c.create_namespaced_config_map(ns, b),
                          lambda n, ns: c.read_namespaced_config_map(n, ns)),
            "PersistentVolumeClaim": (
                lambda ns, b: c.create_namespaced_persistent_volume_claim(ns, b),
                lambda n, ns: c.read_namespaced_persistent_volume_claim(n, ns)),
            "Service": (lambda ns, b: c.create_namespaced_service(ns, b),
                        lambda n, ns: c.read_namespaced_service(n, ns)),
            "ServiceAccount": (lambda ns, b: c.create_namespaced_service_account(ns, b),
                               lambda n, ns: c.read_namespaced_service_account(n, ns)),
            "Role": (lambda ns, b: r.create_namespaced_role(ns, b),
                     lambda n, ns: r.read_namespaced_role(n, ns)),
            "RoleBinding": (lambda ns, b: r.create_namespaced_role_binding(ns, b),
                            lambda n, ns: r.read_namespaced_role_binding(n, ns)),
        }
        if kind not in table:
            raise ValueError(f"k8s.create_or_get: unsupported kind {kind}")
        return table[kind]


    # ============================================================ FineTuneSweep (sweep/) ====
    # Used by finetune_operator.sweep.SweepRunner only; additive. Its (verb, resource) pairs are
    # sweep.runner.SWEEP_SURFACE (registered as extra surface when the sweep package loads).

    def list_sweeps(self, namespaces: list[str]) -> list[dict]:
        """FineTuneSweeps of the watched namespaces (every namespace when empty)."""
        from .api.sweep import SWEEP_PLURAL

        api = client.CustomObjectsApi(self.api)
        self._count("list", SWEEP_PLURAL)
        if not namespaces:
            res: Any = api.list_cluster_custom_object(GROUP, VERSION, SWEEP_PLURAL,
                                                      _request_timeout=30)
            return list(res["items"])
        out: list[dict] = []
        for ns in namespaces:
            page: Any = api.list_namespaced_custom_object(GROUP, VERSION, ns, SWEEP_PLURAL,
                                                          _request_timeout=30)
            out.extend(page["items"])
        return out

    def create_trial(self, body: dict) -> tuple[dict, bool]:
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

    def patch_sweep_status(self, namespace: str, name: str, status: dict) -> bool:
        """Merge-patch a FineTuneSweep's status; False when the sweep is gone."""
        from .api.sweep import SWEEP_PLURAL

        api = client.CustomObjectsApi(self.api)
        self._count("patch", f"{SWEEP_PLURAL}/status")
        try:
            api.patch_namespaced_custom_object_status(GROUP, VERSION, namespace, SWEEP_PLURAL,
                                                      name, {"status": status},
                                                      _request_timeout=30)
            return True
        except ApiException as e:
            if e.status != 404:
                raise
            return False

    def stop_trial(self, namespace: str, name: str, uid: str, annotations: dict) -> bool:
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


    # ============================================== report channel (reports/identity.py) ====
    # Used by finetune_operator.reports.identity.TokenAuthenticator only; additive.

    def token_review(self, token: str, audiences: list[str]) -> dict:
        """TokenReview of a trainer's projected token for ``audiences``: the review's ``status``
        (``authenticated``, ``audiences``, ``user.username``/``extra`` with the pod's name and
        uid). Raises ApiException when the API server cannot answer."""
        self._count("create", "tokenreviews")
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenReview",
                "spec": {"token": token, "audiences": list(audiences)}}
        res = client.AuthenticationV1Api(self.api).create_token_review(body, _request_timeout=10)
        out: dict = self.api.sanitize_for_serialization(res).get("status") or {}
        return out
    # ========================================== end report channel (reports/identity.py) ===


# ---- used by the kubectl plugin (finetune_operator.cli) ------------------------------------
# Reads and spec patches on behalf of a user, with the user's own credentials. Additive: nothing
# above uses it. API errors are raised as ApiException; the plugin turns them into messages.

SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"


def plugin_client(kubeconfig: str | None = None,
                  context: str | None = None) -> tuple[client.ApiClient, str]:
    """(client, default namespace) the way kubectl finds them: ``--kubeconfig``, else
    ``$KUBECONFIG`` (a ':'-separated list is merged), else in-cluster credentials, else
    ``~/.kube/config``. The namespace is the context's (``default`` when it names none)."""
    import os
    from pathlib import Path

    path = kubeconfig or os.environ.get("KUBECONFIG") or None
    if path is None and os.environ.get("KUBERNETES_SERVICE_HOST") and context is None:
        try:
            config.load_incluster_config()
            ns_file = Path(SA_DIR, "namespace")
            ns = ns_file.read_text().strip() if ns_file.exists() else "default"
            return client.ApiClient(), ns or "default"
        except config.ConfigException:
            pass
    path = path or str(Path("~/.kube/config").expanduser())
    api = config.new_client_from_config(config_file=path, context=context)
    contexts, active = config.list_kube_config_contexts(config_file=path)
    chosen = next((c for c in contexts if c.get("name") == context), None) if context else active
    ns = ((chosen or {}).get("context") or {}).get("namespace") or "default"
    return api, str(ns)


class PluginApi:
    """The calls of ``kubectl finetune``; every result is a plain dict as the API returns it."""

    def __init__(self, api: client.ApiClient) -> None:
        self.api = api
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)

    @property
    def server(self) -> str:
        return str(self.api.configuration.host)

    def _plain(self, obj: Any) -> dict:
        out: dict = self.api.sanitize_for_serialization(obj)
        return out

    def get_job(self, namespace: str, name: str) -> dict:
        res: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                            name)
        return dict(res)

    def list_jobs(self, namespace: str | None) -> list[dict]:
        """Jobs of one namespace, or of every namespace (None)."""
        if namespace is None:
            res: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, PLURAL)
        else:
            res = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL)
        return list(res["items"])

    def create_job(self, namespace: str, body: dict, dry_run: bool = False) -> dict:
        kwargs: dict[str, Any] = {"dry_run": "All"} if dry_run else {}
        res: Any = self.custom.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                               body, **kwargs)
        return dict(res)

    def patch_job_spec(self, namespace: str, name: str, spec: dict) -> dict:
        """A merge patch of ``spec`` (e.g. ``{"suspend": True}``)."""
        res: Any = self.custom.patch_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                              name, {"spec": spec})
        return dict(res)

    def list_events(self, namespace: str, kind: str, name: str) -> list[dict]:
        sel = f"involvedObject.kind={kind},involvedObject.name={name}"
        return [self._plain(e) for e in
                self.core.list_namespaced_event(namespace, field_selector=sel).items]

    def list_pods(self, namespace: str, label_selector: str) -> list[dict]:
        return [self._plain(p) for p in
                self.core.list_namespaced_pod(namespace, label_selector=label_selector).items]

    def pod_log(self, namespace: str, pod: str, container: str, tail: int | None = None,
                follow: bool = False) -> Any:
        """The pods/log stream (an urllib3 response: iterate ``.stream()``, then release)."""
        return self.core.read_namespaced_pod_log(
            pod, namespace, container=container, tail_lines=tail, follow=follow,
            _preload_content=False)

    def get_node(self, name: str) -> dict | None:
        try:
            return self._plain(self.core.read_node(name))
        except ApiException as e:
            if e.status in (403, 404):  # users often may not read nodes: no hint then
                return None
            raise

    def list_quotas(self, namespace: str | None) -> list[dict]:
        if namespace is None:
            items = self.core.list_resource_quota_for_all_namespaces().items
        else:
            items = self.core.list_namespaced_resource_quota(namespace).items
        return [self._plain(q) for q in items]
