"""kopf runs the process: start-up/clean-up of the Controller and logging (the probes are
served by ``http/server.py``: /healthz fails when the leader's cycles stop).

The Controller watches what it needs itself (``kube/cache.py``: server-side label selector on pods,
raw JSON, resourceVersion bookkeeping), so kopf has no resource handlers here: it adds no
finalizers, stores no state on user objects and streams nothing the operator does not read.
"""

from __future__ import annotations

import logging
from typing import Any

import kopf

from finetune_operator.jobs.controller import Controller

_controller: Controller | None = None


def install(controller: Controller) -> None:
    global _controller
    _controller = controller


def _ctl() -> Controller:
    if _controller is None:
        raise RuntimeError("finetune_operator.lifecycle.install() was not called")
    return _controller


@kopf.on.startup()
def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
    settings.posting.level = logging.WARNING
    _ctl().start()


@kopf.on.cleanup()
def cleanup(**_: Any) -> None:
    _ctl().stop()
