"""Rate meters in the policy: parsing, `policy show`, `diff`, `explain` and `replay`.

Parsing and reporting are the policy's own: no store is involved except the embedded one
that explain and replay run on, so the memory store is enough here (the stores are held to
the same GCRA in tests/test_rate_store.py).
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway.explain import explain
from gateway.identity.resolve import Identity
from gateway.metering import decide
from gateway.metering.clock import FakeClock
from gateway.metering.memory import MemoryStore
from gateway.policy.diff import policy_diff
from gateway.policy.loader import parse_policy
from gateway.policy.model import Rate
from gateway.policy.table import tier_table
from gateway.replay import replay
from tests.test_rate_limits import RATES


def test_rates_parse_with_their_default_burst_the_meters_default_and_unlimited() -> None:
    policy = parse_policy(RATES)
    free, pro = policy.tiers["free"], policy.tiers["pro"]
    # the meter's own rate stands for a tier that names none; burst defaults to the count
    assert free.rates == {
        "per_key": Rate(count=3, seconds=60, burst=3),
        "per_client": Rate(count=2, seconds=1, burst=2),
    }
    assert pro.rates == {"per_key": None, "per_client": None}
    assert "per_key" not in free.limits  # quotas and rates are kept apart
    assert Rate(count=600, seconds=60, burst=600).emission_us == 100_000
    assert Rate(count=3, seconds=1, burst=1).emission_us == 333_333


@pytest.mark.parametrize(
    ("written", "rate"),
    [
        ("20/s", Rate(20, 1, 20)),
        ("600 / min", Rate(600, 60, 600)),
        ("10000/h", Rate(10000, 3600, 10000)),
        ("{rate: 5/second, burst: 12}", Rate(5, 1, 12)),
        ("{rate: 90/minute}", Rate(90, 60, 90)),
    ],
)
def test_a_tiers_rate_is_written_like_any_limit(written: str, rate: Rate) -> None:
    policy = parse_policy(
        RATES.replace(
            "limits: {api_calls: 1000}", f"limits: {{api_calls: 1000, per_key: {written}}}", 1
        )
    )
    assert policy.tiers["free"].rates["per_key"] == rate


def test_policy_show_prints_a_rate_and_its_burst() -> None:
    table = tier_table(parse_policy(RATES)).splitlines()
    assert table[3] == "| Per key | 3/min (burst 3) | Unlimited |"
    assert table[4] == "| Per client | 2/s (burst 2) | Unlimited |"


def test_policy_diff_reports_a_tightened_rate_like_a_changed_limit() -> None:
    old = parse_policy(RATES)
    new = parse_policy(RATES.replace("rate: 2/s, burst: 2", "rate: 2/s, burst: 1"))
    assert policy_diff(old, new) == [
        ("free", "limit per_client", "2/s burst 2", "2/s burst 1"),
        ("(all)", "meters.per_client.rate.burst", "2", "1"),
    ]
    loosened = parse_policy(
        RATES.replace(
            "per_key: unlimited, per_client: unlimited", "per_key: 60/min, per_client: unlimited"
        )
    )
    assert policy_diff(old, loosened) == [("pro", "limit per_key", "unlimited", "60/min burst 60")]


async def test_explain_shows_the_bucket_and_the_refusal_the_gateway_would_give() -> None:
    policy = parse_policy(RATES)
    clock = FakeClock(1_780_000_000.0)
    store = MemoryStore(clock)
    identity = Identity(account_id="7", tier="free", kind="project", key_id="key_1")
    tier = policy.tiers["free"]
    costs = [("api_calls", 1), ("per_key", 1)]
    for _ in range(3):
        charges = decide.charges(policy, tier, "7", None, costs, identity)
        assert (await store.consume("7", charges)).admitted
    out: dict[str, Any] = await explain(
        policy, store, clock, "GET", "/api/keyed/x", identity=identity
    )
    bucket = out["meters"][1]
    assert bucket == {
        "meter": "per_key",
        "scope_id": "key_1",
        "cost": 1,
        "used": 3,
        "limit": 3,
        "remaining": 0,
        "reset": "2026-05-28T20:27:40Z",  # full again 3 x 20 s later
        "fits": False,
        "rate": "3/min burst 3",
    }
    decision = out["decision"]
    assert (decision["outcome"], decision["status"]) == ("rate_limited", 429)
    assert decision["body"]["code"] == "RATE_LIMITED"
    assert decision["headers"]["Retry-After"] == "20"
    # explain consumed nothing
    clock.advance(20)
    assert (await explain(policy, store, clock, "GET", "/api/keyed/x", identity=identity))[
        "decision"
    ]["outcome"] == "forwarded"


def _entry(at: str, request_id: str) -> dict[str, Any]:
    return {
        "time": at,
        "_at": FakeClock(0).now(),
        "request_id": request_id,
        "method": "GET",
        "path": "/api/keyed/x",
        "route": "keyed",
        "tier": "free",
        "account_id": "7",
        "decision": "forwarded",
        "status": 200,
    }


async def test_replay_finds_the_requests_a_new_rate_would_refuse() -> None:
    from gateway.accesslog import parse_time

    entries = []
    for i, at in enumerate(
        ["2026-06-01T00:00:00.000+00:00"] * 5 + ["2026-06-01T00:00:20.000+00:00"]
    ):
        entry = _entry(at, f"r{i}")
        entry["_at"] = parse_time(at)
        entries.append(entry)
    report = await replay(parse_policy(RATES), entries, examples=10)
    (group,) = report.groups.values()
    # a burst of 3 at once, then one unit back 20 s later
    assert group.newly_refused == 2
    assert [e["request_id"] for e in group.refused_examples] == ["r3", "r4"]
    assert group.refused_examples[0]["now"] == "rate_limited"
