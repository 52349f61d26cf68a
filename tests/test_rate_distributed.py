"""Four gateway worker processes on one Redis (and on the Cluster): a racing burst on a rate
meter admits exactly the burst, and only those reach the upstream and the quota.

Real time, server TIME in the script: the rate is 1 an hour, so no unit comes back while
the race runs and the count is exact without any clock in the test.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import POLICIES, Upstream
from tests.gateway_process import Served, serve_gateway

WORKERS = 4
CLIENTS = 300
BURST = 50
SHIPPED = "request_rate: {rate: 2/s, burst: 10}"  # the anonymous tier's, in agentstack.yaml


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


@pytest.fixture
async def served(store_url: str, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    shipped = (POLICIES / "agentstack.yaml").read_text(encoding="utf-8")
    assert shipped.count(SHIPPED) == 1
    policy = tmp_path / "agentstack.yaml"
    policy.write_text(shipped.replace(SHIPPED, f"request_rate: {{rate: 1/h, burst: {BURST}}}"))
    with serve_gateway(
        "--workers", str(WORKERS),
        "--store", store_url,
        "--upstream", str(upstream.url),
        "--policy", str(policy),
        "--store-timeout-ms", "10000",  # exactness on a loaded machine, not timeouts
        log_path=tmp_path / "gateway.log",
    ) as served:  # fmt: skip
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
        yield served


async def test_racing_clients_across_workers_get_exactly_the_burst(
    served: Served, upstream: Upstream
) -> None:
    account, headers = await served.anonymous_account()
    ready = asyncio.Event()
    codes: Counter[str] = Counter()

    async def client(i: int, session: aiohttp.ClientSession) -> int:
        await ready.wait()
        async with session.post(f"{served.proxy}/api/logic/run/{i}", headers=headers) as resp:
            body = await resp.json()
            if resp.status == 429:
                codes[body["code"]] += 1
                assert int(resp.headers["Retry-After"]) >= 1
            return resp.status

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(i, session)) for i in range(CLIENTS)]
        await asyncio.sleep(0)
        ready.set()
        statuses = Counter(await asyncio.gather(*tasks))
    print(f"\n{WORKERS} workers, {CLIENTS} clients for a burst of {BURST}: {dict(statuses)}")
    assert statuses == {200: BURST, 429: CLIENTS - BURST}
    assert codes == {"RATE_LIMITED": CLIENTS - BURST}
    assert upstream.count("/api/logic/run/") == BURST
    # the refused requests took nothing from the quotas
    async with aiohttp.ClientSession() as admin:
        resp = await admin.get(
            f"{served.admin}/admin/accounts/{account}/usage", headers=served.auth
        )
        usage = (await resp.json())["meters"]
    assert usage["logic_engine_calls"]["used"] == BURST
    assert usage["api_calls"]["used"] == BURST
