"""The OpenAPI document covers every endpoint the gateway answers itself, and parses."""

from __future__ import annotations

from typing import Any

import pytest
import yaml
from aiohttp import web

from gateway.api.admin_accounts import AdminAccountsApi
from gateway.policy.loader import load_policy
from tests.conftest import POLICIES, GatewayFactory


async def served(make_gateway: GatewayFactory) -> dict[str, Any]:
    gw = await make_gateway()
    resp = await gw.admin.get("/openapi.yaml")
    assert resp.status == 200
    doc: dict[str, Any] = yaml.safe_load(await resp.text())
    assert doc["openapi"].startswith("3.1")
    return doc


@pytest.mark.parametrize("policy", ["agentstack", "agentidp"])
async def test_every_answered_route_is_documented(
    make_gateway: GatewayFactory, policy: str
) -> None:
    doc = await served(make_gateway)
    for route in load_policy(POLICIES / f"{policy}.yaml").routes:
        if route.answer is None:
            continue
        assert route.methods is not None, route.name
        for method in route.methods:
            operation = doc["paths"].get(route.pattern, {}).get(method.lower())
            assert operation is not None, f"{method} {route.pattern} ({route.name})"
            # and with its error responses
            assert any(code.startswith("4") for code in operation["responses"]), route.name


async def test_the_lifecycle_admin_routes_are_documented(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.admin.get("/openapi.yaml")
    doc = yaml.safe_load(await resp.text())
    api = AdminAccountsApi(
        policy=gw.gateway.policy,
        registry=gw.gateway.registry,
        users=gw.gateway.users,
        sessions=gw.gateway.sessions,
        store=gw.gateway.store,
    )
    for route in api.routes():
        assert isinstance(route, web.RouteDef)
        assert route.method.lower() in doc["paths"].get(route.path, {}), route


async def test_every_reference_resolves(make_gateway: GatewayFactory) -> None:
    doc = await served(make_gateway)

    def refs(node: Any) -> list[str]:
        if isinstance(node, dict):
            found = [node["$ref"]] if "$ref" in node else []
            return found + [r for value in node.values() for r in refs(value)]
        if isinstance(node, list):
            return [r for value in node for r in refs(value)]
        return []

    for ref in refs(doc):
        target: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            target = target[part]
        assert target, ref
