"""Child names, labels, selectors and owner references."""

from __future__ import annotations

import re

import pytest

from finetune_operator.jobs.build import build_children
from finetune_operator.jobs.build import names as n
from tests.builders.jobs import make_job, make_settings

pytestmark = pytest.mark.unit

DNS1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
LABEL_VALUE = re.compile(r"^(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])?$")


def test_short_names_follow_the_convention() -> None:
    assert n.config_map_name("bot") == "bot-config"
    assert n.pvc_name("bot") == "bot-checkpoints"
    assert n.service_name("bot") == "bot-workers"
    assert n.pod_name("bot", 3, 1) == "bot-a3-1"
    assert n.pod_names("bot", 2, 3) == ["bot-a2-0", "bot-a2-1", "bot-a2-2"]


@pytest.mark.parametrize(
    "job_name",
    [
        "x" * 63, "a" * 253, "my.dotted.job", "1starts-with-digit",
        "ends-with-dash-before-" + "b" * 50,
    ],
)
def test_names_are_valid_dns_labels_and_deterministic(job_name: str) -> None:
    made = [
        n.config_map_name(job_name), n.pvc_name(job_name),
        n.service_name(job_name), n.pod_name(job_name, 12345, 255),
    ]
    for name in made:
        assert len(name) <= 63, name
        assert DNS1035.match(name), name
    assert made[-1].endswith("-a12345-255")
    assert n.pod_name(job_name, 12345, 255) == made[-1]
    assert n.label_value(job_name) == n.label_value(job_name)
    assert len(n.label_value(job_name)) <= 63
    assert LABEL_VALUE.match(n.label_value(job_name))


def test_long_names_sharing_a_prefix_do_not_collide() -> None:
    a, b = "p" * 70 + "-one", "p" * 70 + "-two"
    assert n.pod_name(a, 1, 0) != n.pod_name(b, 1, 0)
    assert n.config_map_name(a) != n.config_map_name(b)
    assert n.label_value(a) != n.label_value(b)
    # dots normalised: a.b and a-b must stay distinct
    assert n.config_map_name("a.b") != n.config_map_name("a-b")


def test_pod_name_rejects_bad_numbers() -> None:
    with pytest.raises(ValueError, match="attempt"):
        n.pod_name("bot", 0, 0)
    with pytest.raises(ValueError, match="rank"):
        n.pod_name("bot", 1, -1)


def test_labels_and_selectors() -> None:
    job = make_job(name="bot")
    assert n.labels(job, attempt=2, rank=1) == {
        "app.kubernetes.io/name": "finetune-trainer",
        "app.kubernetes.io/instance": "bot",
        "app.kubernetes.io/managed-by": "finetune-operator",
        "app.kubernetes.io/part-of": "finetune-operator",
        "finetune.dev/job": "bot",
        "finetune.dev/attempt": "2",
        "finetune.dev/rank": "1",
    }
    pod_labels = n.labels(job, attempt=2, rank=1)
    job_sel = n.job_selector("bot")
    att_sel = n.attempt_selector("bot", 2)
    assert job_sel.items() <= pod_labels.items()
    assert att_sel.items() <= pod_labels.items()
    assert not n.attempt_selector("bot", 3).items() <= pod_labels.items()
    assert not n.job_selector("bot2").items() <= pod_labels.items()
    assert n.selector_string(att_sel) == (
        "app.kubernetes.io/managed-by=finetune-operator,finetune.dev/attempt=2,finetune.dev/job=bot"
    )


def test_owner_reference_and_it_is_on_every_child() -> None:
    # every child; the checkpoint claim only with whenDeleted Delete (by default it is kept)
    job = make_job(nodes=2, storage={"size": "20Gi", "whenDeleted": "Delete"})
    ref = n.owner_reference(job)
    assert ref == {
        "apiVersion": "finetune.dev/v1alpha1", "kind": "FineTuneJob", "name": "bot",
        "uid": job.metadata.uid, "controller": True, "blockOwnerDeletion": True,
    }
    children = build_children(job, make_settings(), 1, "finetune-high", None)
    for obj in children.all():
        meta = obj["metadata"]
        assert meta["ownerReferences"] == [ref], obj["kind"]
        assert meta["namespace"] == "team-a"
        assert meta["labels"]["app.kubernetes.io/instance"] == "bot"
        assert meta["labels"]["finetune.dev/job"] == "bot"
        assert meta["annotations"]["finetune.dev/job-uid"] == job.metadata.uid
        assert len(meta["name"]) <= 63


def test_owner_reference_needs_a_uid() -> None:
    job = make_job(uid="")
    with pytest.raises(ValueError, match=r"no metadata\.uid"):
        n.owner_reference(job)
