"""Bodies the gateway reads itself, sent by hostile or broken clients, over raw sockets.

Stalled and trickled bodies end in a 408 and a closed socket; hostile JSON (deep nesting,
huge numbers, NaN) gets a 400 whose body is valid JSON; ``Expect: 100-continue`` gets the
final status when the request is refused anyway; an optional cap bounds the sockets one
address may hold.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest
from aiohttp.test_utils import TestClient

from gateway.api.stripe import sign
from gateway.boundary import dumps
from gateway.identity.keys import redact
from gateway.settings import Limits
from tests.conftest import ADMIN_TOKEN, GatewayFactory, Harness

WEBHOOK_SECRET = "whsec_test_hostile_0123456789"
FAST = Limits(body_timeout_seconds=1.0, body_idle_seconds=0.3)

#: every endpoint of the shipped policies the gateway answers itself with a body
LOCAL = [
    ("agentstack", "/api/auth/login"),
    ("agentstack", "/api/projects/anonymous"),
    ("agentstack", "/api/auth/convert-anonymous"),
    ("agentidp", "/api/v1/webhooks/stripe"),
]


def strict(raw: bytes) -> Any:
    """JSON as the RFC has it: NaN and Infinity are not JSON."""

    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in a response body")

    return json.loads(raw, parse_constant=refuse)


async def connect(
    client: TestClient[Any, Any],
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert client.port is not None
    return await asyncio.open_connection("127.0.0.1", client.port)


async def response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One response read to its end, then the connection's end (bounded waits)."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        if ":" in line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return status, headers, body


async def closed(reader: asyncio.StreamReader) -> bool:
    """True when the gateway closes the connection (within a bounded wait)."""
    try:
        return await asyncio.wait_for(reader.read(1), 10) == b""
    except ConnectionResetError:
        return True


def head(path: str, length: int, *extra: str, host: str = "gateway") -> bytes:
    lines = [f"POST {path} HTTP/1.1", f"Host: {host}", f"Content-Length: {length}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(autouse=True)
def webhook_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_STRIPE_WEBHOOK_SECRET", WEBHOOK_SECRET)


@pytest.mark.parametrize(("policy", "path"), LOCAL)
async def test_a_stalled_body_is_408_and_the_socket_closed(
    make_gateway: GatewayFactory, policy: str, path: str
) -> None:
    gw = await make_gateway(policy, limits=FAST)
    reader, writer = await connect(gw.client)
    writer.write(head(path, 100, "Content-Type: application/json") + b'{"email": "a')
    status, headers, body = await response(reader)
    assert status == 408
    assert strict(body)["code"] == "REQUEST_TIMEOUT"
    assert "stalled for 0.3 seconds" in strict(body)["message"]
    assert headers.get("connection") == "close"
    assert await closed(reader)
    writer.close()


async def test_a_trickled_body_meets_the_total_deadline(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway(limits=FAST)
    reader, writer = await connect(gw.client)
    writer.write(head("/api/auth/login", 10_000))
    answered = asyncio.create_task(response(reader))
    # one byte well inside the idle deadline, again and again: only the total one can fire
    while not answered.done():
        writer.write(b" ")
        await asyncio.wait([answered], timeout=0.05)
    status, _, body = answered.result()
    assert status == 408
    assert "not complete within 1 seconds" in strict(body)["message"]
    assert await closed(reader)
    writer.close()


async def test_the_admin_api_reads_bodies_under_the_same_deadlines(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(limits=FAST)
    reader, writer = await connect(gw.admin)
    writer.write(head("/admin/accounts", 50, f"Authorization: Bearer {ADMIN_TOKEN}") + b"{")
    status, _, body = await response(reader)
    assert status == 408, body
    assert await closed(reader)
    writer.close()


async def test_stalled_sockets_past_the_per_address_cap_are_refused_at_once(
    make_gateway: GatewayFactory,
) -> None:
    cap = 4
    gw = await make_gateway(limits=Limits(body_timeout_seconds=60, max_connections_per_address=cap))
    stalled = []
    for _ in range(cap):
        reader, writer = await connect(gw.client)
        writer.write(head("/api/auth/login", 100) + b"{")
        stalled.append((reader, writer))
    extra_reader, extra_writer = await connect(gw.client)
    status, headers, body = await response(extra_reader)
    assert status == 429
    assert strict(body)["code"] == "TOO_MANY_CONNECTIONS"
    assert headers["retry-after"] == "1"
    assert await closed(extra_reader)
    extra_writer.close()
    # a socket given back frees its place for a healthy caller
    _, writer = stalled.pop()
    writer.close()
    await writer.wait_closed()
    for _ in range(100):
        resp = await gw.client.get("/api/tiers")
        if resp.status != 429:
            break
        await asyncio.sleep(0.05)
    assert resp.status != 429
    for _, writer in stalled:
        writer.close()


HOSTILE = {
    "deep array": b"[" * 60000,
    "deep object": b'{"a":' * 40 + b"1" + b"}" * 40,
    "5000-digit integer": b'{"email": ' + b"7" * 5000 + b', "password": "x"}',
    "NaN": b'{"email": NaN, "password": "x"}',
    "Infinity": b'{"email": "a@b.co", "password": -Infinity}',
    "float overflow": b'{"email": 1e999, "password": "x"}',
    "not UTF-8": b'{"email": "\xff"}',
}


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_json_is_a_400_with_a_json_body(
    make_gateway: GatewayFactory, body: bytes
) -> None:
    gw = await make_gateway()
    resp = await gw.client.post("/api/auth/login", data=body)
    raw = await resp.read()
    assert resp.status == 400, raw
    assert strict(raw)["code"] == "BAD_REQUEST"


@pytest.mark.parametrize("body", HOSTILE.values(), ids=HOSTILE.keys())
async def test_hostile_json_on_the_signed_stripe_webhook_is_a_400(
    make_gateway: GatewayFactory, body: bytes
) -> None:
    gw = await make_gateway("agentidp")
    timestamp = int(gw.clock.now())
    signature = f"t={timestamp},v1={sign(WEBHOOK_SECRET, timestamp, body)}"
    resp = await gw.client.post(
        "/api/v1/webhooks/stripe", data=body, headers={"Stripe-Signature": signature}
    )
    raw = await resp.read()
    assert resp.status == 400, raw
    assert strict(raw)["code"] == "BAD_REQUEST"


def test_an_error_body_that_echoes_nan_is_still_json() -> None:
    body = {"code": "X", "details": {"received": [float("nan"), {"v": float("-inf")}], "n": 1.5}}
    assert strict(dumps(body).encode()) == {
        "code": "X",
        "details": {"received": ["nan", {"v": "-inf"}], "n": 1.5},
    }


async def first_line(reader: asyncio.StreamReader) -> str:
    return (await asyncio.wait_for(reader.readline(), 10)).decode("latin-1").strip()


async def test_expect_continue_gets_the_refusal_not_100(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    cases = [
        # no credential on an authenticated route
        (head("/api/projects", 10, "Expect: 100-continue"), "401"),
        # a declared body over the limit
        (
            head(
                "/api/logic/run",
                11 * 1024 * 1024,
                "Expect: 100-continue",
                f"Authorization: Bearer {await gw.key(await gw.account('pro'))}",
            ),
            "413",
        ),
    ]
    for request, status in cases:
        reader, writer = await connect(gw.client)
        writer.write(request)
        assert (await first_line(reader)).startswith(f"HTTP/1.1 {status}")
        writer.close()
    reader, writer = await connect(gw.admin)
    writer.write(head("/admin/accounts", 10, "Expect: 100-continue"))
    assert (await first_line(reader)).startswith("HTTP/1.1 401")
    writer.close()


async def test_expect_continue_admitted_gets_100_then_the_answer(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    key = await gw.key(await gw.account("pro"))
    payloads = [
        ("/api/logic/run", b"0123456789", f"Authorization: Bearer {key}", 200),
        ("/api/auth/login", b'{"email":"nobody@example.com","password":"wrong-one"}', "X: y", 401),
    ]
    for path, payload, header, final in payloads:
        reader, writer = await connect(gw.client)
        writer.write(head(path, len(payload), "Expect: 100-continue", header))
        assert await first_line(reader) == "HTTP/1.1 100 Continue"
        assert await first_line(reader) == ""
        writer.write(payload)
        status, _, body = await response(reader)
        assert status == final, body
        writer.close()


async def test_an_unknown_expectation_is_a_json_417(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    reader, writer = await connect(gw.client)
    writer.write(head("/api/auth/login", 2, "Expect: teapot"))
    status, _, body = await response(reader)
    assert status == 417
    assert strict(body)["code"] == "EXPECTATION_FAILED"
    writer.close()


async def test_a_malformed_header_line_never_echoes_the_key(
    make_gateway: GatewayFactory, caplog: pytest.LogCaptureFixture
) -> None:
    gw: Harness = await make_gateway()
    secret = "ask_Zq8hT3pW0mN5vB7xK2cR9dL4"
    lines = [
        f"X-API-Key: {secret}\x01".encode(),
        f"Authorization: Bearer {secret}\x7f".encode(),
        f"Authorization: Bearer opaque-token-{secret[4:]}\x00".encode(),
    ]
    for line in lines:
        reader, writer = await connect(gw.client)
        with caplog.at_level(logging.INFO, logger="gateway"):
            writer.write(b"GET /api/projects HTTP/1.1\r\nHost: gateway\r\n" + line + b"\r\n\r\n")
            status, _, body = await response(reader)
        assert status == 400
        assert strict(body)["code"] == "BAD_REQUEST"
        assert secret[4:] not in body.decode()
        assert secret[4:] not in caplog.text
        writer.close()


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("/api/x?api_key=ask_Zq8hT3pW0mN5vB7x", "/api/x?api_key=ask_[redacted]"),
        ("b'X_API_KEY: anon_ask_Zq8hT3pW0mN5'", "b'X_API_KEY: [redacted]'"),
        ("Authorization: Basic dXNlcjpwYXNz", "Authorization: [redacted]"),
        ("got bearer eyJhbGciOiJIUzI1NiJ9.e30.x here", "got bearer [redacted] here"),
        ("Invalid method encountered: b'GE\\x01T'", "Invalid method encountered: b'GE\\x01T'"),
        ("max_line_size is 8190", "max_line_size is 8190"),
    ],
)
def test_redaction_hides_credentials_and_keeps_the_rest(text: str, shown: str) -> None:
    assert redact(text) == shown


def test_snake_case_names_are_not_mistaken_for_keys() -> None:
    assert redact("header_timeout_seconds and body_idle_seconds") == (
        "header_timeout_seconds and body_idle_seconds"
    )
