"""Upstream pools end to end: several real upstreams behind one prefix, a dead one, one that
fails, a health check that flips; every request delivered exactly once and charged once."""

from __future__ import annotations

import asyncio
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer
from yarl import URL

from gateway.proxy.pool import PoolSettings
from gateway.settings import UpstreamPool
from tests.conftest import GatewayFactory, Harness
from tests.redis_servers import free_port

STORES = ("memory", "redis")


@dataclass
class Backend:
    """One upstream instance: counts what reached it, answers ``status``, reports health."""

    name: str
    status: int = 200
    healthy: bool = True
    seen: list[str] = field(default_factory=list)
    health_checks: int = 0
    server: TestServer | None = None

    async def handle(self, request: web.Request) -> web.Response:
        if request.path == "/health":
            self.health_checks += 1
            return web.json_response({}, status=200 if self.healthy else 503)
        await request.read()
        self.seen.append(request.headers.get("X-Request-Id", ""))
        return web.json_response({"backend": self.name}, status=self.status)

    @property
    def url(self) -> URL:
        assert self.server is not None
        return self.server.make_url("")


@pytest.fixture
async def backends() -> Any:
    started: list[Backend] = []

    async def start(name: str) -> Backend:
        backend = Backend(name)
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", backend.handle)
        backend.server = TestServer(app)
        await backend.server.start_server()
        started.append(backend)
        return backend

    yield start
    for backend in started:
        assert backend.server is not None
        await backend.server.close()


async def pooled(
    make_gateway: GatewayFactory, urls: list[tuple[URL, int]], **settings: Any
) -> Harness:
    pool = UpstreamPool("/", tuple(urls), PoolSettings(**settings))
    # loads of requests at one instant: the pool's test, not the request rate's
    return await make_gateway(upstreams=(("/", urls[0][0]),), pools=(pool,), rates=False)


async def used(gw: Harness, account: str, meter: str = "logic_engine_calls") -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"][meter]["used"])


async def caller(gw: Harness) -> tuple[str, dict[str, str]]:
    account = await gw.account("free")
    return account, {"Authorization": f"Bearer {await gw.key(account, 'ask_')}"}


async def test_a_dead_target_costs_no_client_an_error_and_nothing_is_sent_twice(
    make_gateway: GatewayFactory, backends: Any
) -> None:
    a, b = await backends("a"), await backends("b")
    dead = URL(f"http://127.0.0.1:{free_port()}")
    gw = await pooled(make_gateway, [(dead, 1), (a.url, 1), (b.url, 1)], eject_after=2)
    account, headers = await caller(gw)

    async def call(i: int) -> int:
        resp = await gw.client.get(f"/api/logic/{i}", headers=headers)
        await resp.read()
        return resp.status

    statuses = await asyncio.gather(*(call(i) for i in range(60)))
    assert Counter(statuses) == {200: 60}
    ids = a.seen + b.seen
    assert len(ids) == 60 and len(set(ids)) == 60  # each request reached one target, once
    assert await used(gw, account) == 60  # and each was charged once
    # the burst's first wave all picked targets before any connect to the dead one failed;
    # once those failed, it was ejected: a second burst never tries it
    retries = gw.gateway.metrics.upstream_retries.labels(f"127.0.0.1:{dead.port}")
    first = retries._value.get()
    assert 1 <= first <= 20
    statuses = await asyncio.gather(*(call(i) for i in range(60, 120)))
    assert Counter(statuses) == {200: 60}
    assert retries._value.get() == first
    assert len(a.seen + b.seen) == 120
    assert await used(gw, account) == 120


async def test_a_target_that_goes_away_mid_load_is_routed_around(
    make_gateway: GatewayFactory, backends: Any
) -> None:
    a, b = await backends("a"), await backends("b")
    gw = await pooled(make_gateway, [(a.url, 1), (b.url, 1)])
    account, headers = await caller(gw)
    for i in range(10):
        assert (await gw.client.get(f"/api/logic/{i}", headers=headers)).status == 200
    assert a.seen and b.seen
    assert b.server is not None
    await b.server.close()  # its listener and its connections go
    before = len(a.seen)
    for i in range(40):
        resp = await gw.client.get(f"/api/logic/x{i}", headers=headers)
        assert resp.status in (200, 502), await resp.text()
    # a request on a pooled connection the target had just closed may have been written:
    # it is a 502 and stays charged; everything else reached the live target, once
    served = len(a.seen) - before
    assert served >= 38
    assert await used(gw, account) == 50


async def test_weights_spread_requests_in_proportion(
    make_gateway: GatewayFactory, backends: Any
) -> None:
    a, b = await backends("a"), await backends("b")
    gw = await pooled(make_gateway, [(a.url, 3), (b.url, 1)], balance="round_robin")
    _, headers = await caller(gw)
    for i in range(40):
        assert (await gw.client.get(f"/api/logic/{i}", headers=headers)).status == 200
    assert (len(a.seen), len(b.seen)) == (30, 10)


async def test_the_breaker_answers_503_without_sending_and_refunds(
    make_gateway: GatewayFactory, backends: Any
) -> None:
    a = await backends("a")
    a.status = 500
    gw = await pooled(
        make_gateway,
        [(a.url, 1)],
        eject_after=0,
        breaker_ratio=0.5,
        breaker_min_requests=4,
        breaker_window=60,
        breaker_open_seconds=60,
    )
    account, headers = await caller(gw)
    for i in range(4):
        assert (await gw.client.get(f"/api/logic/{i}", headers=headers)).status == 500
    resp = await gw.client.get("/api/logic/open", headers=headers)
    assert resp.status == 503
    assert (await resp.json())["code"] == "UPSTREAM_CIRCUIT_OPEN"
    assert int(resp.headers["Retry-After"]) >= 59
    assert len(a.seen) == 4  # the refused call was never sent
    assert await used(gw, account) == 4  # and not charged: the four that reached it are


async def test_an_active_health_check_takes_a_target_out_and_back(
    make_gateway: GatewayFactory, backends: Any
) -> None:
    a, b = await backends("a"), await backends("b")
    b.healthy = False
    gw = await pooled(
        make_gateway,
        [(a.url, 1), (b.url, 1)],
        health_path="/health",
        health_interval=0.05,
        health_timeout=1,
    )
    _, headers = await caller(gw)
    async with asyncio.timeout(10):
        while b.health_checks < 2:
            await asyncio.sleep(0.02)
    for i in range(10):
        assert (await gw.client.get(f"/api/logic/{i}", headers=headers)).status == 200
    assert (len(a.seen), len(b.seen)) == (10, 0)

    b.healthy = True
    async with asyncio.timeout(10):
        while True:
            resp = await gw.client.get("/api/logic/back", headers=headers)
            assert resp.status == 200
            if b.seen:
                break
            await asyncio.sleep(0.05)
