"""Rate meters through the gateway: the 429 RATE_LIMITED answer, headers, refunds, scopes.

On the shipped AgentStack policy (anonymous: 2/s, bursts of 10) and small policies of our
own, on the embedded store and on a real redis-server; the FakeClock stands still unless a
test moves it, so every count is exact.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path

from yarl import URL

from tests.conftest import GatewayFactory, Harness
from tests.test_proxy_upstream import closed_port

STORES = ("memory", "redis")

RATES = """\
name: rates
default_tier: free
identity:
  key_types:
    - {prefix: anon_ask_, kind: user}
    - {prefix: user_ask_, kind: user}
meters:
  api_calls: {kind: counter, period: month, scope: account}
  per_key: {kind: rate, scope: key, rate: 3/min}
  per_client: {kind: rate, scope: client, rate: 2/s, burst: 2}
tiers:
  free:
    limits: {api_calls: 1000}
  pro:
    limits: {api_calls: 1000, per_key: unlimited, per_client: unlimited}
table: [api_calls, per_key, per_client]
routes:
  - name: keyed
    path: /api/keyed/**
    consume: {api_calls: 1, per_key: 1}
  - name: by-client
    path: /api/client/**
    consume: {api_calls: 1, per_client: 1}
"""


async def rates_gateway(
    make_gateway: GatewayFactory, tmp_path: Path, **overrides: object
) -> Harness:
    (tmp_path / "rates.yaml").write_text(RATES)
    # an absolute path replaces the shipped policies' folder (tests/conftest.py)
    return await make_gateway(str(tmp_path / "rates"), **overrides)


async def usage(gw: Harness, account: str) -> dict[str, int]:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return {name: state["used"] for name, state in (await resp.json())["meters"].items()}


async def test_a_burst_past_the_rate_is_refused_with_the_gateways_own_429(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account)}"}
    statuses = [(await gw.client.get("/api/logic/x", headers=headers)).status for _ in range(10)]
    assert statuses == [200] * 10
    refused = await gw.client.get("/api/logic/x", headers=headers)
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"  # 0.5 s until a unit is back, rounded up
    assert refused.headers["RateLimit-Limit"] == "10"
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert refused.headers["RateLimit-Reset"] == "1"
    assert refused.headers["RateLimit-Policy"] == '"request_rate";q=10;w=5'
    assert refused.headers["RateLimit"] == '"request_rate";r=0;t=5'
    assert await refused.json() == {
        "code": "RATE_LIMITED",
        "message": "Rate limit exceeded: the Anonymous tier allows 2 requests/s (bursts of 10); "
        "retry in 1 s.",
        "details": {
            "meter": "request_rate",
            "scope": "account",
            "limit": 2,
            "window": "s",
            "window_seconds": 1,
            "burst": 10,
            "cost": 1,
            "remaining": 0,
            "retry_after": 1,
            "tier": "anonymous",
            "route": "logic",
        },
    }
    # nothing reached the upstream, nothing was taken from the quotas
    assert gw.upstream.count("/api/logic/x") == 10
    assert (await usage(gw, account))["logic_engine_calls"] == 10
    registry = gw.gateway.metrics.registry
    labels = {"tier": "anonymous", "route": "logic"}
    assert (
        registry.get_sample_value("gateway_decisions_total", {**labels, "outcome": "rate_limited"})
        == 1
    )
    assert (
        registry.get_sample_value(
            "gateway_quota_refusals_total", {**labels, "meter": "request_rate"}
        )
        == 1
    )
    # half a second later, one unit is back: one more call, then refused again
    gw.clock.advance(0.5)
    assert (await gw.client.get("/api/logic/x", headers=headers)).status == 200
    assert (await gw.client.get("/api/logic/x", headers=headers)).status == 429


async def test_admitted_responses_list_the_rate_next_to_the_quotas(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("anonymous")
    for _ in range(3):
        resp = await gw.client.get("/api/logic/x", headers=headers)
    assert resp.headers["RateLimit-Limit"] == "1000"  # the tightest quota, as before
    assert resp.headers["RateLimit-Policy"].endswith(', "request_rate";q=10;w=5')
    assert resp.headers["RateLimit"].endswith(', "request_rate";r=7;t=2')


async def test_a_call_that_never_reached_the_upstream_gives_its_rate_unit_back(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(upstreams=(("/", URL(f"http://127.0.0.1:{closed_port()}")),))
    headers = await gw.caller("anonymous")
    # twice the burst, at one instant: each is refunded, so none is rate limited
    statuses = {(await gw.client.get("/api/logic/x", headers=headers)).status for _ in range(20)}
    assert statuses == {502}


async def test_a_tier_without_a_rate_is_not_limited(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await rates_gateway(make_gateway, tmp_path)
    headers = await gw.caller("pro", "user_ask_")
    for _ in range(20):
        resp = await gw.client.get("/api/keyed/x", headers=headers)
        assert resp.status == 200
    assert "per_key" not in resp.headers["RateLimit-Policy"]


async def test_a_key_scoped_rate_gives_each_key_its_own_bucket(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await rates_gateway(make_gateway, tmp_path)
    account = await gw.account("free")
    keys = [await gw.key(account, "user_ask_") for _ in range(2)]
    for key in keys:  # 3/min, burst 3 by default: three each, then refused
        headers = {"Authorization": f"Bearer {key}"}
        statuses = [(await gw.client.get("/api/keyed/x", headers=headers)).status for _ in range(4)]
        assert statuses == [200, 200, 200, 429]
    refused = await gw.client.get("/api/keyed/x", headers=headers)
    assert refused.headers["Retry-After"] == "20"  # a unit every 20 s
    assert (await refused.json())["details"]["window"] == "min"
    assert (await usage(gw, account))["api_calls"] == 6


async def test_a_client_scoped_rate_follows_the_address_trusted_proxies_vouch_for(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await rates_gateway(
        make_gateway, tmp_path, trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),)
    )
    headers = await gw.caller("free", "user_ask_")
    for client in ("203.0.113.7", "203.0.113.8"):
        forwarded = {**headers, "X-Forwarded-For": client}
        statuses = [
            (await gw.client.get("/api/client/x", headers=forwarded)).status for _ in range(3)
        ]
        assert statuses == [200, 200, 429], client
