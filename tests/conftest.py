"""Test harness: a real in-process upstream, the gateway over loopback HTTP, a fake clock."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from calendar import timegm
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jwt
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from aiohttp.web_runner import BaseRunner
from prometheus_client import CollectorRegistry
from yarl import URL

from gateway.app import Gateway, admin_app, build_gateway, proxy_app, server_options
from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from gateway.server import GatewayRunner
from gateway.settings import Settings
from tests.policies import without_rates

if TYPE_CHECKING:
    from tests.otlp_collector import Collector
    from tests.wire import WireUpstream

# real redis-server and Redis Cluster fixtures (free ports, temporary directories)
pytest_plugins = ["tests.redis_servers"]

ROOT = Path(__file__).resolve().parent.parent
POLICIES = ROOT / "policies"
ADMIN_TOKEN = "test-admin-token-0123456789abcdefghij"
JWT_SECRET = "test-jwt-secret-that-is-long-enough-for-hs256"


def utc(year: int, month: int, day: int, hour: int = 0, minute: int = 0, second: int = 0) -> float:
    return float(timegm((year, month, day, hour, minute, second, 0, 0, 0)))


def mint(
    claims: dict[str, Any],
    *,
    key: Any = JWT_SECRET,
    algorithm: str = "HS256",
    headers: dict[str, Any] | None = None,
    lifetime: float | None = 3600,
) -> str:
    """A signed JWT; ``exp`` is real time plus ``lifetime`` (pyjwt checks it against real time)."""
    body = dict(claims)
    if lifetime is not None:
        body.setdefault("exp", int(time.time() + lifetime))
    return jwt.encode(body, key, algorithm=algorithm, headers=headers)


def org_headers(organization_id: str, **claims: Any) -> dict[str, str]:
    """Bearer headers for an organisation's HS256 token signed with the test secret."""
    return {"Authorization": f"Bearer {mint({'organization_id': organization_id, **claims})}"}


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock(utc(2026, 11, 25, 12))


@dataclass
class Seen:
    method: str
    path: str
    query: str
    headers: dict[str, str]
    body_bytes: int


@dataclass
class Upstream:
    """A real HTTP upstream that records what reached it; tests steer its answers."""

    requests: list[Seen] = field(default_factory=list)
    status: dict[str, int] = field(default_factory=dict)  # path -> status to answer
    delay: dict[str, float] = field(default_factory=dict)  # path -> seconds before answering
    reply_headers: dict[str, dict[str, str]] = field(default_factory=dict)  # path -> headers
    url: URL | None = None

    def count(self, prefix: str = "/") -> int:
        return sum(1 for r in self.requests if r.path.startswith(prefix))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        size = 0
        async for chunk in request.content.iter_any():
            size += len(chunk)
        path = request.raw_path.partition("?")[0]
        if path in self.delay:
            await asyncio.sleep(self.delay[path])
        self.requests.append(
            Seen(request.method, path, request.query_string, dict(request.headers), size)
        )
        return web.json_response(
            {"ok": True, "path": path, "bytes": size},
            status=self.status.get(path, 200),
            headers=self.reply_headers.get(path),
        )


@pytest.fixture
async def upstream(aiohttp_server: Any) -> Upstream:
    state = Upstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    server = await aiohttp_server(app)
    state.url = server.make_url("")
    return state


@pytest.fixture
async def collector(aiohttp_server: Any) -> Collector:
    """A local OpenTelemetry collector (OTLP/HTTP) that keeps the spans it is sent."""
    # imported here: it needs the [otel] extra, which only the tracing tests use
    from tests.otlp_collector import Collector, collector_app

    state = Collector()
    server = await aiohttp_server(collector_app(state))
    state.url = str(server.make_url("/v1/traces"))
    return state


@pytest.fixture
async def wire() -> AsyncIterator[WireUpstream]:
    """A raw-socket upstream that records the exact bytes of every request it gets."""
    from tests.wire import WireUpstream

    upstream = await WireUpstream().start()
    yield upstream
    upstream.close()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """A test module that sets ``STORES = ("memory", "redis")`` runs each test on each store.

    ``"cluster"`` adds the local three-primary Redis Cluster (decision scripts across slots).
    A module without STORES runs on memory only; its docstring says why that is enough."""
    stores = getattr(metafunc.module, "STORES", None)
    # @pytest.mark.stores("redis") narrows one test (a frozen server, a memory-only check)
    if (marker := metafunc.definition.get_closest_marker("stores")) is not None:
        stores = marker.args
    if stores and "store_kind" in metafunc.fixturenames:
        metafunc.parametrize("store_kind", stores, indirect=True)


@pytest.fixture
def store_kind(request: pytest.FixtureRequest) -> str:
    return str(getattr(request, "param", "memory"))


@pytest.fixture
def store_factory(
    store_kind: str, request: pytest.FixtureRequest
) -> Callable[[FakeClock], Awaitable[Store]]:
    """How the harness gets its store: memory, or this worker's redis-server or Cluster,
    emptied for the test.

    Suites with a store of their own (counting, slowed, failing) override this fixture."""
    urls = {"redis": "redis_url", "cluster": "cluster_url"}
    redis_url = request.getfixturevalue(urls[store_kind]) if store_kind in urls else None

    async def make(clock: FakeClock) -> Store:
        if redis_url is not None:
            # the fake clock is passed to Redis so window tests need no sleeping
            return RedisStore(redis_url, clock=clock, timeout_ms=2000)
        return MemoryStore(clock)

    return make


@dataclass
class Harness:
    gateway: Gateway
    client: TestClient[Any, Any]
    admin: TestClient[Any, Any]
    upstream: Upstream
    clock: FakeClock

    @property
    def admin_headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {ADMIN_TOKEN}"}

    async def account(self, tier: str, **fields: Any) -> str:
        resp = await self.admin.post(
            "/admin/accounts", json={"tier": tier, **fields}, headers=self.admin_headers
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["id"])

    async def key(
        self, account_id: str, prefix: str = "anon_ask_", project_id: str | None = None
    ) -> str:
        body: dict[str, Any] = {"prefix": prefix}
        if project_id is not None:
            body["project_id"] = project_id
        elif prefix == "ask_":
            project = await self.admin.post(
                f"/admin/accounts/{account_id}/projects",
                json={"name": "p"},
                headers=self.admin_headers,
            )
            body["project_id"] = (await project.json())["id"]
        resp = await self.admin.post(
            f"/admin/accounts/{account_id}/keys", json=body, headers=self.admin_headers
        )
        assert resp.status == 201, await resp.text()
        return str((await resp.json())["key"])

    async def caller(self, tier: str, prefix: str = "anon_ask_") -> dict[str, str]:
        """Headers for a new account on ``tier``."""
        key = await self.key(await self.account(tier), prefix)
        return {"Authorization": f"Bearer {key}"}

    async def set_usage(self, account_id: str, meter: str, value: int) -> None:
        resp = await self.admin.put(
            f"/admin/accounts/{account_id}/usage/{meter}",
            json={"value": value},
            headers=self.admin_headers,
        )
        assert resp.status == 200, await resp.text()


GatewayFactory = Callable[..., Awaitable[Harness]]


class GatewayTestServer(TestServer):
    """Serves the proxy app as `gateway serve` does: its runner and its server options.

    aiohttp's TestServer drops keyword arguments given to its constructor and cancels
    handlers when a client disconnects, which `gateway serve` does not."""

    def __init__(self, app: web.Application, **options: Any) -> None:
        super().__init__(app)
        self._options = options

    async def _make_runner(self, **kwargs: Any) -> BaseRunner:
        kwargs.update(self._options, handler_cancellation=False)
        return GatewayRunner(self.app, **kwargs)


@pytest.fixture
async def make_gateway(
    upstream: Upstream,
    clock: FakeClock,
    store_factory: Callable[[FakeClock], Awaitable[Store]],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path_factory: pytest.TempPathFactory,
) -> AsyncIterator[GatewayFactory]:
    rate_free = tmp_path_factory.mktemp("policies")
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", ADMIN_TOKEN)
    monkeypatch.setenv("GATEWAY_JWT_SECRET", JWT_SECRET)
    clients: list[TestClient[Any, Any]] = []

    async def make(policy: str = "agentstack", *, rates: bool = True, **overrides: Any) -> Harness:
        """A gateway on a shipped policy; ``rates=False``: without its request rates (for
        races at one instant that measure a quota, see tests/policies.py)."""
        assert upstream.url is not None
        file = POLICIES / f"{policy}.yaml" if rates else without_rates(policy, rate_free)
        settings = dataclasses.replace(
            Settings(policy=str(file), upstreams=(("/", upstream.url),)),
            **overrides,
        )
        store = await store_factory(clock)
        gateway = build_gateway(settings, clock=clock, store=store, registry=CollectorRegistry())
        options = {k: v for k, v in server_options(settings).items() if k != "access_log"}
        client = TestClient(GatewayTestServer(proxy_app(gateway), **options))
        admin = TestClient(TestServer(admin_app(gateway)))
        for c in (client, admin):
            await c.start_server()
            clients.append(c)
        return Harness(gateway, client, admin, upstream, clock)

    yield make
    for c in reversed(clients):
        await c.close()
