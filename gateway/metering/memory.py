"""The embedded in-process store: exact because each operation runs without awaiting."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, Sequence
from typing import Any

from gateway.metering import rates
from gateway.metering.clock import Clock
from gateway.metering.keys import (
    history_key,
    rate_key,
    record_key,
    sequence_key,
    set_key,
    source_key,
)
from gateway.metering.store import Charge, Decision, Granted, Lease, MeterState
from gateway.metering.windows import SOURCE_TTL, window, window_key, window_ttl

# Expired windows are swept every this many writes, so memory stays bounded by live windows.
_SWEEP_EVERY = 10_000


class MemoryStore:
    """A Store for one process. Nothing is shared with other processes or kept on restart."""

    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._values: dict[str, int] = {}
        self._expiry: dict[str, float] = {}
        self._records: dict[str, str] = {}
        self._record_expiry: dict[str, float] = {}
        self._sets: dict[str, set[str]] = {}
        self._sequences: dict[str, int] = {}
        self._writes = 0
        self._listeners: dict[str, list[asyncio.Queue[str]]] = {}

    # -- metering ---------------------------------------------------------------------------

    def _resolve(self, account_id: str, charge: Charge, now: float) -> tuple[str, float | None]:
        return window_key(account_id, charge.meter, charge.scope_id, charge.period, now)

    def _read(self, key: str, now: float) -> int:
        expires = self._expiry.get(key)
        if expires is not None and expires <= now:
            self._values.pop(key, None)
            self._expiry.pop(key, None)
            return 0
        return self._values.get(key, 0)

    def _state(self, key: str, reset: float | None, used: int, charge: Charge) -> MeterState:
        packaged = over = 0
        # only a limited counter has units paid by packages or overage (see consume)
        if charge.period is not None and charge.limit is not None:
            now = self._clock.now()
            packaged = self._read(source_key(key, "package"), now)
            over = self._read(source_key(key, "overage"), now)
        return MeterState(
            key,
            used,
            charge.limit,
            reset,
            charge.package,
            packaged,
            over,
            charge.meter,
            charge.period,
        )

    def _add(self, key: str, units: int, ttl: float | None, now: float) -> int:
        """Add to a key, giving a new key its expiry (None: kept for ever)."""
        value = self._read(key, now)
        if key not in self._values and ttl is not None:
            self._expiry[key] = now + ttl
        self._values[key] = value + units
        return value + units

    def _bucket(self, account_id: str, charge: Charge, now: float) -> tuple[str, int, bool, int]:
        """A rate charge's key, its TAT now, whether it fits, and its TAT if applied."""
        assert charge.rate is not None
        key = rate_key(account_id, charge.meter, charge.scope_id)
        now_us = rates.micros(now)
        tat = max(self._read(key, now), now_us)
        fits, after = rates.gcra(tat, now_us, charge.cost, charge.rate)
        return key, tat, fits, after

    async def consume(self, account_id: str, charges: Sequence[Charge]) -> Decision:
        now = self._clock.now()
        resolved = [self._resolve(account_id, charge, now) for charge in charges]
        used = [self._read(key, now) for key, _ in resolved]
        # rate charges (GCRA) are checked with the quotas and applied only if all fit
        buckets = {
            i: self._bucket(account_id, c, now) for i, c in enumerate(charges) if c.rate is not None
        }
        over = [
            index
            for index, charge in enumerate(charges)
            if charge.rate is None
            and charge.capacity is not None
            and not charge.overage
            and used[index] + charge.cost > charge.capacity
        ]
        # a quota refusal is named before a rate's: waiting for the bucket would not help
        over = over or [index for index, (_, _, fits, _) in buckets.items() if not fits]
        if over:
            states = tuple(
                self._bucket_state(buckets[i][0], buckets[i][1], c, now)
                if c.rate is not None
                else self._state(key, reset, value, c)
                for i, ((key, reset), value, c) in enumerate(
                    zip(resolved, used, charges, strict=True)
                )
            )
            return Decision(False, states, min(over))
        states_list = []
        for index, ((key, reset), before, charge) in enumerate(
            zip(resolved, used, charges, strict=True)
        ):
            if charge.rate is not None:
                bucket_key, _, _, after = buckets[index]
                self._values[bucket_key] = after
                self._expiry[bucket_key] = now + rates.ttl_ms(after, rates.micros(now)) / 1000
                states_list.append(self._bucket_state(bucket_key, after, charge, now))
                continue
            ttl = window_ttl(charge.period) if charge.period is not None else None
            after = self._add(key, charge.cost, ttl, now)
            if charge.period is not None and charge.limit is not None:
                capacity = charge.limit + charge.package
                for source, low, high in (
                    ("package", charge.limit, capacity),
                    ("overage", capacity, after),
                ):
                    units = max(min(after, high) - max(before, low), 0)
                    if units:
                        self._add(source_key(key, source), units, SOURCE_TTL, now)
            if charge.period is not None and charge.history_ttl != 0:
                day_id, _ = window("day", now)
                day = history_key(account_id, charge.meter, charge.scope_id, day_id)
                keep = None if charge.history_ttl < 0 else charge.history_ttl
                self._add(day, charge.cost, keep, now)
            states_list.append(self._state(key, reset, after, charge))
        self._count_write(now)
        return Decision(True, tuple(states_list))

    async def lease(self, account_id: str, items: Sequence[Lease]) -> tuple[Granted, ...]:
        now = self._clock.now()
        out = []
        for item in items:
            charge = item.charge
            # never suspends (release awaits nothing), so the whole lease stays one step
            await self.release(account_id, [(held, item.back) for held in item.held if held])
            key, reset = self._resolve(account_id, charge, now)
            assert charge.period is not None and charge.limit is not None and reset is not None
            used = self._read(key, now)
            units = min(max(charge.lease, charge.cost), charge.limit - used)
            history = ""
            if units < charge.cost:
                units = 0
            else:
                used = self._add(key, units, window_ttl(charge.period), now)
                if charge.history_ttl != 0:
                    day_id, _ = window("day", now)
                    history = history_key(account_id, charge.meter, charge.scope_id, day_id)
                    keep = None if charge.history_ttl < 0 else charge.history_ttl
                    self._add(history, units, keep, now)
            out.append(Granted(key, history, units, used, reset))
        self._count_write(now)
        return tuple(out)

    @staticmethod
    def _bucket_state(key: str, tat: int, charge: Charge, now: float) -> MeterState:
        return rates.state(key, tat, rates.micros(now), charge, now)

    async def release(self, account_id: str, items: Sequence[tuple[str, int]]) -> None:
        for key, cost in items:
            if key in self._values:
                self._values[key] = max(self._values[key] - cost, 0)
                # the last units drawn go back first: overage, then packages
                left = cost
                for source in ("overage", "package"):
                    counter = source_key(key, source)
                    if counter in self._values and left > 0:
                        taken = min(self._values[counter], left)
                        self._values[counter] -= taken
                        left -= taken

    async def peek(self, account_id: str, charges: Sequence[Charge]) -> tuple[MeterState, ...]:
        now = self._clock.now()
        out = []
        for charge in charges:
            if charge.rate is not None:
                key, tat, _, _ = self._bucket(account_id, charge, now)
                out.append(self._bucket_state(key, tat, charge, now))
                continue
            key, reset = self._resolve(account_id, charge, now)
            out.append(self._state(key, reset, self._read(key, now), charge))
        return tuple(out)

    async def read(self, account_id: str, keys: Sequence[str]) -> list[int]:
        now = self._clock.now()
        return [self._read(key, now) for key in keys]

    async def set_usage(self, account_id: str, charge: Charge, value: int) -> MeterState:
        now = self._clock.now()
        key, reset = self._resolve(account_id, charge, now)
        self._read(key, now)
        if key not in self._values and charge.period is not None:
            self._expiry[key] = now + window_ttl(charge.period)
        self._values[key] = value
        return MeterState(
            key,
            value,
            charge.limit,
            reset,
            charge.package,
            meter=charge.meter,
            period=charge.period,
        )

    def _count_write(self, now: float) -> None:
        self._writes += 1
        if self._writes % _SWEEP_EVERY == 0:
            for key in [k for k, at in self._expiry.items() if at <= now]:
                self._values.pop(key, None)
                self._expiry.pop(key, None)

    # -- records ----------------------------------------------------------------------------

    def _record(self, key: str) -> str | None:
        """A record's text, unless its ttl has run out (then it is dropped, as Redis does)."""
        expires = self._record_expiry.get(key)
        if expires is not None and expires <= self._clock.now():
            self._records.pop(key, None)
            self._record_expiry.pop(key, None)
        return self._records.get(key)

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        raw = self._record(record_key(kind, record_id))
        return None if raw is None else dict(json.loads(raw))

    async def put_record(
        self,
        kind: str,
        record_id: str,
        doc: dict[str, Any],
        *,
        only_if_absent: bool = False,
        ttl_seconds: int | None = None,
    ) -> bool:
        key = record_key(kind, record_id)
        if only_if_absent and self._record(key) is not None:
            return False
        # stored serialised, as Redis does, so callers can never alias stored state
        self._records[key] = json.dumps(doc)
        if ttl_seconds is None:
            self._record_expiry.pop(key, None)
        else:
            self._record_expiry[key] = self._clock.now() + ttl_seconds
        return True

    async def fetch_record(
        self, kind: str, record_id: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        raw = self._record(record_key(kind, record_id))
        return (None, None) if raw is None else (dict(json.loads(raw)), raw)

    async def swap_record(
        self, kind: str, record_id: str, version: str | None, doc: dict[str, Any] | None
    ) -> bool:
        key = record_key(kind, record_id)
        if self._record(key) != version:
            return False
        if doc is None:
            del self._records[key]
            self._record_expiry.pop(key, None)
        else:
            self._records[key] = json.dumps(doc)  # its expiry, if any, stays (KEEPTTL)
        return True

    async def delete_record(self, kind: str, record_id: str) -> bool:
        key = record_key(kind, record_id)
        self._record_expiry.pop(key, None)
        return self._records.pop(key, None) is not None

    async def add_member(self, kind: str, owner_id: str, member: str) -> None:
        self._sets.setdefault(set_key(kind, owner_id), set()).add(member)

    async def remove_member(self, kind: str, owner_id: str, member: str) -> None:
        self._sets.get(set_key(kind, owner_id), set()).discard(member)

    async def members(self, kind: str, owner_id: str) -> list[str]:
        return sorted(self._sets.get(set_key(kind, owner_id), ()))

    async def next_id(self, kind: str) -> int:
        key = sequence_key(kind)
        self._sequences[key] = self._sequences.get(key, 0) + 1
        return self._sequences[key]

    async def publish(self, channel: str, message: str) -> None:
        for queue in self._listeners.get(channel, []):
            queue.put_nowait(message)

    async def listen(self, channel: str) -> AsyncGenerator[str, None]:
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._listeners.setdefault(channel, []).append(queue)
        try:
            yield ""
            while True:
                yield await queue.get()
        finally:
            self._listeners[channel].remove(queue)

    async def settle(self) -> None:
        # every decision here is taken without awaiting: none is ever left undecided
        return None

    async def ping(self) -> None:
        return None

    async def close(self) -> None:
        return None
