"""Usage the upstream reports (X-Gateway-Usage) and storage writes checked before forwarding."""

from __future__ import annotations

from tests.conftest import GatewayFactory, Harness

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")

JSON_LIMIT_FREE = 100 * 10**6


async def _usage(gw: Harness, headers: dict[str, str]) -> dict[str, dict[str, object]]:
    resp = await gw.client.get("/api/billing/usage", headers=headers)
    assert resp.status == 200
    meters: dict[str, dict[str, object]] = (await resp.json())["meters"]
    return meters


async def test_a_declared_write_over_the_storage_limit_is_refused_before_forwarding(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'user_ask_')}"}
    await gw.set_usage(account, "json_storage", JSON_LIMIT_FREE - 10)
    resp = await gw.client.put("/api/data/doc", data=b"x" * 11, headers=headers)
    assert resp.status == 429
    assert (await resp.json())["meter"] == "json_storage"
    assert gw.upstream.count("/api/data") == 0
    resp = await gw.client.put("/api/data/doc", data=b"x" * 10, headers=headers)
    assert resp.status == 200
    assert gw.upstream.count("/api/data") == 1
    assert (await _usage(gw, headers))["json_storage"]["used"] == JSON_LIMIT_FREE


async def test_reported_usage_settles_and_never_reaches_the_client(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")
    gw.upstream.reply_headers["/api/storage/file"] = {
        "X-Gateway-Usage": "project_storage=5000000, json_storage=1234, api_calls=+4, bogus=1"
    }
    resp = await gw.client.post("/api/storage/file", data=b"y" * 100, headers=headers)
    assert resp.status == 200
    assert "X-Gateway-Usage" not in resp.headers
    meters = await _usage(gw, headers)
    # absolute byte counts replace the declared estimate; counters grow by the increment
    assert meters["project_storage"]["used"] == 5_000_000
    assert meters["json_storage"]["used"] == 1234
    assert meters["api_calls"]["used"] == 1 + 4


async def test_a_client_forged_usage_header_is_dropped_and_never_counted(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")
    forged = {**headers, "X-Gateway-Usage": "json_storage=99999999, api_calls=+1000"}
    resp = await gw.client.put("/api/data/doc", data=b"z" * 5, headers=forged)
    assert resp.status == 200
    assert "x-gateway-usage" not in {k.lower() for k in gw.upstream.requests[-1].headers}
    meters = await _usage(gw, headers)
    assert meters["json_storage"]["used"] == 5  # the declared write, nothing forged
    assert meters["api_calls"]["used"] == 1


async def test_a_failed_write_gives_its_declared_bytes_back(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    headers = await gw.caller("free", "user_ask_")
    gw.upstream.status["/api/data/doc"] = 500
    resp = await gw.client.put("/api/data/doc", data=b"x" * 50, headers=headers)
    assert resp.status == 500
    assert (await _usage(gw, headers))["json_storage"]["used"] == 0
