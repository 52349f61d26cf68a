"""A tier's ``leases`` in `gateway policy check`, `show` and `diff`."""

from __future__ import annotations

from pathlib import Path

from gateway.policy.diff import policy_diff
from gateway.policy.lint import lint
from gateway.policy.loader import parse_policy
from gateway.policy.source import load_source
from gateway.policy.table import tier_table
from tests.ops_policy import ops_policy

LEASED = ops_policy(pro_calls=100_000).replace(
    "    limits: {calls: 100000}", "    limits: {calls: 100000}\n    leases: {calls: 500}", 1
)


def test_a_tier_leases_a_counter() -> None:
    policy = parse_policy(LEASED)
    assert (policy.tiers["pro"].lease("calls"), policy.tiers["free"].lease("calls")) == (500, 0)


def test_show_lists_leases_only_when_a_tier_has_one() -> None:
    assert (
        tier_table(parse_policy(LEASED)).splitlines()[-1]
        == "| Calls (leased per process) |  | 500 |"
    )
    assert "leased" not in tier_table(parse_policy(ops_policy(pro_calls=100_000)))


def test_diff_names_a_changed_lease_per_tier() -> None:
    old, new = parse_policy(ops_policy(pro_calls=100_000)), parse_policy(LEASED)
    assert policy_diff(old, new) == [("pro", "lease calls", "—", "500 per process")]


def test_check_warns_of_a_lease_near_the_limit(tmp_path: Path) -> None:
    text = LEASED.replace("leases: {calls: 500}", "leases: {calls: 20000}")
    found = lint(parse_policy(text), load_source(_write(tmp_path, text)))
    assert [(f.severity, ".".join(f.path)) for f in found] == [
        ("warning", "tiers.pro.leases.calls")
    ]
    assert lint(parse_policy(LEASED), load_source(_write(tmp_path, LEASED))) == []


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "leased.yaml"
    path.write_text(text)
    return path
