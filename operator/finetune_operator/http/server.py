"""The operator's one HTTP server module: a :class:`Router` (method + path pattern -> handler)
and one server factory (:class:`HttpServer`) that every listener uses, plus the routes of the
health port and the visibility endpoint.

Listeners (ports as configured; each an :class:`HttpServer` with its own router):

- the plain-HTTP health port: ``/healthz`` (liveness: fails when the leader completed no cycle
  for ``health_stale_cycles`` intervals) and ``/readyz`` (the watch caches are synced);
  :func:`serve`.
- the HTTPS metrics port: ``GET /metrics`` for authorised scrapers (``http/metrics.py``).
- the HTTPS report port: the trainers' ``POST /v1/reports`` (``http/reports.py``) and, beside
  it, the visibility endpoint ``/v1/namespaces/<ns>/queue`` (exact queue positions on demand
  instead of in every job's status; ``/v1/queue`` for the cluster-wide order). Visibility
  requests carry the caller's bearer token: the operator asks the API server who it is
  (TokenReview) and whether it may list FineTuneJobs there (SubjectAccessReview), so a tenant
  sees its own namespace's queue only, and the cluster-wide view is for admins. Those answers
  are cached for a few seconds and the reviews spend the report port's shared budget
  (``limits.CachedAccess``): spent, the caller gets 503 with ``Retry-After``. A console API
  (issue 22) adds its routes to that listener's router the same way.

What every listener gets from :class:`HttpServer`: TLS where it is given a context, with the
handshake in the connection's own thread (never in the accepting thread, where one silent client
would block everyone); one deadline for the handshake and each whole request, however slowly a
client sends (a per-read timeout would restart with every byte); at most ``max_connections``
connections at once and at most ``max_per_address`` from one source address, any beyond closed
at once by the accepting thread (never queued); a handler's exception is a 500, never a dead
thread; no per-request access log.

Standard library (``http.server`` + ``ssl``) on purpose: a handful of routes do not justify a
web framework in the image; it runs in its own threads so a flood of requests can never stall
kopf's asyncio loop; and it keeps explicit control of what a framework tends to hide (the
handshake's thread and deadline, bounded connections, a body never read before the checks).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import socket
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from finetune_operator.http.limits import BudgetSpent

log = logging.getLogger(__name__)

Authorize = Callable[[str, str | None], bool]  # (token, namespace or None=cluster) -> allowed
JsonRoute = Callable[[str, str], tuple[int, Any]]  # (path, bearer token) -> (status, JSON body)
# The caller's bearer token when it comes through the API server's service proxy
# (`kubectl finetune list --queue` from outside the cluster): the API server authenticates the
# proxy request with, and then drops, the Authorization header.
FORWARDED_AUTH = "X-Finetune-Authorization"
NAMESPACE = r"[a-z0-9][-a-z0-9]{0,62}"
_NS_QUEUE = re.compile(rf"^/v1/namespaces/({NAMESPACE})/queue/?$")


# ---------------------------------------------------------------- requests, responses, router

@dataclass
class Request:
    """One request as a handler sees it: the body is read only when the handler asks."""

    method: str
    target: str  # as sent: path and query
    headers: Message
    client: str = ""  # source address
    params: dict[str, str] = field(default_factory=dict)  # the route pattern's named groups
    reader: io.BufferedIOBase | None = None
    body_read: bool = False

    @property
    def path(self) -> str:
        return self.target.split("?", 1)[0]

    @property
    def query(self) -> str:
        return self.target.split("?", 1)[1] if "?" in self.target else ""

    def bearer(self, max_len: int, forwarded: bool = False) -> str:
        """The bearer token of ``Authorization`` (or, with ``forwarded``, of
        ``X-Finetune-Authorization``); "" when none, or longer than ``max_len``."""
        auth = self.headers.get("Authorization") or ""
        if forwarded and not auth:
            auth = self.headers.get(FORWARDED_AUTH) or ""
        token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
        return token if len(token) <= max_len else ""

    def content_length(self) -> int | None:
        """A valid ``Content-Length`` (digits, at most 12), else None."""
        text = self.headers.get("Content-Length")
        if text is None or not text.isdigit() or len(text) > 12:
            return None
        return int(text)

    def read(self, length: int) -> bytes:
        """Exactly the body's ``length`` bytes (the caller checked the length first)."""
        if self.reader is None:
            raise OSError("this request has no body to read")
        self.body_read = True
        return self.reader.read(length)


@dataclass
class Response:
    status: int
    body: bytes = b""
    content_type: str | None = None
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # never reuse the connection (e.g. the request body may be unread)
    # a body written chunk by chunk as it comes (server-sent events): no Content-Length, the
    # connection closes after it; the iterator is closed when the client goes away
    stream: Iterator[bytes] | None = None

    @classmethod
    def json(cls, status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
        return cls(status, json.dumps(body).encode(), "application/json", headers or {})

    @classmethod
    def text(cls, status: int, text: str, headers: dict[str, str] | None = None,
             close: bool = True) -> Response:
        """``text`` and a newline as text/plain ("" -> no body); closes the connection unless
        told otherwise."""
        body = (text + "\n").encode() if text else b""
        return cls(status, body, "text/plain; charset=utf-8" if body else None, headers or {},
                   close)


Handler = Callable[[Request], Response]


@dataclass(frozen=True)
class Route:
    method: str
    pattern: re.Pattern[str]  # matched against the whole path (no query)
    handler: Handler


def _not_found(req: Request) -> Response:
    return Response.json(404, {"error": f"no such endpoint: {req.path}"})


def _method_not_allowed(req: Request) -> Response:
    return Response.json(405, {"error": f"{req.method} is not served on {req.path}"})


class Router:
    """Method + path pattern -> handler, in the order added. A path that no route matches goes
    to ``not_found``; one that routes of other methods only match goes to
    ``method_not_allowed``."""

    def __init__(self, not_found: Handler = _not_found,
                 method_not_allowed: Handler = _method_not_allowed) -> None:
        self.routes: list[Route] = []
        self.not_found, self.method_not_allowed = not_found, method_not_allowed

    def add(self, method: str, pattern: str, handler: Handler) -> Router:
        """``pattern`` is a regular expression for the whole path; its named groups reach the
        handler as ``request.params``."""
        self.routes.append(Route(method.upper(), re.compile(pattern), handler))
        return self

    def dispatch(self, req: Request) -> Response:
        other_method = False
        for route in self.routes:
            m = route.pattern.fullmatch(req.path)
            if m is None:
                continue
            if route.method == req.method:
                req.params = {k: v for k, v in m.groupdict().items() if v is not None}
                return route.handler(req)
            other_method = True
        return (self.method_not_allowed if other_method else self.not_found)(req)


def json_route(route: JsonRoute, max_token: int) -> Handler:
    """A handler answering ``route(path, bearer token)`` as JSON; a spent review budget is a
    503 with ``Retry-After``. Tokens longer than ``max_token`` are dropped. The token comes in
    ``Authorization`` (a direct call) or ``X-Finetune-Authorization`` (through the API server's
    service proxy, which consumes ``Authorization`` itself); either is reviewed the same
    way."""

    def handle(req: Request) -> Response:
        try:
            code, body = route(req.target, req.bearer(max_token, forwarded=True))
        except BudgetSpent as e:
            return Response.json(503, {"error": str(e)}, {"Retry-After": str(e.retry_after)})
        return Response.json(code, body)

    return handle


# ---------------------------------------------------------------- writing an answer

def write_response(h: BaseHTTPRequestHandler, resp: Response) -> None:
    h.send_response(resp.status)
    for k, v in resp.headers.items():
        h.send_header(k, v)
    if resp.stream is not None:
        _write_stream(h, resp, resp.stream)
        return
    if resp.close:
        h.send_header("Connection", "close")
        h.close_connection = True
    if resp.content_type:
        h.send_header("Content-Type", resp.content_type)
    h.send_header("Content-Length", str(len(resp.body)))
    h.end_headers()
    if resp.body:
        h.wfile.write(resp.body)


def _write_stream(h: BaseHTTPRequestHandler, resp: Response, stream: Iterator[bytes]) -> None:
    h.send_header("Connection", "close")
    h.close_connection = True
    if resp.content_type:
        h.send_header("Content-Type", resp.content_type)
    h.end_headers()
    try:
        for chunk in stream:
            h.wfile.write(chunk)
            h.wfile.flush()
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()


def _request_of(h: BaseHTTPRequestHandler, reader: io.BufferedIOBase | None) -> Request:
    return Request(h.command, h.path, h.headers, str(h.client_address[0]), reader=reader)


def _answer(h: BaseHTTPRequestHandler, handler: Handler, req: Request) -> Response:
    """``handler(req)``; its exception is a 500 (logged), never a dead server thread."""
    try:
        return handler(req)
    except Exception:
        log.exception("endpoint %s %s failed", req.method, req.path[:100])
        return Response.json(500, {"error": "internal error"}) if req.method == "GET" else \
            Response.text(500, "internal error")


def answer_json(req: BaseHTTPRequestHandler, route: JsonRoute, max_token: int) -> None:
    """Answer the request ``req`` handles with ``route(path, bearer token)`` as JSON (see
    :func:`json_route`), from any ``BaseHTTPRequestHandler``."""
    request = _request_of(req, None)
    write_response(req, _answer(req, json_route(route, max_token), request))


# ---------------------------------------------------------------- the one server factory

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
    server: HttpServer
    server_version = "finetune-operator"
    sys_version = ""

    def __init__(self, request: Any, client_address: Any, server: HttpServer,
                 deadline: float | None = None) -> None:
        # monotonic; the request must be read by then
        self.deadline = (time.monotonic() + server.request_timeout if deadline is None
                         else deadline)
        self.protocol_version = "HTTP/1.1" if server.keep_alive else "HTTP/1.0"
        super().__init__(request, client_address, server)

    def setup(self) -> None:
        super().setup()
        self.rfile.close()  # its per-read timeout restarts with every byte
        self.rfile = io.BufferedReader(_UntilDeadline(self))

    def handle_one_request(self) -> None:
        super().handle_one_request()
        self.deadline = time.monotonic() + self.server.request_timeout  # the next request's

    def _dispatch(self) -> None:
        req = _request_of(self, self.rfile)
        resp = _answer(self, self.server.router.dispatch, req)
        write_response(self, resp)
        if resp.close and not req.body_read and (self.headers.get("Content-Length")
                                                 or self.headers.get("Transfer-Encoding")):
            self._linger()

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _dispatch

    def _linger(self) -> None:
        """After an answer that closes the connection, read and drop what the client still
        sends (an unread body; at most ``linger_bytes``, for at most a second): closing a
        socket with unread input resets the connection, and a client that sends its whole
        body before it reads would lose the answer with it."""
        self.deadline = min(self.deadline, time.monotonic() + 1)
        left = self.server.linger_bytes
        with contextlib.suppress(OSError):
            while left > 0 and (chunk := self.rfile.read1(min(left, 65536))):
                left -= len(chunk)

    def log_message(self, format: str, *args: Any) -> None:
        return None  # per-request lines would be a log flood (probes, scrapes, reports)


class HttpServer(ThreadingHTTPServer):
    """One listener: ``router`` behind stdlib ``http.server`` in daemon threads, over TLS when
    ``tls`` is given. ``port=0`` picks a free port (see :attr:`port`).

    ``request_timeout``: seconds for the TLS handshake and a whole request (each further
    request on a kept-alive connection gets it again from the previous answer).
    ``max_connections`` / ``max_per_address``: connections served at once, in all and from one
    source address (None: no cap); the accepting thread closes any beyond a cap at once.
    ``keep_alive``: HTTP/1.1 (connections reused) rather than HTTP/1.0. The three limits may be
    changed while it serves."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, host: str, port: int, router: Router, *, name: str,
                 tls: ssl.SSLContext | None = None, request_timeout: float = 10.0,
                 max_connections: int | None = None, max_per_address: int | None = None,
                 keep_alive: bool = False, linger_bytes: int = 65536) -> None:
        self.router, self.name, self.tls = router, name, tls
        self.request_timeout = request_timeout
        self.max_connections, self.max_per_address = max_connections, max_per_address
        self.keep_alive, self.linger_bytes = keep_alive, linger_bytes
        self.shed = 0  # connections closed at once, over a cap
        self.address_family = socket.AF_INET6 if ":" in host else socket.AF_INET
        self._lock = threading.Lock()
        self._open: dict[str, int] = {}  # source address -> connections being served
        self._shed_logged = float("-inf")
        self._thread: threading.Thread | None = None
        super().__init__((host, port), _Handler)

    @property
    def port(self) -> int:
        return int(self.server_address[1])

    def start(self) -> HttpServer:
        self._thread = threading.Thread(target=self.serve_forever, kwargs={
            "poll_interval": 0.5}, name=self.name.replace(" ", "-"), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self.shutdown()
        self.server_close()
        if self._thread is not None:
            self._thread.join(5)

    def process_request(self, request: Any, client_address: Any) -> None:
        host = str(client_address[0])
        with self._lock:
            mine, total = self._open.get(host, 0), sum(self._open.values())
            shed = ((self.max_connections is not None and total >= self.max_connections)
                    or (self.max_per_address is not None and mine >= self.max_per_address))
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
        self.shed += 1
        self.shutdown_request(request)
        now = time.monotonic()
        if now - self._shed_logged >= 60:  # a flood of these is one line a minute
            self._shed_logged = now
            log.warning("%s: closed a new connection at once (%d of %s connections served, "
                        "%d of %s from its address; %d closed so far): a client may be "
                        "holding connections open", self.name, total, self.max_connections,
                        mine, self.max_per_address, self.shed)

    def finish_request(self, request: Any, client_address: Any) -> None:
        deadline = time.monotonic() + self.request_timeout
        # the handshake's reads share this one timeout (CPython's SSL handshake has a deadline)
        request.settimeout(self.request_timeout)
        conn = request
        if self.tls is not None:
            try:
                conn = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return  # a failed or slow handshake: nothing to answer
        try:
            _Handler(conn, client_address, self, deadline)
        except OSError:
            pass  # the client went away or timed out mid-request
        finally:
            if conn is not request:
                with contextlib.suppress(OSError):
                    conn.close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        log.debug("%s: connection error", self.name, exc_info=True)


# ---------------------------------------------------------------- health and visibility

class Endpoints:
    """The probe routes (plain-HTTP health port) and the visibility routes (HTTPS report
    port), as ``(path, bearer token) -> (status, JSON body)`` functions and as routes."""

    def __init__(self, healthy: Callable[[], bool], ready: Callable[[], bool],
                 queue: Callable[[], dict[str, list[dict[str, Any]]]],
                 authorize: Authorize) -> None:
        self.healthy, self.ready, self.queue, self.authorize = healthy, ready, queue, authorize

    def handle(self, path: str, token: str) -> tuple[int, dict[str, Any]]:
        """The plain-HTTP port: probes only (bearer tokens are never accepted in clear)."""
        path = path.split("?", 1)[0]
        if path == "/healthz":
            ok = self.healthy()
            return (200 if ok else 500), {"ok": ok}
        if path == "/readyz":
            ok = self.ready()
            return (200 if ok else 503), {"ready": ok}
        return 404, {"error": f"no such endpoint: {path}; the queue is served on the HTTPS "
                     "report port"}

    def visibility(self, path: str, token: str) -> tuple[int, dict[str, Any]]:
        """The HTTPS report port's GET routes: the queue, per namespace or cluster-wide."""
        path = path.split("?", 1)[0]
        m = _NS_QUEUE.match(path)
        if m or path.rstrip("/") == "/v1/queue":
            ns = m.group(1) if m else None
            if not token:
                return 401, {"error": "send your Kubernetes bearer token (Authorization header)"}
            if not self.authorize(token, ns):
                return 403, {"error": "you may not list finetunejobs "
                             + (f"in namespace {ns}" if ns else "cluster-wide")}
            view = self.queue()
            if ns is not None:
                return 200, {"namespace": ns, "items": [
                    {k: v for k, v in e.items() if k != "clusterPosition"}
                    for e in view.get(ns, [])]}
            items = [dict(e, namespace=n) for n, es in view.items() for e in es]
            items.sort(key=lambda e: e["clusterPosition"])
            return 200, {"items": items}
        return 404, {"error": f"no such endpoint: {path}"}

    def probe_router(self) -> Router:
        """The health port's routes: GET /healthz and /readyz; no token is taken."""
        probe = json_route(self.handle, max_token=0)
        return Router(not_found=probe).add("GET", "/healthz", probe).add("GET", "/readyz", probe)


def serve(endpoints: Endpoints, port: int, host: str = "0.0.0.0") -> HttpServer:
    """The plain-HTTP health port (/healthz, /readyz), started."""
    server = HttpServer(host, port, endpoints.probe_router(), name="health endpoints")
    return server.start()
