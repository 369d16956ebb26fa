"""kopf runs the process: start-up/clean-up of the Controller, logging and /healthz.

The Controller watches what it needs itself (``cache.py``: server-side label selector on pods,
raw JSON, resourceVersion bookkeeping), so kopf has no resource handlers here: it adds no
finalizers, stores no state on user objects and streams nothing the operator does not read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import kopf

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
    _ctl().start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    _ctl().stop()


@kopf.on.probe(id="cycleAgeSeconds")
def cycle_age(**_: Any) -> float | None:
    """Seconds since the last completed scheduling cycle; raising makes /healthz fail (the
    leader is stuck: no cycle for ``health_stale_cycles`` intervals)."""
    ctl = _ctl()
    if not ctl.healthy():
        raise kopf.PermanentError("no scheduling cycle completed recently")
    last = ctl.last_cycle
    return None if last is None else round(time.monotonic() - last, 1)


@kopf.on.probe(id="leader")
def leader(**_: Any) -> bool:
    return _ctl().leader
