"""The OpenAPI document documents exactly what the gateway answers, nothing more."""

from __future__ import annotations

import yaml

from gateway.policy.loader import load_policy
from tests.conftest import POLICIES, GatewayFactory


async def test_the_document_matches_what_is_routed(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.admin.get("/openapi.yaml")
    assert resp.status == 200
    doc = yaml.safe_load(await resp.text())
    routed = set()
    for resource in gw.admin.app.router.resources():
        info = resource.get_info()
        path = info.get("path") or info.get("formatter")
        for route in resource:
            if route.method != "HEAD":
                routed.add((route.method.lower(), path))
    for policy in ("agentstack", "agentidp"):
        for answered in load_policy(POLICIES / f"{policy}.yaml").routes:
            if answered.answer is not None and answered.methods is not None:
                routed.update((m.lower(), answered.pattern) for m in answered.methods)
    documented = {
        (method, path)
        for path, ops in doc["paths"].items()
        for method in ops
        if method != "parameters"
    }
    assert routed - documented == set()
    # and nothing documented that no listener answers
    assert documented - routed == set()
