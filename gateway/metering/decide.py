"""From a route and a tier to charges, gates and refusals: the policy's half of a decision."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from gateway.errors import FeatureUnavailable, PolicyRefusal, QuotaExceeded, TierForbidden
from gateway.identity.resolve import Identity
from gateway.metering.keys import meter_key
from gateway.metering.store import Charge, MeterState
from gateway.metering.windows import iso
from gateway.policy.model import Policy, Route, Template, Tier
from gateway.policy.templates import render

#: the scope id a project-scoped meter uses when the caller names no project
NO_PROJECT = "-"


def project_scope(route: Route, identity: Identity, params: Mapping[str, str]) -> str | None:
    """The project a request is about: named in the path, else the key's own project."""
    if route.project_param is not None:
        return params[route.project_param]
    return identity.project_id


def charges(
    policy: Policy,
    tier: Tier,
    account_id: str,
    project_id: str | None,
    costs: Sequence[tuple[str, int]],
) -> list[Charge]:
    """One Charge per meter, scoped to the account or to the project."""
    out = []
    for name, cost in costs:
        meter = policy.meters[name]
        scope_id = account_id if meter.scope == "account" else (project_id or NO_PROJECT)
        out.append(Charge(name, scope_id, meter.period, cost, tier.limit(name)))
    return out


def releases(account_id: str, charges: Sequence[Charge]) -> list[tuple[str, int]]:
    """The exact keys and counts to give back live counts on: a gauge's key has no window,
    so freeing one needs no lookup. Counters are left out: they are refunded by the key
    their consume returned."""
    return [
        (meter_key(account_id, c.meter, c.scope_id, None), c.cost)
        for c in charges
        if c.period is None
    ]


def check_gates(policy: Policy, tier: Tier, route: Route) -> None:
    """Refuse what the tier may not do at all, before anything is metered."""
    if tier.name in route.deny_tiers:
        upgrade = policy.cheapest_tier(
            lambda t: t.rank > tier.rank and t.name not in route.deny_tiers
        )
        raise _refusal(
            TierForbidden,
            policy,
            tier,
            "tier_forbidden",
            route.name,
            {"route": route.name},
            upgrade,
            f"route {route.name} refused for tier {tier.name}",
        )
    for feature in route.features:
        if feature not in tier.features:
            # the cheapest tier that allows the request: every feature it needs, not just this one
            upgrade = policy.cheapest_tier(
                lambda t: t.rank > tier.rank and all(f in t.features for f in route.features)
            )
            variables = {
                "route": route.name,
                "feature": feature,
                "feature_title": policy.features[feature].title,
            }
            raise _refusal(
                FeatureUnavailable,
                policy,
                tier,
                "feature_unavailable",
                feature,
                variables,
                upgrade,
                f"feature {feature} not on tier {tier.name}",
            )


def quota_refusal(
    policy: Policy, tier: Tier, route: Route, charge: Charge, state: MeterState, now: float
) -> QuotaExceeded:
    """The policy's answer when ``charge`` would take its meter past the limit."""
    meter = policy.meters[charge.meter]
    current = state.used + charge.cost
    limit = state.limit if state.limit is not None else 0
    upgrade = policy.cheapest_tier(
        lambda t: (
            t.rank > tier.rank
            and (t.limit(meter.name) is None or current <= (t.limit(meter.name) or 0))
        )
    )
    retry_after = None if state.reset_at is None else max(math.ceil(state.reset_at - now), 1)
    # Retrying helps only if the window resets and the request fits a fresh window.
    retryable = retry_after is not None and charge.cost <= limit
    variables: dict[str, Any] = {
        "route": route.name,
        "meter": meter.name,
        "meter_title": meter.title,
        "meter_label": meter.label,
        "limit": limit,
        "limit_text": f"{limit:,}",
        "current": current,
        "current_text": f"{current:,}",
        "remaining": max(limit - state.used, 0),
        "reset": iso(state.reset_at) if state.reset_at is not None else None,
        "retry_after": retry_after,
        "retryable": retryable,
    }
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    refusal: QuotaExceeded = _refusal(
        QuotaExceeded,
        policy,
        tier,
        "quota_exceeded",
        meter.name,
        variables,
        upgrade,
        f"{meter.name} over limit for tier {tier.name}",
        headers,
    )
    refusal.headers.update(rate_limit_headers(state, now, refused=True))
    return refusal


def _refusal(
    cls: type[PolicyRefusal],
    policy: Policy,
    tier: Tier,
    decision: str,
    subject: str,
    variables: dict[str, Any],
    upgrade: Tier | None,
    message: str,
    headers: dict[str, str] | None = None,
) -> Any:
    variables = {
        "tier": tier.name,
        "tier_title": tier.title,
        "retryable": False,
        "upgrade_tier": upgrade.name if upgrade else None,
        "upgrade_tier_title": upgrade.title if upgrade else None,
        **variables,
    }
    template: Template = policy.template(tier, decision, subject)
    body = render(template.body, variables)
    return cls(
        message, status=template.status, body=body, headers={**template.headers, **(headers or {})}
    )


def tightest(states: Sequence[MeterState]) -> MeterState | None:
    """The limited meter with the fewest units left (the soonest reset breaks a tie)."""
    best: MeterState | None = None
    for state in states:
        if state.limit is None:
            continue
        if best is None:
            best = state
            continue
        remaining, best_remaining = state.remaining or 0, best.remaining or 0
        if remaining < best_remaining or (
            remaining == best_remaining
            and (state.reset_at or math.inf) < (best.reset_at or math.inf)
        ):
            best = state
    return best


def rate_limit_headers(
    state: MeterState | None, now: float, *, refused: bool = False
) -> dict[str, str]:
    """``RateLimit-Limit/-Remaining/-Reset`` for one meter (reset only for windows)."""
    if state is None or state.limit is None:
        return {}
    remaining = state.limit - state.used if not refused else max(state.limit - state.used, 0)
    headers = {
        "RateLimit-Limit": str(state.limit),
        "RateLimit-Remaining": str(max(remaining, 0)),
    }
    if state.reset_at is not None:
        headers["RateLimit-Reset"] = str(max(math.ceil(state.reset_at - now), 0))
    return headers
