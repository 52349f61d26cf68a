"""The lifecycle's races again, on a store that yields to the event loop inside every call
as a remote store does, so racing requests really interleave between store round trips.

Memory only: the yielding store stages interleavings a real Redis produces by chance; the
same flows run on redis-server through test_lifecycle_*.py's STORES."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.metering.store import Charge, Decision, MeterState, Store
from tests.test_lifecycle_conversion import (
    test_two_accounts_racing_for_one_email,
    test_two_conversions_racing_for_one_key,
)
from tests.test_lifecycle_projects import (
    test_racing_changes_free_each_unit_once,
    test_two_concurrent_creates_never_pass_the_last_unit,
)
from tests.test_stripe import (
    stripe,
    test_concurrent_deliveries_of_one_event_apply_once,
)

__all__ = [
    "stripe",
    "test_concurrent_deliveries_of_one_event_apply_once",
    "test_racing_changes_free_each_unit_once",
    "test_two_accounts_racing_for_one_email",
    "test_two_concurrent_creates_never_pass_the_last_unit",
    "test_two_conversions_racing_for_one_key",
]


class YieldingStore(MemoryStore):
    """The memory store, with a trip through the event loop before every operation."""

    async def consume(self, account_id: str, charges: Sequence[Charge]) -> Decision:
        await asyncio.sleep(0)
        return await super().consume(account_id, charges)

    async def release(self, account_id: str, items: Sequence[tuple[str, int]]) -> None:
        await asyncio.sleep(0)
        await super().release(account_id, items)

    async def peek(self, account_id: str, charges: Sequence[Charge]) -> tuple[MeterState, ...]:
        await asyncio.sleep(0)
        return await super().peek(account_id, charges)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        await asyncio.sleep(0)
        return await super().get_record(kind, record_id)

    async def put_record(self, kind: str, record_id: str, doc: dict[str, Any], **how: Any) -> bool:
        await asyncio.sleep(0)
        return await super().put_record(kind, record_id, doc, **how)

    async def delete_record(self, kind: str, record_id: str) -> bool:
        await asyncio.sleep(0)
        return await super().delete_record(kind, record_id)

    async def members(self, kind: str, owner_id: str) -> list[str]:
        await asyncio.sleep(0)
        return await super().members(kind, owner_id)


@pytest.fixture
def store_factory() -> Callable[[FakeClock], Awaitable[Store]]:
    async def make(clock: FakeClock) -> Store:
        return YieldingStore(clock)

    return make
