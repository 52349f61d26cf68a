"""Anonymous provisioning, conversion to FREE, login and logout (seed 000)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

from aiohttp import web

from gateway.api.body import field, read_json
from gateway.api.holdings import hold
from gateway.api.local import LocalContext, LocalHandler
from gateway.errors import Conflict, Forbidden, QuotaExceeded, Unauthenticated, ValidationError
from gateway.identity.passwords import hash_password, verify_password
from gateway.identity.registry import Account, Registry
from gateway.identity.sessions import Session, Sessions
from gateway.identity.throttle import LoginLimits, LoginThrottle
from gateway.identity.users import Users, normalise_email
from gateway.metering.clock import Clock
from gateway.metering.store import Charge, Store
from gateway.metering.windows import iso
from gateway.policy.model import KeyType, Policy
from gateway.proxy.client import IpNetwork, client_address
from gateway.settings import AccountSettings

ANONYMOUS_TIER = "anonymous"
CONVERTED_TIER = "free"  # seed 000: a converted account is moved to FREE at once
ANONYMOUS_KEY_PREFIX = "anon_ask_"
PROJECT_KEY_PREFIX = "ask_"
CONVERSION_URL = "/api/auth/convert-anonymous"
MAX_PASSWORD = 1024


class AlreadyConverted(Conflict):
    code = "ALREADY_CONVERTED"


class EmailTaken(Conflict):
    code = "EMAIL_ALREADY_REGISTERED"


def key_type(policy: Policy, prefix: str) -> KeyType:
    found = next((k for k in policy.key_types if k.prefix == prefix), None)
    if found is None:
        raise ValueError(f"{policy.file}: no key type with prefix {prefix!r}")
    return found


def session_json(session: Session, token: str) -> dict[str, Any]:
    return {"session_token": token, "session_expires_at": iso(session.expires_at)}


class AccountsApi:
    def __init__(
        self,
        *,
        registry: Registry,
        users: Users,
        sessions: Sessions,
        store: Store,
        clock: Clock,
        settings: AccountSettings,
        trusted_proxies: Sequence[IpNetwork],
    ) -> None:
        self._registry = registry
        self._users = users
        self._sessions = sessions
        self._store = store
        self._clock = clock
        self._settings = settings
        self._trusted = tuple(trusted_proxies)
        self._throttle = LoginThrottle(
            store,
            clock,
            LoginLimits(
                per_account=settings.login_failures_per_account,
                per_address=settings.login_failures_per_address,
                window_seconds=settings.login_window_seconds,
            ),
        )

    def handlers(self) -> dict[str, LocalHandler]:
        return {
            "provision-anonymous": self.provision,
            "convert-anonymous": self.convert,
            "login": self.login,
            "logout": self.logout,
        }

    async def _guard(self, request: web.Request) -> None:
        """Provisioning creates accounts for nobody in particular: cap it per client address."""
        limit = self._settings.provisions_per_address_per_day
        if limit is None:
            return
        address = client_address(request, self._trusted)
        charge = Charge("provisions", address, "day", 1, limit)
        decision = await self._store.consume(f"client:{address}", [charge])
        if decision.admitted:
            return
        reset_at = decision.states[0].reset_at or self._clock.now()
        retry_after = max(math.ceil(reset_at - self._clock.now()), 1)
        raise QuotaExceeded(
            f"provisioning limit reached for {address}",
            status=429,
            body={
                "error": "Too many requests",
                "reason": f"At most {limit} anonymous accounts per client address per day.",
                "limit": limit,
                "reset": iso(reset_at),
                "retryable": True,
            },
            headers={"Retry-After": str(retry_after)},
        )

    async def provision(self, ctx: LocalContext) -> web.Response:
        request, policy = ctx.request, ctx.policy
        body = await read_json(request) if request.body_exists else {}
        name = field(body, "name", str, required=False) or "My Project"
        field(body, "description", str, required=False, max_len=2000)
        # looked up first: a policy without these key types fails before anything is created
        user_type = key_type(policy, ANONYMOUS_KEY_PREFIX)
        project_type = key_type(policy, PROJECT_KEY_PREFIX)
        await self._guard(request)
        account = await self._registry.create_account(ANONYMOUS_TIER, is_anonymous=True)
        project = await self._registry.create_project(account.id, name)
        _, user_key = await self._registry.issue_key(account.id, user_type)
        _, project_key = await self._registry.issue_key(
            account.id, project_type, project_id=project.id
        )
        session, token = await self._sessions.open(account.id)
        # the account now holds these, so the anonymous limits count them from the start
        held = [("projects", 1), ("active_projects", 1), ("api_keys", 1), ("user_api_keys", 1)]
        await hold(self._store, policy, account.id, held)
        # keys and the session token are shown here once; only their digests are kept
        return web.json_response(
            {
                "success": True,
                "project_id": int(project.id),
                "user_id": int(account.id),
                "user_api_key": user_key,
                "project_api_key": project_key,
                "session_token": token,
                "project": {"id": int(project.id), "name": project.name},
                "tier": ANONYMOUS_TIER,
                "session_expires_at": iso(session.expires_at),
            }
        )

    async def convert(self, ctx: LocalContext) -> web.Response:
        body = await read_json(ctx.request)
        user_key = field(body, "user_api_key", str, max_len=256)
        name = field(body, "name", str)
        email = normalise_email(field(body, "email", str, max_len=254))
        password = field(body, "password", str, max_len=MAX_PASSWORD)
        if email is None:
            raise ValidationError(
                "email must be a valid email address.", details={"field": "email"}
            )
        minimum = self._settings.min_password_length
        if len(password) < minimum:
            raise ValidationError(
                f"password must be at least {minimum} characters.", details={"field": "password"}
            )
        if not user_key.startswith(ANONYMOUS_KEY_PREFIX):
            raise ValidationError(
                f"user_api_key must be the {ANONYMOUS_KEY_PREFIX} key from provisioning.",
                details={"field": "user_api_key"},
            )
        key = await self._registry.key_for(user_key)
        account = await self._registry.account(key.account_id) if key is not None else None
        if account is None:
            raise Unauthenticated("user_api_key is unknown or revoked")
        if not account.is_anonymous or not await self._users.claim_conversion(account.id):
            raise AlreadyConverted("this account has already been converted")
        try:
            if not await self._users.claim_email(email, account.id):
                raise EmailTaken("this email is already registered")
            try:
                await self._users.set_password_hash(account.id, await hash_password(password))

                def convert(current: Account) -> Account:
                    # decided on the stored account, not this process's cached copy
                    if not current.is_anonymous:
                        raise AlreadyConverted("this account has already been converted")
                    return dataclasses.replace(
                        current, tier=CONVERTED_TIER, is_anonymous=False, email=email, name=name
                    )

                # usage lives under the account id, so everything used so far carries over
                account, _ = await self._registry.change_account(account.id, convert)
            except BaseException:
                await self._users.release_email(email)
                raise
        except BaseException:
            # nothing was converted: the key may try again (with another email)
            await self._users.release_conversion(account.id)
            raise
        session, token = await self._sessions.open(account.id)
        return web.json_response(
            {
                "success": True,
                "user_id": int(account.id),
                "name": account.name,
                "email": account.email,
                "is_anonymous": False,
                "tier": account.tier,
                **session_json(session, token),
            }
        )

    async def login(self, ctx: LocalContext) -> web.Response:
        body = await read_json(ctx.request)
        email = field(body, "email", str, max_len=254)
        password = field(body, "password", str, max_len=MAX_PASSWORD)
        # throttled before any hashing, so guessing costs the guesser, not the gateway
        attempt = await self._throttle.begin(email, client_address(ctx.request, self._trusted))
        account_id = await self._users.account_for_email(email)
        encoded = await self._users.password_hash(account_id) if account_id else None
        # one message for an unknown email and a wrong password: no account enumeration
        if not await verify_password(password, encoded) or account_id is None:
            raise Unauthenticated("email or password is wrong")
        await self._throttle.succeeded(attempt)
        account = await self._registry.require_account(account_id)
        session, token = await self._sessions.open(account.id)
        return web.json_response(
            {"success": True, "user_id": int(account.id), "tier": account.tier}
            | session_json(session, token)
        )

    async def logout(self, ctx: LocalContext) -> web.Response:
        identity = ctx.require_identity()
        if identity.kind != "session" or identity.key_id is None:
            # authenticated, but a key has no session to end
            raise Forbidden("log out with the session token in Authorization, not a key")
        await self._sessions.revoke(identity.key_id)
        return web.json_response({"success": True})
