"""The one time parser and writer of the project: every timestamp read from the API server, a
pod or a report goes through here, and every timestamp the operator writes comes from here.

Bounded by design (a stored or reported time is untrusted): parsed times are clamped to a
plausible range, so arithmetic on them cannot overflow, and written times always have a
four-digit year, so they parse back."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any, Final

# Every parsed time is clamped to this range; where a reported time enters a status it is
# clamped again, to [attempt start, now] (jobs/pods.py).
TIME_MIN: Final = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
TIME_MAX: Final = dt.datetime(2200, 1, 1, tzinfo=dt.UTC)

_RFC3339 = re.compile(
    r"\d{4}-\d{2}-\d{2}[Tt]\d{2}:\d{2}:\d{2}(\.\d{1,9})?([Zz]|[+-]\d{2}:\d{2})"
)


def clamp_time(t: dt.datetime, low: dt.datetime = TIME_MIN,
               high: dt.datetime = TIME_MAX) -> dt.datetime:
    """``t`` in UTC (naive counts as UTC), clamped to [low, high]. Never raises."""
    if t.tzinfo is None:
        t = t.replace(tzinfo=dt.UTC)
    try:
        t = t.astimezone(dt.UTC)
    except OverflowError:  # an offset pushed it past year 1 or 9999
        return low if t.year < 2000 else high
    return min(max(t, low), high)


def rfc3339(t: dt.datetime) -> str:
    """``t`` as RFC 3339 in UTC, whole seconds, four-digit year (``strftime("%Y")`` writes
    year 999 as "999", which no RFC 3339 parser reads back). How the operator writes every time."""
    t = t.astimezone(dt.UTC)
    return f"{t.year:04d}-{t:%m-%dT%H:%M:%S}Z"


def parse_rfc3339(value: str) -> dt.datetime:
    """Strict: an RFC 3339 timestamp (at most 40 characters) -> aware UTC datetime, clamped.
    Raises ValueError saying what is wrong (the message reaches the sender of a report)."""
    if len(value) > 40 or not _RFC3339.fullmatch(value):
        raise ValueError("must be an RFC 3339 timestamp like 2026-11-24T12:00:00Z")
    text = value.upper().replace("Z", "+00:00")
    head, _, tail = text.partition(".")
    if tail:  # fromisoformat keeps at most microseconds
        digits = re.match(r"\d+", tail)
        assert digits is not None
        text = f"{head}.{digits.group()[:6].ljust(6, '0')}{tail[digits.end():]}"
    try:
        return clamp_time(dt.datetime.fromisoformat(text))
    except ValueError as e:
        raise ValueError(f"not a valid date/time ({e})") from None


def parse_time(s: Any) -> dt.datetime | None:
    """Lenient and total: a stored timestamp -> aware UTC datetime, clamped to
    [TIME_MIN, TIME_MAX]; None for anything that is not a date/time (a status written by an
    older operator or by hand), never an exception."""
    if not s or not isinstance(s, str) or len(s) > 64:
        return None
    try:
        return clamp_time(dt.datetime.fromisoformat(s.replace("Z", "+00:00")))
    except ValueError:
        return None


def time_after(t: dt.datetime, seconds: float) -> dt.datetime:
    """``t`` plus ``seconds``, saturated to the plausible range: never an OverflowError, however
    large a deadline, TTL or stored duration is (NaN counts as 0)."""
    try:
        return clamp_time(t + dt.timedelta(seconds=seconds))
    except OverflowError:
        return TIME_MAX if seconds > 0 else TIME_MIN
    except ValueError:  # NaN
        return clamp_time(t)
