"""Leased counters across four `gateway serve` workers on one Redis: exact, and few scripts."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from gateway.metering.keys import meter_key
from gateway.metering.windows import window
from tests.conftest import ROOT, Upstream
from tests.gateway_process import Served, serve_gateway
from tests.policies import strip_rates
from tests.redis_servers import RedisServer

WORKERS = 4
LEASE = 25
REMAINING = 300  # of the anonymous tier's 1,000 Logic Engine calls


def leased_policy(tmp_path: Path) -> Path:
    """The shipped AgentStack policy with the anonymous tier's two call counters leased,
    without its request rate: a limited rate keeps a request off the lease (and would
    refuse most of the race first)."""
    text = (ROOT / "policies" / "agentstack.yaml").read_text()
    anonymous = "  anonymous:\n    title: Anonymous\n"
    assert anonymous in text
    leases = f"    leases: {{logic_engine_calls: {LEASE}, api_calls: {LEASE}}}\n"
    path = tmp_path / "leased.yaml"
    path.write_text(strip_rates(text.replace(anonymous, anonymous + leases, 1)))
    return path


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


async def _serve(store_url: str, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    with serve_gateway(
        "--workers", str(WORKERS),
        "--store", store_url,
        "--upstream", str(upstream.url),
        "--policy", str(leased_policy(tmp_path)),
        "--store-timeout-ms", "10000",  # exactness on a loaded machine, not timeouts
        log_path=tmp_path / "gateway.log",
    ) as served:  # fmt: skip
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
        yield served


@pytest.fixture
async def served(store_url: str, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    async for served in _serve(store_url, upstream, tmp_path):
        yield served


@pytest.fixture
async def served_redis(redis_url: str, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    async for served in _serve(redis_url, upstream, tmp_path):
        yield served


async def _burst(served: Served, headers: dict[str, str], clients: int) -> Counter[int]:
    """``clients`` concurrent calls, each on its own connection (spread over the workers)."""

    async def client(i: int, session: aiohttp.ClientSession) -> int:
        async with session.post(f"{served.proxy}/api/logic/run/{i}", headers=headers) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        return Counter(await asyncio.gather(*(client(i, session) for i in range(clients))))


async def test_leased_workers_admit_exactly_the_limit(served: Served, upstream: Upstream) -> None:
    _, headers = await served.anonymous_account(1000 - REMAINING)
    statuses: Counter[int] = Counter()
    # near the limit a worker refuses while others still hold units; bursts go on until one
    # is refused whole, by then every worker has seen calls and spent what it held
    for _ in range(20):
        burst = await _burst(served, headers, 100)
        statuses += burst
        if burst == {429: 100}:
            break
    print(f"\n{WORKERS} leased workers, {REMAINING} units: {dict(statuses)}")
    assert statuses[200] == REMAINING
    assert set(statuses) == {200, 429}
    assert upstream.count("/api/logic/run/") == REMAINING


async def test_a_leased_account_runs_few_scripts_and_gives_back_at_shutdown(
    served_redis: Served, upstream: Upstream, redis_server: RedisServer
) -> None:
    account, headers = await served_redis.anonymous_account(0)
    redis_server.client().config_resetstat()
    statuses = await _burst(served_redis, headers, 390)
    assert statuses == {200: 390}
    stats = redis_server.client().info("commandstats")
    scripts = int(stats.get("cmdstat_evalsha", {}).get("calls", 0))
    # per request that would be 390; leased, a lease per 25 calls and worker (two counters
    # in one script), with room for each worker's partly used last lease
    assert scripts <= 390 // LEASE + 2 * WORKERS
    month, _ = window("month", time.time())
    key = meter_key(account, "logic_engine_calls", account, month)
    assert int(redis_server.client().get(key) or 0) >= 390  # with the units still held
    # a graceful stop gives the units each worker still holds back to the store
    served_redis.process.send_signal(signal.SIGTERM)
    await asyncio.to_thread(served_redis.process.wait, 60)
    assert int(redis_server.client().get(key) or 0) == 390
