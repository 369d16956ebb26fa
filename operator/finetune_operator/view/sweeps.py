"""FineTuneSweeps: a row per sweep (``sweep list``) and one sweep's summary with its ranked
trials (``sweep describe``)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from finetune_api.sweep import MINIMIZED_METRICS
from finetune_operator.view.cells import NONE, age, value_text
from finetune_operator.view.compare import CompareRow, CompareTable, compare_table
from finetune_operator.view.describe import Field

Sweep = Mapping[str, Any]


class SweepRow(TypedDict):
    namespace: str
    name: str
    phase: str
    trials: str  # finished/total, e.g. "3/8"
    active: str
    metric: str  # the objective
    best: str  # the best trial so far
    value: str  # its metric value
    age: str


class SweepDescription(TypedDict):
    namespace: str
    name: str
    fields: list[Field]  # parameter lines are labelled by their path, indented by two spaces
    trials: CompareTable


def _objective_metric(sweep: Sweep) -> str:
    return str(((sweep.get("spec") or {}).get("objective") or {}).get("metric") or "evalLoss")


def sweep_row(sweep: Sweep, now: dt.datetime) -> SweepRow:
    meta, st = sweep.get("metadata") or {}, sweep.get("status") or {}
    best = st.get("best") or {}
    return SweepRow(
        namespace=str(meta.get("namespace")), name=str(meta.get("name")),
        phase=st.get("phase") or "Pending", trials=st.get("summary") or NONE,
        active=str(st.get("activeTrials", 0)), metric=_objective_metric(sweep),
        best=best.get("name") or NONE, value=value_text(best.get("value")),
        age=age(meta.get("creationTimestamp"), now))


def sweep_fields(sweep: Sweep) -> list[Field]:
    """Phase, trial counts, search, objective, the parameters, early stop, the best trial and
    the conditions."""
    spec, st = sweep.get("spec") or {}, sweep.get("status") or {}
    search = spec.get("search") or {}
    objective = spec.get("objective") or {}
    metric = objective.get("metric") or "evalLoss"
    direction = objective.get("direction") or (
        "minimize" if metric in MINIMIZED_METRICS else "maximize")
    lines = [Field(label="Phase", value=st.get("phase") or "Pending"),
             Field(label="Trials", value=f"{st.get('summary') or '0/0'} finished, "
                                         f"{st.get('activeTrials', 0)} active, maxParallel "
                                         f"{spec.get('maxParallel', 1)}"),
             Field(label="Search", value=search.get("strategy", "grid") + (
                 f" ({search.get('trials')} trials, seed {search.get('seed', 0)})"
                 if search.get("strategy") == "random" else "")),
             Field(label="Objective", value=f"{direction} {metric}")]
    for p in spec.get("parameters") or []:
        values = p.get("values")
        rng = p.get("range") or {}
        lines.append(Field(label=f"  {p.get('path')}",
                           value=", ".join(value_text(v) for v in values) if values
                           else f"{rng.get('scale', 'linear')} [{rng.get('min')}, "
                                f"{rng.get('max')}]"))
    es = spec.get("earlyStop")
    if es:
        lines.append(Field(label="Early stop", value=f"after {es.get('afterSteps')} steps, loss "
                           f"worse than the best by more than {es.get('margin', 0)}"))
    best = st.get("best")
    if best:
        lines.append(Field(label="Best", value=f"{best.get('name')} {best.get('metric')}="
                                               f"{value_text(best.get('value'))}"))
    for c in st.get("conditions") or []:
        lines.append(Field(label=f"Condition {c.get('type')}",
                           value=f"{c.get('status')} {c.get('reason', '')}: "
                                 f"{c.get('message', '')}"))
    return lines


def describe_sweep(sweep: Sweep, rows: Sequence[CompareRow]) -> SweepDescription:
    meta = sweep.get("metadata") or {}
    return SweepDescription(namespace=str(meta.get("namespace")), name=str(meta.get("name")),
                            fields=sweep_fields(sweep), trials=compare_table(rows))
