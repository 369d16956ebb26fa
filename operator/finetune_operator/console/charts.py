"""Inline SVG charts, drawn on the server: a sparkline for a list row, a line chart with
vertical markers (checkpoints, preemptions) for a job's curves, and a scatter plot of a metric
against a parameter for a sweep. Pure: numbers in, markup out; no script, no external asset, so
a page is complete offline and a test can count its points (each point is a ``<circle>`` with a
``data-x``/``data-y``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape

Point = tuple[float, float]


@dataclass(frozen=True)
class Marker:
    """A vertical line at ``x`` (a step): ``kind`` is ``checkpoint`` or ``preemption``."""

    x: float
    kind: str
    label: str


def _finite(points: Sequence[Point]) -> list[Point]:
    return [(float(x), float(y)) for x, y in points
            if math.isfinite(float(x)) and math.isfinite(float(y))]


def _scale(lo: float, hi: float, size: float, pad: float,
           flip: bool = False) -> Callable[[float], float]:
    span = hi - lo or 1.0

    def f(v: float) -> float:
        t = (v - lo) / span
        return pad + (1 - t if flip else t) * (size - 2 * pad)

    return f


def sparkline(points: Sequence[Point], width: int = 120, height: int = 28) -> str:
    """A row's small loss curve ("" when fewer than two points)."""
    pts = _finite(points)
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    fx, fy = _scale(min(xs), max(xs), width, 2), _scale(min(ys), max(ys), height, 3, flip=True)
    path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
    return (f'<svg class="spark" width="{width}" height="{height}" viewBox="0 0 {width} {height}"'
            f' role="img" data-points="{len(pts)}"><polyline fill="none" stroke="currentColor"'
            f' stroke-width="1.5" points="{path}"/></svg>')


def _ticks(lo: float, hi: float, n: int = 4) -> list[float]:
    if hi <= lo:
        return [lo]
    return [lo + (hi - lo) * i / n for i in range(n + 1)]


def _num(v: float) -> str:
    return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"


def line_chart(series: Sequence[tuple[str, Sequence[Point]]], *, title: str,
               markers: Sequence[Marker] = (), width: int = 560, height: int = 220,
               chart_id: str = "") -> str:
    """Lines (one per named series) against the step, with ``markers`` as vertical lines."""
    drawn = [(name, sorted(_finite(pts))) for name, pts in series]
    every = [p for _, pts in drawn for p in pts]
    ident = f' id="{escape(chart_id)}"' if chart_id else ""
    head = (f'<svg class="chart"{ident} width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
            f'data-points="{len(every)}"><title>{escape(title)}</title>')
    if not every:
        return head + "</svg>"
    xs = [p[0] for p in every] + [m.x for m in markers]
    ys = [p[1] for p in every]
    left, bottom = 48, 22
    fx = _scale(min(xs), max(xs), width - left, 8)
    fy = _scale(min(ys), max(ys), height - bottom, 8, flip=True)
    out = [head, f'<g transform="translate({left},0)">']
    for t in _ticks(min(ys), max(ys)):
        y = fy(t)
        out.append(f'<line class="grid" x1="0" x2="{width - left}" y1="{y:.1f}" y2="{y:.1f}"/>'
                   f'<text class="tick" x="-4" y="{y + 3:.1f}" text-anchor="end">{_num(t)}</text>')
    for t in _ticks(min(xs), max(xs)):
        x = fx(t)
        out.append(f'<text class="tick" x="{x:.1f}" y="{height - 6}" text-anchor="middle">'
                   f'{t:.0f}</text>')
    for m in markers:
        x = fx(m.x)
        out.append(f'<line class="marker {escape(m.kind)}" x1="{x:.1f}" x2="{x:.1f}" y1="4" '
                   f'y2="{height - bottom}"><title>{escape(m.label)}</title></line>')
    for i, (name, pts) in enumerate(drawn):
        if not pts:
            continue
        path = " ".join(f"{fx(x):.1f},{fy(y):.1f}" for x, y in pts)
        out.append(f'<polyline class="line s{i}" fill="none" points="{path}">'
                   f'<title>{escape(name)}</title></polyline>')
        out.extend(f'<circle class="pt s{i}" cx="{fx(x):.1f}" cy="{fy(y):.1f}" r="2" '
                   f'data-x="{x:g}" data-y="{y:g}"/>' for x, y in pts)
    out.append("</g></svg>")
    return "".join(out)


def scatter(points: Sequence[tuple[float, float, str]], *, title: str, best: str | None,
            width: int = 420, height: int = 220, log_x: bool = False) -> str:
    """A metric (y) against a parameter (x) per trial (its name the third element), the best
    trial drawn larger and labelled."""
    pts = [(x, y, n) for x, y, n in points if math.isfinite(x) and math.isfinite(y)
           and (not log_x or x > 0)]
    head = (f'<svg class="chart scatter" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" role="img" aria-label="{escape(title)}" '
            f'data-points="{len(pts)}"><title>{escape(title)}</title>')
    if not pts:
        return head + "</svg>"

    def tx(v: float) -> float:
        return math.log10(v) if log_x else v

    xs, ys = [tx(p[0]) for p in pts], [p[1] for p in pts]
    left, bottom = 48, 22
    fx = _scale(min(xs), max(xs), width - left, 14)
    fy = _scale(min(ys), max(ys), height - bottom, 14, flip=True)
    out = [head, f'<g transform="translate({left},0)">']
    for t in _ticks(min(ys), max(ys)):
        out.append(f'<text class="tick" x="-4" y="{fy(t) + 3:.1f}" text-anchor="end">'
                   f'{_num(t)}</text>')
    for x, y, name in pts:
        cls = "pt best" if name == best else "pt"
        r = 6 if name == best else 4
        out.append(f'<circle class="{cls}" cx="{fx(tx(x)):.1f}" cy="{fy(y):.1f}" r="{r}" '
                   f'data-x="{x:g}" data-y="{y:g}" data-trial="{escape(name)}">'
                   f'<title>{escape(name)}: {x:g}, {y:.4g}</title></circle>')
        out.append(f'<text class="tick" x="{fx(tx(x)):.1f}" y="{height - 6}" '
                   f'text-anchor="middle">{x:g}</text>')
        if name == best:  # the label on the side with room
            px = fx(tx(x))
            right = px < (width - left) / 2
            out.append(f'<text class="bestlabel" x="{px + 8 if right else px - 8:.1f}" '
                       f'y="{fy(y) - 8:.1f}" text-anchor="{"start" if right else "end"}">'
                       f'★ {escape(name)}</text>')
    out.append("</g></svg>")
    return "".join(out)
