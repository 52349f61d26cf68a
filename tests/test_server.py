"""`gateway serve` as a real process: 200 MB each way in flat memory, SIGTERM, --workers."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from tests.conftest import ADMIN_TOKEN, POLICIES, ROOT

MB = 1024 * 1024
BIG = 200 * MB
CHUNK = b"\xa5" * (256 * 1024)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayProcess:
    """`python -m gateway serve` from this worktree, on free loopback ports."""

    def __init__(self, tmp_path: Path, upstream: str, *args: str) -> None:
        self.port = free_port()
        self.admin_port = free_port()
        self.log = tmp_path / "gateway.log"
        self._log_file = self.log.open("wb")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gateway",
                "serve",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--admin-listen",
                f"127.0.0.1:{self.admin_port}",
                "--upstream",
                upstream,
                "--policy",
                str(POLICIES / "agentstack.yaml"),
                *args,
            ],
            cwd=ROOT,
            env={**os.environ, "PYTHONPATH": str(ROOT), "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN},
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def admin_url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.admin_port}{path}"

    async def ready(self, session: aiohttp.ClientSession) -> None:
        for _ in range(300):  # bounded: 15 s
            if self.proc.poll() is not None:
                raise AssertionError(f"gateway exited early:\n{self.log.read_text()}")
            try:
                async with session.get(self.admin_url("/healthz")) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
        raise AssertionError(f"gateway did not start:\n{self.log.read_text()}")

    async def key(self, session: aiohttp.ClientSession) -> dict[str, str]:
        """Headers for a new anonymous account, made through the admin API."""
        admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
        async with session.post(
            self.admin_url("/admin/accounts"), json={"tier": "anonymous"}, headers=admin
        ) as resp:
            assert resp.status == 201, await resp.text()
            account = (await resp.json())["id"]
        async with session.post(
            self.admin_url(f"/admin/accounts/{account}/keys"),
            json={"prefix": "anon_ask_"},
            headers=admin,
        ) as resp:
            assert resp.status == 201, await resp.text()
            return {"Authorization": f"Bearer {(await resp.json())['key']}"}

    def peak_rss(self) -> int:
        """The process's peak resident set size so far (VmHWM), in bytes."""
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
        raise AssertionError("no VmHWM in /proc status")

    async def exit_code(self) -> int:
        for _ in range(300):  # bounded: 15 s
            code = self.proc.poll()
            if code is not None:
                return code
            await asyncio.sleep(0.05)
        raise AssertionError("gateway did not exit")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log_file.close()


@pytest.fixture
def processes() -> Iterator[list[GatewayProcess]]:
    started: list[GatewayProcess] = []
    yield started
    for process in started:
        process.stop()


class BulkUpstream:
    """Counts uploaded bytes and generates downloads chunk by chunk, holding neither."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.gate.set()

    async def handle(self, request: web.Request) -> web.StreamResponse:
        path = request.path
        if path.startswith("/api/logic/upload"):
            size = 0
            async for chunk in request.content.iter_any():
                size += len(chunk)
            return web.json_response({"bytes": size})
        if path.startswith("/api/logic/download"):
            response = web.StreamResponse(headers={"Content-Length": str(BIG)})
            await response.prepare(request)
            for _ in range(BIG // len(CHUNK)):
                await response.write(CHUNK)
            await response.write_eof()
            return response
        if path.startswith("/api/logic/trickle"):
            # one chunk at once, then the rest over about a second once the gate opens
            response = web.StreamResponse(headers={"Content-Length": str(11 * len(CHUNK))})
            await response.prepare(request)
            await response.write(CHUNK)
            await self.gate.wait()
            for _ in range(10):
                await asyncio.sleep(0.1)
                await response.write(CHUNK)
            await response.write_eof()
            return response
        return web.json_response({"ok": True})


@pytest.fixture
async def bulk(aiohttp_server: Any) -> tuple[BulkUpstream, str]:
    state = BulkUpstream()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    server = await aiohttp_server(app)
    return state, str(server.make_url(""))


async def upload_body() -> AsyncIterator[bytes]:
    for _ in range(BIG // len(CHUNK)):
        yield CHUNK


@pytest.mark.slow
async def test_200_mb_each_way_in_flat_memory(
    tmp_path: Path, processes: list[GatewayProcess], bulk: tuple[BulkUpstream, str]
) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(f"limits:\n  max_body_bytes: {BIG + MB}\n")
    gateway = GatewayProcess(tmp_path, bulk[1], "--config", str(config))
    processes.append(gateway)
    async with aiohttp.ClientSession(auto_decompress=False) as session:
        await gateway.ready(session)
        headers = await gateway.key(session)
        # warm up both directions so the baseline holds every import and pool
        async with session.post(
            gateway.url("/api/logic/upload"), data=b"w" * MB, headers=headers
        ) as resp:
            assert resp.status == 200, await resp.text()
        baseline = gateway.peak_rss()

        async with session.post(
            gateway.url("/api/logic/upload"), data=upload_body(), headers=headers
        ) as resp:
            assert resp.status == 200, await resp.text()
            assert await resp.json() == {"bytes": BIG}
        uploaded_peak = gateway.peak_rss()

        received = 0
        async with session.get(gateway.url("/api/logic/download"), headers=headers) as resp:
            assert resp.status == 200
            async for chunk in resp.content.iter_any():
                received += len(chunk)
        assert received == BIG
        downloaded_peak = gateway.peak_rss()

    # the gateway held a bounded window of each body, never the body
    assert uploaded_peak - baseline < 64 * MB, (baseline, uploaded_peak)
    assert downloaded_peak - baseline < 64 * MB, (baseline, downloaded_peak)


async def test_sigterm_finishes_the_response_in_flight_then_exits_0(
    tmp_path: Path, processes: list[GatewayProcess], bulk: tuple[BulkUpstream, str]
) -> None:
    upstream, url = bulk
    upstream.gate.clear()
    gateway = GatewayProcess(tmp_path, url)
    processes.append(gateway)
    async with aiohttp.ClientSession() as session:
        await gateway.ready(session)
        headers = await gateway.key(session)
        async with session.get(gateway.url("/api/logic/trickle"), headers=headers) as resp:
            assert resp.status == 200
            body = await resp.content.readexactly(len(CHUNK))
            gateway.proc.send_signal(signal.SIGTERM)
            # while that response is still open, the listener is already closed
            refused = False
            for _ in range(200):  # bounded: 10 s
                try:
                    _, writer = await asyncio.open_connection("127.0.0.1", gateway.port)
                except ConnectionRefusedError:
                    refused = True
                    break
                writer.close()
                await asyncio.sleep(0.05)
            assert refused
            upstream.gate.set()
            body += await resp.read()
        assert body == CHUNK * 11
    assert await gateway.exit_code() == 0
    assert "shutting down" in gateway.log.read_text()


def test_several_workers_on_the_memory_store_are_refused() -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--workers",
            "2",
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--policy",
            str(POLICIES / "agentstack.yaml"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 2
    assert "--workers 2" in result.stderr
    assert "redis://" in result.stderr
