"""The operator's small HTTP endpoints. On the plain-HTTP health port: ``/healthz`` (liveness:
fails when the leader completed no cycle for ``health_stale_cycles`` intervals) and ``/readyz``
(the watch caches are synced). On the HTTPS report port (GET, beside the trainers' POST): the
visibility endpoint ``/v1/namespaces/<ns>/queue`` (exact queue positions on demand instead of
in every job's status; ``/v1/queue`` for the cluster-wide order). Visibility requests carry the
caller's bearer token: the operator asks the API server who it is (TokenReview) and whether it
may list FineTuneJobs there (SubjectAccessReview), so a tenant sees its own namespace's queue
only, and the cluster-wide view is for admins. Those answers are cached for a few seconds and
the reviews spend the report port's shared budget (``reports.limits.CachedAccess``): spent, the
caller gets 503 with ``Retry-After``.

stdlib ``http.server``: three GET routes do not justify a web framework in the image.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from finetune_operator.http.limits import BudgetSpent

log = logging.getLogger(__name__)

Authorize = Callable[[str, str | None], bool]  # (token, namespace or None=cluster) -> allowed
# The caller's bearer token when it comes through the API server's service proxy
# (`kubectl finetune list --queue` from outside the cluster): the API server authenticates the
# proxy request with, and then drops, the Authorization header.
FORWARDED_AUTH = "X-Finetune-Authorization"
_NS_QUEUE = re.compile(r"^/v1/namespaces/([a-z0-9][-a-z0-9]{0,62})/queue/?$")


class Endpoints:
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


def answer_json(req: BaseHTTPRequestHandler, route: Callable[[str, str], tuple[int, Any]],
                max_token: int) -> None:
    """Answer a GET with ``route(path, bearer token)`` as JSON; an exception in the route is a
    500 (logged), never a dead server thread; a spent review budget is a 503 with
    ``Retry-After``. Tokens longer than ``max_token`` are dropped. The token comes in
    ``Authorization`` (a direct call) or ``X-Finetune-Authorization`` (through the API server's
    service proxy, which consumes ``Authorization`` itself); either is reviewed the same way."""
    auth = req.headers.get("Authorization") or req.headers.get(FORWARDED_AUTH) or ""
    token = auth[7:].strip() if auth[:7].lower() == "bearer " else ""
    retry_after = None
    try:
        code, body = route(req.path, token if len(token) <= max_token else "")
    except BudgetSpent as e:
        code, body, retry_after = 503, {"error": str(e)}, e.retry_after
    except Exception:
        log.exception("endpoint %s failed", req.path.split("?", 1)[0][:100])
        code, body = 500, {"error": "internal error"}
    data = json.dumps(body).encode()
    req.send_response(code)
    if retry_after is not None:
        req.send_header("Retry-After", str(retry_after))
    req.send_header("Content-Type", "application/json")
    req.send_header("Content-Length", str(len(data)))
    req.end_headers()
    req.wfile.write(data)


def serve(endpoints: Endpoints, port: int, host: str = "0.0.0.0") -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            answer_json(self, endpoints.handle, max_token=0)  # probes: no token is taken

        def log_message(self, fmt: str, *args: Any) -> None:
            return  # probes every few seconds: no access log

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="endpoints", daemon=True).start()
    return server
