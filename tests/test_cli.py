"""The first hour with the command: --version, usage lines, defaults in --help, the shipped
policies found from any directory."""

from __future__ import annotations

import argparse
import asyncio
import importlib.metadata
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tomllib
from pathlib import Path

import aiohttp
import pytest

from gateway.cli import _parser
from gateway.shipped import locate
from tests.conftest import ROOT
from tests.redis_servers import free_port


def gateway_cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_version_is_the_packages() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    version = declared["project"]["version"]
    assert importlib.metadata.version("quota-gateway") == version
    result = gateway_cli("--version")
    assert result.returncode == 0
    assert result.stdout == f"gateway {version}\n"


@pytest.mark.parametrize(
    ("args", "usage"),
    [
        (("serve", "--listn", ":8080"), "usage: gateway serve "),
        (
            ("policy", "check", "--strictly", "policies/agentstack.yaml"),
            "usage: gateway policy check ",
        ),
        (("explain", "GET", "/api/x", "--tire", "free"), "usage: gateway explain "),
    ],
)
def test_a_wrong_flag_gets_its_subcommands_usage(args: tuple[str, ...], usage: str) -> None:
    result = gateway_cli(*args)
    assert result.returncode == 2
    assert result.stderr.startswith(usage), result.stderr
    assert f"error: unrecognized arguments: {args[-2]}" in result.stderr


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    found = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += _parsers(sub)
    return found


#: options with nothing to default to: switches, and files that are optional
NO_DEFAULT = {"help", "version", "config", "demo", "json", "require_store", "strict"}  # switches


def test_every_option_with_a_default_shows_it_in_help() -> None:
    missing = []
    for parser in _parsers(_parser()):
        text = " ".join(parser.format_help().split())
        for action in parser._actions:
            if not action.option_strings or action.required or action.dest in NO_DEFAULT:
                continue
            if (parser.prog, action.dest) == ("gateway explain", "policy"):
                continue  # without it, explain asks a running gateway instead
            if action.default is not None:
                shown = f"(default: {action.default})" in text
            else:  # the default lives in Settings or the policy, and the help says it
                shown = "(default: " in (action.help or "")
            if not shown:
                missing.append(f"{parser.prog} {action.option_strings[0]}")
    assert missing == []


def test_serve_help_names_the_real_defaults() -> None:
    result = gateway_cli("serve", "--help")
    text = " ".join(result.stdout.split())
    for shown in (
        "(default: 127.0.0.1:8080)",
        "(default: 127.0.0.1:9090)",
        "(default: policies/agentstack.yaml",
        "(default: memory)",
        "(default: 250)",
        "(default: closed)",
        "(default: 1)",
        "(default: 127.0.0.1:8000)",
        "--require-store",
    ):
        assert shown in text, shown


def test_policy_help_lists_every_action() -> None:
    text = gateway_cli("--help").stdout
    assert "check, show, diff or replay policy files" in text
    listed = gateway_cli("policy", "--help").stdout
    for action in ("check", "show", "diff", "replay"):
        assert f"    {action} " in listed, action


def test_shipped_files_are_found_from_any_directory(tmp_path: Path) -> None:
    # the repository-relative name of a shipped file, from a directory that has no such file
    result = gateway_cli("policy", "check", "policies/agentidp.yaml", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: policies/agentidp.yaml: policy 'agentidp'")
    # a file of that name where the command runs wins over the shipped one
    (tmp_path / "policies").mkdir()
    own = tmp_path / "policies" / "agentidp.yaml"
    own.write_text("name: [", encoding="utf-8")
    result = gateway_cli("policy", "check", "policies/agentidp.yaml", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.startswith("error: policies/agentidp.yaml:1")
    # a name that is not shipped is reported as typed
    assert locate("policies/nope.yaml") == "policies/nope.yaml"
    assert Path(locate("config/gateway.yaml")).samefile(ROOT / "config" / "gateway.yaml")


async def test_serve_finds_the_default_policy_from_any_directory(tmp_path: Path) -> None:
    proxy, admin = free_port(), free_port()
    log = tmp_path / "gateway.log"
    command = [
        sys.executable, "-m", "gateway", "serve",
        "--listen", f"127.0.0.1:{proxy}", "--admin-listen", f"127.0.0.1:{admin}",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    with log.open("wb") as out:
        process = subprocess.Popen(command, cwd=tmp_path, env=env, stdout=out, stderr=out)
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while True:
                assert process.poll() is None, log.read_text(encoding="utf-8")
                try:
                    async with session.get(f"http://127.0.0.1:{admin}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.1)
    finally:
        process.terminate()
        process.wait(timeout=20)
    assert "policy agentstack" in log.read_text(encoding="utf-8")


@pytest.mark.parametrize("own_token", [False, True])
async def test_make_demo_prints_its_admin_token_and_a_working_admin_example(
    tmp_path: Path, own_token: bool
) -> None:
    if shutil.which("make") is None:
        pytest.skip("make is not installed")
    # this tree's gateway stands in for the venv's, so make builds nothing
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    python = shlex.quote(sys.executable)
    for name, command in (("gateway", f"{python} -m gateway"), ("python", python)):
        (bin_dir / name).write_text(f'#!/bin/sh\nexec {command} "$@"\n')
        (bin_dir / name).chmod(0o755)
    proxy, admin, demo = free_port(), free_port(), free_port()
    flags = f"--listen 127.0.0.1:{proxy} --admin-listen 127.0.0.1:{admin} "
    flags += f"--demo-listen 127.0.0.1:{demo}"
    env = {k: v for k, v in os.environ.items() if k != "GATEWAY_ADMIN_TOKEN"}
    env["PYTHONPATH"] = str(ROOT)
    mine = "my-own-admin-token-" + "x" * 32
    if own_token:
        env["GATEWAY_ADMIN_TOKEN"] = mine
    out = tmp_path / "make.out"
    with out.open("wb") as sink:
        process = subprocess.Popen(
            ["make", "-s", "--no-print-directory", "-C", str(ROOT), "demo",
             f"BIN={bin_dir}", f"VENV={tmp_path / 'venv'}", f"DEMO_FLAGS={flags}"],
            env=env, stdout=sink, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as session, asyncio.timeout(60):
            while "Demo account" not in out.read_text(encoding="utf-8"):
                assert process.poll() is None, out.read_text(encoding="utf-8")
                await asyncio.sleep(0.1)
            lines = out.read_text(encoding="utf-8").splitlines()
            example = next(line for line in lines if "/admin/accounts/1/usage" in line)
            found = re.search(r'"Authorization: Bearer ([^"]+)" (http://\S+)', example)
            assert found is not None, example
            shown, url = found.groups()
            if own_token:
                assert lines[0] == "Admin API token: your GATEWAY_ADMIN_TOKEN"
                assert shown == "$GATEWAY_ADMIN_TOKEN"
                assert mine not in out.read_text(encoding="utf-8")
                token = mine
            else:
                assert lines[0] == f"Admin API token for this run (GATEWAY_ADMIN_TOKEN): {shown}"
                assert re.fullmatch(r"[0-9a-f]{64}", shown), shown  # 32 random bytes
                token = shown
            url = url.replace("127.0.0.1:9090", f"127.0.0.1:{admin}")
            async with session.get(url, headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200, await resp.text()
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
