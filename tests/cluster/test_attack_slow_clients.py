"""Slow clients against the report port (issue 19, finding 6), on the real control plane with the
real operator process: one unauthenticated client (its own source address) holds 500
connections to the report port, each sending one byte every ~2 s (half of them their TLS
ClientHello, half a request header after the handshake) and each one the server closes opened
again. Another tenant's report is still answered within 2 s, its new job admitted within 10 s,
and the operator closes every attacking connection at the request deadline (3 s here) however
slowly it keeps sending."""

from __future__ import annotations

import http.client
import json
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml

from ..kube import Cluster, wait_for
from ..operator_proc import (
    OperatorProcess,
    admitted_soon,
    ftj,
    job_pods,
    job_status,
    pod_token,
    wait_phase,
)
from ..slow_clients import SlowClients

pytestmark = pytest.mark.cluster

DEADLINE = 3  # FINETUNE_REPORT_REQUEST_TIMEOUT_SECONDS of this module's operator
PER_ADDRESS = 8  # FINETUNE_REPORT_MAX_CONNECTIONS_PER_ADDRESS (the default)


@pytest.fixture(scope="module")
def operator(cluster, crd_installed, priority_classes,  # type: ignore[no-untyped-def]
             tmp_path_factory: pytest.TempPathFactory) -> Iterator[OperatorProcess]:
    op = OperatorProcess(cluster, Path(tmp_path_factory.mktemp("operator")), env={
        "FINETUNE_REPORT_REQUEST_TIMEOUT_SECONDS": str(DEADLINE)})
    yield op.start()
    op.stop()


class Trainer:
    """What a trainer pod sends, with its token minted before the attack: the time measured is
    the report's own (TLS handshake, request, answer)."""

    def __init__(self, cluster: Cluster, ns: str, job: str) -> None:
        pod = job_pods(cluster, ns, job)[0]
        cm = cluster.get("configmap", f"{job}-config", ns)
        assert cm is not None
        report = yaml.safe_load(cm["data"]["config.yaml"])["report"]
        self.url = urlsplit(report["url"])
        self.ctx = ssl.create_default_context(cadata=report["caPem"])
        self.token = pod_token(cluster, ns, pod)

    def report(self, progress: dict) -> tuple[int, float]:
        """(HTTP status, seconds) of one report on a new connection."""
        body = json.dumps(progress).encode()
        start = time.monotonic()
        conn = http.client.HTTPSConnection(self.url.hostname or "", self.url.port,
                                           context=self.ctx, timeout=10)
        try:
            conn.request("POST", self.url.path, body=body, headers={
                "Authorization": f"Bearer {self.token}", "Content-Type": "application/json"})
            status = conn.getresponse().status
        except OSError:  # refused, reset or closed: no answer at all
            status = 0
        finally:
            conn.close()
        return status, time.monotonic() - start


def test_500_slow_connections_do_not_shut_the_report_channel(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 8)
    victim = make_namespace()
    cluster.apply(ftj("steady", 1, "finetune-normal", sel), victim)
    wait_phase(cluster, victim, "steady", "Running")
    trainer = Trainer(cluster, victim, "steady")
    with SlowClients(operator.report_port, count=500, every=2.0) as attack:
        wait_for("the attacker to open its 500 connections", lambda: attack.opened >= 500, 30)
        # the reports go out while the attacker holds its share of the slots, round after round
        closed = [0]
        for step in range(1, 6):
            if step > 1:
                wait_for("the server to close held connections again",
                         lambda: attack.closed_after(1.0) > closed[0], 3 * DEADLINE)
            closed[0] = attack.closed_after(1.0)
            wait_for("the attacker to hold connections", lambda: attack.held(1.0) >= PER_ADDRESS
                     // 2, 3 * DEADLINE)
            status, took = trainer.report({"step": step, "totalSteps": 10})
            assert (status, took < 2) == (204, True), f"report {step}: HTTP {status}, {took:.1f} s"
        admitted_soon(cluster, victim, sel)  # within 10 s, under the attack
        # held connections are closed at the deadline, round after round, however slowly
        # they keep sending: at most PER_ADDRESS at a time, each for about DEADLINE seconds
        wait_for("several rounds of held connections closed at the deadline",
                 lambda: attack.closed_after(DEADLINE - 1) >= 3 * PER_ADDRESS, 12 * DEADLINE)
        assert attack.longest() < 3 * DEADLINE, f"a connection stayed {attack.longest():.0f} s"
    st = wait_for("the last report mirrored", lambda: (lambda s: s if (
        s.get("progress") or {}).get("step") == 5 else None)(job_status(cluster, victim,
                                                                          "steady")), 15)
    assert st["phase"] == "Running"
    assert "closed a new connection at once" in operator.log(tail=None)
