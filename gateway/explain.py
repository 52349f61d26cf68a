"""Why a request would be admitted or refused: the pipeline's decision, read-only.

It follows the request path's own steps (match, identify, gate, meter) with ``Store.peek``
in place of ``consume``, on the same inputs (the credential's account, packages and overage,
the declared body size, the gateway's handlers), so it agrees with the real decision and
consumes nothing. tests/test_explain_serve.py holds the two to the same answers.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

from gateway.errors import GatewayError, NotFound, PolicyRefusal, Unauthenticated
from gateway.identity.resolve import Authenticator, Identity
from gateway.metering import caps, decide
from gateway.metering.clock import Clock
from gateway.metering.store import Store
from gateway.metering.windows import iso
from gateway.policy.model import Policy
from gateway.proxy.path import canonical_path


def parse_request(text: str) -> tuple[str, str]:
    """``"GET /api/x"`` -> (method, path); ValueError when it is not that shape."""
    method, _, path = text.strip().partition(" ")
    path = path.strip()
    if not method.isalpha() or not path.startswith("/"):
        raise ValueError(f"expected 'METHOD /path', got {text!r}")
    return method.upper(), path


async def explain(
    policy: Policy,
    store: Store,
    clock: Clock,
    method: str,
    path: str,
    *,
    credential: str | None = None,
    authenticator: Authenticator | None = None,
    identity: Identity | None = None,
    content_length: int | None = None,
    handlers: Collection[str] | None = None,
) -> dict[str, Any]:
    """The decision the gateway would take now for ``method path`` with this caller.

    The caller is a ``credential`` resolved by ``authenticator``, or an ``identity`` given
    outright (offline explain, where no accounts exist). ``content_length`` is the body the
    request declares (charged to a route's body meter); ``handlers`` are the names of the
    gateway's own handlers (a route naming another is refused as serve refuses it)."""
    out: dict[str, Any] = {
        "request": f"{method} {path}",
        "content_length": content_length,
        "policy": {"name": policy.name, "digest": policy.digest},
        "route": None,
        "identity": None,
        "tier": None,
        "meters": [],
    }
    try:
        canonical, _ = canonical_path(path.partition("?")[0])
        matched = policy.match(method, canonical)
        if matched is None:
            raise NotFound(f"no route for {method} {canonical}")
        route, params = matched
        out["route"] = {"name": route.name, "pattern": route.pattern, "auth": route.auth}
        if not route.auth:
            _check_handler(route.name, route.answer, handlers)
            return {**out, "decision": _admitted(route.answer)}
        if identity is None:
            if credential is None or authenticator is None:
                raise Unauthenticated("this route needs an API key or a bearer token")
            identity = await authenticator.identify(policy, credential)
        tier = policy.tier(identity.tier)
        out["identity"] = {
            "account_id": identity.account_id,
            "kind": identity.kind,
            "project_id": identity.project_id,
            "key_id": identity.key_id,
            "organization_id": identity.organization_id,
        }
        out["tier"] = tier.name
        shadow = policy.shadowed(tier, route)
        refusals: list[GatewayError] = []
        try:
            decide.check_gates(policy, tier, route)
            caps.check(policy, route, identity)
        except PolicyRefusal as gate:
            refusals.append(gate)
        project_id = decide.project_scope(route, identity, params)
        costs = decide.request_costs(route, content_length)
        charges = decide.charges(policy, tier, identity.account_id, project_id, costs, identity)
        charges += caps.charges(route, identity)
        states = await store.peek(identity.account_id, charges) if charges else ()
        now = clock.now()
        over = None
        for charge, state in zip(charges, states, strict=True):
            fits = state.limit is None or state.used + charge.cost <= state.limit
            if not fits and over is None:
                # the store refuses at the first charge over its limit, and so does this
                over = (
                    caps.refusal(policy, charge, state, now)
                    if caps.is_cap(charge.meter)
                    else decide.refusal(policy, tier, route, charge, state, now)
                )
            out["meters"].append(
                {
                    "meter": charge.meter,
                    "scope_id": charge.scope_id,
                    "cost": charge.cost,
                    "used": state.used,
                    "limit": state.limit,
                    "remaining": state.remaining,
                    "reset": iso(state.reset_at) if state.reset_at is not None else None,
                    "fits": fits,
                    # a rate meter's bucket: limit is its burst, used the units in use
                    **({"rate": charge.rate.text()} if charge.rate is not None else {}),
                }
            )
        if over is not None and (shadow or not refusals):
            refusals.append(over)
        if not refusals or shadow:
            # serve looks the handler up only once the request is admitted
            _check_handler(route.name, route.answer, handlers)
        if not refusals:
            return {**out, "decision": _admitted(route.answer)}
        if shadow:
            decision = _admitted(route.answer)
            decision["shadow"] = [_refused(r) for r in refusals]
            return {**out, "decision": decision}
        return {**out, "decision": _refused(refusals[0])}
    except GatewayError as exc:
        return {**out, "decision": _refused(exc)}


def _check_handler(route: str, answer: str | None, handlers: Collection[str] | None) -> None:
    if answer is not None and handlers is not None and answer not in handlers:
        raise NotFound(f"route {route} names no handler this gateway has")


def _admitted(answer: str | None) -> dict[str, Any]:
    # the upstream (or the gateway's own handler) decides the status of an admitted request
    return {"outcome": "answered" if answer else "forwarded", "status": None, "body": None}


def _refused(exc: GatewayError) -> dict[str, Any]:
    return {
        "outcome": exc.outcome,
        "status": exc.status,
        "body": exc.body(),
        "headers": exc.headers,
    }
