"""API keys through real HTTP: where they are read from, malformed, unknown, revoked, at rest.

Memory only: a counting memory store proves which requests make no record lookup at all; key
records on redis-server are exercised by test_admin_api.py and test_lifecycle_*.py (STORES)."""

from __future__ import annotations

import hashlib
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.metering.store import Store
from tests.conftest import GatewayFactory, Harness


class CountingStore(MemoryStore):
    """A real memory store that counts record lookups, to prove which requests make none."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock)
        self.lookups = 0
        self.consumes = 0

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        self.lookups += 1
        return await super().get_record(kind, record_id)

    async def consume(self, account_id: str, charges: Any) -> Any:
        self.consumes += 1
        return await super().consume(account_id, charges)


@pytest.fixture
def store_factory() -> Callable[[FakeClock], Awaitable[Store]]:
    async def make(clock: FakeClock) -> Store:
        return CountingStore(clock)

    return make


def counting(gw: Harness) -> CountingStore:
    # the gateway wraps every store in its failure guard; the counting store is inside
    store = getattr(gw.gateway.store, "inner", gw.gateway.store)
    assert isinstance(store, CountingStore)
    return store


async def new_key(gw: Harness, tier: str = "anonymous") -> tuple[str, str, str]:
    """(account id, key id, plaintext key) for a new account's user key."""
    account_id = await gw.account(tier)
    resp = await gw.admin.post(
        f"/admin/accounts/{account_id}/keys", json={"prefix": "anon_ask_"}, headers=gw.admin_headers
    )
    assert resp.status == 201
    body = await resp.json()
    return account_id, body["id"], body["key"]


async def api_calls_used(gw: Harness, account_id: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account_id}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"]["api_calls"]["used"])


async def assert_401(gw: Harness, headers: dict[str, str], path: str = "/api/things") -> None:
    before = gw.upstream.count()
    resp = await gw.client.get(path, headers=headers)
    assert resp.status == 401
    assert resp.content_type == "application/json"
    assert (await resp.json())["code"] == "UNAUTHORIZED"
    assert gw.upstream.count() == before


async def test_key_accepted_from_bearer_and_from_x_api_key(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account_id, key_id, key = await new_key(gw)
    for headers in (
        {"Authorization": f"Bearer {key}"},
        {"X-API-Key": key},
        {"Authorization": f"Bearer {key}", "X-API-Key": key},
    ):
        resp = await gw.client.get("/api/things", headers=headers)
        assert resp.status == 200, await resp.text()
        seen = gw.upstream.requests[-1]
        assert seen.headers["X-Gateway-Account"] == account_id
        assert seen.headers["X-Gateway-Key-Id"] == key_id
        # the gateway's own key never travels on to the upstream
        assert key not in str(seen.headers)
    assert await api_calls_used(gw, account_id) == 3


async def test_bearer_and_x_api_key_disagreeing_is_refused(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account_a, _, key_a = await new_key(gw)
    _, _, key_b = await new_key(gw)
    await assert_401(gw, {"Authorization": f"Bearer {key_a}", "X-API-Key": key_b})
    assert await api_calls_used(gw, account_a) == 0


@pytest.mark.parametrize(
    "credential",
    [
        "anon_ask_" + "a" * 31,  # one short
        "anon_ask_" + "a" * 33,  # one long
        "anon_ask_" + "a" * 31 + "!",  # a character keys never hold
        "anon_ask_" + "a" * 31 + "-",
        "ask_" + "B" * 31 + "_",
        "ask_",
        "sk_live_" + "a" * 32,  # no key type of the policy
        "hello",
        "a.b.c",  # looks like a JWT, is not one
    ],
)
async def test_malformed_key_is_refused_without_a_store_lookup(
    make_gateway: GatewayFactory, credential: str
) -> None:
    gw = await make_gateway()
    store = counting(gw)
    lookups, consumes = store.lookups, store.consumes
    await assert_401(gw, {"Authorization": f"Bearer {credential}"})
    await assert_401(gw, {"X-API-Key": credential})
    assert (store.lookups, store.consumes) == (lookups, consumes)


async def test_non_ascii_and_oversized_credentials_are_refused_without_lookup(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    store = counting(gw)
    lookups = store.lookups
    await assert_401(gw, {"X-API-Key": "anon_ask_" + "é" * 32})
    await assert_401(gw, {"X-API-Key": "anon_ask_" + "a" * 7000})
    await assert_401(gw, {"Authorization": "Basic dXNlcjpwYXNz"})
    await assert_401(gw, {"Authorization": "Bearer "})
    assert store.lookups == lookups


async def test_unknown_well_formed_key_is_refused(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    await assert_401(gw, {"Authorization": "Bearer anon_ask_" + "Z" * 32})
    await assert_401(gw, {"X-API-Key": "ask_" + "Z" * 32})


async def test_revoked_key_is_refused_on_the_very_next_request(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account_id, key_id, key = await new_key(gw)
    headers = {"Authorization": f"Bearer {key}"}
    resp = await gw.client.get("/api/things", headers=headers)
    assert resp.status == 200
    revoked = await gw.admin.delete(f"/admin/keys/{key_id}", headers=gw.admin_headers)
    assert revoked.status == 200
    assert (await revoked.json())["revoked_at"] == gw.clock.now()
    await assert_401(gw, headers)
    assert await api_calls_used(gw, account_id) == 1
    missing = await gw.admin.delete("/admin/keys/key_999", headers=gw.admin_headers)
    assert missing.status == 404
    assert (await missing.json())["code"] == "NOT_FOUND"


async def test_no_credential_on_a_metered_route_is_401_and_meters_nothing(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    store = counting(gw)
    consumes = store.consumes
    for path in ("/api/things", "/api/logic/run", "/api/projects/1/members"):
        await assert_401(gw, {}, path)
    assert store.consumes == consumes
    assert gw.upstream.count() == 0
    # a route that needs no caller still works without one
    resp = await gw.client.get("/health")
    assert resp.status == 200


async def test_keys_exist_only_as_sha256_digests_at_rest(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    plaintexts = []
    for _ in range(3):
        _, _, key = await new_key(gw)
        plaintexts.append(key)
    project_key = await gw.key(await gw.account("free"), prefix="ask_")
    plaintexts.append(project_key)
    store = counting(gw)
    at_rest = repr(store.__dict__)
    for key in plaintexts:
        assert key not in at_rest
        assert key[-32:] not in at_rest  # not even the random part without its prefix
        assert hashlib.sha256(key.encode()).hexdigest() in at_rest
    # and the admin API never shows a key or a digest after creation
    account = await gw.admin.get("/admin/accounts/1", headers=gw.admin_headers)
    text = await account.text()
    assert all(key not in text for key in plaintexts)
    assert "digest" not in text
