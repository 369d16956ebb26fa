"""The kubectl plugin's API client: reads and spec patches on behalf of a user, with the
user's own credentials (kubectl's kubeconfig rules). API errors are raised as ApiException;
the plugin turns them into messages. Separate from the operator's client (kube/client.py):
the two programs share no client code."""

from __future__ import annotations

import json
import logging
import time
from typing import Any

from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from finetune_api import GROUP, PLURAL, VERSION
from finetune_api.labels import MANAGED_BY_SELECTOR
from finetune_operator.cli.endpoint import DirectUrl, Forbidden, ProxiedService, find_operator

log = logging.getLogger(__name__)


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

    def get_claim(self, namespace: str, name: str) -> dict | None:
        """A PersistentVolumeClaim, or None when there is none of that name."""
        try:
            return self._plain(self.core.read_namespaced_persistent_volume_claim(name, namespace))
        except ApiException as e:
            if e.status == 404:
                return None
            raise

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

    # ============================================================ FineTuneSweep (cli/sweeps.py) ===

    def get_sweep(self, namespace: str, name: str) -> dict:
        from finetune_api.sweep import SWEEP_PLURAL

        res: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace,
                                                            SWEEP_PLURAL, name)
        return dict(res)

    def list_sweeps(self, namespace: str | None) -> list[dict]:
        from finetune_api.sweep import SWEEP_PLURAL

        if namespace is None:
            res: Any = self.custom.list_cluster_custom_object(GROUP, VERSION, SWEEP_PLURAL)
        else:
            res = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace,
                                                            SWEEP_PLURAL)
        return list(res["items"])

    def list_jobs_labeled(self, namespace: str, label_selector: str) -> list[dict]:
        res: Any = self.custom.list_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL,
                                                             label_selector=label_selector)
        return list(res["items"])

    # ======================================== the operator's queue view (list --queue) ===

    def list_services(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        try:
            items = self.core.list_namespaced_service(namespace,
                                                      label_selector=label_selector).items
        except ApiException as e:
            if e.status == 403:
                raise Forbidden(str(e.reason)) from e
            raise
        return [self._plain(s) for s in items]

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        try:
            return self._plain(self.core.read_namespaced_service(name, namespace))
        except ApiException as e:
            if e.status == 404:
                return None
            if e.status == 403:
                raise Forbidden(str(e.reason)) from e
            raise

    def trainer_report(self, namespace: str) -> dict[str, Any] | None:
        import yaml

        try:
            cms: Any = self.core.list_namespaced_config_map(
                namespace, label_selector=MANAGED_BY_SELECTOR)
        except ApiException as e:
            if e.status == 403:
                return None
            raise
        for c in cms.items:
            text = (c.data or {}).get("config.yaml")
            if text:
                report = (yaml.safe_load(text) or {}).get("report")
                return dict(report) if isinstance(report, dict) else None
        return None

    def queue(self, jobs: list[dict], namespace: str | None, *,
              operator_namespace: str | None = None,
              operator_service: str | None = None) -> list[dict]:
        """The operator's visibility endpoint (HTTPS, the report port): waiting jobs in queue
        order. Where it is: ``cli/endpoint.py`` (the chart's reports Service in the operator's
        namespace, reached through the API server's service proxy: works from a laptop, RBAC on
        services/proxy decides who reaches it; else, for an operator outside the cluster, the
        URL of a trainer config, called directly with its CA). The operator authorises the
        caller itself, with the kubeconfig's bearer token (``FINETUNE_TOKEN`` overrides),
        forwarded in ``X-Finetune-Authorization`` through the proxy (which drops
        ``Authorization``)."""
        import os

        where = find_operator(self, jobs[0]["metadata"]["namespace"],
                              namespace=operator_namespace, service=operator_service)
        route = "/v1/queue" if namespace is None else f"/v1/namespaces/{namespace}/queue"
        # the kubeconfig's token (static, OIDC or an exec plugin's, refreshed by the hook)
        auth = self.api.configuration.get_api_key_with_prefix(
            "BearerToken", alias="authorization") or ""
        bearer = auth.removeprefix("Bearer ").strip() if auth.startswith("Bearer ") else ""
        token = os.environ.get("FINETUNE_TOKEN") or bearer
        if not token:
            raise ValueError("your kubeconfig has no bearer token (client certificates or an "
                             "auth plugin): set FINETUNE_TOKEN to one, e.g. the output of "
                             "kubectl create token <a ServiceAccount of yours>")
        for left in range(4, -1, -1):  # a standby replica answers 503: try the next one
            try:
                if isinstance(where, DirectUrl):
                    body = _direct_get(where.base + route, where.ca_pem, token)
                else:
                    body = self._proxied_get(where, route, token)
                break
            except _Unavailable:
                if left == 0:
                    raise ValueError("every operator replica answered 503 (standby or busy); "
                                     "try again in a few seconds") from None
                time.sleep(0.5)
        return list(body.get("items") or [])

    def _proxied_get(self, service: ProxiedService, route: str, token: str) -> dict:
        """GET ``route`` of the operator through the API server's service proxy, with the
        kubeconfig's credentials (whatever kind) for the API server."""
        from finetune_operator.http.server import FORWARDED_AUTH

        name, svc_ns, port = service.name, service.namespace, service.port
        path = f"/api/v1/namespaces/{svc_ns}/services/https:{name}:{port}/proxy{route}"
        method, url, headers, body, post = self.api.param_serialize(
            "GET", path, header_params={"Accept": "application/json",
                                        FORWARDED_AUTH: f"Bearer {token}"},
            auth_settings=["BearerToken"])
        try:
            resp = self.api.call_api(method, url, headers, body, post, _request_timeout=10)
            status, data = int(resp.status), resp.read()
        except ApiException as e:
            status = e.status or 0
            data = e.body.encode() if isinstance(e.body, str) else bytes(e.body or b"")
        if status == 503 and b"no endpoints available" not in (data or b""):
            raise _Unavailable  # an operator standby (a Status from the API server: none up)
        if status >= 400 or status == 0:
            raise ValueError(queue_error(status, data, name, svc_ns, port))
        return dict(json.loads(data))


class _Unavailable(Exception):
    """The queue view answered 503 (a standby replica, or the review budget spent)."""


def queue_error(status: int, body: Any, name: str, svc_ns: str, port: str) -> str:
    """Why the queue view through the service proxy failed, and what to do."""
    text = body.decode(errors="replace") if isinstance(body, bytes) else str(body or "")
    try:
        parsed = json.loads(text)
        detail = str(parsed.get("error") or parsed.get("message") or text)
    except (ValueError, AttributeError):
        detail = text
    detail = detail.strip()[:500]
    if status == 403 and "services/proxy" in detail:
        return (f"you may not reach the operator's queue view through the API server (get "
                f"services/proxy on https:{name}:{port} in namespace {svc_ns}): {detail}; ask "
                "your platform team to add you to the chart's rbac.queueProxy.subjects")
    if status == 503:
        return (f"the operator's Service {svc_ns}/{name} has no ready pod behind it: {detail}; "
                "is the operator running? (kubectl get pods -n " + svc_ns + ")")
    if status in (401, 403):
        return (f"the operator refused the queue view (HTTP {status}): {detail}; it needs a "
                "bearer token (FINETUNE_TOKEN or the kubeconfig's) of a user who may list "
                "finetunejobs in that namespace")
    return f"the operator's queue view through the API server failed: HTTP {status}: {detail}"


def _direct_get(url: str, ca_pem: str, token: str) -> dict:
    """GET the visibility endpoint at its own URL, verified with the report channel's CA."""
    import ssl
    import tempfile
    import urllib.error
    import urllib.request

    with tempfile.NamedTemporaryFile("w", suffix=".pem") as ca:
        ca.write(ca_pem)
        ca.flush()
        ctx = ssl.create_default_context(cafile=ca.name)
        req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}",
                                                   "Connection": "close"})
        try:
            with urllib.request.urlopen(req, context=ctx, timeout=10) as r:
                return dict(json.loads(r.read()))
        except urllib.error.HTTPError as e:
            if e.code == 503:
                raise _Unavailable from None
            raise
