"""What the gateway does when its store is down, slow or out of memory: a choice, not an accident.

``GuardedStore`` wraps any Store. The first failure (a command over its budget, a refused
connection, an OOM answer) marks the store degraded; from then on no request touches it,
and one background probe pings it with exponential backoff until it answers. While degraded:

The mode is the gateway's ``store_failure_mode`` unless the caller's tier names its own
(``store_failure_mode`` on a tier in the policy):

- ``closed`` (the default): every metered request is refused with 503 ``STORE_UNAVAILABLE``
  and a ``Retry-After`` of the next probe, so no call is admitted uncounted;
- ``open``: requests are admitted on a local allowance, at most ``allowance`` units per meter
  of an account per outage in this process, counted here and written back to the store (as
  unlimited charges, so they add to the shared count) before it is marked healthy again.
  Units admitted this way are never billed as overage: they join the shared count without
  a source (the account was never asked to pay for units the gateway could not check), and
  units after recovery are attributed by position as always. They are not added to the
  daily usage history either: history shows what the store decided. Rate meters are held
  to the same per-outage allowance here and not written back: a bucket's state is worth
  nothing a few seconds later.

A decision cut off by its budget is void: the Redis store tells the script its deadline
and, after giving up, turns the decision's id into a tombstone or gives back what it took
(consume.lua, void.lua), so a request answered 503 is never charged, even when a frozen
server runs it later. The probe waits for those voids (``settle``) before the store is
marked healthy again.

At start the gateway pings the store once (``start``): a store that does not answer is
logged once and the gateway starts degraded, probing it; its return is logged once too.
While degraded, subscriptions (``listen``) wait for the probe instead of retrying on their
own, so an outage costs a few log lines, not a line per retry.

Decisions taken while degraded carry ``degraded=True`` (the proxy marks them with the
``X-Gateway-Degraded`` header); ``ping`` fails fast so ``/readyz`` answers 503; the
``gateway_store_degraded`` gauge shows the state. ``watch`` pings a healthy store at an
interval, so an idle process notices an outage (and its gauge says so) without a request.
Every failed command of a healthy store is counted in ``gateway_store_errors_total``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from gateway.aio import cancel_and_wait
from gateway.errors import StoreUnavailable
from gateway.metering.clock import Clock
from gateway.metering.store import Charge, Decision, Granted, Lease, MeterState, Store
from gateway.metering.windows import window_key
from gateway.metrics import Metrics
from gateway.policy.model import FailureMode, Period

log = logging.getLogger("gateway")

T = TypeVar("T")
DEGRADED_HEADER = "X-Gateway-Degraded"
# releases kept for write-back during one outage; past this, refunds are dropped (logged)
_MAX_PENDING_RELEASES = 100_000

_LedgerKey = tuple[str, str, str, Period | None]  # account, meter, scope, period


class GuardedStore:
    """A Store with a failure mode, a backoff probe and a fail-open write-back ledger."""

    def __init__(
        self,
        inner: Store,
        *,
        mode: FailureMode,
        allowance: int,
        clock: Clock,
        metrics: Metrics | None = None,
        min_backoff: float = 0.1,
        max_backoff: float = 2.0,
    ) -> None:
        self.inner = inner
        self._mode = mode
        self._allowance = allowance
        self._clock = clock
        self._metrics = metrics
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._backoff = min_backoff
        self._reason = ""
        self._probe: asyncio.Task[None] | None = None
        self._ledger: dict[_LedgerKey, int] = {}
        self._local_rates: dict[_LedgerKey, int] = {}  # rate units admitted this outage
        self._releases: list[tuple[str, str, int]] = []
        self._healthy = asyncio.Event()
        self._healthy.set()

    @property
    def degraded(self) -> bool:
        return self._probe is not None

    # -- state ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Ping the store once before serving; if it does not answer, say so once and start
        degraded, probing with backoff (``require_store`` refuses to start instead: server)."""
        try:
            await self.inner.ping()
        except StoreUnavailable as exc:
            self._trip(exc, when="at start")

    def _trip(self, exc: StoreUnavailable, *, when: str = "") -> None:
        if self._metrics is not None:
            kind = "timeout" if isinstance(exc.__cause__, TimeoutError) else "error"
            self._metrics.store_errors.labels(kind).inc()
        if self._probe is None:
            log.warning(
                "store unavailable%s (%s): failing %s until it answers; probing with backoff",
                f" {when}" if when else "",
                exc,
                self._mode,
            )
            self._healthy.clear()
            self._reason = exc.message
            self._backoff = self._min_backoff
            self._probe = asyncio.get_running_loop().create_task(self._recover())
            if self._metrics is not None:
                self._metrics.store_degraded.set(1)

    async def _recover(self) -> None:
        while True:
            await asyncio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, self._max_backoff)
            try:
                await self.inner.ping()
                await self.inner.settle()
                # until nothing is left: requests decided during an await add to the ledger,
                # and between the last check and "healthy" below nothing else can run
                while self._ledger or self._releases:
                    await self._write_back()
            except StoreUnavailable as exc:
                self._reason = exc.message
                continue
            log.warning("store answers again: deciding with it")
            self._local_rates.clear()
            self._probe = None
            self._healthy.set()
            if self._metrics is not None:
                self._metrics.store_degraded.set(0)
            return

    async def watch(self, interval: float) -> None:
        """Ping the store every ``interval`` seconds while it is healthy, until cancelled; the
        first failure marks it degraded, as a request's would."""
        while True:
            await asyncio.sleep(interval)
            if self.degraded:
                continue  # the backoff probe is on it
            try:
                await self.inner.ping()
            except StoreUnavailable as exc:
                self._trip(exc)

    async def _write_back(self) -> None:
        """Add what was admitted locally to the shared counts, then apply pending refunds.

        Requests keep being decided locally while this runs, so written units are subtracted
        from the ledger rather than the ledger cleared, and refunds are taken as a batch.
        """
        by_account: dict[str, list[tuple[_LedgerKey, Charge]]] = {}
        for entry, units in list(self._ledger.items()):
            account_id, meter, scope_id, period = entry
            charge = Charge(meter, scope_id, period, units, None)
            by_account.setdefault(account_id, []).append((entry, charge))
        for account_id, items in by_account.items():
            await self.inner.consume(account_id, [charge for _, charge in items])
            for entry, charge in items:
                left = self._ledger[entry] - charge.cost
                if left > 0:
                    self._ledger[entry] = left
                else:
                    del self._ledger[entry]
        pending, self._releases = self._releases, []
        while pending:
            account_id, key, cost = pending[-1]
            try:
                await self.inner.release(account_id, [(key, cost)])
            except StoreUnavailable:
                self._releases[:0] = pending
                raise
            pending.pop()

    def _refusal(self) -> StoreUnavailable:
        retry_after = max(math.ceil(self._backoff), 1)
        return StoreUnavailable(
            "the quota store is unavailable; try again shortly",
            details={"retry_after": retry_after},
            headers={"Retry-After": str(retry_after), DEGRADED_HEADER: "store-unavailable"},
        )

    async def _call(self, call: Callable[[], Awaitable[T]]) -> T:
        """Pass through while healthy; fail fast while degraded, without touching the store."""
        if self.degraded:
            raise self._refusal()
        try:
            return await call()
        except StoreUnavailable as exc:
            self._trip(exc)
            raise self._refusal() from exc

    # -- metering ---------------------------------------------------------------------------

    async def consume(
        self,
        account_id: str,
        charges: Sequence[Charge],
        *,
        failure_mode: FailureMode | None = None,
    ) -> Decision:
        """As Store.consume; ``failure_mode`` overrides the default (a tier's own choice)."""
        if not self.degraded:
            try:
                return await self.inner.consume(account_id, charges)
            except StoreUnavailable as exc:
                self._trip(exc)
        if (failure_mode or self._mode) == "closed":
            self._count("refused_closed")
            raise self._refusal()
        return self._consume_locally(account_id, charges)

    def _consume_locally(self, account_id: str, charges: Sequence[Charge]) -> Decision:
        now = self._clock.now()
        entries = [(account_id, c.meter, c.scope_id, c.period) for c in charges]
        ledgers = [self._ledger if c.rate is None else self._local_rates for c in charges]
        used = [ledger.get(entry, 0) for ledger, entry in zip(ledgers, entries, strict=True)]
        refused = None
        for index, charge in enumerate(charges):
            # overage, unlimited and rate meters are held to the local allowance alone
            capacity = None if charge.overage or charge.rate is not None else charge.capacity
            cap = self._allowance if capacity is None else min(self._allowance, capacity)
            if used[index] + charge.cost > cap:
                refused = index
                break
        if refused is None:
            for index, (entry, charge) in enumerate(zip(entries, charges, strict=True)):
                used[index] += charge.cost
                ledgers[index][entry] = used[index]
        self._count("admitted_open" if refused is None else "refused_open")
        states = []
        for charge, value in zip(charges, used, strict=True):
            key, reset_at = window_key(
                account_id, charge.meter, charge.scope_id, charge.period, now
            )
            states.append(
                MeterState(
                    key,
                    value,
                    charge.limit,
                    reset_at,
                    charge.package,
                    meter=charge.meter,
                    period=charge.period,
                )
            )
        return Decision(refused is None, tuple(states), refused, degraded=True)

    def _count(self, outcome: str) -> None:
        if self._metrics is not None:
            self._metrics.store_degraded_decisions.labels(outcome).inc()

    async def release(self, account_id: str, items: Sequence[tuple[str, int]]) -> None:
        # a refund is owed whatever the store's state: keep it for write-back, never fail the
        # response the upstream already gave
        if not self.degraded:
            try:
                await self.inner.release(account_id, items)
                return
            except StoreUnavailable as exc:
                self._trip(exc)
        for key, cost in items:
            if len(self._releases) >= _MAX_PENDING_RELEASES:
                log.error("dropping a refund of %d on %s: too many pending refunds", cost, key)
                continue
            self._releases.append((account_id, key, cost))

    async def lease(self, account_id: str, items: Sequence[Lease]) -> tuple[Granted, ...]:
        # no lease while degraded: leases.py falls back to ``consume`` and its failure mode
        return await self._call(lambda: self.inner.lease(account_id, items))

    async def peek(self, account_id: str, charges: Sequence[Charge]) -> tuple[MeterState, ...]:
        return await self._call(lambda: self.inner.peek(account_id, charges))

    async def read(self, account_id: str, keys: Sequence[str]) -> list[int]:
        return await self._call(lambda: self.inner.read(account_id, keys))

    async def set_usage(self, account_id: str, charge: Charge, value: int) -> MeterState:
        return await self._call(lambda: self.inner.set_usage(account_id, charge, value))

    # -- records ----------------------------------------------------------------------------

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        return await self._call(lambda: self.inner.get_record(kind, record_id))

    async def put_record(
        self,
        kind: str,
        record_id: str,
        doc: dict[str, Any],
        *,
        only_if_absent: bool = False,
        ttl_seconds: int | None = None,
    ) -> bool:
        return await self._call(
            lambda: self.inner.put_record(
                kind, record_id, doc, only_if_absent=only_if_absent, ttl_seconds=ttl_seconds
            )
        )

    async def fetch_record(
        self, kind: str, record_id: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        return await self._call(lambda: self.inner.fetch_record(kind, record_id))

    async def swap_record(
        self, kind: str, record_id: str, version: str | None, doc: dict[str, Any] | None
    ) -> bool:
        return await self._call(lambda: self.inner.swap_record(kind, record_id, version, doc))

    async def delete_record(self, kind: str, record_id: str) -> bool:
        return await self._call(lambda: self.inner.delete_record(kind, record_id))

    async def add_member(self, kind: str, owner_id: str, member: str) -> None:
        await self._call(lambda: self.inner.add_member(kind, owner_id, member))

    async def remove_member(self, kind: str, owner_id: str, member: str) -> None:
        await self._call(lambda: self.inner.remove_member(kind, owner_id, member))

    async def members(self, kind: str, owner_id: str) -> list[str]:
        return await self._call(lambda: self.inner.members(kind, owner_id))

    async def next_id(self, kind: str) -> int:
        return await self._call(lambda: self.inner.next_id(kind))

    async def publish(self, channel: str, message: str) -> None:
        await self._call(lambda: self.inner.publish(channel, message))

    async def listen(self, channel: str) -> AsyncGenerator[str, None]:
        """As Store.listen, but a subscription asked for while degraded waits for the probe to
        see the store answer: followers wait here instead of retrying (and logging) on their
        own backoff. An idle process learns of an outage from ``watch``."""
        await self._healthy.wait()
        async with contextlib.aclosing(self.inner.listen(channel)) as messages:
            async for message in messages:
                yield message

    async def settle(self) -> None:
        await self.inner.settle()

    async def ping(self) -> None:
        if self.degraded:
            raise StoreUnavailable(f"degraded: {self._reason}")
        await self._call(self.inner.ping)

    async def close(self) -> None:
        if self._probe is not None:
            await cancel_and_wait(self._probe)
        await self.inner.close()
