"""The trace-driven simulator (benchmarks/simulate.py) replays a trace through the real admit()
and the baselines; its traces round-trip through JSONL, and its figures are consistent."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from finetune_api import memory

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import simulate  # benchmarks/ is not a package

pytestmark = pytest.mark.unit


@pytest.fixture(scope="module")
def trace() -> simulate.Trace:
    return simulate.generate(seed=7, load=1.0, jobs=60)


def test_trace_round_trips_through_jsonl(trace: simulate.Trace, tmp_path: Path) -> None:
    path = tmp_path / "trace.jsonl"
    simulate.write_trace(trace, path)
    again = simulate.read_trace(path)
    assert again.cluster == trace.cluster
    assert again.jobs == tuple(sorted(trace.jobs, key=lambda j: (j.submit_s, j.name)))


def test_generator_is_seeded_and_options_do_not_shift_other_draws() -> None:
    a = simulate.generate(seed=3, load=0.9, jobs=30)
    assert a == simulate.generate(seed=3, load=0.9, jobs=30)
    b = simulate.generate(seed=3, load=0.9, jobs=30, estimate_share=0.0)
    assert [(j.name, j.gpus, j.priority_class, j.duration_s) for j in a.jobs] == \
        [(j.name, j.gpus, j.priority_class, j.duration_s) for j in b.jobs]
    assert all(j.estimate_s is None for j in b.jobs)


def test_bad_trace_line_names_the_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"name": "j", "gpus": 1}\n')
    with pytest.raises(SystemExit, match=r"bad.jsonl:1: not a trace job"):
        simulate.read_trace(path)


@pytest.mark.parametrize("key", ["ours", "greedy", "fifo"])
def test_every_job_ends_and_figures_are_consistent(trace: simulate.Trace, key: str) -> None:
    # Sim.check() raises if a node, a quota or a gang is ever over-committed
    r = simulate.measure(trace, simulate.SCHEDULERS[key](), simulate.Costs())
    assert r.impossible == 0
    assert 0 < r.alloc <= 1 and 0 < r.alloc_while_waiting <= 1
    assert r.makespan_h > 0
    for p50, p95, worst in r.waits.values():
        assert 0 <= p50 <= p95 <= worst
    if key != "ours":  # the baselines never preempt
        assert r.preemptions == 0 and r.overhead_gpu_h == 0


def test_preemption_overhead_is_the_save_and_restart_cost() -> None:
    trace = simulate.generate(seed=9, load=1.0, jobs=60)  # a trace where critical jobs preempt
    costs = simulate.Costs(save_s=60, restart_s=120)
    sim = simulate.Sim(trace, simulate.Ours(), costs).run()
    done = [j for j in sim.jobs if j.end is not None]
    assert len(done) == len(trace.jobs)
    assert sum(j.preemptions for j in done) > 0
    for j in done:
        # held = one uninterrupted run + per preemption at most save + restart: no lost steps
        base = j.total_gpus * (j.t.duration_s + costs.restart_s)
        extra = j.held - base
        assert -1e-6 <= extra <= j.preemptions * j.total_gpus * (60 + 120) + 1e-6


# ---- GPU sharing (--sharing) -----------------------------------------------------------------

GiB = 2**30


@pytest.fixture(scope="module")
def busy_trace() -> simulate.Trace:
    """A saturated trace with each job's GPU memory (the estimator's, per drawn profile)."""
    return simulate.with_memory(simulate.generate(seed=7, load=1.5, jobs=80), seed=7)


def test_job_memory_is_the_estimate_of_a_profile_of_its_size(trace: simulate.Trace) -> None:
    got = simulate.with_memory(trace, seed=7)
    assert got == simulate.with_memory(trace, seed=7)
    strip = [dataclasses.replace(j, gpu_memory=None) for j in got.jobs]
    assert tuple(strip) == trace.jobs  # nothing else of the trace changes
    for j in got.jobs:
        size = max(s for s in simulate.PROFILES if s <= j.gpus)
        assert j.gpu_memory in {p.memory(j.gpus, j.nodes) for p in simulate.PROFILES[size]}
    assert {j.gpu_memory for j in got.jobs if j.gpus == 1} <= {
        memory.estimate_from_config(p.spec(1, 1), simulate.MODELS[p.model]).total
        for p in simulate.PROFILES[1]}
    # a job that declares its memory keeps it
    given = simulate.Trace(trace.cluster, (dataclasses.replace(trace.jobs[0],
                                                               gpu_memory=5 * GiB),))
    assert simulate.with_memory(given, seed=7).jobs[0].gpu_memory == 5 * GiB


def test_memory_does_not_change_the_whole_gpu_modes(trace: simulate.Trace) -> None:
    plain = simulate.measure(trace, simulate.Greedy(), simulate.Costs())
    with_mem = simulate.measure(simulate.with_memory(trace, 7), simulate.Greedy(),
                                simulate.Costs())
    skip = {"sim_seconds", "memory", "memory_while_waiting", "memory_of_allocated"}
    assert {k: v for k, v in dataclasses.asdict(plain).items() if k not in skip} == \
        {k: v for k, v in dataclasses.asdict(with_mem).items() if k not in skip}
    assert with_mem.shared == 0 and 0 < with_mem.memory_of_allocated < 1


@pytest.mark.parametrize("key", ["greedy", "ours"])
def test_sharing_packs_small_jobs_and_never_overcommits(busy_trace: simulate.Trace,
                                                        key: str) -> None:
    make_whole, make_shared = simulate.SHARING[key]
    # Sim.check() raises if a device's shares exceed its memory, a share lands on a device a
    # whole job holds, or a quota goes over in hundredths of a GPU
    sim = simulate.Sim(busy_trace, make_shared(), simulate.Costs()).run()
    assert all(j.end is not None for j in sim.jobs)
    shared = [j for j in sim.jobs if j.shared]
    assert len(shared) == sum(1 for j in busy_trace.jobs if j.gpus == 1 and j.nodes == 1)
    assert sim.peak_shares >= 2  # devices did carry several jobs at once
    whole = simulate.measure(busy_trace, make_whole(), simulate.Costs())
    packed = simulate.measure(busy_trace, make_shared(), simulate.Costs())
    assert whole.shared == 0 and packed.shared == len(shared)
    assert packed.memory_of_allocated > whole.memory_of_allocated
    assert packed.jobs_per_day >= whole.jobs_per_day


def test_check_refuses_an_overcommitted_device() -> None:
    jobs = tuple(simulate.TraceJob(name=f"j{i}", namespace="team-0", submit_s=0, gpus=1, nodes=1,
                                   priority_class="finetune-normal", duration_s=600,
                                   gpu_memory=50 * GiB) for i in range(2))
    trace = simulate.Trace(simulate.Cluster(nodes=1, gpus_per_node=2, quotas={"team-0": 2}),
                           jobs)
    sim = simulate.Sim(trace, simulate.SharingGreedy(), simulate.Costs())
    for j in sim.jobs:
        j.started, j.placement, j.device = 0.0, ("node-00",), 0
        sim.running[j.uid] = j
    assert sim.quota_units_free() == {"team-0": 200 - 2 * 63}  # 50/80 GiB -> 0.63 GPU each
    with pytest.raises(AssertionError, match=r"nodes over capacity \{'node-00/0': "):
        sim.check(0.0)
    sim.running[sim.jobs[1].uid].device = 1
    sim.check(0.0)
    assert sim.free_by_node() == {"node-00": 0}  # both devices carry a share: none whole


def test_sharing_flag_prints_the_comparison(capsys: pytest.CaptureFixture[str]) -> None:
    assert simulate.main(["--sharing", "--seeds", "7", "--loads", "1.5", "--jobs", "40"]) == 0
    out = capsys.readouterr().out
    assert "| 7 | 1.5 | greedy | " in out and "| 7 | 1.5 | ours | " in out
    assert out.count("The seeds: 82% -> 91% (+9 points), 15 -> 18 jobs per day (+20%)") == 2
