"""heap.py: after a full garbage collection its survivors are frozen; the freeze is lifted
every rescan period, so a later full collection scans everything once."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from finetune_operator.heap import Heap

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def _unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()  # the test process keeps its usual collector


def test_survivors_of_a_full_collection_are_frozen_and_thawed_each_period() -> None:
    now = [0.0]
    heap = Heap(rescan_seconds=60.0, monotonic=lambda: now[0])
    heap.after_cycle()
    assert heap.freezes == 0 and gc.get_freeze_count() == 0  # no full collection yet
    kept = [{"job": i} for i in range(1000)]  # noqa: F841 - objects that survive
    gc.collect()
    heap.after_cycle()
    assert heap.freezes == 1 and gc.get_freeze_count() >= 1000
    heap.after_cycle()
    assert heap.freezes == 1  # one freeze per full collection
    now[0] = 61.0
    heap.after_cycle()
    assert heap.rescans == 1 and gc.get_freeze_count() == 0  # the next full one scans all


def test_cyclic_garbage_made_after_a_freeze_is_still_collected() -> None:
    heap = Heap(monotonic=lambda: 0.0)
    gc.collect()
    heap.after_cycle()
    assert gc.get_freeze_count() > 0

    class Node:
        pass

    a, b = Node(), Node()
    a.other, b.other = b, a  # type: ignore[attr-defined]
    del a, b
    assert gc.collect() >= 2  # young cycles: found without the frozen generation
