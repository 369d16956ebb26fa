"""The write budget's pure parts: which status changes are written, and how."""

from __future__ import annotations

from finetune_api.status import QueueStatus, position_words, shown_position
from finetune_operator.jobs.decide import tenant_words
from finetune_operator.jobs.writes import Change, classify, merge_patch

QUEUED = {"phase": "Queued", "queue": {"position": 3, "reason": "quota team-a has 0 free"},
          "conditions": [{"type": "Admitted", "status": "False", "reason": "QuotaExhausted",
                          "message": "quota team-a has 0 free"}]}


def test_nothing_changed_is_no_write() -> None:
    assert classify(QUEUED, dict(QUEUED)) == Change.NONE


def test_queue_text_alone_is_a_coalesced_queue_change() -> None:
    new = {**QUEUED, "queue": {"position": 2, "reason": "quota team-a has 0 free"},
           "conditions": [{**QUEUED["conditions"][0], "message": "other words"}]}
    assert classify(QUEUED, new) == Change.QUEUE


def test_a_new_wait_code_or_phase_is_material() -> None:
    new = {**QUEUED, "conditions": [{**QUEUED["conditions"][0], "reason": "Insufficient"}]}
    assert classify(QUEUED, new) == Change.MATERIAL
    assert classify(QUEUED, {**QUEUED, "phase": "Admitted"}) == Change.MATERIAL


def test_progress_alone_is_a_coalesced_progress_change() -> None:
    old = {"phase": "Running", "progress": {"step": 1, "loss": 2.0}}
    assert classify(old, {"phase": "Running", "progress": {"step": 9}}) == Change.PROGRESS
    assert classify(old, {"phase": "Succeeded", "progress": {"step": 9}}) == Change.MATERIAL


def test_merge_patch_nulls_nested_fields_that_went_away() -> None:
    old = {"progress": {"step": 5, "loss": 0.8, "etaSeconds": 30}, "queue": {"position": 1}}
    new = {"progress": {"step": 0}, "phase": "Queued"}
    assert merge_patch(old, new) == {"progress": {"step": 0, "loss": None, "etaSeconds": None},
                                     "queue": None, "phase": "Queued"}


def test_positions_are_exact_for_the_first_ten_and_one_value_further_back() -> None:
    assert [shown_position(p) for p in (1, 7, 10, 11, 37, 2001)] == [1, 7, 10, 11, 11, 11]
    assert len({shown_position(p) for p in range(1, 10_001)}) == 11
    assert [position_words(p) for p in (3, 10, 11)] == ["3", "10", "11 or later"]
    assert QueueStatus.waiting(4, "r").to_wire() == {"position": 4, "reason": "r"}
    # further back: the status says so, and no more (nothing to rewrite while it moves there)
    assert QueueStatus.waiting(11, "r").to_wire() == {"positionAtLeast": 11, "reason": "r"}
    assert classify({**QUEUED, "queue": QueueStatus.waiting(shown_position(40), "q").to_wire()},
                    {**QUEUED, "queue": QueueStatus.waiting(shown_position(170), "q").to_wire()}
                    ) == Change.NONE


def test_messages_never_name_another_namespaces_job() -> None:
    keys = {"team-a/bot", "team-b/secret-model"}
    text = "waiting behind team-b/secret-model and team-a/bot; needs 2 nvidia.com/gpu"
    assert tenant_words(text, "team-a", keys) == (
        "waiting behind a job in another namespace and team-a/bot; needs 2 nvidia.com/gpu")


def test_node_usage_counts_a_foreign_pod_the_scheduler_nominated() -> None:
    from finetune_operator.kube.cache import slim_usage

    pod = {"metadata": {"name": "intruder", "labels": {}},
           "spec": {"containers": [{"resources": {"requests": {"nvidia.com/gpu": "1"}}}]},
           "status": {"phase": "Pending", "nominatedNodeName": "node-0"}}
    assert slim_usage(pod) is not None and slim_usage(pod)["spec"]["nodeName"] == "node-0"
    pod["status"] = {"phase": "Pending"}  # neither bound nor nominated: takes nothing yet
    assert slim_usage(pod) is None
    ours = dict(pod, metadata={"name": "x", "labels": {
        "app.kubernetes.io/managed-by": "finetune-operator"}}, spec={**pod["spec"],
                                                                    "nodeName": "node-0"})
    assert slim_usage(ours) is None  # our own pods are counted from the pods store
