"""Usage history per tier retention and CSV exports counted per calendar month (seed 001)."""

from __future__ import annotations

from gateway.metering.keys import history_key
from tests.conftest import GatewayFactory, utc

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def test_history_is_kept_for_the_tiers_retention_and_no_longer(
    make_gateway: GatewayFactory, store_kind: str
) -> None:
    gw = await make_gateway()
    account = await gw.account("free")  # 7 days of analytics
    headers = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    gw.clock.set(utc(2026, 11, 20, 9))
    for _ in range(3):
        assert (await gw.client.post("/api/logic/run", headers=headers)).status == 200
    gw.clock.set(utc(2026, 11, 22, 9))
    assert (await gw.client.get("/api/things", headers=headers)).status == 200

    body = await (await gw.client.get("/api/billing/history", headers=headers)).json()
    assert body["retention_days"] == 7
    days = {day["date"]: day for day in body["days"]}
    assert len(days) == 7 and min(days) == "2026-11-16" and max(days) == "2026-11-22"
    assert days["2026-11-20"]["logic_engine_calls"] == 3
    assert days["2026-11-20"]["api_calls"] == 3
    assert days["2026-11-22"]["api_calls"] == 1

    # eight days on, the 20th is past the retention: not returned, and (where the store's
    # expiry follows the fake clock) not kept either
    gw.clock.set(utc(2026, 11, 28, 9))
    body = await (await gw.client.get("/api/billing/history?days=30", headers=headers)).json()
    assert body["days"][0]["date"] == "2026-11-22"
    assert "2026-11-20" not in {day["date"] for day in body["days"]}
    if store_kind == "memory":
        key = history_key(account, "logic_engine_calls", account, "2026-11-20")
        assert await gw.gateway.store.read(account, [key]) == [0]


async def test_a_longer_retention_shows_more_days(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = await gw.caller("pro", "user_ask_")  # 90 days
    body = await (await gw.client.get("/api/billing/history", headers=headers)).json()
    assert body["retention_days"] == 90 and len(body["days"]) == 90


async def test_exports_are_counted_per_calendar_month(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")  # one export a month
    assert (await gw.client.post("/api/logic/run", headers=headers)).status == 200
    resp = await gw.client.get("/api/billing/history.csv?days=2", headers=headers)
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/csv")
    lines = (await resp.text()).splitlines()
    assert lines[0] == "date,logic_engine_calls,api_calls,analytics_exports"
    # the export itself was counted before it was answered, so it shows in its own history
    assert lines[1:] == ["2026-11-24,0,0,0", "2026-11-25,1,1,1"]
    resp = await gw.client.get("/api/billing/history.csv", headers=headers)
    assert resp.status == 429
    body = await resp.json()
    assert body["meter"] == "analytics_exports"
    assert body["reset"] == "2026-12-01T00:00:00Z" and body["retryable"] is True
    gw.clock.set(utc(2026, 12, 1, 0, 0, 1))
    assert (await gw.client.get("/api/billing/history.csv", headers=headers)).status == 200
