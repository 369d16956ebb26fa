"""Restart safety and leader election: SIGKILL the operator at the worst instants and restart
it; no duplicate pods, no lost job, no double counting. Also: the API calls one job costs."""

from __future__ import annotations

import pytest

from finetune_operator.jobs.controller import Controller
from finetune_operator.kube.client import Kube, load_client
from finetune_operator.settings import OperatorSettings

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import (
    OperatorProcess,
    complete,
    finish_pod,
    ftj,
    job_pods,
    job_status,
    wait_phase,
)

pytestmark = pytest.mark.cluster


@pytest.fixture
def op_factory(cluster, crd_installed, priority_classes, tmp_path):  # type: ignore[no-untyped-def]
    """Operators of one test share a leader identity (the same pod restarted) by default."""
    made: list[OperatorProcess] = []
    pod_name = f"test-operator-{short_id()}"

    def make(**env: str) -> OperatorProcess:
        op = OperatorProcess(cluster, tmp_path, {"POD_NAME": pod_name, **env})
        made.append(op)
        return op

    yield make
    for op in made:
        op.kill()


def _crash_at(op_factory, phase: str) -> OperatorProcess:  # type: ignore[no-untyped-def]
    return op_factory().start(FINETUNE_FAILPOINT=f"after-status-patch:{phase}")


def _running_then_armed(cluster: Cluster, op_factory, ns: str, job: dict,  # type: ignore[no-untyped-def]
                        phase: str) -> OperatorProcess:
    """Bring `job` to Running, then swap in an operator that dies right after it patches
    a status into `phase`."""
    op = op_factory().start()
    cluster.apply(job, ns)
    wait_phase(cluster, ns, job["metadata"]["name"], "Running")
    op.kill()
    return _crash_at(op_factory, phase)


def _pods(cluster: Cluster, ns: str, name: str) -> list[str]:
    return sorted(p["metadata"]["name"] for p in job_pods(cluster, ns, name))


def test_crash_between_admission_and_pod_creation(
        cluster: Cluster, op_factory, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    op = _crash_at(op_factory, "Admitted")
    cluster.apply(ftj("crashy", 2, "finetune-normal", sel), ns)
    assert op.wait_exit(30) == 137
    st = job_status(cluster, ns, "crashy")
    assert (st["phase"], st["attempt"]) == ("Admitted", 1)
    assert _pods(cluster, ns, "crashy") == []  # died before creating children
    op_factory().start()
    st = wait_phase(cluster, ns, "crashy", "Running")
    assert st["attempt"] == 1 and _pods(cluster, ns, "crashy") == ["crashy-a1-0"]


def test_crash_during_preemption(cluster: Cluster, op_factory, make_namespace,
                                 gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    op = _running_then_armed(cluster, op_factory, ns, ftj("low", 4, "finetune-low", sel),
                             "Preempting")
    cluster.apply(ftj("urgent", 4, "finetune-critical", sel), ns)
    assert op.wait_exit(30) == 137
    assert job_status(cluster, ns, "low")["phase"] == "Preempting"
    assert _pods(cluster, ns, "low") == ["low-a1-0"]  # not deleted yet
    op_factory().start()
    wait_phase(cluster, ns, "urgent", "Running")
    st = wait_phase(cluster, ns, "low", "Queued")
    assert (st["preemptions"], st["failures"], st["attempt"]) == (1, 0, 1)
    assert _pods(cluster, ns, "urgent") == ["urgent-a1-0"]
    complete(cluster, ns, "urgent")
    st = wait_phase(cluster, ns, "low", "Running")
    assert (st["preemptions"], st["attempt"]) == (1, 2)
    assert [p for p in _pods(cluster, ns, "low") if p.startswith("low-a2")] == ["low-a2-0"]


def test_crash_during_suspend(cluster: Cluster, op_factory, make_namespace,
                              gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    op = _running_then_armed(cluster, op_factory, ns, ftj("pause", 1, "finetune-normal", sel),
                             "Suspended")
    cluster.kubectl("patch", "finetunejob", "pause", "-n", ns, "--type=merge",
                    "-p", '{"spec": {"suspend": true}}')
    assert op.wait_exit(30) == 137
    assert _pods(cluster, ns, "pause") == ["pause-a1-0"]
    op_factory().start()
    st = wait_for("suspended without pods", lambda: (
        lambda s: s if s.get("phase") == "Suspended" and not _pods(cluster, ns, "pause")
        and s.get("stopReason") is None else None)(job_status(cluster, ns, "pause")), 30)
    assert (st["preemptions"], st["failures"], st["attempt"]) == (0, 0, 1)


def test_only_the_leader_acts_and_a_standby_takes_over(
        cluster: Cluster, op_factory, make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    leader = op_factory(POD_NAME="op-a").start()
    standby = op_factory(POD_NAME="op-b").start(leader=False)
    cluster.apply(ftj("one", 1, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, "one", "Running")
    assert _pods(cluster, ns, "one") == ["one-a1-0"]
    assert not standby.leads()
    leader.kill()
    wait_for("standby acquires the lease after it expires", standby.leads, 40)
    cluster.apply(ftj("two", 1, "finetune-normal", sel), ns)
    st = wait_phase(cluster, ns, "two", "Running")
    assert st["attempt"] == 1
    assert _pods(cluster, ns, "one") == ["one-a1-0"]  # nothing duplicated by the new leader


def test_api_calls_per_job_lifecycle(cluster: Cluster, crd_installed, priority_classes,
                                     make_namespace, gpu_nodes) -> None:  # type: ignore[no-untyped-def]
    """The real Controller in-process (watches, cycle, Lease threads) against the real API
    server: every API call is counted. One job apply -> Succeeded costs at most 8 writes
    (children, status patches and Events); with nothing changing, the operator writes nothing
    but its Lease; no list call is made after start-up (the watches feed the cache)."""
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    kube = Kube(load_client(str(cluster.kubeconfig)))
    settings = OperatorSettings(namespaces=[ns], min_cycle_interval_seconds=0.1,
                                admission_interval_seconds=0.5, lease_renew_seconds=1,
                                sweeps=False)
    ctl = Controller(kube, settings, namespace=ns, identity=f"count-{short_id()}")
    ctl.start()
    try:
        wait_for("leadership and synced caches", lambda: ctl.leader and ctl.cycles > 0, 30)
        lists_at_start = sum(v for k, v in kube.calls.items() if k.startswith("list "))
        before = kube.writes()
        cluster.apply(ftj("counted", 1, "finetune-normal", sel), ns)
        wait_for("pod running", lambda: [p for p in job_pods(cluster, ns, "counted")
                                         if p["status"].get("phase") == "Running"], 30)
        wait_phase(cluster, ns, "counted", "Running")
        finish_pod(cluster, ns, "counted-a1-0", 0, "Completed", {"reason": "Completed"})
        wait_phase(cluster, ns, "counted", "Succeeded")
        wait_for("the last writes to land", lambda: ctl.cycles > 0 and ctl.idle(), 10)
        lifecycle = kube.writes() - before
        writes = {k: v for k, v in kube.calls.items()
                  if k.split()[0] in ("create", "patch", "delete", "replace")}
        print(f"\nAPI writes per job lifecycle: {lifecycle}: {writes}")
        assert kube.calls["create Pod"] == 1 and kube.calls["create ConfigMap"] == 1
        assert kube.calls["patch finetunejobs/status"] == 3  # Admitted, Running, Succeeded
        assert lifecycle <= 8
        # idle: cycles keep running (timers, aging), the Lease is renewed, nothing is written
        idle_from, cycles_from = kube.writes(), ctl.cycles
        leases_from = kube.calls["replace Lease"]
        wait_for("several idle cycles and Lease renewals",
                 lambda: ctl.cycles >= cycles_from + 4 and kube.calls["replace Lease"]
                 >= leases_from + 3, 30)
        assert kube.writes() == idle_from
        assert sum(v for k, v in kube.calls.items() if k.startswith("list ")) == lists_at_start
    finally:
        ctl.stop()
