"""The console's pages as view models: API objects (plain dicts as the API server returns them),
the curves' history and the time in, dicts of texts, numbers and SVG out. Pure: no API call, no
HTML but the charts. Built on the view layer the kubectl plugin uses (``finetune_operator.view``:
phase, reason, progress, ETA, queue position, describe's fields, top's quota rows, compare's
ranking), so the console and ``kubectl finetune`` never disagree."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from finetune_api.labels import SWEEP_LABEL
from finetune_api.sweep import MINIMIZED_METRICS
from finetune_api.times import parse_time
from finetune_operator.console import charts
from finetune_operator.console.history import Curve
from finetune_operator.console.i18n import field_label, phase_text, text
from finetune_operator.view.cells import number, value_text
from finetune_operator.view.compare import compare_rows, compare_table, gpu_hours_so_far
from finetune_operator.view.describe import (
    Field,
    JobDescription,
    describe,
    describe_line,
    location_of,
)
from finetune_operator.view.jobs import (
    Job,
    job_row,
    phase_of,
    place_text,
    priority_of,
    queue_place,
    status_of,
    total_gpus,
)
from finetune_operator.view.sweeps import sweep_row
from finetune_operator.view.top import top_rows

FINISHED = ("Succeeded", "Failed")
# the bands a console offers, most urgent first (the chart's PriorityClasses)
BAND_ORDER = ("finetune-critical", "finetune-high", "finetune-normal", "finetune-low")


def band_key(band: str) -> tuple[int, str]:
    """Most urgent first: the chart's bands in their order, any other after them by name."""
    return (BAND_ORDER.index(band) if band in BAND_ORDER else len(BAND_ORDER), band)


def percent(job: Job) -> int | None:
    p = status_of(job).get("progress") or {}
    step, total = p.get("step"), p.get("totalSteps")
    if isinstance(step, int) and isinstance(total, int) and total > 0:
        return max(0, min(100, 100 * step // total))
    return 100 if phase_of(job) == "Succeeded" else None


def _uid(job: Job) -> str:
    return str((job.get("metadata") or {}).get("uid") or "")


def loss_points(curve: Curve) -> list[tuple[float, float]]:
    return [(p.step, p.loss) for p in curve.points if p.loss is not None]


def job_list_row(job: Job, now: dt.datetime, curve: Curve, lang: str) -> dict[str, Any]:
    """One row of My jobs: the plugin's row, the phase in the reader's language, the progress
    as a percentage for the bar and the loss sparkline."""
    row: dict[str, Any] = dict(job_row(job, now))
    row.update(uid=_uid(job), phaseText=phase_text(lang, row["phase"]), percent=percent(job),
               sparkline=charts.sparkline(loss_points(curve)),
               key=f"{row['namespace']}/{row['name']}")
    return row


def jobs_page(jobs: Iterable[Job], now: dt.datetime, curves: Mapping[str, Curve],
              lang: str) -> list[dict[str, Any]]:
    """My jobs: every row, by namespace then newest first."""
    rows = [job_list_row(j, now, curves.get(_uid(j)) or Curve(), lang) for j in jobs]
    rows.sort(key=lambda r: (r["namespace"], r["created"] or "", r["name"]), reverse=False)
    rows.sort(key=lambda r: r["namespace"])
    return rows


def timeline(job: Job, curve: Curve, events: Sequence[Mapping[str, Any]],
             lang: str) -> list[dict[str, Any]]:
    """The checkpoint timeline: each checkpoint, attempt start and preemption the curve saw, in
    step order, with when it was."""
    out: list[dict[str, Any]] = []
    attempts: dict[int, int] = {}
    for p in curve.points:
        attempts.setdefault(p.attempt, p.step)
    for a, first in list(attempts.items()):  # a later attempt starts at its checkpoint
        earlier = [m.step for m in curve.marks if m.kind == "checkpoint" and m.attempt < a
                   and m.step <= first]
        if earlier:
            attempts[a] = max(earlier)
        elif a == 1:  # the first attempt starts at step 0, seen from its start or not
            attempts[a] = 0
    for a, step in sorted(attempts.items()):
        out.append({"kind": "attempt", "step": step, "attempt": a,
                    "text": text(lang, "job.attempt", n=a), "at": ""})
    for m in curve.marks:
        out.append({"kind": m.kind, "step": m.step, "attempt": m.attempt, "at": m.at,
                    "text": text(lang, "job.checkpoint", step=m.step) if m.kind == "checkpoint"
                    else text(lang, "job.preempted")})
    ck = status_of(job).get("checkpoint") or {}
    if isinstance(ck.get("step"), int) and not any(
            e["kind"] == "checkpoint" and e["step"] == ck["step"] for e in out):
        out.append({"kind": "checkpoint", "step": ck["step"], "attempt": None,
                    "at": str(ck.get("savedAt") or ""),
                    "text": text(lang, "job.checkpoint", step=ck["step"])})
    order = {"attempt": 0, "checkpoint": 1, "preemption": 2}
    out.sort(key=lambda e: (e["step"], order.get(e["kind"], 3)))
    return out


def curve_charts(job: Job, curve: Curve, lang: str) -> dict[str, str]:
    """The job's charts (SVG): loss per attempt with checkpoint and preemption markers, the
    learning rate and tokens/s. No evaluation-loss line: the trainer's progress reports carry
    the training loss only (``reports/model.py`` ``ProgressReport``), the evaluation loss comes
    once, at the end (:func:`eval_note`)."""
    markers = [charts.Marker(m.step, m.kind, text(lang, "job.checkpoint", step=m.step)
                             if m.kind == "checkpoint" else text(lang, "job.preempted"))
               for m in curve.marks]
    by_attempt: dict[int, list[tuple[float, float]]] = {}
    for p in curve.points:
        if p.loss is not None:
            by_attempt.setdefault(p.attempt, []).append((p.step, p.loss))
    series: list[tuple[str, Sequence[tuple[float, float]]]] = [
        (text(lang, "job.attempt", n=a), pts) for a, pts in sorted(by_attempt.items())]
    lr = [(p.step, p.lr) for p in curve.points if p.lr is not None]
    tps = [(p.step, p.tps) for p in curve.points if p.tps is not None]
    return {
        "loss": charts.line_chart(series, title=text(lang, "job.loss"), markers=markers,
                                  chart_id="loss-chart"),
        "lr": charts.line_chart([(text(lang, "job.lr"), lr)], title=text(lang, "job.lr"),
                                chart_id="lr-chart", height=160),
        "tps": charts.line_chart([(text(lang, "job.tokens"), tps)],
                                 title=text(lang, "job.tokens"), chart_id="tps-chart",
                                 height=160),
    }


def eval_note(job: Job, lang: str) -> str:
    """What the page says about the evaluation loss: never reported during training (so no
    curve of it), and its final value once the trainer's termination message gave one."""
    note = text(lang, "job.eval_during")
    metrics = (status_of(job).get("output") or {}).get("metrics") or {}
    final = (status_of(job).get("progress") or {}).get("step")
    value = metrics.get("evalLoss")
    if isinstance(value, int | float) and not isinstance(value, bool):
        note += " " + text(lang, "job.eval_final", value=number(value),
                           step=final if isinstance(final, int) else "?")
    return note


def describe_in(job: Job, events: Sequence[Mapping[str, Any]], now: dt.datetime,
                lang: str) -> JobDescription:
    """``describe``'s view with its labels (and the phase) in the reader's language; the other
    values as the plugin writes them (numbers, paths, spec words)."""
    d = describe(job, events, now)
    d["spec"] = [Field(label=field_label(lang, f["label"]), value=f["value"]) for f in d["spec"]]
    d["status"] = [Field(label=field_label(lang, f["label"]),
                         value=phase_text(lang, f["value"]) if f["label"] == "Phase"
                         else f["value"]) for f in d["status"]]
    return d


def clone_manifest(job: Job) -> dict[str, Any]:
    """The job as a new one would be submitted: its spec (without suspend), a free name."""
    meta = job.get("metadata") or {}
    spec = {k: v for k, v in (job.get("spec") or {}).items() if k != "suspend"}
    return {"apiVersion": job.get("apiVersion", "finetune.dev/v1alpha1"),
            "kind": job.get("kind", "FineTuneJob"),
            "metadata": {"name": f"{meta.get('name', 'job')}-copy"[:63],
                         "namespace": meta.get("namespace")},
            "spec": spec}


def job_yaml(job: Job) -> str:
    """What "Copy YAML" copies: apiVersion, kind, name, namespace, labels and the spec."""
    meta = job.get("metadata") or {}
    slim = {"apiVersion": job.get("apiVersion"), "kind": job.get("kind"),
            "metadata": {k: meta[k] for k in ("name", "namespace", "labels") if meta.get(k)},
            "spec": job.get("spec") or {}}
    return yaml.safe_dump(slim, sort_keys=False, allow_unicode=True)


def actions(job: Job) -> list[str]:
    """What the page offers: suspend while it may run, resume while suspended (or asked to be),
    and always clone, copy and delete."""
    phase, suspended = phase_of(job), bool((job.get("spec") or {}).get("suspend"))
    out = []
    if phase not in FINISHED:
        out.append("resume" if suspended else "suspend")
    return [*out, "clone", "copy_yaml", "delete"]


def job_page(job: Job, events: Sequence[Mapping[str, Any]], now: dt.datetime, curve: Curve,
             lang: str, source: str = "history") -> dict[str, Any]:
    """The Job page: describe's view (spec, status, conditions, events), the row, the charts,
    the timeline, the output location and the actions. ``source``: where the curve came from,
    ``prometheus`` or ``history`` (the console's record)."""
    loc = location_of(job) if phase_of(job) == "Succeeded" else None
    progress = status_of(job).get("progress") or {}
    first = curve.points[0].at if curve.points else ""
    return {
        "row": job_list_row(job, now, curve, lang),
        "describe": describe_in(job, events, now, lang),
        "charts": curve_charts(job, curve, lang),
        "points": len(loss_points(curve)),
        "firstPointAt": first,
        "source": text(lang, "source.prometheus") if source == "prometheus" else (
            text(lang, "source.history", at=first) if first else ""),
        "evalNote": eval_note(job, lang),
        "tokensPerSecond": number(progress.get("tokensPerSecond")),
        "learningRate": number(progress.get("learningRate")),
        "timeline": timeline(job, curve, events, lang),
        "output": {"line": describe_line(job), "claim": loc.claim if loc else None,
                   "paths": list(loc.outputs) if loc else [],
                   "uris": [u for u in ((status_of(job).get("output") or {}).get("adapterUri"),
                                        (status_of(job).get("output") or {}).get("mergedUri"))
                            if u]},
        "actions": actions(job),
        "yaml": job_yaml(job),
        "clone": clone_manifest(job),
    }


def _week_start(now: dt.datetime) -> dt.datetime:
    day = now.astimezone(dt.UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    return day - dt.timedelta(days=day.weekday())


def lost_gpu_hours(job: Job, now: dt.datetime) -> float:
    """GPU-hours lost to preemption, estimated: the steps redone after preemptions
    (``status.lostSteps``) at the job's average GPU-hours per step so far."""
    st = status_of(job)
    lost = int(st.get("lostSteps") or 0)
    step = int((st.get("progress") or {}).get("step") or 0)
    hours = gpu_hours_so_far(job, now)
    if not lost or not step or hours is None:
        return 0.0
    return hours / (step + lost) * lost


def team_page(jobs: Sequence[Job], quotas: Sequence[Mapping[str, Any]], now: dt.datetime,
              namespaces: Sequence[str]) -> dict[str, Any]:
    """Team: GPUs in use against each quota the user can read; the queue by band (counts and
    GPUs; this user's own jobs by name, nothing of anyone else's); finished this week; GPU-hours
    lost to preemption."""
    quota_rows = top_rows(jobs, quotas, namespaces=namespaces)
    bands: dict[str, dict[str, Any]] = {}
    for j in jobs:
        if phase_of(j) not in ("Queued", "Pending"):
            continue
        b = bands.setdefault(priority_of(j), {"band": priority_of(j), "jobs": 0, "gpus": 0,
                                              "entries": []})
        q = status_of(j).get("queue") or {}
        b["jobs"] += 1
        b["gpus"] += total_gpus(j)
        b["entries"].append({"namespace": (j.get("metadata") or {}).get("namespace"),
                             "name": (j.get("metadata") or {}).get("name"),
                             "position": queue_place(q), "place": place_text(q),
                             "reason": q.get("reason", "")})
    for b in bands.values():
        b["entries"].sort(key=lambda e: (e["position"] is None, e["position"] or 0, e["name"]))
    week = _week_start(now)
    finished = []
    for j in jobs:
        done = parse_time(status_of(j).get("completionTime"))
        if phase_of(j) in FINISHED and done is not None and done >= week:
            finished.append({"namespace": (j.get("metadata") or {}).get("namespace"),
                             "name": (j.get("metadata") or {}).get("name"),
                             "phase": phase_of(j), "completed": done.isoformat()})
    lost = sum(lost_gpu_hours(j, now) for j in jobs)
    return {"quotas": quota_rows, "bands": [bands[k] for k in sorted(bands, key=band_key)],
            "finished": sorted(finished, key=lambda f: f["completed"], reverse=True),
            "lostGpuHours": round(lost, 2),
            "preemptions": sum(int(status_of(j).get("preemptions") or 0) for j in jobs)}


def _param_values(rows: Sequence[Mapping[str, Any]], path: str) -> list[float] | None:
    out = []
    for r in rows:
        v = r["parameters"].get(path)
        if isinstance(v, bool) or not isinstance(v, int | float):
            return None
        out.append(float(v))
    return out


def sweep_page(sweep: Mapping[str, Any], trials: Sequence[Job], now: dt.datetime,
               lang: str) -> dict[str, Any]:
    """One sweep: its row, the trials ranked by the objective (best first, marked) and, per
    numeric parameter, a chart of the metric against it."""
    objective = (sweep.get("spec") or {}).get("objective") or {}
    metric = str(objective.get("metric") or "evalLoss")
    direction = objective.get("direction")
    minimize = metric in MINIMIZED_METRICS if direction is None else direction == "minimize"
    rows = compare_rows(trials, now, metric, minimize)
    table = compare_table(rows)
    best = next((r["name"] for r in rows if r["rank"] == 1), None)
    plots = []
    for col in table["parameters"]:
        xs = _param_values(rows, col["path"])
        if xs is None:
            continue
        pts = [(x, float(r["value"]), r["name"]) for x, r in zip(xs, rows, strict=True)
               if r["value"] is not None]
        log_x = bool(xs) and min(xs) > 0 and max(xs) / min(xs) >= 100
        plots.append(charts.scatter(pts, title=text(lang, "sweeps.chart", metric=metric,
                                                     param=col["label"]),
                                    best=best, log_x=log_x))
    return {"row": dict(sweep_row(sweep, now)), "table": table, "best": best, "plots": plots,
            "values": {r["name"]: value_text(r["value"]) for r in rows}}


def sweep_trials(sweep: Mapping[str, Any], jobs: Iterable[Job]) -> list[Job]:
    name = (sweep.get("metadata") or {}).get("name")
    return [j for j in jobs
            if ((j.get("metadata") or {}).get("labels") or {}).get(SWEEP_LABEL) == name]
