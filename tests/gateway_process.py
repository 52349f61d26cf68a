"""`gateway serve` as a real process for the multi-worker tests: start, wait ready, stop."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp

from tests.conftest import ADMIN_TOKEN, ROOT
from tests.redis_servers import free_port


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    proxy: str
    admin: str
    auth: dict[str, str] = field(default_factory=lambda: {"Authorization": f"Bearer {ADMIN_TOKEN}"})

    async def ready(self, session: aiohttp.ClientSession, seconds: float = 60) -> None:
        """Return once /readyz answers 200; fail if the process exits first."""
        async with asyncio.timeout(seconds):
            while True:
                assert self.process.poll() is None, "the gateway exited during start-up"
                try:
                    async with session.get(self.admin + "/readyz") as resp:
                        if resp.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def anonymous_account(self, used: int | None = None) -> tuple[str, dict[str, str]]:
        """A new anonymous account and key through the admin API, with ``used`` Logic Engine
        calls already spent when given: its id and the key's Authorization header."""
        async with aiohttp.ClientSession(headers=self.auth) as admin:
            resp = await admin.post(self.admin + "/admin/accounts", json={"tier": "anonymous"})
            account = (await resp.json())["id"]
            resp = await admin.post(
                f"{self.admin}/admin/accounts/{account}/keys", json={"prefix": "anon_ask_"}
            )
            key = (await resp.json())["key"]
            if used is not None:
                resp = await admin.put(
                    f"{self.admin}/admin/accounts/{account}/usage/logic_engine_calls",
                    json={"value": used},
                )
                assert resp.status == 200
        return account, {"Authorization": f"Bearer {key}"}


@contextmanager
def serve_gateway(
    *args: str, log_path: Path, env: Mapping[str, str] | None = None
) -> Iterator[Served]:
    """Run `python -m gateway serve ARGS` on free ports with this tree's code; SIGTERM at exit.

    ``env`` adds to (or overrides) the test's environment for the process."""
    proxy, admin = free_port(), free_port()
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--listen", f"127.0.0.1:{proxy}",
        "--admin-listen", f"127.0.0.1:{admin}",
        *args,
    ]  # fmt: skip
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN,
        **(env or {}),
    }
    with log_path.open("wb") as log:
        process = subprocess.Popen(command, cwd=ROOT, env=environ, stdout=log, stderr=log)
        try:
            yield Served(process, f"http://127.0.0.1:{proxy}", f"http://127.0.0.1:{admin}")
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout=10)
