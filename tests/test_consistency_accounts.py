"""Account writes across two processes on one store lose nothing (issue 17, items 1 and 2).

Each scenario first warms both processes' identity caches (the state a busy gateway is in),
then fires the racing writes all at once, many accounts per round. After quiescence it
checks the store itself and then each process: every acknowledged write is there, and no
2xx was given for a write that is not. On memory both handles are one process.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections.abc import Iterator
from typing import Any

import aiohttp
import jwt
import pytest

from gateway.api.stripe import sign
from tests.conftest import JWT_SECRET
from tests.consistency import AUTH, WEBHOOK_SECRET, Pair, at_once, call, eventually, gateway_pair
from tests.redis_servers import RedisServer

ACCOUNTS = 60  # tier change against overage switch, one pair of writes each
BUYERS, PURCHASES = 8, 20  # concurrent package purchases per account
ORGS = 30  # organisations, each sent an enterprise and a pro payment at once
NOWHERE = "http://127.0.0.1:9"  # these scenarios never reach an upstream
# about lost writes, not timeouts: a burst of hundreds on a loaded 2-core machine needs room
BUDGET = ("--store-timeout-ms", "5000")


@pytest.fixture(scope="module", params=["memory", "redis"])
def store_url(request: pytest.FixtureRequest) -> str:
    if request.param == "memory":
        return "memory"
    server: RedisServer = request.getfixturevalue("redis_server")
    server.client().flushall()
    return server.url


@pytest.fixture(scope="module")
def stack(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    directory = tmp_path_factory.mktemp("stack")
    with gateway_pair(
        store_url, directory, policy="agentstack", upstream=NOWHERE, extra=BUDGET
    ) as pair:
        yield pair


@pytest.fixture(scope="module")
def idp(store_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    directory = tmp_path_factory.mktemp("idp")
    with gateway_pair(
        store_url, directory, policy="agentidp", upstream=NOWHERE, extra=BUDGET
    ) as pair:
        yield pair


async def new_account(session: aiohttp.ClientSession, pair: Pair, tier: str, **fields: Any) -> str:
    status, body = await call(
        session,
        "POST",
        pair.a.admin + "/admin/accounts",
        json={"tier": tier, **fields},
        headers=AUTH,
    )
    assert status == 201, body
    return str(body["id"])


async def warm(session: aiohttp.ClientSession, pair: Pair, account_id: str) -> None:
    """Read the account through both processes, so each holds it in its identity cache."""
    for served in pair.both:
        status, _ = await call(
            session, "GET", f"{served.admin}/admin/accounts/{account_id}", headers=AUTH
        )
        assert status == 200


async def test_tier_change_and_overage_switch_both_kept(stack: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        ids = [await new_account(session, stack, "pro") for _ in range(ACCOUNTS)]
        for account_id in ids:
            await warm(session, stack, account_id)

        def tier(account_id: str) -> Any:
            url = f"{stack.a.admin}/admin/accounts/{account_id}/tier"
            return call(session, "PUT", url, json={"tier": "enterprise"}, headers=AUTH)

        def overage(account_id: str) -> Any:
            url = f"{stack.b.admin}/admin/accounts/{account_id}/overage"
            return call(session, "PUT", url, json={"enabled": True}, headers=AUTH)

        answers = await at_once(*itertools.chain.from_iterable((tier(i), overage(i)) for i in ids))
        assert {status for status, _ in answers} == {200}

        async def lost(served_admin: str) -> list[str]:
            out = []
            for account_id in ids:
                _, account = await call(
                    session, "GET", f"{served_admin}/admin/accounts/{account_id}", headers=AUTH
                )
                if account["tier"] != "enterprise" or account["overage"].get("enabled") is not True:
                    out.append(account_id)
            return out

        for served in stack.both:
            missing = await eventually(lambda admin=served.admin: lost(admin), lambda m: not m)
            assert not missing, f"{len(missing)} of {ACCOUNTS} accounts lost a write"


async def test_concurrent_purchases_and_grants_all_kept(stack: Pair) -> None:
    async with aiohttp.ClientSession() as session:
        buyers = []
        for _ in range(BUYERS):
            account_id = await new_account(session, stack, "pro")
            status, body = await call(
                session,
                "POST",
                f"{stack.a.admin}/admin/accounts/{account_id}/keys",
                json={"prefix": "user_ask_"},
                headers=AUTH,
            )
            assert status == 201, body
            buyers.append((account_id, {"Authorization": f"Bearer {body['key']}"}))
            await warm(session, stack, account_id)

        async def buy(account_id: str, headers: dict[str, str], n: int) -> tuple[str, str, Any]:
            served = stack.both[n % 2]
            url = served.proxy + "/api/billing/logic-engine-package?package_size=small"
            key = f"buy-{account_id}-{n}"
            # 409: another change is in progress; 503: the answer was lost (the store was
            # slow), so whether it was bought is unknown: the Idempotency-Key makes a retry safe
            for _ in range(200):
                status, body = await call(
                    session, "POST", url, headers={**headers, "Idempotency-Key": key}
                )
                if status not in (409, 503):
                    break
                await asyncio.sleep(0.05)
            assert status == 201, body
            return account_id, key, body["package"]["id"]

        async def grant(account_id: str, n: int) -> tuple[str, str | None]:
            served = stack.both[n % 2]
            url = f"{served.admin}/admin/accounts/{account_id}/packages"
            for _ in range(200):
                status, body = await call(
                    session,
                    "POST",
                    url,
                    json={"kind": "logic-engine", "size": "small"},
                    headers=AUTH,
                )
                if status != 409:
                    break
                await asyncio.sleep(0.05)
            if status == 503:
                return account_id, None  # not acknowledged: it may or may not have happened
            assert status == 201, body
            return account_id, body["package"]["id"]

        bought = await at_once(
            *(buy(a, h, n) for a, h in buyers for n in range(PURCHASES)),
            *(grant(a, n) for a, _ in buyers for n in range(PURCHASES)),
        )
        acknowledged: dict[str, set[str]] = {a: set() for a, _ in buyers}
        unknown = {a: 0 for a, _ in buyers}  # grants answered 503
        for item in bought:
            if item[-1] is None:
                unknown[item[0]] += 1
            else:
                acknowledged[item[0]].add(item[-1])

        async def missing(admin: str) -> int:
            count = 0
            for account_id, ids in acknowledged.items():
                _, billing = await call(
                    session, "GET", f"{admin}/admin/accounts/{account_id}/billing", headers=AUTH
                )
                held = {p["id"] for p in billing["packages"]}
                # every 2xx is held; anything else held came from a grant answered 503
                count += len(ids - held) + max(len(held - ids) - unknown[account_id], 0)
            return count

        for served in stack.both:
            lost = await eventually(lambda admin=served.admin: missing(admin), lambda n: n == 0)
            assert lost == 0, f"{lost} of {2 * BUYERS * PURCHASES} packages missing"

        # a retried purchase answers with the package it bought, which the account holds
        for item in bought[: BUYERS * PURCHASES]:
            account_id, key, package_id = item  # type: ignore[misc]
            headers = dict(next(h for a, h in buyers if a == account_id))
            url = stack.b.proxy + "/api/billing/logic-engine-package?package_size=small"
            status, body = await call(
                session, "POST", url, headers={**headers, "Idempotency-Key": key}
            )
            assert (status, body["package"]["id"]) == (201, package_id)


def completed(event_id: str, organization_id: str, tier: str) -> bytes:
    event = {
        "id": event_id,
        "object": "event",
        "type": "checkout.session.completed",
        "data": {
            "object": {
                "id": f"cs_{event_id}",
                "object": "checkout.session",
                "payment_status": "paid",
                "metadata": {"organization_id": organization_id, "target_tier": tier},
            }
        },
    }
    return json.dumps(event).encode()


def org_token(organization_id: str) -> dict[str, str]:
    claims = {"sub": "user", "organization_id": organization_id, "exp": int(time.time()) + 600}
    return {"Authorization": f"Bearer {jwt.encode(claims, JWT_SECRET, algorithm='HS256')}"}


async def test_paid_upgrades_at_once_end_on_the_higher_tier(idp: Pair) -> None:
    run = f"{time.monotonic_ns()}"
    async with aiohttp.ClientSession() as session:
        orgs = [f"org-{run}-{n}" for n in range(ORGS)]
        # half are known on free, half were never seen: a payment must create those
        for org in orgs[: ORGS // 2]:
            await new_account(session, idp, "free", organization_id=org)
        for org in orgs:
            for served in idp.both:  # each process caches the org (or its absence)
                status, body = await call(
                    session, "GET", served.proxy + "/api/v1/tiers/status", headers=org_token(org)
                )
                assert status == 200, body

        def deliver(served_proxy: str, org: str, tier: str) -> Any:
            payload = completed(f"evt-{org}-{tier}", org, tier)
            now = int(time.time())
            headers = {
                "Stripe-Signature": f"t={now},v1={sign(WEBHOOK_SECRET, now, payload)}",
                "Content-Type": "application/json",
            }
            url = served_proxy + "/api/v1/webhooks/stripe"
            return call(session, "POST", url, data=payload, headers=headers)

        answers = await at_once(
            *itertools.chain.from_iterable(
                (deliver(idp.a.proxy, org, "enterprise"), deliver(idp.b.proxy, org, "pro"))
                for org in orgs
            )
        )
        refused = [body for status, body in answers if status != 200]

        async def tiers(proxy: str) -> list[str]:
            out = []
            for org in orgs:
                _, body = await call(
                    session, "GET", proxy + "/api/v1/tiers/status", headers=org_token(org)
                )
                out.append(body["tier"])
            return out

        for served in idp.both:
            ended = await eventually(
                lambda proxy=served.proxy: tiers(proxy), lambda t: set(t) == {"enterprise"}
            )
            wrong = [t for t in ended if t != "enterprise"]
            assert not wrong and not refused, (
                f"{len(refused)} of {2 * ORGS} paid events refused ({refused[:1]}); "
                f"{len(wrong)} of {ORGS} organisations ended on {sorted(set(wrong))}"
            )
