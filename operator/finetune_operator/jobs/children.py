"""Creating an attempt's children (ConfigMap, Service, claim, pods: ``jobs/build/``), never
adopting someone else's object of the same name, and remembering why a creation was refused
(the state machine requeues the attempt with that cause: ``Ctx.create_error``)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.trainer_config import ReportConfig
from finetune_operator.jobs.build import build_children
from finetune_operator.jobs.build.pvc import is_own_claim
from finetune_operator.jobs.feeds import Feeds
from finetune_operator.jobs.ports import JobKube, Refused
from finetune_operator.jobs.reconcile import Plan
from finetune_operator.settings import OperatorSettings

log = logging.getLogger("finetune_operator")


class Children:
    """``report_config`` is the trainer config's ``report`` section (the report channel's URL
    and CA); ``wake`` wakes the cycle after a refused creation."""

    def __init__(self, kube: JobKube, settings: OperatorSettings, feeds: Feeds,
                 report_config: ReportConfig | None, wake: Callable[[], None]) -> None:
        self.kube, self.settings, self.feeds = kube, settings, feeds
        self.report_config, self.wake = report_config, wake
        self._lock = threading.Lock()
        self._errors: dict[str, tuple[int, str]] = {}  # job uid -> (attempt, why refused)

    def create_error(self, uid: str, attempt: int) -> str | None:
        """Why creating this attempt's children was refused, if it was."""
        with self._lock:
            got = self._errors.get(uid)
        return got[1] if got is not None and got[0] == attempt else None

    def forget(self, uid: str) -> None:
        with self._lock:
            self._errors.pop(uid, None)

    def create(self, job: FineTuneJob, pl: Plan) -> None:
        """Create (or finish creating) the children of ``pl.create_attempt``: a refusal
        (quota, webhook, policy, a name taken) is remembered and the job planned again."""
        k, uid, attempt = self.kube, job.metadata.uid, pl.create_attempt
        assert attempt is not None
        ck = pl.status.checkpoint
        children = build_children(job, self.settings, attempt,
                                  pl.status.effective_priority_class,
                                  ck.save_seconds if ck else None, report=self.report_config,
                                  placement=pl.placement, flavor=pl.flavor,
                                  share=pl.status.gpu_memory.attempt_share
                                  if pl.status.gpu_memory else None)
        for obj in children.all():
            try:
                got = k.create_child(obj)
            except Refused as e:  # quota, webhook, policy: tell the user
                msg = f"could not create {obj['kind']} {obj['metadata']['name']}: {e}"
                self._problem(job, attempt, "PodCreateFailed", msg)
                return
            owners = {r.get("uid") for r in
                      (got.get("metadata") or {}).get("ownerReferences") or []}
            ours = (is_own_claim(got, job) if obj["kind"] == "PersistentVolumeClaim"
                    else uid in owners)  # a retained claim (whenDeleted Retain) has no owner
            if not ours:  # never adopt: someone else's object has this name
                msg = (f"{obj['kind']} {obj['metadata']['name']} already exists and is not "
                       "owned by this job; it is left untouched: delete or rename it, or "
                       "rename the job")
                self._problem(job, attempt, "ChildConflict", msg)
                return
            if obj["kind"] == "Pod":
                self.feeds.created_pod(got)
        self.forget(uid)

    def _problem(self, job: FineTuneJob, attempt: int, reason: str, msg: str) -> None:
        uid = job.metadata.uid
        with self._lock:
            first = self._errors.get(uid) != (attempt, f"{reason}: {msg}")
            self._errors[uid] = (attempt, f"{reason}: {msg}")
        self.feeds.mark_dirty(uid)
        if first:
            log.warning("FineTuneJob %s: %s: %s", job.key, reason, msg)
        self.wake()


def child_body(job: FineTuneJob) -> dict[str, Any]:
    """The reference Events are written against."""
    m = job.metadata
    return {"metadata": {"name": m.name, "namespace": m.namespace, "uid": m.uid}}
