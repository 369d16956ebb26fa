"""``GET /metrics`` over HTTPS, for authenticated and authorised scrapers only.

The convention of controller-runtime's ``WithAuthenticationAndAuthorization`` filter (and of
kube-rbac-proxy): the scraper sends a Kubernetes bearer token (Prometheus: its ServiceAccount
token); the operator asks the API server who that is (TokenReview) and whether they may ``get``
the non-resource URL ``/metrics`` (SubjectAccessReview). No token, or one the API server does not
authenticate: 401; authenticated but not allowed: 403. The chart's ``<fullname>-metrics-reader``
ClusterRole grants exactly that ``get`` (docs/metrics.md "Scraping").

Answers are cached by the token's SHA-256 (allowed for 60 s, refused for 10 s, at most 1024
tokens): a scrape every 30 s costs one review pair a minute. New tokens spend a budget of their
own (10 review pairs at once, then one a second; spent: 503), so garbage tokens cannot turn into
a flood of reviews. The TLS handshake runs in the connection's own thread with a timeout, and at
most 8 connections are served at once (more are closed), so a slow client cannot stall the
port. The certificate is the report channel's (reports/tls.py) unless
``FINETUNE_METRICS_TLS_CERT_FILE`` names one.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Callable
from http.server import ThreadingHTTPServer
from typing import Any, Final

from prometheus_client.exposition import MetricsHandler

from finetune_operator.http.identity import MAX_TOKEN_BYTES
from finetune_operator.http.limits import BudgetSpent, ReviewBudget, TtlCache, digest
from finetune_operator.metrics import REGISTRY

log = logging.getLogger(__name__)

PATH: Final = "/metrics"
# SubjectAccessReview attributes of a scrape (what the metrics-reader ClusterRole grants)
SCRAPE: Final = {"nonResourceAttributes": {"path": PATH, "verb": "get"}}
Review = Callable[[str], bool | None]  # token -> allowed (None: not authenticated)


class ScrapeAuth:
    """``token -> HTTP status``: 200 allowed, 401 not authenticated, 403 not allowed, 503 the
    review budget is spent or the API server could not answer (not cached: asked again next
    time).

    ``review`` is ``lambda t: kube.may_access(t, SCRAPE)``; ``clock`` is monotonic."""

    COST = 2  # a TokenReview and a SubjectAccessReview

    def __init__(self, review: Review, *, budget: ReviewBudget | None = None,
                 allowed_ttl: float = 60.0, refused_ttl: float = 10.0, max_entries: int = 1024,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.review, self.clock = review, clock
        self.budget = budget or ReviewBudget(self.COST, burst=10 * self.COST, clock=clock)
        self.allowed_ttl, self.refused_ttl = allowed_ttl, refused_ttl
        self.cache: TtlCache[int] = TtlCache(max_entries, clock)
        self.reviews = 0  # review pairs sent (tests and the docs' cost figures)

    def __call__(self, token: str) -> int:
        if not token or len(token) > MAX_TOKEN_BYTES:
            return 401
        key = digest(token, PATH)
        hit = self.cache.get(key)
        if hit is not None:
            return hit[0]
        try:
            self.budget.spend(self.COST)
            self.reviews += 1
            allowed = self.review(token)
        except BudgetSpent:
            return 503
        except Exception as e:
            log.warning("/metrics: TokenReview/SubjectAccessReview failed (%s); the scrape "
                        "gets 503 and the next one asks again", e)
            return 503
        code = 401 if allowed is None else 200 if allowed else 403
        ttl = self.allowed_ttl if code == 200 else self.refused_ttl
        self.cache.put(key, code, self.clock() + ttl)
        return code


_REFUSALS: Final = {
    401: "send a Kubernetes bearer token the API server accepts (Authorization: Bearer), "
         "e.g. Prometheus's ServiceAccount token",
    403: "this token's user may not get the non-resource URL /metrics; bind it to the chart's "
         "metrics-reader ClusterRole",
    503: "the token cannot be checked now (too many new tokens, or the API server did not "
         "answer); retry",
}


class _Handler(MetricsHandler):
    server: _Server
    registry = REGISTRY

    def do_GET(self) -> None:
        if self.path.split("?", 1)[0] != PATH:
            self._refuse(404, f"GET {PATH}")
            return
        auth = self.headers.get("Authorization") or ""
        code = self.server.auth(auth[7:].strip() if auth[:7].lower() == "bearer " else "")
        if code != 200:
            self._refuse(code, _REFUSALS[code])
            return
        super().do_GET()

    def _refuse(self, code: int, text: str) -> None:
        body = (text + "\n").encode()
        self.send_response(code)
        if code == 401:
            self.send_header("WWW-Authenticate", "Bearer")
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, address: tuple[str, int], context: ssl.SSLContext, auth: ScrapeAuth,
                 max_connections: int, timeout: float) -> None:
        self.context, self.auth, self.conn_timeout = context, auth, timeout
        self._slots = threading.BoundedSemaphore(max_connections)
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        if not self._slots.acquire(blocking=False):  # all busy: close, never queue
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._slots.release()
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._slots.release()

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(self.conn_timeout)  # the handshake too, in this connection's thread
        try:
            tls = self.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return
        with contextlib.suppress(OSError), contextlib.closing(tls):
            _Handler(tls, client_address, self)

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("/metrics: connection error", exc_info=True)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def serve(port: int, context: ssl.SSLContext, auth: ScrapeAuth, host: str = "0.0.0.0", *,
          max_connections: int = 8, timeout: float = 10.0) -> ThreadingHTTPServer:
    """Serve ``GET /metrics`` (REGISTRY) over TLS in daemon threads; ``port=0`` picks one."""
    server = _Server((host, port), context, auth, max_connections, timeout)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    log.info("/metrics: serving https on port %d (bearer token with get on /metrics)",
             server.server_address[1])
    return server
