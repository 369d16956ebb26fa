"""The inline SVG charts: every point drawn is countable, markers are drawn, nothing breaks on
odd numbers."""

from __future__ import annotations

import math
import re

from finetune_operator.console.charts import Marker, line_chart, scatter, sparkline


def test_a_sparkline_needs_two_points() -> None:
    assert sparkline([]) == "" and sparkline([(1, 2.0)]) == ""
    svg = sparkline([(1, 2.0), (2, 1.5), (3, math.nan), (4, 1.0)])
    assert 'data-points="3"' in svg and svg.count(",") == 3


def test_a_line_chart_draws_each_series_point_and_marker() -> None:
    svg = line_chart([("attempt 1", [(1, 2.0), (2, 1.8)]), ("attempt 2", [(2, 1.7), (3, 1.2)])],
                     title="loss <train>", markers=[Marker(2, "preemption", "preempted"),
                                                    Marker(2, "checkpoint", "ck")],
                     chart_id="loss-chart")
    assert 'id="loss-chart"' in svg and 'data-points="4"' in svg
    assert len(re.findall(r'<circle class="pt s0"', svg)) == 2
    assert len(re.findall(r'<circle class="pt s1"', svg)) == 2
    assert 'class="marker preemption"' in svg and 'class="marker checkpoint"' in svg
    assert "loss &lt;train&gt;" in svg  # titles are escaped


def test_an_empty_chart_is_an_empty_frame() -> None:
    svg = line_chart([("x", [])], title="t")
    assert 'data-points="0"' in svg and "<circle" not in svg


def test_a_flat_line_has_no_division_by_zero() -> None:
    svg = line_chart([("x", [(5, 1.0), (5, 1.0)])], title="t")
    assert "nan" not in svg and 'data-points="2"' in svg


def test_the_scatter_marks_the_best_trial() -> None:
    svg = scatter([(1e-4, 0.9, "a"), (1e-3, 0.7, "b"), (1e-2, 1.1, "c")], title="t", best="b",
                  log_x=True)
    assert svg.count("<circle") == 3
    assert re.search(r'<circle class="pt best"[^>]*data-trial="b"', svg)
    assert "★ b" in svg
    # log scale: zero or negative x cannot be drawn and is left out
    assert scatter([(0, 1.0, "z")], title="t", best=None, log_x=True).count("<circle") == 0
