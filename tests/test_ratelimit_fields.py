"""RateLimit fields and upstream feature headers made from what a policy load precomputed.

The static part of each RateLimit-Policy item is cached per (meter, capacity, window) and
each tier's X-Gateway-Features value is made when the policy is built; these pin that a
cached value never outlives what it was made from: a new window, a larger capacity, another
policy or another tier."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from gateway.metering.decide import rate_limit_headers
from gateway.metering.store import MeterState
from gateway.policy.loader import load_policy
from tests.conftest import POLICIES

NOW = datetime(2026, 12, 3, 12, tzinfo=UTC).timestamp()
DECEMBER_ENDS = datetime(2027, 1, 1, tzinfo=UTC).timestamp()  # a 31-day window
FEBRUARY_ENDS = datetime(2027, 3, 1, tzinfo=UTC).timestamp()  # a 28-day window
DAY_ENDS = datetime(2026, 12, 4, tzinfo=UTC).timestamp()


def _state(
    meter: str, used: int, limit: int | None, reset_at: float | None, **kw: object
) -> MeterState:
    period = kw.pop("period", "month" if reset_at is not None else None)
    return MeterState(f"k:{meter}", used, limit, reset_at, meter=meter, period=period, **kw)  # type: ignore[arg-type]


def test_the_same_quota_in_another_window_says_that_windows_length() -> None:
    december = rate_limit_headers([_state("calls", 1, 10, DECEMBER_ENDS)], NOW)
    february = rate_limit_headers([_state("calls", 1, 10, FEBRUARY_ENDS)], NOW)
    assert december["RateLimit-Policy"] == '"calls";q=10;w=2678400'
    assert february["RateLimit-Policy"] == '"calls";q=10;w=2419200'


def test_a_package_bought_mid_window_raises_the_quota_at_once() -> None:
    before = rate_limit_headers([_state("calls", 4, 10, DECEMBER_ENDS)], NOW)
    after = rate_limit_headers([_state("calls", 4, 10, DECEMBER_ENDS, package=50)], NOW)
    assert before["RateLimit-Policy"] == '"calls";q=10;w=2678400'
    assert (after["RateLimit-Limit"], after["RateLimit-Remaining"]) == ("60", "56")
    assert after["RateLimit-Policy"] == '"calls";q=60;w=2678400'
    assert after["RateLimit"] == f'"calls";r=56;t={int(DECEMBER_ENDS - NOW)}'


def test_the_tightest_quota_is_named_and_a_tie_goes_to_the_sooner_reset() -> None:
    states = [
        _state("monthly", 95, 100, DECEMBER_ENDS),  # 5 left, resets in 29 days
        _state("daily", 15, 20, DAY_ENDS, period="day"),  # 5 left, resets in 12 hours
        _state("live", 1, 50, None),  # a gauge: 49 left, no window
        _state("free", 7, None, DECEMBER_ENDS),  # unlimited: not a quota
    ]
    headers = rate_limit_headers(states, NOW)
    assert (headers["RateLimit-Limit"], headers["RateLimit-Remaining"]) == ("20", "5")
    assert headers["RateLimit-Reset"] == str(int(DAY_ENDS - NOW))
    assert headers["RateLimit-Policy"] == (
        '"monthly";q=100;w=2678400, "daily";q=20;w=86400, "live";q=50'
    )
    assert headers["RateLimit"] == (
        f'"monthly";r=5;t={int(DECEMBER_ENDS - NOW)}, "daily";r=5;t={int(DAY_ENDS - NOW)}, '
        '"live";r=49'
    )
    # fewer units left wins over a sooner reset
    fewer = rate_limit_headers([states[1], _state("monthly", 97, 100, DECEMBER_ENDS)], NOW)
    assert (fewer["RateLimit-Limit"], fewer["RateLimit-Remaining"]) == ("100", "3")
    assert rate_limit_headers([states[3]], NOW) == {}


def test_each_tier_and_each_policy_load_has_its_own_upstream_features() -> None:
    policy = load_policy(POLICIES / "agentstack.yaml")
    upstream = {name for name, f in policy.features.items() if f.enforced == "upstream"}
    assert upstream, "the shipped policy has upstream-enforced features"
    seen = {name: policy.upstream_features(tier) for name, tier in policy.tiers.items()}
    for name, tier in policy.tiers.items():
        assert seen[name] == ",".join(sorted(tier.features & upstream))
    assert len(set(seen.values())) > 1, "tiers differ in what the upstream enforces"
    # a tier this policy was not built with (another load's, say) is answered for itself
    richest = max(policy.tiers.values(), key=lambda t: len(t.features & upstream))
    poorest = min(policy.tiers.values(), key=lambda t: len(t.features & upstream))
    stranger = dataclasses.replace(poorest, features=richest.features)
    assert policy.upstream_features(stranger) == seen[richest.name] != seen[poorest.name]
