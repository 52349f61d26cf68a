"""`gateway serve --workers 2`: one scrape sums every worker; /readyz needs every worker."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Upstream
from tests.gateway_process import Served, serve_gateway
from tests.ops_policy import ops_policy, write_policy

REQUESTS = 60


@pytest.fixture
def gateway(redis_url: str, upstream: Upstream, tmp_path: Path) -> Iterator[Served]:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, ops_policy(free_calls=1_000_000))
    with serve_gateway(
        "--workers", "2",
        "--store", redis_url,
        "--store-timeout-ms", "10000",
        "--upstream", str(upstream.url),
        "--policy", str(policy),
        log_path=tmp_path / "gateway.log",
    ) as served:  # fmt: skip
        yield served


def samples(text: str) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def total(text: str, name: str, **labels: str) -> float:
    wanted = set(labels.items())
    return sum(
        value for (found, got), value in samples(text).items() if found == name and wanted <= got
    )


def _listening(port: int) -> set[str]:
    """Inodes of the sockets listening on ``port`` (one per worker with SO_REUSEPORT)."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "0A":
                inodes.add(fields[9])
    return inodes


def _holds(pid: int, inodes: set[str]) -> bool:
    try:
        links = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except FileNotFoundError:
        return False
    return any(f"socket:[{inode}]" in links for inode in inodes)


def other_worker(served: Served) -> int:
    """The pid of the worker that serves the proxy listener but not the admin listener."""
    parent = served.process.pid
    children = [
        int(pid) for pid in Path(f"/proc/{parent}/task/{parent}/children").read_text().split()
    ]
    admin = _listening(int(served.admin.rsplit(":", 1)[1]))
    proxy = _listening(int(served.proxy.rsplit(":", 1)[1]))
    (found,) = [pid for pid in children if _holds(pid, proxy) and not _holds(pid, admin)]
    return found


async def test_one_scrape_counts_every_worker_s_requests(
    gateway: Served, upstream: Upstream
) -> None:
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(timeout=timeout) as admin:
        await gateway.ready(admin)
        resp = await admin.post(
            gateway.admin + "/admin/accounts", json={"tier": "free"}, headers=gateway.auth
        )
        account = (await resp.json())["id"]
        resp = await admin.post(
            f"{gateway.admin}/admin/accounts/{account}/keys",
            json={"prefix": "k_"},
            headers=gateway.auth,
        )
        headers = {"Authorization": f"Bearer {(await resp.json())['key']}"}

        # a new connection per request, so the kernel spreads them over both workers
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def one(i: int) -> int:
                async with session.get(f"{gateway.proxy}/api/n/{i}", headers=headers) as resp:
                    await resp.read()
                    return resp.status

            statuses = await asyncio.gather(*(one(i) for i in range(REQUESTS)))
        assert statuses == [200] * REQUESTS

        text = await (await admin.get(gateway.admin + "/metrics")).text()
        assert total(text, "gateway_decisions_total", route="api") == REQUESTS
        assert total(text, "gateway_request_duration_seconds_count", route="api") == REQUESTS
        assert total(text, "gateway_upstream_responses_total", code_class="2xx") == REQUESTS
        assert total(text, "gateway_workers") == 2
        assert total(text, "gateway_in_flight_requests") == 0
        assert total(text, "gateway_store_degraded") == 0
        assert len([s for s in samples(text) if s[0] == "gateway_policy_info"]) == 1
        assert "_created" not in text

        resp = await admin.get(gateway.admin + "/readyz")
        assert resp.status == 200, await resp.text()
        # the worker without the admin listener goes away: not every worker serves
        os.kill(other_worker(gateway), signal.SIGKILL)
        async with asyncio.timeout(30):
            while (resp := await admin.get(gateway.admin + "/readyz")).status == 200:
                await asyncio.sleep(0.05)
        assert resp.status == 503
        assert (await resp.json())["workers"] == "1 of 2 accepting requests"
        text = await (await admin.get(gateway.admin + "/metrics")).text()
        assert total(text, "gateway_workers") == 1
        # what the gone worker counted stays in the sums
        assert total(text, "gateway_decisions_total", route="api") == REQUESTS
