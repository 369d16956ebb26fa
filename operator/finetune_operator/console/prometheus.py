"""A job's curve from Prometheus, when one is configured (``--prometheus-url``; the chart's
``console.prometheus.url``; ``FINETUNE_CONSOLE_PROMETHEUS_URL`` for ``kubectl finetune
console``): ``query_range`` on the per-job gauges the operator exports (``metrics.py``):
``finetune_job_step``, ``finetune_job_loss`` and ``finetune_job_tokens_per_second``, labelled
``namespace`` and ``job`` (scraped with ``honor_labels: true``, as the chart's ServiceMonitor
does). Prometheus keeps them whoever watched, so the curve has every point since the job started,
operator and console restarts included.

What these series do not carry, the console's own record (``history.py``) still gives: the
learning rate (the operator exports no gauge of it), the attempt of each point (a drop of the
step, a resume from an earlier checkpoint, starts a new attempt here) and the checkpoint and
preemption marks.

Prometheus answers to anyone who reaches it, so the console asks it only about a job the user
has just read through the API server as themselves (the Job page and ``/api/curve`` get the job
first); My jobs' sparklines stay on the console's record. Any failure (unreachable, an error
answer, no series) falls back to that record, with a log line."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from finetune_operator.console.history import Curve, Point

log = logging.getLogger(__name__)

STEP_SERIES = "finetune_job_step"
LOSS_SERIES = "finetune_job_loss"
TPS_SERIES = "finetune_job_tokens_per_second"


class PrometheusError(Exception):
    """Prometheus did not answer a query (unreachable, a non-success answer)."""


def selector(series: str, namespace: str, job: str) -> str:
    """``series{namespace="...",job="..."}`` with the values escaped as PromQL strings."""

    def q(v: str) -> str:
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'

    return f"{series}{{namespace={q(namespace)},job={q(job)}}}"


def resolution(start: float, end: float, scrape_seconds: float, cap: int) -> float:
    """The query step: the scrape interval, coarser when the span would give more than
    ``cap`` points."""
    return max(scrape_seconds, math.ceil(max(end - start, 0.0) / cap))


def join(step: list[tuple[float, float]], loss: list[tuple[float, float]],
         tps: list[tuple[float, float]], lr: Callable[[int], float | None] = lambda s: None,
         ) -> list[Point]:
    """Points where the step and the loss were sampled at the same time, one per (attempt,
    step); the attempt counts the drops of the step (each a resume from a checkpoint)."""
    losses, rates = dict(loss), dict(tps)
    out: list[Point] = []
    attempt, last = 1, -1
    seen: set[tuple[int, int]] = set()
    for t, s in sorted(step):
        if t not in losses or not math.isfinite(s) or s <= 0:
            continue
        n = int(s)
        if n < last:
            attempt += 1
        last = n
        if (attempt, n) in seen:
            continue
        seen.add((attempt, n))
        at = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))
        out.append(Point(n, attempt, losses[t], lr(n), rates.get(t), at))
    return out


class PrometheusSource:
    """``query_range`` against ``url`` (``http(s)://host:port``, optionally with a path
    prefix); answers are kept ``ttl`` seconds (the live Job page redraws on every change)."""

    def __init__(self, url: str, *, scrape_seconds: float = 15.0, cap: int = 400,
                 timeout: float = 5.0, ttl: float = 5.0,
                 opener: Callable[..., Any] = urllib.request.urlopen) -> None:
        self.url = url.rstrip("/")
        self.scrape_seconds, self.cap, self.timeout, self.ttl = scrape_seconds, cap, timeout, ttl
        self._open = opener
        self._cache: dict[tuple[str, str, float], tuple[float, list[Point]]] = {}
        self._lock = threading.Lock()

    def query_range(self, query: str, start: float, end: float, step: float
                    ) -> list[tuple[float, float]]:
        """The samples of the query's one series ([] when it has none)."""
        params = urllib.parse.urlencode({"query": query, "start": f"{start:.3f}",
                                         "end": f"{end:.3f}", "step": f"{step:g}"})
        url = f"{self.url}/api/v1/query_range?{params}"
        try:
            with self._open(url, timeout=self.timeout) as r:
                body = json.loads(r.read())
        except (OSError, ValueError) as e:  # URLError and HTTPError are OSErrors
            raise PrometheusError(f"{self.url}: query_range {query}: {e}") from e
        if body.get("status") != "success":
            raise PrometheusError(f"{self.url}: query_range {query}: {body.get('error')}")
        result = (body.get("data") or {}).get("result") or []
        if not result:
            return []
        # a job's series is one per (namespace, job); several (two operator replicas scraped
        # as two targets): the longest
        values = max((r.get("values") or [] for r in result), key=len)
        out = []
        for t, v in values:
            try:
                out.append((float(t), float(v)))
            except (TypeError, ValueError):
                continue
        return out

    def points(self, namespace: str, job: str, start: float, end: float,
               lr: Callable[[int], float | None] = lambda s: None) -> list[Point]:
        """The job's points from ``start`` to ``end`` (Unix seconds)."""
        step = resolution(start, end, self.scrape_seconds, self.cap)
        # the end rounded to the step: a redraw within it asks the same (cached) question
        end = math.ceil(end / step) * step
        key = (namespace, job, end)
        with self._lock:
            hit = self._cache.get(key)
        if hit is not None and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        steps, losses, rates = (self.query_range(selector(name, namespace, job), start, end,
                                                 step)
                                for name in (STEP_SERIES, LOSS_SERIES, TPS_SERIES))
        pts = join(steps, losses, rates, lr=lr)
        with self._lock:
            self._cache = {k: v for k, v in self._cache.items()
                           if time.monotonic() - v[0] < self.ttl}
            self._cache[key] = (time.monotonic(), pts)
        return pts

    def curve(self, namespace: str, job: str, start: float, end: float, recorded: Curve
              ) -> Curve | None:
        """The curve with Prometheus's points and the record's marks (and learning rates);
        None when Prometheus has no point of the job or does not answer (the caller keeps the
        record)."""
        rates = {p.step: p.lr for p in recorded.points if p.lr is not None}
        try:
            pts = self.points(namespace, job, start, end, lr=rates.get)
        except PrometheusError as e:
            log.warning("the curve of %s/%s comes from the console's record: %s", namespace,
                        job, e)
            return None
        if not pts:
            return None
        return Curve(pts, list(recorded.marks), recorded.preemptions, recorded.checkpoint, True)
