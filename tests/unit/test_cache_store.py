"""The watch cache's Store when several reflectors fill it (one per watched namespace): a relist
of one namespace replaces that namespace's entries only. It once replaced the whole store, so
with `FINETUNE_NAMESPACES` listing two namespaces one relist dropped the other namespace's jobs,
pods and quotas, and the operator admitted past that namespace's quota
(tests/cluster/test_scale_audit.py found it)."""

from __future__ import annotations

from typing import Any

from finetune_operator.jobs.feeds import Feeds, uid_key
from finetune_operator.kube.cache import Store, slim_pod
from tests.builders.jobkube import RecordingJobKube
from tests.builders.jobs import make_settings


def recording() -> tuple[Store, list[tuple[str, Any, Any]]]:
    seen: list[tuple[str, Any, Any]] = []
    store = Store("pods", lambda kind, key, old, new: seen.append((key, old, new)))
    return store, seen


def test_a_relist_replaces_only_its_own_part() -> None:
    store, seen = recording()
    store.replace({"a1": 1, "a2": 2}, "team-a")
    store.replace({"b1": 10}, "team-b")
    seen.clear()
    store.replace({"a2": 2, "a3": 3}, "team-a")  # a1 went, a3 came; team-b untouched
    assert dict(store.items()) == {"a2": 2, "a3": 3, "b1": 10}
    assert sorted(seen) == [("a1", 1, None), ("a3", None, 3)]
    store.replace({}, "team-b")
    assert dict(store.items()) == {"a2": 2, "a3": 3}


def test_synced_once_every_expected_part_was_listed() -> None:
    store, _ = recording()
    store.expect("team-a")
    store.expect("team-b")
    store.replace({"a1": 1}, "team-a")
    assert not store.synced.is_set()
    store.replace({}, "team-b")
    assert store.synced.is_set()


def test_watch_events_and_own_writes_belong_to_their_part() -> None:
    store, seen = recording()
    store.replace({"a1": 1}, "team-a")
    store.replace({"b1": 10}, "team-b")
    store.put("a2", 2, part="team-a")      # a watch event
    store.put("b2", 20, part="team-b", notify=False)  # the operator's own create
    store.put("a1", None, part="team-a")   # deleted
    assert dict(store.items()) == {"a2": 2, "b1": 10, "b2": 20}
    store.replace({"b1": 10}, "team-b")    # b2 is gone from the API: the relist drops it
    assert dict(store.items()) == {"a2": 2, "b1": 10}
    assert ("b2", 20, None) in seen


def test_one_part_for_the_whole_collection_is_the_old_behaviour() -> None:
    store, _ = recording()
    store.replace({"x": 1, "y": 2})
    store.put("z", 3)
    store.replace({"y": 2})
    assert dict(store.items()) == {"y": 2}
    assert store.synced.is_set()


def test_a_create_response_never_replaces_what_the_watch_delivered() -> None:
    """The operator caches a pod it created from the create's response, before the watch's
    event; when the watch was faster (the pod already bound and Running), the response, the
    oldest version, must not replace it: slim pods carry no resourceVersion, and a stale Pending
    pod stayed in the cache while the real one ran, its job Admitted forever (a 1-in-3 flake
    of tests/cluster/test_operator_lifecycle.py under load)."""
    feeds = Feeds(RecordingJobKube(), make_settings(), lambda: None, lambda pod, bad: None)
    created = {"metadata": {"name": "j-a1-0", "namespace": "team-a", "uid": "p1",
                            "ownerReferences": [{"kind": "FineTuneJob", "uid": "j1",
                                                 "controller": True}]},
               "spec": {"containers": []}, "status": {"phase": "Pending"}}
    running = {**created, "spec": {"nodeName": "n1", "containers": []},
               "status": {"phase": "Running"}}
    key = uid_key(created)
    feeds.pods.put(key, slim_pod(running))  # the watch first
    feeds.created_pod(created)              # then the create's response
    assert feeds.pods.get(key)["status"]["phase"] == "Running"
    other = {**created, "metadata": {**created["metadata"], "name": "j-a1-1", "uid": "p2"}}
    feeds.created_pod(other)                # no watch event yet: cached from the response
    assert feeds.pods.get(uid_key(other))["status"]["phase"] == "Pending"
    store, seen = recording()
    store.put("a", 2)
    store.add("a", 1)
    store.add("b", 1)
    assert dict(store.items()) == {"a": 2, "b": 1} and seen == [("a", None, 2), ("b", None, 1)]
