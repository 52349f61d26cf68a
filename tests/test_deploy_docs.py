"""docs/operations.md: its commands are ones the gateway has, its output is what they print,
and every alert's runbook link lands on a section."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import _parser
from tests.deploy_tools import ROOT
from tests.promql import alert_rules

GUIDE = ROOT / "docs" / "operations.md"


def guide() -> str:
    return GUIDE.read_text(encoding="utf-8")


def gateway_commands() -> list[list[str]]:
    """Every `gateway ...` command line in the guide's shell and console blocks."""
    commands = []
    for block in re.findall(r"```(?:sh|console)\n(.*?)```", guide(), re.DOTALL):
        for line in block.splitlines():
            line = line.removeprefix("$ ").split("#", 1)[0].strip()
            if line.startswith("gateway "):
                commands.append(shlex.split(line)[1:])
    return commands


def parses(args: list[str]) -> bool:
    try:
        _parser().parse_args(args)
    except SystemExit:
        return False
    return True


def test_every_gateway_command_in_the_guide_is_one_the_gateway_has(
    capsys: pytest.CaptureFixture[str],
) -> None:
    commands = gateway_commands()
    assert any(args[:2] == ["policy", "check"] for args in commands)
    for step in (["policy", "diff"], ["policy", "replay"]):
        assert any(args[:2] == step for args in commands), step
    for args in commands:
        assert parses(args), f"the guide runs `gateway {shlex.join(args)}`"
    capsys.readouterr()  # argparse's usage messages


def policy_check(directory: Path) -> str:
    done = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "check", "--strict", "candidate.yaml"],
        cwd=directory,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return (done.stdout + done.stderr).strip()


def test_policy_check_prints_what_the_guide_shows(tmp_path: Path) -> None:
    block = r"```console\n\$ gateway policy check --strict candidate.yaml\n(.*?)```"
    shown = re.search(block, guide(), re.DOTALL)
    assert shown is not None
    error, _, ok = shown.group(1).strip().splitlines()
    policy = (ROOT / "policies" / "agentstack.yaml").read_text(encoding="utf-8")
    candidate = tmp_path / "candidate.yaml"
    # the guide's typo: FREE's Logic Engine calls written as "lots"
    free = policy.index("\n  free:\n")
    at = policy.index("logic_engine_calls: 10000", free)
    candidate.write_text(policy[:at] + "logic_engine_calls: lots" + policy[at + 25 :])
    assert policy_check(tmp_path) == error
    candidate.write_text(policy)
    assert policy_check(tmp_path) == ok


def github_anchor(heading: str) -> str:
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_every_alert_s_runbook_is_a_section_of_the_guide() -> None:
    anchors = {github_anchor(h) for h in re.findall(r"^#+ (.+)$", guide(), re.MULTILINE)}
    for rule in alert_rules():
        if "alert" in rule:
            path, _, anchor = rule["annotations"]["runbook"].partition("#")
            assert (ROOT / path).resolve() == GUIDE.resolve(), rule["alert"]
            assert anchor == github_anchor(rule["alert"]), rule["alert"]
            assert anchor in anchors, f"no section {rule['alert']} in {GUIDE.name}"
