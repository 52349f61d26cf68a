"""`gateway policy diff`: per tier, the limits, features, routes and error bodies that change."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.diff import markdown, policy_diff
from gateway.policy.loader import parse_policy
from tests.ops_policy import ops_policy


def test_a_diff_names_each_change_per_tier() -> None:
    old = parse_policy(ops_policy())
    new_text = ops_policy(free_calls=5, route_shadow="shadow: true").replace(
        "features: [export]", "features: []", 1
    )
    new_text = new_text.replace(
        "routes:",
        "responses:\n  quota_exceeded:\n    status: 429\n    body: {error: Slow down}\nroutes:",
    )
    rows = policy_diff(old, parse_policy(new_text))
    table = {(tier, change): (a, b) for tier, change, a, b in rows}
    assert table[("free", "limit calls")] == ("3", "5")
    assert ("pro", "limit calls") not in table
    assert table[("pro", "feature export")] == ("enabled", "disabled")
    assert table[("pro", "route export")] == (
        "* /api/export/**: allowed, costs calls+1",
        "* /api/export/**: needs export",
    )
    assert table[("free", "route api")][1] == "* /api/**: allowed, costs calls+1 (shadow)"
    old_body, new_body = table[("free", "response quota_exceeded")]
    assert '"Limit exceeded"' in old_body
    assert new_body == '{"body": {"error": "Slow down"}, "headers": {}, "status": 429}'
    assert ("free", "feature export") not in table  # disabled before and after


def test_the_diff_command_prints_a_markdown_table(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    old, new = tmp_path / "old.yaml", tmp_path / "new.yaml"
    old.write_text(ops_policy())
    new.write_text(ops_policy(free_calls=10))
    assert main(["policy", "diff", str(old), str(new)]) == 0
    assert capsys.readouterr().out == (
        "| Tier | Change | Old | New |\n|---|---|---|---|\n| free | limit calls | 3 | 10 |\n"
    )
    assert main(["policy", "diff", str(old), str(old)]) == 0
    assert capsys.readouterr().out == "No changes.\n"
    assert markdown([("a|b", "x", "1", "2")]) == (
        "| Tier | Change | Old | New |\n|---|---|---|---|\n| a\\|b | x | 1 | 2 |\n"
    )
