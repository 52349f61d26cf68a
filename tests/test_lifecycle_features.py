"""Feature gates per tier (seed 001): every tier either reaches the upstream or gets the
policy's refusal naming the cheapest tier that would allow the request."""

from __future__ import annotations

import pytest

from tests.conftest import GatewayFactory
from tests.test_agentstack import ANON_403_PAYMENTS, seed_fields

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

TIERS = ("anonymous", "free", "starter", "basic", "pro", "premium", "enterprise")

# (path, cheapest tier with the feature), read from seed 001's per-tier feature lists
GATES = (
    ("/api/payments/charge", "free"),  # payments: disabled for anonymous only
    ("/api/webhooks/hook", "starter"),  # "FREE/ANONYMOUS: Not available; STARTER/BASIC: Basic"
    ("/api/webhooks/advanced/retry", "pro"),  # "PRO+: Advanced webhooks"
    ("/api/analytics/custom/report", "pro"),  # "PRO: Custom analytics"
    ("/api/audit-logs/recent", "pro"),  # "PRO+: Audit logs"
    ("/api/custom-domains/example.com", "pro"),  # "PRO+: Custom domain"
    ("/api/white-label/theme", "premium"),  # "PREMIUM+: White label"
    ("/api/system-admin/users", "premium"),  # "PREMIUM and ENTERPRISE add system_admin"
)


@pytest.mark.parametrize(("path", "cheapest"), GATES)
async def test_feature_gate_per_tier(
    make_gateway: GatewayFactory, path: str, cheapest: str
) -> None:
    gw = await make_gateway()
    for tier in TIERS:
        headers = await gw.caller(tier)
        before = gw.upstream.count(path)
        resp = await gw.client.post(path, headers=headers)
        body = await resp.json()
        if TIERS.index(tier) >= TIERS.index(cheapest):
            assert resp.status == 200, (tier, body)
            assert gw.upstream.count(path) == before + 1
            continue
        assert gw.upstream.count(path) == before, tier  # refused before the upstream
        assert body["upgrade_tier"] == cheapest, (tier, body)
        if tier == "anonymous" and path.startswith("/api/payments/"):
            assert resp.status == 403
            assert seed_fields(body, ANON_403_PAYMENTS) == ANON_403_PAYMENTS
        else:
            assert resp.status == 402, (tier, body)
            assert body["error"] == "Upgrade required"
            assert body["tier"] == tier


async def test_a_refused_feature_consumes_nothing(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'anon_ask_')}"}
    for _ in range(3):
        assert (await gw.client.post("/api/webhooks/hook", headers=headers)).status == 402
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    assert (await resp.json())["meters"]["api_calls"]["used"] == 0
