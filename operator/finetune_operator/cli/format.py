"""Pure formatting of the plugin's output: FineTuneJob dicts (as the API server returns them)
-> table rows and text. No API calls; the time is passed in."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from finetune_api.quantity import quantity
from finetune_api.times import parse_time

Job = Mapping[str, Any]

LIST_COLUMNS = ("NAME", "PHASE", "PRIORITY", "GPUS", "QUEUE", "REASON", "PROGRESS", "LOSS",
                "ETA", "PREEMPTIONS", "AGE")
REASON_WIDTH = 60  # REASON is cut here in the default table (-o wide shows it whole)
NONE = "-"


# ------------------------------------------------------------------ small pieces


def human_duration(seconds: float | None) -> str:
    """kubectl's short durations: 45s, 3m20s, 47m, 5h12m, 20h, 3d4h, 9d, 2y."""
    if seconds is None:
        return NONE
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def age(timestamp: Any, now: dt.datetime) -> str:
    t = parse_time(timestamp)
    return human_duration((now - t).total_seconds()) if t else NONE


def number(value: Any, digits: int = 4) -> str:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NONE
    return f"{value:.{digits}g}"


def cut(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def _status(job: Job) -> Mapping[str, Any]:
    return job.get("status") or {}


def _spec(job: Job) -> Mapping[str, Any]:
    return job.get("spec") or {}


def condition(job: Job, type_: str) -> Mapping[str, Any]:
    for c in _status(job).get("conditions") or []:
        if c.get("type") == type_:
            return dict(c)
    return {}


def phase_of(job: Job) -> str:
    return str(_status(job).get("phase") or "Pending")


def priority_of(job: Job) -> str:
    return str(_spec(job).get("priorityClassName") or _status(job).get("effectivePriorityClass")
               or NONE)


def gpus_per_node(job: Job) -> int:
    res = _spec(job).get("resources") or {}
    return int(res.get("gpus", 1))


def nodes_of(job: Job) -> int:
    return int((_spec(job).get("resources") or {}).get("nodes", 1))


def total_gpus(job: Job) -> int:
    return gpus_per_node(job) * nodes_of(job)


def gpus_text(job: Job) -> str:
    """``2``, or ``4x2`` (GPUs per node x nodes) for a multi-node job."""
    n = nodes_of(job)
    return f"{gpus_per_node(job)}x{n}" if n > 1 else str(gpus_per_node(job))


def progress_text(job: Job) -> str:
    p = _status(job).get("progress") or {}
    if not p:
        return NONE
    step, total = p.get("step", 0), p.get("totalSteps")
    if total:
        return f"{step}/{total} ({100 * step // total}%)"
    return str(step)


def eta_text(job: Job) -> str:
    if phase_of(job) not in ("Running", "Admitted"):
        return NONE
    p = _status(job).get("progress") or {}
    eta = p.get("etaSeconds")
    return human_duration(eta) if isinstance(eta, int | float) else NONE


def queue_text(job: Job) -> str:
    q = _status(job).get("queue") or {}
    pos = q.get("position")
    return str(pos) if phase_of(job) == "Queued" and pos is not None else NONE


def reason_text(job: Job) -> str:
    """Why the job is where it is, for the phases where that is not obvious."""
    st, phase = _status(job), phase_of(job)
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


# ------------------------------------------------------------------ tables


def render_table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces (what kubectl prints)."""
    body = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [list(headers), *body]]
    return "\n".join(lines) + "\n"


def job_row(job: Job, now: dt.datetime, *, wide: bool = False) -> dict[str, str]:
    """One row of ``kubectl finetune list``, keyed by column name (NAMESPACE included)."""
    meta = job.get("metadata") or {}
    reason = reason_text(job)
    return {
        "NAMESPACE": str(meta.get("namespace", "")),
        "NAME": str(meta.get("name", "")),
        "PHASE": phase_of(job),
        "PRIORITY": priority_of(job),
        "GPUS": gpus_text(job),
        "QUEUE": queue_text(job),
        "REASON": (reason if wide else cut(reason, REASON_WIDTH)) or NONE,
        "PROGRESS": progress_text(job),
        "LOSS": number((_status(job).get("progress") or {}).get("loss")),
        "ETA": eta_text(job),
        "PREEMPTIONS": str(_status(job).get("preemptions", 0)),
        "AGE": age(meta.get("creationTimestamp"), now),
    }


def list_table(jobs: Iterable[Job], now: dt.datetime, *, all_namespaces: bool = False,
               wide: bool = False) -> str:
    cols = (("NAMESPACE",) if all_namespaces else ()) + LIST_COLUMNS
    rows = sorted((job_row(j, now, wide=wide) for j in jobs),
                  key=lambda r: (r["NAMESPACE"], r["NAME"]))
    return render_table(cols, [[r[c] for c in cols] for r in rows])


# ------------------------------------------------------------------ describe


def _source_text(source: Mapping[str, Any]) -> str:
    if "pvc" in source:
        pvc = source["pvc"]
        return f"pvc {pvc.get('claimName')}:{pvc.get('path', '') or '/'}"
    if "configMap" in source:
        cm = source["configMap"]
        return f"configMap {cm.get('name')}/{cm.get('key')}"
    if "hub" in source:
        hub = source["hub"]
        extra = hub.get("revision") or hub.get("split")
        return f"hub {hub.get('repo')}" + (f" ({extra})" if extra else "")
    return NONE


def spec_summary(job: Job) -> list[tuple[str, str]]:
    spec = _spec(job)
    model, data = spec.get("model") or {}, spec.get("dataset") or {}
    tr, res = spec.get("training") or {}, spec.get("resources") or {}
    method = str(spec.get("method", "lora"))
    if method == "full":
        method_text = "full"
    else:
        lora = spec.get("lora") or {}
        method_text = f"{method} (rank {lora.get('rank', 16)}, alpha {lora.get('alpha', 32)})"
        q = spec.get("quantization")
        if q:
            method_text += f", {q.get('bits', 4)}-bit {q.get('type', 'nf4')}"
    length = []
    if tr.get("maxSteps"):
        length.append(f"maxSteps {tr['maxSteps']}")
    if tr.get("epochs"):
        length.append(f"epochs {tr['epochs']}")
    training = ", ".join([*length, f"lr {tr.get('learningRate', 2e-4)}",
                          f"batch {tr.get('batchSize', 4)} x accumulation "
                          f"{tr.get('gradientAccumulationSteps', 1)}",
                          f"precision {tr.get('precision', 'bf16')}"])
    resources = (f"{res.get('gpus', 1)} x {res.get('gpuResource') or 'GPU'} per node, "
                 f"{res.get('nodes', 1)} node(s), cpu {res.get('cpu', '2')}, "
                 f"memory {res.get('memory', '8Gi')}")
    if res.get("nodeSelector"):
        resources += ", nodeSelector " + ",".join(
            f"{k}={v}" for k, v in sorted(res["nodeSelector"].items()))
    ck = spec.get("checkpoint") or {}
    storage = ck.get("storage") or {}
    where = (f"existing claim {storage['claimName']}" if storage.get("claimName")
             else f"own PVC {storage.get('size', '20Gi')}"
             + (f" ({storage['storageClassName']})" if storage.get("storageClassName") else "")
             + (", deleted with the job" if storage.get("whenDeleted") == "Delete"
                else ", kept after the job"))
    return [
        ("Model", f"{model.get('name', NONE)} from {_source_text(model.get('source') or {})}"),
        ("Dataset", f"{_source_text(data.get('source') or {})}, format "
                    f"{data.get('format', 'messages')}"),
        ("Method", method_text),
        ("Training", training),
        ("Resources", resources),
        ("Priority", priority_of(job)),
        ("Checkpoints", f"every {ck.get('intervalSteps', 200)} steps, keep {ck.get('keep', 2)}, "
                        f"{where}"),
        ("Suspend", str(bool(spec.get("suspend", False))).lower()),
        ("Backoff limit", str(spec.get("backoffLimit", 3))),
    ]


def status_summary(job: Job, now: dt.datetime) -> list[tuple[str, str]]:
    st = _status(job)
    out = [("Phase", phase_of(job))]
    reason = reason_text(job)
    if reason:
        out.append(("Reason", reason))
    if phase_of(job) == "Queued":
        out.append(("Queue position", queue_text(job)))
    p = st.get("progress") or {}
    if p:
        bits = [progress_text(job)]
        if p.get("epoch") is not None:
            bits.append(f"epoch {number(p['epoch'], 3)}")
        if p.get("loss") is not None:
            bits.append(f"loss {number(p['loss'])}")
        if p.get("tokensPerSecond") is not None:
            bits.append(f"{number(p['tokensPerSecond'], 6)} tokens/s")
        if eta_text(job) != NONE:
            bits.append(f"ETA {eta_text(job)}")
        if p.get("updatedAt"):
            bits.append(f"updated {age(p['updatedAt'], now)} ago")
        out.append(("Progress", ", ".join(bits)))
    ck = st.get("checkpoint")
    out.append(("Checkpoint", NONE if not ck else
                f"step {ck.get('step', 0)} at {ck.get('path', NONE)}"
                + (f", saved {age(ck['savedAt'], now)} ago" if ck.get("savedAt") else "")
                + (f" in {number(ck['saveSeconds'], 3)}s" if ck.get("saveSeconds") else "")))
    limit = _spec(job).get("backoffLimit", 3)
    out.append(("Counters", f"preemptions {st.get('preemptions', 0)}, failures "
                f"{st.get('failures', 0)}/{limit}, attempt {st.get('attempt', 0)}, "
                f"lostSteps {st.get('lostSteps', 0)}"))
    for key, label in (("startTime", "Started"), ("completionTime", "Completed")):
        if st.get(key):
            out.append((label, f"{st[key]} ({age(st[key], now)} ago)"))
    o = st.get("output")
    if o:
        metrics = ", ".join(f"{k}={number(v)}" for k, v in sorted((o.get("metrics") or {})
                                                                  .items()))
        out.append(("Output", f"adapter {o.get('adapterPath') or NONE}, merged "
                    f"{o.get('mergedPath') or NONE}" + (f", {metrics}" if metrics else "")))
    from finetune_operator.cli.output import (
        describe_line,  # the claim, full path and copy-out command
    )

    if (where := describe_line(job)) is not None:
        out.append(("Output claim", where))
    return out


def event_time(ev: Mapping[str, Any]) -> str:
    return str(ev.get("lastTimestamp") or ev.get("eventTime")
               or (ev.get("metadata") or {}).get("creationTimestamp") or "")


def event_order(ev: Mapping[str, Any]) -> tuple[str, int]:
    """Chronological: timestamps have whole seconds, resourceVersion breaks the ties."""
    rv = str((ev.get("metadata") or {}).get("resourceVersion") or "0")
    return event_time(ev), int(rv) if rv.isdigit() else 0


def describe_text(job: Job, events: Sequence[Mapping[str, Any]], now: dt.datetime,
                  max_events: int = 20) -> str:
    meta = job.get("metadata") or {}
    lines = [f"Name:         {meta.get('name')}", f"Namespace:    {meta.get('namespace')}",
             f"Created:      {meta.get('creationTimestamp')} "
             f"({age(meta.get('creationTimestamp'), now)} ago)", "Spec:"]
    width = 16
    lines += [f"  {k + ':':<{width}}{v}" for k, v in spec_summary(job)]
    lines.append("Status:")
    lines += [f"  {k + ':':<{width}}{v}" for k, v in status_summary(job, now)]
    conds = _status(job).get("conditions") or []
    lines.append("Conditions:" + ("" if conds else " <none>"))
    if conds:
        table = render_table(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), [
            [c.get("type", ""), c.get("status", ""), c.get("reason", "") or NONE,
             age(c.get("lastTransitionTime"), now), c.get("message", "")] for c in conds])
        lines += ["  " + line for line in table.splitlines()]
    recent = sorted(events, key=event_order)[-max_events:]
    lines.append("Events:" + ("" if recent else " <none>"))
    if recent:
        table = render_table(("TYPE", "REASON", "AGE", "OBJECT", "MESSAGE"), [
            [e.get("type", ""), e.get("reason", ""), age(event_time(e), now),
             f"{(e.get('involvedObject') or {}).get('kind', '')}/"
             f"{(e.get('involvedObject') or {}).get('name', '')}",
             " ".join(str(e.get("message", "")).split())] for e in recent])
        lines += ["  " + line for line in table.splitlines()]
    return "\n".join(lines) + "\n"


def describe_object(job: Job, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """What ``describe -o json|yaml`` prints: the job and its recent events."""
    return {"job": dict(job), "events": [
        {"type": e.get("type"), "reason": e.get("reason"), "time": event_time(e),
         "object": f"{(e.get('involvedObject') or {}).get('kind', '')}/"
                   f"{(e.get('involvedObject') or {}).get('name', '')}",
         "message": e.get("message")} for e in sorted(events, key=event_order)]}


# ------------------------------------------------------------------ top

# Phases whose pods hold GPUs (the same sets as the operator's metrics).
ALLOCATED_PHASES = frozenset({"Admitted", "Running", "Preempting"})


def _quantity(value: Any) -> float | None:
    """A GPU count as ResourceQuota reports it ("4", "4000m"); None when absent/odd."""
    try:
        return None if value is None else float(quantity(value))
    except ValueError:
        return None


def top_rows(jobs: Iterable[Job], quotas: Iterable[Mapping[str, Any]],
             default_gpu_resource: str = "nvidia.com/gpu",
             namespaces: Iterable[str] = ()) -> list[dict[str, Any]]:
    """Per (namespace, GPU resource): GPUs held by FineTuneJobs vs the ResourceQuota, and the
    queue. ``namespaces`` are always listed (e.g. the one asked for with -n), even when empty."""
    rows: dict[tuple[str, str], dict[str, Any]] = {}

    def row(ns: str, res: str) -> dict[str, Any]:
        return rows.setdefault((ns, res), {
            "namespace": ns, "gpuResource": res, "allocated": 0, "quotaHard": None,
            "quotaUsed": None, "running": 0, "queued": 0, "queuedGpus": 0, "queue": []})

    for ns in namespaces:
        row(ns, default_gpu_resource)
    for q in quotas:
        ns = (q.get("metadata") or {}).get("namespace", "")
        hard = (q.get("status") or {}).get("hard") or (q.get("spec") or {}).get("hard") or {}
        used = (q.get("status") or {}).get("used") or {}
        for key, value in hard.items():
            if not key.startswith("requests.") or "/" not in key:
                continue
            r = row(ns, key.removeprefix("requests."))
            h, u = _quantity(value), _quantity(used.get(key))
            if h is not None:
                r["quotaHard"] = h if r["quotaHard"] is None else min(r["quotaHard"], h)
            if u is not None:
                r["quotaUsed"] = u if r["quotaUsed"] is None else max(r["quotaUsed"], u)
    for j in jobs:
        ns = (j.get("metadata") or {}).get("namespace", "")
        res = (_spec(j).get("resources") or {}).get("gpuResource") or default_gpu_resource
        r, phase = row(ns, res), phase_of(j)
        if phase in ALLOCATED_PHASES:
            r["allocated"] += total_gpus(j)
            r["running"] += 1
        elif phase in ("Queued", "Pending"):
            r["queued"] += 1
            r["queuedGpus"] += total_gpus(j)
            q = _status(j).get("queue") or {}
            r["queue"].append({"name": (j.get("metadata") or {}).get("name"),
                               "position": q.get("position"), "gpus": total_gpus(j),
                               "priority": priority_of(j), "reason": q.get("reason", "")})
    for r in rows.values():
        r["queue"].sort(key=lambda e: (e["position"] is None, e["position"] or 0, e["name"]))
        if r["quotaHard"] is not None:
            r["quotaFree"] = max(0.0, r["quotaHard"] - (r["quotaUsed"] or 0.0))
        else:
            r["quotaFree"] = None
    return [rows[k] for k in sorted(rows)]


def _count(v: float | None) -> str:
    if v is None:
        return NONE
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


def top_table(rows: Sequence[Mapping[str, Any]], *, wide: bool = False) -> str:
    headers = ["NAMESPACE", "RESOURCE", "ALLOCATED", "QUOTA", "QUOTA USED", "FREE", "RUNNING",
               "QUEUED", "QUEUED GPUS", "NEXT"]
    out = []
    for r in rows:
        queue = r["queue"]
        nxt = (", ".join(e["name"] for e in queue) if wide else
               (queue[0]["name"] if queue else NONE)) or NONE
        out.append([r["namespace"], r["gpuResource"], _count(r["allocated"]),
                    _count(r["quotaHard"]) if r["quotaHard"] is not None else "none",
                    _count(r["quotaUsed"]), _count(r["quotaFree"]), str(r["running"]),
                    str(r["queued"]), _count(r["queuedGpus"]), nxt])
    return render_table(headers, out)


# ------------------------------------------------------------------ structured output


def dump(obj: Any, fmt: str) -> str:
    """-o json | yaml."""
    if fmt == "json":
        return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return str(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def as_list(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several API objects as kubectl prints them with -o json: a v1 List."""
    return {"apiVersion": "v1", "kind": "List", "items": [dict(i) for i in items]}
