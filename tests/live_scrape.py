"""A live scrape of the admin listener's /metrics after requests of every kind of outcome."""

from __future__ import annotations

import socket

from yarl import URL

from tests.conftest import GatewayFactory, Upstream

# every outcome scrape() produces, as the `outcome` label of gateway_decisions_total
OUTCOMES = (
    "forwarded",
    "answered",
    "quota_exceeded",
    "tier_forbidden",
    "feature_unavailable",
    "unauthenticated",
    "not_found",
    "upstream_error",
)


def closed_port() -> int:
    """A loopback port nothing listens on: an upstream that refuses connections."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def scrape(make_gateway: GatewayFactory, upstream: Upstream) -> str:
    """Requests of each outcome through the proxy listener, then the admin listener's /metrics."""
    assert upstream.url is not None
    down = URL(f"http://127.0.0.1:{closed_port()}")
    gw = await make_gateway(upstreams=(("/api/payments", down), ("/", upstream.url)))
    free = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(free, 'ask_')}"}
    anonymous = await gw.caller("anonymous")
    expected = [
        ("GET", "/api/things", headers, 200),  # forwarded
        ("GET", "/health", {}, 200),  # forwarded, no caller
        ("GET", "/api/projects", headers, 200),  # answered by the gateway itself
        ("POST", "/api/projects", anonymous, 403),  # tier_forbidden
        ("GET", "/api/webhooks/x", headers, 402),  # feature_unavailable
        ("GET", "/api/things", {}, 401),  # unauthenticated
        ("GET", "/nowhere", headers, 404),  # not_found
        ("GET", "/api/payments/x", headers, 502),  # upstream_error
    ]
    for method, path, sent, status in expected:
        resp = await gw.client.request(method, path, headers=sent)
        assert resp.status == status, f"{method} {path}: {await resp.text()}"
    await gw.set_usage(free, "logic_engine_calls", 10_000)
    resp = await gw.client.get("/api/logic/run", headers=headers)
    assert resp.status == 429, await resp.text()  # quota_exceeded
    resp = await gw.admin.get("/metrics")
    assert resp.status == 200
    text = await resp.text()
    for outcome in OUTCOMES:
        assert f'outcome="{outcome}"' in text, f"no {outcome} decision in the scrape"
    return text
