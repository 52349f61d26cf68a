"""The docs cannot drift: every console example in README.md and docs/ is run against a live
gateway (`gateway serve` as the docs start it) and its output compared with what is shown.

The rules a doc follows (placeholders, abridged output, hidden setup) are in
tests/docs_console.py.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import secrets
import shlex
import signal
import sys
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from tests.conftest import ROOT
from tests.docs_console import PLACEHOLDER, Block, Command, parse
from tests.redis_servers import free_port

DOCS = ("README.md", "docs/lifecycle.md", "docs/operations.md")
#: headers a `curl -i` example may leave out: they say nothing about the gateway
UNSHOWN_HEADERS = {"date", "server", "content-length"}
SENTINEL = "\x00"


class Mismatch(AssertionError):
    pass


class StripeStandIn:
    """Stripe's Checkout Sessions endpoint, as the AgentIdP examples need it."""

    def __init__(self) -> None:
        self.count = 0

    async def create(self, request: web.Request) -> web.Response:
        await request.post()
        self.count += 1
        return web.json_response(
            {
                "id": f"cs_test_{self.count}",
                "object": "checkout.session",
                "url": f"https://checkout.stripe.com/c/pay/cs_test_{self.count}",
            }
        )


class DocRun:
    """One document's examples, in order, sharing shell variables and gateways."""

    def __init__(self, workdir: Path, stripe_base: str) -> None:
        self.workdir = workdir
        self.ports = {8080: free_port(), 9090: free_port(), 8000: free_port()}
        self.servers: list[asyncio.subprocess.Process] = []
        bin_dir = workdir / "bin"
        bin_dir.mkdir()
        # `gateway` and `python` in the docs are this tree's, with its dependencies (pyjwt...)
        python = shlex.quote(sys.executable)
        for name, command in (("gateway", f"{python} -m gateway"), ("python", python)):
            shim = bin_dir / name
            shim.write_text(f'#!/bin/sh\nexec {command} "$@"\n')
            shim.chmod(0o755)
        for name in ("policies", "tests", "config"):
            (workdir / name).symlink_to(ROOT / name)
        # on a terminal curl shows no progress meter; with a pipe it would, on stderr
        (workdir / ".curlrc").write_text("--silent\n--show-error\n")
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        self.env.update(
            PATH=f"{bin_dir}:{os.environ['PATH']}",
            PYTHONPATH=str(ROOT),
            GATEWAY_ADMIN_TOKEN=secrets.token_hex(32),
            GATEWAY_STRIPE_API_BASE=stripe_base,
            CURL_HOME=str(workdir),
        )

    def local(self, text: str) -> str:
        """The docs' fixed addresses, moved to this run's free ports."""
        for port, free in self.ports.items():
            text = re.sub(rf"\b(127\.0\.0\.1|localhost):{port}\b", rf"\g<1>:{free}", text)
        return text

    async def shell(self, script: str) -> str:
        """Run ``script`` in bash with the run's variables; keep what it assigns."""
        env_file = self.workdir / "env"
        wrapper = 'set -a; eval "$1"; env -0 > "$2"'
        process = await asyncio.create_subprocess_exec(
            "bash", "-c", wrapper, "bash", script, str(env_file),
            cwd=self.workdir, env=self.env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        )  # fmt: skip
        async with asyncio.timeout(300):
            out, _ = await process.communicate()
        entries = env_file.read_bytes().split(b"\0")
        self.env = dict(e.decode().split("=", 1) for e in entries if b"=" in e)
        return out.decode()

    async def serve(self, command: Command) -> str:
        """Start `gateway serve ...` on the run's ports (stopping the one before, as the docs
        say); what it printed once ready."""
        await self.stop()
        flags = (
            f" --listen 127.0.0.1:{self.ports[8080]} --admin-listen 127.0.0.1:{self.ports[9090]}"
        )
        if "--demo" in command.shell:
            flags += f" --demo-listen 127.0.0.1:{self.ports[8000]}"
        out = self.workdir / f"serve-{len(self.servers)}.out"
        with out.open("wb") as sink:
            process = await asyncio.create_subprocess_exec(
                "bash", "-c", "exec " + self.local(command.shell) + flags,
                cwd=self.workdir, env=self.env, stdout=sink, stderr=asyncio.subprocess.DEVNULL,
            )  # fmt: skip
        self.servers.append(process)
        shown = len([line for line in command.output if line.strip()])
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while True:
                assert process.returncode is None, f"{command.where}: the gateway exited"
                try:
                    async with session.get(f"http://127.0.0.1:{self.ports[9090]}/readyz") as r:
                        printed = out.read_text(encoding="utf-8")
                        if r.status == 200 and len(printed.strip().splitlines()) >= shown:
                            return printed
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)

    async def stop(self) -> None:
        for process in self.servers:
            if process.returncode is None:
                process.send_signal(signal.SIGTERM)
                async with asyncio.timeout(30):
                    await process.wait()
        self.servers = []

    # -- comparing ---------------------------------------------------------------------------

    def bind(self, name: str, value: str, where: str) -> None:
        """An UPPERCASE placeholder sets its variable, or must equal it once set."""
        if not name.isupper():
            return
        if name in self.env and self.env[name] != value:
            raise Mismatch(f"{where}: <{name}> is {value!r}, but ${name} is {self.env[name]!r}")
        self.env[name] = value

    def match_text(self, shown: str, actual: str, where: str) -> None:
        names: list[str] = []
        pattern = ""
        last = 0
        for found in PLACEHOLDER.finditer(shown):
            pattern += re.escape(shown[last : found.start()]) + "(.+?)"
            names.append(found.group(1))
            last = found.end()
        pattern += re.escape(shown[last:])
        matched = re.fullmatch(pattern, actual, re.DOTALL)
        if matched is None:
            raise Mismatch(f"{where}: shown {shown!r}, got {actual!r}")
        for name, value in zip(names, matched.groups(), strict=True):
            self.bind(name, value, where)

    def match_json(self, shown: Any, actual: Any, abridged: bool, where: str) -> None:
        if isinstance(shown, str) and shown.startswith(SENTINEL):
            value = actual if isinstance(actual, str) else json.dumps(actual)
            self.bind(shown[1:], value, where)
        elif isinstance(shown, str) and PLACEHOLDER.search(shown):
            if not isinstance(actual, str):
                raise Mismatch(f"{where}: shown {shown!r}, got {actual!r}")
            self.match_text(shown, actual, where)
        elif isinstance(shown, dict):
            if not isinstance(actual, dict):
                raise Mismatch(f"{where}: shown an object, got {actual!r}")
            hidden = set(actual) - set(shown)
            if hidden and not abridged:
                raise Mismatch(f"{where}: fields not shown: {sorted(hidden)} (or say abridged)")
            for key, value in shown.items():
                if key not in actual:
                    raise Mismatch(f"{where}: shown field {key!r} is not in {actual!r}")
                self.match_json(value, actual[key], abridged, f"{where} {key}")
        elif isinstance(shown, list):
            if not isinstance(actual, list) or len(actual) != len(shown):
                raise Mismatch(f"{where}: shown {shown!r}, got {actual!r}")
            for index, (one, other) in enumerate(zip(shown, actual, strict=True)):
                self.match_json(one, other, abridged, f"{where}[{index}]")
        elif shown != actual or type(shown) is not type(actual):
            raise Mismatch(f"{where}: shown {shown!r}, got {actual!r}")

    def match_body(self, shown: list[str], actual: str, abridged: bool, where: str) -> None:
        text = "\n".join(shown).strip()
        actual = actual.strip()
        parsed = _as_json(text)
        if parsed is not None:
            try:
                got = json.loads(actual)
            except ValueError:
                raise Mismatch(f"{where}: shown JSON, got {actual!r}") from None
            self.match_json(parsed, got, abridged, where)
            return
        if not text and abridged:
            return
        shown_lines, got_lines = text.splitlines(), actual.splitlines()
        if abridged:
            got_lines = got_lines[: len(shown_lines)]
        if len(shown_lines) != len(got_lines):
            raise Mismatch(f"{where}: shown {len(shown_lines)} lines, got:\n{actual}")
        for one, other in zip(shown_lines, got_lines, strict=True):
            self.match_text(one.rstrip(), other.rstrip(), where)

    def match_http(self, shown: list[str], actual: str, abridged: bool, where: str) -> None:
        head, _, body = actual.replace("\r\n", "\n").partition("\n\n")
        status, *header_lines = head.splitlines()
        if shown[0] != status.strip():
            raise Mismatch(f"{where}: shown {shown[0]!r}, got {status!r}")
        headers = [line.split(":", 1) for line in header_lines]
        got = {name.strip().lower(): value.strip() for name, value in headers}
        blank = shown.index("") if "" in shown else len(shown)
        seen = set()
        for line in shown[1:blank]:
            name, _, value = line.partition(":")
            seen.add(name.strip().lower())
            if name.strip().lower() not in got:
                raise Mismatch(f"{where}: header {name} is not in the response: {got}")
            self.match_text(value.strip(), got[name.strip().lower()], f"{where} {name}")
        missing = set(got) - seen - UNSHOWN_HEADERS
        if missing and not abridged:
            raise Mismatch(
                f"{where}: headers not shown: {sorted(missing)} (or say abridged)\n{head}"
            )
        self.match_body(shown[blank + 1 :], body, abridged, where)

    async def run(self, block: Block) -> None:
        for script in block.setup:
            await self.shell(self.local(script))
        for command in block.commands:
            shown = [self.local(line) for line in command.output]
            while shown and not shown[-1].strip():
                shown.pop()
            if command.shell.startswith("gateway serve"):
                actual = await self.serve(command)
            else:
                actual = await self.shell(self.local(command.shell))
            if shown and shown[0].startswith("HTTP/"):
                self.match_http(shown, actual, command.abridged, command.where)
            else:
                self.match_body(shown, actual, command.abridged, command.where)


def _as_json(text: str) -> Any:
    """The shown text as JSON, placeholders standing for any value; None if it is not JSON."""
    if not text.startswith(("{", "[")):
        return None
    quoted = re.sub(r'"<([A-Za-z][A-Za-z0-9_-]*)>"', r'"\\u0000\1"', text)
    bare = re.sub(r"(?<=[:\[,] )<([A-Za-z][A-Za-z0-9_-]*)>(?=\s*[,}\]\n])", r'"\\u0000\1"', quoted)
    bare = re.sub(r"(?<=: )<([A-Za-z][A-Za-z0-9_-]*)>$", r'"\\u0000\1"', bare, flags=re.M)
    try:
        return json.loads(bare)
    except ValueError:
        return None


@pytest.fixture
async def stripe_base(aiohttp_server: Any) -> str:
    app = web.Application()
    app.router.add_post("/v1/checkout/sessions", StripeStandIn().create)
    server: TestServer = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


@pytest.mark.slow
@pytest.mark.timeout(900)  # README's billing example makes 11,000 real calls
@pytest.mark.parametrize("doc", DOCS)
async def test_console_examples_answer_as_shown(doc: str, tmp_path: Path, stripe_base: str) -> None:
    blocks = parse(ROOT / doc, ROOT)
    assert blocks, f"{doc} has no console examples"
    run = DocRun(tmp_path, stripe_base)
    try:
        for block in blocks:
            if block.skip is not None:
                continue
            await run.run(block)
    finally:
        await run.stop()


def test_skipped_blocks_say_why() -> None:
    for doc in DOCS:
        for block in parse(ROOT / doc, ROOT):
            assert block.skip is None or len(block.skip) > 10, block.where
