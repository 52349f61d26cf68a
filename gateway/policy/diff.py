"""`gateway policy diff`: what changes between two policies, as a Markdown table.

Per tier: the limits, features, routes (what each means for the tier) and error bodies it
sees differently. For the whole policy: every other field of the model, compared generically
(a new field in policy/model.py or policy/billing.py is compared without anyone listing it),
and route order by effect: which representative requests now match another route.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

from gateway.policy.billing import format_money
from gateway.policy.corpus import reaches, requests
from gateway.policy.model import DECISIONS, KeyType, Policy, Route, Tier

ABSENT = "—"
ALL = "(all)"
Row = tuple[str, str, str, str]

#: derived from another field, or the file itself rather than what it says
_SKIPPED = frozenset({"regex", "file", "digest"})
#: what the per-tier rows already show
_PER_TIER = frozenset({"limits", "rates", "leases", "features", "responses", "shadow"})
_ROUTE_PER_TIER = frozenset({"methods", "pattern", "deny_tiers", "features", "consume", "shadow"})
_EXAMPLES = 2


def policy_diff(old: Policy, new: Policy) -> list[Row]:
    """Rows (tier, change, old, new) for everything a caller or an invoice sees differently
    under ``new``."""
    rows = _per_tier(old, new)
    rows += _fields(old, new)
    rows += _matching(old, new)
    return rows


def _per_tier(old: Policy, new: Policy) -> list[Row]:
    rows: list[Row] = []
    if old.shadow != new.shadow:
        rows.append((ALL, "shadow", _flag(old.shadow), _flag(new.shadow)))
    for name in dict.fromkeys([*old.tiers, *new.tiers]):
        before, after = old.tiers.get(name), new.tiers.get(name)
        if before is None or after is None:
            rows.append((name, "tier", _present(before), _present(after)))
            continue
        changes: list[tuple[str, str, str]] = []
        if before.shadow != after.shadow:
            changes.append(("shadow", _flag(before.shadow), _flag(after.shadow)))
        for meter in dict.fromkeys([*old.meters, *new.meters]):
            changes.append(
                (
                    f"limit {meter}",
                    _limit(before, meter, meter in old.meters),
                    _limit(after, meter, meter in new.meters),
                )
            )
            changes.append((f"lease {meter}", _lease(before, meter), _lease(after, meter)))
        for feature in dict.fromkeys([*old.features, *new.features]):
            changes.append(
                (
                    f"feature {feature}",
                    _feature(old, before, feature),
                    _feature(new, after, feature),
                )
            )
        old_routes = {r.name: r for r in old.routes}
        new_routes = {r.name: r for r in new.routes}
        for route in dict.fromkeys([*old_routes, *new_routes]):
            changes.append(
                (
                    f"route {route}",
                    _route(old, before, old_routes.get(route)),
                    _route(new, after, new_routes.get(route)),
                )
            )
        for selector in _selectors(old, before) | _selectors(new, after):
            changes.append(
                (
                    f"response {selector}",
                    _response(old, before, selector),
                    _response(new, after, selector),
                )
            )
        rows.extend((name, what, a, b) for what, a, b in changes if a != b)
    return rows


def _lease(tier: Tier, meter: str) -> str:
    return f"{tier.lease(meter):,} per process" if tier.lease(meter) else ABSENT


def _fields(old: Policy, new: Policy) -> list[Row]:
    """Every field of the model the per-tier rows do not show, by key path."""
    before, after = flatten(old), flatten(new)
    tiers_both = set(old.tiers) & set(new.tiers)
    routes_both = {r.name for r in old.routes} & {r.name for r in new.routes}
    changed = [k for k in dict.fromkeys([*before, *after]) if before.get(k) != after.get(k)]
    rows: list[Row] = []
    for key in changed:
        if _shown_per_tier(key, tiers_both, routes_both):
            continue
        # an item added or removed is one row, not one per field inside it
        if any(key[:n] in changed and key[:n] in _items(before, after) for n in range(len(key))):
            continue
        dotted = ".".join(key)
        rows.append((ALL, dotted, before.get(key, ABSENT), after.get(key, ABSENT)))
    return rows


def _items(*flat: Mapping[tuple[str, ...], str]) -> set[tuple[str, ...]]:
    return {k for f in flat for k, v in f.items() if v == "present"}


def _shown_per_tier(key: tuple[str, ...], tiers: set[str], routes: set[str]) -> bool:
    if key[0] in ("responses", "shadow"):
        return True
    if key[0] == "tiers":
        # a tier added or removed has its own per-tier row
        return key[1] not in tiers or (len(key) > 2 and key[2] in _PER_TIER)
    if key[0] == "routes":
        return key[1] not in routes or (len(key) > 2 and key[2] in _ROUTE_PER_TIER)
    return False


def flatten(value: Any, path: tuple[str, ...] = ()) -> dict[tuple[str, ...], str]:
    """Every leaf of a policy object by key path: dataclass fields, mapping keys, routes by
    name and key types by prefix; a collection of plain values is one leaf."""
    out: dict[tuple[str, ...], str] = {}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        if path:
            out[path] = "present"
        for item in dataclasses.fields(value):
            if item.name not in _SKIPPED:
                out.update(flatten(getattr(value, item.name), (*path, item.name)))
    elif isinstance(value, Mapping):
        if path:
            out[path] = "present"
        for key, item in value.items():
            out.update(flatten(item, (*path, str(key))))
    elif isinstance(value, tuple) and value and isinstance(value[0], Route | KeyType):
        for item in value:
            name = item.name if isinstance(item, Route) else item.prefix
            out.update(flatten(item, (*path, name)))
    elif isinstance(value, int) and not isinstance(value, bool) and _money(path):
        out[path] = format_money(value)
    elif not isinstance(value, re.Pattern):
        out[path] = _leaf(value)
    return out


def _money(path: tuple[str, ...]) -> bool:
    """Billing amounts are integer cents; a row shows them as money."""
    return path[:1] == ("billing",) and (
        "tier_prices" in path or path[-1] in ("price", "minimum_charge")
    )


def _leaf(value: Any) -> str:
    if isinstance(value, frozenset | set):
        value = sorted(value)
    if isinstance(value, str):
        return value
    return json.dumps(value, ensure_ascii=False, sort_keys=True, default=str)


def _matching(old: Policy, new: Policy) -> list[Row]:
    """Representative requests that now match a different route, grouped by (old, new)."""
    moved: dict[tuple[str, str], list[str]] = {}
    for method, path in requests((old, new)):
        was, now = reaches(old, method, path), reaches(new, method, path)
        if was != now:
            moved.setdefault((was, now), []).append(f"{method} {path}")
    rows: list[Row] = []
    for (was, now), examples in moved.items():
        shown = ", ".join(examples[:_EXAMPLES])
        more = f" and {len(examples) - _EXAMPLES} more" if len(examples) > _EXAMPLES else ""
        rows.append((ALL, f"requests matched by another route: {shown}{more}", was, now))
    return rows


def markdown(rows: list[Row]) -> str:
    if not rows:
        return "No changes.\n"
    lines = ["| Tier | Change | Old | New |", "|---|---|---|---|"]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    # a pipe would end the cell early; a newline would end the row
    return text.replace("|", "\\|").replace("\n", " ")


def _flag(value: bool) -> str:
    return "on" if value else "off"


def _present(tier: Tier | None) -> str:
    return ABSENT if tier is None else f"present ({tier.title})"


def _limit(tier: Tier, meter: str, defined: bool) -> str:
    if not defined:
        return ABSENT
    if meter in tier.rates:  # a rate meter: its rate and burst, compared like any limit
        rate = tier.rates[meter]
        return "unlimited" if rate is None else rate.text()
    limit = tier.limit(meter)
    return "unlimited" if limit is None else f"{limit:,}"


def _feature(policy: Policy, tier: Tier, feature: str) -> str:
    if feature not in policy.features:
        return ABSENT
    return "enabled" if feature in tier.features else "disabled"


def _route(policy: Policy, tier: Tier, route: Route | None) -> str:
    """What the route means for this tier: allowed (and at what cost) or refused, and why."""
    if route is None:
        return ABSENT
    methods = ",".join(sorted(route.methods)) if route.methods else "*"
    where = f"{methods} {route.pattern}"
    if tier.name in route.deny_tiers:
        return f"{where}: forbidden"
    missing = [f for f in route.features if f not in tier.features]
    if missing:
        return f"{where}: needs {', '.join(missing)}"
    costs = ", ".join(f"{m}+{c}" for m, c in route.consume)
    state = f"{where}: allowed" + (f", costs {costs}" if costs else "")
    return state + (" (shadow)" if route.shadow else "")


def _selectors(policy: Policy, tier: Tier) -> set[str]:
    return {*policy.responses, *tier.responses}


def _response(policy: Policy, tier: Tier, selector: str) -> str:
    decision, _, subject = selector.partition(":")
    if decision not in DECISIONS:
        return ABSENT
    template = policy.template(tier, decision, subject)
    return json.dumps(
        {"status": template.status, "body": template.body, "headers": dict(template.headers)},
        ensure_ascii=False,
        sort_keys=True,
    )
