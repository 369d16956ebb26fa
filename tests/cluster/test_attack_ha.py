"""High availability as the chart deploys it (issue 19, deliverable 7): two real operator
processes, one leader and one standby; the leader paused past its Lease is fenced (it sends no
write when it wakes up) while the standby takes over; and a paused API server makes the
operator's calls time out, not hang: it steps down, lives on, and leads again afterwards.

Each test keeps its operators to its own namespace (watched namespace and Lease), so no other
operator of the session can act on its jobs or hold its Lease.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from finetune_dev.devcluster import cluster as dc
from finetune_operator.jobs.controller import LEASE_NAME
from finetune_operator.kube.client import UNFENCED, WRITE_VERBS

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import OperatorProcess, ftj, job_pods, job_status, wait_phase

pytestmark = pytest.mark.cluster

MakeNamespace = Callable[..., str]  # conftest.make_namespace(gpu_quota=None)
GpuNodes = Callable[[int, int], dict[str, str]]  # conftest.gpu_nodes(count, gpus)


@pytest.fixture
def operators(cluster: Cluster, crd_installed: Path, priority_classes: list[str],
              tmp_path: Path) -> Iterator[list[OperatorProcess]]:
    made: list[OperatorProcess] = []
    yield made
    for op in made:
        if op.proc is not None and op.proc.poll() is None:
            os.kill(op.proc.pid, signal.SIGCONT)  # a paused one is killed like the others
        op.kill()


def replica(cluster: Cluster, tmp_path: Path, made: list[OperatorProcess], ns: str,
            name: str, **env: str) -> OperatorProcess:
    """One operator replica of a release whose namespace is ``ns`` (its Lease lives there)."""
    op = OperatorProcess(cluster, tmp_path, {
        "POD_NAME": name, "POD_NAMESPACE": ns, "FINETUNE_NAMESPACES": ns,
        "FINETUNE_LEASE_DURATION_SECONDS": "5", **env})
    made.append(op)
    return op


def writes(op: OperatorProcess) -> Counter[str]:
    """The API writes the process has sent (its finetune_api_requests_total), by verb and
    resource, but the unfenced ones (the Lease it renews on its own timer; token and access
    reviews, which change nothing)."""
    out: Counter[str] = Counter()
    for family in text_string_to_metric_families(op.metrics()):
        for s in family.samples:
            if s.name == "finetune_api_requests_total" and s.labels["verb"] in WRITE_VERBS \
                    and s.labels["resource"] not in UNFENCED:
                out[f"{s.labels['verb']} {s.labels['resource']}"] += int(s.value)
    return out


def paused(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc/<pid>/stat."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"


def lease(cluster: Cluster, ns: str) -> tuple[str, int]:
    spec = (cluster.get("lease", LEASE_NAME, ns) or {}).get("spec") or {}
    return str(spec.get("holderIdentity")), int(spec.get("leaseTransitions") or 0)


def pod_names(cluster: Cluster, ns: str, job: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in job_pods(cluster, ns, job))


def test_a_paused_leader_is_fenced_while_its_standby_takes_over(
        cluster: Cluster, operators: list[OperatorProcess], make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes, tmp_path: Path) -> None:
    """The leader SIGSTOPs itself at the worst instant, right after it patched a job Admitted
    and before it created the pod (a failpoint), and stays stopped past its 5 s Lease. The
    standby acquires the Lease, finishes that admission and admits a new job. SIGCONT: the old
    leader's threads resume mid-admission, yet it sends no write at all (every write is fenced
    right before it would go out), and it steps down; the Lease does not flap back."""
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    sid = short_id()
    old = replica(cluster, tmp_path, operators, ns, f"ha-a-{sid}").start(
        FINETUNE_FAILPOINT="after-status-patch:Admitted:stop")
    standby = replica(cluster, tmp_path, operators, ns, f"ha-b-{sid}").start(leader=False)
    assert old.proc is not None and not standby.leads()
    pid = old.proc.pid
    before = writes(old)

    cluster.apply(ftj("first", 1, "finetune-normal", sel), ns)
    wait_for("the leader to stop itself right after the Admitted patch",
             lambda: paused(pid), 30)
    assert job_status(cluster, ns, "first")["phase"] == "Admitted"
    assert pod_names(cluster, ns, "first") == []

    wait_for("the standby to acquire the Lease", standby.leads, 30)
    assert wait_phase(cluster, ns, "first", "Running")["attempt"] == 1  # the standby's pod
    cluster.apply(ftj("second", 1, "finetune-normal", sel), ns)
    assert wait_phase(cluster, ns, "second", "Running")["attempt"] == 1
    holder, transitions = lease(cluster, ns)
    assert holder == f"ha-b-{sid}" and transitions >= 1

    os.kill(pid, signal.SIGCONT)
    wait_for("the old leader to step down", lambda: "lost leadership" in old.log(tail=None), 30)
    sent = writes(old) - before
    # only its one write before the pause; nothing after it: no ConfigMap, Pod or Event of the
    # admission it was in the middle of
    assert +sent == Counter({"patch finetunejobs/status": 1}), f"{dict(sent)}\n{old.log()}"
    assert "failpoint after-status-patch:Admitted:stop reached" in old.log(tail=None)
    assert pod_names(cluster, ns, "first") == ["first-a1-0"]
    assert pod_names(cluster, ns, "second") == ["second-a1-0"]
    assert lease(cluster, ns) == (holder, transitions)  # the Lease did not flap back
    # and the new leader still leads: a third job is admitted by it
    cluster.apply(ftj("third", 1, "finetune-normal", sel), ns)
    assert wait_phase(cluster, ns, "third", "Running")["attempt"] == 1
    assert lease(cluster, ns) == (holder, transitions)
    assert writes(old) - before == sent  # the deposed leader stays silent


def test_a_paused_api_server_times_the_operator_out_and_it_goes_on(
        cluster: Cluster, operators: list[OperatorProcess], make_namespace: MakeNamespace,
        gpu_nodes: GpuNodes, tmp_path: Path) -> None:
    """SIGSTOP the kube-apiserver of this session's own cluster: the operator's calls time out
    after FINETUNE_API_TIMEOUT_SECONDS (2 s here, never retried into a multiple of it), so its
    Lease thread sees the renewals fail and it steps down when its Lease has run out, alive.
    SIGCONT: it takes the Lease again and a job created afterwards is admitted."""
    state = dc.read_state(cluster.cfg)
    pid = int(state["pids"]["kube-apiserver"])
    assert dc.pid_alive(pid, "kube-apiserver"), f"no kube-apiserver at pid {pid}"
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    op = replica(cluster, tmp_path, operators, ns, f"ha-t-{short_id()}",
                 FINETUNE_API_TIMEOUT_SECONDS="2").start()
    cluster.apply(ftj("before", 1, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "before", "Running")

    os.kill(pid, signal.SIGSTOP)
    try:
        wait_for("the operator to step down while the API server is paused",
                 lambda: op.proc is not None and op.proc.poll() is None
                 and "lost leadership" in op.log(tail=None), 30)
    finally:
        os.kill(pid, signal.SIGCONT)
    text = op.log(tail=None)
    assert "leader lease: Unreachable:" in text and "timeout 2" in text, text[-3000:]
    assert "Exception in thread" not in text, text[-3000:]  # no thread died of it

    wait_for("the operator to lead again", lambda: op.log(tail=None).count(
        "acquired leadership") == 2, 40)
    cluster.apply(ftj("after", 1, "finetune-normal", sel), ns)
    assert wait_phase(cluster, ns, "after", "Running")["attempt"] == 1
    assert pod_names(cluster, ns, "before") == ["before-a1-0"]  # nothing redone
    assert op.proc is not None and op.proc.poll() is None
