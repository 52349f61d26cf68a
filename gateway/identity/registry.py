"""Accounts, projects and API keys: typed records over the store's record layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Conflict, NotFound, StoreUnavailable
from gateway.identity.cache import MISSING, IdentityCache
from gateway.identity.keys import digest, new_key
from gateway.metering.clock import Clock
from gateway.metering.keys import INVALIDATION_CHANNEL
from gateway.metering.store import Store
from gateway.policy.model import KeyType


@dataclass(frozen=True, slots=True)
class Account:
    id: str
    tier: str
    created_at: float
    name: str | None = None
    email: str | None = None
    organization_id: str | None = None
    is_anonymous: bool = False
    #: packages bought or granted: {id, kind, size, meter, units, price, at, source}
    packages: list[dict[str, Any]] = field(default_factory=list)
    #: overage switches: "enabled" (global) and one per switch the policy names
    overage: dict[str, bool] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def package_units(self) -> Mapping[str, int]:
        """Purchased capacity per meter, summed over every package the account holds."""
        out: dict[str, int] = {}
        for package in self.packages:
            meter = str(package["meter"])
            out[meter] = out.get(meter, 0) + int(package["units"])
        return out


@dataclass(frozen=True, slots=True)
class Project:
    id: str
    account_id: str
    name: str
    created_at: float
    active: bool = True

    def public(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True, slots=True)
class ApiKey:
    id: str
    digest: str
    account_id: str
    prefix: str
    kind: str
    created_at: float
    project_id: str | None = None
    label: str | None = None
    revoked_at: float | None = None
    #: service caps by module: {"deny": true} or {"limit": N, "period": "day"|"month"}
    caps: dict[str, dict[str, Any]] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        """What the admin API shows: never the digest, never the key."""
        out = dataclasses.asdict(self)
        del out["digest"]
        return out


#: the store set, per tier name, of the accounts on it
TIER_INDEX = "tier_accounts"


def org_account_id(organization_id: str) -> str:
    """An organisation's account id is derived, so metering needs no lookup to find it."""
    return f"org:{organization_id}"


def _load(cls: type[Any], doc: dict[str, Any] | None) -> Any:
    if doc is None:
        return None
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in doc.items() if k in names})


class Registry:
    """The system of record for who a caller is. Every store holds it the same way."""

    def __init__(self, store: Store, clock: Clock, cache: IdentityCache | None = None) -> None:
        self._store = store
        self._clock = clock
        # reads on the request path are served from here; see cache.py for the staleness bound
        self.cache = cache or IdentityCache(ttl=0)

    async def _changed(self, kind: str, ident: str) -> None:
        """Drop a changed key or account here and, via pub/sub, in every other process."""
        message = f"{kind}:{ident}"
        self.cache.invalidate(message)
        await self._store.publish(INVALIDATION_CHANNEL, message)

    async def create_account(
        self,
        tier: str,
        *,
        name: str | None = None,
        email: str | None = None,
        organization_id: str | None = None,
        is_anonymous: bool = False,
    ) -> Account:
        if organization_id is not None:
            account_id = org_account_id(organization_id)
        else:
            account_id = str(await self._store.next_id("account"))
        account = Account(
            id=account_id,
            tier=tier,
            created_at=self._clock.now(),
            name=name,
            email=email,
            organization_id=organization_id,
            is_anonymous=is_anonymous,
        )
        doc = dataclasses.asdict(account)
        if not await self._store.put_record("account", account_id, doc, only_if_absent=True):
            raise Conflict(f"account {account_id!r} already exists")
        await self._store.add_member(TIER_INDEX, tier, account_id)
        # a process may have cached this id as absent (a JWT tenant seen before signing up)
        await self._changed("account", account_id)
        return account

    async def account(self, account_id: str) -> Account | None:
        cached = self.cache.accounts.get(account_id)
        if cached is not MISSING:
            return cached if isinstance(cached, Account) else None
        try:
            doc = await self._store.get_record("account", account_id)
        except StoreUnavailable:
            cached = self.cache.accounts.stale(account_id)
            if cached is MISSING:
                raise
            return cached if isinstance(cached, Account) else None
        found: Account | None = _load(Account, doc)
        self.cache.accounts.put(account_id, found)
        return found

    async def require_account(self, account_id: str) -> Account:
        account = await self.account(account_id)
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        return account

    async def update_account(self, account_id: str, **changes: Any) -> Account:
        account = await self.require_account(account_id)
        updated = dataclasses.replace(account, **changes)
        await self._store.put_record("account", account_id, dataclasses.asdict(updated))
        if updated.tier != account.tier:
            await self._store.add_member(TIER_INDEX, updated.tier, account_id)
            await self._store.remove_member(TIER_INDEX, account.tier, account_id)
        await self._changed("account", account_id)
        return updated

    async def accounts_on_tier(self, tier: str) -> list[str]:
        """The ids of the accounts whose record names ``tier`` (for reload guards).

        The index may briefly hold an account under two tiers while its tier changes;
        each record is read, so an account is counted on the tier it has."""
        found = []
        for account_id in await self._store.members(TIER_INDEX, tier):
            doc = await self._store.get_record("account", account_id)
            if doc is not None and doc.get("tier") == tier:
                found.append(account_id)
        return found

    async def create_project(self, account_id: str, name: str) -> Project:
        project = Project(
            id=str(await self._store.next_id("project")),
            account_id=account_id,
            name=name,
            created_at=self._clock.now(),
        )
        await self._store.put_record("project", project.id, dataclasses.asdict(project))
        await self._store.add_member("projects", account_id, project.id)
        return project

    async def project(self, project_id: str) -> Project | None:
        found: Project | None = _load(Project, await self._store.get_record("project", project_id))
        return found

    async def update_project(self, project_id: str, **changes: Any) -> Project:
        project = await self.project(project_id)
        if project is None:
            raise NotFound(f"no project {project_id!r}")
        updated = dataclasses.replace(project, **changes)
        await self._store.put_record("project", project_id, dataclasses.asdict(updated))
        return updated

    async def delete_project(self, project: Project) -> bool:
        """Remove a project; False if it was already gone (so a count is freed only once)."""
        await self._store.remove_member("projects", project.account_id, project.id)
        return await self._store.delete_record("project", project.id)

    async def projects(self, account_id: str) -> list[Project]:
        ids = await self._store.members("projects", account_id)
        found = [await self.project(pid) for pid in ids]
        return sorted((p for p in found if p is not None), key=lambda p: int(p.id))

    async def issue_key(
        self,
        account_id: str,
        key_type: KeyType,
        *,
        project_id: str | None = None,
        label: str | None = None,
        caps: dict[str, dict[str, Any]] | None = None,
    ) -> tuple[ApiKey, str]:
        """A new key and its plaintext, which is returned here once and never stored."""
        plaintext = new_key(key_type.prefix, key_type.length)
        record = ApiKey(
            id=f"key_{await self._store.next_id('key')}",
            digest=digest(plaintext),
            account_id=account_id,
            prefix=key_type.prefix,
            kind=key_type.kind,
            created_at=self._clock.now(),
            project_id=project_id,
            label=label,
            caps=caps or {},
        )
        doc = dataclasses.asdict(record)
        await self._store.put_record("key", record.digest, doc)
        await self._store.put_record("key_id", record.id, {"digest": record.digest})
        await self._store.add_member("keys", account_id, record.id)
        return record, plaintext

    async def key_for(self, plaintext: str) -> ApiKey | None:
        """The live key whose digest matches, or None (unknown or revoked)."""
        key_digest = digest(plaintext)
        cached = self.cache.keys.get(key_digest)
        if isinstance(cached, ApiKey):
            return cached
        try:
            doc = await self._store.get_record("key", key_digest)
        except StoreUnavailable:
            stale = self.cache.keys.stale(key_digest)
            if isinstance(stale, ApiKey):
                return stale
            raise
        record: ApiKey | None = _load(ApiKey, doc)
        # only live keys are cached: an unknown key costs a lookup, but never fills the cache
        # for long and a newly issued key works at once everywhere
        if record is not None and record.revoked_at is None:
            self.cache.keys.put(key_digest, record)
        if record is None or record.revoked_at is not None:
            return None
        return record

    async def key(self, key_id: str) -> ApiKey | None:
        pointer = await self._store.get_record("key_id", key_id)
        if pointer is None:
            return None
        found: ApiKey | None = _load(ApiKey, await self._store.get_record("key", pointer["digest"]))
        return found

    async def revoke_key(self, key_id: str) -> ApiKey:
        record = await self.key(key_id)
        if record is None:
            raise NotFound(f"no key {key_id!r}")
        if record.revoked_at is None:
            record = dataclasses.replace(record, revoked_at=self._clock.now())
            await self._store.put_record("key", record.digest, dataclasses.asdict(record))
            await self._changed("key", record.digest)
        return record

    async def revoke_key_once(self, key_id: str) -> ApiKey | None:
        """Revoke a live key; None if it was already revoked, even by a racing caller, so
        whatever the key held is freed exactly once."""
        record = await self.key(key_id)
        if record is None:
            raise NotFound(f"no key {key_id!r}")
        if record.revoked_at is not None or not await self._store.put_record(
            "key_revoked", key_id, {"at": self._clock.now()}, only_if_absent=True
        ):
            return None
        return await self.revoke_key(key_id)

    async def keys(self, account_id: str) -> list[ApiKey]:
        found = [await self.key(key_id) for key_id in await self._store.members("keys", account_id)]
        return sorted((k for k in found if k is not None), key=lambda k: int(k.id[4:]))
