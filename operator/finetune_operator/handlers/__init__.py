"""kopf handlers: watches wake the reconcile loop; the loop does the work (level-based).

kopf runs the process (watch streams with reconnects, liveness probe, logging); the handlers
only wake the Controller. No handler writes to the FineTuneJob, so kopf adds no finalizers and
stores no state on user objects: deletion is left to owner references.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from ..api import GROUP, PLURAL, VERSION
from ..loop import Controller

_controller: Controller | None = None


def install(controller: Controller) -> None:
    global _controller
    _controller = controller


def _ctl() -> Controller:
    if _controller is None:
        raise RuntimeError("finetune_operator.handlers.install() was not called")
    return _controller


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    settings.watching.server_timeout = 120
    settings.watching.client_timeout = 150
    _ctl().start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    _ctl().stop()


@kopf.on.event(GROUP, VERSION, PLURAL)
def job_event(**_: Any) -> None:
    _ctl().wake()


@kopf.on.event("", "v1", "pods", labels={"app.kubernetes.io/managed-by": "finetune-operator"})
def pod_event(body: kopf.Body, **_: Any) -> None:
    _ctl().remember_progress({"metadata": dict(body.metadata)})
    _ctl().wake()


@kopf.on.probe(id="reconcileAgeSeconds")
def reconcile_age(**_: Any) -> float | None:
    import time

    last = _ctl().last_tick
    return None if last is None else round(time.monotonic() - last, 1)
