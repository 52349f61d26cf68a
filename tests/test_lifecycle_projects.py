"""Projects and keys answered by the gateway, held to the tier; live counts under concurrency."""

from __future__ import annotations

import asyncio
import re
from typing import Any

from tests.conftest import GatewayFactory, Harness
from tests.test_lifecycle_anonymous import bearer

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def session_for(gw: Harness, tier: str) -> tuple[str, dict[str, str]]:
    """A registered account on ``tier``, and headers carrying a user key for it."""
    account = await gw.account(tier)
    return account, bearer(await gw.key(account, "user_ask_"))


async def create_project(gw: Harness, headers: dict[str, str], name: str = "p") -> Any:
    return await gw.client.post("/api/projects", json={"name": name}, headers=headers)


async def usage(gw: Harness, account: str) -> dict[str, int]:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return {name: m["used"] for name, m in (await resp.json())["meters"].items()}


async def test_projects_are_held_to_the_tier(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account, headers = await session_for(gw, "starter")
    created = []
    for i in range(3):
        resp = await create_project(gw, headers, f"p{i}")
        assert resp.status == 201, await resp.text()
        body = await resp.json()
        assert re.fullmatch(r"ask_[A-Za-z0-9]{32}", body["project_api_key"])
        assert body["project"]["active"] is True
        created.append(body["project_id"])
    resp = await create_project(gw, headers, "p3")
    assert resp.status == 429
    body = await resp.json()
    assert (body["meter"], body["limit"]) == ("projects", 3)
    assert body["upgrade_tier"] == "basic"

    resp = await gw.client.get("/api/projects", headers=headers)
    assert [p["id"] for p in (await resp.json())["projects"]] == created
    counts = await usage(gw, account)
    assert (counts["projects"], counts["active_projects"], counts["api_keys"]) == (3, 3, 3)

    # deleting frees the project, its active unit and its key; its key stops working
    resp = await gw.client.delete(f"/api/projects/{created[0]}", headers=headers)
    assert resp.status == 200
    counts = await usage(gw, account)
    assert (counts["projects"], counts["active_projects"], counts["api_keys"]) == (2, 2, 2)
    assert (await create_project(gw, headers, "again")).status == 201
    # a project that is gone, or someone else's, is a 404 and frees nothing
    resp = await gw.client.delete(f"/api/projects/{created[0]}", headers=headers)
    assert resp.status == 404
    _, stranger = await session_for(gw, "starter")
    resp = await gw.client.delete(f"/api/projects/{created[1]}", headers=stranger)
    assert resp.status == 404
    counts = await usage(gw, account)
    assert (counts["projects"], counts["active_projects"]) == (3, 3)
    # no project call ever reached the upstream
    assert gw.upstream.requests == []


async def test_active_projects_are_held_to_the_tier(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account, headers = await session_for(gw, "basic")  # BASIC: 5 projects, 3 active
    ids = []
    for i in range(3):
        resp = await create_project(gw, headers, f"p{i}")
        ids.append((await resp.json())["project_id"])
    resp = await create_project(gw, headers, "p3")
    assert resp.status == 429
    assert (await resp.json())["meter"] == "active_projects"

    assert (
        await gw.client.post(f"/api/projects/{ids[0]}/deactivate", headers=headers)
    ).status == 200
    # twice is a conflict and frees nothing more
    resp = await gw.client.post(f"/api/projects/{ids[0]}/deactivate", headers=headers)
    assert resp.status == 409
    assert (await usage(gw, account))["active_projects"] == 2
    assert (await create_project(gw, headers, "p3")).status == 201
    # all three slots are taken again, so reactivating the first is refused
    resp = await gw.client.post(f"/api/projects/{ids[0]}/activate", headers=headers)
    assert resp.status == 429
    assert (await resp.json())["meter"] == "active_projects"
    # activating an active project is a conflict and keeps the count honest
    resp = await gw.client.post(f"/api/projects/{ids[1]}/deactivate", headers=headers)
    assert resp.status == 200
    resp = await gw.client.post(f"/api/projects/{ids[2]}/activate", headers=headers)
    assert resp.status == 409
    assert (await usage(gw, account))["active_projects"] == 2
    # deleting an inactive project frees a project but no active unit
    assert (await gw.client.delete(f"/api/projects/{ids[0]}", headers=headers)).status == 200
    counts = await usage(gw, account)
    assert (counts["projects"], counts["active_projects"]) == (3, 2)


async def test_api_keys_are_held_to_the_tier(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account, headers = await session_for(gw, "free")  # FREE: 2 API keys, 1 user key
    project = (await (await create_project(gw, headers)).json())["project_id"]
    resp = await gw.client.post("/api/api-keys", json={"project_id": project}, headers=headers)
    assert resp.status == 201
    second = await resp.json()
    assert second["project_id"] == str(project) and "digest" not in second
    resp = await gw.client.post("/api/api-keys", json={"project_id": project}, headers=headers)
    assert resp.status == 429
    assert ((await resp.json())["meter"], (await resp.json())["limit"]) == ("api_keys", 2)

    listed = (await (await gw.client.get("/api/api-keys", headers=headers)).json())["keys"]
    assert second["id"] in [k["id"] for k in listed]
    assert all("key" not in k and "digest" not in k for k in listed)

    # revoke frees a unit; the revoked key is refused at once; a second revoke is a 404
    resp = await gw.client.delete(f"/api/api-keys/{second['id']}", headers=headers)
    assert resp.status == 200
    assert (await gw.client.get("/api/x", headers=bearer(second["key"]))).status == 401
    resp = await gw.client.delete(f"/api/api-keys/{second['id']}", headers=headers)
    assert resp.status == 404
    assert (await usage(gw, account))["api_keys"] == 1
    resp = await gw.client.post("/api/api-keys", json={"project_id": project}, headers=headers)
    assert resp.status == 201

    # a key for a project that is not the caller's
    _, stranger = await session_for(gw, "free")
    resp = await gw.client.post("/api/api-keys", json={"project_id": project}, headers=stranger)
    assert resp.status == 404
    resp = await gw.client.post("/api/api-keys", json={}, headers=stranger)
    assert resp.status == 400


async def test_user_api_keys_are_held_to_the_tier(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await gw.account("starter")  # STARTER: 3 user API keys
    headers = bearer(await gw.key(account, "ask_"))
    made = []
    for _ in range(3):
        resp = await gw.client.post("/api/user-api-keys", json={"label": "ci"}, headers=headers)
        assert resp.status == 201, await resp.text()
        made.append(await resp.json())
    assert all(re.fullmatch(r"user_ask_[A-Za-z0-9]{32}", k["key"]) for k in made)
    resp = await gw.client.post("/api/user-api-keys", headers=headers)
    assert resp.status == 429
    assert (await resp.json())["meter"] == "user_api_keys"
    # a user key is revoked at its own path, which frees a user-key unit
    resp = await gw.client.delete(f"/api/api-keys/{made[0]['id']}", headers=headers)
    assert resp.status == 409  # the key exists, but is of the other kind
    assert f"/api/user-api-keys/{made[0]['id']}" in (await resp.json())["message"]
    resp = await gw.client.delete(f"/api/user-api-keys/{made[0]['id']}", headers=headers)
    assert resp.status == 200
    assert (await gw.client.post("/api/user-api-keys", headers=headers)).status == 201


async def test_anonymous_cannot_create_user_keys_either(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.client.post("/api/user-api-keys", headers=await gw.caller("anonymous"))
    assert resp.status == 403
    assert (await resp.json())["error"] == "Anonymous users cannot create API keys"


async def test_two_concurrent_creates_never_pass_the_last_unit(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account, headers = await session_for(gw, "free")
    # upstream resources: one trigger left of 50; the upstream takes its time with each
    await gw.set_usage(account, "triggers", 49)
    gw.upstream.delay["/api/triggers"] = 0.05
    results = await asyncio.gather(
        *(gw.client.post("/api/triggers", headers=headers) for _ in range(8))
    )
    assert sorted(r.status for r in results) == [200] + [429] * 7
    assert gw.upstream.count("/api/triggers") == 1
    assert (await usage(gw, account))["triggers"] == 50

    # gateway-answered resources: one project key left of two, eight racing for it
    project = (await (await create_project(gw, headers)).json())["project_id"]
    results = await asyncio.gather(
        *(
            gw.client.post("/api/api-keys", json={"project_id": project}, headers=headers)
            for _ in range(8)
        )
    )
    assert sorted(r.status for r in results) == [201] + [429] * 7
    assert (await usage(gw, account))["api_keys"] == 2


async def test_admin_corrects_a_live_count(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account, headers = await session_for(gw, "free")
    await gw.set_usage(account, "logic_pages", 3)
    resp = await gw.client.post("/api/logic-pages", headers=headers)
    assert resp.status == 429
    # ops find the upstream only holds one page: the correction takes effect at once
    await gw.set_usage(account, "logic_pages", 1)
    assert (await gw.client.post("/api/logic-pages", headers=headers)).status == 200
    assert (await usage(gw, account))["logic_pages"] == 2


async def test_racing_changes_free_each_unit_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account, headers = await session_for(gw, "pro")
    ids = [
        (await (await create_project(gw, headers, f"p{i}")).json())["project_id"] for i in range(3)
    ]
    resp = await gw.client.post("/api/api-keys", json={"project_id": ids[0]}, headers=headers)
    key_id = (await resp.json())["id"]

    async def burst(method: str, path: str) -> list[int]:
        results = await asyncio.gather(
            *(gw.client.request(method, path, headers=headers) for _ in range(6))
        )
        return sorted(r.status for r in results)

    statuses = await burst("DELETE", f"/api/api-keys/{key_id}")
    assert statuses[0] == 200 and statuses.count(200) == 1
    statuses = await burst("POST", f"/api/projects/{ids[1]}/deactivate")
    assert statuses.count(200) == 1 and set(statuses) <= {200, 409}
    statuses = await burst("DELETE", f"/api/projects/{ids[2]}")
    assert statuses.count(200) == 1 and set(statuses) <= {200, 404, 409}
    counts = await usage(gw, account)
    # three projects with a key each, plus one more key; one key revoked, one project
    # deactivated, one project (active, with its key) deleted
    assert counts["api_keys"] == 4 - 1 - 1
    assert counts["projects"] == 2
    assert counts["active_projects"] == 3 - 1 - 1
