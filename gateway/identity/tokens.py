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


class UnknownSigningKey(Unauthenticated):
    """A token names a key this verifier does not hold (yet): a JWKS may have rotated."""


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
        dynamic_keys: bool = False,
    ) -> None:
        self.algorithms = algorithms
        # keys arrive from a JWKS URL: the verifier is enabled before the first fetch lands
        self.dynamic_keys = dynamic_keys
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
        return bool(self._secret or self._public or self.dynamic_keys)

    def set_public_keys(self, keys: dict[str | None, Any]) -> None:
        """Swap in a whole new key set (a JWKS refresh); requests in flight keep the old one."""
        self._public = dict(keys)

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
            raise UnknownSigningKey("unknown signing key")
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
        keys.update(parse_jwks(data, jwks_file))
    return keys


def parse_jwks(data: Any, where: str, *, strict: bool = True) -> dict[str | None, Any]:
    """Public keys by ``kid`` from a JWKS document; RSA or EC only.

    ``strict`` (a file the operator wrote) refuses any key it cannot use; otherwise (a JWKS
    an identity provider publishes, which may list keys for other uses) such keys are
    skipped, but a document with no usable key is still an error.
    """
    found = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(found, list) or not found:
        raise ValueError(f'{where}: expected {{"keys": [...]}} with at least one key')
    keys: dict[str | None, Any] = {}
    for index, jwk in enumerate(found):
        at = f"{where}: keys[{index}]"
        kty = jwk.get("kty") if isinstance(jwk, dict) else None
        try:
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig":
                raise ValueError(f"{at}: not a signing key")
            if kty == "RSA":
                key: object = RSAAlgorithm.from_jwk(json.dumps(jwk))
            elif kty == "EC":
                key = ECAlgorithm.from_jwk(json.dumps(jwk))
            else:
                raise ValueError(f"{at}: unsupported JWK key type {kty!r}")
            # private keys do not belong in a set the gateway only verifies with
            if not isinstance(key, rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
                raise ValueError(f"{at}: a private key; list only public keys")
        except (ValueError, jwt.InvalidKeyError) as exc:
            if strict:
                raise ValueError(
                    str(exc) if isinstance(exc, ValueError) else f"{at}: {exc}"
                ) from exc
            continue
        kid = jwk.get("kid")
        keys[kid if isinstance(kid, str) else None] = key
    if not keys:
        raise ValueError(f"{where}: no RSA or EC signing key")
    return keys
