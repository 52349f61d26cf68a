"""Hot accounts: allowance units leased from the store in blocks and admitted in the process.

A tier's ``leases: {meter: N}`` lets a process take N units of a counter's allowance in one
store call (lease.lua) and admit that account's requests from them without a store call,
refilling in one call when they run out. Exact at the limit: the units are added to the
store's count when leased, and a process never admits beyond the units it holds, so across
processes the sum admitted never exceeds the limit. What it costs:

- **Under-admission while leases are out.** Units held by one process are counted as used
  by the others; near the limit a request may be refused while other processes still hold
  up to N units each. They are given back when the window rolls, on a policy reload, and on
  shutdown (best effort); a process that dies keeps its units until the window ends, so at
  most processes x N units of a window can go unadmitted.
- **Only the allowance is leased.** Packages and overage are never leased: past the
  allowance (a grant smaller than the request's cost) the request is decided per request by
  the store, with its packages and overage, as if no lease existed.
- **Only whole requests.** A request is admitted locally only if every charge it makes is
  leased (a gauge, an unlimited meter or a service cap sends it to the store, as before).

Usage seen through a lease: a locally admitted request's ``used`` is the window's count at
this process's last grant (every process's outstanding leases counted as used) minus the
units this process still holds, so RateLimit-Remaining counts down exactly with its own
admissions and counts other processes' leases as spent. GET usage endpoints read the
store, whose count includes every outstanding lease.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass

from gateway.errors import StoreUnavailable
from gateway.metering.clock import Clock
from gateway.metering.guard import GuardedStore
from gateway.metering.store import Charge, Decision, Granted, Lease, MeterState
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import FailureMode, Period

log = logging.getLogger("gateway")

#: how often leases of a rolled window or a replaced policy are given back
SWEEP_SECONDS = 1.0

_Entry = tuple[str, str, str, Period | None]  # account, meter, scope, period


@dataclass(slots=True)
class _Held:
    """The units of one counter this process holds."""

    granted: Granted
    units: int  # not yet admitted
    terms: tuple[int | None, int]  # (limit, lease size) it was taken under


class Leases:
    """Local admission from leased units in front of a GuardedStore; see the module doc."""

    def __init__(
        self,
        store: GuardedStore,
        clock: Clock,
        *,
        policy: PolicyHolder | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self._store = store
        self._clock = clock
        self._policy = policy
        self._digest = policy.current.digest if policy is not None else ""
        self._metrics = metrics
        self._held: dict[_Entry, _Held] = {}
        self._by_key: dict[str, _Entry] = {}  # window key -> entry, for refunds
        # counters whose allowance a lease found spent: (window reset, terms). Until the
        # window rolls (or the terms change) they are decided per request without asking
        # for a lease first, so a refusal costs one store call, not two
        self._dry: dict[_Entry, tuple[float, tuple[int | None, int]]] = {}
        # one refill (or give-back) per counter at a time; others wait for it. Kept for the
        # process's life (one per leased counter of an account seen): dropping one that a
        # request still waits on would let two refills of a counter run at once
        self._locks: dict[_Entry, asyncio.Lock] = {}

    @property
    def held(self) -> int:
        """Units this process holds and has not admitted, over every counter."""
        return sum(held.units for held in self._held.values())

    async def consume(
        self, account_id: str, charges: Sequence[Charge], *, failure_mode: FailureMode | None
    ) -> Decision:
        """As GuardedStore.consume; a request whose every charge is leased is admitted from
        the units held here, refilled in one store call when they run out."""
        if not charges or any(charge.lease <= 0 for charge in charges):
            return await self._store.consume(account_id, charges, failure_mode=failure_mode)
        entries = [(account_id, c.meter, c.scope_id, c.period) for c in charges]
        decision = self._take(entries, charges)
        if decision is None and not self._spent(entries, charges):
            async with contextlib.AsyncExitStack() as stack:
                for entry in sorted(set(entries), key=repr):  # one order: no deadlock
                    await stack.enter_async_context(self._locks.setdefault(entry, asyncio.Lock()))
                # a request that waited here finds the units the refill it waited for took
                decision = self._take(entries, charges)
                if decision is None:
                    with contextlib.suppress(StoreUnavailable):
                        await self._refill(account_id, entries, charges)
                        decision = self._take(entries, charges)
        if decision is None:
            # the allowance is spent (or the store is down): per request, packages, overage
            # and the failure mode included
            return await self._store.consume(account_id, charges, failure_mode=failure_mode)
        return decision

    def _spent(self, entries: Sequence[_Entry], charges: Sequence[Charge]) -> bool:
        """Whether a lease of some charge found the allowance spent in this window."""
        now = self._clock.now()
        for entry, charge in zip(entries, charges, strict=True):
            dry = self._dry.get(entry)
            if dry is not None and now < dry[0] and dry[1] == (charge.limit, charge.lease):
                return True
        return False

    def _take(self, entries: Sequence[_Entry], charges: Sequence[Charge]) -> Decision | None:
        """Admit from the units held, or None (changing nothing) if any charge lacks them."""
        now = self._clock.now()
        need: dict[_Entry, int] = {}
        for entry, charge in zip(entries, charges, strict=True):
            held = self._held.get(entry)
            need[entry] = need.get(entry, 0) + charge.cost
            if (
                held is None
                or held.units < need[entry]
                or now >= held.granted.reset_at
                or held.terms != (charge.limit, charge.lease)
            ):
                return None
        for entry, units in need.items():
            self._held[entry].units -= units
        if self._metrics is not None:
            self._metrics.lease_admissions.inc()
        states = []
        for entry, charge in zip(entries, charges, strict=True):
            held = self._held[entry]
            states.append(
                MeterState(
                    held.granted.key,
                    held.granted.used - held.units,
                    charge.limit,
                    held.granted.reset_at,
                    charge.package,
                    meter=charge.meter,
                    period=charge.period,
                )
            )
        return Decision(True, tuple(states))

    async def _refill(
        self, account_id: str, entries: Sequence[_Entry], charges: Sequence[Charge]
    ) -> None:
        """One store call: give back what the short counters still hold, lease anew."""
        items: dict[_Entry, Lease] = {}
        for entry, charge in zip(entries, charges, strict=True):
            if entry in items:  # the same counter twice: lease what both charges cost
                cost = items[entry].charge.cost + charge.cost
                items[entry] = dataclasses.replace(
                    items[entry], charge=dataclasses.replace(charge, cost=cost)
                )
                continue
            # units given back leave the process before the call: no request may admit
            # from them while it is in flight (if it fails they are lost until the window
            # ends: under-admission, never over)
            held = self._drop(entry)
            if held is None:
                items[entry] = Lease(charge)
            else:
                items[entry] = Lease(charge, held.units, (held.granted.key, held.granted.history))
        granted = await self._store.lease(account_id, list(items.values()))
        returned = 0
        for (entry, item), grant in zip(items.items(), granted, strict=True):
            returned += item.back
            terms = (item.charge.limit, item.charge.lease)
            if grant.units == 0:
                self._dry[entry] = (grant.reset_at, terms)
            else:
                self._held[entry] = _Held(grant, grant.units, terms)
                self._by_key[grant.key] = entry
                if self._metrics is not None:
                    self._metrics.leases_taken.inc()
        self._count_returned(returned)

    def _drop(self, entry: _Entry) -> _Held | None:
        held = self._held.pop(entry, None)
        if held is not None:
            self._by_key.pop(held.granted.key, None)
        return held

    def _count_returned(self, units: int) -> None:
        if self._metrics is not None and units:
            self._metrics.lease_units_returned.inc(units)

    async def release(self, account_id: str, items: Sequence[tuple[str, int]]) -> None:
        """As GuardedStore.release; a refund on a counter leased here goes back to the lease
        (its units are counted in the store already, so admitting them again stays exact)."""
        rest = []
        for key, cost in items:
            entry = self._by_key.get(key)
            if entry is not None and entry[0] == account_id:
                self._held[entry].units += cost
            else:
                rest.append((key, cost))
        if rest:
            await self._store.release(account_id, rest)

    async def give_back(self, *, rolled_only: bool = False) -> None:
        """Return the units held to the store: every lease, or those whose window has ended.

        A lease whose give-back fails is dropped all the same (its units stay counted until
        the window ends: under-admission, never over)."""
        now = self._clock.now()
        for entry in list(self._held):
            held = self._held.get(entry)
            if held is None or (rolled_only and now < held.granted.reset_at):
                continue
            async with self._locks.setdefault(entry, asyncio.Lock()):
                held = self._drop(entry)
                if held is None or held.units == 0:
                    continue
                keys = [held.granted.key] + ([held.granted.history] if held.granted.history else [])
                try:
                    await self._store.release(entry[0], [(key, held.units) for key in keys])
                except StoreUnavailable as exc:
                    log.warning(
                        "could not give back %d leased units of %s: %s", held.units, keys[0], exc
                    )
                    continue
                self._count_returned(held.units)

    async def run(self, interval: float) -> None:
        """Every ``interval`` seconds until cancelled: give back leases whose window has
        rolled, and every lease once the policy was reloaded (its terms may have changed)."""
        while True:
            await asyncio.sleep(interval)
            current = self._policy.current.digest if self._policy is not None else ""
            reloaded, self._digest = current != self._digest, current
            now = self._clock.now()
            self._dry = {} if reloaded else {e: d for e, d in self._dry.items() if now < d[0]}
            await self.give_back(rolled_only=not reloaded)

    async def close(self) -> None:
        """Give every lease back (best effort: a store that does not answer keeps them until
        their windows end)."""
        await self.give_back()
