"""The pure sweep planner: grid/random expansion, maxParallel, restart safety (no duplicate
trials when planning from what exists), ranking, early stop, invalid sweeps, and the runner's
write discipline against a recording fake of the k8s calls."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from pydantic import ValidationError

from finetune_api.job import FineTuneJob
from finetune_api.labels import (
    EARLY_STOP_ANNOTATION,
    PARAMETERS_ANNOTATION,
    SWEEP_LABEL,
    TRIAL_LABEL,
)
from finetune_api.sweep import FIELD_PATHS, FineTuneSweep, FineTuneSweepSpec
from finetune_operator.sweep import (
    SweepRunner,
    TrialJob,
    expand,
    parameter_sets,
    plan_sweep,
    rank_trials,
)
from tests.builders.jobs import job_body

pytestmark = pytest.mark.unit

NOW = datetime(2026, 1, 1, 12, 0, tzinfo=UTC)
SWEEP_UID = "5a1e0000-0000-4000-8000-000000000001"


def template() -> dict[str, Any]:
    spec = job_body(gpus=1)["spec"]
    spec["evaluation"] = {"dataset": {"source": {"configMap": {"name": "d", "key": "test.jsonl"}}}}
    return spec


def sweep_body(parameters: list[dict[str, Any]] | None = None, max_parallel: int = 2,
               status: dict[str, Any] | None = None, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneSweep",
        "metadata": {"name": "lr", "namespace": "team-a", "uid": SWEEP_UID, "generation": 1},
        "spec": {
            "template": template(),
            "parameters": parameters if parameters is not None else [
                {"path": "training.learningRate", "values": [1e-4, 3e-4]},
                {"path": "lora.rank", "values": [4, 8]},
            ],
            "maxParallel": max_parallel,
            "objective": {"metric": "testLoss"},
            **spec,
        },
        "status": status or {},
    }


def sweep(**kw: Any) -> FineTuneSweep:
    return FineTuneSweep.from_body(sweep_body(**kw))


def child(body: dict[str, Any], phase: str | None = None, metrics: dict[str, float] | None = None,
          progress: dict[str, Any] | None = None, suspend: bool | None = None,
          annotations: dict[str, str] | None = None, **status: Any) -> dict[str, Any]:
    """A trial as the API server would store it after the operator worked on it."""
    out = copy.deepcopy(body)
    out["metadata"]["uid"] = f"uid-{out['metadata']['name']}"
    out["metadata"]["annotations"].update(annotations or {})
    st: dict[str, Any] = dict(status)
    if phase:
        st["phase"] = phase
    if metrics is not None:
        st["output"] = {"adapterPath": "output/adapter", "metrics": metrics}
    if progress is not None:
        st["progress"] = progress
    out["status"] = st
    if suspend is not None:
        out["spec"]["suspend"] = suspend
    return out


def names(bodies: list[dict[str, Any]]) -> list[str]:
    return [b["metadata"]["name"] for b in bodies]


# ---- expansion -----------------------------------------------------------------------------

def test_grid_expands_to_the_product_first_parameter_slowest() -> None:
    sets = parameter_sets(sweep().spec)
    assert sets == [
        {"training.learningRate": 1e-4, "lora.rank": 4},
        {"training.learningRate": 1e-4, "lora.rank": 8},
        {"training.learningRate": 3e-4, "lora.rank": 4},
        {"training.learningRate": 3e-4, "lora.rank": 8},
    ]


def test_trial_specs_are_the_template_with_the_parameters_set() -> None:
    trials = expand(sweep().spec)
    assert [t.spec["training"]["learningRate"] for t in trials] == [1e-4, 1e-4, 3e-4, 3e-4]
    assert [t.spec["lora"]["rank"] for t in trials] == [4, 8, 4, 8]
    # everything else is the template's
    assert all(t.spec["training"]["maxSteps"] == 20 for t in trials)
    assert all(t.spec["evaluation"]["dataset"]["source"]["configMap"]["key"] == "test.jsonl"
               for t in trials)


def test_random_search_is_deterministic_and_within_range() -> None:
    params = [{"path": "training.learningRate",
               "range": {"min": 1e-5, "max": 1e-3, "scale": "log"}},
              {"path": "lora.rank", "range": {"min": 2, "max": 64, "integer": True}},
              {"path": "method", "values": ["lora", "full"]}]
    spec = sweep(parameters=params, search={"strategy": "random", "trials": 12, "seed": 7}).spec
    first, again = parameter_sets(spec), parameter_sets(spec)
    assert first == again and len(first) == 12
    assert all(1e-5 <= p["training.learningRate"] <= 1e-3 for p in first)
    assert all(isinstance(p["lora.rank"], int) and 2 <= p["lora.rank"] <= 64 for p in first)
    assert {p["method"] for p in first} <= {"lora", "full"}
    other = sweep(parameters=params, search={"strategy": "random", "trials": 12, "seed": 8}).spec
    assert parameter_sets(other) != first


def test_field_paths_come_from_the_job_spec_model() -> None:
    for path in ("training.learningRate", "lora.rank", "lora.alpha", "training.epochs", "method",
                 "evaluation.generation.maxNewTokens"):
        assert path in FIELD_PATHS
    assert "suspend" not in FIELD_PATHS  # the sweep drives it (early stop)
    assert "lora.targetModules" not in FIELD_PATHS  # lists are not swept
    with pytest.raises(ValidationError, match=r"parameters\.0\.path"):
        FineTuneSweepSpec.model_validate(
            {**sweep_body()["spec"], "parameters": [{"path": "training.nope", "values": [1]}]})


@pytest.mark.parametrize(("spec", "message"), [
    ({"parameters": []}, "at least 1 item"),
    ({"maxParallel": 0}, "greater than or equal to 1"),
    ({"parameters": [{"path": "lora.rank", "values": []}]}, "at least 1 item"),
    ({"parameters": [{"path": "lora.rank", "values": [1]}, {"path": "lora.rank", "values": [2]}]},
     "each path may appear only once"),
    ({"parameters": [{"path": "lora.rank", "range": {"min": 1, "max": 8}}]},
     "a grid search needs values"),
    ({"search": {"strategy": "random"}}, "search.trials is required"),
])
def test_model_rejects_invalid_sweeps(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        FineTuneSweepSpec.model_validate({**sweep_body()["spec"], **spec})


def test_objective_on_the_test_set_needs_an_evaluation_block() -> None:
    body = sweep_body()["spec"]
    del body["template"]["evaluation"]
    with pytest.raises(ValidationError, match=r"needs spec\.evaluation"):
        FineTuneSweepSpec.model_validate(body)


# ---- creation, maxParallel, restart safety ---------------------------------------------------

def test_first_plan_creates_max_parallel_trials_with_names_owner_and_labels() -> None:
    plan = plan_sweep(sweep(), [], NOW)
    assert names(plan.creates) == ["lr-t0", "lr-t1"]
    body = plan.creates[1]
    assert body["kind"] == "FineTuneJob" and body["metadata"]["namespace"] == "team-a"
    ref = body["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["name"], ref["uid"], ref["controller"]) == (
        "FineTuneSweep", "lr", SWEEP_UID, True)
    assert body["metadata"]["labels"][SWEEP_LABEL] == "lr"
    assert body["metadata"]["labels"][TRIAL_LABEL] == "1"
    assert json.loads(body["metadata"]["annotations"][PARAMETERS_ANNOTATION]) == {
        "lora.rank": 8, "training.learningRate": 1e-4}
    assert plan.status["activeTrials"] == 2 and plan.status["phase"] == "Running"
    assert [t["phase"] for t in plan.status["trials"]] == ["Queued", "Queued", "Pending",
                                                          "Pending"]


def test_planning_from_existing_children_creates_no_duplicate() -> None:
    """A restarted operator (or a stale cache) plans again from what exists."""
    first = plan_sweep(sweep(), [], NOW)
    existing = [child(b, phase="Running") for b in first.creates]
    again = plan_sweep(sweep(), existing, NOW)
    assert again.creates == []
    # a cache that has only seen one of them asks for the other one again, by the same name
    partial = plan_sweep(sweep(), existing[:1], NOW)
    assert names(partial.creates) == ["lr-t1"]


@pytest.mark.parametrize("max_parallel", [1, 2, 3])
def test_max_parallel_is_never_exceeded_through_the_whole_sweep(max_parallel: int) -> None:
    """Drive the planner to completion, finishing one trial per step: never more than
    maxParallel unfinished trials, every trial created exactly once."""
    jobs: dict[str, dict[str, Any]] = {}
    created: list[str] = []
    for _ in range(20):
        s = sweep(max_parallel=max_parallel)
        plan = plan_sweep(s, list(jobs.values()), NOW)
        for body in plan.creates:
            assert body["metadata"]["name"] not in jobs
            created.append(body["metadata"]["name"])
            jobs[body["metadata"]["name"]] = child(body, phase="Running")
        unfinished = [j for j in jobs.values() if j["status"]["phase"] == "Running"]
        assert len(unfinished) <= max_parallel
        assert plan.status["activeTrials"] == len(unfinished)
        if plan.status["phase"] == "Succeeded":
            break
        oldest = min(unfinished, key=lambda j: j["metadata"]["name"])
        jobs[oldest["metadata"]["name"]] = child(oldest, phase="Succeeded",
                                                 metrics={"testLoss": 1.0})
    assert sorted(created) == ["lr-t0", "lr-t1", "lr-t2", "lr-t3"]
    assert plan.status["phase"] == "Succeeded"
    assert plan.status["summary"] == "4/4"


def test_a_job_with_a_trial_name_not_owned_by_the_sweep_is_never_adopted() -> None:
    foreign = job_body(name="lr-t0", gpus=1)  # no owner reference
    plan = plan_sweep(sweep(), [foreign], NOW)
    # the conflicting trial waits (reported); the next ones take the free slots
    assert names(plan.creates) == ["lr-t1", "lr-t2"]
    assert plan.status["trials"][0]["phase"] == "Pending"
    cond = {c["type"]: c for c in plan.status["conditions"]}
    assert "lr-t0" in cond["NameConflict"]["message"]
    # a job in another namespace with the same name is no conflict
    other_ns = job_body(name="lr-t0", namespace="team-b", gpus=1)
    assert names(plan_sweep(sweep(), [other_ns], NOW).creates) == ["lr-t0", "lr-t1"]


def test_a_deleting_sweep_creates_nothing() -> None:
    body = sweep_body()
    body["metadata"]["deletionTimestamp"] = "2026-01-01T11:00:00Z"
    assert plan_sweep(FineTuneSweep.from_body(body), [], NOW).creates == []


# ---- ranking, status, write discipline -------------------------------------------------------

def finished_sweep_jobs(losses: list[float], metric: str = "testLoss") -> list[dict[str, Any]]:
    plan = plan_sweep(sweep(max_parallel=4), [], NOW)
    return [child(b, phase="Succeeded", metrics={metric: loss, "testRougeL": 100 - 10 * loss},
                  startTime="2026-01-01T10:00:00Z", completionTime="2026-01-01T10:30:00Z",
                  preemptions=i % 2)
            for i, (b, loss) in enumerate(zip(plan.creates, losses, strict=True))]


def test_ranking_names_the_best_trial_by_the_objective_and_direction() -> None:
    jobs = finished_sweep_jobs([0.9, 0.4, 0.7, 0.4])
    plan = plan_sweep(sweep(), jobs, NOW)
    assert plan.best is not None
    assert (plan.best.name, plan.best.value) == ("lr-t1", 0.4)  # tie: lowest index wins
    assert plan.status["best"]["parameters"] == {"training.learningRate": 1e-4, "lora.rank": 8}
    assert plan.status["phase"] == "Succeeded"
    t1 = plan.status["trials"][1]
    assert t1["metrics"]["testLoss"] == 0.4 and t1["objective"] == 0.4
    assert t1["gpuHours"] == 0.5 and t1["preemptions"] == 1
    ranked = rank_trials(sweep(), [FineTuneSweep.from_body(
        sweep_body(status=plan.status)).status.trials[i] for i in range(4)])
    assert [t.name for t in ranked] == ["lr-t1", "lr-t3", "lr-t2", "lr-t0"]
    # maximize: the highest ROUGE-L
    up = plan_sweep(sweep(objective={"metric": "testRougeL"}), jobs, NOW)
    assert up.best is not None and up.best.name == "lr-t1" and up.best.value == 96.0
    down = plan_sweep(sweep(objective={"metric": "testRougeL", "direction": "minimize"}), jobs,
                      NOW)
    assert down.best is not None and down.best.name == "lr-t0"


def test_failed_trials_are_not_ranked_and_the_status_is_written_only_on_change() -> None:
    jobs = finished_sweep_jobs([0.9, 0.4, 0.7, 0.5])
    jobs[1] = child(jobs[1], phase="Failed")
    first = plan_sweep(sweep(), jobs, NOW)
    assert first.best is not None and first.best.name == "lr-t3"
    assert first.status_changed
    stored = sweep(status=json.loads(json.dumps(first.status)))  # as read back from the server
    later = datetime(2026, 1, 1, 13, 0, tzinfo=UTC)
    again = plan_sweep(stored, jobs, later)
    assert not again.status_changed, "nothing changed: no status write"
    assert again.status["conditions"] == first.status["conditions"]  # transition times kept


def test_a_sweep_whose_trials_all_failed_is_failed_and_says_so() -> None:
    jobs = [child(j, phase="Failed") for j in finished_sweep_jobs([0.9, 0.4, 0.7, 0.5])]
    plan = plan_sweep(sweep(), jobs, NOW)
    st = plan.status
    assert st["phase"] == "Failed" and plan.best is None
    [complete] = [c for c in st["conditions"] if c["type"] == "Complete"]
    assert complete["reason"] == "NoTrialSucceeded"
    assert complete["message"].startswith("4/4 trials finished: 0 succeeded, 4 failed; "
                                          "no trial succeeded, so there is no best trial")
    assert "kubectl finetune describe lr-t0 -n team-a" in complete["message"]


def test_a_sweep_counts_succeeded_and_failed_trials_while_it_runs_and_when_done() -> None:
    jobs = finished_sweep_jobs([0.9, 0.4, 0.7, 0.5])
    jobs[1] = child(jobs[1], phase="Failed")
    running_plan = plan_sweep(sweep(), jobs[:2], NOW)
    [c] = [c for c in running_plan.status["conditions"] if c["type"] == "Complete"]
    assert running_plan.status["phase"] == "Running"
    assert c["message"].startswith("2/4 trials finished: 1 succeeded, 1 failed; see why with "
                                   "kubectl finetune describe lr-t1 -n team-a")
    done = plan_sweep(sweep(), jobs, NOW)
    [c] = [c for c in done.status["conditions"] if c["type"] == "Complete"]
    assert done.status["phase"] == "Succeeded" and c["reason"] == "AllTrialsFinished"
    assert c["message"].startswith("4/4 trials finished: 3 succeeded, 1 failed;")
    assert c["message"].endswith("best lr-t3 testLoss=0.5")


# ---- early stop ------------------------------------------------------------------------------

def running(body: dict[str, Any], step: int, loss: float) -> dict[str, Any]:
    return child(body, phase="Running", progress={"step": step, "loss": loss})


def test_early_stop_suspends_trials_worse_than_the_best_by_the_margin() -> None:
    s = sweep(max_parallel=4, earlyStop={"afterSteps": 10, "margin": 0.2})
    creates = plan_sweep(s, [], NOW).creates
    jobs = [running(creates[0], 12, 1.0), running(creates[1], 12, 1.5),
            running(creates[2], 12, 1.1), running(creates[3], 5, 9.0)]
    plan = plan_sweep(s, jobs, NOW)
    assert [(n, u) for n, u, _ in plan.stops] == [("lr-t1", "uid-lr-t1")]
    assert "worse than trial 0" in plan.stops[0][2]
    phases = [t["phase"] for t in plan.status["trials"]]
    assert phases == ["Running", "Stopped", "Running", "Running"]  # t3: not afterSteps yet
    # once stopped (spec.suspend true + the annotation), the trial is finished and marked
    jobs[1] = child(jobs[1], phase="Suspended", suspend=True,
                    annotations={EARLY_STOP_ANNOTATION: "loss 1.5"})
    after = plan_sweep(s, jobs, NOW)
    assert after.stops == []
    assert after.status["trials"][1]["earlyStopped"] is True
    assert after.status["finishedTrials"] == 1


def test_early_stop_compares_the_losses_recorded_at_after_steps() -> None:
    """A finished trial's final (lower) loss is not held against a trial at afterSteps: each
    trial's loss is recorded once, when it first passes afterSteps, and kept in the status."""
    s = sweep(max_parallel=4, earlyStop={"afterSteps": 10, "margin": 0.2})
    creates = plan_sweep(s, [], NOW).creates
    first = plan_sweep(s, [running(creates[0], 11, 1.0)], NOW)
    assert first.status["trials"][0]["earlyStopLoss"] == 1.0
    assert first.status["trials"][0]["earlyStopStep"] == 11
    stored = sweep(max_parallel=4, earlyStop={"afterSteps": 10, "margin": 0.2},
                   status=json.loads(json.dumps(first.status)))
    done = child(creates[0], phase="Succeeded", progress={"step": 20, "loss": 0.2},
                 metrics={"testLoss": 0.3})
    later = plan_sweep(stored, [done, running(creates[1], 10, 1.1)], NOW)
    assert later.stops == []  # 1.1 vs trial 0's 1.0 at step 11, not its final 0.2
    assert later.status["trials"][0]["earlyStopLoss"] == 1.0
    worse = plan_sweep(stored, [done, running(creates[1], 10, 1.3)], NOW)
    assert [n for n, _, _ in worse.stops] == ["lr-t1"]
    assert "at step 11" in worse.stops[0][2]


def test_no_early_stop_without_a_second_trial_past_after_steps_or_without_the_block() -> None:
    s = sweep(max_parallel=4, earlyStop={"afterSteps": 10, "margin": 0.0})
    creates = plan_sweep(s, [], NOW).creates
    alone = [running(creates[0], 12, 1.0), running(creates[1], 3, 5.0)]
    assert plan_sweep(s, alone, NOW).stops == []
    both = [running(creates[0], 12, 1.0), running(creates[1], 12, 5.0)]
    assert plan_sweep(sweep(max_parallel=4), both, NOW).stops == []


# ---- invalid sweeps ------------------------------------------------------------------------

def test_a_trial_that_is_not_a_valid_job_fails_the_sweep_naming_trial_and_field() -> None:
    s = sweep(parameters=[{"path": "method", "values": ["lora", "full"]}])
    # the template sets lora, which method full does not allow
    s.spec.template.lora = s.spec.template.lora_or_default()
    plan = plan_sweep(s, [], NOW)
    assert plan.creates == [] and plan.status["phase"] == "Failed"
    cond = plan.status["conditions"][0]
    assert cond["type"] == "Invalid" and cond["reason"] == "InvalidSpec"
    assert "trial 1 (method='full')" in cond["message"]
    assert "lora must not be set when method is full" in cond["message"]


def test_a_grid_over_the_trial_cap_is_rejected_with_its_size() -> None:
    params = [{"path": p, "values": list(range(1, 8))}
              for p in ("lora.rank", "training.batchSize", "training.seed")]
    plan = plan_sweep(sweep(parameters=params), [], NOW)
    assert plan.status["phase"] == "Failed" and plan.creates == []
    assert "343 trials (7 x 7 x 7)" in plan.status["conditions"][0]["message"]


# ---- the runner: writes only what changed --------------------------------------------------

class RecordingKube:
    """Records the calls SweepRunner makes (the real calls are exercised in tests/cluster)."""

    def __init__(self, existing: dict[str, dict[str, Any]] | None = None) -> None:
        self.existing = existing or {}
        self.calls: list[tuple[str, str]] = []
        self.statuses: dict[str, dict] = {}

    def create_trial(self, body: dict) -> tuple[dict, bool]:
        name = body["metadata"]["name"]
        self.calls.append(("create", name))
        if name in self.existing:
            return self.existing[name], False
        self.existing[name] = body
        return body, True

    def patch_sweep_status(self, namespace: str, name: str, status: dict) -> bool:
        self.calls.append(("status", name))
        self.statuses[name] = status
        return True

    def stop_trial(self, namespace: str, name: str, uid: str, annotations: dict) -> bool:
        self.calls.append(("stop", name))
        return True


def test_runner_creates_patches_once_and_then_writes_nothing() -> None:
    kube = RecordingKube()
    runner = SweepRunner(kube)
    res = runner.sync([sweep_body()], [], NOW)
    assert kube.calls == [("create", "lr-t0"), ("create", "lr-t1"), ("status", "lr")]
    assert res.created == ["team-a/lr-t0", "team-a/lr-t1"]
    stored = sweep_body(status=json.loads(json.dumps(res.plans["team-a/lr"].status)))
    jobs = [child(b, phase="Queued") for b in kube.existing.values()]
    kube.calls.clear()
    runner.sync([stored], jobs, NOW)
    assert kube.calls == [], "an unchanged sweep costs no API call"


def test_the_runner_reads_trials_parsed_once_and_never_parses_them_again(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The cycle hands in the job cache's models (TrialJob): no sync parses a trial again."""
    kube = RecordingKube()
    runner = SweepRunner(kube)
    res = runner.sync([sweep_body()], [], NOW)
    stored = sweep_body(status=json.loads(json.dumps(res.plans["team-a/lr"].status)))
    trials = [TrialJob.of(b, FineTuneJob.from_body(b))
              for b in (child(b, phase="Queued") for b in kube.existing.values())]

    def no_parse(body: Any) -> FineTuneJob:
        raise AssertionError("a trial was parsed again")

    monkeypatch.setattr(FineTuneJob, "from_body", no_parse)
    kube.calls.clear()
    again = runner.sync([stored], trials, NOW)
    assert kube.calls == [], "an unchanged sweep costs no API call"
    phases = [t["phase"] for t in again.plans["team-a/lr"].status["trials"]]
    assert phases[:2] == ["Queued", "Queued"] and set(phases[2:]) == {"Pending"}


def test_runner_reports_an_unparsable_sweep_once() -> None:
    bad = sweep_body()
    bad["spec"]["maxParallel"] = 0  # the CRD rejects this; the runner must cope anyway
    kube = RecordingKube()
    SweepRunner(kube).sync([bad], [], NOW)
    assert kube.calls == [("status", "lr")]
    status = kube.statuses["lr"]
    assert status["phase"] == "Failed"
    assert "spec.maxParallel" in status["conditions"][0]["message"] or \
        "maxParallel" in status["conditions"][0]["message"]
    bad["status"] = json.loads(json.dumps(status))
    kube.calls.clear()
    SweepRunner(kube).sync([bad], [], NOW)
    assert kube.calls == []


def test_the_example_sweep_is_a_valid_2x2_grid() -> None:
    from pathlib import Path

    import yaml

    path = Path(__file__).resolve().parents[2] / "examples" / "sweep.yaml"
    docs = list(yaml.safe_load_all(path.read_text()))
    body = next(d for d in docs if d["kind"] == "FineTuneSweep")
    body["metadata"].update(namespace="team-a", uid=SWEEP_UID)
    plan = plan_sweep(FineTuneSweep.from_body(body), [], NOW)
    assert plan.status["totalTrials"] == 4
    assert names(plan.creates) == ["lr-rank-t0", "lr-rank-t1"]
    cm = next(d for d in docs if d["kind"] == "ConfigMap")
    test_key = body["spec"]["template"]["evaluation"]["dataset"]["source"]["configMap"]["key"]
    assert len(cm["data"][test_key].splitlines()) == 4


def test_the_dashboard_has_sweep_and_evaluation_panels() -> None:
    from pathlib import Path

    dash = json.loads((Path(__file__).resolve().parents[2] / "charts" / "finetune-operator"
                       / "dashboards" / "finetune.json").read_text())
    exprs = {p["title"]: " ".join(t["expr"] for t in p.get("targets", []))
             for p in dash["panels"]}
    assert "finetune_sweep_trials" in exprs["Sweep trials by phase"]
    assert "finetune_sweep_best_value" in exprs["Sweep best trial"]
    assert "finetune_job_eval_metric" in exprs["Evaluation of finished jobs (test set)"]
