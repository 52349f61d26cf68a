"""Hundreds of stalled sockets against a real `gateway serve` process: a healthy caller
still gets its answer, even when the process starts under a small open-file limit."""

from __future__ import annotations

import asyncio
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import ADMIN_TOKEN, JWT_SECRET, ROOT
from tests.redis_servers import free_port

STALLED = 260
# the soft limit some systems give a service; the gateway lifts it to the hard limit
SOFT = 256


def _small_open_file_limit() -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (SOFT, hard))


async def test_stalled_sockets_leave_room_for_a_healthy_caller(tmp_path: Path) -> None:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    assert hard == resource.RLIM_INFINITY or hard > 4 * STALLED, "the test needs a hard limit"
    proxy, admin = free_port(), free_port()
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        "GATEWAY_JWT_SECRET": JWT_SECRET,
    }
    log = (tmp_path / "gateway.log").open("wb")
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=log, stderr=log, preexec_fn=_small_open_file_limit
    )
    writers: list[asyncio.StreamWriter] = []
    try:
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as session:
            async with asyncio.timeout(60):
                while True:
                    assert process.poll() is None, (tmp_path / "gateway.log").read_text()
                    try:
                        async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                            if resp.status == 200:
                                break
                    except aiohttp.ClientError:
                        pass
                    await asyncio.sleep(0.1)
            head = (
                b"POST /api/auth/login HTTP/1.1\r\nHost: gateway\r\n"
                b"Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{"
            )
            for _ in range(STALLED):
                _, writer = await asyncio.open_connection("127.0.0.1", proxy)
                writer.write(head)
                writers.append(writer)
            await asyncio.gather(*(w.drain() for w in writers))
            async with session.post(
                f"http://127.0.0.1:{proxy}/api/auth/login",
                json={"email": "nobody@example.com", "password": "wrong password"},
            ) as resp:
                assert resp.status == 401, await resp.text()
    finally:
        for writer in writers:
            writer.close()
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()
