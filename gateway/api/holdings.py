"""Live counts the gateway sets itself when it creates or removes things outside a route's
own consume (provisioning, admin actions): held without a limit, freed on exact keys."""

from __future__ import annotations

from collections.abc import Sequence

from gateway.metering import decide
from gateway.metering.store import Charge, Store
from gateway.policy.model import Policy


def _charges(
    policy: Policy, account_id: str, costs: Sequence[tuple[str, int]], project_id: str | None
) -> list[Charge]:
    # meters this policy lacks are skipped: an AgentIdP policy has no `projects` to count
    known = [(meter, cost) for meter, cost in costs if meter in policy.meters]
    tier = policy.tier(None)
    return [
        Charge(c.meter, c.scope_id, c.period, c.cost, None)
        for c in decide.charges(policy, tier, account_id, project_id, known)
    ]


async def hold(
    store: Store,
    policy: Policy,
    account_id: str,
    costs: Sequence[tuple[str, int]],
    project_id: str | None = None,
) -> None:
    """Count what the account now holds; never refused, because it already exists."""
    charges = _charges(policy, account_id, costs, project_id)
    if charges:
        await store.consume(account_id, charges)


async def free(
    store: Store,
    policy: Policy,
    account_id: str,
    costs: Sequence[tuple[str, int]],
    project_id: str | None = None,
) -> None:
    """Give back live counts for things that are gone."""
    freed = decide.releases(account_id, _charges(policy, account_id, costs, project_id))
    if freed:
        await store.release(account_id, freed)


def key_meter(kind: str) -> str:
    """The live count a key of this kind takes: user keys and project keys are held apart."""
    return "user_api_keys" if kind == "user" else "api_keys"
