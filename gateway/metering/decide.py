"""From a route and a tier to charges, gates and refusals: the policy's half of a decision."""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from gateway.errors import FeatureUnavailable, PolicyRefusal, QuotaExceeded, TierForbidden
from gateway.identity.resolve import Identity
from gateway.metering import rates
from gateway.metering.keys import meter_key
from gateway.metering.store import Charge, MeterState
from gateway.metering.windows import iso
from gateway.policy.billing import format_money
from gateway.policy.model import Period, Policy, Route, Template, Tier
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
    identity: Identity | None = None,
    client: str | None = None,
) -> list[Charge]:
    """One Charge per meter, scoped to the account or to the project.

    With the caller's identity, an account-scoped meter carries the account's package
    capacity, its overage switch, and the tier's analytics retention for daily history.
    A rate meter's charge is scoped as the meter says (the key, the project, the account or
    the ``client`` address); a rate the tier leaves unlimited is no charge at all.
    """
    history = history_ttl(policy, tier) if identity is not None else 0
    out = []
    for name, cost in costs:
        meter = policy.meters[name]
        if meter.kind == "rate":
            rate = tier.rates.get(name)
            if rate is not None:
                scope = _rate_scope(meter.scope, account_id, project_id, identity, client)
                out.append(Charge(name, scope, None, cost, rate.burst, rate=rate))
            continue
        scope_id = account_id if meter.scope == "account" else (project_id or NO_PROJECT)
        if identity is None or meter.scope != "account":
            out.append(Charge(name, scope_id, meter.period, cost, tier.limit(name)))
            continue
        out.append(
            Charge(
                name,
                scope_id,
                meter.period,
                cost,
                tier.limit(name),
                identity.packages.get(name, 0),
                name in identity.overage,
                history if meter.period is not None else 0,
                tier.lease(name),
            )
        )
    return out


def _rate_scope(
    scope: str,
    account_id: str,
    project_id: str | None,
    identity: Identity | None,
    client: str | None,
) -> str:
    """Whose bucket a rate charge draws on; a caller without an API key (a JWT) is scoped
    to its account when the meter is per key."""
    if scope == "key":
        return identity.key_id if identity is not None and identity.key_id else account_id
    if scope == "project":
        return project_id or NO_PROJECT
    if scope == "client":
        return client or NO_PROJECT
    return account_id


def refusal(
    policy: Policy, tier: Tier, route: Route, charge: Charge, state: MeterState, now: float
) -> PolicyRefusal:
    """The answer to a request refused at ``charge``: a rate meter's RATE_LIMITED, or the
    policy's quota answer (a key's service cap answers for itself: metering/caps.py)."""
    if charge.rate is not None:
        return rates.refusal(policy, tier, route, charge, state, now)
    return quota_refusal(policy, tier, route, charge, state, now)


def releases(account_id: str, charges: Sequence[Charge]) -> list[tuple[str, int]]:
    """The exact keys and counts to give back live counts on: a gauge's key has no window,
    so freeing one needs no lookup. Counters are left out: they are refunded by the key
    their consume returned."""
    return [
        (meter_key(account_id, c.meter, c.scope_id, None), c.cost)
        for c in charges
        if c.period is None and c.rate is None
    ]


def history_ttl(policy: Policy, tier: Tier) -> int:
    """Seconds a day of usage history is kept for the tier (-1: for ever, 0: not kept)."""
    if policy.billing is None or tier.name not in policy.billing.retention_days:
        return 0
    days = policy.billing.retention_days[tier.name]
    # a day more than the retention, so the oldest day shown is still whole
    return -1 if days is None else (days + 1) * 86_400


def request_costs(route: Route, content_length: int | None) -> tuple[tuple[str, int], ...]:
    """What a request consumes: the route's costs, plus a declared body on a storage write."""
    if route.body_meter is None or content_length is None:
        return route.consume
    return (*route.consume, (route.body_meter, content_length))


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
            raise feature_refusal(policy, tier, feature, route.name, route.features)


def feature_refusal(
    policy: Policy,
    tier: Tier,
    feature: str,
    route: str,
    needs: Sequence[str] = (),
) -> FeatureUnavailable:
    """The policy's answer when ``tier`` lacks ``feature`` (of ``needs``, all the request
    needs), with the cheapest tier that has them all."""
    needed = (*needs, feature)
    upgrade = policy.cheapest_tier(
        lambda t: t.rank > tier.rank and all(f in t.features for f in needed)
    )
    variables = {
        "route": route,
        "feature": feature,
        "feature_title": policy.features[feature].title,
    }
    refusal: FeatureUnavailable = _refusal(
        FeatureUnavailable,
        policy,
        tier,
        "feature_unavailable",
        feature,
        variables,
        upgrade,
        f"feature {feature} not on tier {tier.name}",
    )
    return refusal


def quota_refusal(
    policy: Policy, tier: Tier, route: Route, charge: Charge, state: MeterState, now: float
) -> QuotaExceeded:
    """The policy's answer when ``charge`` would take its meter past the limit."""
    meter = policy.meters[charge.meter]
    current = state.used + charge.cost
    # what the account may use: the tier's allowance plus the packages it bought
    limit = state.capacity if state.capacity is not None else 0
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
    variables.update(_package_offer(policy, tier, meter.name, current - limit))
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
    refusal.headers.update(rate_limit_headers([state], now))
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
    upgrade_price = None
    if upgrade is not None and policy.billing is not None:
        price = policy.billing.tier_prices.get(upgrade.name)
        upgrade_price = None if price is None else format_money(price)
    variables = {
        "tier": tier.name,
        "tier_title": tier.title,
        "retryable": False,
        "upgrade_tier": upgrade.name if upgrade else None,
        "upgrade_tier_title": upgrade.title if upgrade else None,
        "upgrade_price": upgrade_price,
        "package": None,
        "package_price": None,
        "package_url": None,
        **variables,
    }
    variables["next_step"] = _next_step(policy, upgrade, variables)
    template: Template = policy.template(tier, decision, subject)
    body = render(template.body, variables)
    return cls(
        message, status=template.status, body=body, headers={**template.headers, **(headers or {})}
    )


def _package_offer(policy: Policy, tier: Tier, meter: str, short: int) -> dict[str, Any]:
    """The cheapest package that adds at least the ``short`` units the request lacks."""
    billing = policy.billing
    if billing is None or tier.name in billing.never_overage:
        return {}
    for package in billing.packages_for(meter):
        if package.units >= short:
            return {
                "package": package.name,
                "package_price": format_money(package.price),
                "package_url": package.url,
            }
    return {}


def _next_step(
    policy: Policy, upgrade: Tier | None, variables: Mapping[str, Any]
) -> dict[str, Any] | None:
    """The cheaper of the package and the tier upgrade that would allow the request.

    A package is a one-time price and a tier a monthly one; the lower number wins, and a tier
    whose price the policy does not list (``Custom``) is offered only when nothing else is.
    """
    options: list[tuple[int, dict[str, Any]]] = []
    billing = policy.billing
    if variables.get("package") is not None and billing is not None:
        kind, _, size = str(variables["package"]).partition(":")
        options.append(
            (
                billing.packages[kind][size].price,
                {
                    "kind": "package",
                    "name": variables["package"],
                    "price": variables["package_price"],
                    "url": variables["package_url"],
                },
            )
        )
    if upgrade is not None:
        monthly = None if billing is None else billing.tier_prices.get(upgrade.name)
        options.append(
            (
                monthly if monthly is not None else 2**62,
                {
                    "kind": "tier",
                    "name": upgrade.name,
                    "price": None if monthly is None else format_money(monthly),
                },
            )
        )
    if not options:
        return None
    return min(options, key=lambda option: option[0])[1]


def rate_limit_headers(states: Sequence[MeterState], now: float) -> dict[str, str]:
    """Rate-limit headers for the quotas a request touched.

    ``RateLimit-Limit/-Remaining/-Reset`` describe the tightest meter (reset only for
    windows). ``RateLimit-Policy`` and ``RateLimit`` are the structured fields (RFC 9651
    lists) of draft-ietf-httpapi-ratelimit-headers-11 (May 2026): one item per limited
    meter, named by the meter, with ``q`` (quota: allowance plus packages) and ``w``
    (the window in seconds) in the policy, ``r`` (remaining) and ``t`` (seconds to reset)
    in the current state; a live count has no window, so it carries neither ``w`` nor ``t``.
    A rate meter's bucket is one more item of the structured fields (``rates.fields``);
    the three single fields stay the tightest quota's.
    """
    # one pass: each state's capacity, remaining units and reset computed once (they are
    # properties), the static part of its items taken from a cache
    policies: list[str] = []
    current: list[str] = []
    best: MeterState | None = None
    best_capacity = best_remaining = 0
    best_reset = math.inf
    for item in states:
        if item.limit is None:
            continue
        if item.rate is not None:
            bucket = rates.fields(item.rate, item, now)
            policies.append(bucket[0])
            current.append(bucket[1])
            continue
        capacity = item.limit + item.package
        remaining = max(capacity - item.used, 0)
        reset_at = item.reset_at
        ends = math.inf if reset_at is None else reset_at
        # the tightest quota: the fewest units left, the soonest reset breaking a tie
        if (
            best is None
            or remaining < best_remaining
            or (remaining == best_remaining and ends < best_reset)
        ):
            best, best_capacity, best_remaining, best_reset = item, capacity, remaining, ends
        name, quota = _policy_item(item.meter, capacity, item.period, reset_at)
        policies.append(quota)
        if reset_at is not None and item.period is not None:
            current.append(f"{name};r={remaining};t={max(math.ceil(reset_at - now), 0)}")
        else:
            current.append(f"{name};r={remaining}")
    if not policies:
        return {}
    headers: dict[str, str] = {}
    if best is not None:
        headers["RateLimit-Limit"] = str(best_capacity)
        headers["RateLimit-Remaining"] = str(best_remaining)
        if best.reset_at is not None:
            headers["RateLimit-Reset"] = str(max(math.ceil(best.reset_at - now), 0))
    headers["RateLimit-Policy"] = ", ".join(policies)
    headers["RateLimit"] = ", ".join(current)
    return headers


@functools.lru_cache(maxsize=1024)
def _policy_item(
    meter: str, capacity: int, period: Period | None, reset_at: float | None
) -> tuple[str, str]:
    """A quota's name as a structured-field string and its ``RateLimit-Policy`` item.

    Both stay the same for every request in one window at one capacity, so they are
    formatted once per window rather than once per response."""
    name = '"' + (meter or "quota") + '"'
    if reset_at is not None and period is not None:
        return name, f"{name};q={capacity};w={_window_seconds(period, reset_at)}"
    return name, f"{name};q={capacity}"


@functools.lru_cache(maxsize=64)
def _window_seconds(period: Period, reset_at: float) -> int:
    """The length of the calendar window ending at ``reset_at``: a day or that month."""
    if period == "day":
        return 86_400
    last = datetime.fromtimestamp(reset_at - 1, UTC)
    start = datetime(last.year, last.month, 1, tzinfo=UTC).timestamp()
    return int(reset_at - start)
