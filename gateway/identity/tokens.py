"""Bearer JWTs: fixed algorithms, required exp, optional iss/aud, a bounded tenant claim."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import load_pem_public_key
from jwt.algorithms import ECAlgorithm, RSAAlgorithm

from gateway.errors import Unauthenticated

_SYMMETRIC = frozenset({"HS256", "HS384", "HS512"})
_HMAC_KEY_BYTES = {"HS256": 32, "HS384": 48, "HS512": 64}
_ASYMMETRIC = frozenset({"RS256", "RS384", "RS512", "ES256", "ES384", "ES512"})
SUPPORTED = _SYMMETRIC | _ASYMMETRIC
# what an organisation id may look like: it becomes part of store keys and upstream headers
TENANT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")
_MAX_TOKEN = 8192


@dataclass(frozen=True, slots=True)
class Claims:
    tenant: str | None  # the tenant claim (organization_id), validated
    subject: str | None


class JwtVerifier:
    """Verifies tokens with keys chosen by the configured algorithm, never by the token."""

    def __init__(
        self,
        *,
        algorithms: tuple[str, ...],
        secret: bytes | None = None,
        public_keys: dict[str | None, Any] | None = None,
        issuer: str | None = None,
        audience: str | None = None,
        leeway: float = 30.0,
        tenant_claim: str = "organization_id",
    ) -> None:
        self.algorithms = algorithms
        # RFC 7518 3.2: an HMAC key at least as long as the hash. pyjwt would otherwise warn on
        # every request, and a short secret can be brute-forced from any token it signed.
        shortest = max((_HMAC_KEY_BYTES[a] for a in algorithms if a in _SYMMETRIC), default=0)
        if secret is not None and len(secret) < shortest:
            raise ValueError(
                f"the JWT secret is {len(secret)} bytes; {', '.join(algorithms)} needs at least "
                f"{shortest} random bytes"
            )
        self._secret = secret
        self._public = public_keys or {}
        self._issuer = issuer
        self._audience = audience
        self._leeway = leeway
        self._tenant_claim = tenant_claim

    @property
    def enabled(self) -> bool:
        return bool(self._secret or self._public)

    def verify(self, token: str) -> Claims:
        if len(token) > _MAX_TOKEN:
            raise Unauthenticated("token too large")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated("malformed token") from exc
        alg = header.get("alg")
        # Only configured algorithms: this is what defeats alg=none and RS/HS key confusion.
        if not isinstance(alg, str) or alg not in self.algorithms:
            raise Unauthenticated("token algorithm not accepted")
        key = self._key_for(alg, header.get("kid"))
        options: Any = {"require": ["exp"], "verify_aud": self._audience is not None}
        try:
            claims = jwt.decode(
                token,
                key,
                algorithms=[alg],
                issuer=self._issuer,
                audience=self._audience,
                leeway=self._leeway,
                options=options,
            )
        except jwt.ExpiredSignatureError as exc:
            raise Unauthenticated("token expired") from exc
        except jwt.InvalidTokenError as exc:
            raise Unauthenticated(f"invalid token: {exc}") from exc
        tenant = claims.get(self._tenant_claim)
        if tenant is not None and (not isinstance(tenant, str) or not TENANT_ID.fullmatch(tenant)):
            raise Unauthenticated(f"invalid {self._tenant_claim} claim")
        subject = claims.get("sub")
        return Claims(tenant=tenant, subject=subject if isinstance(subject, str) else None)

    def _key_for(self, alg: str, kid: Any) -> Any:
        if alg in _SYMMETRIC:
            if self._secret is None:
                raise Unauthenticated("token algorithm not accepted")
            return self._secret
        if kid is not None and not isinstance(kid, str):
            raise Unauthenticated("malformed token")
        key = self._public.get(kid) if kid in self._public else self._public.get(None)
        if key is None:
            raise Unauthenticated("unknown signing key")
        # an RS token must meet an RSA key and an ES token an EC key, whatever the kid says
        expected = rsa.RSAPublicKey if alg.startswith("RS") else ec.EllipticCurvePublicKey
        if not isinstance(key, expected):
            raise Unauthenticated("token algorithm does not match the signing key")
        return key


def load_public_keys(pem_file: str | None, jwks_file: str | None) -> dict[str | None, Any]:
    """Public keys by ``kid`` (None for a single PEM key); RSA or EC only."""
    keys: dict[str | None, Any] = {}
    if pem_file:
        try:
            pem = load_pem_public_key(Path(pem_file).read_bytes())
        except ValueError as exc:
            raise ValueError(f"{pem_file}: not a PEM public key: {exc}") from exc
        if not isinstance(pem, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
            raise ValueError(f"{pem_file}: expected an RSA or EC public key")
        keys[None] = pem
    if jwks_file:
        try:
            data = json.loads(Path(jwks_file).read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{jwks_file}: not a JSON JWKS document: {exc}") from exc
        found = data.get("keys") if isinstance(data, dict) else None
        if not isinstance(found, list) or not found:
            raise ValueError(f'{jwks_file}: expected {{"keys": [...]}} with at least one key')
        for index, jwk in enumerate(found):
            where = f"{jwks_file}: keys[{index}]"
            kty = jwk.get("kty") if isinstance(jwk, dict) else None
            try:
                if kty == "RSA":
                    key: object = RSAAlgorithm.from_jwk(json.dumps(jwk))
                elif kty == "EC":
                    key = ECAlgorithm.from_jwk(json.dumps(jwk))
                else:
                    raise ValueError(f"{where}: unsupported JWK key type {kty!r}")
            except jwt.InvalidKeyError as exc:
                raise ValueError(f"{where}: {exc}") from exc
            # private keys do not belong in a file the gateway only verifies with
            if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise ValueError(f"{where}: a private key; list only public keys")
            kid = jwk.get("kid")
            keys[kid if isinstance(kid, str) else None] = key
    return keys
