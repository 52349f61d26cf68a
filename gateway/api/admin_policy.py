"""Admin endpoints for the policy: show it, reload it everywhere, explain a decision."""

from __future__ import annotations

from collections.abc import Collection

from aiohttp import web

from gateway.api.body import field, read_json
from gateway.errors import Conflict, PolicyInvalid, ValidationError
from gateway.explain import explain, parse_request
from gateway.identity.resolve import Authenticator
from gateway.identity.tier_moves import TierChangesRefused
from gateway.metering.clock import Clock
from gateway.metering.store import Store
from gateway.metering.windows import iso
from gateway.policy.holder import PolicyHolder
from gateway.policy.reload import RELOAD_CHANNEL, Reloader
from gateway.policy.source import ConfigError


class AdminPolicyApi:
    def __init__(
        self,
        *,
        policy: PolicyHolder,
        reloader: Reloader,
        authenticator: Authenticator,
        store: Store,
        clock: Clock,
        handlers: Collection[str] = (),
    ) -> None:
        self._handlers = frozenset(handlers)
        self._policy = policy
        self._reloader = reloader
        self._auth = authenticator
        self._store = store
        self._clock = clock

    def routes(self) -> list[web.RouteDef]:
        return [
            web.get("/admin/policy", self.show),
            web.post("/admin/policy/reload", self.reload),
            web.post("/admin/explain", self.explain),
        ]

    def _summary(self) -> dict[str, object]:
        policy = self._policy.current
        return {
            "name": policy.name,
            "digest": policy.digest,
            "file": policy.file,
            "loaded_at": iso(self._policy.loaded_at),
            "shadow": policy.shadow,
        }

    async def show(self, request: web.Request) -> web.Response:
        return web.json_response({**self._summary(), "content": self._reloader.text})

    async def reload(self, request: web.Request) -> web.Response:
        allow = request.query.get("allow_tier_changes", "false")
        if allow not in ("true", "false"):
            raise ValidationError(
                "allow_tier_changes is true or false", details={"field": "allow_tier_changes"}
            )
        try:
            await self._reloader.reload(
                "POST /admin/policy/reload", allow_tier_changes=allow == "true"
            )
        except TierChangesRefused as exc:
            raise Conflict(
                f"the policy was not reloaded: {exc}", details=exc.moves.details()
            ) from exc
        except ConfigError as exc:
            raise PolicyInvalid(
                f"the policy was not reloaded: {exc}",
                details={"file": exc.file, "line": exc.line, "path": exc.dotted},
            ) from exc
        except ValueError as exc:
            raise PolicyInvalid(f"the policy was not reloaded: {exc}") from exc
        # the other worker processes reload on this message; this one already has
        await self._store.publish(RELOAD_CHANNEL, self._policy.current.digest)
        return web.json_response(self._summary())

    async def explain(self, request: web.Request) -> web.Response:
        body = await read_json(request)
        try:
            method, path = parse_request(field(body, "request", str, max_len=4000))
        except ValueError as exc:
            raise ValidationError(str(exc), details={"field": "request"}) from exc
        credential = field(body, "credential", str, required=False, max_len=8192)
        content_length = field(body, "content_length", int, required=False)
        if content_length is not None and content_length < 0:
            raise ValidationError(
                "content_length is a number of bytes", details={"field": "content_length"}
            )
        report = await explain(
            self._policy.current,
            self._store,
            self._clock,
            method,
            path,
            credential=credential,
            authenticator=self._auth,
            content_length=content_length,
            handlers=self._handlers,
        )
        return web.json_response(report)
