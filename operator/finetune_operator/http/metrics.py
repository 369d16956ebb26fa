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
a flood of reviews. The listener is the operator's one server (``http/server.py``): the TLS
handshake runs in the connection's own thread, a request has one deadline, and at most 8
connections are served at once (more are closed), so a slow client cannot stall the port.
The certificate is the report channel's (http/tls.py) unless
``FINETUNE_METRICS_TLS_CERT_FILE`` names one.
"""

from __future__ import annotations

import gzip
import logging
import ssl
import time
from collections.abc import Callable
from typing import Final
from urllib.parse import parse_qs

from prometheus_client.exposition import choose_encoder, gzip_accepted

from finetune_operator.http.identity import MAX_TOKEN_BYTES
from finetune_operator.http.limits import BudgetSpent, ReviewBudget, TtlCache, digest
from finetune_operator.http.server import HttpServer, Request, Response, Router
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


def exposition(req: Request) -> Response:
    """The registry in the format the scraper accepts (``?name[]=`` narrows it; gzip when
    accepted), as prometheus_client's own handler answers."""
    encoder, content_type = choose_encoder(req.headers.get("Accept") or "")
    names = parse_qs(req.query).get("name[]")
    output = encoder(REGISTRY.restricted_registry(names) if names else REGISTRY)
    headers = {}
    if gzip_accepted(req.headers.get("Accept-Encoding") or ""):
        output, headers = gzip.compress(output), {"Content-Encoding": "gzip"}
    return Response(200, output, content_type, headers)


def router(auth: ScrapeAuth) -> Router:
    """``GET /metrics`` for the tokens ``auth`` allows; every other path is a 404."""

    def scrape(req: Request) -> Response:
        code = auth(req.bearer(MAX_TOKEN_BYTES))
        if code != 200:
            return Response.text(code, _REFUSALS[code],
                                 {"WWW-Authenticate": "Bearer"} if code == 401 else {})
        return exposition(req)

    def elsewhere(req: Request) -> Response:
        return Response.text(404, f"GET {PATH}")

    return Router(not_found=elsewhere, method_not_allowed=elsewhere).add("GET", PATH, scrape)


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    return context


def serve(port: int, context: ssl.SSLContext, auth: ScrapeAuth, host: str = "0.0.0.0", *,
          max_connections: int = 8, timeout: float = 10.0) -> HttpServer:
    """Serve ``GET /metrics`` (REGISTRY) over TLS in daemon threads; ``port=0`` picks one."""
    server = HttpServer(host, port, router(auth), name="/metrics", tls=context,
                        request_timeout=timeout, max_connections=max_connections).start()
    log.info("/metrics: serving https on port %d (bearer token with get on /metrics)",
             server.port)
    return server
