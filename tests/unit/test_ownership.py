"""Which pods speak for a job (ownership.py): only the ones the operator's builders make."""

from __future__ import annotations

import copy

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from finetune_api.job import FineTuneJob
from finetune_api.labels import ATTEMPT_LABEL, JOB_LABEL, RANK_LABEL
from finetune_operator.jobs import ownership
from finetune_operator.jobs.build import names as n
from finetune_operator.kube.cache import slim_pod
from tests.builders.jobs import make_job
from tests.builders.pods import make_pod

pytestmark = pytest.mark.unit

JOB = make_job("bot", "team-b", nodes=2, status={"phase": "Running", "attempt": 2})


def _pod(**meta: object) -> dict:
    """The operator's own rank-0 pod of attempt 2, as the watch cache keeps it, with metadata
    fields replaced."""
    pod = slim_pod(make_pod(JOB, 2, 0))
    pod["metadata"].update(copy.deepcopy(meta))
    return pod


def _labels(**over: str) -> dict[str, str]:
    return {**_pod()["metadata"]["labels"], **over}


@pytest.mark.parametrize("job", [JOB, make_job("x" * 63, "team-b"), make_job("a.b", "team-b"),
                                 make_job("9lives", "team-b")])
def test_every_pod_the_operator_builds_belongs_to_its_job(job: FineTuneJob) -> None:
    for attempt in (1, 2, 117):
        for rank in range(job.spec.resources.nodes):
            pod = make_pod(job, attempt, rank)
            assert ownership.belongs(pod, job)
            assert ownership.belongs(slim_pod(pod), job)


@pytest.mark.parametrize("what, pod", [
    ("another namespace (finding 5)", _pod(namespace="team-a")),
    ("no namespace", _pod(namespace=None)),
    ("another job's uid", _pod(ownerReferences=[{"kind": "FineTuneJob", "uid": "other"}])),
    ("no owner", _pod(ownerReferences=[])),
    ("owner of another kind", _pod(ownerReferences=[{"kind": "Job", "uid": JOB.metadata.uid}])),
    ("attempt label not matching the name", _pod(labels=_labels(**{ATTEMPT_LABEL: "999"}))),
    ("rank label not matching the name", _pod(labels=_labels(**{RANK_LABEL: "1"}))),
    ("another job's label", _pod(labels=_labels(**{JOB_LABEL: "other"}))),
    ("no attempt label", _pod(labels={JOB_LABEL: "bot", RANK_LABEL: "0"})),
    ("no rank label", _pod(labels={JOB_LABEL: "bot", ATTEMPT_LABEL: "2"})),
    ("a name the builders never give", _pod(name="bot-a999-0",
                                            labels=_labels(**{ATTEMPT_LABEL: "0999"}))),
    ("attempt 0", _pod(name="bot-a0-0", labels=_labels(**{ATTEMPT_LABEL: "0"}))),
    ("non-ASCII digits", _pod(labels=_labels(**{ATTEMPT_LABEL: "\uff12"}))),
    ("a huge attempt", _pod(name=f"bot-a{'9' * 30}-0",
                            labels=_labels(**{ATTEMPT_LABEL: "9" * 30}))),
])
def test_an_impostor_belongs_to_no_job(what: str, pod: dict) -> None:
    assert ownership.belongs(_pod(), JOB)  # the unmodified pod does
    assert not ownership.belongs(pod, JOB), what
    assert not ownership.speaks_for(pod, JOB), what


def test_only_the_current_attempt_speaks_for_the_job() -> None:
    assert ownership.speaks_for(slim_pod(make_pod(JOB, 2, 0)), JOB)
    stale = slim_pod(make_pod(JOB, 1, 0))
    assert ownership.belongs(stale, JOB)  # still the job's: deleted as stale
    assert not ownership.speaks_for(stale, JOB)
    later = slim_pod(make_pod(JOB, 3, 0))
    assert ownership.belongs(later, JOB) and not ownership.speaks_for(later, JOB)


def test_the_impostor_event_names_no_job() -> None:
    text = ownership.IMPOSTOR_MESSAGE
    assert JOB.metadata.name not in text and JOB.metadata.namespace not in text
    assert "delete it" in text  # what to do


def _or(built: str, *others: str) -> st.SearchStrategy[str]:
    """The builder's value, or something else."""
    return st.one_of(st.just(built), st.sampled_from(others), st.text(max_size=12))


@example(namespace="team-b", uid=JOB.metadata.uid, attempt="2", rank="0", name="bot-a2-0")
@given(namespace=_or("team-b", "team-a", ""), uid=_or(JOB.metadata.uid, "other"),
       attempt=_or("2", "999", "02", "0", "+2", " 2", "\uff12"), rank=_or("0", "00", "-0", "1"),
       name=_or("bot-a2-0", "bot-a999-0", "bot-a02-0", "bot-a1-0", "impostor"))
def test_belongs_only_when_everything_matches_the_builders(
        namespace: str, uid: str, attempt: str, rank: str, name: str) -> None:
    pod = _pod(namespace=namespace, name=name,
               ownerReferences=[{"kind": "FineTuneJob", "uid": uid, "controller": True}],
               labels=_labels(**{ATTEMPT_LABEL: attempt, RANK_LABEL: rank}))
    built = attempt.isascii() and attempt.isdigit() and rank.isascii() and rank.isdigit() \
        and str(int(attempt)) == attempt and str(int(rank)) == rank and int(attempt) >= 1 \
        and name == n.pod_name("bot", int(attempt), int(rank))
    expected = namespace == "team-b" and uid == JOB.metadata.uid and built
    assert ownership.belongs(pod, JOB) is expected
