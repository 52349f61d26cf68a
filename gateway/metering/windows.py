"""Calendar windows in UTC: which day or month an instant falls in, and when it ends."""

from __future__ import annotations

import calendar
import math
from datetime import UTC, datetime

from gateway.metering.keys import meter_key
from gateway.policy.model import Period

_DAY = 86_400


# The last window computed per period: every request of a day or month falls in the same one,
# so the calendar arithmetic runs once per window, not once per request.
_last: dict[str, tuple[float, float, str]] = {}  # period -> (start, reset, id)


def window(period: Period, now: float) -> tuple[str, float]:
    """The window's id (``2026-02-28`` or ``2026-02``) and the epoch second it resets at."""
    window_id, _, reset = window_span(period, now)
    return window_id, reset


def window_span(period: Period, now: float) -> tuple[str, float, float]:
    """The window's id, the epoch second it starts at and the one it resets at."""
    last = _last.get(period)
    if last is not None and last[0] <= now < last[1]:
        return last[2], last[0], last[1]
    # Whole seconds, floored: fromtimestamp rounds to the microsecond, which would put the
    # last half-microsecond of a day or month into the next window's id.
    second = math.floor(now)
    moment = datetime.fromtimestamp(second, UTC)
    if period == "day":
        start = second // _DAY * _DAY
        window_id, reset = moment.strftime("%Y-%m-%d"), start + _DAY
    else:
        year, month = moment.year, moment.month
        next_year, next_month = (year + 1, 1) if month == 12 else (year, month + 1)
        start = calendar.timegm((year, month, 1, 0, 0, 0, 0, 0, 0))
        reset = calendar.timegm((next_year, next_month, 1, 0, 0, 0, 0, 0, 0))
        window_id = f"{year:04d}-{month:02d}"
    _last[period] = (float(start), float(reset), window_id)
    return window_id, float(start), float(reset)


def window_key(
    account_id: str, meter: str, scope_id: str, period: Period | None, now: float
) -> tuple[str, float | None]:
    """A meter's key in the window ``now`` falls in, and when that window resets (None for a
    live count, whose key has no window)."""
    if period is None:
        return meter_key(account_id, meter, scope_id, None), None
    period_id, reset_at = window(period, now)
    return meter_key(account_id, meter, scope_id, period_id), reset_at


#: how long a month's counters (its total and its per-source package and overage counters)
#: are kept from their first unit: a statement (api/billing.py) is exact for every month that
#: began less than this long ago, and refused, saying so, for older months
STATEMENT_RETENTION = 400 * _DAY


def window_ttl(period: Period) -> int:
    """How long a window's counter is kept from its first unit: a day's for its length plus
    a day; a month's for as long as statements are served."""
    return 2 * _DAY if period == "day" else STATEMENT_RETENTION


#: per-source counters (package and overage units of a window), kept for statements too
SOURCE_TTL = STATEMENT_RETENTION


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
