"""What the job controller needs from the outside world: the Kubernetes calls it makes
(``JobKube``, implemented by ``kube.client.Kube`` and, in unit tests, by
``tests/builders/jobkube.py``'s ``RecordingJobKube``) and the clock (``Clock``).

Every module of ``jobs/`` gets both injected; none reads the time or talks to the API server
another way, so a test drives the whole controller with a recording fake and a fake clock.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Mapping
from typing import Any, Protocol

from finetune_operator.serving.runner import ServingKube
from finetune_operator.sweep.runner import SweepKube


class Refused(Exception):
    """The API server refused to create a child for a reason the user must fix (a quota, an
    admission webhook, a policy, a missing namespace); ``str()`` is its message."""


class WorkloadKube(Protocol):
    """The calls of admission mode kueue (``kueue/sync.py``): a job's Kueue Workload."""

    def create_workload(self, obj: dict[str, Any]) -> dict[str, Any] | None: ...

    def patch_workload(self, namespace: str, name: str, body: dict[str, Any],
                       resource_version: str, status: bool = False
                       ) -> dict[str, Any] | None: ...

    def delete_workload(self, namespace: str, name: str, uid: str) -> bool: ...


class JobKube(SweepKube, WorkloadKube, ServingKube, Protocol):
    """Exactly the API calls the job controller makes (its watches, its writes, its Lease),
    plus the sweep runner's (``SweepKube``) and the serving runner's (``ServingKube``), which
    it drives."""

    def list_raw(self, path: str, label_selector: str | None = None,
                 field_selector: str | None = None, page: int = 500,
                 ) -> tuple[list[dict[str, Any]], str]: ...

    def watch_raw(self, path: str, resource_version: str, label_selector: str | None = None,
                  field_selector: str | None = None, timeout_seconds: int = 300,
                  ) -> Iterator[tuple[str, dict[str, Any]]]: ...

    def patch_job_status(self, namespace: str, name: str, status: dict[str, Any],
                         resource_version: str | None = None) -> dict[str, Any] | None: ...

    def delete_job(self, namespace: str, name: str, uid: str) -> bool: ...

    def create_child(self, obj: dict[str, Any]) -> dict[str, Any]:
        """Create one child of an attempt, or return the object of that name that exists (a
        Service of ours is merge-patched to ``obj``): the caller checks it is its own. Raises
        :class:`Refused` when the API server refuses it for a reason the user must fix."""
        ...

    def delete_pod(self, namespace: str, name: str, uid: str | None = None,
                   grace_seconds: int | None = None) -> bool: ...

    def event(self, job: Mapping[str, Any], type_: str, reason: str, message: str,
              now: dt.datetime, kind: str = "FineTuneJob") -> None: ...

    def hold_lease(self, namespace: str, name: str, identity: str, duration_s: int,
                   now: dt.datetime, known: dict[str, Any] | None = None,
                   ) -> tuple[bool, dict[str, Any] | None]: ...

    def release_lease(self, namespace: str, name: str, identity: str) -> None: ...


class Clock(Protocol):
    """The three clocks the controller reads."""

    def now(self) -> dt.datetime:
        """Wall time, timezone-aware UTC: what statuses, Events and the policy see."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never jumps: the Lease's validity, debounce, health."""
        ...

    def time(self) -> float:
        """Wall time in epoch seconds: the per-job timers (retries, coalesced writes)."""
        ...


class SystemClock:
    """The real clocks (the only place in ``jobs/`` that reads them)."""

    def now(self) -> dt.datetime:
        return dt.datetime.now(dt.UTC)

    def monotonic(self) -> float:
        return time.monotonic()

    def time(self) -> float:
        return time.time()
