"""Conversion and login: bad input, duplicate emails, racing conversions, sessions."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.conftest import GatewayFactory, Harness
from tests.test_lifecycle_anonymous import PASSWORD, bearer, provision

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

CONVERT = "/api/auth/convert-anonymous"


def conversion(key: str, email: str = "jane@example.com", **over: Any) -> dict[str, Any]:
    return {"user_api_key": key, "name": "Jane", "email": email, "password": PASSWORD, **over}


async def convert(gw: Harness, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    resp = await gw.client.post(CONVERT, json=body)
    return resp.status, await resp.json()


@pytest.mark.parametrize(
    ("change", "status", "code", "says"),
    [
        ({"email": None}, 400, "VALIDATION_ERROR", "email is required"),
        ({"password": None}, 400, "VALIDATION_ERROR", "password is required"),
        ({"name": None}, 400, "VALIDATION_ERROR", "name is required"),
        ({"user_api_key": None}, 400, "VALIDATION_ERROR", "user_api_key is required"),
        ({"email": "not-an-email"}, 400, "VALIDATION_ERROR", "valid email"),
        ({"email": "a@b"}, 400, "VALIDATION_ERROR", "valid email"),
        ({"password": "short"}, 400, "VALIDATION_ERROR", "at least 8"),
        ({"password": 12345678}, 400, "VALIDATION_ERROR", "must be a str"),
        ({"user_api_key": "ask_" + "a" * 32}, 400, "VALIDATION_ERROR", "anon_ask_"),
        ({"user_api_key": "anon_ask_" + "a" * 32}, 401, "UNAUTHORIZED", "unknown or revoked"),
    ],
)
async def test_conversion_bad_input(
    make_gateway: GatewayFactory, change: dict[str, Any], status: int, code: str, says: str
) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    body = {k: v for k, v in (conversion(anon["user_api_key"]) | change).items() if v is not None}
    got, answer = await convert(gw, body)
    assert (got, answer["code"]) == (status, code), answer
    assert says in answer["message"]
    # nothing changed: the account is still anonymous and can still convert
    got, _ = await convert(gw, conversion(anon["user_api_key"]))
    assert got == 200


async def test_conversion_refuses_malformed_json(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    resp = await gw.client.post(CONVERT, data=b"{", headers={"Content-Type": "application/json"})
    assert resp.status == 400
    assert (await resp.json())["code"] == "BAD_REQUEST"


async def test_converted_account_cannot_convert_again(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    assert (await convert(gw, conversion(anon["user_api_key"])))[0] == 200
    status, body = await convert(gw, conversion(anon["user_api_key"], email="other@example.com"))
    assert (status, body["code"]) == (409, "ALREADY_CONVERTED")


async def test_an_email_is_registered_once(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    first, second = await provision(gw), await provision(gw)
    assert (await convert(gw, conversion(first["user_api_key"])))[0] == 200
    # the same address in another case is the same address
    status, body = await convert(gw, conversion(second["user_api_key"], email="JANE@example.com"))
    assert (status, body["code"]) == (409, "EMAIL_ALREADY_REGISTERED")
    # the refused account is untouched and may convert with another address
    resp = await gw.client.get("/api/x", headers=bearer(second["user_api_key"]))
    assert gw.upstream.requests[-1].headers["X-Gateway-Tier"] == "anonymous"
    assert resp.status == 200
    status, _ = await convert(gw, conversion(second["user_api_key"], email="j2@example.com"))
    assert status == 200


async def test_two_conversions_racing_for_one_key(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    results = await asyncio.gather(
        *(
            convert(gw, conversion(anon["user_api_key"], email=f"racer{i}@example.com"))
            for i in range(6)
        )
    )
    statuses = sorted(status for status, _ in results)
    assert statuses == [200, 409, 409, 409, 409, 409]
    winner = next(body for status, body in results if status == 200)
    # only the winner's email logs in; the losers' emails were never registered
    for i in range(6):
        email = f"racer{i}@example.com"
        resp = await gw.client.post("/api/auth/login", json={"email": email, "password": PASSWORD})
        assert resp.status == (200 if email == winner["email"] else 401)


async def test_two_accounts_racing_for_one_email(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    accounts = [await provision(gw) for _ in range(4)]
    results = await asyncio.gather(
        *(convert(gw, conversion(a["user_api_key"], email="same@example.com")) for a in accounts)
    )
    assert sorted(status for status, _ in results) == [200, 409, 409, 409]


async def test_login_bad_input_and_wrong_password(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    assert (await convert(gw, conversion(anon["user_api_key"])))[0] == 200
    for body, status in (
        ({"email": "jane@example.com", "password": "wrong password"}, 401),
        ({"email": "nobody@example.com", "password": PASSWORD}, 401),
        ({"email": "jane@example.com"}, 400),
        ({"password": PASSWORD}, 400),
    ):
        resp = await gw.client.post("/api/auth/login", json=body)
        assert resp.status == status, body
    # wrong password and unknown email read the same: no account enumeration
    wrong = await gw.client.post(
        "/api/auth/login", json={"email": "jane@example.com", "password": "wrong password"}
    )
    unknown = await gw.client.post(
        "/api/auth/login", json={"email": "nobody@example.com", "password": PASSWORD}
    )
    assert await wrong.json() == await unknown.json()


async def test_sessions_expire_and_can_be_revoked(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    anon = await provision(gw)
    assert (await convert(gw, conversion(anon["user_api_key"])))[0] == 200
    login = {"email": "jane@example.com", "password": PASSWORD}
    token = (await (await gw.client.post("/api/auth/login", json=login)).json())["session_token"]
    assert (await gw.client.get("/api/x", headers=bearer(token))).status == 200

    # logout revokes the session that calls it
    resp = await gw.client.post("/api/auth/logout", headers=bearer(token))
    assert resp.status == 200
    resp = await gw.client.get("/api/x", headers=bearer(token))
    assert resp.status == 401
    assert "session" in (await resp.json())["message"]

    # a session expires after its lifetime (a week by default)
    token = (await (await gw.client.post("/api/auth/login", json=login)).json())["session_token"]
    gw.clock.advance(7 * 86400 - 1)
    assert (await gw.client.get("/api/x", headers=bearer(token))).status == 200
    gw.clock.advance(1)
    assert (await gw.client.get("/api/x", headers=bearer(token))).status == 401

    # an unknown session token is refused like an unknown key
    resp = await gw.client.get("/api/x", headers=bearer("A" * 32))
    assert resp.status == 401
