"""Four gateway worker processes on one Redis: a race for the last units admits exactly them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.gateway_process import Served, serve_gateway
from tests.policies import without_rates

WORKERS = 4
CLIENTS = 600
REMAINING = 300  # of the anonymous tier's 1,000 Logic Engine calls


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


def _serve(store_url: str, upstream: Upstream, tmp_path: Path, *extra: str):  # type: ignore[no-untyped-def]
    return serve_gateway(
        "--workers", str(WORKERS),
        "--store", store_url,
        "--upstream", str(upstream.url),
        # the race is for a quota's last units: the shipped rate would refuse most of it first
        "--policy", str(without_rates("agentstack", tmp_path)),
        *extra,
        log_path=tmp_path / "gateway.log",
    )  # fmt: skip


@pytest.fixture
async def served(store_url: str, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    # the budget is wide here: this test is about exactness on a loaded 2-core machine with
    # a Cluster too, not about timeouts (tests/test_redis_faults.py covers those)
    with _serve(store_url, upstream, tmp_path, "--store-timeout-ms", "10000") as served:
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
        yield served


@pytest.fixture
async def served_defaults(
    redis_url: str, upstream: Upstream, tmp_path: Path
) -> AsyncIterator[Served]:
    with _serve(redis_url, upstream, tmp_path) as served:
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
        yield served


async def _race(served: Served, clients: int) -> Counter[int]:
    """``clients`` concurrent calls, released at once, for the last REMAINING units."""
    _, headers = await served.anonymous_account(used=1000 - REMAINING)
    ready = asyncio.Event()

    async def client(i: int, session: aiohttp.ClientSession) -> int:
        await ready.wait()
        async with session.post(f"{served.proxy}/api/logic/run/{i}", headers=headers) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(i, session)) for i in range(clients)]
        await asyncio.sleep(0)
        ready.set()
        statuses = Counter(await asyncio.gather(*tasks))
    print(f"\n{WORKERS} workers, {clients} clients for {REMAINING} units: {dict(statuses)}")
    return statuses


async def test_racing_clients_across_workers_get_exactly_the_limit(
    served: Served, upstream: Upstream
) -> None:
    statuses = await _race(served, CLIENTS)
    assert statuses == {200: REMAINING, 429: CLIENTS - REMAINING}
    assert upstream.count("/api/logic/run/") == REMAINING


async def test_a_burst_on_a_healthy_redis_with_default_settings_never_answers_503(
    served_defaults: Served, upstream: Upstream
) -> None:
    # store_timeout_ms at its default: waiting for this process's event loop or for a pooled
    # connection is not the store being slow, so a burst on a loaded machine is no outage
    statuses = await _race(served_defaults, 400)
    assert statuses == {200: REMAINING, 429: 400 - REMAINING}
    assert upstream.count("/api/logic/run/") == REMAINING
