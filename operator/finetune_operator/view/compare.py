"""FineTuneJobs (a sweep's trials, or any jobs) ranked by a metric: ``kubectl finetune sweep
compare|describe NAME`` and ``kubectl finetune compare JOB...``.

A row: rank, job, phase, the parameters that distinguish it (a sweep's trial parameters, or the
spec fields that differ among the compared jobs), its metrics (``status.output.metrics``), the
GPU-hours it held so far (GPUs x wall-clock hours since its first start: to completion, or
until now while it runs; preempted time included; a sweep's ``status.trials[].gpuHours`` is
instead set once a trial completes) and its preemptions. The table: which parameter and metric
columns to show, in which order, under which label.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, TypedDict

from finetune_api.labels import PARAMETERS_ANNOTATION
from finetune_api.sweep import FIELD_PATHS, MINIMIZED_METRICS
from finetune_api.times import parse_time
from finetune_operator.view.jobs import phase_of, total_gpus

Obj = Mapping[str, Any]

# Metric columns, in this order, when any compared job has them.
METRIC_ORDER = ("testLoss", "testPerplexity", "testRouge1", "testRouge2", "testRougeL",
                "testBleu4", "testExactMatch", "evalLoss", "trainLoss")
# The table's own columns: a parameter column never takes one of these labels.
FIXED_COLUMNS = ("rank", "name", "phase", "gpu-hours", "preemptions")


class CompareRow(TypedDict):
    name: str
    namespace: str | None
    phase: str
    parameters: dict[str, Any]  # field path -> value
    metric: str  # the one ranked by
    value: float | None  # of that metric
    metrics: dict[str, float]
    step: int | None
    loss: float | None
    gpuHours: float | None  # None before the first start
    preemptions: int
    rank: int | None  # 1 = best; None without the metric


class ParameterColumn(TypedDict):
    path: str  # spec field path, e.g. training.learningRate
    label: str  # its last part, or the whole path where that is ambiguous


class CompareTable(TypedDict):
    metric: str
    parameters: list[ParameterColumn]
    metrics: list[str]  # the ranked metric first, then the others present in METRIC_ORDER
    rows: list[CompareRow]


def _get(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, Mapping) or key not in doc:
            return None
        doc = doc[key]
    return doc


def gpu_hours_so_far(job: Obj, now: dt.datetime) -> float | None:
    """GPUs x wall-clock hours from the first start to completion, or to ``now`` until then."""
    st = job.get("status") or {}
    start = parse_time(st.get("startTime"))
    if start is None:
        return None
    end = parse_time(st.get("completionTime")) or now
    return total_gpus(job) * max(0.0, (end - start).total_seconds()) / 3600.0


def trial_parameters(job: Obj) -> dict[str, Any]:
    """A sweep trial's parameters (the annotation the sweep writes on its trials)."""
    raw = ((job.get("metadata") or {}).get("annotations") or {}).get(PARAMETERS_ANNOTATION)
    try:
        value = json.loads(raw) if raw else {}
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def differing_fields(jobs: Sequence[Obj]) -> list[str]:
    """Spec field paths (of the sweepable ones) whose values differ among the jobs."""
    out = []
    for path in FIELD_PATHS:
        values = {json.dumps(_get(j.get("spec"), path), sort_keys=True) for j in jobs}
        if len(values) > 1:
            out.append(path)
    return out


def default_metric(jobs: Iterable[Obj]) -> str:
    """The first of testLoss, evalLoss, trainLoss that some job reports (testLoss otherwise)."""
    present = {k for j in jobs for k in (((j.get("status") or {}).get("output") or {})
                                         .get("metrics") or {})}
    return next((m for m in ("testLoss", "evalLoss", "trainLoss") if m in present), "testLoss")


def compare_rows(jobs: Sequence[Obj], now: dt.datetime, metric: str, minimize: bool | None = None,
                 parameters: Mapping[str, Mapping[str, Any]] | None = None) -> list[CompareRow]:
    """One row per job, best first: jobs with the metric ranked by it (ties: by name), then the
    others by name. ``minimize``: default by the metric (losses and perplexity down, scores
    up). ``parameters``: name -> parameters (default: the trial annotation, else the spec
    fields that differ among the jobs)."""
    minimize = metric in MINIMIZED_METRICS if minimize is None else minimize
    diff = differing_fields(jobs)
    rows = []
    for job in jobs:
        meta, st = job.get("metadata") or {}, job.get("status") or {}
        name = str(meta.get("name"))
        params = dict((parameters or {}).get(name) or trial_parameters(job)
                      or {p: _get(job.get("spec"), p) for p in diff})
        metrics = {k: float(v) for k, v in ((st.get("output") or {}).get("metrics") or {}).items()
                   if isinstance(v, int | float)}
        progress = st.get("progress") or {}
        rows.append(CompareRow(
            name=name, namespace=meta.get("namespace"), phase=phase_of(job),
            parameters=params, metric=metric, value=metrics.get(metric),
            metrics=metrics, step=progress.get("step"), loss=progress.get("loss"),
            gpuHours=gpu_hours_so_far(job, now), preemptions=int(st.get("preemptions") or 0),
            rank=None))
    sign = 1.0 if minimize else -1.0

    def key(r: CompareRow) -> tuple[bool, float, str]:
        value = r["value"]
        return (value is None, sign * float(value or 0.0), str(r["name"]))

    rows.sort(key=key)
    for i, r in enumerate(rows, start=1):
        r["rank"] = i if r["value"] is not None else None
    return rows


def compare_table(rows: Sequence[CompareRow]) -> CompareTable:
    """The columns of the comparison: every parameter any row has (in first-seen order), the
    ranked metric, then the other metrics present. A parameter column is labelled by the last
    part of its path, or by the whole path where that part is shared or names another column."""
    metric = rows[0]["metric"] if rows else ""
    params: list[str] = []
    for r in rows:
        params += [p for p in r["parameters"] if p not in params]
    present = {k for r in rows for k in r["metrics"]}
    metrics = [metric] + [m for m in METRIC_ORDER if m in present and m != metric]
    fixed = {c.upper() for c in FIXED_COLUMNS} | {m.upper() for m in metrics}
    leaves = [p.rsplit(".", 1)[-1] for p in params]
    return CompareTable(
        metric=metric,
        parameters=[ParameterColumn(path=p, label=leaf if leaves.count(leaf) == 1
                                    and leaf.upper() not in fixed else p)
                    for p, leaf in zip(params, leaves, strict=True)],
        metrics=metrics if rows else [],
        rows=list(rows))


def comparison(sweep: Obj | None, rows: Sequence[CompareRow]) -> dict[str, Any]:
    """What ``sweep compare`` and ``compare`` print with -o json|yaml: the sweep (name,
    namespace, status without its trial list) when there is one, the metric and the rows."""
    out: dict[str, Any] = {}
    if sweep is not None:
        meta = sweep.get("metadata") or {}
        out.update(sweep=meta.get("name"), namespace=meta.get("namespace"),
                   status={k: v for k, v in (sweep.get("status") or {}).items()
                           if k != "trials"})
    if rows:
        out["metric"] = rows[0]["metric"]
    out["trials"] = list(rows)
    return out
