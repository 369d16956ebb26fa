"""Counts and statistics: Prometheus text parsing, request-count diffs, percentiles, RSS."""

from __future__ import annotations

import math
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')

# apiserver verbs (apiserver_request_total) and the operator's own verbs that change state
APISERVER_WRITES = frozenset({"POST", "PUT", "PATCH", "APPLY", "DELETE", "DELETECOLLECTION"})
OPERATOR_WRITES = frozenset({"create", "patch", "update", "delete", "replace"})


def samples(text: str, name: str) -> Iterable[tuple[dict[str, str], float]]:
    """(labels, value) of every sample of metric `name` in a Prometheus exposition."""
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        m = _SAMPLE.match(line)
        if m and m.group(1) == name:
            yield dict(_LABEL.findall(m.group(2) or "")), float(m.group(3))


def apiserver_requests(metrics_text: str) -> Counter[tuple[str, str]]:
    """apiserver_request_total summed by (verb, resource[/subresource]) over codes and clients."""
    out: Counter[tuple[str, str]] = Counter()
    for labels, value in samples(metrics_text, "apiserver_request_total"):
        res = labels.get("resource", "")
        if labels.get("subresource"):
            res += "/" + labels["subresource"]
        out[(labels.get("verb", ""), res)] += int(value)
    return out


def operator_requests(metrics_text: str) -> Counter[tuple[str, str]] | None:
    """The operator's own finetune_api_requests_total{verb,resource}; None when not exported."""
    rows = list(samples(metrics_text, "finetune_api_requests_total"))
    if not rows:
        return None
    out: Counter[tuple[str, str]] = Counter()
    for labels, value in rows:
        out[(labels.get("verb", ""), labels.get("resource", ""))] += int(value)
    return out


def diff(after: Counter[tuple[str, str]], before: Counter[tuple[str, str]],
         ) -> Counter[tuple[str, str]]:
    out = Counter({k: v - before.get(k, 0) for k, v in after.items()})
    return Counter({k: v for k, v in out.items() if v})


def is_lease(resource: str) -> bool:
    return resource.split("/")[0].lower() in {"lease", "leases"}


# Created, but nothing is stored: questions to the API server (the bench's own scrapes of the
# operator's /metrics cause a TokenReview and a SubjectAccessReview a minute).
REVIEWS = frozenset({"tokenreviews", "subjectaccessreviews"})


def writes(counts: Counter[tuple[str, str]], write_verbs: frozenset[str],
           leases: bool | None = None) -> int:
    """Sum of write calls (reviews are none); leases=False excludes Lease calls, True counts
    only them."""
    return sum(v for (verb, res), v in counts.items() if verb in write_verbs
               and res not in REVIEWS and (leases is None or is_lease(res) == leases))


def table(counts: Counter[tuple[str, str]], top: int = 12) -> str:
    """`VERB resource N` rows, largest first, as one markdown-friendly line."""
    rows = sorted(counts.items(), key=lambda kv: -kv[1])
    shown = [f"{verb} {res}: {n:,}" for (verb, res), n in rows[:top]]
    rest = sum(n for _, n in rows[top:])
    return "; ".join(shown) + (f"; others: {rest:,}" if rest else "")


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); nan for no values."""
    if not values:
        return math.nan
    s = sorted(values)
    k = max(0, min(len(s) - 1, math.ceil(q / 100 * len(s)) - 1))
    return s[k]


def rss_mb(pid: int) -> tuple[float, float]:
    """(VmHWM, VmRSS) of a process in MB, from /proc/<pid>/status."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmHWM", "VmRSS"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields.get("VmHWM", math.nan), fields.get("VmRSS", math.nan)
