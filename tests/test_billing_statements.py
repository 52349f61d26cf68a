"""Statement history: a past month's statement is exact for as long as statements are served,
and a month past that retention is refused, saying so, never shown with wrong numbers."""

from __future__ import annotations

from typing import Any

from gateway.metering.clock import FakeClock
from gateway.metering.keys import meter_key, source_key
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge
from gateway.metering.windows import STATEMENT_RETENTION
from tests.conftest import GatewayFactory, Harness, utc
from tests.redis_servers import RedisServer

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

DAY = 86_400


async def _november_with_overage(gw: Harness) -> str:
    """A STARTER account (50,000 Logic Engine calls) that used 60,000 in November 2026: its
    allowance, then 10,000 paid as overage."""
    account = await gw.account("starter")
    await gw.set_usage(account, "logic_engine_calls", 50_000)
    charge = Charge("logic_engine_calls", account, "month", 10_000, 50_000, 0, True)
    assert (await gw.gateway.store.consume(account, [charge])).admitted
    return account


async def _statement(gw: Harness, account: str, month: str) -> tuple[int, Any]:
    resp = await gw.admin.get(
        f"/admin/accounts/{account}/statement?month={month}", headers=gw.admin_headers
    )
    return resp.status, await resp.json()


def _logic(body: Any) -> Any:
    return next(line for line in body["overage"] if line["meter"] == "logic_engine_calls")


async def test_a_months_statement_stays_exact_months_later(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await _november_with_overage(gw)
    # read in March, past the 32 days a month's total used to be kept: the allowance share is
    # still the 50,000 units actually used, not 0 from an expired counter
    gw.clock.advance(100 * DAY)
    status, body = await _statement(gw, account, "2026-11")
    assert status == 200, body
    logic = _logic(body)
    assert logic["used"] == 60_000
    assert logic["units"] == {"allowance": 50_000, "package": 0, "overage": 10_000}
    assert logic["cost"] == {"amount_cents": 1000, "amount": "$10.00"}


async def test_a_month_past_retention_is_refused_saying_so(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await _november_with_overage(gw)
    november = utc(2026, 11, 1)
    # the last second of the retention: still served, still exact
    gw.clock.set(november + STATEMENT_RETENTION - 1)
    status, body = await _statement(gw, account, "2026-11")
    assert status == 200, body
    assert _logic(body)["units"]["allowance"] == 50_000
    gw.clock.set(november + STATEMENT_RETENTION)
    status, body = await _statement(gw, account, "2026-11")
    assert status == 410
    assert body == {
        "code": "GONE",
        "message": "the statement for 2026-11 is past retention: a month's usage is kept "
        "400 days from its start",
        "details": {"month": "2026-11", "retention_days": 400},
    }
    # the caller's own endpoint says the same
    headers = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    resp = await gw.client.get("/api/billing/statement?month=2026-11", headers=headers)
    assert resp.status == 410
    assert (await resp.json())["code"] == "GONE"


async def test_redis_keeps_a_months_counters_for_the_statement_retention(
    redis_server: RedisServer, redis_url: str, clock: FakeClock
) -> None:
    # Redis expires keys on its own clock, which a test cannot advance: read the expiry set
    # on every counter a statement reads instead
    store = RedisStore(redis_url, clock=clock)
    try:
        await store.set_usage("7", Charge("logic_engine_calls", "7", "month", 0, 50_000), 50_000)
        charge = Charge("logic_engine_calls", "7", "month", 10_000, 50_000, 0, True)
        assert (await store.consume("7", [charge])).admitted
    finally:
        await store.close()
    key = meter_key("7", "logic_engine_calls", "7", "2026-11")
    client = redis_server.client()
    for name in (key, source_key(key, "overage")):
        ttl = client.ttl(name)
        assert STATEMENT_RETENTION - 60 < ttl <= STATEMENT_RETENTION, (name, ttl)
