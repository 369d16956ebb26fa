"""How one value reads in a view: kubectl's short durations and ages, numbers, counts; ``NONE``
("-") where there is nothing to show."""

from __future__ import annotations

import datetime as dt
from typing import Any

from finetune_api.times import parse_time

NONE = "-"


def human_duration(seconds: float | None) -> str:
    """kubectl's short durations: 45s, 3m20s, 47m, 5h12m, 20h, 3d4h, 9d, 2y."""
    if seconds is None:
        return NONE
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    m = s // 60
    if m < 10:
        return f"{m}m{s % 60}s" if s % 60 else f"{m}m"
    if m < 180:
        return f"{m}m"
    h = m // 60
    if h < 8:
        return f"{h}h{m % 60}m" if m % 60 else f"{h}h"
    if h < 48:
        return f"{h}h"
    d = h // 24
    if d < 8:
        return f"{d}d{h % 24}h" if h % 24 else f"{d}d"
    if d < 365 * 2:
        return f"{d}d"
    return f"{d // 365}y"


def age(timestamp: Any, now: dt.datetime) -> str:
    """How long ago ``timestamp`` (an RFC 3339 string) was; ``NONE`` when absent or unreadable."""
    t = parse_time(timestamp)
    return human_duration((now - t).total_seconds()) if t else NONE


def number(value: Any, digits: int = 4) -> str:
    """A measurement (loss, epoch, rate) to ``digits`` significant digits; ``NONE`` if none."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return NONE
    return f"{value:.{digits}g}"


def value_text(value: Any) -> str:
    """A parameter or metric value: floats to 4 significant digits, anything else as it is."""
    if value is None:
        return NONE
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def count(value: float | None) -> str:
    """A GPU count: whole numbers without a fraction (``4``), others as they are (``2.5``)."""
    if value is None:
        return NONE
    return str(int(value)) if float(value).is_integer() else f"{value:g}"
