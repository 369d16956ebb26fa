"""GPU sharing by memory (finetune_operator.admission.sharing): best fit, never over a device,
whole jobs on whole devices only, quota by memory fraction, deterministic."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from finetune_operator.admission.model import WaitCode
from finetune_operator.admission.sharing import (
    QUOTA_UNITS,
    Device,
    Share,
    SharedJob,
    is_shared,
    pack,
    quota_charge,
    quota_used,
    take_whole,
    to_units,
    whole_free,
)

pytestmark = pytest.mark.unit

GiB = 2**30


def gpu(node: str = "n1", index: int = 0, gib: int = 80, **kw: object) -> Device:
    return Device(node=node, index=index, capacity=gib * GiB, **kw)  # type: ignore[arg-type]


def job(name: str, gib: float, ns: str = "team-a",
        nodes: frozenset[str] | None = None) -> SharedJob:
    return SharedJob(key=f"{ns}/{name}", memory=int(gib * GiB), namespace=ns, nodes=nodes)


def share(name: str, gib: float, ns: str = "team-a") -> Share:
    return Share(job=f"{ns}/{name}", memory=int(gib * GiB), namespace=ns)


# ---- examples --------------------------------------------------------------------------------


def test_four_small_jobs_share_one_device_and_a_fifth_waits_with_the_reason() -> None:
    devices = [gpu(index=0, gib=48)]
    out = pack(devices, [job(f"j{i}", 12) for i in range(4)] + [job("big", 24)])
    assert [(p.node, p.index) for p in out.placed] == [("n1", 0)] * 4
    [wait] = out.waiting
    assert wait.job.key == "team-a/big" and wait.code is WaitCode.CAPACITY
    assert wait.reason == "needs 24.0 GiB on one GPU; largest free share 0.0 GiB"
    assert out.devices[0].used == 48 * GiB


def test_best_fit_fills_a_used_device_before_breaking_an_empty_one() -> None:
    devices = [gpu(index=0), gpu(index=1, shares=(share("old", 60),)), gpu(index=2)]
    out = pack(devices, [job("a", 15), job("b", 15)])
    assert [(p.job.key, p.index) for p in out.placed] == [("team-a/a", 1), ("team-a/b", 0)]
    assert whole_free(out.devices) == {"n1": 1}  # device 2 stays whole for whole jobs


def test_the_reason_names_the_largest_free_share() -> None:
    devices = [gpu(index=0, shares=(share("x", 68),)), gpu(index=1, shares=(share("y", 70),))]
    [wait] = pack(devices, [job("a", 24)]).waiting
    assert wait.reason == "needs 24.0 GiB on one GPU; largest free share 12.0 GiB"
    assert not wait.never


def test_a_share_larger_than_any_device_can_never_fit() -> None:
    [wait] = pack([gpu(gib=40)], [job("a", 48)]).waiting
    assert wait.never and wait.code is WaitCode.CAPACITY
    assert "the largest GPU that allows sharing has 40.0 GiB" in wait.reason


def test_devices_that_do_not_share_or_are_held_take_no_share() -> None:
    devices = [gpu(index=0, shareable=False), gpu(index=1, held=True)]
    out = pack(devices, [job("a", 4)])
    assert not out.placed and out.waiting[0].code is WaitCode.CAPACITY
    out = pack([gpu(shareable=False)], [job("a", 4)])
    assert out.waiting[0].code is WaitCode.NO_NODES and out.waiting[0].never


def test_node_eligibility_is_respected() -> None:
    devices = [gpu("n1", shares=(share("x", 70),)), gpu("n2")]
    out = pack(devices, [job("a", 8, nodes=frozenset({"n2"}))])
    assert [(p.node, p.index) for p in out.placed] == [("n2", 0)]


def test_whole_jobs_take_only_devices_without_shares() -> None:
    devices = [gpu(index=0, shares=(share("x", 4),)), gpu(index=1), gpu(index=2)]
    assert whole_free(devices) == {"n1": 2}
    after = take_whole(devices, "n1", 2)
    assert [d.held for d in after] == [False, True, True]
    assert whole_free(after) == {"n1": 0}
    with pytest.raises(ValueError, match="node n1 has 0 whole-free GPU"):
        take_whole(after, "n1", 1)
    # a held device takes no share, even a tiny one
    assert not pack(after, [job("a", 80)]).placed


def test_only_one_gpu_one_pod_jobs_with_memory_share() -> None:
    assert is_shared(1, 1, 10 * GiB)
    assert not is_shared(1, 1, None)  # whole GPU
    assert not is_shared(2, 1, 10 * GiB)  # several GPUs per pod
    assert not is_shared(1, 2, 10 * GiB)  # a gang


@pytest.mark.parametrize("gib,capacity,hundredths", [
    (10, 80, 13),  # 12.5 % rounds up
    (20, 80, 25),  # exact
    (80, 80, 100),
    (0.001, 80, 1),  # never less than 1/100
    (24, 40, 60),
])
def test_quota_counts_the_memory_fraction_rounded_up(gib: float, capacity: int,
                                                     hundredths: int) -> None:
    assert quota_charge(int(gib * GiB), capacity * GiB) == hundredths


def test_quota_blocks_a_share_and_charges_what_it_took() -> None:
    devices = [gpu(index=0), gpu(index=1)]
    out = pack(devices, [job("a", 20), job("b", 20), job("c", 10, ns="team-b")],
               quota_free={"team-a": 30})
    assert [p.job.key for p in out.placed] == ["team-a/a", "team-b/c"]
    [wait] = out.waiting
    assert wait.code is WaitCode.QUOTA
    assert wait.reason == "its share counts 0.25 GPU of quota; namespace team-a has 0.05 GPU left"
    assert out.quota_free == {"team-a": 5}
    assert quota_used(out.devices) == {"team-a": 25, "team-b": 13}


def test_quota_tries_a_larger_device_where_the_fraction_is_smaller() -> None:
    devices = [gpu(index=0, gib=40, shares=(share("x", 16),)), gpu(index=1, gib=80)]
    # best fit is the 40 GiB device (24 free -> 4 left), charging 0.50; 0.25 on the 80 GiB one
    out = pack(devices, [job("a", 20)], quota_free={"team-a": 30})
    assert [(p.index, p.charge) for p in out.placed] == [(1, 25)]
    out = pack(devices, [job("a", 20)], quota_free={"team-a": 50})
    assert [(p.index, p.charge) for p in out.placed] == [(0, 50)]


def test_bad_inputs_are_refused_with_the_value() -> None:
    with pytest.raises(ValueError, match="a share must be positive, got 0 bytes"):
        pack([gpu()], [SharedJob(key="ns/a", memory=0)])
    with pytest.raises(ValueError, match="capacity must be positive"):
        quota_charge(1, 0)


# ---- properties ------------------------------------------------------------------------------

CAPACITIES = st.sampled_from([16, 24, 40, 48, 80, 141])


@st.composite
def clusters(draw: st.DrawFn) -> tuple[list[Device], list[SharedJob], dict[str, int] | None]:
    devices: list[Device] = []
    for n in range(draw(st.integers(1, 3))):
        for i in range(draw(st.integers(1, 4))):
            cap = draw(CAPACITIES) * GiB
            kind = draw(st.sampled_from(["empty", "shared", "held", "noshare"]))
            shares: tuple[Share, ...] = ()
            if kind == "shared":
                used = 0
                for k in range(draw(st.integers(1, 3))):
                    mem = draw(st.integers(1, cap - used)) if cap - used > 0 else 0
                    if mem:
                        shares += (Share(job=f"old/{n}-{i}-{k}", memory=mem, namespace="old"),)
                        used += mem
            devices.append(Device(node=f"n{n}", index=i, capacity=cap, shares=shares,
                                  held=kind == "held", shareable=kind != "noshare"))
    jobs = [SharedJob(key=f"ns{k % 2}/j{k}", namespace=f"ns{k % 2}",
                      memory=draw(st.integers(1, 150)) * GiB // 2,
                      nodes=draw(st.sampled_from([None, frozenset({"n0"}),
                                                  frozenset({"n1", "n2"})])))
               for k in range(draw(st.integers(0, 12)))]
    quota = draw(st.one_of(st.none(), st.fixed_dictionaries(
        {"ns0": st.integers(0, 300)})))
    return devices, jobs, quota


@given(clusters())
@settings(max_examples=300, deadline=None)
def test_property_no_device_over_capacity_and_whole_devices_untouched(
        c: tuple[list[Device], list[SharedJob], dict[str, int] | None]) -> None:
    devices, jobs, quota = c
    out = pack(devices, jobs, quota)
    before = {d.key: d for d in devices}
    assert {d.key for d in out.devices} == set(before)
    assert len(out.placed) + len(out.waiting) == len(jobs)
    for d in out.devices:
        assert sum(s.memory for s in d.shares) <= d.capacity
        new = d.shares[len(before[d.key].shares):]
        assert d.shares[:len(before[d.key].shares)] == before[d.key].shares
        if new:  # a job lands only where sharing is allowed and no whole job holds the device
            assert d.shareable and not d.held
            assert sum(s.memory for s in d.shares) <= d.capacity
    for p in out.placed:
        assert p.job.nodes is None or p.node in p.job.nodes
    # a device free for a whole job carries no share at all
    for d in out.devices:
        if d.whole_free:
            assert not d.shares and not d.held
    assert sum(whole_free(out.devices).values()) == sum(
        1 for d in out.devices if not d.held and not d.shares)


@given(clusters())
@settings(max_examples=300, deadline=None)
def test_property_quota_is_the_rounded_up_fraction_and_never_overdrawn(
        c: tuple[list[Device], list[SharedJob], dict[str, int] | None]) -> None:
    devices, jobs, quota = c
    out = pack(devices, jobs, quota)
    caps = {d.key: d.capacity for d in out.devices}
    for p in out.placed:
        cap = caps[(p.node, p.index)]
        assert p.charge == quota_charge(p.job.memory, cap)
        assert 1 <= p.charge <= QUOTA_UNITS
        # the smallest whole number of hundredths that covers the fraction
        assert p.charge * cap >= p.job.memory * QUOTA_UNITS or p.charge == QUOTA_UNITS
        assert p.charge == 1 or (p.charge - 1) * cap < p.job.memory * QUOTA_UNITS
    if quota is not None:
        spent = sum(p.charge for p in out.placed if p.job.namespace == "ns0")
        assert spent <= quota["ns0"]
        assert out.quota_free is not None and out.quota_free["ns0"] == quota["ns0"] - spent
    assert quota_used(out.devices).get("ns0", 0) == sum(
        p.charge for p in out.placed if p.job.namespace == "ns0")


@given(clusters(), st.randoms(use_true_random=False))
@settings(max_examples=200, deadline=None)
def test_property_deterministic_whatever_the_device_order(
        c: tuple[list[Device], list[SharedJob], dict[str, int] | None],
        rng: random.Random) -> None:
    devices, jobs, quota = c
    shuffled = list(devices)
    rng.shuffle(shuffled)
    a, b = pack(devices, jobs, quota), pack(shuffled, jobs, quota)
    assert a == b
    assert a == pack(devices, jobs, quota)


@given(clusters())
@settings(max_examples=200, deadline=None)
def test_property_a_waiting_job_fits_nowhere_it_may_go(
        c: tuple[list[Device], list[SharedJob], dict[str, int] | None]) -> None:
    devices, jobs, _ = c
    out = pack(devices, jobs)  # without quota: every wait is capacity or nodes
    # replay: at the moment each waiting job was considered, no eligible device had room
    state = {d.key: d for d in devices}
    placed = {p.job.key: p for p in out.placed}
    for j in jobs:
        p = placed.get(j.key)
        if p is None:
            assert all(d.free < j.memory for d in state.values() if d.shareable
                       and (j.nodes is None or d.node in j.nodes))
            continue
        d = state[(p.node, p.index)]
        # best fit: no eligible device with room had less free memory
        assert all(o.free >= d.free for o in state.values() if o.shareable
                   and o.free >= j.memory and (j.nodes is None or o.node in j.nodes))
        state[d.key] = Device(node=d.node, index=d.index, capacity=d.capacity,
                              shareable=d.shareable, held=d.held,
                              shares=(*d.shares, Share(job=j.key, memory=j.memory)))


def test_to_units_is_whole_gpus_in_hundredths() -> None:
    assert to_units(3) == 300
