"""The HTTPS endpoint trainers push progress reports to: ``POST /v1/reports``.

Request: ``Authorization: Bearer <projected ServiceAccount token>``, ``Content-Type:
application/json``, a body of at most 16 KiB (``Content-Length`` required). Order of checks, each
cheaper than the next: token (401; 503 with ``Retry-After`` when the port's budget of API reviews
is spent, :mod:`.limits`), per-pod rate (429), size (413), parse (400), the operator's callback
(403 when it does not expect reports from that pod), then 204 No Content.

Under abuse: a connection has ``timeout`` seconds for its TLS handshake and its whole first
request (headers and body), however slowly it sends (a per-read timeout would restart with
every byte, so one byte every few seconds would hold a slot forever); each further request on
the connection gets ``timeout`` again from the previous answer. At most ``max_connections``
connections are served at once and at most ``max_per_address`` from one source address; the
accepting thread closes any beyond either cap at once (never queued), so one client cannot take
every slot from the others.

The listener is the operator's one server (``http/server.py``: its router, TLS, deadlines and
connection caps); the body is never read before the token and the rate were checked, and never
beyond the limit. The port's router also serves the visibility endpoint (``on_get``), and a
console API can add its routes to it.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from http import HTTPStatus
from typing import Final

from finetune_operator.http.identity import MAX_TOKEN_BYTES, PodIdentity
from finetune_operator.http.limits import BudgetSpent, RateLimiter
from finetune_operator.http.server import (
    Handler,
    HttpServer,
    JsonRoute,
    Request,
    Response,
    Router,
    json_route,
)
from finetune_operator.reports.model import (
    MAX_REPORT_BYTES,
    BadReport,
    ProgressReport,
    parse_report,
)
from finetune_operator.reports.rejects import Rejections

log = logging.getLogger(__name__)

PATH: Final = "/v1/reports"
Authenticate = Callable[[str], PodIdentity | None]
OnReport = Callable[[PodIdentity, ProgressReport], None]


class ReportServer:
    """``POST /v1/reports`` over TLS, in background threads. See the module doc for the checks.

    ``authenticate(token)`` returns the pod or None (:class:`.identity.TokenAuthenticator`; it
    may raise :class:`~.limits.BudgetSpent`, a 503);
    ``on_report(pod, report)`` is called with every report that passed, from a server thread
    (it must be thread-safe and quick; it may raise :class:`BadReport` ``("unknown-pod", ...)``
    to refuse a pod the operator does not expect reports from). ``port=0`` picks a free port
    (see :attr:`port`). :attr:`router` is the port's: the visibility endpoint (``on_get``) and
    a console API add their routes there."""

    def __init__(self, host: str, port: int, certfile: str, keyfile: str,
                 authenticate: Authenticate, on_report: OnReport, *,
                 rate: float = 0.5, burst: float = 10, max_body: int = MAX_REPORT_BYTES,
                 max_connections: int = 32, max_per_address: int = 8, timeout: float = 10.0,
                 rejections: Rejections | None = None) -> None:
        self.authenticate = authenticate
        self.on_report = on_report
        # the GET routes without one of their own (the visibility endpoint): (path, bearer
        # token) -> (status, JSON body); None: GET is not served
        self.on_get: JsonRoute | None = None
        # False on a standby replica: every request gets 503 (the operator sets the leader's
        # may_write here)
        self.serving: Callable[[], bool] = lambda: True
        self.limiter = RateLimiter(rate, burst)
        self.max_body = max_body
        self.rejections = rejections or Rejections()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certfile, keyfile)
        self.router = Router(not_found=self._other, method_not_allowed=self._other)
        self.router.add("POST", PATH, self._standby_first(self._report))
        self._httpd = HttpServer(host, port, self.router, name="report channel",
                                 tls=self.context, request_timeout=timeout,
                                 max_connections=max_connections,
                                 max_per_address=max_per_address, keep_alive=True,
                                 linger_bytes=4 * max_body)

    # the listener's limits, adjustable while it serves
    @property
    def timeout(self) -> float:
        """Seconds for the handshake and a whole request."""
        return self._httpd.request_timeout

    @timeout.setter
    def timeout(self, value: float) -> None:
        self._httpd.request_timeout = value

    @property
    def max_connections(self) -> int | None:
        return self._httpd.max_connections

    @max_connections.setter
    def max_connections(self, value: int | None) -> None:
        self._httpd.max_connections = value

    @property
    def max_per_address(self) -> int | None:
        return self._httpd.max_per_address

    @max_per_address.setter
    def max_per_address(self, value: int | None) -> None:
        self._httpd.max_per_address = value

    @property
    def shed(self) -> int:
        """Connections closed at once, over a cap."""
        return self._httpd.shed

    @property
    def port(self) -> int:
        return self._httpd.port

    # routes

    def _standby_first(self, handler: Handler) -> Handler:
        """A standby replica answers nothing itself (its reports would stay in its memory, its
        queue view is empty): 503 before any review, so the client's next connection, which
        the Service may give to the leader, carries it."""

        def guarded(req: Request) -> Response:
            if not self.serving():
                return Response.text(HTTPStatus.SERVICE_UNAVAILABLE,
                                     "this operator replica is a standby; try again (the "
                                     "leader answers)", {"Retry-After": "1"})
            return handler(req)

        return guarded

    def _other(self, req: Request) -> Response:
        """Anything but a report: GET goes to the visibility endpoint (over this port's TLS:
        users' bearer tokens never travel in clear text); other methods are refused."""
        if req.method == "GET" and self.on_get is not None:
            return self._standby_first(json_route(self.on_get, MAX_TOKEN_BYTES))(req)
        if req.method == "POST":
            return Response.text(HTTPStatus.NOT_FOUND, f"POST {PATH}")
        return Response.text(HTTPStatus.METHOD_NOT_ALLOWED, f"POST {PATH}")

    def _report(self, req: Request) -> Response:
        token = req.bearer(MAX_TOKEN_BYTES)
        try:
            who = self.authenticate(token) if token else None
        except BudgetSpent as e:
            self.rejections.reject(None, BadReport("rate-limited", str(e)))
            return Response.text(HTTPStatus.SERVICE_UNAVAILABLE, str(e),
                                 {"Retry-After": str(e.retry_after)})
        if who is None:
            self.rejections.reject(None, BadReport("unauthenticated", "missing or refused token"))
            return Response.text(HTTPStatus.UNAUTHORIZED, "a projected ServiceAccount token for "
                                 "this operator's audience is needed")
        if not self.limiter.allow(who.uid):
            self.rejections.reject(who.key, BadReport(
                "rate-limited", f"more than {self.limiter.burst:g} reports in a burst"))
            return Response.text(HTTPStatus.TOO_MANY_REQUESTS, "too many reports; send fewer",
                                 {"Retry-After": str(self.limiter.retry_after())})
        length = req.content_length()
        if length is None:
            self.rejections.reject(who.key, BadReport("invalid", "no valid Content-Length"))
            return Response.text(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
        if length > self.max_body:
            self.rejections.reject(who.key, BadReport(
                "too-large", f"{length} bytes, more than the limit of {self.max_body}"))
            return Response.text(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                                 f"a report is at most {self.max_body} bytes")
        body = req.read(length)
        try:
            report = parse_report(body)
            self.on_report(who, report)
        except BadReport as e:
            self.rejections.reject(who.key, e)
            status = HTTPStatus.FORBIDDEN if e.reason == "unknown-pod" else HTTPStatus.BAD_REQUEST
            return Response.text(status, e.reason)
        except Exception:
            log.exception("report channel: on_report failed for pod %s", who.key)
            return Response.text(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
        return Response.text(HTTPStatus.NO_CONTENT, "", close=False)

    # lifecycle

    def start(self) -> ReportServer:
        self._httpd.start()
        log.info("report channel: serving https on port %d (POST %s)", self.port, PATH)
        return self

    def stop(self) -> None:
        self._httpd.stop()

    def __enter__(self) -> ReportServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
