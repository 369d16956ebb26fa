"""The console's HTTP shell: routes on the project's stdlib server (``http/server.py``'s
:class:`Router` and :class:`HttpServer`), each one: who is asking (``identity.py``), the API
calls as them (``api.py``), the view model (``model.py``, ``forms.py``), the HTML
(``pages.py``). Live pages follow server-sent events fed by a watch of the user's own jobs
(one watch per open page, with the user's credentials); every object a watch or a page sees
also feeds the curves' history (``history.py``).

Routes: ``/`` My jobs, ``/jobs/<ns>/<name>`` a job (POST ``.../suspend|resume|delete``),
``/new`` the form (``?clone=<ns>/<name>``), ``/team``, ``/sweeps``, ``/events/...`` the event
streams, ``/api/curve/<ns>/<name>`` a job's curve as JSON, ``/login`` (local mode: sets the
session cookie), ``/healthz``.
"""

from __future__ import annotations

import datetime as dt
import hmac
import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import parse_qs, quote

from kubernetes.client.exceptions import ApiException

from finetune_api.times import parse_time
from finetune_operator.console import forms, model, pages
from finetune_operator.console.api import ConsoleApi, status_of
from finetune_operator.console.history import Curve, History
from finetune_operator.console.i18n import language, text
from finetune_operator.console.identity import (
    COOKIE,
    Caller,
    LocalIdentity,
    Unauthenticated,
    csrf_token,
)
from finetune_operator.console.prometheus import PrometheusSource
from finetune_operator.http.server import NAMESPACE, HttpServer, Request, Response, Router
from finetune_operator.kube.client import Unreachable

log = logging.getLogger(__name__)

NAME = r"[a-z0-9][-a-z0-9.]{0,252}"
MAX_FORM = 1536 * 1024
PING_SECONDS = 15.0


class Identity(Protocol):
    """identity.LocalIdentity, TokenIdentity or ImpersonatingIdentity."""

    mode: str

    def caller(self, req: Request) -> Caller: ...


@dataclass
class Settings:
    namespaces: list[str]  # asked for (-n); empty: every namespace the user may list jobs in
    secret: str  # the session secret (local) and the form tokens' key
    watch_seconds: int = 60  # a watch request's timeout (a closed page's watch ends by then)
    cache_seconds: float = 30.0  # namespaces, bands and the user's name


@dataclass
class _Cached:
    at: float
    value: Any


@dataclass
class Console:
    identity: Identity
    history: History
    settings: Settings
    now: Callable[[], dt.datetime] = field(default=lambda: dt.datetime.now(dt.UTC))
    prometheus: PrometheusSource | None = None  # the curves' source when one is configured
    _cache: dict[tuple[str, str], _Cached] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # ------------------------------------------------------------ plumbing

    def _cached(self, caller: Caller, what: str, make: Callable[[], Any]) -> Any:
        key = (caller.key, what)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit.at < self.settings.cache_seconds:
            return hit.value
        value = make()
        with self._lock:
            self._cache[key] = _Cached(time.monotonic(), value)
        return value

    def namespaces(self, caller: Caller) -> list[str]:
        ns: list[str] = self._cached(caller, "namespaces", lambda: ConsoleApi(
            caller.kube).namespaces(self.settings.namespaces))
        return ns

    def user(self, caller: Caller) -> str:
        who: str = self._cached(caller, "who", lambda: ConsoleApi(caller.kube).who())
        return who

    def bands(self, caller: Caller, ns: str) -> list[str]:
        bands: list[str] = self._cached(caller, f"bands/{ns}",
                                        lambda: ConsoleApi(caller.kube).allowed_bands(ns))
        return bands

    def csrf(self, caller: Caller) -> str:
        return csrf_token(self.settings.secret, caller.key)

    def handler(self, page: Callable[[Request, Caller, str], Response]
                ) -> Callable[[Request], Response]:
        """Identity, language, and the API server's refusals as pages in the reader's words."""

        def handle(req: Request) -> Response:
            lang = language(_query(req).get("lang") or req.headers.get("Accept-Language"))
            try:
                caller = self.identity.caller(req)
            except Unauthenticated as e:
                return _html(401, pages.error_html(401, str(e), lang, ""))
            except PermissionError as e:
                return _html(403, pages.error_html(403, str(e), lang, ""))
            except ApiException as e:
                return _api_error(e, lang, "")
            try:
                if req.method == "POST" and not self._form_allowed(req, caller):
                    return _html(403, pages.error_html(
                        403, "this form was not sent by the console's own page (missing or "
                        "stale form token, or another site's Origin); reload the page and try "
                        "again", lang, ""))
                return page(req, caller, lang)
            except ApiException as e:
                return _api_error(e, lang, self._safe_user(caller))
            except Unreachable as e:
                return _html(502, pages.error_html(502, text(lang, "err.unreachable",
                                                             detail=str(e)[:300]), lang, ""))

        return handle

    def _safe_user(self, caller: Caller) -> str:
        try:
            return self.user(caller)
        except (ApiException, OSError):
            return ""

    def _form_allowed(self, req: Request, caller: Caller) -> bool:
        origin = req.headers.get("Origin")
        host = req.headers.get("Host") or ""
        if origin and origin.split("://", 1)[-1] != host:
            return False
        form = _form(req)
        req.params["_form"] = json.dumps(form)
        return hmac.compare_digest(form.get("csrf", ""), self.csrf(caller))

    # ------------------------------------------------------------ routes

    def router(self) -> Router:
        r = Router()
        h = self.handler
        job = rf"/jobs/(?P<ns>{NAMESPACE})/(?P<name>{NAME})"
        r.add("GET", "/healthz", lambda req: Response.json(200, {"ok": True}))
        r.add("GET", "/login", self.login)
        r.add("GET", "/", h(self.jobs_page))
        r.add("GET", "/events/jobs", h(self.jobs_events))
        r.add("GET", job, h(self.job_page))
        r.add("GET", "/events" + job, h(self.job_events))
        r.add("POST", job + r"/(?P<action>suspend|resume|delete)", h(self.job_action))
        r.add("GET", rf"/api/curve/(?P<ns>{NAMESPACE})/(?P<name>{NAME})", h(self.curve_json))
        r.add("GET", "/new", h(self.new_page))
        r.add("POST", "/new", h(self.new_submit))
        r.add("GET", "/team", h(self.team_page))
        r.add("GET", "/sweeps", h(self.sweeps_page))
        return r

    def login(self, req: Request) -> Response:
        """Local mode: the URL printed at start sets the session cookie, then shows My jobs."""
        token = _query(req).get("token", "")
        if not isinstance(self.identity, LocalIdentity) or not hmac.compare_digest(
                token.encode(), self.settings.secret.encode()):
            return Response.text(401, "open the URL that kubectl finetune console printed")
        return Response(303, b"", None, {
            "Location": "/", "Set-Cookie": f"{COOKIE}={self.settings.secret}; HttpOnly; "
            "SameSite=Strict; Path=/"}, close=True)

    def _observe(self, jobs: list[dict[str, Any]]) -> None:
        for j in jobs:
            self.history.observe(j)

    def _jobs(self, caller: Caller, namespaces: list[str]) -> list[dict[str, Any]]:
        api = ConsoleApi(caller.kube)
        out: list[dict[str, Any]] = []
        for ns in namespaces:
            out += api.list_jobs(ns)[0]
        self._observe(out)
        return out

    def _curves(self, jobs: list[dict[str, Any]]) -> dict[str, Any]:
        return {str(j["metadata"].get("uid")): self.history.curve(str(j["metadata"].get("uid")))
                for j in jobs}

    def jobs_page(self, req: Request, caller: Caller, lang: str) -> Response:
        namespaces = self._wanted(req, caller)
        jobs = self._jobs(caller, namespaces)
        rows = model.jobs_page(jobs, self.now(), self._curves(jobs), lang)
        notice = ""
        if _query(req).get("deleted"):
            notice = pages.note("ok", text(lang, "action.done", action=text(
                lang, "action.delete")) + " " + _query(req)["deleted"])
        return _html(200, pages.jobs_html(rows, namespaces, lang, self.user(caller), notice))

    def _wanted(self, req: Request, caller: Caller) -> list[str]:
        mine = self.namespaces(caller)
        asked = parse_qs(req.query).get("ns") or []
        return [n for n in asked if n in mine] if asked else mine

    def job_page(self, req: Request, caller: Caller, lang: str) -> Response:
        ns, name = req.params["ns"], req.params["name"]
        page = self._job_model(caller, ns, name, lang)
        q = _query(req)
        notice = ""
        if q.get("done"):
            notice = pages.note("ok", text(lang, "action.done", action=text(
                lang, f"action.{q['done']}") if q["done"] in ("suspend", "resume") else q["done"]))
        elif q.get("created"):
            notice = pages.note("ok", text(lang, "new.created", name=name))
        return _html(200, pages.job_html(page, lang, self.user(caller), self.csrf(caller),
                                         notice))

    def _job_model(self, caller: Caller, ns: str, name: str, lang: str) -> dict[str, Any]:
        api = ConsoleApi(caller.kube)
        job = api.get_job(ns, name)
        self.history.observe(job)
        try:
            events = api.events(ns, name)
        except ApiException as e:
            if e.status != 403:
                raise
            events = []
        curve, source = self.job_curve(job)
        return model.job_page(job, events, self.now(), curve, lang, source)

    def job_curve(self, job: dict[str, Any]) -> tuple[Curve, str]:
        """The curve of a job the user has just read as themselves, and where it came from:
        Prometheus when configured and it has the job's series, else the console's record."""
        meta = job.get("metadata") or {}
        recorded = self.history.curve(str(meta.get("uid")))
        if self.prometheus is None:
            return recorded, "history"
        created = parse_time(meta.get("creationTimestamp"))
        end = self.now().timestamp()
        start = created.timestamp() if created is not None else end - 86400
        found = self.prometheus.curve(str(meta.get("namespace")), str(meta.get("name")), start,
                                      end, recorded)
        return (found, "prometheus") if found is not None else (recorded, "history")

    def curve_json(self, req: Request, caller: Caller, lang: str) -> Response:
        job = ConsoleApi(caller.kube).get_job(req.params["ns"], req.params["name"])
        self.history.observe(job)
        c, source = self.job_curve(job)
        return Response.json(200, {"source": source,
            "points": [{"step": p.step, "attempt": p.attempt, "loss": p.loss, "lr": p.lr,
                        "tokensPerSecond": p.tps, "at": p.at} for p in c.points],
            "marks": [{"kind": m.kind, "step": m.step, "attempt": m.attempt, "at": m.at}
                      for m in c.marks]})

    def job_action(self, req: Request, caller: Caller, lang: str) -> Response:
        ns, name, action = req.params["ns"], req.params["name"], req.params["action"]
        api = ConsoleApi(caller.kube)
        if action == "delete":
            api.delete_job(ns, name)
            return _redirect(f"/?deleted={quote(name)}")
        api.patch_spec(ns, name, {"suspend": action == "suspend"})
        return _redirect(f"{pages.job_href(ns, name)}?done={action}")

    # ------------------------------------------------------------ the New job form

    def new_page(self, req: Request, caller: Caller, lang: str) -> Response:
        namespaces = self.namespaces(caller)
        values: dict[str, str] = {"namespace": namespaces[0] if namespaces else ""}
        clone = _query(req).get("clone", "")
        if "/" in clone:
            ns, name = clone.split("/", 1)
            job = ConsoleApi(caller.kube).get_job(ns, name)
            values = forms.form_of(model.clone_manifest(job))
        ns = values.get("namespace") or ""
        defaults = forms.defaults_for(values.get("model_hub") or values.get("model_pvc") or "")
        bands = self.bands(caller, ns) if ns else []
        if not clone:
            values.setdefault("method", str(defaults["method"]))
            values.setdefault("gpus", str(defaults["gpus"]))
            values.setdefault("lora_rank", str(defaults["lora_rank"]))
            values.setdefault("learning_rate", str(defaults["learning_rate"]))
            values.setdefault("band", "finetune-normal" if "finetune-normal" in bands
                              else (bands[-1] if bands else ""))
        return _html(200, pages.new_html(
            values=values, errors={}, bands=bands, namespaces=namespaces, defaults=defaults,
            preview=None, notice="", lang=lang, user=self.user(caller), csrf=self.csrf(caller)))

    def new_submit(self, req: Request, caller: Caller, lang: str) -> Response:
        values = {k: v for k, v in json.loads(req.params["_form"]).items()
                  if k in forms.FIELDS or k == "do"}
        namespaces = self.namespaces(caller)
        ns = values.get("namespace") or (namespaces[0] if namespaces else "")
        built = forms.build(forms.Form(values), ns)
        preview = forms.detect_format(values["dataset_text"]) if values.get(
            "dataset_text", "").strip() else None
        errors, notice, status = dict(built.errors), "", 200
        api = ConsoleApi(caller.kube)
        if not errors and built.manifest is not None:
            try:
                if built.configmap is not None:
                    api.create_configmap(built.configmap, dry_run=True)
                api.create_job(built.manifest, dry_run=True)
            except ApiException as e:
                if e.status in (400, 403, 409, 422):
                    errors = forms.field_errors(status_of(e))
                else:
                    raise
        if errors:
            status = 422
            notice = pages.note("bad", text(lang, "new.errors"))
        elif values.get("do") == "submit" and built.manifest is not None:
            if built.configmap is not None:
                api.create_configmap(built.configmap, dry_run=False)
            api.create_job(built.manifest, dry_run=False)
            return _redirect(f"{pages.job_href(ns, built.manifest['metadata']['name'])}"
                             "?created=1")
        else:
            notice = pages.note("ok", text(lang, "new.ok_dry"))
        defaults = forms.defaults_for(values.get("model_hub") or values.get("model_pvc") or "")
        return _html(status, pages.new_html(
            values=values, errors=errors, bands=self.bands(caller, ns) if ns else [],
            namespaces=namespaces, defaults=defaults, preview=preview, notice=notice, lang=lang,
            user=self.user(caller), csrf=self.csrf(caller)))

    # ------------------------------------------------------------ Team and Sweeps

    def team_page(self, req: Request, caller: Caller, lang: str) -> Response:
        namespaces = self.namespaces(caller)
        jobs = self._jobs(caller, namespaces)
        api = ConsoleApi(caller.kube)
        quotas = [q for ns in namespaces for q in api.quotas(ns)]
        team = model.team_page(jobs, quotas, self.now(), namespaces)
        return _html(200, pages.team_html(team, lang, self.user(caller)))

    def sweeps_page(self, req: Request, caller: Caller, lang: str) -> Response:
        namespaces = self.namespaces(caller)
        api = ConsoleApi(caller.kube)
        shown = []
        for ns in namespaces:
            sweeps = api.list_sweeps(ns)
            if not sweeps:
                continue
            jobs = api.list_jobs(ns)[0]
            for s in sorted(sweeps, key=lambda s: str(s["metadata"].get("name"))):
                shown.append(model.sweep_page(s, model.sweep_trials(s, jobs), self.now(), lang))
        return _html(200, pages.sweeps_html(shown, namespaces, lang, self.user(caller)))

    # ------------------------------------------------------------ live: server-sent events

    def _pump(self, kube_api: ConsoleApi, ns: str, out: queue.Queue[tuple[str, dict[str, Any]]],
              stop: threading.Event, field_selector: str | None = None) -> None:
        """List, then watch, the user's jobs of ``ns`` until ``stop``; every object to ``out``
        and to the history. A 410 or a broken stream relists; an error waits and retries."""
        backoff = 1.0
        while not stop.is_set():
            try:
                path_items, rv = kube_api.kube.list_raw(
                    _jobs_path(ns), field_selector=field_selector)
                for j in path_items:
                    self.history.observe(j)
                    out.put(("MODIFIED", j))
                for kind, obj in kube_api.kube.watch_raw(
                        _jobs_path(ns), rv, field_selector=field_selector,
                        timeout_seconds=self.settings.watch_seconds):
                    if stop.is_set():
                        return
                    if kind == "ERROR":
                        break  # 410 Gone: relist
                    if kind == "BOOKMARK":
                        continue
                    self.history.observe(obj)
                    out.put((kind, obj))
                backoff = 1.0
            except (ApiException, OSError, ValueError) as e:
                log.info("console watch of %s: %s; retrying", ns, e)
                if stop.wait(backoff):
                    return
                backoff = min(30.0, backoff * 2)

    def _stream(self, caller: Caller, namespaces: list[str], field_selector: str | None,
                render: Callable[[str, dict[str, Any]], bytes | None]) -> Iterator[bytes]:
        out: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        stop = threading.Event()
        api = ConsoleApi(caller.kube)
        for ns in namespaces:
            threading.Thread(target=self._pump, args=(api, ns, out, stop, field_selector),
                             name=f"console-watch-{ns}", daemon=True).start()
        try:
            yield b"retry: 2000\n\n"
            while True:
                try:
                    kind, obj = out.get(timeout=PING_SECONDS)
                except queue.Empty:
                    yield b": ping\n\n"
                    continue
                chunk = render(kind, obj)
                if chunk:
                    yield chunk
        finally:
            stop.set()

    def jobs_events(self, req: Request, caller: Caller, lang: str) -> Response:
        namespaces = self._wanted(req, caller)

        def render(kind: str, job: dict[str, Any]) -> bytes:
            meta = job.get("metadata") or {}
            rid = pages.row_id(str(meta.get("namespace")), str(meta.get("name")))
            if kind == "DELETED":
                return _event("row", {"id": rid, "deleted": True})
            curve = self.history.curve(str(meta.get("uid")))
            row = model.job_list_row(job, self.now(), curve, lang)
            return _event("row", {"id": rid, "html": pages.row_html(row, lang)})

        return _sse(self._stream(caller, namespaces, None, render))

    def job_events(self, req: Request, caller: Caller, lang: str) -> Response:
        ns, name = req.params["ns"], req.params["name"]
        ConsoleApi(caller.kube).get_job(ns, name)  # refused here, not inside the stream
        last: dict[str, str] = {}

        def render(kind: str, job: dict[str, Any]) -> bytes | None:
            if kind == "DELETED":
                return _event("job", {"html": pages.note("info", text(lang, "job.deleted",
                                                                       name=name))})
            page = self._job_model(caller, ns, name, lang)
            html = pages.live_part(page, lang, self.csrf(caller))
            if last.get("html") == html:
                return None
            last["html"] = html
            return _event("job", {"html": html, "phase": page["row"]["phase"]})

        return _sse(self._stream(caller, [ns], f"metadata.name={name}", render))

    def record(self, kube_api: ConsoleApi, namespaces: list[str]) -> threading.Event:
        """Local mode: keep the curves' history of ``namespaces`` while the console runs, open
        page or not (the same watch a page uses, feeding only the history)."""
        stop = threading.Event()
        sink: queue.Queue[tuple[str, dict[str, Any]]] = _Discard()
        for ns in namespaces:
            threading.Thread(target=self._pump, args=(kube_api, ns, sink, stop),
                             name=f"console-history-{ns}", daemon=True).start()
        return stop


class _Discard(queue.Queue[tuple[str, dict[str, Any]]]):
    def put(self, item: tuple[str, dict[str, Any]], block: bool = True,
            timeout: float | None = None) -> None:
        return None


def _jobs_path(ns: str) -> str:
    from finetune_operator.kube.client import JOBS_PATH, collection_path

    return collection_path(JOBS_PATH, ns)


def _query(req: Request) -> dict[str, str]:
    return {k: v[0] for k, v in parse_qs(req.query).items()}


def _form(req: Request) -> dict[str, str]:
    length = req.content_length()
    if length is None or length > MAX_FORM:
        return {}
    raw = req.read(length).decode("utf-8", "replace")
    return {k: v[0] for k, v in parse_qs(raw, keep_blank_values=True).items()}


def _html(status: int, body: str) -> Response:
    return Response(status, body.encode(), "text/html; charset=utf-8",
                    {"Cache-Control": "no-store", "X-Frame-Options": "DENY",
                     "Content-Security-Policy": "default-src 'self'; style-src 'unsafe-inline'; "
                     "script-src 'unsafe-inline'; img-src 'self' data:"}, close=True)


def _redirect(location: str) -> Response:
    return Response(303, b"", None, {"Location": location}, close=True)


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n".encode()


def _sse(stream: Iterator[bytes]) -> Response:
    return Response(200, b"", "text/event-stream; charset=utf-8",
                    {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}, stream=stream)


def _api_error(e: ApiException, lang: str, user: str) -> Response:
    detail = str(status_of(e).get("message") or e.reason or "")[:500]
    key = {401: "err.forbidden", 403: "err.forbidden", 404: "err.not_found"}.get(
        e.status or 0, "err.bad_request")
    code = e.status if e.status in (400, 401, 403, 404, 409, 422) else 502
    return _html(code, pages.error_html(code, text(lang, key, detail=detail), lang, user))


def serve(console: Console, host: str, port: int) -> HttpServer:
    """The console's listener, started (``port`` 0: a free one)."""
    server = HttpServer(host, port, console.router(), name="finetune console",
                        request_timeout=30.0, max_connections=128)
    return server.start()
