"""`gateway policy show` cells: every limit prints exactly, and reads back as the same limit."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.loader import parse_policy
from gateway.policy.model import Meter
from gateway.policy.table import format_limit

POLICY = """\
name: sizes
default_tier: free
meters:
  storage:
    kind: gauge
    scope: account
    unit: bytes
{display}
tiers:
  free:
    limits: {{storage: "{limit}"}}
routes:
  - name: api
    path: /api/**
"""


def meter(display_unit: str | None) -> Meter:
    return Meter("storage", "gauge", None, "account", "Storage", "storage", "bytes", display_unit)


def test_sizes_print_like_the_seed() -> None:
    assert format_limit(meter(None), 20_000_000) == "20 MB"
    assert format_limit(meter("GB"), 20_000_000) == "0.02 GB"
    assert format_limit(meter(None), 100 * 10**9) == "100 GB"
    assert format_limit(meter(None), 2_009_999) == "2.009999 MB"
    assert format_limit(meter(None), 999) == "999 B"
    assert format_limit(meter(None), None) == "Unlimited"
    calls = Meter("calls", "counter", "month", "account", "Calls", "calls", "calls")
    assert format_limit(calls, 10_000_000) == "10,000,000"


@settings(deadline=None)
@given(
    st.integers(min_value=0, max_value=10**15),
    st.sampled_from([None, "B", "KB", "MB", "GB", "TB"]),
)
def test_a_printed_size_reads_back_as_the_same_bytes(limit: int, display_unit: str | None) -> None:
    shown = format_limit(meter(display_unit), limit)
    display = f"    display_unit: {display_unit}" if display_unit else ""
    policy = parse_policy(POLICY.format(display=display, limit=shown), "sizes.yaml")
    assert policy.tiers["free"].limit("storage") == limit
