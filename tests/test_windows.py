"""Calendar windows in UTC: rollover through real HTTP, and properties of window()."""

from __future__ import annotations

import calendar
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.metering import windows
from gateway.metering.windows import window
from tests.conftest import GatewayFactory, Harness, org_headers, utc

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

DAY = 86_400


async def anonymous_at_limit(gw: Harness) -> dict[str, str]:
    """An anonymous caller with this month's 1,000 Logic Engine calls used up."""
    account_id = await gw.account("anonymous")
    key = await gw.key(account_id)
    await gw.set_usage(account_id, "logic_engine_calls", 1000)
    return {"Authorization": f"Bearer {key}"}


async def status_of(gw: Harness, path: str, headers: dict[str, str]) -> tuple[int, dict[str, str]]:
    resp = await gw.client.post(path, headers=headers)
    await resp.read()
    return resp.status, dict(resp.headers)


@pytest.mark.parametrize(
    ("last_second", "next_month", "reset"),
    [
        (utc(2026, 12, 31, 23, 59, 59), utc(2027, 1, 1), "2027-01-01T00:00:00Z"),
        (utc(2028, 2, 29, 23, 59, 59), utc(2028, 3, 1), "2028-03-01T00:00:00Z"),
        (utc(2027, 2, 28, 23, 59, 59), utc(2027, 3, 1), "2027-03-01T00:00:00Z"),
        (utc(2026, 4, 30, 23, 59, 59), utc(2026, 5, 1), "2026-05-01T00:00:00Z"),
    ],
)
async def test_month_rolls_over_at_midnight_utc_on_the_first(
    make_gateway: GatewayFactory, last_second: float, next_month: float, reset: str
) -> None:
    gw = await make_gateway()
    gw.clock.set(last_second)
    headers = await anonymous_at_limit(gw)
    resp = await gw.client.post("/api/logic/run", headers=headers)
    assert resp.status == 429
    assert (await resp.json())["reset"] == reset
    assert resp.headers["Retry-After"] == "1"
    assert resp.headers["RateLimit-Reset"] == "1"

    gw.clock.set(next_month)
    status, response_headers = await status_of(gw, "/api/logic/run", headers)
    assert status == 200
    assert response_headers["RateLimit-Remaining"] == "999"
    assert gw.upstream.count("/api/logic/") == 1


async def test_leap_february_is_one_month_across_the_29th(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    gw.clock.set(utc(2028, 2, 1))
    headers = await anonymous_at_limit(gw)
    for moment in (utc(2028, 2, 28, 23, 59, 59), utc(2028, 2, 29), utc(2028, 2, 29, 23, 59, 59)):
        gw.clock.set(moment)
        status, response_headers = await status_of(gw, "/api/logic/run", headers)
        assert status == 429, moment
        assert int(response_headers["Retry-After"]) == int(utc(2028, 3, 1) - moment)
    gw.clock.set(utc(2028, 3, 1))
    status, _ = await status_of(gw, "/api/logic/run", headers)
    assert status == 200


@pytest.mark.parametrize(
    "days",
    [
        # 31 Dec -> 1 Jan
        [utc(2026, 12, 31), utc(2027, 1, 1)],
        # 28 Feb -> 29 Feb -> 1 Mar in a leap year
        [utc(2028, 2, 28), utc(2028, 2, 29), utc(2028, 3, 1)],
        # 28 Feb -> 1 Mar in a common year
        [utc(2027, 2, 28), utc(2027, 3, 1)],
    ],
)
async def test_day_rolls_over_at_midnight_utc(
    make_gateway: GatewayFactory, days: list[float]
) -> None:
    gw = await make_gateway("agentidp")
    account_id = await gw.account("free", organization_id="acme")
    headers = org_headers("acme")
    for day in days:
        gw.clock.set(day + 12 * 3600)
        await gw.set_usage(account_id, "api_calls", 1000)
        gw.clock.set(day + DAY - 1)
        resp = await gw.client.get("/api/v1/agents", headers=headers)
        assert resp.status == 403
        body = await resp.json()
        expected_reset = datetime.fromtimestamp(day + DAY, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert body["details"]["reset"] == expected_reset
        assert resp.headers["RateLimit-Reset"] == "1"
        gw.clock.set(day + DAY)
        resp = await gw.client.get("/api/v1/agents", headers=headers)
        assert resp.status == 200
        assert resp.headers["RateLimit-Remaining"] == "999"
        assert resp.headers["RateLimit-Reset"] == str(DAY)


# 1970 .. 2200, in whole seconds and with fractions
moments = st.integers(min_value=0, max_value=7_258_118_400) | st.floats(
    min_value=0, max_value=7_258_118_400, allow_nan=False, allow_infinity=False
)


def civil(now: float) -> datetime:
    """The UTC calendar moment of ``now``, truncated (never rounded) to the second."""
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(seconds=int(now // 1))


@settings(deadline=None)
@given(moments)
@example(86_399.999_999_9)  # fromtimestamp would round this up into the next day
def test_day_window_resets_at_exactly_the_next_midnight(now: float) -> None:
    window_id, reset = window("day", now)
    assert reset > now
    assert reset % DAY == 0
    assert reset - now <= DAY
    assert window_id == civil(now).strftime("%Y-%m-%d")


@settings(deadline=None)
@given(moments)
@example(utc(2026, 11, 30, 23, 59, 59) + 0.999_999_7)
def test_month_window_resets_on_the_first_of_the_next_month(now: float) -> None:
    window_id, reset = window("month", now)
    assert reset > now
    assert reset - now <= 31 * DAY
    moment, first = civil(now), civil(reset)
    assert (first.day, first.hour, first.minute, first.second) == (1, 0, 0, 0)
    assert window_id == moment.strftime("%Y-%m")
    # the window this instant is in is exactly as long as its month
    start = calendar.timegm((moment.year, moment.month, 1, 0, 0, 0, 0, 0, 0))
    assert reset - start == calendar.monthrange(moment.year, moment.month)[1] * DAY


@settings(deadline=None)
@given(moments, st.sampled_from(["day", "month"]))
@example(utc(2026, 12, 31, 23, 59, 59) + 0.999_999_7, "month")
def test_window_id_changes_exactly_at_reset(now: float, period: str) -> None:
    window_id, reset = window(period, now)  # type: ignore[arg-type]
    assert window(period, reset)[0] != window_id  # type: ignore[arg-type]
    assert window(period, reset - 1)[0] == window_id  # type: ignore[arg-type]
    assert window(period, reset - 0.001)[0] == window_id  # type: ignore[arg-type]
    assert window(period, reset)[1] > reset  # type: ignore[arg-type]


@settings(deadline=None)
@given(moments, moments, st.sampled_from(["day", "month"]))
def test_window_does_not_depend_on_what_was_asked_before(
    first: float, second: float, period: str
) -> None:
    window(period, first)  # type: ignore[arg-type]
    after_first = window(period, second)  # type: ignore[arg-type]
    windows._last.clear()
    assert window(period, second) == after_first  # type: ignore[arg-type]
