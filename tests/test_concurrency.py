"""No over-admission: concurrent requests racing for the last units admit exactly that many."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from tests.conftest import GatewayFactory

# every test here runs on the embedded store, a real redis-server and the local Redis Cluster
# (the decision scripts with an account's keys in one slot of three primaries)
STORES = ("memory", "redis", "cluster")

RACERS = 500
LEFT = 50


async def test_500_concurrent_requests_for_the_last_50_units_admit_exactly_50(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(rates=False)  # a race at one instant for a quota's last units
    account_id = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account_id)}"}
    await gw.set_usage(account_id, "logic_engine_calls", 1000 - LEFT)

    async def race(i: int) -> tuple[int, Any]:
        resp = await gw.client.post(f"/api/logic/run/{i}", headers=headers)
        return resp.status, await resp.json()

    results = await asyncio.wait_for(asyncio.gather(*(race(i) for i in range(RACERS))), 120)
    statuses = Counter(status for status, _ in results)
    assert statuses == {200: LEFT, 429: RACERS - LEFT}
    refusals = [body for status, body in results if status == 429]
    # every refusal is the policy's anonymous 429, at the limit, never past it
    assert {(b["error"], b["limit"], b["current"], b["meter"]) for b in refusals} == {
        ("Limit exceeded", 1000, 1001, "logic_engine_calls")
    }
    assert gw.upstream.count("/api/logic/") == LEFT

    resp = await gw.admin.get(f"/admin/accounts/{account_id}/usage", headers=gw.admin_headers)
    meters = (await resp.json())["meters"]
    assert meters["logic_engine_calls"]["used"] == 1000
    # the refused requests consumed nothing on the route's other meter either
    assert meters["api_calls"]["used"] == LEFT
