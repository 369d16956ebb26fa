"""The report endpoint over real TLS on loopback: status codes, limits, the rejected-report
counter, log-once, and the token -> pod identity cache. (TokenReview itself against the real
API server: tests/cluster/test_report_channel.py.)"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import socket
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from finetune_operator.metrics import REGISTRY
from finetune_operator.reports import tls
from finetune_operator.reports.identity import (
    PodIdentity,
    TokenAuthenticator,
    identity_from_review,
    token_expiry,
)
from finetune_operator.reports.model import REJECT_REASONS, BadReport, ProgressReport
from finetune_operator.reports.rejects import Rejections
from finetune_operator.reports.server import ReportServer

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
    assert rejected("too-large") == before + 2


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


def _jwt(exp: float | None) -> str:
    claims = {} if exp is None else {"exp": exp}
    body = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    return f"eyJhbGciOiJSUzI1NiJ9.{body}.signature"


def test_verified_tokens_are_cached_until_they_expire() -> None:
    now = [1000.0]
    calls: list[tuple[str, list[str]]] = []

    def token_review(token: str, audiences: list[str]) -> dict:
        calls.append((token, audiences))
        return review() if token.startswith("eyJ") else {"authenticated": False}

    auth = TokenAuthenticator(token_review, max_ttl=300, negative_ttl=30, clock=lambda: now[0])
    good = _jwt(exp=1100.0)
    assert token_expiry(good) == 1100.0
    assert [auth(good) for _ in range(5)] == [A] * 5
    assert len(calls) == 1 and calls[0][1] == ["finetune.dev/operator"]
    now[0] = 1100.0  # the token's own expiry: ask again
    assert auth(good) == A and len(calls) == 2
    assert auth("garbage") is None and auth("garbage") is None
    assert len(calls) == 3  # a refusal is cached too (no TokenReview flood)
    now[0] += 31
    assert auth("garbage") is None and len(calls) == 4
    long_lived = _jwt(exp=now[0] + 86400)
    auth(long_lived)
    now[0] += 301  # capped: a deleted pod's token stops working here within max_ttl
    auth(long_lived)
    assert len(calls) == 6


def test_an_unreachable_api_server_refuses_without_caching() -> None:
    state = {"down": True}

    def token_review(token: str, audiences: list[str]) -> dict:
        if state["down"]:
            raise ConnectionError("apiserver down")
        return review()

    auth = TokenAuthenticator(token_review)
    assert auth(_jwt(None)) is None
    state["down"] = False
    assert auth(_jwt(None)) == A


def test_the_cache_is_bounded() -> None:
    auth = TokenAuthenticator(lambda t, a: {"authenticated": False}, max_entries=10)
    for i in range(100):
        auth(f"t{i}")
    assert len(auth._cache) == 10


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


# ---- the operator's wiring: start_channel + LatestReports ---------------------------------------

def test_start_channel_serves_what_the_trainer_config_says(tmp_path: Path) -> None:
    from finetune_operator.reports.channel import LatestReports, start_channel
    from finetune_operator.settings import OperatorSettings

    woke = threading.Event()
    box = LatestReports(expected=lambda pod: pod.uid == A.uid, wake=woke.set)

    def token_review(token: str, audiences: list[str]) -> dict:
        pods = {"token-a": ("team-a", "bot-a1-0", "uid-a"), "token-b": ("team-b", "x", "uid-b")}
        return review(*pods[token], audiences=tuple(audiences)) if token in pods else {}

    settings = OperatorSettings(report_audience="aud.example/reports")
    channel = start_channel(settings, token_review, box, host="127.0.0.1", port=0)
    try:
        assert channel.config.url == f"https://127.0.0.1:{channel.server.port}/v1/reports"
        client = Srv(channel.server, ssl.create_default_context(cadata=channel.config.ca_pem))
        assert client.post(b'{"step": 9}') == (204, "")
        assert woke.is_set() and box.latest(A.uid) == ProgressReport(step=9)
        before = rejected("unknown-pod")
        assert client.post(b'{"step": 1}', token="token-b")[0] == 403
        assert rejected("unknown-pod") == before + 1 and box.latest("uid-b") is None
        assert list(box.take()) == [A.uid] and box.take() == {}
        before = rejected("invalid")
        assert channel.termination("team-a/bot-a1-0", '{"reason": "Nope"}') is None
        assert rejected("invalid") == before + 1
        done = channel.termination("team-a/bot-a1-0", '{"reason": "Completed"}')
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
        serving_cert(settings.model_copy(update={"report_tls_ca_file": str(tmp_path / "no")}),
                     "https://x/v1/reports")


def test_a_long_service_name_still_makes_a_certificate(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """The CN is at most 64 characters; the full name is in the subjectAltName."""
    from pathlib import Path

    from cryptography import x509

    from finetune_operator.reports import tls

    host = "finetune-operator-reports." + "n" * 60 + ".svc"
    cert = tls.generate([host], tmp_path)
    parsed = x509.load_pem_x509_certificate(Path(cert.cert_file).read_bytes())
    sans = parsed.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert host in sans.get_values_for_type(x509.DNSName)
