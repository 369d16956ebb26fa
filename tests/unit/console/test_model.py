"""The pages' view models, from API objects as the API server returns them."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import yaml

from finetune_api.labels import PARAMETERS_ANNOTATION, SWEEP_LABEL
from finetune_operator.console import model
from finetune_operator.console.history import Curve, Mark, Point
from finetune_operator.console.i18n import text

NOW = dt.datetime(2026, 12, 9, 12, 0, tzinfo=dt.UTC)  # a Wednesday


def job(name: str, phase: str, **status: Any) -> dict[str, Any]:
    return {"apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob",
            "metadata": {"name": name, "namespace": "team-a", "uid": f"uid-{name}",
                         "creationTimestamp": "2026-12-09T10:00:00Z"},
            "spec": {"model": {"name": "m", "source": {"hub": {"repo": "m"}}},
                     "dataset": {"source": {"configMap": {"name": "d", "key": "k"}}},
                     "method": "lora", "resources": {"gpus": 2},
                     "priorityClassName": "finetune-normal"},
            "status": {"phase": phase, **status}}


def test_a_running_row_has_its_bar_and_sparkline() -> None:
    j = job("a", "Running", progress={"step": 30, "totalSteps": 120, "loss": 0.8,
                                      "etaSeconds": 90})
    curve = Curve([Point(10, 1, 1.2), Point(20, 1, 1.0), Point(30, 1, 0.8)])
    row = model.job_list_row(j, NOW, curve, "zh")
    assert (row["percent"], row["phaseText"], row["eta"]) == (25, "运行中", "90s")
    assert 'data-points="3"' in row["sparkline"]
    json.dumps(row)  # served as JSON as it is


def test_a_queued_row_tells_position_and_reason() -> None:
    j = job("q", "Queued", queue={"position": 2, "reason": "waiting for GPU quota"})
    row = model.job_list_row(j, NOW, Curve(), "en")
    assert (row["queue"], row["reason"], row["percent"]) == ("2", "waiting for GPU quota", None)


def test_the_job_page_marks_attempts_checkpoints_and_preemptions() -> None:
    j = job("a", "Running", attempt=2, preemptions=1,
            progress={"step": 40, "totalSteps": 100, "loss": 0.5, "tokensPerSecond": 900.0},
            checkpoint={"step": 30, "savedAt": "2026-12-09T11:00:00Z"})
    curve = Curve([Point(10, 1, 1.0, 1e-3), Point(25, 1, 0.8, 1e-3), Point(30, 2, 0.7, 9e-4),
                   Point(40, 2, 0.5, 8e-4, 900.0)],
                  [Mark("checkpoint", 20, 1), Mark("preemption", 25, 1),
                   Mark("checkpoint", 30, 2)])
    page = model.job_page(j, [], NOW, curve, "en")
    kinds = [(e["kind"], e["step"]) for e in page["timeline"]]
    # attempt 1 starts at step 0 (its first report came at 10); attempt 2 resumed from attempt
    # 1's checkpoint at step 20 (its first report came at 30)
    assert kinds == [("attempt", 0), ("attempt", 20), ("checkpoint", 20), ("preemption", 25),
                     ("checkpoint", 30)]
    assert page["points"] == 4
    loss = page["charts"]["loss"]
    assert loss.count('class="pt s0"') == 2 and loss.count('class="pt s1"') == 2
    assert 'class="marker preemption"' in loss
    assert page["actions"] == ["suspend", "clone", "copy_yaml", "delete"]
    assert page["tokensPerSecond"] == "900"


def test_actions_follow_the_phase_and_spec() -> None:
    suspended = job("s", "Suspended")
    suspended["spec"]["suspend"] = True
    assert model.actions(suspended)[0] == "resume"
    assert model.actions(job("d", "Succeeded")) == ["clone", "copy_yaml", "delete"]


def test_copy_yaml_and_clone_carry_the_spec_only() -> None:
    j = job("a", "Suspended")
    j["spec"]["suspend"] = True
    j["metadata"]["resourceVersion"] = "7"
    doc = yaml.safe_load(model.job_yaml(j))
    assert set(doc) == {"apiVersion", "kind", "metadata", "spec"}
    assert doc["metadata"] == {"name": "a", "namespace": "team-a"}
    clone = model.clone_manifest(j)
    assert clone["metadata"] == {"name": "a-copy", "namespace": "team-a"}
    assert "suspend" not in clone["spec"] and "status" not in clone


def test_the_team_page() -> None:
    jobs = [
        job("run", "Running", startTime="2026-12-09T10:00:00Z", lostSteps=50,
            progress={"step": 150}, preemptions=1),
        job("q1", "Queued", queue={"position": 1, "reason": "quota"}),
        job("done", "Succeeded", completionTime="2026-12-08T09:00:00Z"),
        job("old", "Succeeded", completionTime="2026-12-01T09:00:00Z"),  # last week
    ]
    quotas = [{"metadata": {"namespace": "team-a"},
               "status": {"hard": {"requests.nvidia.com/gpu": "4"},
                          "used": {"requests.nvidia.com/gpu": "2"}}}]
    team = model.team_page(jobs, quotas, NOW, ["team-a"])
    (q,) = team["quotas"]
    assert (q["allocated"], q["quotaHard"], q["queued"]) == (2, 4.0, 1)
    assert [(b["band"], b["jobs"], b["gpus"]) for b in team["bands"]] == [
        ("finetune-normal", 1, 2)]
    assert [f["name"] for f in team["finished"]] == ["done"]
    # 2 GPUs x 2 h = 4 GPU-hours for 150 + 50 steps, 50 of them lost: 1 GPU-hour
    assert team["lostGpuHours"] == 1.0 and team["preemptions"] == 1


def test_the_sweep_page_ranks_trials_and_charts_the_metric() -> None:
    sweep = {"metadata": {"name": "lr", "namespace": "team-a",
                          "creationTimestamp": "2026-12-09T10:00:00Z"},
             "spec": {"objective": {"metric": "evalLoss"}}, "status": {"phase": "Running"}}
    trials = []
    for i, (lr, loss) in enumerate(((1e-4, 0.9), (1e-3, 0.6), (1e-2, 1.3))):
        t = job(f"lr-{i}", "Succeeded", output={"metrics": {"evalLoss": loss}})
        t["metadata"]["labels"] = {SWEEP_LABEL: "lr"}
        t["metadata"]["annotations"] = {
            PARAMETERS_ANNOTATION: json.dumps({"training.learningRate": lr})}
        trials.append(t)
    other = job("unrelated", "Running")
    got = model.sweep_trials(sweep, [*trials, other])
    assert [t["metadata"]["name"] for t in got] == ["lr-0", "lr-1", "lr-2"]
    page = model.sweep_page(sweep, got, NOW, "en")
    assert page["best"] == "lr-1"
    assert [r["name"] for r in page["table"]["rows"]] == ["lr-1", "lr-0", "lr-2"]
    (plot,) = page["plots"]
    assert plot.count("<circle") == 3 and 'data-trial="lr-1"' in plot and "★ lr-1" in plot


def test_the_evaluation_loss_is_said_not_plotted() -> None:
    """The trainer's progress reports carry no evaluation loss (reports/model.py): the page
    says so, gives the final value once there is one, and draws no lone point for it."""
    curve = Curve([Point(10, 1, 1.2), Point(20, 1, 1.0)])
    running = model.job_page(job("r", "Running", progress={"step": 20, "loss": 1.0}), [], NOW,
                             curve, "en")
    assert "does not report it during training" in running["evalNote"]
    assert "Final" not in running["evalNote"]
    done = job("d", "Succeeded", progress={"step": 20, "loss": 1.0},
               output={"adapterPath": "output/adapter", "metrics": {"evalLoss": 0.93}})
    page = model.job_page(done, [], NOW, curve, "en")
    assert "Final evaluation loss 0.93 at step 20." in page["evalNote"]
    assert 'data-points="2"' in page["charts"]["loss"]  # the two training points only
    zh = model.job_page(done, [], NOW, curve, "zh")
    assert text("zh", "job.eval_final", value="0.93", step=20) in zh["evalNote"]
    assert "0.93" in zh["evalNote"] and "最终验证损失" in zh["evalNote"]
