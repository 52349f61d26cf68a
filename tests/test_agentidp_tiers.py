"""AgentIdP tier endpoints (seed 002): live status and upgrade validation."""

from __future__ import annotations

import time
from typing import Any

import jwt

from tests.conftest import JWT_SECRET, GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


def token(organization_id: str | None = "org-1", **claims: Any) -> dict[str, str]:
    payload: dict[str, Any] = {"sub": "agent-1", "exp": int(time.time()) + 3600, **claims}
    if organization_id is not None:
        payload["organization_id"] = organization_id
    return {"Authorization": f"Bearer {jwt.encode(payload, JWT_SECRET, algorithm='HS256')}"}


async def status(gw: Harness, headers: dict[str, str]) -> dict[str, Any]:
    resp = await gw.client.get("/api/v1/tiers/status", headers=headers)
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


async def test_status_of_a_new_organisation_matches_the_seed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    assert await status(gw, token("org-new")) == {
        "tier": "free",
        "limits": {"maxAgents": 10, "maxCallsPerDay": 1000, "maxTokensPerDay": 1000},
        "usage": {"agentCount": 0, "callsToday": 0, "tokensToday": 0},
    }
    # the gateway answered it; the upstream never saw a tier call
    assert gw.upstream.requests == []


async def test_status_reflects_calls_tokens_and_agents(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    headers = token("org-live")
    for _ in range(3):
        assert (await gw.client.post("/api/v1/agents", headers=headers)).status == 200
    for _ in range(2):
        assert (await gw.client.post("/api/v1/token", headers=headers)).status == 200
    assert (await gw.client.get("/api/v1/agents", headers=headers)).status == 200
    assert (await gw.client.delete("/api/v1/agents/a1", headers=headers)).status == 200
    # a failed registration creates no agent
    gw.upstream.status["/api/v1/agents"] = 500
    assert (await gw.client.post("/api/v1/agents", headers=headers)).status == 500
    body = await status(gw, headers)
    assert body["usage"] == {"agentCount": 2, "callsToday": 8, "tokensToday": 2}
    # status calls are free: looking twice changes nothing
    assert (await status(gw, headers))["usage"]["callsToday"] == 8
    # daily counters reset at midnight UTC; the agent count does not
    gw.clock.advance(12 * 3600)
    assert (await status(gw, headers))["usage"] == {
        "agentCount": 2,
        "callsToday": 0,
        "tokensToday": 0,
    }
    # other organisations are counted apart
    assert (await status(gw, token("org-other")))["usage"]["agentCount"] == 0


async def test_status_still_answers_over_the_daily_limit(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    headers = token("org-busy")
    await gw.account("free", organization_id="org-busy")
    await gw.set_usage("org:org-busy", "api_calls", 1000)
    resp = await gw.client.get("/api/v1/things", headers=headers)
    assert resp.status == 403
    assert (await resp.json())["code"] == "FREE_TIER_LIMIT_EXCEEDED"
    assert (await status(gw, headers))["usage"]["callsToday"] == 1000


async def test_enterprise_limits_are_null(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    await gw.account("enterprise", organization_id="org-big")
    body = await status(gw, token("org-big"))
    assert body["tier"] == "enterprise"
    assert body["limits"] == {"maxAgents": None, "maxCallsPerDay": None, "maxTokensPerDay": None}


async def test_upgrade_validation_errors(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    headers = token("org-v")
    for sent, received in (
        ({"target_tier": "premium"}, "premium"),
        ({}, None),
        ({"target_tier": 3}, 3),
        ({"target_tier": "PRO"}, "PRO"),
    ):
        resp = await gw.client.post("/api/v1/tiers/upgrade", json=sent, headers=headers)
        assert resp.status == 400
        assert await resp.json() == {
            "code": "VALIDATION_ERROR",
            "message": "target_tier must be one of: free, pro, enterprise.",
            "details": {"received": received},
        }
    resp = await gw.client.post(
        "/api/v1/tiers/upgrade", json={"target_tier": "free"}, headers=headers
    )
    assert resp.status == 400
    assert (await resp.json())["code"] == "TIER_UPGRADE_NOT_REQUIRED"

    await gw.account("pro", organization_id="org-pro")
    for target in ("pro", "free"):
        resp = await gw.client.post(
            "/api/v1/tiers/upgrade", json={"target_tier": target}, headers=token("org-pro")
        )
        assert resp.status == 400
        body = await resp.json()
        assert body["code"] == "TIER_UPGRADE_NOT_REQUIRED"
        assert body["details"]["current"] == "pro"


async def test_a_token_without_organization_id_is_401(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    for method, path in (("GET", "/api/v1/tiers/status"), ("POST", "/api/v1/tiers/upgrade")):
        resp = await gw.client.request(
            method, path, json={"target_tier": "pro"}, headers=token(None)
        )
        assert resp.status == 401
        assert (await resp.json())["code"] == "UNAUTHORIZED"
        resp = await gw.client.request(method, path, json={"target_tier": "pro"})
        assert resp.status == 401
