"""The operator's probe and visibility routes (serve.Endpoints), without a server."""

from __future__ import annotations

from finetune_operator.http.server import Endpoints

VIEW = {"team-a": [{"name": "a", "position": 1, "clusterPosition": 2, "reason": "quota"}],
        "team-b": [{"name": "b", "position": 1, "clusterPosition": 1, "reason": "capacity"}]}


def endpoints(healthy: bool = True) -> Endpoints:
    return Endpoints(lambda: healthy, lambda: True, lambda: VIEW,
                     lambda token, ns: (token == "alice" and ns == "team-a")
                     or token == "admin")


def test_healthz_fails_when_the_leaders_cycles_stopped() -> None:
    assert endpoints(True).handle("/healthz", "")[0] == 200
    assert endpoints(False).handle("/healthz", "")[0] == 500
    assert endpoints().handle("/readyz", "")[0] == 200


def test_the_probe_port_never_serves_the_queue() -> None:
    assert endpoints().handle("/v1/namespaces/team-a/queue", "alice")[0] == 404


def test_queue_per_namespace_for_whoever_may_list_there() -> None:
    e = endpoints()
    code, body = e.visibility("/v1/namespaces/team-a/queue", "alice")
    assert code == 200 and body["items"] == [{"name": "a", "position": 1, "reason": "quota"}]
    assert e.visibility("/v1/namespaces/team-b/queue", "alice")[0] == 403
    assert e.visibility("/v1/queue", "alice")[0] == 403
    assert e.visibility("/v1/namespaces/team-a/queue", "")[0] == 401
    code, body = e.visibility("/v1/queue", "admin")
    assert [i["name"] for i in body["items"]] == ["b", "a"]  # the cluster-wide order


def test_the_token_may_come_through_the_api_servers_service_proxy() -> None:
    """The API server consumes `Authorization` on a service proxy request: the plugin forwards
    the caller's token in X-Finetune-Authorization, reviewed exactly like a direct one."""
    import http.client
    import json
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    from finetune_operator.http.server import FORWARDED_AUTH, answer_json

    e = endpoints()

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer_json(self, e.visibility, max_token=4096)

        def log_message(self, fmt: str, *args: object) -> None:
            return

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()

    def get(headers: dict[str, str]) -> tuple[int, dict]:
        conn = http.client.HTTPConnection("127.0.0.1", server.server_address[1], timeout=5)
        conn.request("GET", "/v1/namespaces/team-a/queue", headers=headers)
        r = conn.getresponse()
        out = r.status, json.loads(r.read())
        conn.close()
        return out

    try:
        assert get({FORWARDED_AUTH: "Bearer alice"})[0] == 200
        assert get({"Authorization": "Bearer alice"})[0] == 200
        assert get({FORWARDED_AUTH: "Bearer bob"})[0] == 403
        assert get({})[0] == 401
    finally:
        server.shutdown()
        server.server_close()
