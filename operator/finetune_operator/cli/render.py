"""View models (``finetune_operator.view``) -> what the plugin prints: kubectl-style tables
(``-o wide`` shows the REASON whole and the whole queue), describe text, and -o json|yaml."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import yaml

from finetune_operator.view.cells import NONE, count, value_text
from finetune_operator.view.compare import CompareTable
from finetune_operator.view.describe import Field, JobDescription
from finetune_operator.view.jobs import JobRow
from finetune_operator.view.sweeps import SweepDescription, SweepRow
from finetune_operator.view.top import TopRow

LIST_COLUMNS = ("NAME", "PHASE", "PRIORITY", "GPUS", "QUEUE", "REASON", "PROGRESS", "LOSS",
                "ETA", "PREEMPTIONS", "AGE")
REASON_WIDTH = 60  # REASON is cut here in the default table (-o wide shows it whole)
TOP_COLUMNS = ("NAMESPACE", "RESOURCE", "ALLOCATED", "QUOTA", "QUOTA USED", "FREE", "RUNNING",
               "QUEUED", "QUEUED GPUS", "NEXT")
SWEEP_COLUMNS = ("NAME", "PHASE", "TRIALS", "ACTIVE", "METRIC", "BEST", "VALUE", "AGE")
LABEL_WIDTH = 16  # describe's "  Label:" column


def cut(text: str, width: int) -> str:
    """On one line, at most ``width`` characters ("..." marks a cut)."""
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 3] + "..."


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns separated by three spaces (what kubectl prints)."""
    body = [[str(c) for c in r] for r in rows]
    widths = [len(h) for h in headers]
    for r in body:
        widths = [max(w, len(c)) for w, c in zip(widths, r, strict=True)]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
             for r in [list(headers), *body]]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ list


def list_cells(row: JobRow, *, wide: bool = False) -> dict[str, str]:
    """One row of ``kubectl finetune list``, keyed by column name (NAMESPACE included)."""
    return {
        "NAMESPACE": row["namespace"],
        "NAME": row["name"],
        "PHASE": row["phase"],
        "PRIORITY": row["priority"],
        "GPUS": row["gpus"],
        "QUEUE": row["queue"],
        "REASON": (row["reason"] if wide else cut(row["reason"], REASON_WIDTH)) or NONE,
        "PROGRESS": row["progress"],
        "LOSS": row["loss"],
        "ETA": row["eta"],
        "PREEMPTIONS": row["preemptions"],
        "AGE": row["age"],
    }


def list_table(rows: Iterable[JobRow], *, all_namespaces: bool = False,
               wide: bool = False) -> str:
    cols = (("NAMESPACE",) if all_namespaces else ()) + LIST_COLUMNS
    cells = [list_cells(r, wide=wide) for r in rows]
    return table(cols, [[c[col] for col in cols] for c in cells])


# ------------------------------------------------------------------ describe


def _fields(fields: Iterable[Field]) -> list[str]:
    return [f"  {f['label'] + ':':<{LABEL_WIDTH}}{f['value']}" for f in fields]


def _indented(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    return ["  " + line for line in table(headers, rows).splitlines()]


def describe_text(d: JobDescription) -> str:
    lines = [f"Name:         {d['name']}", f"Namespace:    {d['namespace']}",
             f"Created:      {d['created']} ({d['createdAge']} ago)", "Spec:"]
    lines += _fields(d["spec"])
    lines.append("Status:")
    lines += _fields(d["status"])
    conds = d["conditions"]
    lines.append("Conditions:" + ("" if conds else " <none>"))
    if conds:
        lines += _indented(("TYPE", "STATUS", "REASON", "AGE", "MESSAGE"), [
            [c["type"], c["status"], c["reason"], c["age"], c["message"]] for c in conds])
    events = d["events"]
    lines.append("Events:" + ("" if events else " <none>"))
    if events:
        lines += _indented(("TYPE", "REASON", "AGE", "OBJECT", "MESSAGE"), [
            [e["type"], e["reason"], e["age"], e["object"], e["message"]] for e in events])
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ top


def top_table(rows: Sequence[TopRow], *, wide: bool = False) -> str:
    """NEXT: the first job in the queue (``wide``: the whole queue in order)."""
    out = []
    for r in rows:
        queue = r["queue"]
        nxt = (", ".join(str(e["name"]) for e in queue) if wide else
               (queue[0]["name"] if queue else NONE)) or NONE
        out.append([r["namespace"], r["gpuResource"], count(r["allocated"]),
                    count(r["quotaHard"]) if r["quotaHard"] is not None else "none",
                    count(r["quotaUsed"]), count(r["quotaFree"]), str(r["running"]),
                    str(r["queued"]), count(r["queuedGpus"]), nxt])
    return table(TOP_COLUMNS, out)


# ------------------------------------------------------------------ compare and sweeps


def compare_table(t: CompareTable) -> str:
    """RANK NAME PHASE <parameters> <metrics> GPU-HOURS PREEMPTIONS; "" without rows."""
    if not t["rows"]:
        return ""
    headers = ["RANK", "NAME", "PHASE", *[p["label"].upper() for p in t["parameters"]],
               *[m.upper() for m in t["metrics"]], "GPU-HOURS", "PREEMPTIONS"]
    body = []
    for r in t["rows"]:
        body.append([
            str(r["rank"]) if r["rank"] is not None else NONE, r["name"], r["phase"],
            *[value_text(r["parameters"].get(p["path"])) for p in t["parameters"]],
            *[value_text(r["metrics"].get(m)) for m in t["metrics"]],
            f"{r['gpuHours']:.2f}" if r["gpuHours"] is not None else NONE,
            str(r["preemptions"]),
        ])
    return table(headers, body)


def sweep_list_table(rows: Iterable[SweepRow], *, all_namespaces: bool = False) -> str:
    headers = [*(["NAMESPACE"] if all_namespaces else []), *SWEEP_COLUMNS]
    return table(headers, [[*([r["namespace"]] if all_namespaces else []), r["name"],
                            r["phase"], r["trials"], r["active"], r["metric"], r["best"],
                            r["value"], r["age"]] for r in rows])


def sweep_describe_text(d: SweepDescription) -> str:
    width = max(len(f["label"]) for f in d["fields"])
    out = [f"FineTuneSweep {d['namespace']}/{d['name']}"]
    out += [f"{f['label'].ljust(width)}  {f['value']}" for f in d["fields"]]
    out.append("")
    out.append(compare_table(d["trials"]) if d["trials"]["rows"] else "No trials yet.\n")
    return "\n".join(out).rstrip("\n") + "\n"


# ------------------------------------------------------------------ structured output


def dump(obj: Any, fmt: str) -> str:
    """-o json | yaml."""
    if fmt == "json":
        return json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n"
    return str(yaml.safe_dump(obj, sort_keys=False, default_flow_style=False))


def as_list(items: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Several API objects as kubectl prints them with -o json: a v1 List."""
    return {"apiVersion": "v1", "kind": "List", "items": [dict(i) for i in items]}
