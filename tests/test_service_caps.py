"""Service caps (seed 001): per project key, deny a sensitive module or cap its calls.

Set on POST /api/api-keys and POST /admin/accounts/{id}/keys, shown with the key, enforced
in the same single store decision as the tier's limits (a refused cap consumes nothing),
refused below STARTER with the policy's upgrade answer. Upstream-enforced features reach
the upstream in X-Gateway-Features, which clients cannot set.
"""

from __future__ import annotations

from typing import Any

from yarl import URL

from tests.conftest import GatewayFactory, Harness, Upstream
from tests.redis_servers import free_port

STORES = ("memory", "redis")
CAPS = {"payments": "deny", "scheduler": {"limit": 2, "period": "day"}}


async def _user(gw: Harness, tier: str) -> tuple[str, dict[str, str]]:
    account = await gw.account(tier)
    return account, {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}


async def _project_key(
    gw: Harness, account: str, user: dict[str, str], caps: Any = CAPS
) -> dict[str, Any]:
    project = await gw.admin.post(
        f"/admin/accounts/{account}/projects", json={"name": "p"}, headers=gw.admin_headers
    )
    body = {"project_id": (await project.json())["id"], "caps": caps}
    resp = await gw.client.post("/api/api-keys", json=body, headers=user)
    assert resp.status == 201, await resp.text()
    return dict(await resp.json())


async def _api_calls(gw: Harness, account: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"]["api_calls"]["used"])


async def test_a_denied_module_is_refused_before_anything_is_counted(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account, user = await _user(gw, "starter")
    created = await _project_key(gw, account, user)
    assert created["caps"] == {
        "payments": {"deny": True},
        "scheduler": {"limit": 2, "period": "day"},
    }
    listed = await (await gw.client.get("/api/api-keys", headers=user)).json()
    assert [k["caps"] for k in listed["keys"] if k["id"] == created["id"]] == [created["caps"]]

    key = {"Authorization": f"Bearer {created['key']}"}
    before, reached = await _api_calls(gw, account), gw.upstream.count()
    resp = await gw.client.get("/api/payments/charge", headers=key)
    assert resp.status == 403
    assert await resp.json() == {
        "error": "Service cap",
        "reason": "This API key may not use Payments (a service cap on the key denies it).",
        "cap": {"module": "payments", "key_id": created["id"], "deny": True},
        "retryable": False,
    }
    assert gw.upstream.count() == reached
    assert await _api_calls(gw, account) == before
    # the account's other keys are not capped
    assert (await gw.client.get("/api/payments/charge", headers=user)).status == 200


async def test_a_counted_cap_is_one_more_charge_in_the_same_decision(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account, user = await _user(gw, "starter")
    created = await _project_key(gw, account, user)
    key = {"Authorization": f"Bearer {created['key']}"}
    for _ in range(2):
        assert (await gw.client.post("/api/scheduler/jobs", headers=key)).status == 200
    used = await _api_calls(gw, account)
    resp = await gw.client.post("/api/scheduler/jobs", headers=key)
    assert resp.status == 429
    body = await resp.json()
    assert body["error"] == "Service cap exceeded"
    assert body["cap"] == {
        "module": "scheduler",
        "key_id": created["id"],
        "limit": 2,
        "period": "day",
    }
    assert body["reason"] == "This API key's cap on Scheduler is reached: 2 calls per day."
    assert body["reset"] == "2026-11-26T00:00:00Z"
    assert resp.headers["Retry-After"] == str(12 * 3600)
    # refused in the one decision: the tier's API calls were not consumed either
    assert await _api_calls(gw, account) == used
    # other modules and other keys go on
    assert (await gw.client.get("/api/analytics/x", headers=key)).status == 200
    assert (await gw.client.post("/api/scheduler/jobs", headers=user)).status == 200
    # a new day, a new allowance
    gw.clock.advance(12 * 3600)
    assert (await gw.client.post("/api/scheduler/jobs", headers=key)).status == 200


async def _cap_used(gw: Harness, key: str) -> tuple[str, str, int, int | None]:
    resp = await gw.admin.post(
        "/admin/explain",
        json={"request": "POST /api/scheduler/jobs", "credential": key},
        headers=gw.admin_headers,
    )
    cap = (await resp.json())["meters"][-1]
    return cap["meter"], cap["scope_id"], cap["used"], cap["limit"]


async def test_a_call_the_upstream_never_answered_gives_its_cap_unit_back(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    assert upstream.url is not None
    # the scheduler's upstream is a loopback port nobody listens on: refused, never answered
    dead = URL(f"http://127.0.0.1:{free_port()}")
    gw = await make_gateway(upstreams=(("/api/scheduler", dead), ("/", upstream.url)))
    account, user = await _user(gw, "starter")
    created = await _project_key(gw, account, user, {"scheduler": {"limit": 1, "period": "month"}})
    key = {"Authorization": f"Bearer {created['key']}"}
    # explain shows the cap as one more meter, scoped to the key
    assert await _cap_used(gw, created["key"]) == ("cap:scheduler", created["id"], 0, 1)
    assert (await gw.client.post("/api/scheduler/jobs", headers=key)).status == 502
    assert await _cap_used(gw, created["key"]) == ("cap:scheduler", created["id"], 0, 1)


async def test_below_starter_a_cap_is_refused_with_the_upgrade_answer(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account, user = await _user(gw, "free")
    project = await gw.admin.post(
        f"/admin/accounts/{account}/projects", json={"name": "p"}, headers=gw.admin_headers
    )
    project_id = (await project.json())["id"]
    resp = await gw.client.post(
        "/api/api-keys", json={"project_id": project_id, "caps": CAPS}, headers=user
    )
    assert resp.status == 402
    body = await resp.json()
    assert body["error"] == "Upgrade required"
    assert body["feature"] == "service_caps"
    assert body["upgrade_tier"] == "starter"
    assert body["next_step"] == {"kind": "tier", "name": "starter", "price": "$29.00"}
    resp = await gw.admin.post(
        f"/admin/accounts/{account}/keys",
        json={"prefix": "ask_", "project_id": project_id, "caps": CAPS},
        headers=gw.admin_headers,
    )
    assert resp.status == 402
    # without caps a free account's key is issued as before
    resp = await gw.client.post("/api/api-keys", json={"project_id": project_id}, headers=user)
    assert resp.status == 201
    assert (await resp.json())["caps"] == {}


async def test_the_admin_api_sets_caps_and_bad_caps_are_400(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account = await gw.account("pro")
    project = await gw.admin.post(
        f"/admin/accounts/{account}/projects", json={"name": "p"}, headers=gw.admin_headers
    )
    project_id = (await project.json())["id"]

    async def issue(prefix: str, caps: Any) -> Any:
        body = {"prefix": prefix, "caps": caps}
        if prefix == "ask_":
            body["project_id"] = project_id
        return await gw.admin.post(
            f"/admin/accounts/{account}/keys", json=body, headers=gw.admin_headers
        )

    resp = await issue("ask_", {"wallets": {"limit": 5, "period": "month"}, "data": "deny"})
    assert resp.status == 201
    created = await resp.json()
    assert created["caps"] == {"wallets": {"limit": 5, "period": "month"}, "data": {"deny": True}}
    shown = await gw.admin.get(f"/admin/accounts/{account}", headers=gw.admin_headers)
    assert [k["caps"] for k in (await shown.json())["keys"]] == [created["caps"]]
    key = {"Authorization": f"Bearer {created['key']}"}
    assert (await gw.client.put("/api/data/doc", headers=key, data=b"{}")).status == 403
    for bad, words in (
        ({"walets": "deny"}, "unknown module 'walets'"),
        ({"wallets": {"limit": 0}}, "caps.wallets is"),
        ({"wallets": {"limit": 5, "period": "week"}}, "caps.wallets is"),
        ({"wallets": "allow"}, "caps.wallets is"),
        (["wallets"], "caps is an object"),
    ):
        resp = await issue("ask_", bad)
        assert resp.status == 400, bad
        assert words in (await resp.json())["message"], bad
    resp = await issue("user_ask_", {"wallets": "deny"})
    assert resp.status == 400
    assert "service caps apply to project keys" in (await resp.json())["message"]


async def test_upstream_enforced_features_reach_the_upstream_and_clients_cannot_forge_them(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    _, starter = await _user(gw, "starter")
    forged = {**starter, "X-Gateway-Features": "admin_functions"}
    assert (await gw.client.get("/api/anything", headers=forged)).status == 200
    seen = gw.upstream.requests[-1].headers
    assert seen["X-Gateway-Features"] == "advanced_api,user_management"
    _, free = await _user(gw, "free")
    forged = {**free, "X-Gateway-Features": "admin_functions"}
    assert (await gw.client.get("/api/anything", headers=forged)).status == 200
    assert "X-Gateway-Features" not in gw.upstream.requests[-1].headers
