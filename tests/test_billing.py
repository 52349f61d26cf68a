"""Billing end to end (seed 001): overage switches, packages, statements, refusals that sell."""

from __future__ import annotations

import asyncio

from gateway.metering.store import Charge
from gateway.policy.loader import load_policy
from tests.conftest import POLICIES, GatewayFactory, Harness
from tests.test_agentstack import ANON_403_PAYMENTS, seed_fields

# every test here runs on the embedded store, a real redis-server and the local Redis Cluster
# (the decision scripts with an account's keys in one slot of three primaries)
STORES = ("memory", "redis", "cluster")

BILLING = load_policy(POLICIES / "agentstack.yaml").billing


async def _free_at_logic_limit(gw: Harness) -> tuple[str, dict[str, str]]:
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    await gw.set_usage(account, "logic_engine_calls", 10_000)
    return account, headers


def test_seed_charge_examples_and_the_minimum_charge_are_exact() -> None:
    assert BILLING is not None
    # 60K Logic Engine calls with 50K included: $10.00; 600K API calls with 500K: $50.00
    assert BILLING.overage_cost("logic_engine_calls", 10_000) == 1000
    assert BILLING.overage_cost("api_calls", 100_000) == 5000
    # one API call over costs $0.0005, charged as the $0.01 minimum; rounding is upward
    assert BILLING.overage_cost("api_calls", 1) == 1
    assert BILLING.overage_cost("api_calls", 1001) == 51
    assert BILLING.overage_cost("api_calls", 0) == 0


def test_package_sizes_and_prices_are_the_seeds() -> None:
    assert BILLING is not None
    table = {
        (p.kind, p.size): (p.units, p.price)
        for sizes in BILLING.packages.values()
        for p in sizes.values()
    }
    assert table == {
        ("logic-engine", "small"): (10_000, 500),
        ("logic-engine", "medium"): (50_000, 2000),
        ("logic-engine", "large"): (100_000, 3500),
        ("api-calls", "small"): (100_000, 500),
        ("api-calls", "medium"): (500_000, 2000),
        ("api-calls", "large"): (1_000_000, 3500),
        ("storage", "5gb"): (5 * 10**9, 50),
        ("storage", "10gb"): (10 * 10**9, 90),
        ("storage", "25gb"): (25 * 10**9, 200),
    }


async def test_overage_off_refuses_at_the_limit_and_names_the_package_and_starter(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    _, headers = await _free_at_logic_limit(gw)
    resp = await gw.client.post("/api/logic/run", headers=headers)
    body = await resp.json()
    assert resp.status == 429
    assert body["limit"] == 10_000 and body["current"] == 10_001
    assert body["retryable"] is True and body["reset"] == "2026-12-01T00:00:00Z"
    assert (body["package"], body["package_price"]) == ("logic-engine:small", "$5.00")
    assert (body["upgrade_tier"], body["upgrade_price"]) == ("starter", "$29.00")
    assert body["next_step"] == {
        "kind": "package",
        "name": "logic-engine:small",
        "price": "$5.00",
        "url": "/api/billing/logic-engine-package?package_size=small",
    }
    assert "RateLimit-Policy" in resp.headers
    assert '"logic_engine_calls";r=0;t=' in resp.headers["RateLimit"]


async def test_overage_on_admits_and_prices_every_unit_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    _, headers = await _free_at_logic_limit(gw)
    resp = await gw.client.put(
        "/api/billing/overage", json={"enabled": True, "logic_engine": True}, headers=headers
    )
    assert resp.status == 200
    assert await resp.json() == {
        "enabled": True,
        "logic_engine": True,
        "api_calls": False,
        "storage": False,
    }
    results = await asyncio.gather(
        *(gw.client.post("/api/logic/run", headers=headers) for _ in range(12))
    )
    assert [r.status for r in results] == [200] * 12
    usage = await (await gw.client.get("/api/billing/usage", headers=headers)).json()
    logic = usage["meters"]["logic_engine_calls"]
    assert (logic["used"], logic["overage_units"], logic["from_packages"]) == (10_012, 12, 0)
    assert logic["overage_cost"] == {"amount_cents": 2, "amount": "$0.02"}


async def test_packages_are_drawn_before_overage_and_purchases_are_idempotent(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account, headers = await _free_at_logic_limit(gw)
    buy = {**headers, "Idempotency-Key": "order-1"}
    first, again = [
        await gw.client.post("/api/billing/logic-engine-package?package_size=small", headers=buy)
        for _ in range(2)
    ]
    assert first.status == again.status == 201
    assert await first.json() == await again.json()
    assert (await first.json())["price"] == {"amount_cents": 500, "amount": "$5.00"}
    billing = await (
        await gw.admin.get(f"/admin/accounts/{account}/billing", headers=gw.admin_headers)
    ).json()
    assert len(billing["packages"]) == 1  # the retry bought nothing more
    assert (await gw.client.post("/api/logic/run", headers=headers)).status == 200
    usage = await (await gw.client.get("/api/billing/usage", headers=headers)).json()
    logic = usage["meters"]["logic_engine_calls"]
    assert (logic["capacity"], logic["from_packages"], logic["overage_units"]) == (20_000, 1, 0)


async def test_bad_or_missing_sizes_get_400_and_anonymous_gets_the_payments_403(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")
    for query in ("", "?package_size=huge"):
        resp = await gw.client.post(f"/api/billing/api-calls-package{query}", headers=headers)
        assert resp.status == 400
        assert (await resp.json())["code"] == "VALIDATION_ERROR"
    anonymous = await gw.caller("anonymous")
    resp = await gw.client.post(
        "/api/billing/api-calls-package?package_size=small", headers=anonymous
    )
    assert resp.status == 403
    assert seed_fields(await resp.json(), ANON_403_PAYMENTS) == ANON_403_PAYMENTS


async def test_storage_packages_raise_project_storage_and_leave_json_storage_alone(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")
    resp = await gw.client.post("/api/billing/storage-package?package_size=5gb", headers=headers)
    assert resp.status == 201
    usage = await (await gw.client.get("/api/billing/usage", headers=headers)).json()
    assert usage["meters"]["project_storage"]["capacity"] == 10**8 + 5 * 10**9
    assert usage["meters"]["json_storage"]["capacity"] == 100 * 10**6


async def test_anonymous_never_pays_overage_even_when_switched_on(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account)}"}
    resp = await gw.admin.put(
        f"/admin/accounts/{account}/overage",
        json={"enabled": True, "logic_engine": True},
        headers=gw.admin_headers,
    )
    assert resp.status == 200
    await gw.set_usage(account, "logic_engine_calls", 1000)
    resp = await gw.client.post("/api/logic/run", headers=headers)
    assert resp.status == 429
    assert (await resp.json())["requires_conversion"] is True


async def test_the_monthly_statement_reproduces_the_seeds_example(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account = await gw.account("starter")
    await gw.set_usage(account, "logic_engine_calls", 50_000)
    # 10,000 calls past the 50K included, admitted as overage in the one atomic consume
    charge = Charge("logic_engine_calls", account, "month", 10_000, 50_000, 0, True)
    assert (await gw.gateway.store.consume(account, [charge])).admitted
    gw.clock.advance(40 * 86400)  # the statement is read in a later month
    resp = await gw.admin.get(
        f"/admin/accounts/{account}/statement?month=2026-11", headers=gw.admin_headers
    )
    body = await resp.json()
    logic = next(line for line in body["overage"] if line["meter"] == "logic_engine_calls")
    assert logic["units"]["overage"] == 10_000
    assert logic["cost"] == {"amount_cents": 1000, "amount": "$10.00"}
    assert body["total"]["amount"] == "$10.00"


async def test_ops_grant_and_remove_packages(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account, headers = await _free_at_logic_limit(gw)
    resp = await gw.admin.post(
        f"/admin/accounts/{account}/packages",
        json={"kind": "logic-engine", "size": "small"},
        headers=gw.admin_headers,
    )
    assert resp.status == 201
    package_id = (await resp.json())["package"]["id"]
    assert (await gw.client.post("/api/logic/run", headers=headers)).status == 200
    resp = await gw.admin.delete(
        f"/admin/accounts/{account}/packages/{package_id}", headers=gw.admin_headers
    )
    assert resp.status == 200
    assert (await gw.client.post("/api/logic/run", headers=headers)).status == 429


async def test_racing_calls_at_the_package_boundary_admit_exactly_its_capacity(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account, headers = await _free_at_logic_limit(gw)
    resp = await gw.admin.post(
        f"/admin/accounts/{account}/packages",
        json={"kind": "logic-engine", "size": "small"},
        headers=gw.admin_headers,
    )
    assert resp.status == 201
    await gw.set_usage(account, "logic_engine_calls", 19_995)  # 5 package units left
    results = await asyncio.gather(
        *(gw.client.post("/api/logic/run", headers=headers) for _ in range(12))
    )
    assert sorted(r.status for r in results) == [200] * 5 + [429] * 7
    # with overage on, the next racing calls are all admitted and each is paid once
    await gw.client.put(
        "/api/billing/overage", json={"enabled": True, "logic_engine": True}, headers=headers
    )
    results = await asyncio.gather(
        *(gw.client.post("/api/logic/run", headers=headers) for _ in range(12))
    )
    assert [r.status for r in results] == [200] * 12
    usage = await (await gw.client.get("/api/billing/usage", headers=headers)).json()
    logic = usage["meters"]["logic_engine_calls"]
    assert (logic["used"], logic["from_packages"], logic["overage_units"]) == (20_012, 5, 12)


async def test_responses_name_every_quota_the_route_touched(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    _, headers = await _free_at_logic_limit(gw)
    await gw.client.put(
        "/api/billing/overage", json={"enabled": True, "logic_engine": True}, headers=headers
    )
    await gw.client.post("/api/billing/logic-engine-package?package_size=small", headers=headers)
    resp = await gw.client.post("/api/logic/run", headers=headers)
    assert resp.status == 200
    # November 2026 has 30 days; the fake clock stands at 12:00 on the 25th
    month, left = 30 * 86400, 6 * 86400 - 12 * 3600
    # and the request rate (FREE: 10/s, bursts of 20): 3 of the bucket's 20 taken, so it is
    # full again in 3 x 100 ms, rounded up
    assert resp.headers["RateLimit-Policy"] == (
        f'"logic_engine_calls";q=20000;w={month}, "api_calls";q=50000;w={month}, '
        '"request_rate";q=20;w=2'
    )
    assert resp.headers["RateLimit"] == (
        f'"logic_engine_calls";r=9999;t={left}, "api_calls";r=49997;t={left}, '
        '"request_rate";r=17;t=1'
    )
    assert resp.headers["RateLimit-Limit"] == "20000"


async def test_racing_retries_of_one_purchase_buy_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await gw.account("starter")
    key = await gw.key(account, "user_ask_")
    headers = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-42"}
    url = "/api/billing/api-calls-package?package_size=medium"
    results = await asyncio.gather(*(gw.client.post(url, headers=headers) for _ in range(6)))
    # each answer is the purchase or "busy, retry" while the first is being written
    assert {r.status for r in results} <= {201, 409}
    retry = await gw.client.post(url, headers=headers)
    assert retry.status == 201
    billing = await (
        await gw.admin.get(f"/admin/accounts/{account}/billing", headers=gw.admin_headers)
    ).json()
    assert [(p["kind"], p["size"], p["units"]) for p in billing["packages"]] == [
        ("api-calls", "medium", 500_000)
    ]
    assert (await retry.json())["package"]["id"] == billing["packages"][0]["id"]


async def test_a_statement_needs_a_real_month(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")
    for month in ("2026-13", "November", "2026-1"):
        resp = await gw.client.get(f"/api/billing/statement?month={month}", headers=headers)
        assert resp.status == 400
        assert (await resp.json())["details"] == {"field": "month", "received": month}
