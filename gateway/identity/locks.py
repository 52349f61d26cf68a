"""Short per-record locks over the Store's record layer, for read-check-write sequences.

The record layer has no compare-and-set, but ``put_record(only_if_absent=True)`` is atomic
on every store, which is enough for a lock: whoever creates the lock record holds it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from gateway.errors import Conflict
from gateway.metering.clock import Clock
from gateway.metering.store import Store


class Busy(Conflict):
    code = "BUSY"


class Locks:
    def __init__(self, store: Store, clock: Clock, *, stale_after: float = 30.0) -> None:
        self._store = store
        self._clock = clock
        self._stale_after = stale_after

    @asynccontextmanager
    async def hold(self, kind: str, record_id: str) -> AsyncIterator[None]:
        """Hold the lock on (kind, id) for the block, or raise Busy (409) at once."""
        lock_id = f"{kind}:{record_id}"
        if not await self._acquire(lock_id):
            raise Busy(f"another change to {kind} {record_id} is in progress; retry")
        try:
            yield
        finally:
            await self._store.delete_record("lock", lock_id)

    async def _acquire(self, lock_id: str) -> bool:
        doc = {"at": self._clock.now()}
        if await self._store.put_record("lock", lock_id, doc, only_if_absent=True):
            return True
        # a holder that died mid-change leaves its lock behind: past the staleness bound
        # it is taken over, so one crash cannot freeze a record for ever
        held = await self._store.get_record("lock", lock_id)
        if held is not None and self._clock.now() - float(held["at"]) < self._stale_after:
            return False
        await self._store.delete_record("lock", lock_id)
        return await self._store.put_record("lock", lock_id, doc, only_if_absent=True)
