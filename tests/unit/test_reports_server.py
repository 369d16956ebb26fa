"""The report endpoint over real TLS on loopback: status codes, limits, the rejected-report
counter, log-once, and the token -> pod identity cache. (TokenReview itself against the real
API server: tests/cluster/test_report_channel.py.)"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import select
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.http import tls
from finetune_operator.http.identity import (
    PodIdentity,
    TokenAuthenticator,
    identity_from_review,
    token_expiry,
)
from finetune_operator.http.limits import BudgetSpent, CachedAccess, ReviewBudget
from finetune_operator.http.reports import ReportServer
from finetune_operator.http.server import Endpoints
from finetune_operator.kube.cache import termination as slim_termination
from finetune_operator.metrics import REGISTRY
from finetune_operator.reports.model import REJECT_REASONS, BadReport, ProgressReport
from finetune_operator.reports.rejects import Rejections

from ..slow_clients import client_hello

pytestmark = pytest.mark.unit

A = PodIdentity("team-a", "bot-a1-0", "uid-a")
B = PodIdentity("team-b", "other-a1-0", "uid-b")
TOKENS = {"token-a": A, "token-b": B}


def rejected(reason: str) -> float:
    return REGISTRY.get_sample_value("finetune_report_rejected_total", {"reason": reason}) or 0.0


@dataclass
class Srv:
    server: ReportServer
    ctx: ssl.SSLContext
    received: list[tuple[PodIdentity, ProgressReport]] = field(default_factory=list)
    refuse: set[str] = field(default_factory=set)  # pod uids on_report refuses
    crash: bool = False
    headers: dict[str, str] = field(default_factory=dict)  # of the last answer

    def post(self, body: bytes | None, token: str | None = "token-a",
             headers: dict[str, str] | None = None, method: str = "POST",
             path: str = "/v1/reports", length: int | None = None) -> tuple[int, str]:
        conn = http.client.HTTPSConnection("127.0.0.1", self.server.port, context=self.ctx,
                                           timeout=10)
        try:
            conn.putrequest(method, path)
            if token is not None:
                conn.putheader("Authorization", f"Bearer {token}")
            conn.putheader("Content-Type", "application/json")
            if length is not None or body is not None:
                conn.putheader("Content-Length", str(length if length is not None
                                                     else len(body or b"")))
            for k, v in (headers or {}).items():
                conn.putheader(k, v)
            conn.endheaders(body)
            resp = conn.getresponse()
            self.headers = dict(resp.getheaders())
            return resp.status, resp.read().decode()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tls.ServingCert:
    return tls.generate(["127.0.0.1"], tmp_path_factory.mktemp("tls"))


@pytest.fixture
def srv(cert: tls.ServingCert) -> Iterator[Srv]:
    holder: list[Srv] = []

    def on_report(who: PodIdentity, report: ProgressReport) -> None:
        if holder[0].crash:
            raise RuntimeError("a bug in the operator's callback")
        if who.uid in holder[0].refuse:
            raise BadReport("unknown-pod", f"{who.key} is not a current trainer pod")
        holder[0].received.append((who, report))

    server = ReportServer("127.0.0.1", 0, cert.cert_file, cert.key_file, TOKENS.get, on_report,
                          rate=0.001, burst=5, max_connections=4, timeout=2)
    ctx = ssl.create_default_context(cadata=cert.ca_pem)
    holder.append(Srv(server, ctx))
    with server:
        yield holder[0]


def test_a_valid_report_is_accepted_and_handed_over_with_the_pod(srv: Srv) -> None:
    assert srv.post(b'{"step": 3, "totalSteps": 10}') == (204, "")
    assert srv.post(b'{"step": 4}', token="token-b")[0] == 204
    assert [(w, r.step) for w, r in srv.received] == [(A, 3), (B, 4)]


def test_a_standby_sends_every_client_on_before_any_review(srv: Srv) -> None:
    """Two replicas behind one Service: the standby's reports would stay in its memory and its
    queue view is empty, so it answers 503 with Retry-After and reads no token."""
    reviewed: list[str] = []
    srv.server.authenticate = lambda token: reviewed.append(token) or TOKENS.get(token)
    srv.server.on_get = lambda path, token: (200, {"queue": []})
    srv.server.serving = lambda: False
    assert srv.post(b'{"step": 3}')[0] == 503
    assert srv.headers.get("Retry-After") == "1"
    assert srv.post(None, method="GET", path="/v1/namespaces/team-a/queue")[0] == 503
    assert reviewed == [] and srv.received == []
    srv.server.serving = lambda: True  # it became the leader
    assert srv.post(b'{"step": 3}') == (204, "")
    assert reviewed == ["token-a"] and [r.step for _, r in srv.received] == [3]


@pytest.mark.parametrize("token", [None, "", "garbage", "x" * 20_000])
def test_no_valid_token_is_401_and_nothing_is_read(srv: Srv, token: str | None) -> None:
    before = rejected("unauthenticated")
    status, _ = srv.post(b'{"step": 1}', token=token)
    assert status == 401
    assert srv.received == []
    assert rejected("unauthenticated") == before + 1


def test_bad_reports_are_400_counted_by_reason(srv: Srv) -> None:
    before = {r: rejected(r) for r in REJECT_REASONS}
    assert srv.post(b'{"step": "1"}')[0] == 400
    assert srv.post(b'{"step": 1, "loss": NaN}')[0] == 400
    assert srv.post(b"[" * 200)[0] == 400
    assert srv.received == []
    after = {r: rejected(r) - before[r] for r in REJECT_REASONS}
    assert after == {**dict.fromkeys(REJECT_REASONS, 0.0),
                     "invalid": 1.0, "not-json": 1.0, "too-deep": 1.0}


def test_a_1_mib_body_is_refused_from_its_length_alone(srv: Srv) -> None:
    before = rejected("too-large")
    assert srv.post(None, length=1024 * 1024)[0] == 413  # headers only: never read
    assert srv.post(None, length=16 * 1024 + 1)[0] == 413
    assert srv.post(b" " * 16 * 1024)[0] == 400  # at the limit: read, parsed, not JSON
    # sent whole before the client reads: the server drops the body after its answer, so the
    # client gets the 413 instead of a connection reset
    assert srv.post(b" " * 20_000)[0] == 413
    assert rejected("too-large") == before + 3


def test_missing_or_bad_content_length_is_411(srv: Srv) -> None:
    assert srv.post(None)[0] == 411
    assert srv.post(b"", headers={"Content-Length": "-1"})[0] in (400, 411)


def test_each_pod_has_its_own_rate_limit(srv: Srv) -> None:
    before = rejected("rate-limited")
    codes = [srv.post(b'{"step": 1}')[0] for _ in range(7)]
    assert codes == [204] * 5 + [429] * 2
    assert srv.post(b'{"step": 1}', token="token-b")[0] == 204  # another pod is unaffected
    assert rejected("rate-limited") == before + 2


def test_the_operator_may_refuse_a_pod_it_does_not_expect(srv: Srv) -> None:
    srv.refuse.add(B.uid)
    before = rejected("unknown-pod")
    assert srv.post(b'{"step": 1}', token="token-b")[0] == 403
    assert rejected("unknown-pod") == before + 1


def test_a_crashing_callback_is_500_and_the_server_goes_on(srv: Srv) -> None:
    srv.crash = True
    assert srv.post(b'{"step": 1}')[0] == 500
    srv.crash = False
    assert srv.post(b'{"step": 2}')[0] == 204


def test_only_post_on_the_endpoint(srv: Srv) -> None:
    assert srv.post(None, method="GET")[0] == 405
    assert srv.post(b"{}", path="/v1/other")[0] == 404


def test_silent_clients_do_not_block_others(srv: Srv) -> None:
    """Connections that never finish a TLS handshake (or a request) hold a slot until the
    timeout; they neither block the accepting thread nor the other slots. (Were the handshake
    done while accepting, this request would wait the 60 s and the client give up after 10.)"""
    srv.server.timeout = 60
    idle = [socket.create_connection(("127.0.0.1", srv.server.port)) for _ in range(2)]
    try:
        assert srv.post(b'{"step": 1}')[0] == 204
    finally:
        for s in idle:
            s.close()


def test_plain_http_gets_nothing(srv: Srv) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", srv.server.port, timeout=10)
    with pytest.raises((ConnectionError, http.client.HTTPException, OSError)):
        conn.request("POST", "/v1/reports", body=b'{"step": 1}',
                     headers={"Authorization": "Bearer token-a"})
        conn.getresponse()
    assert srv.received == []


def test_rejections_are_logged_once_per_pod_and_reason(
        caplog: pytest.LogCaptureFixture) -> None:
    r = Rejections(clock=lambda: 0.0)
    with caplog.at_level(logging.WARNING, logger="finetune_operator.reports.rejects"):
        for _ in range(3):
            r.reject("team-a/bot-a1-0", BadReport("invalid", "step: bad"))
            r.reject(None, BadReport("unauthenticated", "no token"))
        r.reject("team-a/bot-a1-0", BadReport("too-deep", "deep"))
        r.reject("team-b/x-a1-0", BadReport("invalid", "step: bad"))
    lines = [rec.getMessage() for rec in caplog.records]
    assert len(lines) == 4, lines
    assert sum("team-a/bot-a1-0" in line for line in lines) == 2
    assert sum("unauthenticated" in line for line in lines) == 1


# ---- token -> pod ------------------------------------------------------------------------------

def review(ns: str = "team-a", pod: str = "bot-a1-0", uid: str = "uid-a",
           audiences: tuple[str, ...] = ("finetune.dev/operator",), **over: Any) -> dict:
    status: dict[str, Any] = {
        "authenticated": True, "audiences": list(audiences),
        "user": {"username": f"system:serviceaccount:{ns}:default", "uid": "sa-uid",
                 "groups": ["system:serviceaccounts", f"system:serviceaccounts:{ns}"],
                 "extra": {"authentication.kubernetes.io/pod-name": [pod],
                           "authentication.kubernetes.io/pod-uid": [uid]}}}
    status.update(over)
    return status


def test_identity_comes_from_the_review_only_when_everything_matches() -> None:
    aud = "finetune.dev/operator"
    assert identity_from_review(review(), aud) == A
    assert identity_from_review(review(authenticated=False), aud) is None
    assert identity_from_review(review(audiences=("https://kubernetes.default.svc",)), aud) is None
    assert identity_from_review(review(audiences=()), aud) is None
    user = review()["user"]
    for bad_user in ({**user, "username": "alice"},  # not a ServiceAccount
                     {**user, "extra": {}},  # a legacy Secret token: bound to no pod
                     {**user, "extra": {"authentication.kubernetes.io/pod-name": ["a", "b"],
                                        "authentication.kubernetes.io/pod-uid": ["u"]}}):
        assert identity_from_review(review(user=bad_user), aud) is None


def _jwt(exp: float | None, aud: str | list[str] = "finetune.dev/operator", pod: bool = True,
         jti: str = "") -> str:
    """A token shaped like a pod-bound projected token (the signature is never checked here)."""
    claims: dict[str, Any] = {"aud": aud, "jti": jti}
    if exp is not None:
        claims["exp"] = exp
    if pod:
        claims["kubernetes.io"] = {"namespace": "team-a",
                                   "pod": {"name": "bot-a1-0", "uid": "uid-a"}}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.signature"


def test_verified_tokens_are_cached_until_they_expire() -> None:
    now = [1000.0]
    calls: list[tuple[str, list[str]]] = []

    def token_review(token: str, audiences: list[str]) -> dict:
        calls.append((token, audiences))
        return review() if "forged" not in token_claims(token) else {"authenticated": False}

    auth = TokenAuthenticator(token_review, max_ttl=300, negative_ttl=30, clock=lambda: now[0])
    good = _jwt(exp=1100.0)
    assert token_expiry(good) == 1100.0
    assert [auth(good) for _ in range(5)] == [A] * 5
    assert len(calls) == 1 and calls[0][1] == ["finetune.dev/operator"]
    now[0] = 1100.0  # the token's own expiry: refused without asking (the claims say so)
    assert auth(good) is None and len(calls) == 1
    forged = _jwt(exp=5000.0, jti="forged")
    assert auth(forged) is None and auth(forged) is None
    assert len(calls) == 2  # a refusal is cached too (no TokenReview flood)
    now[0] += 31
    assert auth(forged) is None and len(calls) == 3
    long_lived = _jwt(exp=now[0] + 86400)
    auth(long_lived)
    now[0] += 301  # capped: a deleted pod's token stops working here within max_ttl
    auth(long_lived)
    assert len(calls) == 5


def token_claims(token: str) -> str:
    from finetune_operator.http.identity import unverified_claims

    return json.dumps(unverified_claims(token))


def test_tokens_that_cannot_be_a_live_pod_token_cost_no_review() -> None:
    """The pre-filter reads the unverified claims: garbage, another audience, a token bound to
    no pod, an expired one never reach the API server; one that looks right is still reviewed."""
    calls: list[str] = []

    def token_review(token: str, audiences: list[str]) -> dict:
        calls.append(token)
        return {"authenticated": False}

    auth = TokenAuthenticator(token_review)
    soon = time.time() + 3600
    refused = {
        "garbage": "not-a-token",
        "three garbage parts": "a.b.c",
        "claims not an object": "x." + base64.urlsafe_b64encode(b"[1]").decode() + ".s",
        "the API server's audience": _jwt(soon, aud="https://kubernetes.default.svc"),
        "not bound to a pod (a legacy Secret token)": _jwt(soon, pod=False),
        "expired": _jwt(time.time() - 1),
        "no expiry": _jwt(None),
    }
    assert {what: auth(t) for what, t in refused.items()} == dict.fromkeys(refused)
    assert calls == [] and auth.prefiltered == len(refused)
    plausible = _jwt(soon, aud=["other", "finetune.dev/operator"], jti="forged")
    assert auth(plausible) is None and calls == [plausible]


def test_reviews_spend_a_shared_budget() -> None:
    now = [0.0]
    budget = ReviewBudget(rate=0.5, burst=2, clock=lambda: now[0])
    calls: list[str] = []

    def token_review(token: str, audiences: list[str]) -> dict:
        calls.append(token)
        return review()

    auth = TokenAuthenticator(token_review, budget=budget)
    tokens = [_jwt(time.time() + 3600, jti=str(i)) for i in range(4)]
    assert auth(tokens[0]) == A and auth(tokens[1]) == A
    with pytest.raises(BudgetSpent) as spent:
        auth(tokens[2])
    assert spent.value.retry_after == 2 and len(calls) == 2
    assert auth(tokens[0]) == A and len(calls) == 2  # a cached answer spends nothing
    now[0] = 2.0  # one more review's worth
    assert auth(tokens[2]) == A and len(calls) == 3 and budget.refused == 1


def test_a_spent_budget_is_503_with_retry_after(srv: Srv) -> None:
    srv.server.authenticate = TokenAuthenticator(lambda t, a: review(),
                                                 budget=ReviewBudget(rate=0.25, burst=1))
    soon = time.time() + 3600
    before = rejected("rate-limited")
    assert srv.post(b'{"step": 1}', token=_jwt(soon, jti="1"))[0] == 204
    assert srv.post(b'{"step": 1}', token=_jwt(soon, jti="2"))[0] == 503
    assert srv.headers["Retry-After"] == "4"
    assert rejected("rate-limited") == before + 1 and len(srv.received) == 1


def test_visibility_answers_are_cached_and_share_the_budget(srv: Srv) -> None:
    """Each visibility GET was a TokenReview plus a SubjectAccessReview: now one pair per
    (token, namespace) and TTL, allowed or refused, within the port's review budget."""
    now = [0.0]
    calls: list[tuple[str, str | None]] = []

    def may_list(token: str, ns: str | None) -> bool:
        calls.append((token, ns))
        return token == "alice"

    access = CachedAccess(may_list, ReviewBudget(rate=0.25, burst=6, clock=lambda: now[0]),
                          ttl=10, clock=lambda: now[0])
    srv.server.on_get = Endpoints(lambda: True, lambda: True, lambda: {"team-a": []},
                                  access).visibility
    path = "/v1/namespaces/team-a/queue"
    assert [srv.post(None, token="alice", method="GET", path=path)[0] for _ in range(3)] == [
        200] * 3
    assert [srv.post(None, token="mallory", method="GET", path=path)[0] for _ in range(3)] == [
        403] * 3
    assert srv.post(None, token="alice", method="GET", path="/v1/queue")[0] == 200
    assert len(calls) == 3  # one per (token, namespace)
    status, body = srv.post(None, token="eve", method="GET", path=path)
    assert status == 503 and srv.headers["Retry-After"] == "8" and "budget" in body
    now[0] = 10.0  # the answers expire (an RBAC change is seen), the budget has refilled
    assert srv.post(None, token="mallory", method="GET", path=path)[0] == 403
    assert len(calls) == 4


def test_an_unreachable_api_server_refuses_without_caching() -> None:
    state = {"down": True}

    def token_review(token: str, audiences: list[str]) -> dict:
        if state["down"]:
            raise ConnectionError("apiserver down")
        return review()

    auth = TokenAuthenticator(token_review)
    token = _jwt(time.time() + 3600)
    assert auth(token) is None
    state["down"] = False
    assert auth(token) == A


def test_the_cache_is_bounded() -> None:
    auth = TokenAuthenticator(lambda t, a: {"authenticated": False}, max_entries=10)
    for i in range(100):
        auth(_jwt(time.time() + 3600, jti=str(i)))
    assert auth.reviews == 100 and len(auth.cache) == 10


# ---- slow and greedy clients -------------------------------------------------------------------

def _bytes_until_closed(sock: socket.socket, data: bytes, every: float) -> int:
    """Send ``data`` one byte every ``every`` seconds until the server closes the connection:
    how many bytes went out (``len(data)`` when it never closed)."""
    sock.settimeout(every)
    for i in range(len(data)):
        try:
            sock.sendall(data[i:i + 1])
            if not sock.recv(1024):
                return i + 1
        except TimeoutError:
            continue
        except OSError:  # reset, or the TLS connection ended
            return i + 1
    return len(data)


@pytest.mark.parametrize("stage", ["handshake", "headers", "body"])
def test_a_slow_client_has_one_deadline_for_the_whole_request(srv: Srv, stage: str) -> None:
    """One byte every 0.1 s never lets a per-read timeout of 1 s fire; the deadline of 1 s for
    the handshake and the whole request closes the connection after about 10 bytes."""
    srv.server.timeout = 1
    raw = socket.create_connection(("127.0.0.1", srv.server.port))
    head = b"POST /v1/reports HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer token-a\r\n"
    if stage == "handshake":
        sock, data = raw, client_hello()
    else:
        sock = srv.ctx.wrap_socket(raw, server_hostname="127.0.0.1")
        data = head + b"X-Pad: " + b"a" * 100
        if stage == "body":
            sock.sendall(head + b"Content-Length: 100\r\n\r\n")
            data = b'{"step": 1' + b" " * 89 + b"}"
    with sock:
        sent = _bytes_until_closed(sock, data[:80], 0.1)
    assert sent < 40, f"{sent} bytes over {sent / 10:.1f} s and still open"
    assert srv.received == []
    assert srv.post(b'{"step": 1}')[0] == 204  # the slot is free again


def test_one_address_gets_a_few_connections_and_others_still_get_theirs(srv: Srv) -> None:
    """4 slots, at most 2 per source address: 5 idle connections from one address keep 2; the
    other 3 are closed at once (not queued), and a client elsewhere is still served."""
    srv.server.timeout, srv.server.max_per_address = 60, 2
    idle = [socket.create_connection(("127.0.0.1", srv.server.port),
                                     source_address=("127.0.0.2", 0)) for _ in range(5)]
    try:
        still = list(idle)
        for _ in range(50):
            readable, _, _ = select.select(still, [], [], 0.2)
            still = [s for s in still if s not in readable or s.recv(1) != b""]
            if len(still) <= 2:
                break
        assert len(still) == 2 and srv.server.shed == 3
        assert select.select(still, [], [], 0.5)[0] == []  # the two kept are still open
        assert srv.post(b'{"step": 1}')[0] == 204
    finally:
        for s in idle:
            s.close()


def test_concurrent_reports_are_safe(srv: Srv) -> None:
    srv.server.limiter.burst = 1000
    codes: list[int | str] = []

    def one(i: int) -> None:
        try:
            codes.append(srv.post(json.dumps({"step": i}).encode(),
                                  token="token-a" if i % 2 else "token-b")[0])
        except OSError:
            codes.append("shed")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # at most max_connections at once: the others are shed, never queued without bound
    assert len(codes) == 12 and set(codes) <= {204, "shed"}
    assert codes.count(204) >= 4 and len(srv.received) == codes.count(204)


# ---- the operator's wiring: start_channel ------------------------------------------------------

def test_start_channel_serves_what_the_trainer_config_says(tmp_path: Path) -> None:
    from finetune_operator.reports.channel import start_channel
    from finetune_operator.settings import OperatorSettings

    got: dict[str, ProgressReport] = {}

    def on_report(who: PodIdentity, report: ProgressReport) -> None:
        """Like the Controller's: reports from the pods it expects, others refused (403)."""
        if who.uid != A.uid:
            raise BadReport("unknown-pod", f"{who.key} is not a trainer pod this operator "
                            "expects reports from")
        got[who.uid] = report

    soon = time.time() + 3600
    token_a, token_b = (_jwt(soon, aud="aud.example/reports", jti=j) for j in "ab")

    def token_review(token: str, audiences: list[str]) -> dict:
        pods = {token_a: ("team-a", "bot-a1-0", "uid-a"), token_b: ("team-b", "x", "uid-b")}
        return review(*pods[token], audiences=tuple(audiences)) if token in pods else {}

    settings = OperatorSettings(report_audience="aud.example/reports",
                                report_request_timeout_seconds=3,
                                report_max_connections_per_address=5)
    channel = start_channel(settings, token_review, on_report, host="127.0.0.1", port=0)
    try:
        assert channel.config.url == f"https://127.0.0.1:{channel.server.port}/v1/reports"
        assert (channel.server.timeout, channel.server.max_per_address) == (3, 5)
        client = Srv(channel.server, ssl.create_default_context(cadata=channel.config.ca_pem))
        assert client.post(b'{"step": 9}', token=token_a) == (204, "")
        assert got == {A.uid: ProgressReport(step=9)}
        before = rejected("unknown-pod")
        assert client.post(b'{"step": 1}', token=token_b)[0] == 403
        assert rejected("unknown-pod") == before + 1 and list(got) == [A.uid]
        # termination messages: parsed once by the cache, a rejection counted by the channel's
        # Rejections (what __main__ hands the Controller as on_termination)
        before = rejected("invalid")
        bad = slim_termination('{"reason": "Nope"}')
        assert bad["parsed"] is None and bad["rejected"] is not None
        channel.rejections.reject("team-a/bot-a1-0", BadReport(*bad["rejected"]))
        assert rejected("invalid") == before + 1
        done = slim_termination('{"reason": "Completed"}')["parsed"]
        assert done is not None and done.reason == "Completed"
    finally:
        channel.stop()


def test_a_configured_certificate_and_ca_are_used(tmp_path: Path) -> None:
    from finetune_operator.reports.channel import serving_cert
    from finetune_operator.settings import OperatorSettings

    made = tls.generate(["finetune-operator-reports.ops.svc"], tmp_path)
    ca = tmp_path / "ca.crt"
    ca.write_text(made.ca_pem)
    settings = OperatorSettings(report_tls_cert_file=made.cert_file,
                                report_tls_key_file=made.key_file, report_tls_ca_file=str(ca))
    url = settings.resolved_report_url("ops")
    assert url == "https://finetune-operator-reports.ops.svc:8443/v1/reports"
    assert settings.resolved_report_url(None) == "https://127.0.0.1:8443/v1/reports"
    got = serving_cert(settings, url)
    assert (got.cert_file, got.key_file, got.ca_pem) == (made.cert_file, made.key_file,
                                                         made.ca_pem)
    with pytest.raises(OSError, match="FINETUNE_REPORT_TLS_CA_FILE"):
        serving_cert(settings.replace(report_tls_ca_file=str(tmp_path / "no")),
                     "https://x/v1/reports")


def test_a_long_service_name_still_makes_a_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CN is at most 64 characters; the full name is in the subjectAltName."""
    from pathlib import Path

    from cryptography import x509

    from finetune_operator.http import tls

    host = "finetune-operator-reports." + "n" * 60 + ".svc"
    cert = tls.generate([host], tmp_path)
    parsed = x509.load_pem_x509_certificate(Path(cert.cert_file).read_bytes())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host in sans.get_values_for_type(x509.DNSName)
