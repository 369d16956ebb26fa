"""One FineTuneJob as the list shows it: phase, priority, GPUs, queue position and the reason it
waits (or stopped), progress, loss, ETA, preemptions, age."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any, TypedDict

from finetune_operator.view.cells import NONE, age, human_duration, number

Job = Mapping[str, Any]


class JobRow(TypedDict):
    """A row of ``kubectl finetune list``: each column's text, the reason whole (the table cuts
    it), and the numbers behind the texts where a console sorts or draws with them."""

    namespace: str
    name: str
    phase: str
    priority: str  # spec.priorityClassName, else the one the operator assigned; "-" if none
    gpus: str  # GPUs per node, "8x4" (per node x nodes) for a multi-node job
    totalGpus: int
    queue: str  # the position while Queued, else "-"
    queuePosition: int | None
    reason: str  # why it is where it is; "" where the phase says it all
    progress: str  # "1200/3000 (40%)", the step alone without a total, "-" before any report
    step: int | None
    totalSteps: int | None
    loss: str
    eta: str  # while Admitted or Running
    etaSeconds: float | None
    preemptions: str
    age: str
    created: str | None


def status_of(job: Job) -> Mapping[str, Any]:
    return job.get("status") or {}


def spec_of(job: Job) -> Mapping[str, Any]:
    return job.get("spec") or {}


def condition(job: Job, type_: str) -> dict[str, Any]:
    """The job's condition of that type; {} when it has none."""
    for c in status_of(job).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def phase_of(job: Job) -> str:
    return str(status_of(job).get("phase") or "Pending")


def priority_of(job: Job) -> str:
    return str(spec_of(job).get("priorityClassName")
               or status_of(job).get("effectivePriorityClass") or NONE)


def gpus_per_node(job: Job) -> int:
    res = spec_of(job).get("resources") or {}
    return int(res.get("gpus", 1))


def nodes_of(job: Job) -> int:
    return int((spec_of(job).get("resources") or {}).get("nodes", 1))


def total_gpus(job: Job) -> int:
    return gpus_per_node(job) * nodes_of(job)


def gpus_text(job: Job) -> str:
    """``2``, or ``4x2`` (GPUs per node x nodes) for a multi-node job."""
    n = nodes_of(job)
    return f"{gpus_per_node(job)}x{n}" if n > 1 else str(gpus_per_node(job))


def progress_text(job: Job) -> str:
    p = status_of(job).get("progress") or {}
    if not p:
        return NONE
    step, total = p.get("step", 0), p.get("totalSteps")
    if total:
        return f"{step}/{total} ({100 * step // total}%)"
    return str(step)


def eta_seconds(job: Job) -> float | None:
    """The trainer's estimate of the time left, while the job holds its GPUs to run."""
    if phase_of(job) not in ("Running", "Admitted"):
        return None
    eta = (status_of(job).get("progress") or {}).get("etaSeconds")
    return eta if isinstance(eta, int | float) else None


def eta_text(job: Job) -> str:
    return human_duration(eta_seconds(job))


def queue_position(job: Job) -> int | None:
    """The place among the namespace's waiting jobs, while Queued and among the first 10."""
    pos = (status_of(job).get("queue") or {}).get("position")
    return pos if phase_of(job) == "Queued" and isinstance(pos, int) else None


def queue_place(queue: Mapping[str, Any]) -> int | None:
    """The place a ``status.queue`` states, for ordering: its position (1-10) or, further
    back, the place it is at least (``positionAtLeast``: 11)."""
    for key in ("position", "positionAtLeast"):
        if isinstance(got := queue.get(key), int):
            return got
    return None


def place_text(queue: Mapping[str, Any]) -> str:
    """"3", or "11+" for a job further back than the first 10, or "-"."""
    pos, later = queue.get("position"), queue.get("positionAtLeast")
    if isinstance(pos, int):
        return str(pos)
    return f"{later}+" if isinstance(later, int) else NONE


def queue_text(job: Job) -> str:
    return place_text(status_of(job).get("queue") or {}) if phase_of(job) == "Queued" else NONE


def reason_text(job: Job) -> str:
    """Why the job is where it is, for the phases where that is not obvious: the wait reason
    while Queued, the stop reason while Preempting, the Suspended or Failed condition."""
    st, phase = status_of(job), phase_of(job)
    if phase == "Pending":
        return "not seen by the operator yet"
    if phase == "Queued":
        return str((st.get("queue") or {}).get("reason") or condition(job, "Admitted")
                   .get("message") or "waiting for admission")
    if phase == "Admitted":
        return "creating pods"
    if phase == "Preempting":
        return str(condition(job, "Running").get("message") or "stopping gracefully")
    if phase == "Suspended":
        c = condition(job, "Suspended")
        return str(c.get("message") or "spec.suspend is true")
    if phase == "Failed":
        c = condition(job, "Failed")
        return f"{c.get('reason', 'Failed')}: {c.get('message', '')}".rstrip(": ")
    return ""


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def job_row(job: Job, now: dt.datetime) -> JobRow:
    """The list's view of one job."""
    meta = job.get("metadata") or {}
    p = status_of(job).get("progress") or {}
    created = meta.get("creationTimestamp")
    return JobRow(
        namespace=str(meta.get("namespace", "")),
        name=str(meta.get("name", "")),
        phase=phase_of(job),
        priority=priority_of(job),
        gpus=gpus_text(job),
        totalGpus=total_gpus(job),
        queue=queue_text(job),
        queuePosition=queue_position(job),
        reason=reason_text(job),
        progress=progress_text(job),
        step=_int(p.get("step")),
        totalSteps=_int(p.get("totalSteps")),
        loss=number(p.get("loss")),
        eta=eta_text(job),
        etaSeconds=eta_seconds(job),
        preemptions=str(status_of(job).get("preemptions", 0)),
        age=age(created, now),
        created=str(created) if created is not None else None,
    )


def job_rows(jobs: Iterable[Job], now: dt.datetime) -> list[JobRow]:
    """The list's rows, by namespace, then name."""
    return sorted((job_row(j, now) for j in jobs), key=lambda r: (r["namespace"], r["name"]))
