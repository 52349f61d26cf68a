"""Two real `gateway serve` processes on one store, for the consistency suites (issue 17).

On Redis the pair is two processes sharing one redis-server; on memory there is one process
and both handles point at it (a memory store is not shared), so the same scenarios run on it.
"""

from __future__ import annotations

import asyncio
import time
import urllib.request
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from tests.conftest import ADMIN_TOKEN, JWT_SECRET, ROOT
from tests.gateway_process import Served, serve_gateway

T = TypeVar("T")
WEBHOOK_SECRET = "whsec_consistency_secret"
AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@dataclass
class Pair:
    a: Served
    b: Served

    @property
    def both(self) -> tuple[Served, Served]:
        return self.a, self.b


def wait_ready(served: Served, seconds: float = 60) -> None:
    """Block until /readyz answers 200; fail if the process exits first."""
    deadline = time.monotonic() + seconds
    while True:
        assert served.process.poll() is None, "the gateway exited during start-up"
        try:
            with urllib.request.urlopen(served.admin + "/readyz", timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            pass
        assert time.monotonic() < deadline, "the gateway did not become ready"
        time.sleep(0.1)


@contextmanager
def gateway_pair(
    store_url: str,
    directory: Path,
    *,
    policy: str | Path,
    upstream: str,
    extra: tuple[str, ...] = (),
) -> Iterator[Pair]:
    """Two processes on ``store_url``, or one (both handles) on ``memory``; ``policy`` is a
    shipped policy's name or a file."""
    count = 1 if store_url == "memory" else 2
    env = {"GATEWAY_JWT_SECRET": JWT_SECRET, "GATEWAY_STRIPE_WEBHOOK_SECRET": WEBHOOK_SECRET}
    with ExitStack() as stack:
        started = [
            stack.enter_context(
                serve_gateway(
                    "--store",
                    store_url,
                    "--upstream",
                    upstream,
                    "--policy",
                    str(
                        policy if isinstance(policy, Path) else ROOT / "policies" / f"{policy}.yaml"
                    ),
                    *extra,
                    log_path=directory / f"gateway{index}.log",
                    env=env,
                )
            )
            for index in range(count)
        ]
        for served in started:
            wait_ready(served)
        yield Pair(started[0], started[-1])


async def call(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    *,
    json: Any = None,
    headers: dict[str, str] | None = None,
    data: bytes | None = None,
) -> tuple[int, Any]:
    async with session.request(method, url, json=json, data=data, headers=headers) as resp:
        body = await resp.read()
        try:
            return resp.status, await resp.json(content_type=None) if body else None
        except ValueError:
            return resp.status, body.decode(errors="replace")


async def at_once(*calls: Awaitable[T]) -> list[T]:
    """Run the calls concurrently, started together."""
    return list(await asyncio.gather(*calls))


async def eventually(
    read: Callable[[], Awaitable[T]], good: Callable[[T], bool], seconds: float = 3.0
) -> T:
    """Read until ``good`` holds or ``seconds`` pass (a bounded wait); the last value read.

    The default bound is below the identity cache's 5 s expiry, so a process serving a
    stale cached account fails the check rather than outwaiting it."""
    deadline = time.monotonic() + seconds
    while True:
        value = await read()
        if good(value) or time.monotonic() > deadline:
            return value
        await asyncio.sleep(0.05)


async def until(check: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> bool:
    return await eventually(check, bool, seconds)
