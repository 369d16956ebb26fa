"""Which pods speak for a FineTuneJob: only the ones the operator itself creates (pure).

A pod's owner reference and labels are written by whoever creates the pod, so on their own they
prove nothing: a pod in namespace A may name tenant B's job uid as its owner and any attempt.
A pod counts for a job only when everything the builders (``build/names.py``) give the pods
they create matches: the job's namespace, the job's uid as its owner, the job label, canonical
attempt and rank labels, and the deterministic name ``<job>-a<attempt>-<rank>`` they imply.
Any other pod is an impostor: it is never indexed under the job, never deleted as stale, and
its labels, reports and termination message never reach the job's status.
"""

from __future__ import annotations

import re
from typing import Any

from finetune_api.job import FineTuneJob
from finetune_api.labels import ATTEMPT_LABEL, JOB_LABEL, RANK_LABEL
from finetune_operator.jobs.build.names import label_value, pod_name
from finetune_operator.jobs.pods import attempt_of, owner_uid
from finetune_operator.slim import SlimPod

# what str(int) writes for the 1-based attempt / 0-based rank: no sign, no leading zero, and
# short (a label cannot make the operator build a huge number or name)
_NUMBER = re.compile(r"0|[1-9][0-9]{0,8}")

IMPOSTOR_REASON = "PodIgnored"
IMPOSTOR_MESSAGE = (
    "this pod carries the owner reference or labels of a FineTuneJob trainer pod, but the "
    "operator did not create it for a job in this namespace: the operator ignores it (its "
    "labels, reports and termination message count for no job). Remove its "
    "app.kubernetes.io/managed-by label and FineTuneJob owner reference, or delete it")


def _number(text: Any) -> int | None:
    return int(text) if isinstance(text, str) and _NUMBER.fullmatch(text) else None


def belongs(pod: SlimPod, job: FineTuneJob) -> bool:
    """Whether ``pod`` is one the operator creates for ``job`` (any attempt: a pod of an
    earlier attempt is the job's too, to be deleted as stale)."""
    meta = pod["metadata"]
    labels = meta["labels"]
    attempt, rank = _number(labels.get(ATTEMPT_LABEL)), _number(labels.get(RANK_LABEL))
    name = job.metadata.name
    return (attempt is not None and attempt >= 1 and rank is not None
            and meta.get("namespace") == job.metadata.namespace
            and owner_uid(pod) == job.metadata.uid
            and labels.get(JOB_LABEL) == label_value(name)
            and meta.get("name") == pod_name(name, attempt, rank))


def speaks_for(pod: SlimPod, job: FineTuneJob) -> bool:
    """Whether ``pod`` may report for ``job`` now: the job's own pod of its current attempt."""
    return belongs(pod, job) and attempt_of(pod) == job.status.attempt
