"""Progress reports (trainer -> operator) and the termination message.

Channels (``docs/contracts.md``):

* the annotation ``finetune.dev/progress`` on the trainer's own Pod, patched with a JSON merge
  patch through the Kubernetes REST API using in-cluster credentials. Standard library only
  (urllib + ssl): the service-account token and CA come from
  ``/var/run/secrets/kubernetes.io/serviceaccount`` or ``$FINETUNE_SA_DIR`` (so a local node
  agent can provide them), the server from ``KUBERNETES_SERVICE_HOST``/``_PORT``. The patch is
  sent from a background thread so a slow API server never slows training down; only the newest
  report is kept while one is in flight.
* ``progress.file``: each report written atomically as JSON (tests and local runs use it).

Reports are rate-limited (``progress.minIntervalSeconds``) except forced ones (after a checkpoint
and at the end). Best effort: a failing API logs one warning and training goes on.
"""

from __future__ import annotations

import json
import logging
import os
import ssl
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from finetune_operator.api.trainer_config import PROGRESS_ANNOTATION

from .checkpoint import write_atomic

log = logging.getLogger(__name__)

DEFAULT_SA_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
TERMINATION_LIMIT = 4096


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
            write_atomic(self.path, json.dumps(payload, sort_keys=True))
        except OSError as e:
            if not self._warned:
                log.warning("progress file %s: cannot write (%s); continuing", self.path, e)
                self._warned = True

    def close(self, timeout: float) -> None:
        return None


@dataclass(frozen=True)
class PodTarget:
    server: str  # https://host:port
    namespace: str
    name: str
    token: str
    ca_file: str | None


def pod_target_from_env(env: dict[str, str] | None = None) -> PodTarget | None:
    """In-cluster API coordinates of this pod, or None (with the reason logged)."""
    env = dict(os.environ) if env is None else env
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    name, ns = env.get("POD_NAME"), env.get("POD_NAMESPACE")
    sa_dir = Path(env.get("FINETUNE_SA_DIR") or DEFAULT_SA_DIR)
    missing = [k for k, v in (("KUBERNETES_SERVICE_HOST", host), ("POD_NAME", name),
                              ("POD_NAMESPACE", ns)) if not v]
    if missing:
        log.info("progress: no pod annotation channel (%s unset)", ", ".join(missing))
        return None
    try:
        token = (sa_dir / "token").read_text(encoding="utf-8").strip()
    except OSError as e:
        log.warning("progress: no service-account token in %s (%s); pod annotation channel off",
                    sa_dir, e.strerror)
        return None
    ca = sa_dir / "ca.crt"
    assert host and name and ns
    h = f"[{host}]" if ":" in host and not host.startswith("[") else host
    return PodTarget(f"https://{h}:{port}", ns, name, token,
                     str(ca) if ca.exists() else None)


def annotation_patch(payload: dict[str, Any]) -> bytes:
    """The JSON merge patch that sets the progress annotation."""
    body = {"metadata": {"annotations": {PROGRESS_ANNOTATION: json.dumps(payload, sort_keys=True)}}}
    return json.dumps(body).encode()


class PodAnnotationSink:
    """Patches the pod annotation from a background thread (newest report wins)."""

    def __init__(self, target: PodTarget, timeout: float = 5.0) -> None:
        self.target = target
        self.timeout = timeout
        ctx = ssl.create_default_context(cafile=target.ca_file)
        # Straight to the API server: never through an HTTP(S)_PROXY from the environment.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                                   urllib.request.HTTPSHandler(context=ctx))
        self._cond = threading.Condition()
        self._pending: dict[str, Any] | None = None
        self._busy = False
        self._closed = False
        self._failing = False
        self._thread = threading.Thread(target=self._run, name="progress-patch", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        t = self.target
        return f"{t.server}/api/v1/namespaces/{t.namespace}/pods/{t.name}"

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
                self._patch(payload)  # type: ignore[arg-type]
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()

    def _patch(self, payload: dict[str, Any]) -> None:
        req = urllib.request.Request(
            self.url, data=annotation_patch(payload), method="PATCH",
            headers={"Content-Type": "application/merge-patch+json",
                     "Authorization": f"Bearer {self.target.token}",
                     "Accept": "application/json"},
        )
        try:
            with self._opener.open(req, timeout=self.timeout) as resp:
                resp.read()
        except (urllib.error.URLError, OSError, ValueError) as e:
            detail = e.read().decode(errors="replace")[:200] if isinstance(
                e, urllib.error.HTTPError) else str(e)
            if not self._failing:
                log.warning("progress: cannot patch pod %s/%s (%s); training continues, "
                            "progress is best effort", self.target.namespace, self.target.name,
                            detail)
            self._failing = True
            return
        if self._failing:
            log.info("progress: pod annotation channel works again")
        self._failing = False

    def close(self, timeout: float) -> None:
        """Wait up to ``timeout`` s for the last report to go out, then stop."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            self._cond.wait_for(lambda: self._pending is None and not self._busy, timeout)


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


def build_reporter(file: str | None, pod_annotation: bool, min_interval: float,
                   env: dict[str, str] | None = None) -> ProgressReporter:
    sinks: list[Sink] = []
    if file:
        sinks.append(FileSink(file))
    if pod_annotation:
        target = pod_target_from_env(env)
        if target is not None:
            sinks.append(PodAnnotationSink(target))
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
                        checkpoint: dict[str, Any] | None) -> str:
    """The JSON of the termination message, kept under the 4 KiB kubelet limit."""
    body: dict[str, Any] = {
        "reason": reason, "message": message, "finalStep": final_step,
        "adapterPath": adapter_path, "mergedPath": merged_path,
        "metrics": {k: round(float(v), 6) for k, v in metrics.items()},
    }
    if checkpoint is not None:
        body["checkpoint"] = checkpoint
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
