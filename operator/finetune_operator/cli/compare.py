"""Pure: FineTuneJobs (and FineTuneSweeps) as API dicts -> a ranked comparison of trials.

Used by ``kubectl finetune sweep compare|describe NAME`` and ``kubectl finetune compare JOB...``.
A row: rank, job, phase, the parameters that distinguish it (a sweep's trial parameters, or the
spec fields that differ among the compared jobs), its metrics (``status.output.metrics``), the
GPU-hours it held (GPUs x wall-clock hours since its first start: to completion, or until now
while it runs; preempted time included) and its preemptions.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from finetune_api.sweep import FIELD_PATHS, MINIMIZED_METRICS
from finetune_api.times import parse_time
from finetune_operator.cli import format as fmt
from finetune_operator.sweep.plan import PARAMETERS_ANNOTATION

Obj = Mapping[str, Any]

# Metric columns, in this order, when any compared job has them.
METRIC_ORDER = ("testLoss", "testPerplexity", "testRouge1", "testRouge2", "testRougeL",
                "testBleu4", "testExactMatch", "evalLoss", "trainLoss")


def _get(doc: Any, path: str) -> Any:
    for key in path.split("."):
        if not isinstance(doc, Mapping) or key not in doc:
            return None
        doc = doc[key]
    return doc


def gpu_hours(job: Obj, now: dt.datetime) -> float | None:
    st = job.get("status") or {}
    start = parse_time(st.get("startTime"))
    if start is None:
        return None
    end = parse_time(st.get("completionTime")) or now
    return fmt.total_gpus(job) * max(0.0, (end - start).total_seconds()) / 3600.0


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
                 parameters: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict[str, Any]]:
    """One dict per job, best first: jobs with the metric ranked by it (ties: by name), then the
    others by name. ``parameters``: name -> parameters (default: the trial annotation, else the
    spec fields that differ among the jobs)."""
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
        rows.append({
            "name": name, "namespace": meta.get("namespace"), "phase": fmt.phase_of(job),
            "parameters": params, "metric": metric, "value": metrics.get(metric),
            "metrics": metrics, "step": progress.get("step"), "loss": progress.get("loss"),
            "gpuHours": gpu_hours(job, now), "preemptions": int(st.get("preemptions") or 0),
        })
    sign = 1.0 if minimize else -1.0

    def key(r: dict[str, Any]) -> tuple[bool, float, str]:
        value = r["value"]
        return (value is None, sign * float(value or 0.0), str(r["name"]))

    rows.sort(key=key)
    for i, r in enumerate(rows, start=1):
        r["rank"] = i if r["value"] is not None else None
    return rows


def _value_text(v: Any) -> str:
    if v is None:
        return fmt.NONE
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def compare_table(rows: Sequence[Mapping[str, Any]]) -> str:
    """RANK NAME PHASE <parameters> <metric first, then the others present> GPU-HOURS
    PREEMPTIONS; the parameter columns use the last part of the field path."""
    if not rows:
        return ""
    metric = rows[0]["metric"]
    params: list[str] = []
    for r in rows:
        params += [p for p in r["parameters"] if p not in params]
    present = {k for r in rows for k in r["metrics"]}
    metrics = [metric] + [m for m in METRIC_ORDER if m in present and m != metric]
    fixed = {"RANK", "NAME", "PHASE", "GPU-HOURS", "PREEMPTIONS", *(m.upper() for m in metrics)}
    leaves = [p.rsplit(".", 1)[-1] for p in params]
    # a parameter column is its leaf name, or the whole path where the leaf is ambiguous
    short = [leaf if leaves.count(leaf) == 1 and leaf.upper() not in fixed else p
             for p, leaf in zip(params, leaves, strict=True)]
    headers = ["RANK", "NAME", "PHASE", *[s.upper() for s in short],
               *[m.upper() for m in metrics], "GPU-HOURS", "PREEMPTIONS"]
    body = []
    for r in rows:
        body.append([
            str(r["rank"]) if r["rank"] is not None else fmt.NONE, r["name"], r["phase"],
            *[_value_text(r["parameters"].get(p)) for p in params],
            *[_value_text(r["metrics"].get(m)) for m in metrics],
            f"{r['gpuHours']:.2f}" if r["gpuHours"] is not None else fmt.NONE,
            str(r["preemptions"]),
        ])
    return fmt.render_table(headers, body)


def sweep_list_table(sweeps: Iterable[Obj], now: dt.datetime, all_namespaces: bool) -> str:
    headers = [*(["NAMESPACE"] if all_namespaces else []), "NAME", "PHASE", "TRIALS", "ACTIVE",
               "METRIC", "BEST", "VALUE", "AGE"]
    body = []
    for s in sweeps:
        meta, st = s.get("metadata") or {}, s.get("status") or {}
        best = st.get("best") or {}
        body.append([*([str(meta.get("namespace"))] if all_namespaces else []),
                     str(meta.get("name")), st.get("phase") or "Pending",
                     st.get("summary") or fmt.NONE, str(st.get("activeTrials", 0)),
                     str(_get(s.get("spec"), "objective.metric") or "evalLoss"),
                     best.get("name") or fmt.NONE, _value_text(best.get("value")),
                     fmt.age(meta.get("creationTimestamp"), now)])
    return fmt.render_table(headers, body)


def sweep_summary(sweep: Obj) -> list[tuple[str, str]]:
    spec, st = sweep.get("spec") or {}, sweep.get("status") or {}
    search = spec.get("search") or {}
    objective = spec.get("objective") or {}
    metric = objective.get("metric") or "evalLoss"
    direction = objective.get("direction") or (
        "minimize" if metric in MINIMIZED_METRICS else "maximize")
    lines = [("Phase", st.get("phase") or "Pending"),
             ("Trials", f"{st.get('summary') or '0/0'} finished, "
                        f"{st.get('activeTrials', 0)} active, maxParallel "
                        f"{spec.get('maxParallel', 1)}"),
             ("Search", search.get("strategy", "grid") + (
                 f" ({search.get('trials')} trials, seed {search.get('seed', 0)})"
                 if search.get("strategy") == "random" else "")),
             ("Objective", f"{direction} {metric}")]
    for p in spec.get("parameters") or []:
        values = p.get("values")
        rng = p.get("range") or {}
        lines.append((f"  {p.get('path')}", ", ".join(_value_text(v) for v in values) if values
                      else f"{rng.get('scale', 'linear')} [{rng.get('min')}, {rng.get('max')}]"))
    es = spec.get("earlyStop")
    if es:
        lines.append(("Early stop", f"after {es.get('afterSteps')} steps, loss worse than the "
                                    f"best by more than {es.get('margin', 0)}"))
    best = st.get("best")
    if best:
        lines.append(("Best", f"{best.get('name')} {best.get('metric')}="
                              f"{_value_text(best.get('value'))}"))
    for c in st.get("conditions") or []:
        lines.append((f"Condition {c.get('type')}",
                      f"{c.get('status')} {c.get('reason', '')}: {c.get('message', '')}"))
    return lines


def sweep_describe_text(sweep: Obj, rows: Sequence[Mapping[str, Any]]) -> str:
    meta = sweep.get("metadata") or {}
    width = max(len(k) for k, _ in sweep_summary(sweep))
    out = [f"FineTuneSweep {meta.get('namespace')}/{meta.get('name')}"]
    out += [f"{k.ljust(width)}  {v}" for k, v in sweep_summary(sweep)]
    out.append("")
    out.append(compare_table(rows) if rows else "No trials yet.\n")
    return "\n".join(out).rstrip("\n") + "\n"
