"""Helpers of benchmarks/bench_scale.py: load (fast object creation and watches), measure
(apiserver and operator /metrics, latency statistics, RSS) and kueue (build and run Kueue)."""
