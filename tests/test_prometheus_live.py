"""A real Prometheus scrapes a real `gateway serve --workers 2` with the shipped alert rules.

The rules are the shipped ones with only `for:` shortened (a test copy); scrape and rule
evaluation run every second. The gateway is driven through each fault on-call must hear
about (upstream 5xx, upstream slow, refusals, a broken policy, the store down, the process
down) and each intended alert must reach pending or firing; every dashboard query must
return data, and none a NaN.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import re
import signal
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.conftest import Upstream
from tests.deploy_tools import DEPLOY, tool
from tests.gateway_process import Served, serve_gateway
from tests.ops_policy import ops_policy, write_policy
from tests.promql import dashboard_queries, grafana_to_promql
from tests.redis_servers import RedisServer, free_port

pytestmark = pytest.mark.timeout(300)

# seconds to wait for one alert to go pending once its fault is there
ALERT_WAIT = 90


@dataclass
class Prometheus:
    url: str
    session: aiohttp.ClientSession

    async def get(self, path: str, **params: str) -> Any:
        async with self.session.get(self.url + path, params=params) as resp:
            body = await resp.json()
            assert resp.status == 200, body
            return body["data"]

    async def active(self) -> dict[str, str]:
        """Alert name -> state, for every alert pending or firing now."""
        alerts = (await self.get("/api/v1/alerts"))["alerts"]
        return {alert["labels"]["alertname"]: alert["state"] for alert in alerts}

    async def until_active(self, names: set[str], what: str) -> dict[str, str]:
        seen: dict[str, str] = {}
        try:
            async with asyncio.timeout(ALERT_WAIT):
                while not names <= set(seen):
                    seen.update(await self.active())
                    await asyncio.sleep(0.5)
        except TimeoutError:
            pytest.fail(f"{what}: {sorted(names - set(seen))} never pending; saw {seen}")
        return seen

    async def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = (await self.get("/api/v1/query", query=expr))["result"]
        return result


def shortened_rules(directory: Path) -> Path:
    """The shipped rules with every `for:` cut to one second, nothing else changed."""
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8")
    shortened, count = re.subn(r"(?m)^(\s+for:) \S+$", r"\1 1s", text)
    assert count == len(re.findall(r"(?m)^\s+- alert:", text))
    path = directory / "alerts.yml"
    path.write_text(shortened, encoding="utf-8")
    return path


@contextlib.contextmanager
def run_prometheus(directory: Path, admin: str) -> Iterator[str]:
    rules = shortened_rules(directory)
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        # the job name the rules select on, as deploy/prometheus/prometheus.yml has it
        "scrape_configs": [
            {
                "job_name": "gateway",
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [admin.removeprefix("http://")]}],
            }
        ],
    }
    (directory / "prometheus.yml").write_text(yaml.safe_dump(config), encoding="utf-8")
    port = free_port()
    command = [
        tool("prometheus"),
        f"--config.file={directory / 'prometheus.yml'}",
        f"--storage.tsdb.path={directory / 'data'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--log.level=warn",
    ]
    with (directory / "prometheus.log").open("wb") as log:
        process = subprocess.Popen(command, cwd=directory, stdout=log, stderr=log)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        yield session


async def wait_ready(session: aiohttp.ClientSession, url: str) -> None:
    async with asyncio.timeout(60):
        while True:
            with contextlib.suppress(aiohttp.ClientError):
                async with session.get(url + "/-/ready") as resp:
                    if resp.status == 200:
                        return
            await asyncio.sleep(0.2)


async def key_for(served: Served, session: aiohttp.ClientSession, tier: str) -> dict[str, str]:
    resp = await session.post(
        served.admin + "/admin/accounts", json={"tier": tier}, headers=served.auth
    )
    account = (await resp.json())["id"]
    resp = await session.post(
        f"{served.admin}/admin/accounts/{account}/keys", json={"prefix": "k_"}, headers=served.auth
    )
    return {"Authorization": f"Bearer {(await resp.json())['key']}"}


async def drive(served: Served, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
    """Traffic until ``stop``: answers, relayed 502s, refusals, and slow answers alongside."""
    pro = await key_for(served, session, "pro")
    free = await key_for(served, session, "free")  # three calls a day, then 429s

    async def get(path: str, headers: dict[str, str]) -> None:
        async with session.get(served.proxy + path, headers=headers) as resp:
            await resp.read()

    async def slow() -> None:
        while not stop.is_set():
            await asyncio.gather(*(get("/api/slow", pro) for _ in range(3)))

    slow_task = asyncio.create_task(slow())
    try:
        while not stop.is_set():
            await get("/api/fine", pro)
            await get("/api/broken", pro)
            await get("/api/fine", free)
            await asyncio.sleep(0.05)
    finally:
        await slow_task


def substitute(query: str) -> str:
    """A dashboard query with Grafana's variables filled in as the dashboard opens: all."""
    query = grafana_to_promql(query)
    return (
        query.replace('"$job"', '"gateway"').replace('"$tier"', '".*"').replace('"$route"', '".*"')
    )


async def test_each_fault_raises_its_alert_in_a_real_prometheus(
    own_redis: RedisServer, upstream: Upstream, session: aiohttp.ClientSession, tmp_path: Path
) -> None:
    assert upstream.url is not None
    upstream.status["/api/broken"] = 502
    upstream.delay["/api/slow"] = 1.5
    policy = tmp_path / "policy.yaml"
    write_policy(policy, ops_policy(pro_calls=1_000_000))
    config = tmp_path / "gateway.yaml"
    # an idle worker pings its store this often (the probe under test)
    config.write_text("store_probe_seconds: 0.2\npolicy_watch_seconds: 0.2\n")
    with serve_gateway(
        "--config", str(config),
        "--workers", "2",
        "--store", own_redis.url,
        "--upstream", str(upstream.url),
        "--policy", str(policy),
        log_path=tmp_path / "gateway.log",
    ) as served, run_prometheus(tmp_path, served.admin) as url:  # fmt: skip
        await served.ready(session)
        await wait_ready(session, url)
        prometheus = Prometheus(url, session)

        # healthy: the target is up and nothing is pending (GatewayDown was, before the
        # first scrape)
        async with asyncio.timeout(60):
            while await prometheus.active() or not await prometheus.query('up{job="gateway"} == 1'):
                await asyncio.sleep(0.5)

        stop = asyncio.Event()
        traffic = asyncio.create_task(drive(served, session, stop))
        try:
            write_policy(policy, ops_policy(pro_calls=1_000_000).replace("calls: 3", "calls: lots"))
            served.process.send_signal(signal.SIGHUP)
            seen = await prometheus.until_active(
                {
                    "GatewayServerErrorRatio",
                    "GatewayUpstreamErrorRatio",
                    "GatewayUpstreamSlow",
                    "GatewayRefusalRatioJump",
                    "GatewayPolicyReloadFailing",
                },
                "upstream 5xx, slow upstream, refusals and a broken policy",
            )
            assert "GatewayStoreDegraded" not in seen and "GatewayDown" not in seen

            # the file fixed: a successful reload, which the dashboard marks
            write_policy(policy, ops_policy(pro_calls=999_999))
            served.process.send_signal(signal.SIGHUP)
            async with asyncio.timeout(ALERT_WAIT):
                while "GatewayPolicyReloadFailing" in await prometheus.active():
                    await asyncio.sleep(0.5)

            empty, nans = [], []
            for query in dashboard_queries():
                result = await prometheus.query(substitute(query))
                if not result:
                    empty.append(query)
                if any(math.isnan(float(r["value"][1])) for r in result):
                    nans.append(query)
            assert empty == [], "dashboard queries without data"
            assert nans == [], "dashboard queries with NaN"
        finally:
            stop.set()
            await traffic

        # the store goes away while nothing is sent: the probe notices
        own_redis.kill()
        await prometheus.until_active({"GatewayStoreDegraded"}, "the store down, no traffic")
        resp = await session.get(served.admin + "/readyz")
        assert resp.status == 503

        # the process goes away
        served.process.send_signal(signal.SIGTERM)
        served.process.wait(timeout=30)
        await prometheus.until_active({"GatewayDown"}, "the gateway process down")
