"""Every key the Redis store writes, listed by scanning a real redis-server after a workload
that reaches each kind, and each one's TTL held to the retention it is meant to have.

A key of a kind nobody listed here, or a kind meant to expire that has no TTL, fails the test:
a key without an expiry is a slow leak. Redis only: a TTL is a property of Redis keys (the
memory store's windows and records expire by the same rules, checked in the store suites).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from gateway.api.stripe import EVENT_TTL
from gateway.metering.windows import SOURCE_TTL, window_ttl
from gateway.settings import Settings
from tests.conftest import GatewayFactory, Harness
from tests.redis_servers import RedisServer
from tests.test_lifecycle_conversion import PASSWORD
from tests.test_stripe import FakeStripe, agentidp, completed, deliver, stripe

__all__ = ["stripe"]  # the fake Stripe fixture, shared with the Stripe suite

STORES = ("redis",)

DAY = 86_400
SESSION_TTL = int(Settings().accounts.session_ttl_seconds)
# Redis counts a TTL down in real time while the test runs; this much may have passed
SLACK = 120

# records kept until deleted, by design: what an account is, and its way in
PERMANENT_RECORDS = {
    "account": "the account itself",
    "project": "a project of an account",
    "key": "an API key's record, by digest (revoked keys stay, to answer 'revoked')",
    "key_id": "an API key's id, pointing at its digest",
    "email": "a user's e-mail, unique across accounts",
    "conversion": "the anonymous account a user converted from, once",
    "password": "a user's password hash",
}
# records that expire: kind -> seconds after they were written
EXPIRING_RECORDS = {
    "session": SESSION_TTL,
    "session_id": SESSION_TTL,
    "stripe_event": EVENT_TTL,  # an applied Stripe event's id
}
# sets and sequences belong to accounts and id spaces, which are permanent
# tier_accounts: the accounts on each tier, which reload guards count (policy/reload.py)
PERMANENT_SETS = {"projects", "keys", "sessions", "tier_accounts"}
PERMANENT_SEQUENCES = {"account", "project", "key", "session", "package"}

TAG = r"gw:\{a:(?P<account>[^}]+)\}"
RATE_MIN_TTL = 60  # seconds, under an injected clock
METER = TAG + r":m:(?P<meter>[^:]+):(?P<scope>.+?)"  # a scope may hold ":" (org:acme)


def between(low: int, high: int) -> Callable[[int], bool]:
    return lambda ttl: low <= ttl <= high


def about(seconds: int) -> Callable[[int], bool]:
    return between(seconds - SLACK, seconds)


def permanent(ttl: int) -> bool:
    return ttl == -1


def expiring(ttl: int) -> bool:
    return ttl > 0


def expectation(key: str, history: dict[str, int]) -> tuple[str, Callable[[int], bool]]:
    """(kind, the TTL check) for a key; AssertionError for a kind nobody listed."""
    # the most specific first: a scope may hold ":", so a window pattern would match history
    rules: list[tuple[str, str, Callable[[re.Match[str]], Callable[[int], bool]]]] = [
        (
            "package or overage source",
            METER + r":(\d{4}-\d{2}|\d{4}-\d{2}-\d{2}):(package|overage)$",
            lambda m: about(SOURCE_TTL),
        ),
        (
            "daily history",
            METER + r":h:\d{4}-\d{2}-\d{2}$",
            lambda m: about(history[m["account"]]) if history[m["account"]] > 0 else permanent,
        ),
        ("day window", METER + r":\d{4}-\d{2}-\d{2}$", lambda m: about(window_ttl("day"))),
        ("month window", METER + r":\d{4}-\d{2}$", lambda m: about(window_ttl("month"))),
        ("live count", METER + "$", lambda m: permanent),
        ("decision marker", TAG + r":d:[^:]+$", lambda m: expiring),
        # a rate meter's GCRA timestamp: kept until its bucket is full again; under the test's
        # injected clock, at least a minute of Redis time (consume.lua says why)
        ("rate bucket", TAG + r":r:[^:]+:.+$", lambda m: between(1, RATE_MIN_TTL)),
        (
            "record",
            r"gw:r:(?P<kind>[a-z_]+):.+$",
            lambda m: (
                permanent if m["kind"] in PERMANENT_RECORDS else about(EXPIRING_RECORDS[m["kind"]])
            ),
        ),
        ("set", r"gw:s:(?P<kind>[a-z_]+):[^:]+$", lambda m: permanent),
        ("sequence", r"gw:seq:(?P<kind>[a-z_]+)$", lambda m: permanent),
    ]
    for kind, pattern, check in rules:
        if (match := re.match(pattern, key)) is not None:
            listed = match.groupdict().get("kind")
            if kind == "record":
                assert listed in PERMANENT_RECORDS or listed in EXPIRING_RECORDS, key
                kind = f"record {listed}"
            elif kind == "set":
                assert listed in PERMANENT_SETS, key
            elif kind == "sequence":
                assert listed in PERMANENT_SEQUENCES, key
            return kind, check(match)
    raise AssertionError(f"a key of a kind nobody listed: {key}")


async def _agentstack_workload(gw: Harness) -> dict[str, int]:
    """Reach every AgentStack key kind; returns account id -> history TTL of its first tier."""
    history = {}
    # anonymous: a project, a key, live counts, windows and history
    resp = await gw.client.post(
        "/api/projects/anonymous", json={"name": "P", "description": "d"}, headers={}
    )
    assert resp.status == 200, await resp.text()
    anon: dict[str, Any] = await resp.json()
    history[str(anon["user_id"])] = 8 * DAY  # anonymous keeps 7 days (+1)
    key = {"Authorization": f"Bearer {anon['user_api_key']}"}
    for i in range(3):
        assert (await gw.client.post(f"/api/logic/run/{i}", headers=key)).status == 200
    # converted: e-mail, conversion, password, a session; a login and a logout
    login = {"email": "expiry@example.com", "password": PASSWORD}
    resp = await gw.client.post(
        "/api/auth/convert-anonymous",
        json={"user_api_key": anon["user_api_key"], "name": "E", **login},
    )
    assert resp.status == 200, await resp.text()
    token = (await (await gw.client.post("/api/auth/login", json=login)).json())["session_token"]
    resp = await gw.client.post("/api/auth/logout", headers={"Authorization": f"Bearer {token}"})
    assert resp.status in (200, 204), await resp.text()

    # free at its Logic Engine limit: a package (idempotent purchase), then overage
    account = await gw.account("free")
    history[account] = 8 * DAY
    headers = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    await gw.set_usage(account, "logic_engine_calls", 10_000)
    buy = {**headers, "Idempotency-Key": "order-expiry"}
    resp = await gw.client.post("/api/billing/logic-engine-package?package_size=small", headers=buy)
    assert resp.status == 201, await resp.text()
    assert (await gw.client.post("/api/logic/run", headers=headers)).status == 200
    await gw.set_usage(account, "logic_engine_calls", 20_000)
    resp = await gw.client.put(
        "/api/billing/overage", json={"enabled": True, "logic_engine": True}, headers=headers
    )
    assert resp.status == 200, await resp.text()
    assert (await gw.client.post("/api/logic/run", headers=headers)).status == 200

    # enterprise: history kept for ever, by the policy's "unlimited" retention
    enterprise = await gw.account("enterprise")
    history[enterprise] = -1
    assert (
        await gw.client.post("/api/logic/run", headers=await _key(gw, enterprise))
    ).status == 200
    return history


async def _key(gw: Harness, account: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}


async def test_every_key_the_store_writes_has_its_documented_ttl(
    make_gateway: GatewayFactory, stripe: FakeStripe, redis_server: RedisServer
) -> None:
    history = await _agentstack_workload(await make_gateway())
    # AgentIdP: daily counters of an organisation, and an applied Stripe event
    idp = await agentidp(make_gateway)
    org = {"Authorization": "Bearer " + _org_token("org-expiry")}
    assert (await idp.client.get("/api/v1/things", headers=org)).status == 200
    status, body = await deliver(idp, completed("evt_expiry", "org-expiry", "pro"))
    assert (status, body["applied"]) == (200, True)

    client = redis_server.client()
    seen: dict[str, set[str]] = {}
    wrong = []
    for raw in client.scan_iter(match="*", count=1000):
        key = raw.decode()
        ttl = client.ttl(key)
        kind, check = expectation(key, history)
        seen.setdefault(kind, set()).add(key)
        if not check(ttl):
            wrong.append((kind, key, ttl))
    assert wrong == []
    # the workload reached every kind it was meant to (the decision marker is optional)
    assert set(seen) >= {
        "day window",
        "month window",
        "package or overage source",
        "daily history",
        "live count",
        "rate bucket",
        *(f"record {kind}" for kind in (*PERMANENT_RECORDS, *EXPIRING_RECORDS)),
        "set",
        "sequence",
    }, sorted(seen)
    sources = {key.rsplit(":", 1)[1] for key in seen["package or overage source"]}
    assert sources == {"package", "overage"}
    assert any(history[k.split("}")[0][len("gw:{a:") :]] == -1 for k in seen["daily history"])


def _org_token(organization_id: str) -> str:
    from tests.conftest import mint

    return mint({"organization_id": organization_id, "sub": "agent-1"})
