"""Progress reports (trainer -> operator) and the termination message.

Channels (``docs/contracts.md`` "Progress channel"):

* the operator's report endpoint: each report is POSTed as JSON over HTTPS to ``report.url``,
  authenticated with the pod's projected ServiceAccount token (audience: the operator), verified
  against ``report.caPem``. The pod has no credential for the Kubernetes API at all. The token
  file is read at every report (the kubelet rotates it). Standard library only (urllib + ssl);
  sent from a background thread so a slow operator never slows training down; only the newest
  report is kept while one is in flight.
* ``progress.file``: each report written atomically as JSON (tests and local runs use it).

Reports are rate-limited (``progress.minIntervalSeconds``) except forced ones (after a checkpoint
and at the end). Best effort: a failing endpoint logs one warning and training goes on. The
termination message, written at exit, stays the final word.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from finetune_api.trainer_config import ReportConfig
from finetune_trainer.checkpoint import write_atomic

log = logging.getLogger(__name__)

STANDBY_TRIES = 5  # with 2 replicas, 1 - 0.5**5 = 97% of reports reach the leader at once


def _retry_after(header: str | None) -> float:
    """Seconds to wait before the next try: the server's Retry-After, within [0.05, 1]."""
    try:
        wait = float(header) if header else 0.2
    except ValueError:
        wait = 0.2
    return min(1.0, max(0.05, wait))  # NaN -> 0.05, inf -> 1

TERMINATION_LIMIT = 4096
MESSAGE_LIMIT = 1024  # the operator keeps at most this much of the message


def iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class Sink(Protocol):
    def send(self, payload: dict[str, Any]) -> None: ...
    def close(self, timeout: float) -> None: ...


class FileSink:
    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._warned = False

    def send(self, payload: dict[str, Any]) -> None:
        try:
            write_atomic(self.path, json.dumps(payload, sort_keys=True), durable=False)
        except OSError as e:
            if not self._warned:
                log.warning("progress file %s: cannot write (%s); continuing", self.path, e)
                self._warned = True

    def close(self, timeout: float) -> None:
        return None


class ReportSink:
    """POSTs reports to the operator from a background thread (newest report wins)."""

    def __init__(self, config: ReportConfig, timeout: float = 5.0) -> None:
        self.url = config.url
        self.token_file = Path(config.token_file)
        self.timeout = timeout
        ctx = ssl.create_default_context(cadata=config.ca_pem)
        # Straight to the operator: never through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=ctx))
        self._cond = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._busy = False
        self._closed = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="progress-report", daemon=True)
        self._thread.start()

    def send(self, payload: dict[str, Any]) -> None:
        with self._cond:
            self._pending = payload
            self._cond.notify()

    def _run(self) -> None:
        while True:
            with self._cond:
                while self._pending is None and not self._closed:
                    self._cond.wait()
                if self._pending is None and self._closed:
                    return
                payload, self._pending, self._busy = self._pending, None, True
            try:
                self._post(payload)  # type: ignore[arg-type]
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _post(self, payload: dict[str, Any]) -> None:
        try:
            self._post_once(payload)
        except (urllib.error.URLError, OSError, ValueError) as e:
            if isinstance(e, urllib.error.HTTPError):
                detail = f"HTTP {e.code}: {e.read().decode(errors='replace').strip()[:200]}"
            else:
                detail = str(e)
            if not self._failing:
                log.warning("progress: cannot report to %s (%s); training continues, progress "
                            "is best effort", self.url, detail)
            self._failing = True
            return
        if self._failing:
            log.info("progress: the report channel works again")
        self._failing = False

    def _post_once(self, payload: dict[str, Any]) -> None:
        """One report; a 503 (the replica that took the connection is a standby, or the
        operator is shedding load) is tried again on a new connection, which the Service may
        give to the leader, at most STANDBY_TRIES times, waiting Retry-After (<= 1 s)."""
        body = json.dumps(payload, sort_keys=True).encode()
        for left in range(STANDBY_TRIES - 1, -1, -1):
            token = self.token_file.read_text(encoding="utf-8").strip()
            req = urllib.request.Request(
                self.url, data=body, method="POST",
                headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}",
                         "Connection": "close"},
            )
            try:
                with self._opener.open(req, timeout=self.timeout) as resp:
                    resp.read()
                return
            except urllib.error.HTTPError as e:
                if e.code != 503 or left == 0:
                    raise
                e.read()
                time.sleep(_retry_after(e.headers.get("Retry-After")))

    def flush(self, timeout: float) -> bool:
        """Wait up to ``timeout`` s until the newest report went out (or failed)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._pending is None and not self._busy,
                                       timeout)

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the last report to go out, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.flush(timeout)


class ProgressReporter:
    """Rate-limited fan-out of progress reports. Time is passed in by the caller."""

    def __init__(self, sinks: list[Sink], min_interval: float) -> None:
        self.sinks = sinks
        self.min_interval = min_interval
        self._last_sent: float | None = None
        self.last: dict[str, Any] = {}

    def due(self, now: float, force: bool = False) -> bool:
        return force or self._last_sent is None or now - self._last_sent >= self.min_interval

    def report(self, payload: dict[str, Any], now: float, force: bool = False) -> bool:
        """Send ``payload`` unless rate-limited; returns whether it was sent."""
        self.last = payload
        if not self.due(now, force):
            return False
        self._last_sent = now
        for s in self.sinks:
            try:
                s.send(payload)
            except Exception as e:  # best effort: never stop training for a report
                log.warning("progress: sink %s failed: %s", type(s).__name__, e)
        return True

    def close(self, timeout: float = 5.0) -> None:
        for s in self.sinks:
            s.close(timeout)


def build_reporter(file: str | None, report: ReportConfig | None,
                   min_interval: float) -> ProgressReporter:
    """Sinks for this process: the file (if any) and the operator's endpoint (if configured;
    only rank 0 passes one)."""
    sinks: list[Sink] = []
    if file:
        sinks.append(FileSink(file))
    if report is not None:
        try:
            sinks.append(ReportSink(report))
        except (ssl.SSLError, ValueError) as e:  # a CA PEM that does not load
            log.warning("progress: report channel off, report.caPem does not load (%s); "
                        "training continues", e)
    return ProgressReporter(sinks, min_interval)


def progress_payload(*, step: int, total_steps: int, epoch: float | None, loss: float | None,
                     learning_rate: float | None, tokens_per_second: float | None,
                     eta_seconds: float | None, now: float, state: str,
                     resumed_from_step: int | None,
                     checkpoint: dict[str, Any] | None) -> dict[str, Any]:
    """The progress object of the contract (camelCase, None values dropped)."""
    out: dict[str, Any] = {
        "step": step, "totalSteps": total_steps, "epoch": _round(epoch, 4),
        "loss": _round(loss, 6), "learningRate": learning_rate,
        "tokensPerSecond": _round(tokens_per_second, 1), "etaSeconds": _round(eta_seconds, 1),
        "updatedAt": iso(now), "resumedFromStep": resumed_from_step, "state": state,
        "checkpoint": checkpoint,
    }
    return {k: v for k, v in out.items() if v is not None}


def _round(x: float | None, nd: int) -> float | None:
    return None if x is None else round(float(x), nd)


def eta_seconds(step: int, total: int, start_step: int, elapsed: float) -> float | None:
    """Remaining time from the pace of this run (None before the first step of this run)."""
    done = step - start_step
    if done <= 0 or elapsed <= 0:
        return None
    return max(0.0, (total - step) * elapsed / done)


def termination_message(*, reason: str, message: str, final_step: int, adapter_path: str,
                        merged_path: str, metrics: dict[str, float],
                        checkpoint: dict[str, Any] | None, adapter_uri: str = "",
                        merged_uri: str = "", sources: list[dict[str, str]] | None = None,
                        cause: str = "") -> str:
    """The JSON of the termination message, kept under the 4 KiB kubelet limit (the message
    itself at most MESSAGE_LIMIT characters, as the operator keeps no more)."""
    if len(message) > MESSAGE_LIMIT:
        message = message[: MESSAGE_LIMIT - 12] + " [truncated]"
    body: dict[str, Any] = {
        "reason": reason, "message": message, "finalStep": final_step,
        "adapterPath": adapter_path, "mergedPath": merged_path,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
    }
    if checkpoint is not None:
        body["checkpoint"] = checkpoint
    # object-storage URIs (spec.output.s3) and the pinned sources: only when there are some
    body.update({k: v for k, v in (("adapterUri", adapter_uri), ("mergedUri", merged_uri),
                                   ("sources", sources), ("cause", cause)) if v})
    text = json.dumps(body, sort_keys=True)
    if len(text.encode()) > TERMINATION_LIMIT:
        overflow = len(text.encode()) - TERMINATION_LIMIT + 20
        body["message"] = message[: max(0, len(message) - overflow)] + " [truncated]"
        text = json.dumps(body, sort_keys=True)
    return text


def write_termination_log(path: str, text: str) -> None:
    """Best effort: the pod may not have the file (local runs); never raises."""
    try:
        p = Path(path)
        if str(p).startswith("/dev/"):
            with open(p, "w", encoding="utf-8") as f:
                f.write(text)
        else:
            p.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(p, text)
    except OSError as e:
        log.warning("termination log %s: cannot write (%s)", path, e)
