"""The admin API over real HTTP: its guard, validation, one-time keys, usage and tier changes."""

from __future__ import annotations

from typing import Any

import pytest

from tests.conftest import ADMIN_TOKEN, GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def admin(
    gw: Harness, method: str, path: str, *, token: str | None = ADMIN_TOKEN, **kwargs: Any
) -> tuple[int, Any]:
    headers = dict(kwargs.pop("headers", {}))
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    resp = await gw.admin.request(method, path, headers=headers, **kwargs)
    assert resp.content_type == "application/json", await resp.text()
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer wrong-token", f"Bearer {ADMIN_TOKEN}x", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN],
    ids=["none", "wrong", "longer", "basic", "no-scheme"],
)
async def test_wrong_admin_token_is_401(
    make_gateway: GatewayFactory, authorization: str | None
) -> None:
    gw = await make_gateway()
    headers = {} if authorization is None else {"Authorization": authorization}
    status, body = await admin(gw, "POST", "/admin/accounts", token=None, headers=headers, json={})
    assert status == 401
    assert body["code"] == "UNAUTHORIZED"
    status, _ = await admin(gw, "GET", "/admin/accounts/1", token=None, headers=headers)
    assert status == 401


async def test_the_bearer_scheme_is_case_insensitive(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = {"Authorization": f"bearer {ADMIN_TOKEN}"}
    status, body = await admin(
        gw, "POST", "/admin/accounts", token=None, headers=headers, json={"tier": "free"}
    )
    assert status == 201, body


async def test_admin_api_is_disabled_without_a_token(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("GATEWAY_ADMIN_TOKEN")
    gw = await make_gateway()
    status, body = await admin(gw, "POST", "/admin/accounts", json={"tier": "free"})
    assert status == 403
    assert body["code"] == "FORBIDDEN"
    assert "GATEWAY_ADMIN_TOKEN" in body["message"]
    # an empty token does not count as one either
    status, _ = await admin(gw, "GET", "/admin/accounts/1", token="")
    assert status == 403


async def test_unknown_tier_is_a_validation_error(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    status, body = await admin(gw, "POST", "/admin/accounts", json={"tier": "gold"})
    assert status == 400
    assert body["code"] == "VALIDATION_ERROR"
    assert body["details"]["received"] == "gold"
    assert "anonymous, free, starter, basic, pro, premium, enterprise" in body["message"]


async def test_the_key_is_shown_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    status, account = await admin(gw, "POST", "/admin/accounts", json={"tier": "free"})
    assert status == 201
    account_id = account["id"]
    status, project = await admin(
        gw, "POST", f"/admin/accounts/{account_id}/projects", json={"name": "site"}
    )
    assert status == 201
    status, created = await admin(
        gw,
        "POST",
        f"/admin/accounts/{account_id}/keys",
        json={"prefix": "ask_", "project_id": project["id"], "label": "ci"},
    )
    assert status == 201
    key = created["key"]
    assert key.startswith("ask_") and len(key) == 4 + 32
    assert "digest" not in created

    status, shown = await admin(gw, "GET", f"/admin/accounts/{account_id}")
    assert status == 200
    assert [k["id"] for k in shown["keys"]] == [created["id"]]
    assert shown["keys"][0]["label"] == "ci"
    assert shown["projects"][0]["name"] == "site"
    text = repr(shown)
    assert key not in text and key[4:] not in text
    assert "digest" not in text

    # and the key works
    resp = await gw.client.get("/api/things", headers={"X-API-Key": key})
    assert resp.status == 200


async def test_usage_endpoint_reports_every_meter(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account_id = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account_id)}"}
    for _ in range(3):
        resp = await gw.client.post("/api/logic/run", headers=headers)
        assert resp.status == 200
    status, usage = await admin(gw, "GET", f"/admin/accounts/{account_id}/usage")
    assert status == 200
    assert usage["tier"] == "anonymous"
    # every quota and live count; a rate meter's bucket has no usage to report
    policy = gw.gateway.policy.current
    assert set(usage["meters"]) == {n for n, m in policy.meters.items() if m.kind != "rate"}
    assert usage["meters"]["logic_engine_calls"] == {
        "used": 3,
        "limit": 1000,
        "remaining": 997,
        "resets_at": "2026-12-01T00:00:00Z",
    }
    assert usage["meters"]["projects"]["resets_at"] is None  # a live count has no window
    assert usage["meters"]["json_storage"]["limit"] == 20_000_000

    status, state = await admin(
        gw, "PUT", f"/admin/accounts/{account_id}/usage/logic_engine_calls", json={"value": 999}
    )
    assert status == 200
    assert state == {
        "meter": "logic_engine_calls",
        "used": 999,
        "limit": 1000,
        "remaining": 1,
        "resets_at": "2026-12-01T00:00:00Z",
    }
    status, body = await admin(
        gw, "PUT", f"/admin/accounts/{account_id}/usage/nope", json={"value": 1}
    )
    assert status == 404
    assert body["code"] == "NOT_FOUND"


async def test_tier_change_takes_effect_on_the_next_request(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    account_id = await gw.account("anonymous")
    headers = {"Authorization": f"Bearer {await gw.key(account_id)}"}
    await gw.set_usage(account_id, "logic_engine_calls", 1000)
    resp = await gw.client.post("/api/logic/run", headers=headers)
    assert resp.status == 429

    status, account = await admin(
        gw, "PUT", f"/admin/accounts/{account_id}/tier", json={"tier": "free"}
    )
    assert status == 200
    assert account["tier"] == "free"
    resp = await gw.client.post("/api/logic/run", headers=headers)
    assert resp.status == 200
    assert resp.headers["RateLimit-Limit"] == "10000"
    assert gw.upstream.requests[-1].headers["X-Gateway-Tier"] == "free"

    status, body = await admin(
        gw, "PUT", f"/admin/accounts/{account_id}/tier", json={"tier": "platinum"}
    )
    assert status == 400
    assert body["details"]["received"] == "platinum"


@pytest.mark.parametrize(
    "raw",
    [b"{", b"not json", b'{"tier": "free",}', b"\xff\xfe", b"", b"[]", b'"free"', b"null"],
    ids=["open", "words", "trailing-comma", "not-utf8", "empty", "array", "string", "null"],
)
async def test_malformed_json_is_400_json(make_gateway: GatewayFactory, raw: bytes) -> None:
    gw = await make_gateway()
    status, body = await admin(
        gw, "POST", "/admin/accounts", data=raw, headers={"Content-Type": "application/json"}
    )
    assert status == 400
    assert body["code"] == "BAD_REQUEST"
    assert body["message"]


@pytest.mark.parametrize(
    ("path", "payload", "field"),
    [
        ("/admin/accounts", {"tier": 5}, "tier"),
        ("/admin/accounts", {"tier": ["free"]}, "tier"),
        ("/admin/accounts", {"tier": "free", "is_anonymous": "yes"}, "is_anonymous"),
        ("/admin/accounts", {"tier": "free", "name": 7}, "name"),
        ("/admin/accounts", {"tier": "free", "organization_id": 7}, "organization_id"),
        ("/admin/accounts", {"tier": "free", "organization_id": "a b"}, None),
        ("/admin/accounts", {"tier": "free", "organization_id": "o" * 129}, "organization_id"),
        ("/admin/accounts", {}, "tier"),
        ("/admin/accounts/1/usage/api_calls", {"value": "10"}, "value"),
        ("/admin/accounts/1/usage/api_calls", {"value": True}, "value"),
        ("/admin/accounts/1/usage/api_calls", {"value": 1.5}, "value"),
        ("/admin/accounts/1/usage/api_calls", {"value": -1}, None),
        ("/admin/accounts/1/usage/api_calls", {"value": 2**63}, None),
        ("/admin/accounts/1/keys", {"prefix": 1}, "prefix"),
        ("/admin/accounts/1/keys", {"prefix": "sk_"}, None),
        ("/admin/accounts/1/keys", {"prefix": "ask_"}, "project_id"),
    ],
)
async def test_wrong_types_are_400_validation_errors(
    make_gateway: GatewayFactory, path: str, payload: dict[str, Any], field: str | None
) -> None:
    gw = await make_gateway()
    await gw.account("free")  # account 1
    method = "PUT" if "/usage/" in path else "POST"
    status, body = await admin(gw, method, path, json=payload)
    assert status == 400, body
    assert body["code"] == "VALIDATION_ERROR"
    if field is not None:
        assert body["details"]["field"] == field


async def test_a_body_over_64_kib_is_413(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    big = b'{"tier": "free", "name": "' + b"x" * (64 * 1024) + b'"}'
    status, body = await admin(gw, "POST", "/admin/accounts", data=big)
    assert status == 413
    assert body["code"] == "PAYLOAD_TOO_LARGE"

    async def chunks() -> Any:  # no Content-Length: refused while reading
        for _ in range(20):
            yield b" " * 8192

    status, body = await admin(gw, "POST", "/admin/accounts", data=chunks())
    assert status == 413
    # nothing was created by either
    status, _ = await admin(gw, "GET", "/admin/accounts/1")
    assert status == 404


async def test_unknown_account_is_404_json(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    for method, path, payload in (
        ("GET", "/admin/accounts/999", None),
        ("GET", "/admin/accounts/999/usage", None),
        ("PUT", "/admin/accounts/999/tier", {"tier": "free"}),
        ("POST", "/admin/accounts/999/keys", {"prefix": "anon_ask_"}),
        ("POST", "/admin/accounts/999/projects", {"name": "p"}),
        ("PUT", "/admin/accounts/999/usage/api_calls", {"value": 1}),
        ("DELETE", "/admin/keys/key_999", None),
    ):
        status, body = await admin(gw, method, path, json=payload)
        assert status == 404, (method, path, body)
        assert body["code"] == "NOT_FOUND"


async def test_an_organisation_account_is_created_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    status, body = await admin(
        gw, "POST", "/admin/accounts", json={"tier": "pro", "organization_id": "acme"}
    )
    assert status == 201
    assert body["id"] == "org:acme"
    status, body = await admin(
        gw, "POST", "/admin/accounts", json={"tier": "free", "organization_id": "acme"}
    )
    assert status == 409
    assert body["code"] == "CONFLICT"
    status, body = await admin(gw, "GET", "/admin/accounts/org:acme")
    assert body["tier"] == "pro"
