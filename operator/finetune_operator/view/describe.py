"""One FineTuneJob in detail (``kubectl finetune describe``): a summary of its spec, its status
(phase and reason, queue position, progress, checkpoint, counters, output and where to copy it
from), its conditions and its recent events (the job's and its pods')."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from finetune_api.job import FineTuneJob
from finetune_api.memory import spec_status
from finetune_api.spec import FineTuneJobSpec
from finetune_operator.jobs.build.output import OutputLocation, output_location
from finetune_operator.view.cells import NONE, age, number
from finetune_operator.view.jobs import (
    Job,
    eta_text,
    phase_of,
    priority_of,
    progress_text,
    queue_text,
    reason_text,
    spec_of,
    status_of,
)

Event = Mapping[str, Any]


class Field(TypedDict):
    """One line of a summary: ``Label: value``."""

    label: str
    value: str


class ConditionRow(TypedDict):
    type: str
    status: str
    reason: str
    age: str
    message: str


class EventRow(TypedDict):
    type: str
    reason: str
    age: str
    object: str  # Kind/name of the object the event is about
    message: str  # on one line


class JobDescription(TypedDict):
    name: str
    namespace: str
    created: str
    createdAge: str
    spec: list[Field]
    status: list[Field]
    conditions: list[ConditionRow]
    events: list[EventRow]  # the most recent, oldest first


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
    if "s3" in source:
        s3 = source["s3"]
        where = s3.get("key") or s3.get("prefix") or ""
        return (f"s3://{s3.get('bucket')}/{where}"
                + (f" (version {s3['versionId']})" if s3.get("versionId") else "")
                + (f" at {s3['endpoint']}" if s3.get("endpoint") else ""))
    return NONE


def spec_fields(job: Job) -> list[Field]:
    """The spec in a few lines, defaults filled in as the operator applies them."""
    spec = spec_of(job)
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
    if res.get("gpuMemory"):
        resources += f", gpuMemory {res['gpuMemory']} per GPU"
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
        Field(label="Model", value=f"{model.get('name', NONE)} from "
                                   f"{_source_text(model.get('source') or {})}"),
        Field(label="Dataset", value=f"{_source_text(data.get('source') or {})}, format "
                                     f"{data.get('format', 'messages')}"),
        Field(label="Method", value=method_text),
        Field(label="Training", value=training),
        Field(label="Resources", value=resources),
        Field(label="Priority", value=priority_of(job)),
        Field(label="Checkpoints", value=f"every {ck.get('intervalSteps', 200)} steps, keep "
                                         f"{ck.get('keep', 2)}, {where}"),
        Field(label="Suspend", value=str(bool(spec.get("suspend", False))).lower()),
        Field(label="Backoff limit", value=str(spec.get("backoffLimit", 3))),
    ]


def status_fields(job: Job, now: dt.datetime) -> list[Field]:
    """Phase and reason, queue position, progress, checkpoint, counters, times, output."""
    st = status_of(job)
    out = [Field(label="Phase", value=phase_of(job))]
    reason = reason_text(job)
    if reason:
        out.append(Field(label="Reason", value=reason))
    if phase_of(job) == "Queued":
        out.append(Field(label="Queue position", value=queue_text(job)))
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
        out.append(Field(label="Progress", value=", ".join(bits)))
    ck = st.get("checkpoint")
    out.append(Field(label="Checkpoint", value=NONE if not ck else
                     f"step {ck.get('step', 0)} at {ck.get('path', NONE)}"
                     + (f", saved {age(ck['savedAt'], now)} ago" if ck.get("savedAt") else "")
                     + (f" in {number(ck['saveSeconds'], 3)}s" if ck.get("saveSeconds")
                        else "")))
    limit = spec_of(job).get("backoffLimit", 3)
    out.append(Field(label="Counters", value=f"preemptions {st.get('preemptions', 0)}, failures "
                     f"{st.get('failures', 0)}/{limit}, attempt {st.get('attempt', 0)}, "
                     f"lostSteps {st.get('lostSteps', 0)}"))
    for key, label in (("startTime", "Started"), ("completionTime", "Completed")):
        if st.get(key):
            out.append(Field(label=label, value=f"{st[key]} ({age(st[key], now)} ago)"))
    o = st.get("output")
    if o:
        metrics = ", ".join(f"{k}={number(v)}" for k, v in sorted((o.get("metrics") or {})
                                                                  .items()))
        out.append(Field(label="Output", value=f"adapter {o.get('adapterPath') or NONE}, merged "
                         f"{o.get('mergedPath') or NONE}" + (f", {metrics}" if metrics else "")))
    if o and (o.get("adapterUri") or o.get("mergedUri")):
        out.append(Field(label="Output URIs", value=", ".join(
            f"{kind} {o[key]}" for kind, key in (("adapter", "adapterUri"),
                                                  ("merged", "mergedUri")) if o.get(key))))
    for src in st.get("sources") or []:  # exactly which bytes trained the model
        rev = src.get("revision") or "(a volume: no revision)"
        if src.get("versionId"):
            rev += f" version {src['versionId']}"
        out.append(Field(label=f"Source {src.get('source', '?')}",
                         value=f"{src.get('uri', NONE)} at {rev}"))
    if (where := describe_line(job)) is not None:
        out.append(Field(label="Output claim", value=where))
    if (gpu := gpu_memory_text(job)) is not None:
        out.append(Field(label="GPU memory", value=gpu))
    return out


_GPU_PARTS = ("weights", "gradients", "optimizer", "activations", "overhead", "margin")


def _gib(v: Any) -> str:
    ok = isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 2**60
    return f"{v / 2**30:.1f} GiB" if ok else "?"


def gpu_memory_text(job: Job) -> str | None:
    """The job's GPU memory estimate per GPU and its breakdown (status.gpuMemory; computed from
    spec.model.config when the operator has not written it yet), the cap the trainer set, or
    why there is none. None for a CPU job or when nothing is known."""
    spec = spec_of(job)
    if (spec.get("resources") or {}).get("gpus", 1) == 0:
        return None
    gm: Mapping[str, Any] | None = status_of(job).get("gpuMemory")
    if not gm:
        try:
            computed = spec_status(FineTuneJobSpec.model_validate(spec))
        except ValueError:  # a spec the operator would reject says so elsewhere
            computed = None
        gm = computed.to_wire() if computed is not None else None
    share = (spec.get("resources") or {}).get("gpuMemory")
    if not gm:
        return None if share is None else (
            f"share {share} per GPU; no estimate yet (give spec.model.config, or the trainer "
            "reports one from config.json when it starts)")
    if gm.get("message"):
        return f"no estimate: {str(gm['message'])[:300]}"
    parts = ", ".join(f"{k} {_gib(gm.get(k, 0))}" for k in _GPU_PARTS)
    where = ("the model's config.json (trainer)" if gm.get("source") == "trainer"
             else "spec.model.config")
    text = f"{_gib(gm.get('perGpu'))} per GPU estimated ({parts}; from {where})"
    if gm.get("share") is not None:
        text += f"; capped at {_gib(gm['share'])} per GPU (resources.gpuMemory {share})"
    elif share is not None:
        text += f"; share resources.gpuMemory {share} per GPU"
    return text


def location_of(job: Job) -> OutputLocation | None:
    """The output location of a job as read from the API server; None if it cannot be read."""
    try:
        model = FineTuneJob.model_validate(job)
    except ValueError:
        return None
    out = model.status.output
    return output_location(model, out.adapter_path if out else "",
                           out.merged_path if out else "")


def describe_line(job: Job) -> str | None:
    """The "Output claim" line of a succeeded job: claim, full paths, the copy command."""
    if (job.get("status") or {}).get("phase") != "Succeeded":
        return None
    loc = location_of(job)
    if loc is None:
        return None
    keep = "kept when the job is deleted" if loc.retained else "deleted with the job"
    return (f"{loc.claim} at {', '.join(loc.outputs)} ({keep}); copy it out: "
            f"kubectl finetune output {loc.job} -n {loc.namespace}")


def event_time(ev: Event) -> str:
    return str(ev.get("lastTimestamp") or ev.get("eventTime")
               or (ev.get("metadata") or {}).get("creationTimestamp") or "")


def event_order(ev: Event) -> tuple[str, int]:
    """Chronological: timestamps have whole seconds, resourceVersion breaks the ties."""
    rv = str((ev.get("metadata") or {}).get("resourceVersion") or "0")
    return event_time(ev), int(rv) if rv.isdigit() else 0


def _object(ev: Event) -> str:
    obj = ev.get("involvedObject") or {}
    return f"{obj.get('kind', '')}/{obj.get('name', '')}"


def describe(job: Job, events: Sequence[Event], now: dt.datetime,
             max_events: int = 20) -> JobDescription:
    """``describe``'s view: the job and its ``max_events`` most recent events."""
    meta = job.get("metadata") or {}
    recent = sorted(events, key=event_order)[-max_events:]
    return JobDescription(
        name=str(meta.get("name")),
        namespace=str(meta.get("namespace")),
        created=str(meta.get("creationTimestamp")),
        createdAge=age(meta.get("creationTimestamp"), now),
        spec=spec_fields(job),
        status=status_fields(job, now),
        conditions=[ConditionRow(
            type=str(c.get("type", "")), status=str(c.get("status", "")),
            reason=str(c.get("reason", "") or NONE), age=age(c.get("lastTransitionTime"), now),
            message=str(c.get("message", ""))) for c in status_of(job).get("conditions") or []],
        events=[EventRow(
            type=str(e.get("type", "")), reason=str(e.get("reason", "")),
            age=age(event_time(e), now), object=_object(e),
            message=" ".join(str(e.get("message", "")).split())) for e in recent],
    )


def describe_object(job: Job, events: Sequence[Event]) -> dict[str, Any]:
    """What ``describe -o json|yaml`` prints: the job as stored and all its events, oldest
    first."""
    return {"job": dict(job), "events": [
        {"type": e.get("type"), "reason": e.get("reason"), "time": event_time(e),
         "object": _object(e), "message": e.get("message")}
        for e in sorted(events, key=event_order)]}
