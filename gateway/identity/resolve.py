"""Who is calling: a credential from the request resolved to an account, tier and project."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from multidict import CIMultiDictProxy

from gateway.errors import Unauthenticated
from gateway.identity.jwks import JwksClient
from gateway.identity.registry import Account, Registry, org_account_id
from gateway.identity.sessions import SESSION_TOKEN, Sessions
from gateway.identity.tokens import Claims, JwtVerifier, UnknownSigningKey
from gateway.policy.model import Policy

CredentialKind = Literal["user", "project", "jwt", "session"]
_MAX_CREDENTIAL = 8192


@dataclass(frozen=True, slots=True)
class Identity:
    account_id: str
    tier: str
    kind: CredentialKind
    project_id: str | None = None
    key_id: str | None = None
    organization_id: str | None = None
    #: purchased capacity per meter and the meters the account pays overage on: carried
    #: with the cached account so the one metering round trip needs nothing else
    packages: Mapping[str, int] = field(default_factory=dict)
    overage: frozenset[str] = frozenset()
    #: the project key's service caps by module (gateway/metering/caps.py)
    caps: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


def _billing(policy: Policy, account: Account | None) -> dict[str, Any]:
    """The Identity fields the ledger needs: package capacity and overage meters."""
    if account is None or policy.billing is None:
        return {}
    return {
        "packages": account.package_units(),
        "overage": policy.billing.overage_meters(account.tier, account.overage),
    }


def credential_from(headers: CIMultiDictProxy[str]) -> str | None:
    """The caller's credential from ``Authorization: Bearer`` or ``X-API-Key``."""
    bearer = None
    authorization = headers.get("Authorization")
    if authorization is not None:
        scheme, _, value = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not value.strip():
            raise Unauthenticated("Authorization must be 'Bearer <key or token>'")
        bearer = value.strip()
    api_key = headers.get("X-API-Key")
    if api_key is not None:
        api_key = api_key.strip()
        if bearer is not None and bearer != api_key:
            raise Unauthenticated("Authorization and X-API-Key carry different credentials")
    credential = bearer or api_key
    if credential is not None and (len(credential) > _MAX_CREDENTIAL or not credential.isascii()):
        raise Unauthenticated("malformed credential")
    return credential or None


class Authenticator:
    def __init__(
        self,
        registry: Registry,
        verifier: JwtVerifier | None,
        sessions: Sessions | None = None,
        jwks: JwksClient | None = None,
    ) -> None:
        self._registry = registry
        self._verifier = verifier
        self._sessions = sessions
        self._jwks = jwks

    async def identify(self, policy: Policy, credential: str) -> Identity:
        key_type = policy.key_type(credential)
        if key_type is not None:
            # checked before any lookup, so garbage never costs a store round trip
            if key_type.regex.fullmatch(credential) is None:
                raise Unauthenticated(f"malformed {key_type.prefix} key")
            key = await self._registry.key_for(credential)
            if key is None:
                raise Unauthenticated("unknown or revoked API key")
            account = await self._registry.account(key.account_id)
            if account is None:
                raise Unauthenticated("unknown or revoked API key")
            return Identity(
                account_id=account.id,
                tier=account.tier,
                kind=key_type.kind,
                project_id=key.project_id,
                key_id=key.id,
                organization_id=account.organization_id,
                caps=key.caps,
                **_billing(policy, account),
            )
        if self._sessions is not None and SESSION_TOKEN.fullmatch(credential):
            session = await self._sessions.resolve(credential)
            account = None if session is None else await self._registry.account(session.account_id)
            if session is None or account is None:
                raise Unauthenticated("unknown, expired or revoked session")
            return Identity(
                account_id=account.id,
                tier=account.tier,
                kind="session",
                key_id=session.id,
                organization_id=account.organization_id,
                **_billing(policy, account),
            )
        if credential.count(".") == 2 and self._verifier is not None and self._verifier.enabled:
            claims = await self._verify(self._verifier, credential)
            if claims.tenant is None:
                raise Unauthenticated(f"token lacks {policy.tenant_claim}")
            account_id = org_account_id(claims.tenant)
            org = await self._registry.account(account_id)
            return Identity(
                account_id=account_id,
                tier=org.tier if org is not None else policy.default_tier,
                kind="jwt",
                organization_id=claims.tenant,
                **_billing(policy, org),
            )
        raise Unauthenticated("unrecognised credential")

    async def _verify(self, verifier: JwtVerifier, token: str) -> Claims:
        try:
            return verifier.verify(token)
        except UnknownSigningKey:
            # a provider that rotated keys signs with a kid we have not fetched yet
            if self._jwks is None or not await self._jwks.refetch():
                raise
            return verifier.verify(token)
