"""One job's bad data stays that job's problem (issue 19, deliverable 2 and finding 4), on the real
local control plane with the real operator process.

A status as an older operator stored it (bf9ad26 wrote a checkpoint time of the year 999 as
``999-01-01T00:00:00Z``, and kept any savedAt a trainer sent) is read back on every cycle: it
must neither stop the cycle for every tenant nor steer preemption onto another tenant. The
statuses are written here through the status subresource, as that operator wrote them."""

from __future__ import annotations

import datetime as dt
import json

import pytest

from ..kube import Cluster, wait_for
from ..operator_proc import OperatorProcess, admitted_soon, ftj, job_status, wait_phase

pytestmark = pytest.mark.cluster


def _cycles_failed(op: OperatorProcess) -> int:
    """Whole scheduling cycles that raised, as the operator logs them (loop.py)."""
    return op.log(tail=None).count("scheduling cycle failed")


def _store_checkpoint(cluster: Cluster, ns: str, name: str, saved_at: str) -> None:
    """Write status.checkpoint as a stored value (retried until it sticks: the operator may be
    writing the status at the same moment)."""
    patch = json.dumps({"status": {"checkpoint": {
        "step": 10, "path": "checkpoints/checkpoint-10", "savedAt": saved_at}}})

    def stuck() -> bool:
        cluster.kubectl("patch", "finetunejob", name, "-n", ns, "--subresource=status",
                        "--type=merge", "-p", patch)
        return (job_status(cluster, ns, name).get("checkpoint") or {}).get("savedAt") \
            == saved_at

    wait_for(f"status.checkpoint.savedAt of {ns}/{name} stored", stuck, 20, interval=0.5)


def test_a_stored_time_that_does_not_parse_stops_no_other_tenant(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    """Finding 1: at bf9ad26 every cycle raised in parse_time outside any per-job guard, and
    another tenant's job was never admitted."""
    sel = gpu_nodes(1, 8)
    evil, other = make_namespace(), make_namespace()
    cluster.apply(ftj("evil", 1, "finetune-normal", sel), evil)
    wait_phase(cluster, evil, "evil", "Running")
    failed = _cycles_failed(operator)
    _store_checkpoint(cluster, evil, "evil", "999-01-01T00:00:00Z")

    admitted_soon(cluster, other, sel)
    assert job_status(cluster, evil, "evil")["phase"] == "Running"
    assert _cycles_failed(operator) == failed, operator.log()


def test_a_checkpoint_older_than_its_attempt_does_not_steer_preemption(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    """Finding 4: victims are ordered by the work they would lose; a younger job claiming a
    checkpoint from the year 1000 is not made the more expensive one to stop: the critical job
    preempts it, and the older honest job (more work since its start, no checkpoint) runs on."""
    sel = gpu_nodes(1, 8)
    honest_ns, liar_ns, crit_ns = make_namespace(), make_namespace(), make_namespace()
    cluster.apply(ftj("honest", 4, "finetune-low", sel), honest_ns)
    started = wait_phase(cluster, honest_ns, "honest", "Running")["startTime"]
    wait_for("a second later than the honest job's start", lambda: dt.datetime.now(dt.UTC)
             .strftime("%Y-%m-%dT%H:%M:%SZ") > started, 5, interval=0.2)
    cluster.apply(ftj("liar", 4, "finetune-low", sel), liar_ns)
    wait_phase(cluster, liar_ns, "liar", "Running")
    _store_checkpoint(cluster, liar_ns, "liar", "1000-01-01T00:00:00Z")

    cluster.apply(ftj("critical", 4, "finetune-critical", sel), crit_ns)
    wait_for("the liar preempted", lambda: job_status(cluster, liar_ns, "liar").get("phase")
             in ("Preempting", "Queued"), 20)
    wait_phase(cluster, crit_ns, "critical", "Running", 30)
    honest = job_status(cluster, honest_ns, "honest")
    assert honest["phase"] == "Running" and honest.get("preemptions", 0) == 0, honest
