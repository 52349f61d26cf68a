"""Login throttling per account and per client address, kept in the store (memory and Redis)."""

from __future__ import annotations

import asyncio
import dataclasses

from gateway.settings import AccountSettings
from tests.conftest import GatewayFactory, Harness
from tests.test_lifecycle_anonymous import PASSWORD, provision
from tests.test_lifecycle_conversion import conversion, convert

STORES = ("memory", "redis")

LOGIN = "/api/auth/login"
EMAIL = "jane@example.com"


async def registered(make_gateway: GatewayFactory, **accounts: object) -> Harness:
    gw = await make_gateway(accounts=dataclasses.replace(AccountSettings(), **accounts))
    anon = await provision(gw)
    assert (await convert(gw, conversion(anon["user_api_key"], email=EMAIL)))[0] == 200
    return gw


async def login(gw: Harness, password: str, email: str = EMAIL) -> tuple[int, dict[str, str]]:
    resp = await gw.client.post(LOGIN, json={"email": email, "password": password})
    await resp.read()
    return resp.status, dict(resp.headers)


async def test_failures_past_the_account_limit_are_429_until_the_window_ends(
    make_gateway: GatewayFactory,
) -> None:
    gw = await registered(make_gateway, login_failures_per_account=5, login_window_seconds=900)
    gw.clock.set(gw.clock.now() - gw.clock.now() % 900)  # the start of a window
    for _ in range(5):
        assert (await login(gw, "wrong password"))[0] == 401
    # the right password too: a guesser must not learn it by trying it sixth
    status, headers = await login(gw, PASSWORD)
    assert status == 429
    assert headers["Retry-After"] == "900"
    gw.clock.advance(600)
    status, headers = await login(gw, "wrong password")
    assert (status, headers["Retry-After"]) == (429, "300")
    gw.clock.advance(300)
    assert (await login(gw, PASSWORD))[0] == 200


async def test_successful_logins_never_count(make_gateway: GatewayFactory) -> None:
    gw = await registered(make_gateway, login_failures_per_account=3)
    for _ in range(2):
        assert (await login(gw, "wrong password"))[0] == 401
    for _ in range(10):
        assert (await login(gw, PASSWORD))[0] == 200
    assert (await login(gw, "wrong password"))[0] == 401
    assert (await login(gw, "wrong password"))[0] == 429


async def test_unknown_emails_are_throttled_like_known_ones(make_gateway: GatewayFactory) -> None:
    gw = await registered(make_gateway, login_failures_per_account=3)
    for email in (EMAIL, "nobody@example.com"):
        answers = [(await login(gw, "wrong password", email))[0] for _ in range(4)]
        assert answers == [401, 401, 401, 429], email
    # the email is compared as it is indexed: case and spaces do not reset the count
    assert (await login(gw, "wrong password", " JANE@Example.com "))[0] == 429


async def test_failures_from_one_address_are_limited_across_accounts(
    make_gateway: GatewayFactory,
) -> None:
    gw = await registered(
        make_gateway, login_failures_per_account=None, login_failures_per_address=4
    )
    answers = [(await login(gw, "wrong", f"user{n}@example.com"))[0] for n in range(5)]
    assert answers == [401, 401, 401, 401, 429]
    status, headers = await login(gw, PASSWORD)
    assert status == 429
    assert int(headers["Retry-After"]) >= 1


async def test_concurrent_guesses_cannot_pass_the_limit(make_gateway: GatewayFactory) -> None:
    gw = await registered(make_gateway, login_failures_per_account=10)
    answers = await asyncio.gather(*(login(gw, f"guess {n}") for n in range(16)))
    assert sorted(status for status, _ in answers) == [401] * 10 + [429] * 6
