"""Admin API for the lifecycle: find accounts, list projects, keys and sessions, revoke them."""

from __future__ import annotations

from tests.conftest import GatewayFactory
from tests.test_lifecycle_anonymous import PASSWORD, bearer, provision
from tests.test_lifecycle_conversion import conversion, convert

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def test_find_an_account_by_email_or_organisation(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    assert (await convert(gw, conversion(anon["user_api_key"], email="ops@example.com")))[0] == 200
    resp = await gw.admin.get("/admin/accounts?email=OPS@example.com", headers=gw.admin_headers)
    assert resp.status == 200
    (account,) = (await resp.json())["accounts"]
    assert (account["id"], account["tier"], account["is_anonymous"]) == (
        str(anon["user_id"]),
        "free",
        False,
    )
    assert "password" not in str(account) and "hash" not in account

    org = await gw.account("pro", organization_id="acme")
    resp = await gw.admin.get("/admin/accounts?organization_id=acme", headers=gw.admin_headers)
    assert (await resp.json())["accounts"][0]["id"] == org

    for query in ("email=nobody@example.com", "organization_id=nobody"):
        resp = await gw.admin.get(f"/admin/accounts?{query}", headers=gw.admin_headers)
        assert resp.status == 404
    resp = await gw.admin.get("/admin/accounts", headers=gw.admin_headers)
    assert resp.status == 400
    # the admin token guards it like the rest of the admin API
    resp = await gw.admin.get("/admin/accounts?organization_id=acme")
    assert resp.status == 401


async def test_list_projects_keys_and_revoke(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    account = str(anon["user_id"])
    resp = await gw.admin.get(f"/admin/accounts/{account}/projects", headers=gw.admin_headers)
    assert [p["id"] for p in (await resp.json())["projects"]] == [anon["project_id"]]
    resp = await gw.admin.get(f"/admin/accounts/{account}/keys", headers=gw.admin_headers)
    keys = (await resp.json())["keys"]
    assert sorted(k["prefix"] for k in keys) == ["anon_ask_", "ask_"]
    assert all("digest" not in k and "key" not in k for k in keys)

    # revoking the project key stops it at once and frees its unit
    project_key = next(k for k in keys if k["prefix"] == "ask_")
    resp = await gw.admin.delete(f"/admin/keys/{project_key['id']}", headers=gw.admin_headers)
    assert resp.status == 200
    assert (await gw.client.get("/api/x", headers=bearer(anon["project_api_key"]))).status == 401
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    assert (await resp.json())["meters"]["api_keys"]["used"] == 0
    # revoking twice frees nothing more
    await gw.admin.delete(f"/admin/keys/{project_key['id']}", headers=gw.admin_headers)
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    assert (await resp.json())["meters"]["user_api_keys"]["used"] == 1


async def test_list_and_revoke_sessions(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    account = str(anon["user_id"])
    assert (await convert(gw, conversion(anon["user_api_key"])))[0] == 200
    login = {"email": "jane@example.com", "password": PASSWORD}
    token = (await (await gw.client.post("/api/auth/login", json=login)).json())["session_token"]

    resp = await gw.admin.get(f"/admin/accounts/{account}/sessions", headers=gw.admin_headers)
    sessions = (await resp.json())["sessions"]
    assert len(sessions) == 3  # provisioning, conversion, login
    assert all("digest" not in s and "token" not in s for s in sessions)

    # revoke one: only that session stops working
    resp = await gw.admin.delete(f"/admin/sessions/{sessions[0]['id']}", headers=gw.admin_headers)
    assert resp.status == 200 and (await resp.json())["revoked_at"] is not None
    assert (await gw.client.get("/api/x", headers=bearer(anon["session_token"]))).status == 401
    assert (await gw.client.get("/api/x", headers=bearer(token))).status == 200
    # revoke all: every session stops, the keys still work
    resp = await gw.admin.delete(f"/admin/accounts/{account}/sessions", headers=gw.admin_headers)
    assert len((await resp.json())["revoked"]) == 2
    assert (await gw.client.get("/api/x", headers=bearer(token))).status == 401
    assert (await gw.client.get("/api/x", headers=bearer(anon["user_api_key"]))).status == 200
    resp = await gw.admin.delete("/admin/sessions/ses_999", headers=gw.admin_headers)
    assert resp.status == 404
