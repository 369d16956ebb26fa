"""Who sent a report: a projected ServiceAccount token -> the Pod it is bound to.

The trainer pod holds a token the kubelet minted for the pod's ServiceAccount with our audience
(``finetune.dev/operator`` by default) and bound to the Pod (``boundObjectRef``), so the API
server stops accepting it once the pod is gone. The operator asks the API server (TokenReview,
with ``audiences`` set) whether the token is valid *for us*, and reads the pod's name and uid
from the review's ``user.extra`` and the namespace from the ServiceAccount user name. A token
for another audience (e.g. the pod's default API token), a legacy Secret token (not bound to a
pod), an expired or forged token is refused.

Before any TokenReview, the token's own claims are read without verifying them (a pre-filter,
never a reason to accept): a token that is not a JWT, not for our audience, not bound to a pod
(no ``kubernetes.io`` ``pod`` claim) or already expired is refused at once, so garbage costs the
API server nothing. Verified identities are cached by the token's SHA-256 until the token's own
expiry (capped), so a pod reporting every 5 s costs one TokenReview per token, not one per
report; refusals are cached briefly; and every TokenReview spends the port's shared
:class:`~.limits.ReviewBudget` (spent: :class:`~.limits.BudgetSpent`, a 503 for the caller).
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

from finetune_operator.http.limits import ReviewBudget, TtlCache, digest

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


def unverified_claims(token: str) -> dict[str, Any]:
    """The claims of a JWT, read without verifying the signature ({} when it is not one): a
    pre-filter and the cache's expiry, never a reason to trust the token."""
    parts = token.split(".")
    if len(parts) != 3:
        return {}
    try:
        claims = json.loads(base64.urlsafe_b64decode(parts[1] + "=" * (-len(parts[1]) % 4)))
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return {}
    return claims if isinstance(claims, dict) else {}


def token_expiry(token: str) -> float | None:
    """The ``exp`` claim of a JWT (epoch seconds), unverified: call it only for a token the API
    server has just accepted (or to refuse one that is expired anyway)."""
    exp = unverified_claims(token).get("exp")
    return float(exp) if isinstance(exp, int | float) and not isinstance(exp, bool) else None


def may_be_pod_token(token: str, audience: str, now: float) -> bool:
    """Whether the token's unverified claims could be a live pod-bound token for ``audience``:
    ``aud`` names it, the ``kubernetes.io`` claim names a pod (name and uid), and ``exp`` is in
    the future. False means refuse without a TokenReview; True proves nothing."""
    claims = unverified_claims(token)
    aud = claims.get("aud")
    k8s = claims.get("kubernetes.io")
    pod = k8s.get("pod") if isinstance(k8s, dict) else None
    exp = token_expiry(token)
    return (audience in (aud if isinstance(aud, list) else [aud])
            and isinstance(pod, dict) and bool(pod.get("name")) and bool(pod.get("uid"))
            and exp is not None and exp > now)


class TokenAuthenticator:
    """``authenticate(token) -> PodIdentity | None`` with a cache keyed by the token's hash.

    ``review(token, audiences)`` is :meth:`finetune_operator.kube.client.Kube.token_review`. A token
    whose unverified claims cannot be a live pod-bound token for ``audience`` is refused without
    a review (:attr:`prefiltered`). A positive answer is kept until the token expires, at most
    ``max_ttl`` seconds (so a deleted pod's token stops working here within that time even
    before it expires); a refusal for ``negative_ttl``. Each review spends ``budget`` (None: no
    limit), which raises :class:`~.limits.BudgetSpent` when spent. ``clock`` is wall time (token
    expiry is epoch seconds)."""

    def __init__(self, review: TokenReview, audience: str = DEFAULT_AUDIENCE, *,
                 max_ttl: float = 300.0, negative_ttl: float = 30.0, max_entries: int = 4096,
                 budget: ReviewBudget | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.review = review
        self.audience = audience
        self.max_ttl = max_ttl
        self.negative_ttl = negative_ttl
        self.budget = budget
        self.clock = clock
        self.reviews = 0  # TokenReviews sent (tests and the docs' cost figures)
        self.prefiltered = 0  # tokens refused from their claims alone
        self.cache: TtlCache[PodIdentity | None] = TtlCache(max_entries, clock)

    def __call__(self, token: str) -> PodIdentity | None:
        if not token or len(token) > MAX_TOKEN_BYTES:
            return None
        now = self.clock()
        if not may_be_pod_token(token, self.audience, now):
            self.prefiltered += 1
            return None
        key = digest(token)
        hit = self.cache.get(key)
        if hit is not None:
            return hit[0]
        if self.budget is not None:
            self.budget.spend()
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
        self.cache.put(key, identity, until)
        return identity

    def _review(self, token: str) -> PodIdentity | None:
        self.reviews += 1
        status = self.review(token, [self.audience])
        return identity_from_review(status, self.audience)
