"""Hot reload on SIGHUP, on request or on a file change; a broken file keeps the old policy."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Callable
from pathlib import Path

from gateway.errors import StoreUnavailable
from gateway.metering.clock import Clock
from gateway.metering.store import Store
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.loader import load_policy, parse_policy
from gateway.policy.model import Policy
from gateway.policy.source import ConfigError

log = logging.getLogger("gateway")

#: a reload asked of one worker (the admin API) reaches every worker through this channel
RELOAD_CHANNEL = "gateway:policy-reload"

Check = Callable[[Policy], None]


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
        self._seen = _signature(path)

    def add_check(self, check: Check) -> None:
        """Another test a new policy must pass (raising ValueError) before it is installed."""
        self._checks.append(check)

    def reload(self, why: str) -> Policy:
        """Install the file's policy and return it; raise ConfigError or ValueError, keeping
        the active policy, when the file is broken."""
        self._seen = _signature(self.path)
        current = self._holder.current
        try:
            policy, text = read_policy(self.path)
            for check in self._checks:
                check(policy)
        except (ConfigError, ValueError) as exc:
            self._metrics.policy_reloads.labels("failure").inc()
            log.error(
                "policy reload (%s) failed; still serving %s (sha256 %s): %s",
                why,
                current.name,
                current.digest[:12],
                exc,
            )
            raise
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
            # said all the same: whoever asked for the reload learns it ran and changed nothing
            log.info(
                "policy reloaded (%s): %s sha256 %s unchanged", why, policy.name, policy.digest[:12]
            )
        self._metrics.policy_reloads.labels("success").inc()
        self._metrics.policy_active(policy.name, policy.digest, now)
        return policy

    def try_reload(self, why: str) -> None:
        """Reload where nobody waits for the answer (signal, watcher): the log says how it went."""
        # reload() has logged and counted a failure; the last good policy stays active
        with contextlib.suppress(ConfigError, ValueError):
            self.reload(why)

    async def watch(self, interval: float) -> None:
        """Reload whenever the file's modification time, size or inode change, until cancelled.

        The inode catches a Kubernetes ConfigMap update, which swaps a symlink."""
        while True:
            await asyncio.sleep(interval)
            if _signature(self.path) != self._seen:
                self.try_reload("file changed")

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
                            self.try_reload("requested through the admin API")
            except StoreUnavailable as exc:
                log.warning("policy reload notifications lost (%s); retrying", exc)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, max_backoff)
            # a request may have been published while we were not listening
            self.try_reload("reconnected to the store")


def read_policy(path: str) -> tuple[Policy, str]:
    """The policy in ``path`` and the very text it was built from."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except (OSError, UnicodeDecodeError):
        load_policy(path)  # raises the ConfigError that names the problem
        raise
    return parse_policy(text, path), text


def _signature(path: str) -> tuple[int, int, int] | None:
    try:
        stat = os.stat(path)
    except OSError:
        return None
    return (stat.st_mtime_ns, stat.st_size, stat.st_ino)
