"""The admin API: accounts, projects, keys, tiers and usage, behind GATEWAY_ADMIN_TOKEN."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.api.body import field, read_json
from gateway.api.holdings import free, hold, key_meter
from gateway.errors import Forbidden, NotFound, Unauthenticated, ValidationError
from gateway.identity.registry import Account, Registry
from gateway.identity.tokens import TENANT_ID
from gateway.metering import decide
from gateway.metering.caps import parse_caps
from gateway.metering.store import MeterState, Store
from gateway.metering.windows import iso
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

MAX_USAGE = 2**53 - 1


def admin_guard(
    token: str | None,
) -> Middleware:
    expected = token.encode() if token else None

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if not request.path.startswith("/admin/"):
            return await handler(request)
        if expected is None:
            raise Forbidden("the admin API is disabled: set GATEWAY_ADMIN_TOKEN to enable it")
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # the scheme is case-insensitive (RFC 9110); the token is compared in constant time,
        # so response timing reveals nothing about it
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.encode(), expected):
            raise Unauthenticated("a valid admin token is required")
        return await handler(request)

    return middleware


_PROJECT_UNITS = (("projects", 1), ("active_projects", 1))


class AdminApi:
    def __init__(self, *, policy: PolicyHolder, registry: Registry, store: Store) -> None:
        self._policy = policy
        self._registry = registry
        self._store = store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.post("/admin/accounts", self.create_account),
            web.get("/admin/accounts/{account_id}", self.get_account),
            web.put("/admin/accounts/{account_id}/tier", self.set_tier),
            web.post("/admin/accounts/{account_id}/projects", self.create_project),
            web.post("/admin/accounts/{account_id}/keys", self.create_key),
            web.delete("/admin/keys/{key_id}", self.revoke_key),
            web.get("/admin/accounts/{account_id}/usage", self.usage),
            web.put("/admin/accounts/{account_id}/usage/{meter}", self.set_usage),
        ]

    def _tier_name(self, body: dict[str, Any]) -> str:
        policy = self._policy.current
        tier = field(body, "tier", str)
        if tier not in policy.tiers:
            raise ValidationError(
                f"tier must be one of: {', '.join(policy.tiers)}.", details={"received": tier}
            )
        return str(tier)

    async def create_account(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        tier = self._tier_name(body)
        organization_id = field(body, "organization_id", str, required=False, max_len=128)
        if organization_id is not None and not TENANT_ID.fullmatch(organization_id):
            raise ValidationError(
                "organization_id may hold letters, digits and . _ : @ -",
                details={"received": organization_id},
            )
        account = await self._registry.create_account(
            tier,
            name=field(body, "name", str, required=False),
            email=field(body, "email", str, required=False, max_len=254),
            organization_id=organization_id,
            is_anonymous=bool(field(body, "is_anonymous", bool, required=False)),
        )
        return web.json_response(account.public(), status=201)

    async def get_account(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        projects = await self._registry.projects(account.id)
        keys = await self._registry.keys(account.id)
        return web.json_response(
            {
                **account.public(),
                "projects": [p.public() for p in projects],
                "keys": [k.public() for k in keys],
            }
        )

    async def set_tier(self, request: web.Request) -> web.Response:
        tier = self._tier_name(await read_json(request))
        account = await self._registry.update_account(request.match_info["account_id"], tier=tier)
        return web.json_response(account.public())

    async def create_project(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        body = await read_json(request)
        project = await self._registry.create_project(account.id, field(body, "name", str))
        # what ops create is held like what callers create, so the tier counts it
        await hold(self._store, self._policy.current, account.id, _PROJECT_UNITS)
        return web.json_response(project.public(), status=201)

    async def create_key(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        body = await read_json(request)
        policy = self._policy.current
        prefix = field(body, "prefix", str)
        key_type = next((k for k in policy.key_types if k.prefix == prefix), None)
        if key_type is None:
            raise ValidationError(
                f"prefix must be one of: {', '.join(k.prefix for k in policy.key_types)}.",
                details={"received": prefix},
            )
        project_id = _project_id(body)
        if project_id is not None:
            project = await self._registry.project(project_id)
            if project is None or project.account_id != account.id:
                raise NotFound(f"account {account.id} has no project {project_id!r}")
        elif key_type.kind == "project":
            raise ValidationError(
                "project_id is required for a project key.", details={"field": "project_id"}
            )
        capped = parse_caps(policy, policy.tier(account.tier), body.get("caps"), kind=key_type.kind)
        record, plaintext = await self._registry.issue_key(
            account.id,
            key_type,
            project_id=project_id,
            label=field(body, "label", str, required=False),
            caps=capped,
        )
        await hold(self._store, policy, account.id, [(key_meter(record.kind), 1)])
        # the only time the key is ever shown: only its digest is kept
        return web.json_response({**record.public(), "key": plaintext}, status=201)

    async def revoke_key(self, request: web.Request) -> web.Response:
        key_id = request.match_info["key_id"]
        record = await self._registry.revoke_key_once(key_id)
        if record is not None:
            units = [(key_meter(record.kind), 1)]
            await free(self._store, self._policy.current, record.account_id, units)
        else:
            record = await self._registry.revoke_key(key_id)  # already revoked: unchanged
        return web.json_response(record.public())

    async def usage(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        project_id = request.query.get("project_id")
        return web.json_response(
            await usage_report(self._policy.current, self._store, account, project_id)
        )

    async def set_usage(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        policy = self._policy.current
        meter_name = request.match_info["meter"]
        if meter_name not in policy.meters:
            raise NotFound(f"no meter {meter_name!r}; meters are: {', '.join(policy.meters)}")
        if policy.meters[meter_name].kind == "rate":
            raise ValidationError(
                f"{meter_name} is a rate meter: it has no usage to set, only a bucket that "
                "refills by itself",
                details={"meter": meter_name},
            )
        body = await read_json(request)
        value = field(body, "value", int)
        # every store keeps usage as a signed 64-bit integer; JSON callers lose precision past 2**53
        if not 0 <= value <= MAX_USAGE:
            raise ValidationError(
                f"value must be between 0 and {MAX_USAGE}.", details={"received": value}
            )
        project_id = field(body, "project_id", str, required=False)
        tier = policy.tier(account.tier)
        charge = decide.charges(policy, tier, account.id, project_id, [(meter_name, 0)])[0]
        state = await self._store.set_usage(account.id, charge, value)
        return web.json_response({"meter": meter_name, **_state_json(state)})


def _state_json(state: MeterState) -> dict[str, Any]:
    return {
        "used": state.used,
        "limit": state.limit,
        "remaining": state.remaining,
        "resets_at": iso(state.reset_at) if state.reset_at is not None else None,
    }


async def usage_report(
    policy: Policy, store: Store, account: Account, project_id: str | None
) -> dict[str, Any]:
    """Every meter of the account's tier as it stands now, consuming nothing."""
    tier = policy.tier(account.tier)
    # quotas and live counts; a rate meter's bucket refills by itself (no usage to report)
    names = [name for name, meter in policy.meters.items() if meter.kind != "rate"]
    charges = decide.charges(policy, tier, account.id, project_id, [(name, 0) for name in names])
    states = await store.peek(account.id, charges)
    return {
        "account_id": account.id,
        "tier": tier.name,
        "meters": {name: _state_json(state) for name, state in zip(names, states, strict=True)},
    }


def _project_id(body: dict[str, Any]) -> str | None:
    """An optional ``project_id``: the integer a project shows, or the same digits as text."""
    value = body.get("project_id")
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    found: str | None = field(body, "project_id", str, required=False)
    return found
