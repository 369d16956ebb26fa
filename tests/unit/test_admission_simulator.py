"""The trace-driven simulator (benchmarks/simulate.py) replays a trace through the real admit()
and the baselines; its traces round-trip through JSONL, and its figures are consistent."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

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
