"""Projects and API keys, answered by the gateway because it must recognise every key.

Each route's policy entry holds it to the tier (its consume takes the live counts before the
handler runs); a handler that refuses answers 4xx, so what was taken is given back.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from aiohttp import web

from gateway.api.accounts import PROJECT_KEY_PREFIX, key_type
from gateway.api.body import field, read_json
from gateway.api.holdings import key_meter
from gateway.api.local import LocalContext, LocalHandler
from gateway.errors import Conflict, NotFound, ValidationError
from gateway.identity.registry import ApiKey, Project, Registry
from gateway.metering.caps import parse_caps

#: the prefix of user keys a registered account creates (``anon_ask_`` is provisioning's)
USER_KEY_PREFIX = "user_ask_"


def project_json(project: Project) -> dict[str, Any]:
    return {"id": int(project.id), "name": project.name, "active": project.active}


class ProjectsApi:
    def __init__(self, *, registry: Registry) -> None:
        # a project's state changes are atomic in the store (Registry.change_project), so two
        # racing deactivations, or a deactivation and a deletion, free an active unit once
        self._registry = registry

    def handlers(self) -> dict[str, LocalHandler]:
        return {
            "create-project": self.create_project,
            "list-projects": self.list_projects,
            "delete-project": self.delete_project,
            "activate-project": self.activate_project,
            "deactivate-project": self.deactivate_project,
            "create-api-key": self.create_project_key,
            "create-user-api-key": self.create_user_key,
            "list-api-keys": self.list_keys,
            "revoke-api-key": self.revoke_project_key,
            "revoke-user-api-key": self.revoke_user_key,
        }

    async def _own_project(self, ctx: LocalContext, project_id: str) -> Project:
        project = await self._registry.project(project_id)
        if project is None or project.account_id != ctx.require_identity().account_id:
            # someone else's project looks exactly like a missing one
            raise NotFound(f"no project {project_id!r}")
        return project

    async def create_project(self, ctx: LocalContext) -> web.Response:
        body = await read_json(ctx.request)
        name = field(body, "name", str)
        field(body, "description", str, required=False, max_len=2000)
        account_id = ctx.require_identity().account_id
        project = await self._registry.create_project(account_id, name)
        record, plaintext = await self._registry.issue_key(
            account_id, key_type(ctx.policy, PROJECT_KEY_PREFIX), project_id=project.id
        )
        return web.json_response(
            {
                "success": True,
                "project_id": int(project.id),
                "project": project_json(project),
                "project_api_key": plaintext,  # shown once
                "project_api_key_id": record.id,
            },
            status=201,
        )

    async def list_projects(self, ctx: LocalContext) -> web.Response:
        projects = await self._registry.projects(ctx.require_identity().account_id)
        return web.json_response({"projects": [project_json(p) for p in projects]})

    async def delete_project(self, ctx: LocalContext) -> web.Response:
        project = await self._own_project(ctx, ctx.params["id"])
        removed = await self._registry.delete_project(project)
        if removed is None:
            raise NotFound(f"no project {project.id!r}")
        if removed.active:
            ctx.released.append(("active_projects", 1))
        # its keys die with it, and so do the live counts they held
        for key in await self._registry.keys(project.account_id):
            if key.project_id == project.id and await self._registry.revoke_key_once(key.id):
                ctx.released.append((key_meter(key.kind), 1))
        return web.json_response({"success": True, "project_id": int(project.id)})

    async def _set_active(self, ctx: LocalContext, active: bool) -> web.Response:
        own = await self._own_project(ctx, ctx.params["id"])

        def switch(project: Project) -> Project:
            if project.active == active:
                # a 4xx gives back what the route took and frees nothing
                state = "active" if active else "inactive"
                raise Conflict(f"project {project.id} is already {state}")
            return dataclasses.replace(project, active=active)

        project, _ = await self._registry.change_project(own.id, switch)
        return web.json_response({"success": True, "project": project_json(project)})

    async def activate_project(self, ctx: LocalContext) -> web.Response:
        return await self._set_active(ctx, True)

    async def deactivate_project(self, ctx: LocalContext) -> web.Response:
        return await self._set_active(ctx, False)

    async def create_project_key(self, ctx: LocalContext) -> web.Response:
        body = await read_json(ctx.request)
        raw = body.get("project_id")
        if isinstance(raw, bool) or not isinstance(raw, int | str) or raw == "":
            raise ValidationError(
                "project_id is required: the project the key is for.",
                details={"field": "project_id", "received": raw},
            )
        project = await self._own_project(ctx, str(raw))
        return await self._issue_with(ctx, body, PROJECT_KEY_PREFIX, project.id)

    async def create_user_key(self, ctx: LocalContext) -> web.Response:
        body = await read_json(ctx.request) if ctx.request.body_exists else {}
        return await self._issue_with(ctx, body, USER_KEY_PREFIX, None)

    async def _issue_with(
        self, ctx: LocalContext, body: dict[str, Any], prefix: str, project_id: str | None
    ) -> web.Response:
        label = field(body, "label", str, required=False)
        identity = ctx.require_identity()
        kind = key_type(ctx.policy, prefix)
        capped = parse_caps(
            ctx.policy, ctx.policy.tier(identity.tier), body.get("caps"), kind=kind.kind
        )
        record, plaintext = await self._registry.issue_key(
            identity.account_id, kind, project_id=project_id, label=label, caps=capped
        )
        # the only time the key is shown: only its digest is kept
        return web.json_response({**record.public(), "key": plaintext}, status=201)

    async def list_keys(self, ctx: LocalContext) -> web.Response:
        keys = await self._registry.keys(ctx.require_identity().account_id)
        return web.json_response({"keys": [k.public() for k in keys if k.revoked_at is None]})

    async def _revoke(self, ctx: LocalContext, kind: str) -> web.Response:
        key_id = ctx.params["id"]
        key: ApiKey | None = await self._registry.key(key_id)
        if (
            key is None
            or key.account_id != ctx.require_identity().account_id
            or key.revoked_at is not None
        ):
            raise NotFound(f"no live key {key_id!r}")
        if key.kind != kind:
            other = "/api/user-api-keys" if key.kind == "user" else "/api/api-keys"
            # the key exists, but this endpoint revokes the other kind
            raise Conflict(
                f"{key_id} is a {key.kind} key: revoke it at {other}/{key_id}",
                details={"key_id": key_id, "kind": key.kind},
            )
        record = await self._registry.revoke_key_once(key.id)
        if record is None:
            raise NotFound(f"no live key {key_id!r}")  # a racing revoke got there first
        return web.json_response({"success": True, **record.public()})

    async def revoke_project_key(self, ctx: LocalContext) -> web.Response:
        return await self._revoke(ctx, "project")

    async def revoke_user_key(self, ctx: LocalContext) -> web.Response:
        return await self._revoke(ctx, "user")
