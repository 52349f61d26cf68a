"""Four gateway worker processes on one Redis: a race for the last units admits exactly them."""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ROOT, Upstream
from tests.gateway_process import Served, serve_gateway

WORKERS = 4
CLIENTS = 600
REMAINING = 300  # of the anonymous tier's 1,000 Logic Engine calls


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


@pytest.fixture
async def served(store_url: str, upstream: Upstream, tmp_path: Path) -> AsyncIterator[Served]:
    # the budget is wide here: this test is about exactness on a loaded 2-core machine,
    # not about timeouts (tests/test_redis_faults.py covers those)
    with serve_gateway(
        "--workers", str(WORKERS),
        "--store", store_url,
        "--store-timeout-ms", "10000",
        "--upstream", str(upstream.url),
        "--policy", str(ROOT / "policies" / "agentstack.yaml"),
        log_path=tmp_path / "gateway.log",
    ) as served:  # fmt: skip
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
        yield served


async def test_racing_clients_across_workers_get_exactly_the_limit(
    served: Served, upstream: Upstream
) -> None:
    async with aiohttp.ClientSession() as admin:
        resp = await admin.post(
            served.admin + "/admin/accounts", json={"tier": "anonymous"}, headers=served.auth
        )
        account = (await resp.json())["id"]
        resp = await admin.post(
            f"{served.admin}/admin/accounts/{account}/keys",
            json={"prefix": "anon_ask_"},
            headers=served.auth,
        )
        key = (await resp.json())["key"]
        resp = await admin.put(
            f"{served.admin}/admin/accounts/{account}/usage/logic_engine_calls",
            json={"value": 1000 - REMAINING},
            headers=served.auth,
        )
        assert resp.status == 200

    headers = {"Authorization": f"Bearer {key}"}
    ready = asyncio.Event()

    async def client(i: int, session: aiohttp.ClientSession) -> int:
        await ready.wait()
        async with session.post(f"{served.proxy}/api/logic/run/{i}", headers=headers) as resp:
            await resp.read()
            return resp.status

    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        tasks = [asyncio.create_task(client(i, session)) for i in range(CLIENTS)]
        await asyncio.sleep(0)
        ready.set()
        statuses = Counter(await asyncio.gather(*tasks))

    print(f"\n{WORKERS} workers, {CLIENTS} clients for {REMAINING} units: {dict(statuses)}")
    assert statuses == {200: REMAINING, 429: CLIENTS - REMAINING}
    assert upstream.count("/api/logic/run/") == REMAINING
