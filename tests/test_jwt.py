"""Bearer JWTs through real HTTP: fixed algorithms, exp/iss/aud, a bounded organization_id."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import time
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm

from gateway.settings import JwtSettings, Limits
from tests.conftest import JWT_SECRET, GatewayFactory, Harness, mint, org_headers

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


CALL = "/api/v1/agents"  # the AgentIdP catch-all route: one API call per request


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


async def call(gw: Harness, headers: dict[str, str]) -> tuple[int, dict[str, Any], Any]:
    resp = await gw.client.get(CALL, headers=headers)
    return resp.status, await resp.json(), resp.headers


async def assert_refused(gw: Harness, headers: dict[str, str]) -> dict[str, Any]:
    before = gw.upstream.count()
    status, body, resp_headers = await call(gw, headers)
    assert status == 401, body
    assert body["code"] == "UNAUTHORIZED"
    assert resp_headers["WWW-Authenticate"].startswith("Bearer")
    assert gw.upstream.count() == before  # never forwarded
    return body


@pytest.fixture
def rsa_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def public_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


async def test_hs256_from_the_environment_secret(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    status, body, _ = await call(gw, org_headers("acme"))
    assert status == 200, body
    seen = gw.upstream.requests[-1]
    assert seen.headers["X-Gateway-Organization"] == "acme"
    assert seen.headers["X-Gateway-Account"] == "org:acme"
    assert seen.headers["X-Gateway-Tier"] == "free"
    # a token signed with any other secret is refused
    forged = mint({"organization_id": "acme"}, key="another-secret-of-the-same-length-xxxxx")
    await assert_refused(gw, bearer(forged))


async def test_rs256_from_a_pem_public_key_file(
    make_gateway: GatewayFactory, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    pem = tmp_path / "idp.pem"
    pem.write_bytes(public_pem(rsa_key))
    gw = await make_gateway(
        "agentidp", jwt=JwtSettings(algorithms=("RS256",), public_key_file=str(pem))
    )
    token = mint({"organization_id": "acme"}, key=rsa_key, algorithm="RS256")
    status, body, _ = await call(gw, bearer(token))
    assert status == 200, body
    # the test secret is in the environment, but HS256 is not a configured algorithm
    await assert_refused(gw, org_headers("acme"))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    await assert_refused(
        gw, bearer(mint({"organization_id": "acme"}, key=other, algorithm="RS256"))
    )


async def test_es256_from_a_jwks_file(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    keys = {kid: ec.generate_private_key(ec.SECP256R1()) for kid in ("k1", "k2")}
    jwks = {
        "keys": [
            {**json.loads(ECAlgorithm.to_jwk(key.public_key())), "kid": kid}
            for kid, key in keys.items()
        ]
    }
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks))
    gw = await make_gateway("agentidp", jwt=JwtSettings(algorithms=("ES256",), jwks_file=str(path)))
    for kid, key in keys.items():
        token = mint({"organization_id": "acme"}, key=key, algorithm="ES256", headers={"kid": kid})
        status, body, _ = await call(gw, bearer(token))
        assert status == 200, (kid, body)
    # signed by k1 but claiming to be k2
    wrong = mint(
        {"organization_id": "acme"}, key=keys["k1"], algorithm="ES256", headers={"kid": "k2"}
    )
    await assert_refused(gw, bearer(wrong))
    unknown = mint(
        {"organization_id": "acme"}, key=keys["k1"], algorithm="ES256", headers={"kid": "k9"}
    )
    await assert_refused(gw, bearer(unknown))


def _part(value: dict[str, Any]) -> bytes:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=")


def sign_hs256(header: dict[str, Any], claims: dict[str, Any], secret: bytes) -> str:
    """A token signed by hand, so its header can hold what pyjwt would refuse to write."""
    signing_input = _part(header) + b"." + _part(claims)
    digest = hmac.new(secret, signing_input, hashlib.sha256).digest()
    return (signing_input + b"." + base64.urlsafe_b64encode(digest).rstrip(b"=")).decode()


def unsigned(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).rstrip(b"=").decode()

    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


async def test_alg_none_is_refused(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    token = unsigned({"organization_id": "acme", "exp": int(time.time()) + 3600})
    await assert_refused(gw, bearer(token))


async def test_hs256_signed_with_the_rsa_public_key_is_refused(
    make_gateway: GatewayFactory, tmp_path: Path, rsa_key: rsa.RSAPrivateKey
) -> None:
    """Key confusion: the public PEM used as an HMAC secret must not pass as RS256's key."""
    pem = public_pem(rsa_key)
    path = tmp_path / "idp.pem"
    path.write_bytes(pem)
    gw = await make_gateway(
        "agentidp", jwt=JwtSettings(algorithms=("RS256",), public_key_file=str(path))
    )
    body = {"organization_id": "acme", "exp": int(time.time()) + 3600}
    await assert_refused(gw, bearer(sign_hs256({"alg": "HS256", "typ": "JWT"}, body, pem)))
    # the same claims properly signed pass, so the refusal is about the algorithm alone
    status, _, _ = await call(gw, bearer(mint(body, key=rsa_key, algorithm="RS256")))
    assert status == 200


async def test_exp_is_required(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    body = await assert_refused(gw, bearer(mint({"organization_id": "acme"}, lifetime=None)))
    assert "exp" in body["message"]


async def test_expiry_with_leeway(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp", jwt=JwtSettings(leeway_seconds=30))
    # well past the leeway: refused; inside it: accepted
    body = await assert_refused(gw, bearer(mint({"organization_id": "acme"}, lifetime=-600)))
    assert body["message"] == "token expired"
    status, body, _ = await call(gw, bearer(mint({"organization_id": "acme"}, lifetime=-5)))
    assert status == 200, body


async def test_issuer_and_audience_are_checked_when_configured(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway(
        "agentidp", jwt=JwtSettings(issuer="https://idp.test", audience="gateway")
    )
    good = {"organization_id": "acme", "iss": "https://idp.test", "aud": "gateway"}
    status, body, _ = await call(gw, bearer(mint(good)))
    assert status == 200, body
    for wrong in (
        {**good, "iss": "https://evil.test"},
        {**good, "aud": "someone-else"},
        {k: v for k, v in good.items() if k != "aud"},
        {k: v for k, v in good.items() if k != "iss"},
    ):
        await assert_refused(gw, bearer(mint(wrong)))


@pytest.mark.parametrize(
    "organization_id",
    [None, "", "x" * 129, 42, ["acme"], {"id": "acme"}, "ac{me", "ac me", " acme", "acme\n"],
    ids=["missing", "empty", "too-long", "int", "list", "object", "brace", "space", "lead", "nl"],
)
async def test_bad_organization_id_is_refused(
    make_gateway: GatewayFactory, organization_id: Any
) -> None:
    gw = await make_gateway("agentidp")
    claims = {} if organization_id is None else {"organization_id": organization_id}
    await assert_refused(gw, bearer(mint(claims)))


async def test_a_128_character_organization_id_is_accepted(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    status, body, _ = await call(gw, org_headers("o" * 128))
    assert status == 200, body


async def test_an_organisation_never_seen_is_on_the_default_tier(
    make_gateway: GatewayFactory,
) -> None:
    gw = await make_gateway("agentidp")
    status, _, headers = await call(gw, org_headers("brand-new-org"))
    assert status == 200
    assert headers["RateLimit-Limit"] == "1000"  # free: 1,000 API calls a day
    assert headers["RateLimit-Remaining"] == "999"


async def test_an_org_account_on_pro_gets_pro_limits(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway("agentidp")
    account_id = await gw.account("pro", organization_id="acme-pro")
    status, _, headers = await call(gw, org_headers("acme-pro"))
    assert status == 200
    assert headers["RateLimit-Limit"] == "50000"
    usage = await gw.admin.get(f"/admin/accounts/{account_id}/usage", headers=gw.admin_headers)
    assert (await usage.json())["meters"]["api_calls"]["used"] == 1


async def test_jwt_secret_in_the_environment_is_what_signs(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_SECRET", "x" * 40)
    gw = await make_gateway("agentidp")
    await assert_refused(gw, org_headers("acme"))  # signed with the old JWT_SECRET
    assert JWT_SECRET != "x" * 40
    status, _, _ = await call(gw, bearer(mint({"organization_id": "acme"}, key="x" * 40)))
    assert status == 200


async def test_a_short_hs256_secret_is_refused_at_start(
    make_gateway: GatewayFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_JWT_SECRET", "s" * 31)
    with pytest.raises(ValueError, match="31 bytes; HS256 needs at least 32"):
        await make_gateway("agentidp")


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not a JSON JWKS document"),
        ('{"keys": []}', "at least one key"),
        ("[]", "at least one key"),
        ('{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}', "keys[0]: unsupported JWK key type 'oct'"),
        ('{"keys": [{"kty": "EC", "crv": "P-256"}]}', "keys[0]:"),
        ("private", "keys[0]: a private key"),
    ],
)
async def test_a_bad_jwks_file_is_refused_at_start_naming_it(
    make_gateway: GatewayFactory, tmp_path: Path, content: str, problem: str
) -> None:
    if content == "private":
        private = ec.generate_private_key(ec.SECP256R1())
        content = json.dumps({"keys": [json.loads(ECAlgorithm.to_jwk(private))]})
    path = tmp_path / "jwks.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=re.escape(f"{path}: ")) as caught:
        await make_gateway("agentidp", jwt=JwtSettings(algorithms=("ES256",), jwks_file=str(path)))
    assert problem in str(caught.value)


async def test_a_file_that_is_no_pem_key_is_refused_at_start(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "idp.pem"
    path.write_text("-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n")
    with pytest.raises(ValueError, match="not a PEM public key"):
        await make_gateway(
            "agentidp", jwt=JwtSettings(algorithms=("RS256",), public_key_file=str(path))
        )


@pytest.mark.parametrize(
    "token",
    [
        mint({"organization_id": "acme", "nbf": int(time.time()) + 3600}),  # not yet valid
        mint({"organization_id": "acme", "exp": "tomorrow"}, lifetime=None),
        sign_hs256(
            {"alg": "HS256", "kid": ["k1"]},
            {"organization_id": "acme", "exp": int(time.time()) + 3600},
            JWT_SECRET.encode(),
        ),
        mint({"organization_id": "acme"})[:-3] + "AAA",  # signature tampered
        "not.a.jwt",
        "eyJhbGciOiJIUzI1NiJ9..",
    ],
    ids=["nbf-future", "exp-string", "kid-list", "tampered", "garbage", "empty-parts"],
)
async def test_malformed_or_forged_tokens_are_refused(
    make_gateway: GatewayFactory, token: str
) -> None:
    gw = await make_gateway("agentidp")
    await assert_refused(gw, bearer(token))


async def test_an_oversized_token_is_refused(make_gateway: GatewayFactory) -> None:
    # header lines are allowed to be long enough to carry it, so the token check itself refuses
    gw = await make_gateway("agentidp", limits=Limits(max_header_bytes=32 * 1024))
    await assert_refused(gw, bearer(mint({"organization_id": "acme", "pad": "x" * 9000})))
    status, _, _ = await call(gw, bearer(mint({"organization_id": "acme", "pad": "x" * 5000})))
    assert status == 200


# HS256 tokens minted outside the gateway's code, by a shell pipeline (key: JWT_SECRET):
#   b64url() { openssl base64 -A | tr '+/' '-_' | tr -d '='; }
#   H=$(printf '%s' '{"alg":"HS256","typ":"JWT"}' | b64url)
#   B=$(printf '%s' '{"organization_id":"org-vector","exp":4102444800}' | b64url)
#   S=$(printf '%s' "$H.$B" | openssl dgst -sha256 -hmac "$JWT_SECRET" -binary | b64url)
#   echo "$H.$B.$S"
VECTOR_TOKEN = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJvcmdhbml6YXRpb25faWQiOiJvcmctdmVjdG9yIiwiZXhwIjo0MTAyNDQ0ODAwfQ"
    ".EmcS9cAbpUqNJVPkaglS9KK2qgFcvTra-jsBAWZAW3M"
)
# the same header and signature over {"organization_id":"org-victim","exp":4102444800}
VECTOR_TAMPERED = (
    "eyJhbGciOiJIUzI1NiIsInR5cCI6IkpXVCJ9"
    ".eyJvcmdhbml6YXRpb25faWQiOiJvcmctdmljdGltIiwiZXhwIjo0MTAyNDQ0ODAwfQ"
    ".EmcS9cAbpUqNJVPkaglS9KK2qgFcvTra-jsBAWZAW3M"
)


async def test_a_token_minted_outside_the_gateway_is_accepted_and_a_changed_claim_refused(
    make_gateway: GatewayFactory,
) -> None:
    assert JWT_SECRET == "test-jwt-secret-that-is-long-enough-for-hs256"  # the vector's key
    gw = await make_gateway("agentidp")
    status, body, _ = await call(gw, bearer(VECTOR_TOKEN))
    assert status == 200, body
    assert gw.upstream.requests[-1].headers["X-Gateway-Organization"] == "org-vector"
    await assert_refused(gw, bearer(VECTOR_TAMPERED))
