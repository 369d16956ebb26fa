"""The in-cluster impersonate mode sends every group of the signed-in user: one
``Impersonate-Group`` header line per group, as the API server reads them (a comma-joined value
would be one group of that odd name). Checked on the wire: a real HTTP server records the header
lines the console's API client sends."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from email.message import Message

import pytest
from kubernetes import client

from finetune_operator.console.identity import ImpersonatingIdentity, Unauthenticated
from finetune_operator.http.server import Request
from finetune_operator.kube.client import CONSOLE_SURFACE, Kube


class _Recorder(http.server.BaseHTTPRequestHandler):
    seen: list[list[tuple[str, str]]] = []

    def do_GET(self) -> None:
        type(self).seen.append([(k, v) for k, v in self.headers.items()])
        body = json.dumps({"kind": "FineTuneJobList", "items": []}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        return None


@pytest.fixture
def recorder() -> Iterator[tuple[str, list[list[tuple[str, str]]]]]:
    seen: list[list[tuple[str, str]]] = []
    handler = type("Recorder", (_Recorder,), {"seen": seen})
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{srv.server_address[1]}", seen
    srv.shutdown()
    srv.server_close()


def _request(user: str, groups: str) -> Request:
    headers = Message()
    headers["X-Forwarded-User"] = user
    headers["X-Forwarded-Groups"] = groups
    return Request("GET", "/", headers)


def _identity(host: str, reviews: list[tuple[str, list[str], str | None]]
              ) -> ImpersonatingIdentity:
    cfg = client.Configuration()
    cfg.host = host
    own = Kube(client.ApiClient(cfg), surface=CONSOLE_SURFACE)

    def review(user: str, groups: list[str], ns: str | None) -> bool:
        reviews.append((user, groups, ns))
        return True

    return ImpersonatingIdentity(own, ["team-b"], review)


def test_every_group_goes_as_its_own_impersonate_group_line(
        recorder: tuple[str, list[list[tuple[str, str]]]]) -> None:
    host, seen = recorder
    reviews: list[tuple[str, list[str], str | None]] = []
    ident = _identity(host, reviews)
    caller = ident.caller(_request("ann@example.com",
                                   "team-a, team-b,system:masters,,ml-reviewers"))
    caller.kube.call("list", "finetunejobs", "GET",
                     "/apis/finetune.dev/v1alpha1/namespaces/team-b/finetunejobs")
    (sent,) = seen
    groups = [v for k, v in sent if k.lower() == "impersonate-group"]
    users = [v for k, v in sent if k.lower() == "impersonate-user"]
    assert users == ["ann@example.com"]
    # every group but the system: one the proxy cannot vouch for, in order, one line each
    assert groups == ["team-a", "team-b", "ml-reviewers"]
    # the SubjectAccessReview asked about the same groups
    assert reviews == [("ann@example.com", ["team-a", "team-b", "ml-reviewers"], "team-b")]


def test_a_user_without_groups_sends_no_group_line(
        recorder: tuple[str, list[list[tuple[str, str]]]]) -> None:
    host, seen = recorder
    caller = _identity(host, []).caller(_request("bob@example.com", ""))
    caller.kube.call("list", "finetunejobs", "GET",
                     "/apis/finetune.dev/v1alpha1/namespaces/team-b/finetunejobs")
    (sent,) = seen
    assert [k for k, _ in sent if k.lower().startswith("impersonate-")] == ["Impersonate-User"]


def test_different_groups_are_different_callers(
        recorder: tuple[str, list[list[tuple[str, str]]]]) -> None:
    host, _ = recorder
    ident = _identity(host, [])
    one = ident.caller(_request("ann@example.com", "team-a"))
    two = ident.caller(_request("ann@example.com", "team-a,team-b"))
    assert one.key != two.key and one.kube is not two.kube


def test_a_system_user_is_never_impersonated(
        recorder: tuple[str, list[list[tuple[str, str]]]]) -> None:
    host, seen = recorder
    with pytest.raises(Unauthenticated):
        _identity(host, []).caller(_request("system:admin", "team-a"))
    assert seen == []
