"""The report channel against the real API server: projected tokens minted by TokenRequest
(audience, bound to a Pod) are verified by the running ReportServer through TokenReview and
mapped to (namespace, pod, uid); every other kind of token gets 401."""

from __future__ import annotations

import base64
import http.client
import json
import ssl
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from finetune_operator.http.identity import PodIdentity
from finetune_operator.kube.client import Kube
from finetune_operator.reports.channel import Channel, start_channel
from finetune_operator.reports.model import BadReport, ProgressReport
from finetune_operator.settings import OperatorSettings

from ..kube import Cluster, restricted, short_id, wait_for

pytestmark = pytest.mark.cluster

AUDIENCE = "finetune.dev/operator"


def parked_pod(name: str) -> dict[str, Any]:
    """A pod no node will run (the token only needs the object to exist)."""
    return restricted({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                       "spec": {"automountServiceAccountToken": False,
                                "nodeSelector": {"finetune.dev/test-nowhere": "true"},
                                "containers": [{"name": "main", "image": "ignored.invalid/x:1"}]}})


def token_request(cluster: Cluster, ns: str, audience: str | None, pod: dict | None = None,
                  seconds: int = 600, sa: str = "default") -> str:
    spec: dict[str, Any] = {"expirationSeconds": seconds}
    if audience is not None:
        spec["audiences"] = [audience]
    if pod is not None:
        spec["boundObjectRef"] = {"apiVersion": "v1", "kind": "Pod",
                                  "name": pod["metadata"]["name"], "uid": pod["metadata"]["uid"]}
    body: Any = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": spec}
    res = cluster.core().create_namespaced_service_account_token(sa, ns, body)
    assert res.status is not None
    return str(res.status.token)


@dataclass
class Live:
    channel: Channel
    kube: Kube
    ctx: ssl.SSLContext
    port: int
    received: list[tuple[PodIdentity, ProgressReport]] = field(default_factory=list)
    expected: set[str] = field(default_factory=set)  # pod uids the "operator" expects
    lock: threading.Lock = field(default_factory=threading.Lock)

    def post(self, token: str, body: bytes = b'{"step": 1, "state": "training"}') -> int:
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.ctx,
                                           timeout=30)
        try:
            conn.request("POST", "/v1/reports", body=body, headers={
                "Authorization": f"Bearer {token}", "Content-Type": "application/json"})
            resp = conn.getresponse()
            resp.read()
            return resp.status
        finally:
            conn.close()


@pytest.fixture
def live(cluster: Cluster) -> Iterator[Live]:
    kube = Kube(cluster.api)
    holder: list[Live] = []

    def on_report(who: PodIdentity, report: ProgressReport) -> None:
        lv = holder[0]
        if who.uid not in lv.expected:
            raise BadReport("unknown-pod", f"{who.key} is not a current trainer pod")
        with lv.lock:
            lv.received.append((who, report))

    settings = OperatorSettings(report_url="", report_audience=AUDIENCE)
    channel = start_channel(settings, kube.token_review, on_report, pod_namespace=None,
                            host="127.0.0.1", port=0)
    port = urlsplit(channel.config.url).port
    assert port == channel.server.port
    ctx = ssl.create_default_context(cadata=channel.config.ca_pem)
    holder.append(Live(channel, kube, ctx, port))
    try:
        yield holder[0]
    finally:
        channel.stop()


def _create(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    made = cluster.core().create_namespaced_pod(ns, parked_pod(name))  # type: ignore[arg-type]
    out: dict[str, Any] = cluster.api.sanitize_for_serialization(made)
    return out


def test_a_pod_bound_token_is_verified_once_and_mapped_to_its_pod(
        cluster: Cluster, namespace: str, live: Live) -> None:
    pod = _create(cluster, namespace, "trainer-a1-0")
    live.expected.add(pod["metadata"]["uid"])
    token = token_request(cluster, namespace, AUDIENCE, pod)
    assert [live.post(token) for _ in range(3)] == [204, 204, 204]
    me = PodIdentity(namespace, "trainer-a1-0", pod["metadata"]["uid"])
    assert [w for w, _ in live.received] == [me] * 3
    assert live.received[0][1].to_wire() == {"step": 1, "state": "training"}
    # one TokenReview for three reports, with our audience
    assert live.channel.authenticator.reviews == 1
    assert live.kube.calls["create tokenreviews"] == 1


def test_every_other_token_is_refused(cluster: Cluster, namespace: str, live: Live) -> None:
    pod = _create(cluster, namespace, "trainer-a1-0")
    live.expected.add(pod["metadata"]["uid"])
    good = token_request(cluster, namespace, AUDIENCE, pod)
    header, payload, signature = good.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["exp"] = claims["exp"] + 86400 * 365  # a longer life, or another pod, by editing
    claims["kubernetes.io"]["pod"]["name"] = "someone-else"
    forged_payload = base64.urlsafe_b64encode(json.dumps(claims).encode()).decode().rstrip("=")
    refused = {
        "wrong audience": token_request(cluster, namespace, "someone-else.example/api", pod),
        "the API server's audience (an ordinary pod token)": token_request(
            cluster, namespace, None, pod),
        "not bound to a pod": token_request(cluster, namespace, AUDIENCE, None),
        "edited claims": f"{header}.{forged_payload}.{signature}",
        "garbage": "not-a-token",
        "another signature": f"{header}.{payload}.{signature[::-1]}",
    }
    codes = {what: live.post(token) for what, token in refused.items()}
    assert codes == dict.fromkeys(refused, 401)
    assert live.received == []
    assert live.post(good) == 204  # the real one still works


def test_a_deleted_pods_token_is_refused(cluster: Cluster, namespace: str, live: Live) -> None:
    """Bound tokens die with their pod (the API server refuses them at once); a pod recreated
    with the same name is another uid, so the old token never speaks for it."""
    pod = _create(cluster, namespace, "trainer-a1-0")
    token = token_request(cluster, namespace, AUDIENCE, pod)
    cluster.core().delete_namespaced_pod("trainer-a1-0", namespace, grace_period_seconds=0)

    def gone() -> bool | None:
        try:
            cluster.core().read_namespaced_pod("trainer-a1-0", namespace)
            return None
        except client.ApiException as e:
            return True if e.status == 404 else None

    wait_for("the pod to be gone", gone, 60)
    again = _create(cluster, namespace, "trainer-a1-0")
    live.expected.add(again["metadata"]["uid"])
    assert live.post(token) == 401
    assert live.received == []


def test_another_pods_token_speaks_only_for_that_pod(cluster: Cluster, namespace: str,
                                                     live: Live) -> None:
    """A report names no pod: the identity is the token's. Pod B's token yields B (and the
    operator refuses B when B is not its trainer); a body that tries to name a pod is invalid."""
    a = _create(cluster, namespace, "trainer-a1-0")
    b = _create(cluster, namespace, f"other-{short_id()}")
    live.expected.add(a["metadata"]["uid"])
    b_token = token_request(cluster, namespace, AUDIENCE, b)
    assert live.post(b_token) == 403  # authenticated as B, which the operator does not expect
    a_token = token_request(cluster, namespace, AUDIENCE, a)
    assert live.post(a_token, b'{"step": 1, "pod": "other"}') == 400
    assert live.post(a_token, b'{"step": 2}') == 204
    assert [(w.pod, r.step) for w, r in live.received] == [("trainer-a1-0", 2)]
