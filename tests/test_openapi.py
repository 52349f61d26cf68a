"""The OpenAPI document is served, parses, and documents every endpoint the admin app routes."""

from __future__ import annotations

import yaml

from tests.conftest import GatewayFactory


async def test_every_admin_route_is_documented(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.admin.get("/openapi.yaml")
    assert resp.status == 200
    doc = yaml.safe_load(await resp.text())
    assert doc["openapi"].startswith("3.1")
    routed = set()
    for resource in gw.admin.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        for route in resource:
            if route.method != "HEAD":
                routed.add((route.method.lower(), path))
    documented = {
        (method, path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert routed - documented == set()
    # and nothing documented that the app does not answer
    assert documented - routed == set()
