"""Four gateway worker processes on one Redis: a race for the last units admits exactly them."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import ADMIN_TOKEN, ROOT, Upstream
from tests.redis_servers import free_port

WORKERS = 4
CLIENTS = 600
REMAINING = 300  # of the anonymous tier's 1,000 Logic Engine calls


class Served:
    def __init__(self, proxy: str, admin: str) -> None:
        self.proxy = proxy
        self.admin = admin
        self.auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(params=["redis", "cluster"])
def store_url(request: pytest.FixtureRequest) -> str:
    return str(request.getfixturevalue("redis_url" if request.param == "redis" else "cluster_url"))


@pytest.fixture
def gateway_process(
    store_url: str, upstream: Upstream, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], Served]]:
    proxy, admin = free_port(), free_port()
    log = (tmp_path / "gateway.log").open("wb")
    # the budget is wide here: this test is about exactness on a loaded 2-core machine,
    # not about timeouts (tests/test_redis_faults.py covers those)
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--workers", str(WORKERS),
        "--store", store_url,
        "--store-timeout-ms", "10000",
        "--listen", f"127.0.0.1:{proxy}",
        "--admin-listen", f"127.0.0.1:{admin}",
        "--upstream", str(upstream.url),
        "--policy", str(ROOT / "policies" / "agentstack.yaml"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log, stderr=log)
    try:
        yield process, Served(f"http://127.0.0.1:{proxy}", f"http://127.0.0.1:{admin}")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


@pytest.fixture
async def served(
    gateway_process: tuple[subprocess.Popen[bytes], Served],
) -> AsyncIterator[Served]:
    process, served = gateway_process
    async with aiohttp.ClientSession() as session, asyncio.timeout(60):
        while True:
            assert process.poll() is None, "the gateway exited during start-up"
            try:
                async with session.get(served.admin + "/readyz") as resp:
                    if resp.status == 200:
                        break
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)
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
