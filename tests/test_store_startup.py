"""Starting with the store down: said once, its return said once, or a refusal to start."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import aiohttp

from gateway.metering.keys import INVALIDATION_CHANNEL
from gateway.policy.reload import RELOAD_CHANNEL
from tests.conftest import ROOT
from tests.gateway_process import Served, serve_gateway
from tests.redis_servers import RedisServer, free_port


async def _log_line(log: Path, served: Served, text: str, seconds: float = 30) -> str:
    """The first log line holding ``text``, once the gateway has written it."""
    async with asyncio.timeout(seconds):
        while True:
            for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
                if text in line:
                    return line
            assert served.process.poll() is None, log.read_text(encoding="utf-8")
            await asyncio.sleep(0.05)


async def _status(session: aiohttp.ClientSession, url: str) -> int:
    async with session.get(url) as resp:
        return resp.status


async def test_a_store_down_at_start_is_logged_once_and_its_return_once(tmp_path: Path) -> None:
    late = RedisServer(tmp_path / "late")  # its port is free: nothing listens there yet
    log = tmp_path / "gateway.log"
    try:
        with serve_gateway("--store", late.url, log_path=log) as served:
            async with aiohttp.ClientSession() as session:
                line = await _log_line(log, served, "store unavailable at start")
                assert "WARNING" in line and "failing closed until it answers" in line
                # up and answering, but not ready, and metered requests are refused, not hung
                await _log_line(log, served, "gateway listening on")
                assert await _status(session, served.admin + "/readyz") == 503
                async with session.get(
                    served.proxy + "/api/logic/run",
                    headers={"Authorization": "Bearer anon_ask_" + "a" * 32},
                ) as resp:
                    assert resp.status == 503
                    assert (await resp.json())["code"] == "STORE_UNAVAILABLE"
                late.start()
                await _log_line(log, served, "store answers again")
                await served.ready(session)
                async with session.post(
                    served.admin + "/admin/accounts", json={"tier": "free"}, headers=served.auth
                ) as resp:
                    assert resp.status == 201
                # the subscriptions that waited for the store are made now
                async with asyncio.timeout(30):
                    channels = (INVALIDATION_CHANNEL, RELOAD_CHANNEL)
                    while late.client().pubsub_numsub(*channels) != [
                        (c.encode(), 1) for c in channels
                    ]:
                        await asyncio.sleep(0.05)
    finally:
        late.kill()
    warnings = [line for line in log.read_text(encoding="utf-8").splitlines() if "WARNING" in line]
    # one line when it went, one when it came back: no per-retry lines from the subscribers
    assert len(warnings) == 2, warnings
    assert "store unavailable at start" in warnings[0]
    assert "store answers again" in warnings[1]


def _serve(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--listen", f"127.0.0.1:{free_port()}",
        "--admin-listen", f"127.0.0.1:{free_port()}",
        *args,
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_require_store_exits_2_when_the_store_is_down(tmp_path: Path) -> None:
    closed = f"redis://127.0.0.1:{free_port()}/0"
    result = _serve("--store", closed, "--require-store")
    assert result.returncode == 2, result.stderr
    assert "the store does not answer at start" in result.stderr
    assert "not starting, as require_store is set" in result.stderr
    # the same from the config file
    config = tmp_path / "gateway.yaml"
    config.write_text(
        f"store: {closed}\nrequire_store: true\npolicy: {ROOT / 'policies' / 'agentstack.yaml'}\n",
        encoding="utf-8",
    )
    result = _serve("--config", str(config))
    assert result.returncode == 2, result.stderr
    assert "not starting, as require_store is set" in result.stderr


async def test_require_store_starts_when_the_store_answers(
    tmp_path: Path, redis_server: RedisServer
) -> None:
    log = tmp_path / "gateway.log"
    with serve_gateway("--store", redis_server.url, "--require-store", log_path=log) as served:
        async with aiohttp.ClientSession() as session:
            await served.ready(session)
    assert "store unavailable" not in log.read_text(encoding="utf-8")
