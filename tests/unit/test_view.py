"""The view layer (finetune_operator.view): pure (no API client, no command line, no printing),
and its view models are what a web console serves: JSON as they are, with the numbers behind the
texts. What the CLI prints from them is tests/unit/test_cli.py's."""

from __future__ import annotations

import ast
import datetime as dt
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from finetune_api.labels import PARAMETERS_ANNOTATION
from finetune_api.spec import DEFAULT_GPU_RESOURCE
from finetune_operator.view import compare, describe, jobs, sweeps, top
from tests.builders.jobs import job_body

pytestmark = pytest.mark.unit

VIEW = Path(jobs.__file__).resolve().parent
NOW = dt.datetime(2026, 1, 1, 2, 0, 0, tzinfo=dt.UTC)  # 2 h after the builders' creation time
FORBIDDEN = ("kubernetes", "kopf", "urllib3", "argparse", "finetune_operator.kube",
             "finetune_operator.cli", "finetune_operator.http")


def _imports(path: Path) -> list[str]:
    tree = ast.parse(path.read_text())
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return names


def _prints(path: Path) -> list[int]:
    return [n.lineno for n in ast.walk(ast.parse(path.read_text()))
            if (isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                and n.func.id == "print")
            or (isinstance(n, ast.Attribute) and n.attr in ("stdout", "stderr"))]


def test_no_view_module_talks_to_the_api_parses_arguments_or_prints() -> None:
    modules = sorted(VIEW.glob("*.py"))
    assert {m.stem for m in modules} >= {"cells", "jobs", "describe", "top", "compare", "sweeps"}
    for m in modules:
        bad = [n for n in _imports(m) if n.startswith(FORBIDDEN)]
        assert not bad, f"{m.name} imports {bad}"
        assert not _prints(m), f"{m.name} writes to the terminal (lines {_prints(m)})"
    # nor through what they import: the API client never gets loaded
    code = ("import sys; import finetune_operator.view.describe, finetune_operator.view.sweeps, "
            "finetune_operator.view.top; print(sorted(m for m in sys.modules if m.split('.')[0] "
            "in ('kubernetes', 'kopf', 'urllib3') or m.startswith(('finetune_operator.cli', "
            "'finetune_operator.kube'))))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            check=True).stdout.strip()
    assert loaded == "[]"


def _round_trips(model: object) -> None:
    assert json.loads(json.dumps(model)) == model


def test_a_queued_row_has_the_position_and_the_whole_wait_reason() -> None:
    reason = "needs 2 nvidia.com/gpu; quota team-a has 0 free; " + "x" * 100
    row = jobs.job_row(job_body("bot", status={
        "phase": "Queued", "queue": {"position": 3, "reason": reason},
        "progress": {"step": 10, "totalSteps": 40, "etaSeconds": 99}}), NOW)
    _round_trips(row)
    assert (row["queue"], row["queuePosition"], row["reason"]) == ("3", 3, reason)  # not cut
    assert (row["progress"], row["step"], row["totalSteps"]) == ("10/40 (25%)", 10, 40)
    assert (row["eta"], row["etaSeconds"]) == ("-", None)  # no ETA while it waits
    assert (row["age"], row["created"]) == ("120m", "2026-01-01T00:00:00Z")


def test_a_running_row_has_its_eta_and_gpus_and_rows_come_by_namespace_then_name() -> None:
    run = job_body("b", gpus=8, nodes=4, status={
        "phase": "Running", "queue": {"position": 1},
        "progress": {"step": 1200, "totalSteps": 3000, "loss": 0.83, "etaSeconds": 2100}})
    row = jobs.job_row(run, NOW)
    assert (row["gpus"], row["totalGpus"], row["eta"], row["etaSeconds"]) == ("8x4", 32, "35m",
                                                                                2100)
    assert (row["queue"], row["queuePosition"], row["reason"]) == ("-", None, "")
    rows = jobs.job_rows([run, job_body("a", namespace="team-b"), job_body("a")], NOW)
    assert [(r["namespace"], r["name"]) for r in rows] == [
        ("team-a", "a"), ("team-a", "b"), ("team-b", "a")]


def test_describe_is_sections_of_fields_conditions_and_recent_events() -> None:
    job = job_body("bot", status={
        "phase": "Queued", "queue": {"position": 2, "reason": "behind 1 job"},
        "conditions": [{"type": "Admitted", "status": "False", "reason": "Waiting",
                        "message": "behind 1 job", "lastTransitionTime": "2026-01-01T01:00:00Z"}]})
    events = [{"type": "Normal", "reason": f"R{i}", "message": f"m{i}\n  more",
               "lastTimestamp": f"2026-01-01T00:{i:02d}:00Z",
               "involvedObject": {"kind": "FineTuneJob", "name": "bot"}} for i in range(5)]
    d = describe.describe(job, events, NOW, max_events=3)
    _round_trips(d)
    status = {f["label"]: f["value"] for f in d["status"]}
    assert status["Reason"] == "behind 1 job" and status["Queue position"] == "2"
    assert {f["label"] for f in d["spec"]} >= {"Model", "Dataset", "Method", "Resources"}
    assert d["conditions"] == [{"type": "Admitted", "status": "False", "reason": "Waiting",
                                "age": "60m", "message": "behind 1 job"}]
    assert [e["reason"] for e in d["events"]] == ["R2", "R3", "R4"]  # the newest, oldest first
    assert d["events"][0]["message"] == "m2 more" and d["events"][0]["object"] == \
        "FineTuneJob/bot"


def test_top_rows_are_json_with_the_queue_in_order() -> None:
    rows = top.top_rows([job_body("q2", gpus=4, status={"phase": "Queued", "queue": {
                             "position": 2, "reason": "r2"}}),
                         job_body("q1", gpus=1, status={"phase": "Queued", "queue": {
                             "position": 1}})],
                        [{"metadata": {"namespace": "team-a"},
                          "status": {"hard": {"requests.nvidia.com/gpu": "2500m"}}}])
    _round_trips(rows)
    (row,) = rows
    assert list(row) == ["namespace", "gpuResource", "allocated", "quotaHard", "quotaUsed",
                         "running", "queued", "queuedGpus", "queue", "quotaFree"]  # -o json
    assert (row["quotaHard"], row["quotaFree"], row["queuedGpus"]) == (2.5, 2.5, 5)
    assert [(e["name"], e["position"]) for e in row["queue"]] == [("q1", 1), ("q2", 2)]


def _quota(ns: str, *resources: str) -> dict[str, Any]:
    return {"metadata": {"namespace": ns},
            "status": {"hard": {"pods": "10", "requests.cpu": "8",
                                **{f"requests.{r}": "4" for r in resources}}}}


def test_jobs_naming_no_gpu_resource_count_under_the_one_the_cluster_tells() -> None:
    plain = job_body("plain", status={"phase": "Running"})
    mig = job_body("mig", status={"phase": "Running"},
                   resources={"gpuResource": "nvidia.com/mig-1g.10gb"})
    infer = top.inferred_default_gpu_resource
    assert infer([plain], []) == DEFAULT_GPU_RESOURCE == "nvidia.com/gpu"  # nothing says else
    assert infer([plain, mig], [_quota("a", "amd.com/gpu")]) == "amd.com/gpu"  # quotas first
    assert infer([plain, mig], [_quota("a", "amd.com/gpu"), _quota("b", "amd.com/gpu")]) == \
        "amd.com/gpu"
    assert infer([plain, mig], []) == "nvidia.com/mig-1g.10gb"  # no quota: the jobs' one
    assert infer([plain], [_quota("a", "amd.com/gpu"), _quota("b", "intel.com/gpu")]) == \
        DEFAULT_GPU_RESOURCE  # quotas disagree
    rows = top.top_rows([plain], [_quota("team-a", "amd.com/gpu")], namespaces=["empty"])
    assert [(r["namespace"], r["gpuResource"], r["running"]) for r in rows] == [
        ("empty", "amd.com/gpu", 0), ("team-a", "amd.com/gpu", 1)]
    given = top.top_rows([plain], [_quota("team-a", "amd.com/gpu")], "nvidia.com/gpu")
    assert [(r["gpuResource"], r["running"]) for r in given] == [
        ("amd.com/gpu", 0), ("nvidia.com/gpu", 1)]


def test_gpu_hours_so_far_grow_until_completion() -> None:
    running = job_body("r", gpus=2, nodes=2, status={"phase": "Running",
                                                     "startTime": "2026-01-01T01:30:00Z"})
    done = job_body("d", gpus=2, status={"phase": "Succeeded", "startTime": "2026-01-01T00:00:00Z",
                                         "completionTime": "2026-01-01T00:15:00Z"})
    assert compare.gpu_hours_so_far(running, NOW) == 2.0  # 4 GPUs x 0.5 h, to now
    assert compare.gpu_hours_so_far(running, NOW + dt.timedelta(hours=1)) == 6.0
    assert compare.gpu_hours_so_far(done, NOW) == 0.5  # 2 GPUs x 0.25 h, to completion
    assert compare.gpu_hours_so_far(job_body("q", status={"phase": "Queued"}), NOW) is None


def test_the_compare_table_names_its_columns() -> None:
    trial = job_body("t0", status={"phase": "Succeeded", "output": {"metrics": {
        "evalLoss": 1.0, "testLoss": 0.7, "trainLoss": 0.5}}})
    trial["metadata"]["annotations"][PARAMETERS_ANNOTATION] = json.dumps(
        {"lora.rank": 8, "training.learningRate": 1e-4, "lora.alpha": 16, "dropout.alpha": 0})
    rows = compare.compare_rows([trial], NOW, "evalLoss")
    table = compare.compare_table(rows)
    _round_trips(table)
    assert table["metric"] == "evalLoss"
    assert table["metrics"] == ["evalLoss", "testLoss", "trainLoss"]  # ranked one first
    assert [(p["path"], p["label"]) for p in table["parameters"]] == [
        ("lora.rank", "lora.rank"),  # "rank" is the RANK column
        ("training.learningRate", "learningRate"),
        ("lora.alpha", "lora.alpha"), ("dropout.alpha", "dropout.alpha")]  # shared leaf
    assert compare.compare_table([]) == {"metric": "", "parameters": [], "metrics": [],
                                         "rows": []}
    result = compare.comparison(None, rows)
    assert list(result) == ["metric", "trials"] and result["trials"][0]["rank"] == 1


def test_sweep_rows_and_description() -> None:
    sweep = {"metadata": {"name": "lr", "namespace": "team-a",
                          "creationTimestamp": "2026-01-01T00:00:00Z"},
             "spec": {"parameters": [{"path": "training.learningRate",
                                      "range": {"min": 1e-4, "max": 1e-3, "scale": "log"}}],
                      "search": {"strategy": "random", "trials": 4, "seed": 3}},
             "status": {"phase": "Running", "summary": "1/4", "activeTrials": 2}}
    row = sweeps.sweep_row(sweep, NOW)
    _round_trips(row)
    assert (row["trials"], row["active"], row["metric"], row["best"], row["age"]) == (
        "1/4", "2", "evalLoss", "-", "120m")
    d = sweeps.describe_sweep(sweep, [])
    _round_trips(d)
    fields = {f["label"]: f["value"] for f in d["fields"]}
    assert fields["Search"] == "random (4 trials, seed 3)"
    assert fields["Objective"] == "minimize evalLoss"
    assert fields["  training.learningRate"] == "log [0.0001, 0.001]"
    assert d["trials"]["rows"] == []
