"""The shipped policies held against the seed documents' tables, number by number."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from gateway.policy.loader import load_policy
from gateway.policy.model import Policy
from tests.conftest import POLICIES, ROOT

# Verbatim from seeds/001_2d06962ca44b9781.txt (AgentStack, all seven tiers).
AGENTSTACK_001 = """\
| Feature | Anonymous | FREE | STARTER | BASIC | PRO | PREMIUM | ENTERPRISE |
|---|---|---|---|---|---|---|---|
| Price | $0 | $0 | $29/mo | $69/mo | $199/mo | $999/mo | Custom |
| Projects | 1 | 1 | 3 | 5 | 25 | Unlimited | Unlimited |
| Active Projects | 1 | 1 | 3 | 3 | 15 | Unlimited | Unlimited |
| Total Members (Aggregated) | 10 | 1,000 | 5,000 | 25,000 | Unlimited | Unlimited | Unlimited |
| Note | ✅ Aggregated across all projects | ✅ Aggregated across all projects | ✅ Aggregated across all projects | ✅ Aggregated across all projects | - | - | - |
| API Keys | 1 | 2 | 10 | 10 | 50 | 200 | Unlimited |
| User API Keys | 1 | 1 | 3 | 5 | 10 | Unlimited | Unlimited |
| Logic Engine Calls/Month | 1,000 | 10,000 | 50,000 | 50,000 | 200,000 | 1,000,000 | Unlimited |
| API Calls/Month | 10,000 | 50,000 | 200,000 | 500,000 | 2,000,000 | 10,000,000 | Unlimited |
| Triggers | 20 | 50 | 100 | 100 | 250 | 1,000 | Unlimited |
| Logic Pages | 3 | 3 | 5 | 5 | 10 | 50 | Unlimited |
| JSON Storage (Per User) | 20 MB | 100 MB | 500 MB | 500 MB | 2 GB | 10 GB | Unlimited |
| Project Storage (Data Only) | 0.02 GB | 0.1 GB | 0.5 GB | 1 GB | 5 GB | 20 GB | Unlimited |
| Note | Files in separate service | Files in separate service | Files in separate service | Files in separate service | Files in separate service | Files in separate service | Files in separate service |
| Payments | ❌ Disabled | ✅ Unlimited | ✅ Unlimited | ✅ Unlimited | ✅ Unlimited | ✅ Unlimited | ✅ Unlimited |
| Analytics Retention | 7 days | 7 days | 30 days | 30 days | 90 days | 365 days | Unlimited |
| Analytics Exports | 1 | 1 | 5 | 5 | 20 | 100 | Unlimited |
| Support | Community | Community | Priority | Priority | Dedicated | ||
| Uptime SLA | 99.0% | 99.0% | 99.5% | 99.5% | 99.9% | 99.95% | 99.99% |
"""  # noqa: E501

# Verbatim from seeds/000_cc4051057f010079.txt (the anonymous-vs-FREE table).
AGENTSTACK_000 = """\
| Feature | Anonymous | FREE |
|---|---|---|
| Projects | 1 | 1 |
| Members per project | 10 | 1,000 |
| Total members | 10 | 1,000 |
| API keys | 1 | 2 |
| User API keys | 1 | 1 |
| Logic Engine calls/month | 1,000 | 10,000 |
| Triggers | 20 | 50 |
| Logic pages | 3 | 3 |
| JSON storage | 20 MB | 100 MB |
| Total storage | 0.02 GB | 0.1 GB |
| Payments | ❌ Disabled | ✅ Enabled |
| Analytics retention | 7 days | 7 days |
| Analytics exports | 1 | 1 |
| Support | Community | Community |
| Uptime SLA | 99.0% | 99.0% |
"""

# Verbatim from seeds/002_cd456c3e0b5e360d.txt ("Tier comparison").
AGENTIDP_002 = """\
| Limit | Free | Pro | Enterprise |
|-------|------|-----|------------|
| Max agents | 10 | 100 | Unlimited |
| Max API calls / day | 1,000 | 50,000 | Unlimited |
| Max token issuances / day | 1,000 | 50,000 | Unlimited |
"""

# seed row title -> what it is in the policy: ("meter"|"feature"|"attribute", name)
ROWS_001 = {
    "Price": ("attribute", "Price"),
    "Projects": ("meter", "projects"),
    "Active Projects": ("meter", "active_projects"),
    "Total Members (Aggregated)": ("meter", "total_members"),
    "API Keys": ("meter", "api_keys"),
    "User API Keys": ("meter", "user_api_keys"),
    "Logic Engine Calls/Month": ("meter", "logic_engine_calls"),
    "API Calls/Month": ("meter", "api_calls"),
    "Triggers": ("meter", "triggers"),
    "Logic Pages": ("meter", "logic_pages"),
    "JSON Storage (Per User)": ("meter", "json_storage"),
    "Project Storage (Data Only)": ("meter", "project_storage"),
    "Payments": ("feature", "payments"),
    "Analytics Retention": ("attribute", "Analytics Retention"),
    "Analytics Exports": ("meter", "analytics_exports"),
    "Support": ("attribute", "Support"),
    "Uptime SLA": ("attribute", "Uptime SLA"),
}
ROWS_000 = {
    "Projects": ("meter", "projects"),
    "Members per project": ("meter", "members_per_project"),
    "Total members": ("meter", "total_members"),
    "API keys": ("meter", "api_keys"),
    "User API keys": ("meter", "user_api_keys"),
    "Logic Engine calls/month": ("meter", "logic_engine_calls"),
    "Triggers": ("meter", "triggers"),
    "Logic pages": ("meter", "logic_pages"),
    "JSON storage": ("meter", "json_storage"),
    "Total storage": ("meter", "project_storage"),
    "Payments": ("feature", "payments"),
    "Analytics retention": ("attribute", "Analytics Retention"),
    "Analytics exports": ("meter", "analytics_exports"),
    "Support": ("attribute", "Support"),
    "Uptime SLA": ("attribute", "Uptime SLA"),
}
ROWS_002 = {
    "Max agents": ("meter", "agents"),
    "Max API calls / day": ("meter", "api_calls"),
    "Max token issuances / day": ("meter", "token_issuances"),
}
# The seed's "Note" rows are prose about a row above them, not limits.
PROSE_ROWS = {"Note"}

_SIZE = re.compile(r"(\d+(?:\.\d+)?) (MB|GB)")
_DECIMAL = {"MB": 10**6, "GB": 10**9}


def parse_table(text: str) -> tuple[list[str], list[tuple[str, list[str]]]]:
    """A Markdown table -> (column titles, [(row title, cells)]); short rows padded with ''."""
    lines = [line for line in text.splitlines() if line.strip()]
    header = [c.strip() for c in lines[0].strip().strip("|").split("|")]
    rows = []
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip().removeprefix("|").removesuffix("|").split("|")]
        cells += [""] * (len(header) - len(cells))
        assert len(cells) == len(header), line
        rows.append((cells[0], cells[1:]))
    return header[1:], rows


def seed_limit(cell: str) -> int | None:
    """A seed cell as a limit: "1,000" -> 1000, "Unlimited" -> None, "0.02 GB" -> bytes."""
    if cell == "Unlimited":
        return None
    size = _SIZE.fullmatch(cell)
    if size is not None:
        # decimal units, as the seed's own pairs show (20 MB anonymous JSON = 0.02 GB)
        return round(float(size.group(1)) * _DECIMAL[size.group(2)])
    assert re.fullmatch(r"\d{1,3}(,\d{3})*", cell), cell
    return int(cell.replace(",", ""))


def seed_feature(cell: str) -> bool:
    assert cell.startswith(("✅", "❌")), cell
    return cell.startswith("✅")


def tier_by_title(policy: Policy, title: str) -> str:
    (name,) = [t.name for t in policy.tiers.values() if t.title.lower() == title.lower()]
    return name


def hold_against_seed(
    policy: Policy, table: str, rows: dict[str, tuple[str, str]]
) -> list[tuple[str, str]]:
    """Assert every cell of the seed table against the loaded policy; return what was held."""
    columns, seed_rows = parse_table(table)
    held = []
    for title, cells in seed_rows:
        if title in PROSE_ROWS:
            continue
        kind, name = rows[title]
        for column, cell in zip(columns, cells, strict=True):
            tier = policy.tiers[tier_by_title(policy, column)]
            if kind == "meter":
                assert tier.limit(name) == seed_limit(cell), (title, column, cell)
                assert name in tier.limits, (title, column)
            elif kind == "feature":
                assert (name in tier.features) == seed_feature(cell), (title, column, cell)
            else:
                assert tier.attributes.get(name, "") == cell, (title, column, cell)
            held.append((title, column))
    # every seed row found its place: none was skipped by a mapping gap
    assert {t for t, _ in seed_rows} - PROSE_ROWS == set(rows)
    return held


@pytest.fixture(scope="module")
def agentstack() -> Policy:
    return load_policy(POLICIES / "agentstack.yaml")


@pytest.fixture(scope="module")
def agentidp() -> Policy:
    return load_policy(POLICIES / "agentidp.yaml")


def show(policy_file: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "policy", "show", policy_file],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


def test_agentstack_holds_every_cell_of_the_seven_tier_table(agentstack: Policy) -> None:
    held = hold_against_seed(agentstack, AGENTSTACK_001, ROWS_001)
    assert len(held) == 17 * 7
    assert [t.title for t in agentstack.tiers.values()] == parse_table(AGENTSTACK_001)[0]


def test_agentstack_holds_the_anonymous_vs_free_table(agentstack: Policy) -> None:
    held = hold_against_seed(agentstack, AGENTSTACK_000, ROWS_000)
    assert len(held) == 15 * 2


def test_agentidp_holds_the_tier_comparison(agentidp: Policy) -> None:
    held = hold_against_seed(agentidp, AGENTIDP_002, ROWS_002)
    assert len(held) == 3 * 3
    assert agentidp.default_tier == "free"


def test_sizes_are_decimal_bytes(agentstack: Policy) -> None:
    anonymous = agentstack.tiers["anonymous"]
    assert anonymous.limit("json_storage") == 20_000_000
    assert anonymous.limit("project_storage") == 20_000_000
    assert agentstack.tiers["pro"].limit("json_storage") == 2_000_000_000


@pytest.mark.parametrize(
    ("policy_file", "table", "rows"),
    [
        ("policies/agentstack.yaml", AGENTSTACK_001, ROWS_001),
        ("policies/agentidp.yaml", AGENTIDP_002, ROWS_002),
    ],
    ids=["agentstack", "agentidp"],
)
def test_policy_show_prints_the_seed_table(
    policy_file: str, table: str, rows: dict[str, tuple[str, str]]
) -> None:
    shown_columns, shown_rows = parse_table(show(policy_file))
    seed_columns, seed_rows = parse_table(table)
    assert shown_columns == seed_columns
    # the seed's rows in the seed's order, cell for cell (the prose "Note" rows aside)
    assert shown_rows == [(t, cells) for t, cells in seed_rows if t not in PROSE_ROWS]


def test_policy_show_agrees_with_the_anonymous_vs_free_table() -> None:
    columns, shown = parse_table(show("policies/agentstack.yaml"))
    by_title = dict(shown)
    policy = load_policy(POLICIES / "agentstack.yaml")
    _, seed_rows = parse_table(AGENTSTACK_000)
    compared = 0
    for title, cells in seed_rows:
        kind, name = ROWS_000[title]
        if kind != "meter" or name not in policy.table:
            continue
        shown_cells = by_title[policy.meters[name].title]
        for column, cell in zip(("Anonymous", "FREE"), cells, strict=True):
            assert seed_limit(shown_cells[columns.index(column)]) == seed_limit(cell), title
            compared += 1
    assert compared == 2 * 10  # every meter row but members per project, which 001 leaves out
