"""`kubectl finetune list --queue` from outside the cluster: the plugin reaches the operator's
visibility endpoint through the API server's service proxy (a local HTTP server stands in for
the API server here; tests/cluster/test_helm_install.py goes through a real one)."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
import yaml
from kubernetes import client

from finetune_operator.cli.client import PluginApi, queue_error, service_of

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


@pytest.fixture
def fake_api_server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    config = yaml.safe_dump({"report": {"url": REPORT_URL, "caPem": "unused"}})

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            seen.append({"path": self.path, "headers": self.headers})  # case-blind .get
            if self.path.startswith("/api/v1/namespaces/team-a/configmaps"):
                body: dict[str, Any] = {"kind": "ConfigMapList", "apiVersion": "v1",
                                        "metadata": {}, "items": [
                                            {"metadata": {"name": "j-config"},
                                             "data": {"config.yaml": config}}]}
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
        yield f"http://127.0.0.1:{server.server_address[1]}", seen
    finally:
        server.shutdown()
        server.server_close()


def test_queue_goes_through_the_service_proxy_with_the_forwarded_token(
        fake_api_server: tuple[str, list[dict[str, Any]]],
        monkeypatch: pytest.MonkeyPatch) -> None:
    host, seen = fake_api_server
    monkeypatch.delenv("FINETUNE_TOKEN", raising=False)
    cfg = client.Configuration(host=host)
    cfg.api_key = {"BearerToken": "Bearer alice-token"}  # as the kubeconfig loader sets it
    api = PluginApi(client.ApiClient(cfg))
    job = {"metadata": {"namespace": "team-a", "name": "j"}}
    assert api.queue([job], "team-a") == [{"name": "j", "position": 3}]
    (proxied,) = [s for s in seen if "/proxy/" in s["path"]]
    # the API server authenticates the request (Authorization) and the operator the caller
    # (the forwarded header, which the API server passes on)
    assert proxied["headers"].get("Authorization") == "Bearer alice-token"
    assert proxied["headers"].get("X-Finetune-Authorization") == "Bearer alice-token"


def test_no_operator_behind_the_service_is_said_at_once() -> None:
    msg = queue_error(503, b'{"kind": "Status", "message": "no endpoints available for service '
                      b'\\"r\\""}', "r", "ft-system", "8443")
    assert "Service ft-system/r has no ready pod behind it" in msg
    assert "kubectl get pods -n ft-system" in msg
