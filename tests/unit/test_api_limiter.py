"""The operator's client-side rate limit (FINETUNE_API_QPS / FINETUNE_API_BURST): one token
bucket shared by every call of Kube; a burst past the bucket waits for tokens. Counted on an
injected clock, never timed."""

from __future__ import annotations

import threading

import pytest
from kubernetes import client

from finetune_operator.kube.client import Kube, TokenBucket
from finetune_operator.settings import OperatorSettings, SettingsError


class FakeClock:
    """Time that moves only when a caller sleeps (the sleeps are recorded)."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self.lock = threading.Lock()

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        with self.lock:
            self.sleeps.append(seconds)


def test_burst_passes_then_every_call_waits_for_its_own_token() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=10, burst=5, clock=clock, sleep=clock.sleep)
    waits = [bucket.acquire() for _ in range(8)]
    assert waits[:5] == [0, 0, 0, 0, 0]  # the burst goes at once
    assert bucket.waits == 3 and len(clock.sleeps) == 3
    # each caller past the burst reserved the next free slot: 1, 2 and 3 tokens' time
    assert clock.sleeps == pytest.approx([0.1, 0.2, 0.3])


def test_tokens_refill_at_qps_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=4, burst=5, clock=clock, sleep=clock.sleep)
    for _ in range(5):
        bucket.acquire()
    clock.now += 0.75  # three tokens back
    assert [bucket.acquire() for _ in range(3)] == [0, 0, 0]
    assert bucket.acquire() > 0
    clock.now += 3600  # a long idle time refills no more than the burst
    before = bucket.waits
    for _ in range(5):
        bucket.acquire()
    assert bucket.waits == before  # the pending reservation was paid back, then 5 free
    bucket.acquire()
    assert bucket.waits == before + 1


def test_qps_zero_is_no_limit_and_burst_defaults_to_twice_qps() -> None:
    clock = FakeClock()
    free = TokenBucket(qps=0, clock=clock, sleep=clock.sleep)
    assert all(free.acquire() == 0 for _ in range(10_000))
    assert clock.sleeps == []
    assert TokenBucket(qps=50).burst == 100
    assert TokenBucket(qps=0.2).burst == 1


def test_concurrent_callers_share_one_bucket() -> None:
    clock = FakeClock()
    bucket = TokenBucket(qps=5, burst=4, clock=clock, sleep=clock.sleep)
    threads = [threading.Thread(target=bucket.acquire) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert bucket.waits == 16 and len(clock.sleeps) == 16
    # 16 distinct slots, one token apart: nobody shares a slot
    assert sorted(clock.sleeps) == pytest.approx([0.2 * i for i in range(1, 17)])


def test_every_kind_of_kube_call_takes_from_the_same_bucket() -> None:
    """Writes, reads, watches and Lease calls are all counted through one bucket."""
    clock = FakeClock()
    bucket = TokenBucket(qps=1, burst=2, clock=clock, sleep=clock.sleep)
    kube = Kube(client.ApiClient(client.Configuration()), limiter=bucket)
    for verb, resource in (("create", "Pod"), ("list", "pods"), ("watch", "nodes"),
                           ("replace", "Lease"), ("patch", "finetunejobs/status")):
        kube._count(verb, resource)
    assert sum(kube.calls.values()) == 5
    assert bucket.waits == 3


def test_settings_flags_and_env() -> None:
    s = OperatorSettings.from_env({"FINETUNE_API_QPS": "50", "FINETUNE_API_BURST": "100"})
    assert (s.cycle.api_qps, s.cycle.api_burst) == (50, 100)
    assert (OperatorSettings().cycle.api_qps, OperatorSettings().cycle.api_burst) == (0, 0)
    with pytest.raises(SettingsError, match="FINETUNE_API_QPS"):
        OperatorSettings.from_env({"FINETUNE_API_QPS": "-1"})
