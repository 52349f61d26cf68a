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


async def test_a_method_a_gateway_answered_path_does_not_list_is_a_405_never_forwarded(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("pro", "user_ask_")
    for method, path, allowed in (
        ("TRACE", "/api/projects", "GET, POST"),
        ("PUT", "/api/projects", "GET, POST"),
        ("DELETE", "/api/projects/anonymous", "POST"),  # not project "anonymous"
        ("GET", "/api/auth/login", "POST"),
    ):
        resp = await gw.client.request(method, path, headers=headers)
        assert resp.status == 405, (method, path, await resp.text())
        assert resp.headers["Allow"] == allowed
        assert (await resp.json())["code"] == "METHOD_NOT_ALLOWED"
    assert gw.upstream.requests == []
    # a path no `answer:` route claims is still forwarded, whatever the method
    assert (await gw.client.request("TRACE", "/api/data/x", headers=headers)).status == 200
    # the admin listener's own 405s say what is allowed too
    resp = await gw.admin.request("TRACE", "/readyz")
    assert (resp.status, resp.headers["Allow"]) == (405, "GET,HEAD")


async def test_logging_out_with_a_key_is_forbidden(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.client.post("/api/auth/logout", headers=await gw.caller("free", "user_ask_"))
    assert resp.status == 403
    assert (await resp.json())["code"] == "FORBIDDEN"


async def test_the_served_document_lists_the_active_policys_names(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway("agentidp")
    doc = yaml.safe_load(await (await gw.admin.get("/openapi.yaml")).text())
    tier = doc["paths"]["/admin/accounts"]["post"]["requestBody"]["content"]["application/json"]
    assert tier["schema"]["properties"]["tier"]["enum"] == ["enterprise", "free", "pro"]
