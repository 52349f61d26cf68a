"""Service caps (seed 001): per project key, deny a sensitive module or cap its calls.

A key's caps are ``{module: {"deny": true}}`` or ``{module: {"limit": N, "period": "day"}}``.
A deny refuses before anything is metered; a count is one more Charge, scoped to the key,
in the same single store decision as the tier's limits, so a request is admitted only if
both fit. Modules are the policy's ``service_caps.modules``, named on routes by ``module:``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from gateway.errors import ServiceCapDenied, ServiceCapExceeded, ValidationError
from gateway.identity.resolve import Identity
from gateway.metering import decide
from gateway.metering.store import Charge, MeterState
from gateway.metering.windows import iso
from gateway.policy.model import Policy, Route, Tier

#: the meter name of a cap's counter; ':' cannot occur in a policy's meter names
PREFIX = "cap:"
_PERIODS = ("day", "month")
_MAX_LIMIT = 10**12


def is_cap(meter: str) -> bool:
    return meter.startswith(PREFIX)


def parse_caps(policy: Policy, tier: Tier, raw: Any, *, kind: str) -> dict[str, dict[str, Any]]:
    """Validate caps asked for a new key; refuse below the tiers granting service caps
    with the policy's upgrade answer (402 "Upgrade required" in the shipped policy)."""
    if raw is None:
        return {}
    config = policy.service_caps
    if config is None:
        raise ValidationError("this policy defines no service caps", details={"field": "caps"})
    if config.feature not in tier.features:
        raise decide.feature_refusal(policy, tier, config.feature, "caps")
    if kind != "project":
        raise ValidationError("service caps apply to project keys", details={"field": "caps"})
    if not isinstance(raw, dict):
        raise ValidationError(
            'caps is an object: module -> "deny" or {"limit": N, "period": "day"|"month"}',
            details={"field": "caps"},
        )
    out: dict[str, dict[str, Any]] = {}
    for module, cap in raw.items():
        where = {"field": f"caps.{module}"}
        if module not in config.modules:
            raise ValidationError(
                f"unknown module {module!r}; modules are: {', '.join(config.modules)}",
                details=where,
            )
        if cap == "deny":
            out[module] = {"deny": True}
            continue
        limit = cap.get("limit") if isinstance(cap, dict) else None
        period = cap.get("period", "month") if isinstance(cap, dict) else None
        if (
            not isinstance(cap, dict)
            or set(cap) - {"limit", "period"}
            or isinstance(limit, bool)
            or not isinstance(limit, int)
            or not 0 < limit <= _MAX_LIMIT
            or period not in _PERIODS
        ):
            raise ValidationError(
                f'caps.{module} is "deny" or {{"limit": N (1 or more), "period": "day"|"month"}}',
                details={**where, "received": cap},
            )
        out[module] = {"limit": limit, "period": period}
    return out


def check(policy: Policy, route: Route, identity: Identity) -> None:
    """Refuse a module the key's caps deny, before anything is metered."""
    cap = _cap(route, identity)
    if cap is not None and cap.get("deny"):
        module = route.module or ""
        raise ServiceCapDenied(
            f"service cap denies {module} to key {identity.key_id}",
            status=403,
            body={
                "error": "Service cap",
                "reason": f"This API key may not use {_title(policy, module)} "
                "(a service cap on the key denies it).",
                "cap": {"module": module, "key_id": identity.key_id, "deny": True},
                "retryable": False,
            },
        )


def charges(route: Route, identity: Identity) -> list[Charge]:
    """The key's counted cap on the route's module, as one more Charge (or none)."""
    cap = _cap(route, identity)
    if cap is None or cap.get("deny") or identity.key_id is None:
        return []
    meter = PREFIX + (route.module or "")
    return [Charge(meter, identity.key_id, cap["period"], 1, int(cap["limit"]))]


def refusal(policy: Policy, charge: Charge, state: MeterState, now: float) -> ServiceCapExceeded:
    """The answer when a request would take the key past its cap."""
    module = charge.meter.removeprefix(PREFIX)
    retry_after = None if state.reset_at is None else max(math.ceil(state.reset_at - now), 1)
    headers = {"Retry-After": str(retry_after)} if retry_after is not None else {}
    return ServiceCapExceeded(
        f"service cap on {module} reached for key {charge.scope_id}",
        status=429,
        body={
            "error": "Service cap exceeded",
            "reason": f"This API key's cap on {_title(policy, module)} is reached: "
            f"{charge.limit:,} calls per {charge.period}.",
            "cap": {
                "module": module,
                "key_id": charge.scope_id,
                "limit": charge.limit,
                "period": charge.period,
            },
            "current": state.used,
            "reset": iso(state.reset_at) if state.reset_at is not None else None,
            "retryable": True,
        },
        headers=headers,
    )


def _cap(route: Route, identity: Identity) -> Mapping[str, Any] | None:
    if route.module is None:
        return None
    return identity.caps.get(route.module)


def _title(policy: Policy, module: str) -> str:
    config = policy.service_caps
    return config.modules.get(module, module) if config is not None else module
