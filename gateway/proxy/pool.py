"""Upstream pools: several targets behind one prefix, balanced, health-checked, with a breaker.

The forwarder asks ``pick`` for a target before each attempt and reports how it went with
``done``. The one retry rule lives in the forwarder: a request moves to another target only
when the first provably never received a byte (the rule the refund uses).

- **Balancing**: least pending requests per unit of weight (ties go round the targets), or
  smooth weighted round robin.
- **Passive health**: ``eject_after`` consecutive failures (unreachable, or a 5xx answer)
  take a target out for ``eject_seconds``; the first success after that counts from zero.
- **Active health** (optional): ``GET health_path`` every ``health_interval`` seconds; a
  target that fails it is out until it passes again.
- **Breaker**: when at least ``breaker_min_requests`` finished in the last
  ``breaker_window`` seconds and the failure ratio reached ``breaker_ratio``, the pool opens
  for ``breaker_open_seconds``: requests get 503 with Retry-After at once, nothing is sent.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import aiohttp
from yarl import URL

log = logging.getLogger("gateway.pool")

Balance = Literal["least_pending", "round_robin"]
Outcome = Literal["ok", "failure", "unreached"]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    balance: Balance = "least_pending"
    eject_after: int = 3  # consecutive failures; 0: never eject
    eject_seconds: float = 30.0
    health_path: str | None = None  # active checks off when None
    health_interval: float = 10.0
    health_timeout: float = 2.0
    breaker_ratio: float = 0.0  # 0: no breaker
    breaker_min_requests: int = 20
    breaker_window: float = 10.0
    breaker_open_seconds: float = 30.0


def target_label(url: URL) -> str:
    """``host:port`` of an upstream URL, the ``upstream`` label of its metrics."""
    host = url.host or ""
    return f"[{host}]:{url.port}" if ":" in host else f"{host}:{url.port}"


@dataclass(eq=False, slots=True)
class Target:
    url: URL
    weight: int = 1
    label: str = ""  # host:port, for metrics and logs (never credentials)
    # scheme, credentials, host, port and base path, without the trailing slash: the head
    # every forwarded path is appended to, computed once
    base: str = ""
    pending: int = 0
    failures: int = 0  # consecutive
    ejected_until: float = 0.0
    healthy: bool = True  # the active check's last verdict
    current: int = 0  # smooth weighted round robin state

    def __post_init__(self) -> None:
        if not self.label:
            self.label = target_label(self.url)
        self.base = str(self.url.with_path("/"))[:-1] + self.url.raw_path.rstrip("/")


class CircuitOpen(Exception):
    """The pool's breaker is open, or no target is available: retry after ``retry_after``."""

    def __init__(self, message: str, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


@dataclass(slots=True)
class _Breaker:
    outcomes: deque[tuple[float, bool]] = field(default_factory=deque)  # (when, failed)
    failed: int = 0
    open_until: float = 0.0


class Pool:
    def __init__(
        self,
        targets: Sequence[Target],
        settings: PoolSettings | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_change: Callable[[Target, bool], None] | None = None,
    ) -> None:
        if not targets:
            raise ValueError("a pool needs at least one target")
        self.targets = tuple(targets)
        self.settings = settings or PoolSettings()
        self._clock = clock
        self._on_change = on_change or (lambda target, up: None)
        self._next = 0
        self._breaker = _Breaker()

    def available(self, target: Target, now: float | None = None) -> bool:
        now = self._clock() if now is None else now
        return target.healthy and target.ejected_until <= now

    def pick(self, exclude: Sequence[Target] = ()) -> Target:
        """The target for the next attempt; raises CircuitOpen when none may be used."""
        now = self._clock()
        breaker = self._breaker
        if breaker.open_until > now:
            raise CircuitOpen("the upstream's circuit breaker is open", breaker.open_until - now)
        usable = [t for t in self.targets if t not in exclude and self.available(t, now)]
        if not usable:
            if exclude:
                raise CircuitOpen("no other upstream target is available", 1.0)
            back = min((t.ejected_until for t in self.targets if t.healthy), default=0.0)
            wait = back - now if back > now else self.settings.health_interval
            raise CircuitOpen("no upstream target is healthy", wait)
        if self.settings.balance == "round_robin":
            return self._smooth_weighted(usable)
        # least pending per unit of weight; ties rotate so equal targets share the load
        start = self._next = (self._next + 1) % len(self.targets)
        order = {id(t): (i - start) % len(self.targets) for i, t in enumerate(self.targets)}
        return min(usable, key=lambda t: (t.pending / t.weight, order[id(t)]))

    def _smooth_weighted(self, usable: list[Target]) -> Target:
        # nginx's smooth weighted round robin: spreads a 5:1 pair as a a b a a a, not a*5 b
        total = sum(t.weight for t in usable)
        for t in usable:
            t.current += t.weight
        chosen = max(usable, key=lambda t: t.current)
        chosen.current -= total
        return chosen

    def begin(self, target: Target) -> None:
        target.pending += 1

    def cancel(self, target: Target) -> None:
        """An attempt that ended for a reason that says nothing of the target (the client's
        body broke, the gateway's own pool was full)."""
        target.pending -= 1

    def done(self, target: Target, outcome: Outcome) -> None:
        """Record an attempt's end: ``ok`` (any answer below 500), ``failure`` (a 5xx or a
        broken exchange) or ``unreached`` (no byte reached the target)."""
        target.pending -= 1
        now = self._clock()
        failed = outcome != "ok"
        if failed:
            target.failures += 1
            eject = self.settings.eject_after
            if eject and target.failures >= eject and target.ejected_until <= now:
                target.ejected_until = now + self.settings.eject_seconds
                log.warning(
                    "upstream target %s ejected for %ss after %d failures",
                    target.label,
                    self.settings.eject_seconds,
                    target.failures,
                )
                self._on_change(target, False)
        else:
            if target.failures and target.ejected_until:
                self._on_change(target, True)
            target.failures = 0
            target.ejected_until = 0.0
        self._count(now, failed)

    def _count(self, now: float, failed: bool) -> None:
        settings = self.settings
        if settings.breaker_ratio <= 0:
            return
        breaker = self._breaker
        breaker.outcomes.append((now, failed))
        breaker.failed += failed
        horizon = now - settings.breaker_window
        while breaker.outcomes and breaker.outcomes[0][0] < horizon:
            breaker.failed -= breaker.outcomes.popleft()[1]
        total = len(breaker.outcomes)
        if (
            total >= settings.breaker_min_requests
            and breaker.failed / total >= settings.breaker_ratio
        ):
            breaker.open_until = now + settings.breaker_open_seconds
            breaker.outcomes.clear()
            breaker.failed = 0
            log.warning("upstream circuit breaker open for %ss", settings.breaker_open_seconds)

    async def check_health(self, session: aiohttp.ClientSession) -> None:
        """One round of active checks, all targets at once."""
        path = self.settings.health_path
        if path is None:
            return
        timeout = aiohttp.ClientTimeout(total=self.settings.health_timeout)

        async def check(target: Target) -> None:
            try:
                async with session.get(
                    target.url.with_path(path), timeout=timeout, allow_redirects=False
                ) as resp:
                    healthy = 200 <= resp.status < 300
            except (aiohttp.ClientError, TimeoutError):
                healthy = False
            if healthy != target.healthy:
                log.warning(
                    "upstream target %s is %s", target.label, "healthy" if healthy else "unhealthy"
                )
                target.healthy = healthy
                self._on_change(target, healthy and self.available(target))

        await asyncio.gather(*(check(t) for t in self.targets))

    async def watch(self, session: aiohttp.ClientSession) -> None:
        """Active health checks until cancelled."""
        while True:
            await self.check_health(session)
            await asyncio.sleep(self.settings.health_interval)
