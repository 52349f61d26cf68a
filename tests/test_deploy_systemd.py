"""deploy/systemd/gateway.service: systemd accepts it, it is hardened, it runs `gateway serve`."""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest

from gateway.policy.loader import load_policy
from tests.deploy_tools import DEPLOY, ROOT, run, serve_settings

UNIT = DEPLOY / "systemd" / "gateway.service"
# where the unit's comment installs the repository's files
INSTALLED = {
    "/etc/gateway/gateway.yaml": ROOT / "config" / "gateway.yaml",
    "/etc/gateway/policies/agentstack.yaml": ROOT / "policies" / "agentstack.yaml",
}
needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None, reason="systemd-analyze is not installed"
)


def sections() -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (systemd allows a key more than once)."""
    parsed: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for raw in UNIT.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if header := re.fullmatch(r"\[(\w+)\]", line):
            current = parsed.setdefault(header.group(1), {})
            continue
        key, sep, value = line.partition("=")
        assert sep, f"not KEY=VALUE: {line!r}"
        current.setdefault(key, []).append(value)
    return parsed


def service(key: str) -> str:
    (value,) = sections()["Service"][key]
    return value


@needs_systemd
def test_systemd_analyze_verify_finds_nothing_to_say(tmp_path: Path) -> None:
    # the gateway's install path does not exist here: verify checks that ExecStart is
    # executable, so the copy points it at one that is; every other line is verified as is
    program = shlex.split(service("ExecStart"))[0]
    copy = tmp_path / "gateway.service"
    copy.write_text(UNIT.read_text(encoding="utf-8").replace(program, "/bin/true"))
    assert run(["systemd-analyze", "verify", str(copy)]) == ""


@needs_systemd
def test_systemd_rates_the_sandbox_ok() -> None:
    output = run(["systemd-analyze", "security", "--offline=yes", "--no-pager", str(UNIT)])
    exposure = re.search(r"Overall exposure level for gateway\.service: ([\d.]+) (\w+)", output)
    assert exposure is not None, output
    assert float(exposure.group(1)) <= 2.0 and exposure.group(2) == "OK"


def test_unit_serves_the_gateway_as_an_unprivileged_user_and_restarts_it() -> None:
    command = shlex.split(service("ExecStart"))
    assert command[0].startswith("/") and command[0].endswith("/bin/gateway")
    assert command[1] == "serve"
    args = [str(INSTALLED.get(arg, arg)) for arg in command[2:]]
    settings = serve_settings(args)
    assert load_policy(settings.policy).name == "agentstack"
    assert service("User") not in ("root", "0")
    assert service("Restart") in ("on-failure", "always")
    assert service("ExecReload") == "/bin/kill -HUP $MAINPID"
    # the main process forwards SIGTERM to its workers; systemd waits past their grace
    assert service("KillMode") == "mixed"
    assert float(service("TimeoutStopSec")) > settings.shutdown_grace_seconds
    assert sections()["Install"]["WantedBy"] == ["multi-user.target"]


def test_unit_keeps_the_hardening_options() -> None:
    for key, value in {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "PrivateDevices": "yes",
        "CapabilityBoundingSet": "",
        "RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "SystemCallFilter": "@system-service",
    }.items():
        assert service(key) == value, key
