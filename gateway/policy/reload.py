"""Hot reload on SIGHUP, on request or on a file change; a broken file keeps the old policy."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import os
from collections.abc import Awaitable, Callable

from gateway.errors import StoreUnavailable
from gateway.metering.clock import Clock
from gateway.metering.store import Store
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.loader import load_policy, parse_policy
from gateway.policy.model import Policy
from gateway.policy.source import MAX_BYTES, ConfigError

log = logging.getLogger("gateway")

#: a reload asked of one worker (the admin API) reaches every worker through this channel
RELOAD_CHANNEL = "gateway:policy-reload"

Check = Callable[[Policy], None]
#: (active, candidate, allowed by the operator) -> None, or raise ValueError to keep the active
Guard = Callable[[Policy, Policy, bool], Awaitable[None]]


class Reloader:
    """Loads, validates and installs the policy file; a failure leaves the active policy alone."""

    def __init__(
        self, path: str, holder: PolicyHolder, metrics: Metrics, clock: Clock, text: str
    ) -> None:
        self.path = path
        self.text = text  # the active policy's source, as loaded
        self._holder = holder
        self._metrics = metrics
        self._clock = clock
        self._checks: list[Check] = []
        self._guard: Guard | None = None
        self._seen = _signature(path)
        # (file digest, reason) of the last failure counted: a retry of the same broken file
        # (a reconnect, the watch, another SIGHUP) is not a new failure
        self._failed: tuple[str | None, str] | None = None
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[None]] = set()

    def add_check(self, check: Check) -> None:
        """Another test a new policy must pass (raising ValueError) before it is installed."""
        self._checks.append(check)

    def set_guard(self, guard: Guard) -> None:
        """What a new policy must pass against the active one, with the store at hand (the
        tier guard: gateway/identity/tier_moves.py)."""
        self._guard = guard

    async def reload(self, why: str, *, allow_tier_changes: bool = False) -> Policy:
        """Install the file's policy and return it; raise ConfigError or ValueError, keeping
        the active policy, when the file is broken, whatever is wrong with it.

        The file is read, parsed and checked on a worker thread: a large or hostile file
        must not stall the requests this event loop is serving. One reload at a time, so
        an older file never lands after a newer one."""
        async with self._lock:
            self._seen = _signature(self.path)
            current = self._holder.current
            try:
                policy, text = await asyncio.to_thread(self._prepare)
                if self._guard is not None and policy.digest != current.digest:
                    await self._guard(current, policy, allow_tier_changes)
            except Exception as exc:
                failure = (_digest(self.path), str(exc))
                if failure != self._failed:
                    self._failed = failure
                    self._metrics.policy_reload_failed(self._clock.now())
                log.error(
                    "policy reload (%s) failed; still serving %s (sha256 %s): %s",
                    why,
                    current.name,
                    current.digest[:12],
                    exc,
                )
                if isinstance(exc, ConfigError | ValueError):
                    raise
                # a loader bug on some odd input is still a refused file, not a dead caller
                raise ValueError(f"{self.path}: {type(exc).__name__}: {exc}") from exc
            self._failed = None
            now = self._clock.now()
            if policy.digest != current.digest:
                self._holder.swap(policy, now)
                self.text = text
                log.info(
                    "policy reloaded (%s): %s sha256 %s -> %s",
                    why,
                    policy.name,
                    current.digest[:12],
                    policy.digest[:12],
                )
            else:
                # said all the same: whoever asked for the reload learns it ran, changing nothing
                log.info(
                    "policy reloaded (%s): %s sha256 %s unchanged",
                    why,
                    policy.name,
                    policy.digest[:12],
                )
            self._metrics.policy_reloads.labels("success").inc()
            self._metrics.policy_active(policy.name, policy.digest, now)
            return policy

    def _prepare(self) -> tuple[Policy, str]:
        policy, text = read_policy(self.path)
        for check in self._checks:
            check(policy)
        return policy, text

    async def try_reload(self, why: str) -> None:
        """Reload where nobody waits for the answer (signal, watcher): the log says how it went."""
        # reload() has logged and counted a failure; the last good policy stays active
        with contextlib.suppress(Exception):
            await self.reload(why)

    def reload_soon(self, why: str) -> None:
        """Start a reload from a signal handler, which cannot wait for it."""
        task = asyncio.get_running_loop().create_task(self.try_reload(why))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def watch(self, interval: float) -> None:
        """Reload whenever the file's modification time, size or inode change, until cancelled.

        The inode catches a Kubernetes ConfigMap update, which swaps a symlink. Nothing a
        file holds stops the watch: a broken edit is a counted failure, the next one loads."""
        while True:
            await asyncio.sleep(interval)
            try:
                if _signature(self.path) != self._seen:
                    await self.try_reload("file changed")
            except Exception:
                log.exception("policy file watch: unexpected error; still watching")

    async def follow(self, store: Store, *, max_backoff: float = 5.0) -> None:
        """Reload when any process asks through the store, until cancelled; never raises."""
        backoff = 0.1
        while True:
            try:
                async with contextlib.aclosing(store.listen(RELOAD_CHANNEL)) as digests:
                    async for digest in digests:
                        backoff = 0.1
                        # "" confirms the subscription; the worker that was asked has the new
                        # policy already, and so may this one, by its watch
                        if digest and digest != self._holder.current.digest:
                            await self.try_reload("requested through the admin API")
            except StoreUnavailable as exc:
                log.warning("policy reload notifications lost (%s); retrying", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
            # a request may have been published while we were not listening
            await self.try_reload("reconnected to the store")


def read_policy(path: str) -> tuple[Policy, str]:
    """The policy in ``path`` and the very text it was built from."""
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)  # a huge file is refused, never read whole
        text = raw.decode("utf-8")
    except (OSError, UnicodeDecodeError):
        load_policy(path)  # raises the ConfigError that names the problem
        raise
    if len(raw) > MAX_BYTES:
        raise ConfigError(path, None, (), f"the file is larger than {MAX_BYTES} bytes")
    return parse_policy(text, path), text


def _digest(path: str) -> str | None:
    """The file's content digest, read no further than a policy may be long."""
    try:
        with open(path, "rb") as file:
            return hashlib.sha256(file.read(MAX_BYTES + 1)).hexdigest()
    except OSError:
        return None


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
