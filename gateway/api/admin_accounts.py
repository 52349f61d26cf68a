"""Admin API for the tier lifecycle: find accounts, list their projects, keys and sessions,
and revoke sessions."""

from __future__ import annotations

from aiohttp import web

from gateway.errors import NotFound, ValidationError
from gateway.identity.registry import Account, Registry, org_account_id
from gateway.identity.sessions import Sessions
from gateway.identity.users import Users
from gateway.metering.store import Store
from gateway.policy.holder import PolicyHolder


class AdminAccountsApi:
    def __init__(
        self,
        *,
        policy: PolicyHolder,
        registry: Registry,
        users: Users,
        sessions: Sessions,
        store: Store,
    ) -> None:
        self._policy = policy
        self._registry = registry
        self._users = users
        self._sessions = sessions
        self._store = store

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/accounts", self.find),
            web.get("/admin/accounts/{account_id}/projects", self.projects),
            web.get("/admin/accounts/{account_id}/keys", self.keys),
            web.get("/admin/accounts/{account_id}/sessions", self.sessions),
            web.delete("/admin/accounts/{account_id}/sessions", self.revoke_sessions),
            web.delete("/admin/sessions/{session_id}", self.revoke_session),
        ]

    async def find(self, request: web.Request) -> web.Response:
        """``?email=`` or ``?organization_id=``: the one account it names."""
        email = request.query.get("email")
        organization_id = request.query.get("organization_id")
        if (email is None) == (organization_id is None):
            raise ValidationError("give exactly one of the query parameters email, organization_id")
        account: Account | None = None
        if email is not None:
            account_id = await self._users.account_for_email(email)
            account = await self._registry.account(account_id) if account_id else None
        elif organization_id:
            account = await self._registry.account(org_account_id(organization_id))
        if account is None:
            raise NotFound("no account matches")
        return web.json_response({"accounts": [account.public()]})

    async def projects(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        found = await self._registry.projects(account.id)
        return web.json_response({"projects": [p.public() for p in found]})

    async def keys(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        found = await self._registry.keys(account.id)
        return web.json_response({"keys": [k.public() for k in found]})

    async def sessions(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        found = await self._sessions.of_account(account.id)
        return web.json_response({"sessions": [s.public() for s in found]})

    async def revoke_sessions(self, request: web.Request) -> web.Response:
        account = await self._registry.require_account(request.match_info["account_id"])
        revoked = await self._sessions.revoke_all(account.id)
        return web.json_response({"revoked": [s.id for s in revoked]})

    async def revoke_session(self, request: web.Request) -> web.Response:
        session = await self._sessions.revoke(request.match_info["session_id"])
        return web.json_response(session.public())
