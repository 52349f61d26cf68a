"""`gateway policy diff`: what changes per tier between two policies, as a Markdown table."""

from __future__ import annotations

import json

from gateway.policy.model import DECISIONS, Policy, Route, Tier

ABSENT = "—"


def policy_diff(old: Policy, new: Policy) -> list[tuple[str, str, str, str]]:
    """Rows (tier, change, old, new) for every limit, feature, route and error body that
    a tier sees differently under ``new``."""
    rows: list[tuple[str, str, str, str]] = []
    if old.shadow != new.shadow:
        rows.append(("(all)", "shadow", _flag(old.shadow), _flag(new.shadow)))
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


def markdown(rows: list[tuple[str, str, str, str]]) -> str:
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
