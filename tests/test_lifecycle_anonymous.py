"""The anonymous path through real HTTP: provision, hit the limits, convert, log in, FREE."""

from __future__ import annotations

import re
from typing import Any

from gateway.settings import AccountSettings
from tests.conftest import GatewayFactory, Harness
from tests.test_agentstack import (
    ANON_403_KEYS,
    ANON_403_PAYMENTS,
    ANON_403_PROJECTS,
    ANON_429,
    seed_fields,
)

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

PASSWORD = "correct horse battery"


async def provision(gw: Harness, name: str = "My Project", **headers: str) -> dict[str, Any]:
    resp = await gw.client.post(
        "/api/projects/anonymous",
        json={"name": name, "description": "Project description"},
        headers=headers,
    )
    assert resp.status == 200, await resp.text()
    body: dict[str, Any] = await resp.json()
    return body


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def test_provisioning_answers_with_the_seed_body(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    body = await provision(gw)
    seed_keys = {
        "success",
        "project_id",
        "user_id",
        "user_api_key",
        "project_api_key",
        "session_token",
        "project",
    }
    assert seed_keys <= body.keys()
    assert body["success"] is True
    assert type(body["project_id"]) is int and type(body["user_id"]) is int
    assert re.fullmatch(r"anon_ask_[A-Za-z0-9]{32}", body["user_api_key"])
    assert re.fullmatch(r"ask_[A-Za-z0-9]{32}", body["project_api_key"])
    assert re.fullmatch(r"[A-Za-z0-9]{32}", body["session_token"])
    assert body["project"] == {"id": body["project_id"], "name": "My Project"}
    # the upstream never saw provisioning: the gateway answered it
    assert gw.upstream.requests == []

    # every credential it handed out identifies the account
    for credential in (body["user_api_key"], body["project_api_key"], body["session_token"]):
        resp = await gw.client.get("/api/things", headers=bearer(credential))
        assert resp.status == 200
    seen = gw.upstream.requests[-1].headers
    assert seen["X-Gateway-Account"] == str(body["user_id"])
    assert seen["X-Gateway-Tier"] == "anonymous"

    # keys are shown once: a second account gets different ones, and the store keeps digests
    other = await provision(gw)
    assert other["user_api_key"] != body["user_api_key"]
    assert other["user_id"] != body["user_id"]


async def test_provisioning_holds_the_live_counts(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    body = await provision(gw)
    resp = await gw.admin.get(f"/admin/accounts/{body['user_id']}/usage", headers=gw.admin_headers)
    meters = (await resp.json())["meters"]
    for name in ("projects", "active_projects", "api_keys", "user_api_keys"):
        assert (meters[name]["used"], meters[name]["limit"]) == (1, 1), name


async def test_the_whole_anonymous_path(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    key = bearer(anon["user_api_key"])

    # call until the 1,001st Logic Engine call gets the seed's 429, at the tier's request
    # rate (2/s: a unit back every 500 ms)
    for i in range(1000):
        gw.clock.advance(0.5)
        resp = await gw.client.post(f"/api/logic/run/{i}", headers=key)
        assert resp.status == 200, (i, await resp.text())
        await resp.read()
    resp = await gw.client.post("/api/logic/run/1000", headers=key)
    assert resp.status == 429
    assert seed_fields(await resp.json(), ANON_429) == ANON_429

    # a second project, an API key, a payment: the seed's 403s
    for path, seed in (
        ("/api/projects", ANON_403_PROJECTS),
        ("/api/api-keys", ANON_403_KEYS),
        ("/api/payments/charge", ANON_403_PAYMENTS),
    ):
        resp = await gw.client.post(path, json={"name": "second"}, headers=key)
        assert resp.status == 403, path
        assert seed_fields(await resp.json(), seed) == seed

    # convert
    resp = await gw.client.post(
        "/api/auth/convert-anonymous",
        json={
            "user_api_key": anon["user_api_key"],
            "name": "John Doe",
            "email": "John@Example.com",
            "password": PASSWORD,
        },
    )
    assert resp.status == 200, await resp.text()
    converted = await resp.json()
    assert converted["success"] is True
    assert converted["user_id"] == anon["user_id"]
    assert converted["tier"] == "free"
    assert converted["is_anonymous"] is False
    assert converted["email"] == "john@example.com"
    assert re.fullmatch(r"[A-Za-z0-9]{32}", converted["session_token"])

    # FREE limits apply at once, with the 1,000 calls so far carried over
    resp = await gw.client.post("/api/logic/run/1000", headers=key)
    assert resp.status == 200
    assert resp.headers["RateLimit-Limit"] == "10000"
    assert resp.headers["RateLimit-Remaining"] == str(10_000 - 1001)
    resp = await gw.client.post("/api/payments/charge", headers=key)
    assert resp.status == 200

    # log in with the new password; the session identifies the same user
    resp = await gw.client.post(
        "/api/auth/login", json={"email": "john@example.com", "password": PASSWORD}
    )
    assert resp.status == 200, await resp.text()
    login = await resp.json()
    assert login["user_id"] == anon["user_id"] and login["tier"] == "free"
    session = bearer(login["session_token"])
    resp = await gw.client.get("/api/things", headers=session)
    assert resp.status == 200
    assert gw.upstream.requests[-1].headers["X-Gateway-Tier"] == "free"

    # FREE allows one project, and the anonymous one counts: the FREE limit answers
    resp = await gw.client.post("/api/projects", json={"name": "second"}, headers=session)
    assert resp.status == 429
    body = await resp.json()
    assert (body["meter"], body["limit"], body["current"]) == ("projects", 1, 2)
    assert body["upgrade_tier"] == "starter"
    assert "requires_conversion" not in body
    # but an API key is now allowed (FREE: 2) and one more is not
    resp = await gw.client.post(
        "/api/api-keys", json={"project_id": anon["project_id"]}, headers=session
    )
    assert resp.status == 201, await resp.text()
    new_key = (await resp.json())["key"]
    assert re.fullmatch(r"ask_[A-Za-z0-9]{32}", new_key)
    assert (await gw.client.get("/api/things", headers=bearer(new_key))).status == 200
    resp = await gw.client.post(
        "/api/api-keys", json={"project_id": anon["project_id"]}, headers=session
    )
    assert resp.status == 429
    assert (await resp.json())["meter"] == "api_keys"


async def test_provisioning_is_rate_limited_per_client_address(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(accounts=AccountSettings(provisions_per_address_per_day=3))
    for _ in range(3):
        await provision(gw)
    resp = await gw.client.post("/api/projects/anonymous", json={"name": "x"})
    assert resp.status == 429
    body = await resp.json()
    assert body["limit"] == 3 and body["retryable"] is True
    assert body["reset"] == "2026-11-26T00:00:00Z"
    assert resp.headers["Retry-After"] == str(12 * 3600)
    # a forged X-Forwarded-For from an untrusted peer changes nothing
    resp = await gw.client.post(
        "/api/projects/anonymous", json={"name": "x"}, headers={"X-Forwarded-For": "203.0.113.9"}
    )
    assert resp.status == 429
    # the next UTC day the address may provision again
    gw.clock.advance(12 * 3600)
    await provision(gw)


async def test_provisioning_limit_trusts_only_configured_proxies(
    make_gateway: GatewayFactory,
) -> None:
    import ipaddress

    gw = await make_gateway(
        accounts=AccountSettings(provisions_per_address_per_day=1),
        trusted_proxies=(ipaddress.ip_network("127.0.0.0/8"),),
    )
    # behind a trusted proxy, each real client has its own allowance
    await provision(gw, **{"X-Forwarded-For": "203.0.113.1"})
    await provision(gw, **{"X-Forwarded-For": "203.0.113.2"})
    resp = await gw.client.post(
        "/api/projects/anonymous", json={"name": "x"}, headers={"X-Forwarded-For": "203.0.113.1"}
    )
    assert resp.status == 429
    # a client prepending a fake hop cannot escape: the rightmost untrusted hop is metered
    resp = await gw.client.post(
        "/api/projects/anonymous",
        json={"name": "x"},
        headers={"X-Forwarded-For": "198.51.100.7, 203.0.113.1"},
    )
    assert resp.status == 429


async def test_provisioning_bad_input_is_a_clear_400(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    for payload in (b"{not json", b"[1, 2]", b'{"name": 42}'):
        resp = await gw.client.post(
            "/api/projects/anonymous", data=payload, headers={"Content-Type": "application/json"}
        )
        assert resp.status == 400, payload
        assert (await resp.json())["code"] in ("BAD_REQUEST", "VALIDATION_ERROR")
