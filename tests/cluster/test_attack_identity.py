"""Issue 19, finding 5: a pod in namespace A cannot act for tenant B's job.

The impostor is what a tenant can make in its own namespace: a pod with exactly the name,
labels and owner reference (B's job uid) the operator gives B's trainer pods. Only its
namespace differs. It must change nothing for B (no attempt jump, B's real pod kept, its reports
and termination message heard by no job) and gets one Warning Event in its own namespace that
names no job."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from finetune_api.job import FineTuneJob
from finetune_api.labels import ATTEMPT_LABEL
from finetune_operator.jobs.build import names

from ..kube import Cluster, restricted, short_id, wait_for
from ..operator_proc import (
    OperatorProcess,
    finish_pod,
    ftj,
    job_pods,
    job_status,
    report_progress,
    wait_phase,
)

pytestmark = pytest.mark.cluster

# keeps the impostor after the garbage collector deletes it (its owner is not in its namespace)
HOLD = "finetune.test/hold"


def _victim(cluster: Cluster, ns: str, sel: dict[str, str]) -> tuple[dict, dict]:
    """B's job, Running, and its one trainer pod."""
    name = f"victim-{short_id()}"
    cluster.apply(ftj(name, 1, "finetune-normal", sel), ns)
    wait_phase(cluster, ns, name, "Running")
    job = cluster.get("finetunejob", name, ns)
    assert job is not None
    pods = job_pods(cluster, ns, name)
    assert [p["metadata"]["name"] for p in pods] == [f"{name}-a1-0"]
    return job, pods[0]


def _impostor(job: dict, attempt: int, namespace: str) -> dict:
    """The operator's own metadata for rank 0 of ``attempt`` of ``job``, in ``namespace``."""
    meta = names.metadata(FineTuneJob.from_body(job), names.pod_name(
        job["metadata"]["name"], attempt, 0), attempt, 0)
    meta.update(namespace=namespace, finalizers=[HOLD])
    return restricted({"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {
        "containers": [{"name": "trainer", "image": "example.invalid/fake:1"}],
        "nodeSelector": {"finetune.test/nowhere": "true"}}})


def _warnings(cluster: Cluster, ns: str, pod: str) -> list[dict]:
    out = cluster.kubectl("get", "events", "-n", ns, "--field-selector",
                          f"involvedObject.name={pod},reason=PodIgnored", "-o", "json").stdout
    return list(json.loads(out)["items"])


def _release(cluster: Cluster, ns: str, pod: str) -> None:
    cluster.kubectl("patch", "pod", pod, "-n", ns, "--type=merge", "-p",
                    '{"metadata": {"finalizers": null}}', check=False)


def _victim_heard(cluster: Cluster, ns: str, job: dict, pod: dict, step: int) -> dict:
    """A cycle for B after the impostor was seen: B's real trainer reports ``step`` and the
    status shows it; the status is returned."""
    name = job["metadata"]["name"]
    report_progress(cluster, ns, pod["metadata"]["name"], {"step": step, "totalSteps": 100})
    return wait_for(f"{ns}/{name} progress step {step}", lambda: (
        lambda st: st if (st.get("progress") or {}).get("step") == step else None)(
        job_status(cluster, ns, name)), 15)


def _unharmed(cluster: Cluster, ns: str, st: dict, pod: dict) -> None:
    assert st["phase"] == "Running" and st["attempt"] == 1, st
    now = cluster.get("pod", pod["metadata"]["name"], ns)
    assert now is not None and now["metadata"]["uid"] == pod["metadata"]["uid"]
    assert not now["metadata"].get("deletionTimestamp")


def _warned_once(cluster: Cluster, ns: str, pod: str, job: dict) -> None:
    events = _warnings(cluster, ns, pod)
    assert len(events) == 1, events
    assert events[0]["type"] == "Warning"
    for secret in (job["metadata"]["namespace"], job["metadata"]["name"]):
        assert secret not in events[0]["message"]


def test_an_impostor_of_a_later_attempt_moves_nothing(
        cluster: Cluster, operator: OperatorProcess, make_namespace: Callable[[], str],
        gpu_nodes: Callable[[int, int], dict[str, str]]) -> None:
    b, a = make_namespace(), make_namespace()
    job, pod = _victim(cluster, b, gpu_nodes(1, 1))
    impostor = _impostor(job, 999, a)
    fake = impostor["metadata"]["name"]
    try:
        cluster.apply(impostor, a)
        wait_for("the Warning Event on the impostor", lambda: _warnings(cluster, a, fake), 15)
        # seen again (another attempt label): still one Event
        cluster.kubectl("label", "pod", fake, "-n", a, "--overwrite",
                        f"{ATTEMPT_LABEL}=998")
        _unharmed(cluster, b, _victim_heard(cluster, b, job, pod, 4), pod)
        _warned_once(cluster, a, fake, job)
    finally:
        _release(cluster, a, fake)


def test_an_impostor_of_the_current_attempt_is_heard_for_no_job(
        cluster: Cluster, operator: OperatorProcess, make_namespace: Callable[[], str],
        gpu_nodes: Callable[[int, int], dict[str, str]]) -> None:
    b, a = make_namespace(), make_namespace()
    job, pod = _victim(cluster, b, gpu_nodes(1, 1))
    impostor = _impostor(job, 1, a)
    fake = impostor["metadata"]["name"]
    # the report URL and CA are not secrets: the impostor's trainer config has them too
    config = cluster.get("configmap", names.config_map_name(job["metadata"]["name"]), b)
    assert config is not None
    try:
        cluster.apply([impostor, {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {
            "name": config["metadata"]["name"]}, "data": config["data"]}], a)
        wait_for("the Warning Event on the impostor", lambda: _warnings(cluster, a, fake), 15)
        report_progress(cluster, a, fake, {"step": 50, "totalSteps": 100}, expect=403)
        finish_pod(cluster, a, fake, 0, "Completed", {
            "reason": "Completed", "finalStep": 100, "adapterPath": "output/adapter"})
        st = _victim_heard(cluster, b, job, pod, 3)
        _unharmed(cluster, b, st, pod)
        assert st["progress"]["step"] == 3 and not st.get("output"), st
        _warned_once(cluster, a, fake, job)
    finally:
        _release(cluster, a, fake)
