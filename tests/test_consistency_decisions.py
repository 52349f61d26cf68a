"""Charged equals delivered across two processes and store faults (issue 17, item 3).

A burst of metered calls, a bounded number in flight, alternating between two `gateway serve`
processes on one store, while the test injects a fault: Redis frozen (SIGSTOP/SIGCONT),
clients paused (CLIENT PAUSE), a gateway stopped mid-burst, the pub/sub connections killed.
After quiescence: the units charged equal the calls the upstream stand-in received, and
every 2xx the callers saw is one of those calls. The decision path runs on a single server
and on the local Cluster; on memory (one process) the same burst holds without faults.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from pathlib import Path

import aiohttp

from tests.conftest import Upstream
from tests.consistency import AUTH, Pair, call, eventually, gateway_pair, until
from tests.policies import without_rates
from tests.redis_servers import RedisCluster, RedisServer

CALLS = 1000
IN_FLIGHT = 40
FAULT_AFTER = 300  # calls answered before the fault is injected


async def burst(
    pair: Pair,
    key: str,
    fault: Callable[[], object] | None,
    *,
    calls: int = CALLS,
    phase: str = "burst",
) -> list[int]:
    """``calls`` metered calls, IN_FLIGHT at a time, alternating processes; the statuses."""
    headers = {"Authorization": f"Bearer {key}"}
    slots = asyncio.Semaphore(IN_FLIGHT)
    statuses: list[int] = []
    faulted = asyncio.Event()
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=60)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def one(n: int) -> None:
            async with slots:
                served = pair.both[n % 2]
                try:
                    async with session.post(
                        f"{served.proxy}/api/logic/run/{phase}/{n}", headers=headers
                    ) as r:
                        await r.read()
                        statuses.append(r.status)
                except aiohttp.ClientError:
                    statuses.append(0)  # no answer: the process was stopped
                if fault is not None and len(statuses) >= FAULT_AFTER and not faulted.is_set():
                    faulted.set()
                    result = fault()
                    if asyncio.iscoroutine(result):
                        await result

        await asyncio.gather(*(one(n) for n in range(calls)))
    return statuses


async def setup_account(pair: Pair) -> tuple[str, str]:
    async with aiohttp.ClientSession() as session:
        status, body = await call(
            session, "POST", pair.a.admin + "/admin/accounts", json={"tier": "pro"}, headers=AUTH
        )
        assert status == 201, body
        account_id = str(body["id"])
        status, body = await call(
            session,
            "POST",
            f"{pair.a.admin}/admin/accounts/{account_id}/keys",
            json={"prefix": "user_ask_"},
            headers=AUTH,
        )
        assert status == 201, body
        return account_id, str(body["key"])


async def charged(admin: str, account_id: str) -> dict[str, int]:
    async with aiohttp.ClientSession() as session:
        status, body = await call(
            session, "GET", f"{admin}/admin/accounts/{account_id}/usage", headers=AUTH
        )
        assert status == 200, body
        return {m: int(body["meters"][m]["used"]) for m in ("logic_engine_calls", "api_calls")}


async def settled(
    pair: Pair, account_id: str, upstream: Upstream, statuses: list[int], *, phase: str = "burst"
) -> None:
    """After quiescence: charged == delivered == 2xx answers, seen from both processes."""

    async def ready() -> bool:
        async with aiohttp.ClientSession() as session:
            for served in pair.both:
                if served.process.poll() is not None:
                    continue
                status, _ = await call(session, "GET", served.admin + "/readyz")
                if status != 200:
                    return False
        return True

    # the gateways have found the store again and voided what they gave up on
    assert await until(ready, seconds=30), "the gateways did not recover"
    delivered = upstream.count(f"/api/logic/run/{phase}/")
    ok = sum(1 for s in statuses if 200 <= s < 300)
    for served in pair.both:
        if served.process.poll() is None:
            used = await eventually(
                lambda admin=served.admin: charged(admin, account_id),
                lambda u: u["logic_engine_calls"] == delivered,
                seconds=10,
            )
            assert used["logic_engine_calls"] == delivered, (
                f"{phase}: {delivered} calls reached the upstream, "
                f"{used['logic_engine_calls']} charged "
                f"({statuses.count(503)} answered 503)"
            )
            assert used["api_calls"] == delivered
    assert ok == delivered, f"{phase}: {ok} answered 2xx, {delivered} reached the upstream"


def pair_on(url: str, upstream: Upstream, tmp_path: Path, *, budget_ms: int = 250) -> object:
    return gateway_pair(
        url,
        tmp_path,
        # bursts of hundreds of calls at once measure the quotas, not the request rate
        policy=without_rates("agentstack", tmp_path),
        upstream=str(upstream.url),
        extra=("--store-timeout-ms", str(budget_ms)),
    )


async def dropped_subscription(pair: Pair, redis_server: RedisServer) -> None:
    """Pub/sub connections killed, then a tier changed and a key revoked through one process:
    the other honours both within the bound (its subscription comes back and clears)."""
    account_id, key = await setup_account(pair)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession() as session:
        for served in pair.both:  # both processes cache the key and the account
            status, _ = await call(
                session, "POST", served.proxy + "/api/logic/run/w", headers=headers
            )
            assert status == 200
        killed = redis_server.client().execute_command("CLIENT", "KILL", "TYPE", "pubsub")
        assert int(killed) >= 2
        status, _ = await call(
            session, "PUT", f"{pair.a.admin}/admin/accounts/{account_id}/tier",
            json={"tier": "free"}, headers=AUTH,
        )  # fmt: skip
        assert status == 200
        status, body = await call(
            session, "GET", f"{pair.a.admin}/admin/accounts/{account_id}", headers=AUTH
        )
        key_id = body["keys"][0]["id"]
        status, _ = await call(
            session, "DELETE", f"{pair.a.admin}/admin/keys/{key_id}", headers=AUTH
        )
        assert status == 200

        async def refused() -> bool:
            status, _ = await call(
                session, "POST", pair.b.proxy + "/api/logic/run/x", headers=headers
            )
            return status == 401

        assert await until(refused)
        status, body = await call(
            session, "GET", f"{pair.b.admin}/admin/accounts/{account_id}", headers=AUTH
        )
        assert body["tier"] == "free"


async def test_charged_equals_delivered_through_faults_on_one_redis(
    own_redis: RedisServer, upstream: Upstream, tmp_path: Path
) -> None:
    """One pair, one phase per fault (each on its own account and upstream path), and the
    pub/sub connections dropped; the gateway stopped mid-burst comes last, since it leaves
    one process."""
    with pair_on(own_redis.url, upstream, tmp_path) as pair:  # type: ignore[attr-defined]

        async def freeze() -> None:
            own_redis.freeze()
            await asyncio.sleep(1.0)  # the fault's length, not a wait for an outcome
            own_redis.thaw()

        def pause() -> None:
            own_redis.client().execute_command("CLIENT", "PAUSE", "1000", "ALL")

        def stop() -> None:
            pair.b.process.send_signal(signal.SIGTERM)

        for phase, fault, calls in (
            ("none", None, 400),
            ("freeze", freeze, CALLS),
            ("pause", pause, 500),
            ("stop", stop, 500),
        ):
            account_id, key = await setup_account(pair)
            statuses = await burst(pair, key, fault, calls=calls, phase=phase)
            if phase == "freeze":
                assert 503 in statuses  # the freeze was felt
            if phase == "stop":
                assert 0 in statuses or 503 in statuses  # some calls found the process gone

                async def exited() -> bool:
                    return pair.b.process.poll() is not None

                assert await until(exited, seconds=30)
            await settled(pair, account_id, upstream, statuses, phase=phase)
            if phase == "pause":
                await dropped_subscription(pair, own_redis)


async def test_frozen_cluster_charges_only_what_was_delivered(
    redis_cluster: RedisCluster, cluster_url: str, upstream: Upstream, tmp_path: Path
) -> None:
    with pair_on(cluster_url, upstream, tmp_path) as pair:  # type: ignore[attr-defined]
        account_id, key = await setup_account(pair)

        async def freeze() -> None:
            for node in redis_cluster.nodes:
                node.freeze()
            await asyncio.sleep(1.0)
            for node in redis_cluster.nodes:
                node.thaw()

        statuses = await burst(pair, key, freeze)
        assert 503 in statuses
        await settled(pair, account_id, upstream, statuses)


async def test_memory_burst_is_exact(upstream: Upstream, tmp_path: Path) -> None:
    with pair_on("memory", upstream, tmp_path, budget_ms=5000) as pair:  # type: ignore[attr-defined]
        account_id, key = await setup_account(pair)
        statuses = await burst(pair, key, None, calls=400)
        assert set(statuses) == {200}
        await settled(pair, account_id, upstream, statuses)
