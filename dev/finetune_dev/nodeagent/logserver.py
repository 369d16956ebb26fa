"""The node agent's log endpoint: the one kubelet read path the agent serves, so `kubectl logs`
and `kubectl finetune logs` work on the local cluster through the API server (which checks
``pods/log`` for the caller, as on a real cluster) instead of pointing at a file.

The API server calls ``GET https://<node InternalIP>:<daemonEndpoints.kubeletEndpoint.Port>/
containerLogs/<namespace>/<pod>/<container>?follow=&tailLines=&limitBytes=`` (it does not verify
a kubelet's serving certificate unless told to, and sends no client certificate here). The agent
listens on 127.0.0.1 only and serves read-only what is already a file on this machine: container
logs under ``<root>/pods/``. Not served (answered 400 with the reason): ``previous`` (an agent
container never restarts), ``timestamps``, ``sinceSeconds``/``sinceTime`` (the files carry no
times), and every other kubelet path (exec, attach, port-forward: 404).
"""

from __future__ import annotations

import http.server
import logging
import ssl
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from finetune_dev.nodeagent.paths import find_log

log = logging.getLogger("nodeagent.logs")
UNSUPPORTED = ("previous", "timestamps", "sinceSeconds", "sinceTime")
MAX_TAIL = 1_000_000
FOLLOW_POLL_SECONDS = 0.2


class BadRequest(ValueError):
    """A request this endpoint does not serve; the text is the answer."""


@dataclass(frozen=True)
class LogRequest:
    namespace: str
    pod: str
    container: str
    follow: bool = False
    tail_lines: int | None = None
    limit_bytes: int | None = None


def _flag(q: dict[str, list[str]], name: str) -> bool:
    return q.get(name, ["false"])[-1].lower() in ("true", "1")


def _count(q: dict[str, list[str]], name: str, cap: int) -> int | None:
    if name not in q:
        return None
    try:
        n = int(q[name][-1])
    except ValueError:
        raise BadRequest(f"{name} must be an integer, got {q[name][-1]!r}") from None
    if n < 0:
        raise BadRequest(f"{name} must not be negative, got {n}")
    return min(n, cap)


def parse(path: str) -> LogRequest:
    """Pure: the request line's path -> what to serve. Raises BadRequest, or LookupError for a
    path this endpoint does not have."""
    url = urlsplit(path)
    parts = [unquote(p) for p in url.path.split("/") if p]
    if len(parts) != 4 or parts[0] != "containerLogs":
        raise LookupError(f"the finetune node agent serves only /containerLogs/<namespace>/"
                          f"<pod>/<container>, not {url.path}")
    if any(not p or p in (".", "..") or "/" in p for p in parts[1:]):
        raise BadRequest(f"not a namespace/pod/container: {url.path}")
    q = parse_qs(url.query)
    for name in UNSUPPORTED:
        if name in q and (name not in ("previous", "timestamps") or _flag(q, name)):
            raise BadRequest(f"the finetune node agent does not serve {name} (its containers "
                             "never restart and its log files carry no times)")
    return LogRequest(parts[1], parts[2], parts[3], follow=_flag(q, "follow"),
                      tail_lines=_count(q, "tailLines", MAX_TAIL),
                      limit_bytes=_count(q, "limitBytes", 1 << 40))


def tail(data: bytes, lines: int | None) -> bytes:
    """Pure: the last ``lines`` lines of ``data`` (all of it for None)."""
    if lines is None:
        return data
    if lines == 0:
        return b""
    kept = data.splitlines(keepends=True)[-lines:]
    return b"".join(kept)


class LogServer:
    """Serves the container logs under ``root`` on 127.0.0.1 (port 0: any free one)."""

    def __init__(self, root: Path, cert_file: str, key_file: str,
                 running: Callable[[str, str, str], bool], port: int = 0) -> None:
        self.root, self.running = root, running
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: object) -> None:
                log.debug(format, *args)

            def do_GET(self) -> None:
                server.serve(self)

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert_file, key_file)
        self.httpd.socket = ctx.wrap_socket(self.httpd.socket, server_side=True)
        self.port = int(self.httpd.server_address[1])

    def start(self) -> None:
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="logserver").start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def _answer(h: http.server.BaseHTTPRequestHandler, code: int, text: str) -> None:
        body = (text + "\n").encode()
        h.send_response(code)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    def serve(self, h: http.server.BaseHTTPRequestHandler) -> None:
        try:
            req = parse(h.path)
        except LookupError as e:
            return self._answer(h, 404, str(e))
        except BadRequest as e:
            return self._answer(h, 400, str(e))
        path = find_log(self.root, req.namespace, req.pod, req.container)
        if path is None:
            return self._answer(h, 404, f"container {req.container!r} of pod {req.namespace}/"
                                f"{req.pod} has no log on this node (not started yet, or not "
                                "one of its containers)")
        data = tail(path.read_bytes(), req.tail_lines)
        budget = req.limit_bytes
        if budget is not None:
            data = data[:budget]
        h.send_response(200)
        h.send_header("Content-Type", "text/plain; charset=utf-8")
        if not req.follow:
            h.send_header("Content-Length", str(len(data)))
            h.end_headers()
            h.wfile.write(data)
            return None
        h.send_header("Connection", "close")  # the stream ends when the container does
        h.close_connection = True
        h.end_headers()
        self._follow(h, path, req, data, budget)
        return None

    def _follow(self, h: http.server.BaseHTTPRequestHandler, path: Path, req: LogRequest,
                first: bytes, budget: int | None) -> None:
        sent, offset = 0, path.stat().st_size
        chunk = first
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                while True:
                    if budget is not None:
                        chunk = chunk[:budget - sent]
                    if chunk:
                        h.wfile.write(chunk)
                        h.wfile.flush()
                        sent += len(chunk)
                    if budget is not None and sent >= budget:
                        return
                    chunk = f.read(65536)
                    if chunk:
                        continue
                    if not self.running(req.namespace, req.pod, req.container):
                        chunk = f.read()  # what it wrote before it exited
                        if not chunk:
                            return
                        continue
                    time.sleep(FOLLOW_POLL_SECONDS)
        except (BrokenPipeError, ConnectionResetError):  # the reader went away
            return
