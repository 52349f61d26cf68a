"""Account writes from two registries (two processes' worth of caches) on one store lose nothing.

Each registry keeps its own identity cache with a long expiry and hears no invalidations,
the worst a process can be in; every writer still changes only its own fields, and rules
that compare the current state (move up only) hold at the moment of the write. Issue 12
item 5 and issue 17 items 1-2, on memory and on Redis.
"""

from __future__ import annotations

import asyncio
import dataclasses
import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from gateway.errors import NotFound
from gateway.identity.cache import IdentityCache
from gateway.identity.registry import Account, Registry, org_account_id
from gateway.metering.clock import FakeClock
from gateway.metering.store import Store

STORES = ("memory", "redis")
ACCOUNTS = 30
RANK = {"free": 0, "pro": 2, "enterprise": 3}


class Yielding:
    """A store whose every call first yields to the event loop, as a remote one does, so the
    in-process memory store interleaves racing writers the way processes on Redis do."""

    def __init__(self, inner: Store) -> None:
        self._inner = inner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if not inspect.iscoroutinefunction(attr):
            return attr

        async def call(*args: Any, **kwargs: Any) -> Any:
            await asyncio.sleep(0)
            return await attr(*args, **kwargs)

        return call


@pytest.fixture
async def registries(
    store_factory: Callable[[FakeClock], Awaitable[Store]], clock: FakeClock
) -> AsyncIterator[tuple[Registry, Registry]]:
    store = await store_factory(clock)
    shared: Any = Yielding(store)
    yield (
        Registry(shared, clock, IdentityCache(ttl=3600)),
        Registry(shared, clock, IdentityCache(ttl=3600)),
    )
    await store.close()


def upgrade_to(tier: str) -> Callable[[Account], Account]:
    def rule(account: Account) -> Account:
        if RANK[tier] <= RANK[account.tier]:
            return account
        return dataclasses.replace(account, tier=tier)

    return rule


async def test_admin_webhook_switch_and_package_all_kept(
    registries: tuple[Registry, Registry],
) -> None:
    one, two = registries
    ids = [(await one.create_account("free")).id for _ in range(ACCOUNTS)]
    for account_id in ids:  # both "processes" now hold the account as it was
        await one.account(account_id)
        await two.account(account_id)

    def package(n: int) -> Callable[[Account], Account]:
        entry = {"id": f"pkg_{n}", "meter": "api_calls", "units": 10}
        return lambda a: dataclasses.replace(a, packages=[*a.packages, entry])

    await asyncio.gather(
        *(
            write
            for n, account_id in enumerate(ids)
            for write in (
                one.update_account(account_id, name="renamed by ops"),
                two.change_account(account_id, upgrade_to("pro")),
                one.change_account(
                    account_id, lambda a: dataclasses.replace(a, overage={**a.overage, "x": True})
                ),
                two.change_account(account_id, package(2 * n)),
                one.change_account(account_id, package(2 * n + 1)),
            )
        )
    )
    for n, account_id in enumerate(ids):
        stored, _ = await one.change_account(account_id, lambda a: a)  # read from the store
        assert stored.name == "renamed by ops"
        assert stored.tier == "pro"
        assert stored.overage == {"x": True}
        assert sorted(p["id"] for p in stored.packages) == sorted(
            [f"pkg_{2 * n}", f"pkg_{2 * n + 1}"]
        )


async def test_two_payments_at_once_end_on_the_higher_tier(
    registries: tuple[Registry, Registry], clock: FakeClock
) -> None:
    one, two = registries
    orgs = [f"org-{n}" for n in range(ACCOUNTS)]
    for org in orgs[::2]:  # half known on free, half never seen
        await one.create_account("free", organization_id=org)
    for org in orgs:
        await one.account(org_account_id(org))
        await two.account(org_account_id(org))

    def create(org: str) -> Callable[[], Account]:
        return lambda: Account(org_account_id(org), "free", clock.now(), organization_id=org)

    results = await asyncio.gather(
        *(
            write
            for org in orgs
            for write in (
                one.change_account(
                    org_account_id(org), upgrade_to("enterprise"), create=create(org)
                ),
                two.change_account(org_account_id(org), upgrade_to("pro"), create=create(org)),
            )
        )
    )
    assert all(account.tier == "enterprise" for account, _ in results[0::2])
    for org in orgs:
        stored, _ = await two.change_account(org_account_id(org), lambda a: a)
        assert stored.tier == "enterprise"


async def test_a_change_refused_by_its_rule_writes_nothing(
    registries: tuple[Registry, Registry],
) -> None:
    one, _ = registries
    with pytest.raises(NotFound):
        await one.change_account("nobody", lambda a: a)
    account = await one.create_account("pro")
    same, changed = await one.change_account(account.id, upgrade_to("free"))
    assert (same.tier, changed) == ("pro", False)


async def test_a_read_in_flight_during_a_change_does_not_refill_the_cache(
    store_factory: Callable[[FakeClock], Awaitable[Store]], clock: FakeClock
) -> None:
    """A process reads an account; before the answer arrives, another changes it and the
    invalidation lands. What the first read returned predates the change: not cached."""
    store = await store_factory(clock)
    held = asyncio.Event()
    release = asyncio.Event()

    class Slow(Yielding):
        async def get_record(self, kind: str, record_id: str) -> Any:
            found = await store.get_record(kind, record_id)
            held.set()
            await release.wait()  # the answer is on its way back
            return found

    try:
        reader = Registry(Slow(store), clock, IdentityCache(ttl=3600))  # type: ignore[arg-type]
        writer = Registry(store, clock, IdentityCache(ttl=3600))
        account = await writer.create_account("free")
        read = asyncio.create_task(reader.account(account.id))
        await held.wait()
        await writer.update_account(account.id, tier="pro")
        reader.cache.invalidate(f"account:{account.id}")  # what pub/sub delivers
        release.set()
        assert (await read).tier == "free"  # the answer itself is what was read
        assert (await reader.account(account.id)).tier == "pro"  # type: ignore[union-attr]
    finally:
        await store.close()
