"""The Store protocol: metering decisions plus the small record layer the registry sits on.

Every store (the embedded memory store, Redis single/Sentinel/Cluster) implements this and
passes the same contract tests (tests/test_store_contract.py). A store raises
``StoreUnavailable`` for any failure of its backend; nothing else escapes it.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from gateway.policy.model import Period, Rate

#: the sources a unit can be paid from, in the order a decision draws on them
SOURCES = ("allowance", "package", "overage")


@dataclass(frozen=True, slots=True)
class Charge:
    """One meter a decision touches, already resolved to a scope and a limit.

    The ledger of a limited meter is drawn in order: the tier's ``limit`` for the window,
    then ``package`` (purchased capacity, added to every window), then, if ``overage`` is on,
    paid overage without bound; with overage off a unit past ``limit + package`` is refused.
    """

    meter: str
    scope_id: str  # the account id, or the project id for project-scoped meters
    period: Period | None  # None for a gauge (a live count)
    cost: int
    limit: int | None  # None: unlimited (still counted)
    package: int = 0  # purchased capacity beyond the limit
    overage: bool = False  # counters only: units past limit + package are admitted and paid
    #: counters only: also count the units in a per-UTC-day history key kept this many
    #: seconds (0: no history; -1: kept for ever)
    history_ttl: int = 0
    #: counters only: units a process leases at a time and admits from locally (leases.py);
    #: 0: decided by the store per request
    lease: int = 0
    #: a rate meter's charge (``scope_id`` names its key, ``limit`` is the burst): checked
    #: by GCRA in the same decision (gateway/metering/rates.py); period is None
    rate: Rate | None = None

    @property
    def capacity(self) -> int | None:
        """What is admitted without overage: the allowance plus packages."""
        return None if self.limit is None else self.limit + self.package


@dataclass(frozen=True, slots=True)
class MeterState:
    """A meter as a decision left it."""

    key: str  # the exact store key (window included), for refunds and releases
    used: int  # after the decision if admitted; unchanged usage if refused
    limit: int | None
    reset_at: float | None  # epoch seconds; None for gauges
    package: int = 0  # purchased capacity on top of ``limit``
    #: units of the window paid from packages and from overage (counters only); the rest of
    #: ``used`` came from the allowance
    from_package: int = 0
    from_overage: int = 0
    meter: str = ""  # the charge's meter, naming the quota in RateLimit headers
    period: Period | None = None  # the charge's window kind
    #: a rate meter's state: ``used`` is the units of the burst in use, ``limit`` the burst
    #: and ``reset_at`` when the bucket is full again (gateway/metering/rates.py)
    rate: Rate | None = None

    @property
    def capacity(self) -> int | None:
        return None if self.limit is None else self.limit + self.package

    @property
    def remaining(self) -> int | None:
        """Units left before a refusal or overage: allowance and packages together."""
        capacity = self.capacity
        return None if capacity is None else max(capacity - self.used, 0)


@dataclass(frozen=True, slots=True)
class Decision:
    admitted: bool
    states: tuple[MeterState, ...]  # one per charge, in order
    refused: int | None = None  # index of the first charge that would pass its limit
    degraded: bool = False  # decided without the store, on the local fail-open allowance


@dataclass(frozen=True, slots=True)
class Lease:
    """One counter to lease units of, and what the process gives back of its last lease."""

    charge: Charge
    back: int = 0  # units still held, given back before the new grant
    held: tuple[str, ...] = ()  # the exact keys those units were taken on


@dataclass(frozen=True, slots=True)
class Granted:
    """A lease as the store granted it."""

    key: str  # the window key the units were taken on
    history: str  # the history key they were added to ("" when none)
    units: int  # 0: not even the charge's cost was left in the allowance
    used: int  # the window's usage after the grant (every process's leases included)
    reset_at: float  # epoch seconds the window ends


class Store(Protocol):
    async def consume(self, account_id: str, charges: Sequence[Charge]) -> Decision:
        """Check every charge and apply all of them, or none.

        Admitted when, for every charge with a limit and overage off,
        ``used + cost <= limit + package`` in the charge's current window, and every rate
        charge fits its bucket (GCRA, gateway/metering/rates.py); then every charge's usage
        grows by its cost and every rate charge's bucket gives its cost. When both a quota
        and a rate refuse, ``refused`` names the quota (waiting would not help). Refused
        otherwise, with nothing changed and ``refused`` naming the first charge over.
        Exact under any concurrency: two callers can never both take the last unit. A
        counter's window key is created with an expiry; one round trip on remote stores.

        The ledger: for a limited counter, the units a decision adds are attributed in
        order to the allowance (positions up to ``limit``), packages (up to
        ``limit + package``) and overage (beyond), and the package and overage units are
        added to the window's per-source counters (``keys.source_key``) in the same atomic
        step, so a unit is paid from exactly one source, once. A charge with
        ``history_ttl`` also adds its cost to that day's history key (``keys.history_key``).

        Raising StoreUnavailable means nothing was decided, now or later: a decision whose
        answer did not arrive within the budget never counts (see ``settle``).
        """
        ...

    async def lease(self, account_id: str, items: Sequence[Lease]) -> tuple[Granted, ...]:
        """Reserve allowance units for local admission (gateway.metering.leases), one step.

        Per item, first give back ``item.back`` units on the exact keys ``item.held`` (the
        window key and history key of the lease held before; never below zero, a key gone
        stays gone), then in the charge's current window grant
        ``g = min(max(charge.lease, charge.cost), charge.limit - used)`` units, or none if
        ``g < charge.cost``: the grant is added to the window's usage (and to today's history
        key for a charge with ``history_ttl``) as if consumed. Only the allowance is leased,
        never packages or overage, so leased units are never paid from a source. One round
        trip on remote stores.
        """
        ...

    async def release(self, account_id: str, items: Sequence[tuple[str, int]]) -> None:
        """Give back ``cost`` on each exact key (a refund or a freed live resource).

        Never takes a value below zero; a key that no longer exists stays absent. The units
        given back are the last ones drawn, so they leave the overage counter first, then
        the package counter, then the allowance (the ledger stays positional).
        """
        ...

    async def peek(self, account_id: str, charges: Sequence[Charge]) -> tuple[MeterState, ...]:
        """The charges' meters as they stand now, consuming nothing (costs are ignored)."""
        ...

    async def read(self, account_id: str, keys: Sequence[str]) -> list[int]:
        """The values of exact keys of one account (0 for absent or expired), in one round
        trip: past windows' source counters for statements, day keys for history."""
        ...

    async def set_usage(self, account_id: str, charge: Charge, value: int) -> MeterState:
        """Set a meter's usage in its current window to ``value`` (admin corrections)."""
        ...

    async def get_record(self, kind: str, record_id: str) -> dict[str, Any] | None:
        """The JSON document stored under (kind, id), or None."""
        ...

    async def put_record(
        self,
        kind: str,
        record_id: str,
        doc: dict[str, Any],
        *,
        only_if_absent: bool = False,
        ttl_seconds: int | None = None,
    ) -> bool:
        """Store a JSON document; with ``only_if_absent`` atomically refuse (False) to overwrite.

        With ``ttl_seconds`` the document is gone that long after this write (sessions,
        idempotency records); without, it is kept until deleted (accounts, projects, keys)."""
        ...

    async def fetch_record(
        self, kind: str, record_id: str
    ) -> tuple[dict[str, Any] | None, str | None]:
        """The document under (kind, id) and its version, an opaque token; (None, None) if
        absent. Always read from the store itself, for a ``swap_record`` to follow."""
        ...

    async def swap_record(
        self, kind: str, record_id: str, version: str | None, doc: dict[str, Any] | None
    ) -> bool:
        """Atomically replace the document with ``doc`` (None: delete it), only if it is still
        at ``version`` (None: only if absent); False, changing nothing, if another write came
        first. The one primitive every read-check-write of a record goes through
        (``gateway.identity.records.change``)."""
        ...

    async def delete_record(self, kind: str, record_id: str) -> bool:
        """Remove a document; True if it existed."""
        ...

    async def add_member(self, kind: str, owner_id: str, member: str) -> None:
        """Add ``member`` to the set (kind, owner)."""
        ...

    async def remove_member(self, kind: str, owner_id: str, member: str) -> None:
        """Remove ``member`` from the set (kind, owner); absent members are ignored."""
        ...

    async def members(self, kind: str, owner_id: str) -> list[str]:
        """The set (kind, owner), sorted."""
        ...

    async def next_id(self, kind: str) -> int:
        """A new integer id for ``kind``, unique across every process sharing the store."""
        ...

    async def publish(self, channel: str, message: str) -> None:
        """Send ``message`` to every process listening on ``channel`` (best effort, no replay)."""
        ...

    def listen(self, channel: str) -> AsyncGenerator[str, None]:
        """Messages published on ``channel`` from now on; raises StoreUnavailable on loss.

        Yields ``""`` first, once subscribed. A listener that lost its connection may have
        missed messages: callers treat the next subscription as "anything may have changed".
        """
        ...

    async def settle(self) -> None:
        """Return once every decision this process gave up on (``consume`` raised) is known
        never to count; raise StoreUnavailable if that cannot be established yet.

        ``consume`` raising means "not decided": a remote store whose answer was cut off voids
        the decision in the background (consume.lua, void.lua); this waits for that."""
        ...

    async def ping(self) -> None:
        """Return when the store answers; raise StoreUnavailable otherwise."""
        ...

    async def close(self) -> None:
        """Release connections; the store is not used afterwards."""
        ...
