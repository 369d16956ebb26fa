"""`kubectl finetune list --queue` from outside the cluster: the plugin finds the operator's
reports Service (cli/endpoint.py: by the chart's labels or name in the operator's namespace, so
before any job was admitted) and reaches the visibility endpoint through the API server's
service proxy (a local HTTP server stands in for the API server here;
tests/cluster/test_helm_install.py goes through a real one). Without such a Service (an operator
run outside the cluster) a trainer config names it."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
import yaml
from kubernetes import client

from finetune_operator.cli import endpoint
from finetune_operator.cli.client import PluginApi, queue_error
from finetune_operator.cli.endpoint import (
    DirectUrl,
    Forbidden,
    NotFound,
    ProxiedService,
    find_operator,
    service_of,
)

pytestmark = pytest.mark.unit

REPORT_URL = "https://ft-finetune-operator-reports.ft-system.svc:8443/v1/reports"
PROXY = ("/api/v1/namespaces/ft-system/services/https:ft-finetune-operator-reports:8443/proxy"
         "/v1/namespaces/team-a/queue")


def test_service_of_the_report_url() -> None:
    assert service_of(REPORT_URL) == ("ft-finetune-operator-reports", "ft-system", "8443")
    assert service_of("https://r.ns.svc.cluster.local/v1/reports") == ("r", "ns", "443")
    assert service_of("https://127.0.0.1:8443/v1/reports") is None  # local operator: direct
    assert service_of("https://reports.example.com/v1/reports") is None
    assert service_of("http://r.ns.svc:80/v1/reports") is None


def test_queue_errors_name_the_permission() -> None:
    rbac = queue_error(403, json.dumps({"message": 'services "https:r:8443" is forbidden: User '
                                        '"bob" cannot get resource "services/proxy" in API group '
                                        '"" in the namespace "ft-system"'}).encode(),
                       "r", "ft-system", "8443")
    assert "get services/proxy on https:r:8443 in namespace ft-system" in rbac
    assert "rbac.queueProxy.subjects" in rbac
    denied = queue_error(403, b'{"error": "you may not list finetunejobs in namespace team-b"}',
                         "r", "ft-system", "8443")
    assert "you may not list finetunejobs in namespace team-b" in denied
    assert "may list finetunejobs in that namespace" in denied


SERVICE: dict[str, Any] = {
    "metadata": {"name": "ft-finetune-operator-reports", "namespace": "ft-system",
                 "labels": {"app.kubernetes.io/part-of": "finetune-operator",
                            "app.kubernetes.io/component": "reports"}},
    "spec": {"ports": [{"name": "reports", "port": 8443, "targetPort": "reports"}]}}


@pytest.fixture
def fake_api_server() -> Iterator[tuple[str, list[dict[str, Any]], dict[str, Any]]]:
    """(URL, requests seen, what it serves): the chart's reports Service in ft-system (listed by
    label), a trainer config in team-a, and the queue view behind the proxy."""
    seen: list[dict[str, Any]] = []
    serves: dict[str, Any] = {"services": [SERVICE], "configs": []}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "headers": self.headers})  # case-blind .get
            url = urlsplit(self.path)
            parts = url.path.split("/")  # /api/v1/namespaces/<ns>/services
            if url.path.endswith("/services") and len(parts) == 6:
                selector = parse_qs(url.query)["labelSelector"][0]
                assert selector == endpoint.SERVICE_SELECTOR
                body: dict[str, Any] = {"kind": "ServiceList", "apiVersion": "v1",
                                        "metadata": {}, "items": [
                                            s for s in serves["services"]
                                            if s["metadata"]["namespace"] == parts[4]]}
            elif url.path == "/api/v1/namespaces/team-a/configmaps":
                body = {"kind": "ConfigMapList", "apiVersion": "v1", "metadata": {}, "items": [
                    {"metadata": {"name": "j-config"},
                     "data": {"config.yaml": yaml.safe_dump({"report": c})}}
                    for c in serves["configs"]]}
            elif self.path == PROXY:
                body = {"namespace": "team-a", "items": [{"name": "j", "position": 3}]}
            else:
                self.send_response(404)
                self.end_headers()
                return
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, fmt: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", seen, serves
    finally:
        server.shutdown()
        server.server_close()


def _alice(host: str) -> PluginApi:
    cfg = client.Configuration(host=host)
    cfg.api_key = {"BearerToken": "Bearer alice-token"}  # as the kubeconfig loader sets it
    return PluginApi(client.ApiClient(cfg))


def test_queue_goes_through_the_service_proxy_with_the_forwarded_token(
        fake_api_server: tuple[str, list[dict[str, Any]], dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    host, seen, _ = fake_api_server
    monkeypatch.delenv("FINETUNE_TOKEN", raising=False)
    monkeypatch.setenv(endpoint.NAMESPACE_ENV, "ft-system")
    job = {"metadata": {"namespace": "team-a", "name": "j"}}
    # no trainer config anywhere (no job was admitted yet): the Service is found by its labels
    assert _alice(host).queue([job], "team-a") == [{"name": "j", "position": 3}]
    assert not [s for s in seen if "configmaps" in s["path"]]
    (proxied,) = [s for s in seen if "/proxy/" in s["path"]]
    # the API server authenticates the request (Authorization) and the operator the caller
    # (the forwarded header, which the API server passes on)
    assert proxied["headers"].get("Authorization") == "Bearer alice-token"
    assert proxied["headers"].get("X-Finetune-Authorization") == "Bearer alice-token"


def test_an_operator_outside_the_cluster_is_found_through_a_trainer_config(
        fake_api_server: tuple[str, list[dict[str, Any]], dict[str, Any]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    host, seen, serves = fake_api_server
    monkeypatch.delenv(endpoint.NAMESPACE_ENV, raising=False)
    monkeypatch.delenv(endpoint.SERVICE_ENV, raising=False)
    serves["services"] = []
    serves["configs"] = [{"url": REPORT_URL, "caPem": "unused"}]  # it names the Service
    job = {"metadata": {"namespace": "team-a", "name": "j"}}
    assert _alice(host).queue([job], "team-a") == [{"name": "j", "position": 3}]
    assert [urlsplit(s["path"]).path for s in seen] == [
        "/api/v1/namespaces/finetune-system/services", "/api/v1/namespaces/team-a/configmaps",
        urlsplit(PROXY).path]


# ------------------------------------------------------------------ discovery (pure)


class RecordingLookup:
    """A fake PluginApi for endpoint.find_operator: Services per namespace, what the user may
    list or get, trainer configs per namespace; records every lookup."""

    def __init__(self, services: list[dict[str, Any]] | None = None, *, may_list: bool = True,
                 may_get: bool = True, reports: dict[str, dict[str, Any]] | None = None):
        self.services = services or []
        self.may_list, self.may_get = may_list, may_get
        self.reports = reports or {}
        self.calls: list[tuple[str, ...]] = []

    def list_services(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        self.calls.append(("list", namespace, label_selector))
        if not self.may_list:
            raise Forbidden("forbidden")
        want = dict(kv.split("=") for kv in label_selector.split(","))
        return [s for s in self.services if s["metadata"]["namespace"] == namespace
                and want.items() <= (s["metadata"].get("labels") or {}).items()]

    def get_service(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.calls.append(("get", namespace, name))
        if not self.may_get:
            raise Forbidden("forbidden")
        return next((s for s in self.services if (s["metadata"]["namespace"],
                                                  s["metadata"]["name"]) == (namespace, name)),
                    None)

    def trainer_report(self, namespace: str) -> dict[str, Any] | None:
        self.calls.append(("config", namespace))
        return self.reports.get(namespace)


def _service(name: str, namespace: str = "finetune-system", port: int = 8443,
             labelled: bool = True) -> dict[str, Any]:
    labels = dict(SERVICE["metadata"]["labels"]) if labelled else {}
    return {"metadata": {"name": name, "namespace": namespace, "labels": labels},
            "spec": {"ports": [{"name": "metrics", "port": 8080},
                               {"name": "reports", "port": port}]}}


@pytest.fixture
def no_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(endpoint.NAMESPACE_ENV, raising=False)
    monkeypatch.delenv(endpoint.SERVICE_ENV, raising=False)


@pytest.mark.usefixtures("no_env")
def test_the_chart_service_is_found_by_its_labels_in_the_default_namespace() -> None:
    lookup = RecordingLookup([_service("ft-finetune-operator-reports", port=9443),
                              _service("unlabelled", labelled=False),
                              _service("elsewhere", namespace="other")])
    assert find_operator(lookup, "team-a") == ProxiedService(
        "ft-finetune-operator-reports", "finetune-system", "9443")
    assert lookup.calls == [("list", "finetune-system", endpoint.SERVICE_SELECTOR)]


@pytest.mark.usefixtures("no_env")
def test_a_tenant_who_may_not_list_services_gets_the_default_one_by_name() -> None:
    lookup = RecordingLookup([_service("finetune-operator-reports")], may_list=False)
    assert find_operator(lookup, "team-a") == ProxiedService(
        "finetune-operator-reports", "finetune-system", "8443")
    assert lookup.calls[-1] == ("get", "finetune-system", "finetune-operator-reports")


@pytest.mark.usefixtures("no_env")
def test_flags_and_environment_point_at_another_release(monkeypatch: pytest.MonkeyPatch) -> None:
    lookup = RecordingLookup([_service("ml-reports", namespace="ml-system")], may_list=False)
    assert find_operator(lookup, "team-a", namespace="ml-system", service="ml-reports") == \
        ProxiedService("ml-reports", "ml-system", "8443")
    assert lookup.calls == [("get", "ml-system", "ml-reports")]  # named: no list, no config
    monkeypatch.setenv(endpoint.NAMESPACE_ENV, "ml-system")
    lookup = RecordingLookup([_service("ml-reports", namespace="ml-system")])
    assert find_operator(lookup, "team-a") == ProxiedService("ml-reports", "ml-system", "8443")
    # pointed somewhere with nothing there: an error, not a trainer config of another operator
    lookup = RecordingLookup(reports={"team-a": {"url": REPORT_URL, "caPem": "x"}})
    with pytest.raises(NotFound, match="in namespace ml-system \\(none\\)"):
        find_operator(lookup, "team-a")
    assert ("config", "team-a") not in lookup.calls


@pytest.mark.usefixtures("no_env")
def test_an_operator_outside_the_cluster_is_called_at_its_trainer_config_url() -> None:
    local = {"url": "https://127.0.0.1:40123/v1/reports", "caPem": "CA"}
    lookup = RecordingLookup(may_list=False, may_get=False, reports={"team-a": local})
    assert find_operator(lookup, "team-a") == DirectUrl("https://127.0.0.1:40123", "CA")
    lookup = RecordingLookup(reports={"team-a": {"url": REPORT_URL, "caPem": "CA"}})
    assert find_operator(lookup, "team-a") == ProxiedService(
        "ft-finetune-operator-reports", "ft-system", "8443")


@pytest.mark.usefixtures("no_env")
def test_not_found_says_what_was_looked_for_and_how_to_point_at_it() -> None:
    with pytest.raises(NotFound) as e:
        find_operator(RecordingLookup(may_list=False), "team-a")
    msg = str(e.value)
    assert "Services labelled app.kubernetes.io/part-of=finetune-operator," in msg
    assert "you may not list Services there" in msg
    assert "Service finetune-system/finetune-operator-reports (not found)" in msg
    assert "trainer config naming the operator in namespace team-a" in msg
    assert "--operator-namespace NAMESPACE (or FINETUNE_OPERATOR_NAMESPACE)" in msg
    assert "--operator-service NAME (or FINETUNE_OPERATOR_SERVICE)" in msg
    with pytest.raises(NotFound, match="you may not get it"):
        find_operator(RecordingLookup(may_list=False, may_get=False), "team-a")
    two = RecordingLookup([_service("a-reports"), _service("b-reports")])
    with pytest.raises(NotFound, match=r"several .* \(a-reports, b-reports\); pick one with "
                                       r"--operator-service"):
        find_operator(two, "team-a")


def test_no_operator_behind_the_service_is_said_at_once() -> None:
    msg = queue_error(503, b'{"kind": "Status", "message": "no endpoints available for service '
                      b'\\"r\\""}', "r", "ft-system", "8443")
    assert "Service ft-system/r has no ready pod behind it" in msg
    assert "kubectl get pods -n ft-system" in msg
