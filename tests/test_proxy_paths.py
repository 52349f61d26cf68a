"""Path tricks sent as raw request lines: each is a 400 or one path both matched and forwarded."""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import unquote

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.errors import BadRequest
from gateway.proxy.path import canonical_path
from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


PAYMENTS_403_ERROR = "Anonymous users cannot process payments"


async def raw_request(port: int, target: str, headers: dict[str, str]) -> tuple[int, Any]:
    """Send ``GET target`` exactly as written (no client-side normalisation); status and JSON."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        head = f"GET {target} HTTP/1.1\r\nHost: gateway.test\r\nConnection: close\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items())
        writer.write(head.encode("latin-1") + b"\r\n")
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    status_line, _, rest = raw.partition(b"\r\n")
    body = rest.partition(b"\r\n\r\n")[2]
    return int(status_line.split()[1]), json.loads(body) if body else None


@pytest.fixture
async def anon(make_gateway: GatewayFactory) -> tuple[Harness, dict[str, str], str]:
    gw = await make_gateway()
    account = await gw.account("anonymous")
    key = await gw.key(account, "anon_ask_")
    return gw, {"Authorization": f"Bearer {key}"}, account


async def used(gw: Harness, account: str, meter: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"][meter]["used"])


@pytest.mark.parametrize(
    "target",
    [
        "/api/logic/../payments/x",
        "/api/logic/%2e%2e/payments/x",
        "/api/logic/%2E%2E/payments/x",
        "/api/logic/.%2e/payments/x",
        "/api/logic/./../payments/x",
        "/api//payments/x",
        "//api/payments/x",
        "/api/./payments/x",
        "/api/%70ayments/x",
    ],
)
async def test_tricks_resolving_to_payments_get_the_payments_refusal(
    anon: tuple[Harness, dict[str, str], str], target: str
) -> None:
    gw, headers, account = anon
    status, body = await raw_request(gw.client.port, target, headers)
    assert status == 403, body
    assert body["error"] == PAYMENTS_403_ERROR
    assert gw.upstream.requests == []
    assert await used(gw, account, "api_calls") == 0


@pytest.mark.parametrize(
    ("target", "forwarded"),
    [
        ("/api/%6cogic/x", "/api/logic/x"),
        ("/api/things/../logic/x", "/api/logic/x"),
        ("/api//logic///x", "/api/logic/x"),
        ("/api/logic/./x/", "/api/logic/x/"),
        ("/api/logic/a%20b", "/api/logic/a%20b"),
        # an escaped ';' stays escaped, never becoming a path parameter upstream
        ("/api/logic/a%3Bb", "/api/logic/a%3Bb"),
        # decoded once only: the upstream gets the same single decoding the gateway matched
        ("/api/logic/%252e%252e/payments", "/api/logic/%252e%252e/payments"),
    ],
)
async def test_the_canonical_path_is_both_metered_and_forwarded(
    anon: tuple[Harness, dict[str, str], str], target: str, forwarded: str
) -> None:
    gw, headers, account = anon
    status, body = await raw_request(gw.client.port, target, headers)
    assert status == 200, body
    assert [r.path for r in gw.upstream.requests] == [forwarded]
    # metered as a Logic Engine call, the rule the canonical path matches
    assert await used(gw, account, "logic_engine_calls") == 1


@pytest.mark.parametrize(
    "target",
    [
        "/api/logic%2f..%2f..%2fpayments/x",
        "/api/payments%2Fx",
        "/api/logic/%5c..%5cpayments",
        "/api/logic/x%00",
        "/api/logic/x%00/../../payments/x",
        "/api/logic/%0a",
        "/..",
        "/api/../../etc/passwd",
        "/api/logic/%2e%2e/%2e%2e/%2e%2e/x",
        "/api/logic/%ff",
        "/api/logic#/../../payments/x",
        "/api/logic\\..\\..\\payments\\x",
        "/api/payments;jsessionid=1/x",
        "/api/payments;x",
    ],
)
async def test_unreadable_paths_are_400_and_reach_nothing(
    anon: tuple[Harness, dict[str, str], str], target: str
) -> None:
    gw, headers, account = anon
    status, body = await raw_request(gw.client.port, target, headers)
    assert status == 400, body
    assert body["code"] == "BAD_REQUEST"
    assert gw.upstream.requests == []
    assert await used(gw, account, "api_calls") == 0


PIECES = ["/", "//", ".", "..", "%2e", "%2E%2e", "%2f", "%5C", "a", "B9", "%00", "%0a", "%41"]
PIECES += ["%", "%zz", "%25", "%252e", "%3b", ";", "#", "\\", "%c3%a9", "%ff", "~", ":", "@"]


@settings(max_examples=400, deadline=None)
@given(st.lists(st.sampled_from(PIECES), max_size=12))
def test_a_canonical_path_is_its_own_canonical_form(pieces: list[str]) -> None:
    raw = "/" + "".join(pieces)
    try:
        decoded, encoded = canonical_path(raw)
    except BadRequest:
        return
    # what the gateway forwards reads, to anyone canonicalising it again, as what it matched
    assert canonical_path(encoded) == (decoded, encoded)
    assert "/".join(unquote(segment) for segment in encoded.split("/")) == decoded
    segments = encoded.split("/")[1:]
    assert not {".", ".."} & set(segments)
    assert "" not in segments[:-1]  # no empty segment, bar one trailing slash
    assert ";" not in encoded and "#" not in encoded and "\\" not in encoded
