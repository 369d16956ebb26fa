"""The console's HTTP shell, for real on the project's HttpServer: who may reach it (local
mode: the session cookie the printed URL sets), what a form must carry, and the event stream's
framing. No API server is needed for these: each refusal comes before any Kubernetes call."""

from __future__ import annotations

import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client

from finetune_operator.console.app import Console, Settings, _event, serve
from finetune_operator.console.history import History
from finetune_operator.console.identity import COOKIE, LocalIdentity, csrf_token
from finetune_operator.http.server import HttpServer
from finetune_operator.kube.client import CONSOLE_SURFACE, Kube

SECRET = "s3cret-session-token"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HttpServer]:
    cfg = client.Configuration()
    cfg.host = "http://127.0.0.1:9"  # discard: any API call would fail loudly
    kube = Kube(client.ApiClient(cfg), surface=CONSOLE_SURFACE)
    console = Console(LocalIdentity(kube, SECRET), History(tmp_path),
                      Settings(namespaces=["team-a"], secret=SECRET))
    s = serve(console, "127.0.0.1", 0)
    yield s
    s.stop()


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: object, **kwargs: object) -> None:
        return None


def call(server: HttpServer, path: str, *, cookie: str | None = None, data: bytes | None = None,
         headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    h = dict(headers or {})
    if cookie is not None:
        h["Cookie"] = f"{COOKIE}={cookie}"
    req = urllib.request.Request(f"http://127.0.0.1:{server.port}{path}", data=data, headers=h)
    opener = urllib.request.build_opener(NoRedirect)
    try:
        with opener.open(req, timeout=10) as r:
            return r.status, dict(r.headers), r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read().decode()


def test_without_the_session_cookie_nothing_is_served(server: HttpServer) -> None:
    for path in ("/", "/new", "/team", "/sweeps", "/jobs/team-a/x", "/events/jobs"):
        code, _, body = call(server, path)
        assert code == 401 and "kubectl finetune console" in body, (path, code)
        assert call(server, path, cookie="guess")[0] == 401


def test_the_printed_url_sets_a_strict_http_only_cookie(server: HttpServer) -> None:
    code, headers, _ = call(server, f"/login?token={SECRET}")
    assert code == 303 and headers["Location"] == "/"
    cookie = headers["Set-Cookie"]
    assert cookie.startswith(f"{COOKIE}={SECRET};") and "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert call(server, "/login?token=wrong")[0] == 401
    assert call(server, "/healthz")[0] == 200


def test_a_form_needs_its_token_and_the_console_s_own_origin(server: HttpServer) -> None:
    good = csrf_token(SECRET, "local")
    # no token, a wrong one, or another site's page: refused before any API call
    for data, origin in ((b"name=x", None), (b"csrf=nope&name=x", None),
                         (f"csrf={good}&name=x".encode(), "http://evil.example")):
        code, _, body = call(server, "/jobs/team-a/x/delete", cookie=SECRET, data=data,
                             headers={"Origin": origin} if origin else None)
        assert code == 403 and "form token" in body, (data, origin)
    # with both, the request reaches the API server (here: nothing listens, so 502)
    code, _, body = call(server, "/jobs/team-a/x/delete", cookie=SECRET,
                         data=f"csrf={good}".encode(),
                         headers={"Origin": f"http://127.0.0.1:{server.port}"})
    assert code == 502 and "did not answer" in body


def test_an_event_is_one_frame() -> None:
    frame = _event("row", {"id": "row-a-b", "html": "<tr>\n<td>\u5b8c</td></tr>"})
    text = frame.decode()
    assert text.startswith("event: row\ndata: {") and text.endswith("}\n\n")
    assert text.count("\n") == 3  # one data line: a newline in the HTML is escaped


def test_the_console_surface_is_exactly_what_it_calls() -> None:
    """Every (verb, resource) the console's modules call is declared in CONSOLE_SURFACE (a call
    outside it is logged as an error at run time), and nothing declared goes unused."""
    import re
    from pathlib import Path as P

    import finetune_operator.console as pkg
    from finetune_api import PLURAL
    from finetune_api.sweep import SWEEP_PLURAL

    names = {"PLURAL": PLURAL, "SWEEP_PLURAL": SWEEP_PLURAL}
    called: set[tuple[str, str]] = {("list", PLURAL), ("watch", PLURAL)}  # list_raw, watch_raw
    for path in P(pkg.__file__).parent.glob("*.py"):
        for verb, res in re.findall(r'\.call\(\s*"(\w+)",\s*("?[\w/]+"?)', path.read_text()):
            called.add((verb, names.get(res, res.strip('"'))))
    assert called == set(CONSOLE_SURFACE)
