"""Talk to the benchmark cluster's API server fast: raw JSON over keep-alive HTTPS connections.

The typed client's (de)serialisation costs more than the API server itself at thousands of
objects, so the benchmark uses plain http.client with the admin certificate, one connection per
worker thread, and a streaming watch that records when each event arrived (monotonic time).
"""

from __future__ import annotations

import http.client
import json
import ssl
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

JSON = "application/json"
MERGE = "application/merge-patch+json"
USER_AGENT = "bench-scale"  # the benchmark's own calls, told apart in the API server's audit log


class ApiError(RuntimeError):
    pass


class Api:
    def __init__(self, host: str, port: int, pki: Path) -> None:
        self.host, self.port = host, port
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self._local = threading.local()

    def _conn(self, timeout: float | None = 60) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(self.host, self.port, context=self.ctx,
                                           timeout=timeout)

    def request(self, method: str, path: str, body: Any = None, content_type: str = JSON,
                ) -> tuple[int, Any]:
        """One call on this thread's keep-alive connection (reconnects once if it dropped)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Accept": JSON, "Content-Type": content_type, "User-Agent": USER_AGENT}
        for attempt in (0, 1):
            conn = getattr(self._local, "conn", None)
            if conn is None:
                conn = self._local.conn = self._conn()
            try:
                conn.request(method, path, body=data, headers=headers)
                resp = conn.getresponse()
                raw = resp.read()
            except (http.client.HTTPException, OSError):
                conn.close()
                self._local.conn = None
                if attempt:
                    raise
                continue
            text = raw.decode(errors="replace")
            try:
                return resp.status, json.loads(text) if text else None
            except json.JSONDecodeError:
                return resp.status, text
        raise AssertionError("unreachable")

    def ok(self, method: str, path: str, body: Any = None, content_type: str = JSON,
           allow: tuple[int, ...] = ()) -> Any:
        code, out = self.request(method, path, body, content_type)
        if code >= 300 and code not in allow:
            raise ApiError(f"{method} {path} -> {code}: {str(out)[:300]}")
        return out

    def text(self, path: str) -> str:
        conn = self._conn()
        try:
            conn.request("GET", path)
            return conn.getresponse().read().decode()
        finally:
            conn.close()

    def many(self, method: str, calls: Iterable[tuple[str, Any]], workers: int = 16,
             content_type: str = JSON, allow: tuple[int, ...] = (409,),
             on_done: Callable[[int, float], None] | None = None) -> list[float]:
        """Run calls concurrently; returns each call's completion time (monotonic), in order."""
        items = list(calls)
        done = [0.0] * len(items)

        def one(i: int) -> None:
            path, body = items[i]
            for _ in range(20):
                code, out = self.request(method, path, body, content_type)
                if code == 429 or code >= 500:
                    time.sleep(0.5)
                    continue
                break
            if code >= 300 and code not in allow:
                raise ApiError(f"{method} {path} -> {code}: {str(out)[:300]}")
            done[i] = time.monotonic()
            if on_done:
                on_done(i, done[i])

        with ThreadPoolExecutor(workers) as pool:
            for f in [pool.submit(one, i) for i in range(len(items))]:
                f.result()
        return done

    def list_all(self, path: str, limit: int = 2000) -> tuple[list[dict], str]:
        """Every item (paginated) and the list's resourceVersion."""
        items: list[dict] = []
        cont = ""
        sep = "&" if "?" in path else "?"
        while True:
            q = f"{path}{sep}limit={limit}" + (f"&continue={urllib.parse.quote(cont)}"
                                                if cont else "")
            out = self.ok("GET", q)
            items += out.get("items", [])
            cont = out["metadata"].get("continue", "")
            if not cont:
                return items, out["metadata"]["resourceVersion"]


class Watch:
    """Stream a collection's events into on_event(type, obj, monotonic_time) until stopped.

    Starts with a list (each existing item is reported as ADDED), then watches from its
    resourceVersion; reconnects every few seconds (timeoutSeconds) so stop() returns soon, and
    relists on 410 Gone.
    """

    def __init__(self, api: Api, path: str, on_event: Callable[[str, dict, float], None],
                 selector: str = "") -> None:
        self.api, self.path, self.on_event, self.selector = api, path, on_event, selector
        self._stop = threading.Event()
        self.synced = threading.Event()
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch {path}")

    def start(self) -> Watch:
        self._thread.start()
        if not self.synced.wait(120):
            raise ApiError(f"the watch on {self.path} did not sync in 120 s: {self.error}")
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # surfaced by start() and by the benchmark's checks
            self.error = e
            self.synced.set()

    def _loop(self) -> None:
        sel = f"labelSelector={urllib.parse.quote(self.selector)}&" if self.selector else ""
        rv = ""
        while not self._stop.is_set():
            if not rv:
                items, rv = self.api.list_all(f"{self.path}?{sel}".rstrip("?&"))
                now = time.monotonic()
                for it in items:
                    self.on_event("ADDED", it, now)
                self.synced.set()
            conn = self.api._conn(timeout=30)
            try:
                conn.request("GET", f"{self.path}?{sel}watch=1&timeoutSeconds=5"
                                    f"&allowWatchBookmarks=true&resourceVersion={rv}",
                             headers={"Accept": JSON, "User-Agent": USER_AGENT})
                resp = conn.getresponse()
                if resp.status == 410:
                    rv = ""
                    continue
                if resp.status != 200:
                    raise ApiError(f"watch {self.path}: {resp.status} {resp.read()[:300]!r}")
                while True:
                    line = resp.readline()
                    if not line:
                        break
                    ev = json.loads(line)
                    obj = ev["object"]
                    if ev["type"] == "ERROR":
                        if obj.get("code") == 410:
                            rv = ""
                        break
                    rv = obj["metadata"].get("resourceVersion", rv)
                    if ev["type"] != "BOOKMARK":
                        self.on_event(ev["type"], obj, time.monotonic())
            finally:
                conn.close()
