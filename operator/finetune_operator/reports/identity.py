"""Who sent a report: a projected ServiceAccount token -> the Pod it is bound to.

The trainer pod holds a token the kubelet minted for the pod's ServiceAccount with our audience
(``finetune.dev/operator`` by default) and bound to the Pod (``boundObjectRef``), so the API
server stops accepting it once the pod is gone. The operator asks the API server (TokenReview,
with ``audiences`` set) whether the token is valid *for us*, and reads the pod's name and uid
from the review's ``user.extra`` and the namespace from the ServiceAccount user name. A token
for another audience (e.g. the pod's default API token), a legacy Secret token (not bound to a
pod), an expired or forged token is refused.

Verified identities are cached by the token's SHA-256 until the token's own expiry (capped), so
a pod reporting every 5 s costs one TokenReview per token, not one per report; refusals are
cached briefly so garbage tokens cannot turn into a TokenReview flood.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

log = logging.getLogger(__name__)

DEFAULT_AUDIENCE: Final = "finetune.dev/operator"
POD_NAME_EXTRA: Final = "authentication.kubernetes.io/pod-name"
POD_UID_EXTRA: Final = "authentication.kubernetes.io/pod-uid"
SA_PREFIX: Final = "system:serviceaccount:"
MAX_TOKEN_BYTES: Final = 8192


@dataclass(frozen=True)
class PodIdentity:
    """The pod a report comes from, as the API server vouches for it."""

    namespace: str
    pod: str
    uid: str

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.pod}"


TokenReview = Callable[[str, list[str]], dict[str, Any]]


def identity_from_review(status: dict[str, Any], audience: str) -> PodIdentity | None:
    """A TokenReview ``status`` -> the pod, or None (not authenticated, not for ``audience``,
    not a ServiceAccount token, or not bound to a pod)."""
    if status.get("authenticated") is not True:
        return None
    if audience not in (status.get("audiences") or []):
        return None
    user = status.get("user") or {}
    name = user.get("username") or ""
    if not name.startswith(SA_PREFIX):
        return None
    namespace = name[len(SA_PREFIX):].partition(":")[0]
    extra = user.get("extra") or {}
    pods, uids = extra.get(POD_NAME_EXTRA) or [], extra.get(POD_UID_EXTRA) or []
    if not namespace or len(pods) != 1 or len(uids) != 1 or not pods[0] or not uids[0]:
        return None
    return PodIdentity(namespace, str(pods[0]), str(uids[0]))


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (epoch seconds), read without verifying the signature: call it
    only for a token the API server has just accepted."""
    try:
        payload = token.split(".")[1]
        claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
        exp = claims.get("exp") if isinstance(claims, dict) else None
    except (IndexError, ValueError, binascii.Error, UnicodeDecodeError):
        return None
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


class TokenAuthenticator:
    """``authenticate(token) -> PodIdentity | None`` with a cache keyed by the token's hash.

    ``review(token, audiences)`` is :meth:`finetune_operator.k8s.Kube.token_review`. A positive
    answer is kept until the token expires, at most ``max_ttl`` seconds (so a deleted pod's token
    stops working here within that time even before it expires); a refusal for ``negative_ttl``.
    ``clock`` is wall time (token expiry is epoch seconds)."""

    def __init__(self, review: TokenReview, audience: str = DEFAULT_AUDIENCE, *,
                 max_ttl: float = 300.0, negative_ttl: float = 30.0, max_entries: int = 4096,
                 clock: Callable[[], float] = time.time) -> None:
        self.review = review
        self.audience = audience
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.clock = clock
        self.reviews = 0  # TokenReviews sent (tests and the docs' cost figures)
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, tuple[float, PodIdentity | None]] = OrderedDict()

    def __call__(self, token: str) -> PodIdentity | None:
        if not token or len(token) > MAX_TOKEN_BYTES:
            return None
        key = hashlib.sha256(token.encode()).digest()
        now = self.clock()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                return hit[1]
        try:
            identity = self._review(token)
        except Exception as e:  # the API server is down: refuse now, ask again next time
            log.warning("report channel: TokenReview failed (%s); the report is refused, "
                        "the trainer retries with its next report", e)
            return None
        if identity is None:
            until = now + self.negative_ttl
        else:
            exp = token_expiry(token)
            until = now + self.max_ttl if exp is None else min(exp, now + self.max_ttl)
        with self._lock:
            self._cache[key] = (until, identity)
            self._cache.move_to_end(key)
            while len(self._cache) > self.max_entries:
                self._cache.popitem(last=False)
        return identity

    def _review(self, token: str) -> PodIdentity | None:
        self.reviews += 1
        status = self.review(token, [self.audience])
        return identity_from_review(status, self.audience)
