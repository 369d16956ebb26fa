"""Issue 19, "bounded at the edge", against the real control plane and the real operator: a
trainer's far-past savedAt (in a report or its termination message) is stored as a time that
parses back and stops nobody's admission; an activeDeadlineSeconds of 10**12 is refused at
create and at edit, naming the field; a trainer's huge saveSeconds never raises the next pod's
grace period past the cap; a younger liar's savedAt does not make an older honest job the
preemption victim instead of it."""

from __future__ import annotations

import datetime as dt
import json
import re
import time

import pytest

from tests.builders.invalid_cases import names_field, server_errors

from ..kube import Cluster, wait_for
from ..operator_proc import (
    OperatorProcess,
    admitted_soon,
    finish_pod,
    ftj,
    job_pods,
    job_status,
    report_progress,
    wait_phase,
)

pytestmark = pytest.mark.cluster

RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
FAR_PAST = "0999-01-01T00:00:00Z"
GRACE_CAP = 600  # the operator's default max_grace_period_seconds


def _time(value: str) -> dt.datetime:
    """What any RFC 3339 reader does with a stored time (raises when it is not one)."""
    assert RFC3339.fullmatch(value), value
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def _checkpoint_at(cluster: Cluster, ns: str, name: str, step: int) -> dict:
    return wait_for(f"{ns}/{name} checkpoint step {step} in status", lambda: (
        lambda s: s if (s.get("checkpoint") or {}).get("step") == step else None)(
        job_status(cluster, ns, name)), 30)


def _running_pod(cluster: Cluster, ns: str, name: str, attempt: int) -> dict:
    return wait_for(f"{ns}/{name} attempt {attempt} pod running", lambda: next((
        p for p in job_pods(cluster, ns, name)
        if p["metadata"]["labels"].get("finetune.dev/attempt") == str(attempt)
        and p["status"].get("phase") == "Running"), None), 30)


def test_a_far_past_saved_at_is_stored_parseable_and_stops_nobody(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 8)
    evil, other = make_namespace(), make_namespace()
    cluster.apply(ftj("evil", 1, "finetune-normal", sel), evil)
    wait_phase(cluster, evil, "evil", "Running")
    pod = _running_pod(cluster, evil, "evil", 1)["metadata"]["name"]
    # through the report channel
    report_progress(cluster, evil, pod, {"step": 1, "checkpoint": {
        "step": 1, "path": "checkpoints/checkpoint-1", "savedAt": FAR_PAST}})
    st = _checkpoint_at(cluster, evil, "evil", 1)
    first_admitted = _time(st["admittedAt"])
    assert _time(st["checkpoint"]["savedAt"]) >= first_admitted  # no older than the attempt
    admitted_soon(cluster, other, sel)
    # through the termination message of a trainer that stopped on SIGTERM after a save
    finish_pod(cluster, evil, pod, 0, "Completed", {"reason": "Preempted", "checkpoint": {
        "step": 2, "path": "checkpoints/checkpoint-2", "savedAt": FAR_PAST}})
    st = _checkpoint_at(cluster, evil, "evil", 2)
    assert _time(st["checkpoint"]["savedAt"]) >= first_admitted
    _running_pod(cluster, evil, "evil", 2)  # resumed: its stored checkpoint is read each cycle
    admitted_soon(cluster, other, sel)
    assert "999-01-01" not in cluster.kubectl("get", "finetunejob", "evil", "-n", evil, "-o",
                                              "json").stdout


def test_an_unbounded_deadline_is_refused_at_create_and_at_edit(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 2)
    ns, other = make_namespace(), make_namespace()
    huge = ftj("huge", 1, "finetune-normal", sel, activeDeadlineSeconds=10**12)
    proc = cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(huge), check=False)
    assert proc.returncode != 0, proc.stdout
    assert names_field(server_errors(proc.stderr), "spec.activeDeadlineSeconds"), proc.stderr
    assert cluster.get("finetunejob", "huge", ns) is None
    # admitted and running: activeDeadlineSeconds is one of the fields that stay editable, and
    # the CRD's bound applies to every write, not only to the create
    cluster.apply(ftj("edited", 1, "finetune-normal", sel, activeDeadlineSeconds=3600), ns)
    wait_phase(cluster, ns, "edited", "Running")
    proc = cluster.kubectl("patch", "finetunejob", "edited", "-n", ns, "--type=merge", "-p",
                           json.dumps({"spec": {"activeDeadlineSeconds": 10**12}}), check=False)
    assert proc.returncode != 0, proc.stdout
    assert names_field(server_errors(proc.stderr), "spec.activeDeadlineSeconds"), proc.stderr
    stored = cluster.get("finetunejob", "edited", ns)
    assert stored is not None and stored["spec"]["activeDeadlineSeconds"] == 3600
    cluster.kubectl("patch", "finetunejob", "edited", "-n", ns, "--type=merge", "-p",
                    json.dumps({"spec": {"activeDeadlineSeconds": 31536000}}))  # a year: fine
    admitted_soon(cluster, other, sel)
    assert job_status(cluster, ns, "edited")["phase"] == "Running"


def test_a_huge_save_time_never_raises_the_grace_period_past_the_cap(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    ns = make_namespace()
    cluster.apply(ftj("slow", 1, "finetune-normal", gpu_nodes(1, 1)), ns)
    wait_phase(cluster, ns, "slow", "Running")
    pod = _running_pod(cluster, ns, "slow", 1)
    report_progress(cluster, ns, pod["metadata"]["name"], {"step": 1, "checkpoint": {
        "step": 1, "path": "checkpoints/checkpoint-1", "saveSeconds": 1e9}})
    st = _checkpoint_at(cluster, ns, "slow", 1)
    assert st["checkpoint"]["saveSeconds"] <= 86400  # clamped where it entered
    # the trainer stops on SIGTERM; the next attempt's pod is sized from that save time
    finish_pod(cluster, ns, pod["metadata"]["name"], 0, "Completed", {"reason": "Preempted"})
    again = _running_pod(cluster, ns, "slow", 2)
    assert again["spec"]["terminationGracePeriodSeconds"] == GRACE_CAP


def test_a_liars_saved_at_does_not_make_an_older_honest_job_the_victim(
        cluster: Cluster, operator: OperatorProcess, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 2)
    honest_ns, liar_ns, urgent_ns = make_namespace(), make_namespace(), make_namespace()
    cluster.apply(ftj("honest", 1, "finetune-normal", sel), honest_ns)
    st = wait_phase(cluster, honest_ns, "honest", "Running")
    honest_at = max(st["admittedAt"], st["startTime"])  # its work counts from there
    # the liar is admitted in a later second, so it has strictly less work to lose
    wait_for("the clock past the honest job's start second", lambda: time.strftime(
        "%Y-%m-%dT%H:%M:%SZ", time.gmtime()) > honest_at, 5, interval=0.05)
    cluster.apply(ftj("liar", 1, "finetune-normal", sel), liar_ns)
    liar_at = wait_phase(cluster, liar_ns, "liar", "Running")["admittedAt"]
    assert liar_at > honest_at
    pod = _running_pod(cluster, liar_ns, "liar", 1)["metadata"]["name"]
    report_progress(cluster, liar_ns, pod, {"step": 1, "checkpoint": {
        "step": 1, "path": "checkpoints/checkpoint-1", "savedAt": "1000-01-01T00:00:00Z"}})
    st = _checkpoint_at(cluster, liar_ns, "liar", 1)
    assert _time(st["checkpoint"]["savedAt"]) >= _time(liar_at)
    cluster.apply(ftj("urgent", 1, "finetune-critical", sel), urgent_ns)
    wait_for("the liar preempted", lambda: job_status(cluster, liar_ns, "liar").get("phase")
             in ("Preempting", "Queued"), 20)
    wait_phase(cluster, urgent_ns, "urgent", "Running")
    honest = job_status(cluster, honest_ns, "honest")
    assert honest["phase"] == "Running" and honest.get("preemptions", 0) == 0
    assert job_status(cluster, liar_ns, "liar").get("preemptions") == 1
