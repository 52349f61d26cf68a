"""JWT signing keys from a JWKS URL: first fetch, rotation, refetch on an unknown kid
(rate-limited), background refresh, provider outages.

The memory store is enough here: what varies is where the keys come from, and the store only
ever sees the organisation's account id, exactly as with keys from a file (tests/test_jwt.py).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

import pytest
from aiohttp import web
from cryptography.hazmat.primitives.asymmetric import ec
from jwt.algorithms import ECAlgorithm

from gateway.identity.jwks import JwksClient
from gateway.identity.tokens import JwtVerifier, UnknownSigningKey
from gateway.policy.source import ConfigError
from gateway.settings import JwtSettings, load_settings
from tests.conftest import GatewayFactory, Harness, mint

CALL = "/api/v1/agents"


@dataclass
class Provider:
    """An identity provider's JWKS endpoint: the test rotates its keys and counts fetches."""

    keys: dict[str, ec.EllipticCurvePrivateKey] = field(default_factory=dict)
    fetches: int = 0
    status: int = 200
    url: str = ""

    def add(self, kid: str) -> ec.EllipticCurvePrivateKey:
        self.keys[kid] = ec.generate_private_key(ec.SECP256R1())
        return self.keys[kid]

    async def handle(self, request: web.Request) -> web.Response:
        self.fetches += 1
        if self.status != 200:
            return web.json_response({"error": "down"}, status=self.status)
        return web.json_response(
            {
                "keys": [
                    {**json.loads(ECAlgorithm.to_jwk(k.public_key())), "kid": kid, "use": "sig"}
                    for kid, k in self.keys.items()
                ]
                # providers publish encryption keys too; they are skipped, not fatal
                + [{"kty": "oct", "k": "c2VjcmV0", "kid": "enc", "use": "enc"}]
            }
        )


@pytest.fixture
async def provider(aiohttp_server: Any) -> Provider:
    state = Provider()
    app = web.Application()
    app.router.add_get("/.well-known/jwks.json", state.handle)
    server = await aiohttp_server(app)
    state.url = str(server.make_url("/.well-known/jwks.json"))
    return state


def token(provider: Provider, kid: str, org: str = "acme") -> dict[str, str]:
    signed = mint({"organization_id": org}, key=provider.keys[kid], algorithm="ES256",
                  headers={"kid": kid})  # fmt: skip
    return {"Authorization": f"Bearer {signed}"}


async def status_of(gw: Harness, headers: dict[str, str]) -> int:
    resp = await gw.client.get(CALL, headers=headers)
    await resp.read()
    return resp.status


async def until(condition: Any, seconds: float = 10.0) -> None:
    async with asyncio.timeout(seconds):
        while not condition():
            await asyncio.sleep(0.02)


def jwks_settings(provider: Provider, **extra: Any) -> JwtSettings:
    return JwtSettings(algorithms=("ES256",), jwks_url=provider.url, **extra)


async def test_a_rotated_key_is_fetched_on_first_use_and_a_withdrawn_one_stops_working(
    make_gateway: GatewayFactory, provider: Provider
) -> None:
    provider.add("k1")
    gw = await make_gateway("agentidp", jwt=jwks_settings(provider, jwks_refetch_seconds=0))
    assert await status_of(gw, token(provider, "k1")) == 200
    assert gw.upstream.count(CALL) == 1

    # the provider rotates: k2 in, k1 out; the first k2 token makes the gateway look again
    provider.add("k2")
    del_key = provider.keys.pop("k1")
    before = provider.fetches
    assert await status_of(gw, token(provider, "k2")) == 200
    assert provider.fetches == before + 1
    # k1 left the published set with that fetch: its tokens are refused, never forwarded
    provider.keys["k1"] = del_key  # only so the test can sign with it
    signed_by_k1 = token(provider, "k1")
    del provider.keys["k1"]
    assert await status_of(gw, signed_by_k1) == 401
    assert gw.upstream.count(CALL) == 2


async def test_forged_kids_cannot_make_the_gateway_hammer_the_provider(
    make_gateway: GatewayFactory, provider: Provider
) -> None:
    provider.add("k1")
    gw = await make_gateway("agentidp", jwt=jwks_settings(provider, jwks_refetch_seconds=3600))
    jwks = gw.gateway.jwks
    assert jwks is not None
    await until(lambda: jwks.kids == {"k1"})
    assert provider.fetches == 1

    forger = ec.generate_private_key(ec.SECP256R1())
    forged = [
        {"Authorization": "Bearer " + mint({"organization_id": "acme"}, key=forger,
                                           algorithm="ES256", headers={"kid": f"x{i}"})}
        for i in range(20)
    ]  # fmt: skip
    statuses = await asyncio.gather(*(status_of(gw, h) for h in forged))
    assert statuses == [401] * 20
    assert provider.fetches == 1  # the start-up fetch was within the interval: no refetch
    assert gw.upstream.count() == 0
    # the real key still works throughout
    assert await status_of(gw, token(provider, "k1")) == 200


async def test_the_background_refresh_follows_the_provider_without_any_unknown_kid(
    make_gateway: GatewayFactory, provider: Provider
) -> None:
    k1 = provider.add("k1")
    settings = jwks_settings(provider, jwks_refresh_seconds=0.05, jwks_refetch_seconds=3600)
    gw = await make_gateway("agentidp", jwt=settings)
    jwks = gw.gateway.jwks
    assert jwks is not None
    await until(lambda: jwks.kids == {"k1"})
    signed_by_k1 = token(provider, "k1")
    assert await status_of(gw, signed_by_k1) == 200

    provider.keys = {"k2": ec.generate_private_key(ec.SECP256R1())}
    await until(lambda: jwks.kids == {"k2"})
    assert await status_of(gw, signed_by_k1) == 401
    assert await status_of(gw, token(provider, "k2")) == 200
    assert k1 is not provider.keys.get("k1")


async def test_a_provider_outage_keeps_the_keys_already_held_and_is_counted(
    make_gateway: GatewayFactory, provider: Provider
) -> None:
    provider.add("k1")
    settings = jwks_settings(provider, jwks_refresh_seconds=0.05, jwks_refetch_seconds=0)
    gw = await make_gateway("agentidp", jwt=settings)
    jwks = gw.gateway.jwks
    assert jwks is not None
    await until(lambda: jwks.kids == {"k1"})

    provider.status = 503
    seen = provider.fetches
    failures = gw.gateway.metrics.jwks_fetches.labels("failure")
    await until(lambda: provider.fetches >= seen + 2)
    assert failures._value.get() >= 1
    assert jwks.kids == {"k1"}
    assert await status_of(gw, token(provider, "k1")) == 200


async def test_waiters_on_one_refetch_share_it() -> None:
    """Fifty requests with the same new kid arriving together cost one fetch, not fifty."""
    now = [0.0]
    verifier = JwtVerifier(algorithms=("ES256",), dynamic_keys=True)
    fetched = 0
    release = asyncio.Event()

    class Slow(JwksClient):
        async def _download(self) -> dict[str | None, Any]:
            nonlocal fetched
            fetched += 1
            await release.wait()
            return {"k1": ec.generate_private_key(ec.SECP256R1()).public_key()}

    client = Slow("http://127.0.0.1:1/jwks", verifier, refetch_seconds=60, monotonic=lambda: now[0])
    waiters = [asyncio.create_task(client.refetch()) for _ in range(50)]
    await asyncio.sleep(0)
    release.set()
    assert await asyncio.gather(*waiters) == [True] * 50
    assert fetched == 1
    assert client.kids == {"k1"}
    # within the interval a new unknown kid gets no fetch; after it, one
    assert await client.refetch() is False
    now[0] = 61.0
    assert await client.refetch() is True
    assert fetched == 2


def test_an_unknown_kid_is_its_own_error() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    verifier = JwtVerifier(algorithms=("ES256",), public_keys={"k1": key.public_key()})
    signed = mint({"organization_id": "acme"}, key=key, algorithm="ES256", headers={"kid": "k9"})
    with pytest.raises(UnknownSigningKey):
        verifier.verify(signed)


@pytest.mark.parametrize(
    ("url", "problem"),
    [("ftp://idp.test/jwks", "expected an http:// or https:// URL"), ("", "non-empty string")],
)
def test_jwks_url_must_be_http(tmp_path: Any, url: str, problem: str) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(f"jwt:\n  algorithms: [RS256]\n  jwks_url: '{url}'\n")
    with pytest.raises(ConfigError, match=problem):
        load_settings(str(path))


def test_an_asymmetric_algorithm_with_only_a_jwks_url_is_accepted(tmp_path: Any) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "jwt:\n  algorithms: [RS256]\n  jwks_url: https://idp.test/.well-known/jwks.json\n"
        "  jwks_refresh_seconds: 600\n"
    )
    jwt = load_settings(str(path)).jwt
    assert jwt.jwks_url == "https://idp.test/.well-known/jwks.json"
    assert jwt.jwks_refresh_seconds == 600
