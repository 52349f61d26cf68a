"""`gateway policy diff`: per tier, the limits, features, routes and error bodies that change."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.diff import markdown, policy_diff
from gateway.policy.loader import parse_policy
from tests.conftest import POLICIES
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


AGENTSTACK = (POLICIES / "agentstack.yaml").read_text(encoding="utf-8")
ADVANCED = """\
  - name: advanced-webhooks
    path: /api/webhooks/advanced/**
    features: [webhooks, advanced_webhooks]
    consume: {api_calls: 1, request_rate: 1}
"""

# an edit of the shipped policy that once diffed as "No changes." -> (change, old, new)
EDITS: dict[str, tuple[str, str, str, str, str]] = {
    "meter period": (
        "    period: month\n    scope: account\n    title: API Calls",
        "    period: day\n    scope: account\n    title: API Calls",
        "meters.api_calls.period",
        "month",
        "day",
    ),
    "meter scope": (
        "    scope: account\n    title: Triggers",
        "    scope: project\n    title: Triggers",
        "meters.triggers.scope",
        "account",
        "project",
    ),
    "default tier": (
        "default_tier: free",
        "default_tier: enterprise",
        "default_tier",
        "free",
        "enterprise",
    ),
    "overage price": (
        "api_calls: {switch: api_calls, price: $0.50",
        "api_calls: {switch: api_calls, price: $0.05",
        "billing.overage.api_calls.price",
        "$0.50",
        "$0.05",
    ),
    "tier price": (
        "starter: $29.00",
        "starter: $2.00",
        "billing.tier_prices.starter",
        "$29.00",
        "$2.00",
    ),
    "release": (
        "    release: {triggers: 1}\n",
        "",
        "routes.delete-trigger.release",
        '[["triggers", 1]]',
        "[]",
    ),
    "body meter": (
        "    body_meter: json_storage\n",
        "",
        "routes.json-data-write.body_meter",
        "json_storage",
        "null",
    ),
    "refund": (
        "  - name: logic\n    path: /api/logic/**\n",
        "  - name: logic\n    path: /api/logic/**\n    refund: never\n",
        "routes.logic.refund",
        "unanswered",
        "never",
    ),
    "never_for": (
        "never_for: [anonymous]",
        "never_for: [anonymous, free]",
        "billing.never_overage",
        '["anonymous"]',
        '["anonymous", "free"]',
    ),
    "key type removed": (
        "    - prefix: user_ask_      # user keys a registered account creates "
        "(POST /api/user-api-keys)\n      kind: user\n",
        "",
        "key_types.user_ask_",
        "present",
        "—",
    ),
    "project_param": (
        "    path: /api/projects/{id}/activate\n    project_param: id\n",
        "    path: /api/projects/{id}/activate\n",
        "routes.activate-project.project_param",
        "id",
        "null",
    ),
    "store failure mode": (
        "    title: FREE\n",
        "    title: FREE\n    store_failure_mode: open\n",
        "tiers.free.store_failure_mode",
        "null",
        "open",
    ),
}


@pytest.mark.parametrize("edit", list(EDITS))
def test_every_field_that_changes_a_decision_or_a_price_is_diffed(edit: str) -> None:
    old_text, new_text, change, before, after = EDITS[edit]
    assert old_text in AGENTSTACK
    rows = policy_diff(
        parse_policy(AGENTSTACK), parse_policy(AGENTSTACK.replace(old_text, new_text, 1))
    )
    assert rows == [("(all)", change, before, after)]


def test_route_order_is_diffed_by_which_requests_now_match_another_route() -> None:
    moved = AGENTSTACK.replace(ADVANCED, "").replace(
        "  - name: custom-analytics\n", ADVANCED + "  - name: custom-analytics\n"
    )
    exact, variants = policy_diff(parse_policy(AGENTSTACK), parse_policy(moved))
    tier, change, before, after = exact
    assert (tier, before, after) == ("(all)", "advanced-webhooks", "webhooks")
    assert change.startswith("requests matched by another route: GET /api/webhooks/advanced")
    # other spellings are refused as variants of the route that now comes first
    assert variants[2:] == ("variant of advanced-webhooks (400)", "variant of webhooks (400)")
    # a swap of two routes no request can reach both of changes nothing
    swapped = AGENTSTACK.replace(ADVANCED, "").replace(
        "  - name: payments\n", ADVANCED + "  - name: payments\n"
    )
    assert policy_diff(parse_policy(AGENTSTACK), parse_policy(swapped)) == []


def test_a_renamed_tier_is_diffed() -> None:
    renamed = AGENTSTACK.replace("  pro:\n    title: PRO", "  profesional:\n    title: PRO")
    renamed = renamed.replace("pro: $199.00", "profesional: $199.00").replace(
        "pro: 90,", "profesional: 90,"
    )
    rows = policy_diff(parse_policy(AGENTSTACK), parse_policy(renamed))
    assert ("pro", "tier", "present (PRO)", "—") in rows
    assert ("profesional", "tier", "—", "present (PRO)") in rows
