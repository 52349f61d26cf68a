"""Rate meters in the policy: ``rate: 20/s`` or ``600/min``, with an optional ``burst``.

A rate meter (``kind: rate``) may give a default rate; each tier's ``limits:`` names its own
the way it names any limit: ``request_rate: 10/s``, ``request_rate: {rate: 10/s, burst: 20}``
or ``request_rate: unlimited``. ``burst`` is how many requests a full bucket admits at once;
left out, it is the rate's count (``20/s`` admits 20 at once, then one every 50 ms).
"""

from __future__ import annotations

import re

from gateway.policy.model import RATE_PERIODS, Meter, Rate
from gateway.policy.source import Node, describe

_RATE = re.compile(r"(\d{1,9})\s*/\s*([a-z]+)")
_PERIODS = {"s": 1, "sec": 1, "second": 1, "min": 60, "minute": 60, "h": 3600, "hour": 3600}
_MAX_BURST = 10**9
#: what a rate looks like, for error messages
SHAPES = '"20/s", "600/min" or "10000/h"'


def parse_rate(node: Node, burst_node: Node | None = None) -> Rate:
    """``20/s`` (with ``burst_node``, if given, as its burst) as a Rate."""
    value = node.value
    found = _RATE.fullmatch(value.strip()) if isinstance(value, str) else None
    if found is None or found.group(2) not in _PERIODS:
        raise node.fail(f"expected a rate such as {SHAPES}, got {describe(value)}")
    count, seconds = int(found.group(1)), _PERIODS[found.group(2)]
    if count < 1:
        raise node.fail("a rate admits at least 1 request per period (or say unlimited)")
    burst = count if burst_node is None else burst_node.int(minimum=1, maximum=_MAX_BURST)
    return Rate(count=count, seconds=seconds, burst=min(burst, _MAX_BURST))


def meter_rate(node: Node) -> Rate | None:
    """A rate meter's own default rate (``rate:`` and ``burst:`` on the meter), if any."""
    rate_node, burst_node = node.get("rate"), node.get("burst")
    if rate_node is None:
        if burst_node is not None:
            raise burst_node.fail("burst goes with a rate: give the meter a rate too")
        return None
    return parse_rate(rate_node, burst_node)


def tier_rate(node: Node, meter: Meter) -> Rate | None:
    """A tier's limit on a rate meter: ``10/s``, ``{rate: 10/s, burst: 20}`` or
    ``unlimited``."""
    value = node.value
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    if isinstance(value, dict):
        node.mapping(allowed={"rate", "burst"}, required={"rate"})
        return parse_rate(node.child("rate"), node.get("burst"))
    if isinstance(value, str):
        return parse_rate(node)
    raise node.fail(
        f'expected a rate such as {SHAPES}, {{rate: 10/s, burst: 20}} or "unlimited", '
        f"got {describe(value)}"
    )


def format_rate(rate: Rate | None) -> str:
    """A tier's rate as `policy show` prints it: ``10/s (burst 20)`` or ``Unlimited``."""
    if rate is None:
        return "Unlimited"
    return f"{rate.count:,}/{RATE_PERIODS[rate.seconds]} (burst {rate.burst:,})"
