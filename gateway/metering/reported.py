"""Usage the upstream reports on its response, for what the gateway cannot see itself.

The upstream adds one response header (stripped before the client sees it, like every
``X-Gateway-*`` header; a client's copy on the request is stripped before the upstream)::

    X-Gateway-Usage: json_storage=1048576, project_storage=52428800, cost_units=+3

``meter=N`` sets a live byte count (a gauge whose unit is bytes: JSON storage, project
storage) to the absolute value N; ``meter=+N`` adds N to a counter (token or cost units) in
its current window. Both settle after the response, never refused: the upstream already did
the work. Items naming no such meter, or of the wrong form for it, are ignored and logged.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from gateway.policy.model import Policy

log = logging.getLogger("gateway")

USAGE_HEADER = "X-Gateway-Usage"
_ITEM = re.compile(r"([a-z][a-z0-9_]{0,62})=(\+?)(\d{1,18})")
_MAX_ITEMS = 32


@dataclass(frozen=True, slots=True)
class Reported:
    meter: str
    amount: int
    absolute: bool  # True: set the gauge to ``amount``; False: add ``amount`` to the counter


def parse_usage(policy: Policy, value: str | None) -> list[Reported]:
    """The valid items of a usage header; malformed or unknown items are skipped."""
    if not value:
        return []
    out: list[Reported] = []
    for raw in value.split(",")[:_MAX_ITEMS]:
        found = _ITEM.fullmatch(raw.strip())
        meter = policy.meters.get(found.group(1)) if found is not None else None
        if found is None or meter is None:
            log.warning("ignoring reported usage %r: no such meter or malformed", raw.strip())
            continue
        absolute = found.group(2) == ""
        if absolute != (meter.kind == "gauge" and meter.unit == "bytes"):
            log.warning(
                "ignoring reported usage %r: byte counts are absolute, counters increments",
                raw.strip(),
            )
            continue
        out.append(Reported(meter.name, int(found.group(3)), absolute))
    return out
