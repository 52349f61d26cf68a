"""A body meter for a body of unknown length: each chunk is charged before it goes upstream."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

from gateway.metering.guard import GuardedStore
from gateway.metering.store import Charge, MeterState
from gateway.policy.model import FailureMode


class StreamedCharge:
    """Charges a chunked body to its byte meter as it flows, one store call per chunk.

    A declared Content-Length is charged up front with the route's other costs; a chunked
    body has none, so each chunk is consumed (atomically, on any store) before it is sent:
    the upstream never gets a byte past the allowance, and concurrent uploads cannot share
    one remainder. ``refuse`` raises the policy's refusal, or returns when shadow mode lets
    the chunk through, which is then counted without a limit.
    """

    def __init__(
        self,
        store: GuardedStore,
        account_id: str,
        charge: Charge,
        failure_mode: FailureMode | None,
        refuse: Callable[[Charge, MeterState], None],
    ) -> None:
        self._store = store
        self._account_id = account_id
        self._charge = charge
        self._failure_mode = failure_mode
        self._refuse = refuse
        self.key: str | None = None  # the meter's store key, once a chunk was charged
        self.total = 0  # bytes charged so far

    async def __call__(self, size: int) -> None:
        charge = dataclasses.replace(self._charge, cost=size)
        decision = await self._store.consume(
            self._account_id, [charge], failure_mode=self._failure_mode
        )
        if not decision.admitted:
            self._refuse(charge, decision.states[0])
            decision = await self._store.consume(
                self._account_id,
                [dataclasses.replace(charge, limit=None)],
                failure_mode=self._failure_mode,
            )
        self.key = decision.states[0].key
        self.total += size

    def giveback(self) -> list[tuple[str, int]]:
        """What to give back when the write did not succeed (a live count stays only on 2xx)."""
        return [] if self.key is None or not self.total else [(self.key, self.total)]
