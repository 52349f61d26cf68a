"""Twenty reloads under continuous load on two worker processes sharing one Redis."""

from __future__ import annotations

import asyncio
import re
import signal
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.conftest import Upstream
from tests.gateway_process import Served, serve_gateway
from tests.ops_policy import ops_policy, write_policy

# two whole policies: a response under either shows its route name and its limit together
VARIANTS = {
    "api-a": ops_policy(api_route="api-a", free_calls=1_000_000),
    "api-b": ops_policy(api_route="api-b", free_calls=2_000_000),
}
LIMITS = {"api-a": "1000000", "api-b": "2000000"}
RELOADS = 20
CLIENTS = 4


@pytest.fixture
def gateway(redis_url: str, upstream: Upstream, tmp_path: Path) -> Iterator[Served]:
    policy = tmp_path / "policy.yaml"
    write_policy(policy, VARIANTS["api-a"])
    with serve_gateway(
        "--workers", "2",
        "--store", redis_url,
        "--store-timeout-ms", "10000",
        "--upstream", str(upstream.url),
        "--policy", str(policy),
        log_path=tmp_path / "gateway.log",
    ) as served:  # fmt: skip
        yield served


async def test_reloads_under_load_are_whole_and_a_broken_one_changes_nothing(
    gateway: Served, upstream: Upstream, tmp_path: Path
) -> None:
    policy = tmp_path / "policy.yaml"
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

        # (request id, status, RateLimit-Limit) of every request the load sent
        answers: list[tuple[str, int, str | None]] = []
        recent: list[str] = []  # the variant of each answer, in order
        stop = asyncio.Event()

        routes: dict[str, str | None] = {}  # request id -> the route the upstream was told
        scanned = 0

        def variant_of(request_id: str) -> str | None:
            nonlocal scanned
            for seen in upstream.requests[scanned:]:
                lowered = {k.lower(): v for k, v in seen.headers.items()}
                routes[lowered.get("x-request-id", "")] = lowered.get("x-gateway-route")
            scanned = len(upstream.requests)
            return routes.get(request_id)

        async def load(client: int) -> None:
            # a new connection per request, so the kernel spreads them over both workers
            connector = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
                n = 0
                while not stop.is_set():
                    request_id = f"c{client}-{n}"
                    n += 1
                    async with session.get(
                        f"{gateway.proxy}/api/load",
                        headers={**headers, "X-Request-Id": request_id},
                    ) as resp:
                        await resp.read()
                        answers.append(
                            (request_id, resp.status, resp.headers.get("RateLimit-Limit"))
                        )
                        route = variant_of(request_id)
                        if route is not None:
                            recent.append(route)

        async def until_served_by(name: str) -> None:
            # twenty answers in a row under the new policy: both workers have it
            async with asyncio.timeout(30):
                while recent[-20:] != [name] * 20:
                    await asyncio.sleep(0.02)

        clients = [asyncio.create_task(load(i)) for i in range(CLIENTS)]
        try:
            await until_served_by("api-a")
            for reload in range(RELOADS):
                name = "api-b" if reload % 2 == 0 else "api-a"
                write_policy(policy, VARIANTS[name])
                how = reload % 3
                if how == 0:
                    resp = await admin.post(
                        gateway.admin + "/admin/policy/reload", headers=gateway.auth
                    )
                    assert resp.status == 200, await resp.text()
                elif how == 1:
                    gateway.process.send_signal(signal.SIGHUP)
                # how == 2: the workers' file watch notices on its own
                await until_served_by(name)

            shown = await (
                await admin.get(gateway.admin + "/admin/policy", headers=gateway.auth)
            ).json()
            write_policy(policy, re.sub(r"calls: \d+", "calls: plenty", VARIANTS[name], count=1))
            resp = await admin.post(gateway.admin + "/admin/policy/reload", headers=gateway.auth)
            assert resp.status == 422
            assert "policy.yaml:14 tiers.free.limits.calls" in (await resp.json())["message"]
            gateway.process.send_signal(signal.SIGHUP)
            served = len(recent)
            async with asyncio.timeout(30):
                while len(recent) < served + 40:
                    await asyncio.sleep(0.02)
            assert set(recent[served:]) == {name}
            after = await (
                await admin.get(gateway.admin + "/admin/policy", headers=gateway.auth)
            ).json()
            assert after["digest"] == shown["digest"]
            metrics = await (await admin.get(gateway.admin + "/metrics")).text()
            assert 'gateway_policy_reloads_total{result="failure"}' in metrics
            assert (
                f'gateway_policy_info{{digest="{shown["digest"]}",name="ops-test"}} 1.0' in metrics
            )
        finally:
            stop.set()
            await asyncio.gather(*clients)

    assert len(answers) > 200
    assert {status for _, status, _ in answers} == {200}
    for request_id, _, limit in answers:
        route = variant_of(request_id)
        assert route in LIMITS
        assert limit == LIMITS[route], f"{request_id} routed as {route} with limit {limit}"
