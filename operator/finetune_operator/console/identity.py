"""Who a request is, and the API client that acts as them.

- ``local`` (``kubectl finetune console``): one user, the kubeconfig's. The server listens on
  127.0.0.1 only and serves a browser that holds the session cookie, which the URL printed (and
  opened) at start sets once: another local user, or a web page in the browser that guesses the
  port, gets a 401 (the cookie is ``HttpOnly`` and ``SameSite=Strict``).
- ``token`` (the chart's in-cluster mode, the default there): the authenticating proxy in front
  (e.g. oauth2-proxy with ``--pass-authorization-header``) forwards the signed-in user's bearer
  token (``Authorization`` or ``X-Forwarded-Access-Token``); the console makes every call with
  that token and nothing else, so it needs no permission of its own: the API server
  authenticates the token and RBAC decides.
- ``impersonate``: the proxy forwards the user's name (``X-Forwarded-User``, optionally
  ``X-Forwarded-Groups``); the console asks the API server with a SubjectAccessReview whether
  that user may list FineTuneJobs in at least one namespace it serves, then calls with
  ``Impersonate-User``/``Impersonate-Group`` headers on its own ServiceAccount, which may only
  impersonate (the chart grants ``impersonate`` on users and groups, and nothing else); every
  call is then authorised as the user. Trusting the name header needs the proxy to be the only
  way in (the chart's NetworkPolicy and the sidecar listening on the pod's loopback).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from kubernetes import client

from finetune_operator.http.server import Request
from finetune_operator.kube.client import CONSOLE_SURFACE, Kube

MAX_TOKEN = 16384
COOKIE = "finetune_console"


@dataclass(frozen=True)
class Caller:
    """A request's identity: ``key`` names it (a hash, never the token), ``kube`` acts as it."""

    key: str
    kube: Kube


class Unauthenticated(Exception):
    """No identity on the request: 401, with what to do."""


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def cookie_of(req: Request, name: str = COOKIE) -> str:
    for part in (req.headers.get("Cookie") or "").split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return ""


class LocalIdentity:
    """``kubectl finetune console``: the one user of the kubeconfig, behind a session secret."""

    mode = "local"

    def __init__(self, kube: Kube, secret: str) -> None:
        self.kube, self.secret = kube, secret

    def caller(self, req: Request) -> Caller:
        if not hmac.compare_digest(cookie_of(req).encode(), self.secret.encode()):
            raise Unauthenticated("this console serves the browser that opened the URL "
                                  "kubectl finetune console printed; open that URL")
        return Caller("local", self.kube)


class _Clients:
    """A few recent API clients by key (connection pools are reused across requests)."""

    def __init__(self, size: int = 64, ttl: float = 300.0) -> None:
        self.size, self.ttl = size, ttl
        self._items: OrderedDict[str, tuple[float, Kube]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: str, make: Callable[[], Kube]) -> Kube:
        now = time.monotonic()
        with self._lock:
            hit = self._items.get(key)
            if hit is not None and now - hit[0] < self.ttl:
                self._items.move_to_end(key)
                return hit[1]
        kube = make()
        with self._lock:
            self._items[key] = (now, kube)
            while len(self._items) > self.size:
                self._items.popitem(last=False)
        return kube


def _base_configuration(base: client.Configuration) -> client.Configuration:
    """A copy of the server address and CA only: no credential of the console's own."""
    cfg = client.Configuration()
    cfg.host = base.host
    cfg.ssl_ca_cert = base.ssl_ca_cert
    cfg.verify_ssl = base.verify_ssl
    cfg.retries = 1
    return cfg


class TokenIdentity:
    """In-cluster, the user's own bearer token forwarded by the authenticating proxy."""

    mode = "token"

    def __init__(self, base: client.Configuration) -> None:
        self.base = base
        self._clients = _Clients()

    def caller(self, req: Request) -> Caller:
        token = req.bearer(MAX_TOKEN) or (req.headers.get("X-Forwarded-Access-Token")
                                          or "").strip()[:MAX_TOKEN]
        if not token:
            raise Unauthenticated("no bearer token: the console is reached through the "
                                  "authenticating proxy, which forwards the signed-in user's "
                                  "token (oauth2-proxy --pass-authorization-header)")
        key = _digest(token)

        def make() -> Kube:
            cfg = _base_configuration(self.base)
            cfg.api_key = {"authorization": token}
            cfg.api_key_prefix = {"authorization": "Bearer"}
            return Kube(client.ApiClient(cfg), surface=CONSOLE_SURFACE)

        return Caller(key, self._clients.get(key, make))


class ImpersonatingIdentity:
    """In-cluster, the user's name from the proxy; calls on the console's own ServiceAccount
    with impersonation headers, once a SubjectAccessReview said the user may list FineTuneJobs
    in one of ``namespaces`` (empty: anywhere)."""

    mode = "impersonate"

    def __init__(self, own: Kube, namespaces: list[str],
                 review: Callable[[str, list[str], str | None], bool]) -> None:
        self.own, self.namespaces, self.review = own, namespaces, review
        self._clients = _Clients()
        self._allowed: dict[str, tuple[float, bool]] = {}

    def caller(self, req: Request) -> Caller:
        user = (req.headers.get("X-Forwarded-User") or "").strip()
        # a signed-in person never has a system: name; such groups (system:masters) are dropped
        groups = [g.strip() for g in (req.headers.get("X-Forwarded-Groups") or "").split(",")
                  if g.strip() and not g.strip().startswith("system:")]
        if not user or user.startswith("system:"):
            raise Unauthenticated("no signed-in user: the console is reached through the "
                                  "authenticating proxy, which names the user "
                                  "(X-Forwarded-User)")
        key = _digest(user + "\n" + ",".join(groups))
        now = time.monotonic()
        hit = self._allowed.get(key)
        if hit is None or now - hit[0] > 30:
            wanted: list[str | None] = list(self.namespaces) or [None]
            ok = any(self.review(user, groups, ns) for ns in wanted)
            self._allowed[key] = hit = (now, ok)
        if not hit[1]:
            raise PermissionError(f"{user} may not list finetunejobs in any namespace this "
                                  "console serves (SubjectAccessReview)")

        def make() -> Kube:
            return Kube(self.own.api, surface=CONSOLE_SURFACE,
                        headers=impersonation_headers(user, groups))

        return Caller(key, self._clients.get(key, make))


def impersonation_headers(user: str, groups: list[str]) -> dict[str, str | tuple[str, ...]]:
    """``Impersonate-User`` and one ``Impersonate-Group`` line per group (the API server takes
    each line as one group: a comma-joined value would be a single group of that name)."""
    headers: dict[str, str | tuple[str, ...]] = {"Impersonate-User": user}
    if groups:
        headers["Impersonate-Group"] = tuple(groups)
    return headers


def csrf_token(secret: str, caller_key: str) -> str:
    """The form token of one identity (a POST without it is refused)."""
    return hmac.new(secret.encode(), caller_key.encode(), hashlib.sha256).hexdigest()[:32]
