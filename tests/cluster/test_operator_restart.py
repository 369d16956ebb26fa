"""Restart safety and leader election: SIGKILL the operator at the worst instants and restart
it; no duplicate pods, no lost job, no double counting. Also: the API calls one job costs."""

from __future__ import annotations

import datetime as dt
from collections import Counter

import pytest

from finetune_operator.k8s import Kube, load_client
from finetune_operator.loop import Controller
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
    """Drive the reconcile loop in-process, pass by pass, and count every API call."""
    sel = gpu_nodes(1, 4)
    ns = make_namespace()
    kube = Kube(load_client(str(cluster.kubeconfig)))
    ctl = Controller(kube, OperatorSettings(namespaces=[ns]))
    now = dt.datetime.now(dt.UTC)

    def tick() -> Counter[str]:
        before = Counter(kube.calls)
        ctl.tick(dt.datetime.now(dt.UTC))
        return Counter(kube.calls) - before

    idle = tick()  # a pass with no job: only the snapshot lists
    cluster.apply(ftj("counted", 1, "finetune-normal", sel), ns)
    passes = [tick()]  # admit + create children
    wait_for("pod running", lambda: [p for p in job_pods(cluster, ns, "counted")
                                     if p["status"].get("phase") == "Running"], 30)
    passes.append(tick())  # -> Running
    finish_pod(cluster, ns, "counted-a1-0", 0, "Completed", {"reason": "Completed"})
    passes.append(tick())  # -> Succeeded
    passes.append(tick())  # nothing left to do
    assert job_status(cluster, ns, "counted")["phase"] == "Succeeded"
    lists = sum(v for k, v in idle.items() if k.startswith("list"))
    job_calls = sum((p for p in passes), Counter())
    for k in list(job_calls):
        if k.startswith("list"):
            del job_calls[k]
    writes = sum(job_calls.values())
    print(f"\nAPI calls: {lists} list calls per pass (fixed, any number of jobs); "
          f"per job lifecycle: {writes} calls: {dict(sorted(job_calls.items()))}")
    assert lists == 6
    assert job_calls["create Pod"] == 1 and job_calls["create ConfigMap"] == 1
    assert job_calls["patch finetunejobs/status"] == 3  # Queued+Admitted, Running, Succeeded
    assert sum(v for k, v in passes[-1].items() if not k.startswith("list")) == 0  # idle pass
    assert writes <= 20
    assert now  # pass times are real; nothing is mocked
