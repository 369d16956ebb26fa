"""The operator's one HTTP server module: the Router (method + path pattern -> handler) without a
server, and a route added beside the report port's own, served over its real TLS listener."""

from __future__ import annotations

import http.client
import json
import ssl
from collections.abc import Iterator
from email.message import Message

import pytest

from finetune_operator.http import tls
from finetune_operator.http.limits import BudgetSpent
from finetune_operator.http.reports import ReportServer
from finetune_operator.http.server import HttpServer, Request, Response, Router, json_route

pytestmark = pytest.mark.unit


def request(method: str, target: str, **headers: str) -> Request:
    msg = Message()
    for k, v in headers.items():
        msg[k.replace("_", "-")] = v
    return Request(method, target, msg)


def test_routes_match_the_whole_path_and_pass_named_groups() -> None:
    seen: list[tuple[str, dict[str, str]]] = []

    def job(req: Request) -> Response:
        seen.append((req.path, req.params))
        return Response.json(200, req.params)

    r = Router().add("GET", r"/v1/namespaces/(?P<namespace>[a-z0-9-]+)/jobs/(?P<name>[a-z0-9-]+)",
                     job)
    assert r.dispatch(request("GET", "/v1/namespaces/team-a/jobs/bot?watch=1")).status == 200
    assert seen == [("/v1/namespaces/team-a/jobs/bot", {"namespace": "team-a", "name": "bot"})]
    assert r.dispatch(request("GET", "/v1/namespaces/team-a/jobs/bot/extra")).status == 404
    assert r.dispatch(request("GET", "/x/v1/namespaces/team-a/jobs/bot")).status == 404
    assert len(seen) == 1


def test_a_path_served_for_other_methods_is_405_and_an_unknown_one_404() -> None:
    r = Router().add("POST", "/v1/reports", lambda req: Response.text(204, "", close=False))
    assert r.dispatch(request("POST", "/v1/reports")).status == 204
    assert r.dispatch(request("GET", "/v1/reports")).status == 405
    assert r.dispatch(request("POST", "/v1/other")).status == 404
    custom = Router(not_found=lambda req: Response.text(418, "elsewhere"))
    assert custom.dispatch(request("GET", "/")).body == b"elsewhere\n"


def test_the_first_matching_route_wins() -> None:
    r = (Router().add("GET", "/v1/queue", lambda req: Response.json(200, "exact"))
         .add("GET", "/v1/.*", lambda req: Response.json(200, "any")))
    assert json.loads(r.dispatch(request("GET", "/v1/queue")).body) == "exact"
    assert json.loads(r.dispatch(request("GET", "/v1/else")).body) == "any"


def test_json_routes_take_the_token_direct_or_forwarded_and_turn_a_spent_budget_into_503() -> None:
    tokens: list[str] = []

    def route(path: str, token: str) -> tuple[int, object]:
        tokens.append(token)
        if token == "flood":
            raise BudgetSpent(7)
        return 200, {"path": path}

    handler = json_route(route, max_token=10)
    assert handler(request("GET", "/q?x=1", Authorization="Bearer alice")).status == 200
    assert handler(request("GET", "/q", X_Finetune_Authorization="Bearer bob")).status == 200
    handler(request("GET", "/q", Authorization="Bearer " + "x" * 11))  # too long: dropped
    spent = handler(request("GET", "/q", Authorization="Bearer flood"))
    assert (spent.status, spent.headers) == (503, {"Retry-After": "7"})
    assert tokens == ["alice", "bob", "", "flood"]


# ---- a route beside the report port's own, over its listener -----------------------------------

@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tls.ServingCert:
    return tls.generate(["127.0.0.1"], tmp_path_factory.mktemp("tls"))


@pytest.fixture
def reports(cert: tls.ServingCert) -> Iterator[tuple[ReportServer, ssl.SSLContext]]:
    server = ReportServer("127.0.0.1", 0, cert.cert_file, cert.key_file, lambda t: None,
                          lambda who, report: None, timeout=5)
    with server:
        yield server, ssl.create_default_context(cadata=cert.ca_pem)


def get(port: int, ctx: ssl.SSLContext, path: str, method: str = "GET") -> tuple[int, bytes]:
    conn = http.client.HTTPSConnection("127.0.0.1", port, context=ctx, timeout=10)
    try:
        conn.request(method, path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def test_a_console_route_is_served_beside_the_reports(
        reports: tuple[ReportServer, ssl.SSLContext]) -> None:
    server, ctx = reports

    def hello(req: Request) -> Response:
        return Response.json(200, {"hello": req.params["who"]})

    server.router.add("GET", r"/v1/console/(?P<who>[a-z]+)", hello)
    assert get(server.port, ctx, "/v1/console/ada") == (200, b'{"hello": "ada"}')
    assert get(server.port, ctx, "/v1/reports")[0] == 405  # the report route is unchanged
    assert get(server.port, ctx, "/v1/reports", method="POST")[0] == 401  # no token
    server.serving = lambda: False  # a standby: the console route is its own to guard
    assert get(server.port, ctx, "/v1/reports", method="POST")[0] == 503


def test_a_failing_handler_is_a_500_and_the_listener_goes_on(
        cert: tls.ServingCert) -> None:
    calls: list[str] = []

    def boom(req: Request) -> Response:
        calls.append(req.path)
        raise RuntimeError("a bug in a handler")

    router = Router().add("GET", "/boom", boom).add("GET", "/ok", lambda r: Response.json(200, 1))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert.cert_file, cert.key_file)
    server = HttpServer("127.0.0.1", 0, router, name="test", tls=ctx, max_connections=2).start()
    client = ssl.create_default_context(cadata=cert.ca_pem)
    try:
        assert get(server.port, client, "/boom") == (500, b'{"error": "internal error"}')
        assert get(server.port, client, "/ok") == (200, b"1")
        assert calls == ["/boom"]
    finally:
        server.stop()
