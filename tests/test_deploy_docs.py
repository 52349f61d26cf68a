"""docs/operations.md: its commands are ones the gateway has, its output is what they print,
and every alert's runbook link lands on a section."""

from __future__ import annotations

import re
import shlex

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


# what `gateway policy check` prints for the guide's candidate runs in
# tests/test_docs_examples.py, with every other console example of the docs


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
