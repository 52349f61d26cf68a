"""AgentIdP tier endpoints (seed 002): live status, and upgrades through Stripe Checkout."""

from __future__ import annotations

from aiohttp import web

from gateway.api.body import read_json
from gateway.api.local import LocalContext, LocalHandler
from gateway.api.stripe import StripeClient
from gateway.errors import BadRequest, Unauthenticated, ValidationError
from gateway.metering import decide
from gateway.metering.store import Store

# the seed's field names for the policy's meters: (limits field, usage field, meter)
STATUS_FIELDS = (
    ("maxAgents", "agentCount", "agents"),
    ("maxCallsPerDay", "callsToday", "api_calls"),
    ("maxTokensPerDay", "tokensToday", "token_issuances"),
)


class UpgradeNotRequired(BadRequest):
    code = "TIER_UPGRADE_NOT_REQUIRED"


class TiersApi:
    def __init__(self, *, store: Store, stripe: StripeClient) -> None:
        self._store = store
        self._stripe = stripe

    def handlers(self) -> dict[str, LocalHandler]:
        return {"tier-status": self.status, "tier-upgrade": self.upgrade}

    async def status(self, ctx: LocalContext) -> web.Response:
        identity, policy = ctx.require_identity(), ctx.policy
        if identity.organization_id is None:
            raise Unauthenticated(f"the tier endpoints need a token with {policy.tenant_claim}")
        tier = policy.tier(identity.tier)
        fields = [f for f in STATUS_FIELDS if f[2] in policy.meters]
        charges = decide.charges(
            policy, tier, identity.account_id, None, [(meter, 0) for _, _, meter in fields]
        )
        states = await self._store.peek(identity.account_id, charges)
        # an unlimited meter shows null: there is no number to compare usage against
        return web.json_response(
            {
                "tier": tier.name,
                "limits": {limit: tier.limit(meter) for limit, _, meter in fields},
                "usage": {
                    usage: state.used for (_, usage, _), state in zip(fields, states, strict=True)
                },
            }
        )

    async def upgrade(self, ctx: LocalContext) -> web.Response:
        identity, policy = ctx.require_identity(), ctx.policy
        if identity.organization_id is None:
            raise Unauthenticated(f"the tier endpoints need a token with {policy.tenant_claim}")
        body = await read_json(ctx.request)
        target = body.get("target_tier")
        if not isinstance(target, str) or target not in policy.tiers:
            raise ValidationError(
                f"target_tier must be one of: {', '.join(policy.tiers)}.",
                details={"received": target},
            )
        current = policy.tier(identity.tier)
        if policy.tiers[target].rank <= current.rank:
            raise UpgradeNotRequired(
                f"{target} is not above the organization's current tier ({current.name}); "
                "check GET /api/v1/tiers/status.",
                details={"current": current.name, "received": target},
            )
        url = await self._stripe.create_checkout(
            organization_id=identity.organization_id,
            account_id=identity.account_id,
            tier=target,
        )
        return web.json_response({"checkoutUrl": url})
