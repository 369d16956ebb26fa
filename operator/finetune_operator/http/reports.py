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

Standard library (``http.server`` + ``ssl``) on purpose: one endpoint; no new dependency in the
operator image; it runs in its own threads so a flood of reports can never stall kopf's asyncio
loop (an aiohttp app there would share it); and it keeps explicit control of what a framework
tends to hide: the TLS handshake happens in the worker thread with a timeout (never in the
accepting thread, where one silent client would block everyone), connections are bounded, the
body is never read before the token and the rate were checked, and never beyond the limit.
"""

from __future__ import annotations

import contextlib
import io
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Final

from finetune_operator.http.identity import MAX_TOKEN_BYTES, PodIdentity
from finetune_operator.http.limits import BudgetSpent, RateLimiter
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


class _UntilDeadline(io.RawIOBase):
    """The connection's reads, each with the time left until the handler's deadline as its
    timeout: a client that sends one byte at a time still has one deadline for the request."""

    def __init__(self, handler: _Handler) -> None:
        self.handler = handler

    def readable(self) -> bool:
        return True

    def readinto(self, buf: Any) -> int:
        left = self.handler.deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError("the request was not complete by its deadline")
        self.handler.connection.settimeout(left)
        return int(self.handler.connection.recv_into(buf))


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    protocol_version = "HTTP/1.1"
    server_version = "finetune-operator"
    sys_version = ""

    def __init__(self, request: Any, client_address: Any, server: _Server,
                 deadline: float | None = None) -> None:
        # monotonic; the request must be read by then
        self.deadline = time.monotonic() + server.owner.timeout if deadline is None else deadline
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # its per-read timeout restarts with every byte
        self.rfile = io.BufferedReader(_UntilDeadline(self))

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.deadline = time.monotonic() + self.server.owner.timeout  # the next request's

    def do_POST(self) -> None:
        srv = self.server.owner
        if self.path.split("?", 1)[0] != PATH:
            self._reply(HTTPStatus.NOT_FOUND, f"POST {PATH}")
            return
        if self._standby():
            return
        auth = self.headers.get("Authorization", "")
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        try:
            who = srv.authenticate(token) if token and len(token) <= MAX_TOKEN_BYTES else None
        except BudgetSpent as e:
            srv.rejections.reject(None, BadReport("rate-limited", str(e)))
            self._reply(HTTPStatus.SERVICE_UNAVAILABLE, str(e),
                        {"Retry-After": str(e.retry_after)})
            return
        if who is None:
            srv.rejections.reject(None, BadReport("unauthenticated", "missing or refused token"))
            self._reply(HTTPStatus.UNAUTHORIZED,
                        "a projected ServiceAccount token for this operator's audience is needed")
            return
        if not srv.limiter.allow(who.uid):
            srv.rejections.reject(who.key, BadReport(
                "rate-limited", f"more than {srv.limiter.burst:g} reports in a burst"))
            self._reply(HTTPStatus.TOO_MANY_REQUESTS, "too many reports; send fewer",
                        {"Retry-After": str(srv.limiter.retry_after())})
            return
        length = self._length()
        if length is None:
            srv.rejections.reject(who.key, BadReport("invalid", "no valid Content-Length"))
            self._reply(HTTPStatus.LENGTH_REQUIRED, "Content-Length is required")
            return
        if length > srv.max_body:
            srv.rejections.reject(who.key, BadReport(
                "too-large", f"{length} bytes, more than the limit of {srv.max_body}"))
            self._reply(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"a report is at most {srv.max_body} bytes")
            return
        body = self.rfile.read(length)
        self._body_read = True
        try:
            report = parse_report(body)
            srv.on_report(who, report)
        except BadReport as e:
            srv.rejections.reject(who.key, e)
            status = HTTPStatus.FORBIDDEN if e.reason == "unknown-pod" else HTTPStatus.BAD_REQUEST
            self._reply(status, e.reason)
            return
        except Exception:
            log.exception("report channel: on_report failed for pod %s", who.key)
            self._reply(HTTPStatus.INTERNAL_SERVER_ERROR, "internal error")
            return
        self._reply(HTTPStatus.NO_CONTENT, "", keep_alive=True)

    def _length(self) -> int | None:
        text = self.headers.get("Content-Length")
        if text is None or not text.isdigit() or len(text) > 12:
            return None
        return int(text)

    def _reply(self, status: HTTPStatus, text: str, headers: dict[str, str] | None = None,
               keep_alive: bool = False) -> None:
        body = (text + "\n").encode() if text else b""
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        if not keep_alive:  # the body may be unread: never reuse this connection
            self.send_header("Connection", "close")
            self.close_connection = True
        if body:
            self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if body:
            self.wfile.write(body)
        if not keep_alive:
            self._linger()

    def _linger(self) -> None:
        """After an answer that closes the connection, read and drop what the client still
        sends (an unread body; at most 4 times the limit, for at most a second): closing a
        socket with unread input resets the connection, and a client that sends its whole body
        before it reads would lose the answer with it."""
        if getattr(self, "_body_read", False):
            return
        self.deadline = min(self.deadline, time.monotonic() + 1)
        left = 4 * self.server.owner.max_body
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := self.rfile.read1(min(left, 65536))):
                left -= len(chunk)

    def do_GET(self) -> None:
        """The visibility endpoint (serve.Endpoints) over the same TLS: users' bearer tokens
        never travel in clear text."""
        get = self.server.owner.on_get
        if get is None:
            self._reply(HTTPStatus.METHOD_NOT_ALLOWED, f"POST {PATH}")
            return
        if self._standby():
            return
        from finetune_operator.http.server import answer_json

        answer_json(self, get, MAX_TOKEN_BYTES)

    def _standby(self) -> bool:
        """A standby replica answers nothing itself (its reports would stay in its memory, its
        queue view is empty): 503 before any review, so the client's next connection, which
        the Service may give to the leader, carries it. True when it answered."""
        if self.server.owner.serving():
            return False
        self._reply(HTTPStatus.SERVICE_UNAVAILABLE,
                    "this operator replica is a standby; try again (the leader answers)",
                    {"Retry-After": "1"})
        return True

    def do_PUT(self) -> None:
        self._reply(HTTPStatus.METHOD_NOT_ALLOWED, f"POST {PATH}")

    do_DELETE = do_PATCH = do_PUT

    def log_message(self, format: str, *args: Any) -> None:
        return None  # per-request lines would be a log flood; rejections are logged once


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, owner: ReportServer, address: tuple[str, int]) -> None:
        self.owner = owner
        self.address_family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # source address -> connections being served
        self._shed_logged = float("-inf")
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        host, owner = str(client_address[0]), self.owner
        with self._lock:
            mine, total = self._open.get(host, 0), sum(self._open.values())
            shed = total >= owner.max_connections or mine >= owner.max_per_address
            if not shed:
                self._open[host] = mine + 1
        if shed:  # beyond a cap: close now, never queue
            self._shed(request, total, mine)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self._release(host)
            raise

    def process_request_thread(self, request: Any, client_address: Any) -> None:
        try:
            super().process_request_thread(request, client_address)
        finally:
            self._release(str(client_address[0]))

    def _release(self, host: str) -> None:
        with self._lock:
            left = self._open.pop(host, 1) - 1
            if left > 0:
                self._open[host] = left

    def _shed(self, request: Any, total: int, mine: int) -> None:
        owner = self.owner
        owner.shed += 1
        self.shutdown_request(request)
        now = time.monotonic()
        if now - self._shed_logged >= 60:  # a flood of these is one line a minute
            self._shed_logged = now
            log.warning("report channel: closed a new connection at once (%d of %d connections "
                        "served, %d of %d from its address; %d closed so far): a client may be "
                        "holding connections open", total, owner.max_connections, mine,
                        owner.max_per_address, owner.shed)

    def finish_request(self, request: Any, client_address: Any) -> None:
        deadline = time.monotonic() + self.owner.timeout
        # the handshake's reads share this one timeout (CPython's SSL handshake has a deadline)
        request.settimeout(self.owner.timeout)
        try:
            tls = self.owner.context.wrap_socket(request, server_side=True)
        except (OSError, ssl.SSLError):
            return  # a failed or slow handshake: nothing to answer
        try:
            _Handler(tls, client_address, self, deadline)
        except OSError:
            pass  # the client went away or timed out mid-request
        finally:
            with contextlib.suppress(OSError):
                tls.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("report channel: connection error", exc_info=True)


class ReportServer:
    """``POST /v1/reports`` over TLS, in background threads. See the module doc for the checks.

    ``authenticate(token)`` returns the pod or None (:class:`.identity.TokenAuthenticator`; it
    may raise :class:`~.limits.BudgetSpent`, a 503);
    ``on_report(pod, report)`` is called with every report that passed, from a server thread
    (it must be thread-safe and quick; it may raise :class:`BadReport` ``("unknown-pod", ...)``
    to refuse a pod the operator does not expect reports from). ``port=0`` picks a free port
    (see :attr:`port`)."""

    def __init__(self, host: str, port: int, certfile: str, keyfile: str,
                 authenticate: Authenticate, on_report: OnReport, *,
                 rate: float = 0.5, burst: float = 10, max_body: int = MAX_REPORT_BYTES,
                 max_connections: int = 32, max_per_address: int = 8, timeout: float = 10.0,
                 rejections: Rejections | None = None) -> None:
        self.authenticate = authenticate
        self.on_report = on_report
        # GET routes (the visibility endpoint): (path, bearer token) -> (status, JSON body)
        self.on_get: Callable[[str, str], tuple[int, Any]] | None = None
        # False on a standby replica: every request gets 503 (the operator sets the leader's
        # may_write here)
        self.serving: Callable[[], bool] = lambda: True
        self.limiter = RateLimiter(rate, burst)
        self.max_body = max_body
        self.max_connections = max_connections
        self.max_per_address = max_per_address
        self.timeout = timeout  # seconds for the handshake and a whole request
        self.shed = 0  # connections closed at once, over a cap
        self.rejections = rejections or Rejections()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.minimum_version = ssl.TLSVersion.TLSv1_2
        self.context.load_cert_chain(certfile, keyfile)
        self._httpd = _Server(self, (host, port))
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    def start(self) -> ReportServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={
            "poll_interval": 0.5}, name="report-server", daemon=True)
        self._thread.start()
        log.info("report channel: serving https on port %d (POST %s)", self.port, PATH)
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def __enter__(self) -> ReportServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
