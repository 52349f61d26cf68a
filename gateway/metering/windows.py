"""Calendar windows in UTC: which day or month an instant falls in, and when it ends."""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime

from gateway.policy.model import Period

_DAY = 86_400


def window(period: Period, now: float) -> tuple[str, float]:
    """The window's id (``2026-02-28`` or ``2026-02``) and the epoch second it resets at."""
    # Whole seconds, floored: fromtimestamp rounds to the microsecond, which would put the
    # last half-microsecond of a day or month into the next window's id.
    second = math.floor(now)
    moment = datetime.fromtimestamp(second, UTC)
    if period == "day":
        start = second // _DAY * _DAY
        return moment.strftime("%Y-%m-%d"), float(start + _DAY)
    year, month = moment.year, moment.month
    next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
    reset = calendar.timegm((next_year, next_month, 1, 0, 0, 0, 0, 0, 0))
    return f"{year:04d}-{month:02d}", float(reset)


def window_ttl(period: Period) -> int:
    """How long a window's counter is kept after it starts: its longest length plus a day."""
    return 2 * _DAY if period == "day" else 32 * _DAY


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
