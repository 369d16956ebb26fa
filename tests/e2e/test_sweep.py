"""A FineTuneSweep for real: operator + a 2-GPU local node agent + real tiny trainings.

A 2x2 grid with maxParallel 2 runs four real trials (each evaluated on a held-out test set),
never more than two at once; the operator is killed and restarted in the middle and creates no
duplicate trial; the sweep ranks the trials and names the best; `kubectl finetune sweep
compare` prints them in that order; deleting the sweep deletes the trials."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from finetune_dev.devcluster.workloads import training_job
from finetune_operator.cli import main as cli_main

from ..kube import Cluster, short_id, wait_for
from ..operator_proc import OperatorProcess

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
SWEEP_CRD = ROOT / "crds" / "finetunesweeps.finetune.dev.yaml"
RUN = 900  # seconds the whole sweep may take on 2 shared cores (four trainings, two at a time)
TRIAL_PHASES_HOLDING_GPUS = ("Admitted", "Running", "Preempting")
TEST_SET = "\n".join(json.dumps({"messages": [
    {"role": "user", "content": f"What is the capital of {c}?"},
    {"role": "assistant", "content": f"The capital of {c} is {k}."}]})
    for c, k in (("Spain", "Madrid"), ("Germany", "Berlin"), ("Austria", "Vienna"))) + "\n"


@pytest.fixture(scope="module")
def agent2(cluster: Cluster) -> Iterator[Any]:
    from finetune_dev.nodeagent import start_agent

    a = start_agent(f"e2e-sweep-{short_id()}", gpus=2, cfg=cluster.cfg)
    yield a
    a.stop()
    cluster.kubectl("delete", "node", a.node, "--ignore-not-found", "--wait=false")


@pytest.fixture(scope="module")
def sweep_crd(cluster: Cluster) -> Path:
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(SWEEP_CRD))
    cluster.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                    "crd/finetunesweeps.finetune.dev")
    return SWEEP_CRD


def _sweep(node: str) -> dict[str, Any]:
    template = training_job("template", gpus=1, priority_class="finetune-normal", node=node,
                            max_steps=12, interval_steps=6)["spec"]
    template["evaluation"] = {
        "dataset": {"source": {"configMap": {"name": "sweep-test", "key": "test.jsonl"}}},
        "generation": {"maxNewTokens": 8}, "maxExamples": 3}
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
            "metadata": {"name": "grid"},
            "spec": {"template": template,
                     "parameters": [{"path": "training.learningRate", "values": [1e-3, 5e-3]},
                                    {"path": "lora.rank", "values": [4, 8]}],
                     "maxParallel": 2, "objective": {"metric": "testLoss"}}}


def _trials(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "finetunejobs", "-n", ns, "-l", "finetune.dev/sweep=grid",
                          "-o", "json").stdout
    return list(json.loads(out)["items"])


def _time(value: str) -> datetime:
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def _max_overlap(intervals: list[tuple[datetime, datetime]]) -> int:
    """Most half-open [start, end) intervals covering one instant."""
    events = sorted([(s, 1) for s, _ in intervals] + [(e, -1) for _, e in intervals])
    best = now = 0
    for _, step in events:  # ends sort before starts at the same instant (-1 < 1)
        now += step
        best = max(best, now)
    return best


def test_sweep_2x2_runs_four_real_trials_two_at_a_time_and_names_the_best(
        cluster: Cluster, operator: OperatorProcess, agent2: Any, train_ns: Any,
        sweep_crd: Path) -> None:
    ns = train_ns()
    cluster.kubectl("create", "configmap", "sweep-test", "-n", ns,
                    f"--from-literal=test.jsonl={TEST_SET}")
    cluster.apply(_sweep(agent2.node), ns)

    uids: dict[str, str] = {}
    most_at_once = 0

    def observe() -> list[dict[str, Any]]:
        nonlocal most_at_once
        trials = _trials(cluster, ns)
        for t in trials:
            name, uid = t["metadata"]["name"], t["metadata"]["uid"]
            assert uids.setdefault(name, uid) == uid, f"{name} was recreated"
        holding = [t for t in trials
                   if (t.get("status") or {}).get("phase") in TRIAL_PHASES_HOLDING_GPUS]
        unfinished = [t for t in trials if (t.get("status") or {}).get("phase") not in (
            "Succeeded", "Failed")]
        assert len(unfinished) <= 2, [t["metadata"]["name"] for t in unfinished]
        most_at_once = max(most_at_once, len(holding))
        return trials

    # the first trial done: kill the operator (SIGKILL) with the next ones in flight, restart
    wait_for("a first finished trial", lambda: any(
        (t.get("status") or {}).get("phase") == "Succeeded" for t in observe()), RUN)
    operator.kill()
    operator.start()

    try:
        sweep = wait_for("the sweep to succeed", lambda: (
            lambda s: s if observe() is not None and (s.get("status") or {}).get("phase")
            == "Succeeded" else None)(cluster.get("finetunesweep", "grid", ns) or {}), RUN)
    except AssertionError as e:
        st = (cluster.get("finetunesweep", "grid", ns) or {}).get("status") or {}
        seen = {t["metadata"]["name"]: (t.get("status") or {}).get("phase")
                for t in _trials(cluster, ns)}
        summary = {k: v for k, v in st.items() if k != "trials"}
        raise AssertionError(f"{e}\nsweep status: {summary}"
                             f"\ntrial phases (jobs): {seen}\noperator log:\n"
                             f"{operator.log(tail=3000)}") from None
    trials = observe()
    names = sorted(t["metadata"]["name"] for t in trials)
    assert names == ["grid-t0", "grid-t1", "grid-t2", "grid-t3"]  # no duplicate, none missing
    assert most_at_once <= 2
    # never more than two trials held GPUs at once, by the times the operator recorded
    spans = [(_time(t["status"]["startTime"]), _time(t["status"]["completionTime"]))
             for t in trials]
    assert _max_overlap(spans) <= 2
    losses = {t["metadata"]["name"]: t["status"]["output"]["metrics"]["testLoss"]
              for t in trials}
    assert all(t["status"]["phase"] == "Succeeded" for t in trials)

    st = sweep["status"]
    best = min(losses, key=lambda n: (losses[n], n))
    assert st["best"]["name"] == best and st["best"]["metric"] == "testLoss"
    assert st["best"]["value"] == pytest.approx(losses[best])
    assert [t["objective"] for t in st["trials"]] == pytest.approx(
        [losses[f"grid-t{i}"] for i in range(4)])
    assert st["trials"][3]["parameters"] == {"training.learningRate": 5e-3, "lora.rank": 8}
    assert st["summary"] == "4/4" and st["activeTrials"] == 0

    # one command: the trials ranked by the objective
    out = io.StringIO()
    assert cli_main(["sweep", "compare", "grid", "-n", ns, "--kubeconfig",
                     str(cluster.kubeconfig)], out=out) == 0
    rows = [line.split() for line in out.getvalue().splitlines()[1:]]
    assert [r[1] for r in rows] == sorted(losses, key=lambda n: (losses[n], n))
    assert rows[0][0] == "1" and rows[0][1] == best
    out = io.StringIO()
    assert cli_main(["sweep", "compare", "grid", "-n", ns, "-o", "json", "--kubeconfig",
                     str(cluster.kubeconfig)], out=out) == 0
    assert json.loads(out.getvalue())["trials"][0]["name"] == best

    # deleting the sweep deletes its trials (and with them their pods)
    cluster.kubectl("delete", "finetunesweep", "grid", "-n", ns, "--wait=false")
    wait_for("the trials garbage-collected", lambda: not _trials(cluster, ns), 120)
