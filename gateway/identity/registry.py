"""Accounts, projects and API keys: typed records over the store's record layer."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from gateway.errors import Conflict, NotFound, StoreUnavailable
from gateway.identity.cache import MISSING, IdentityCache
from gateway.identity.keys import digest, new_key
from gateway.identity.records import change
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
    #: purchases by Idempotency-Key -> package id: kept with the packages so that a package
    #: and its key are written together (a retried purchase finds what it bought)
    purchases: dict[str, str] = field(default_factory=dict)

    def public(self) -> dict[str, Any]:
        out = dataclasses.asdict(self)
        del out["purchases"]
        return out

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
        # a project id is an integer on both APIs (the seed's `"project": {"id": 1}`)
        return {**dataclasses.asdict(self), "id": int(self.id)}


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
        """The account as this process knows it (cached): for serving requests, never for
        deciding a write (``change_account`` reads the store)."""
        cached = self.cache.accounts.get(account_id)
        if cached is not MISSING:
            return cached if isinstance(cached, Account) else None
        generation = self.cache.generation
        try:
            doc = await self._store.get_record("account", account_id)
        except StoreUnavailable:
            cached = self.cache.accounts.stale(account_id)
            if cached is MISSING:
                raise
            return cached if isinstance(cached, Account) else None
        found: Account | None = _load(Account, doc)
        # not if a change was announced while we read: what we read may predate it
        if self.cache.generation == generation:
            self.cache.accounts.put(account_id, found)
        return found

    async def require_account(self, account_id: str) -> Account:
        account = await self.account(account_id)
        if account is None:
            raise NotFound(f"no account {account_id!r}")
        return account

    async def change_account(
        self,
        account_id: str,
        rule: Callable[[Account], Account],
        *,
        create: Callable[[], Account] | None = None,
    ) -> tuple[Account, bool]:
        """Apply ``rule`` to the stored account in one atomic step (records.change): the
        account as it now stands, and whether this call changed it.

        ``rule`` gets the account as stored right now and returns it with only the fields
        its writer means to change (or unchanged; or raises to refuse). An absent account
        is ``create()``d and the rule applied to that, in the same step; without
        ``create`` it is NotFound."""

        before: list[str | None] = [None]  # the tier the stored account had, for the index

        def apply(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            before[0] = None if doc is None else doc.get("tier")
            if doc is None:
                if create is None:
                    raise NotFound(f"no account {account_id!r}")
                return dataclasses.asdict(rule(create()))
            current = _load(Account, doc)
            wanted = rule(current)
            # fields this version does not know (a newer gateway's) are kept as they are
            return doc if wanted == current else {**doc, **dataclasses.asdict(wanted)}

        doc, changed = await change(self._store, "account", account_id, apply)
        account: Account = _load(Account, doc)
        if changed and before[0] != account.tier:
            await self._store.add_member(TIER_INDEX, account.tier, account_id)
            if before[0] is not None:
                await self._store.remove_member(TIER_INDEX, before[0], account_id)
        if changed:
            await self._changed("account", account_id)
        return account, changed

    async def update_account(self, account_id: str, **changes: Any) -> Account:
        """Set these fields of the stored account, leaving every other field as it is."""
        account, _ = await self.change_account(
            account_id, lambda current: dataclasses.replace(current, **changes)
        )
        return account

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

    async def change_project(
        self, project_id: str, rule: Callable[[Project], Project]
    ) -> tuple[Project, bool]:
        """As ``change_account``, for a project (NotFound if absent)."""

        before: list[str | None] = [None]  # the tier the stored account had, for the index

        def apply(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            before[0] = None if doc is None else doc.get("tier")
            if doc is None:
                raise NotFound(f"no project {project_id!r}")
            current = _load(Project, doc)
            wanted = rule(current)
            return doc if wanted == current else {**doc, **dataclasses.asdict(wanted)}

        doc, changed = await change(self._store, "project", project_id, apply)
        project: Project = _load(Project, doc)
        return project, changed

    async def update_project(self, project_id: str, **changes: Any) -> Project:
        project, _ = await self.change_project(
            project_id, lambda current: dataclasses.replace(current, **changes)
        )
        return project

    async def delete_project(self, project: Project) -> Project | None:
        """Remove a project in one atomic step: the project as it was when removed, or None
        if it was already gone (so what it held is freed only once)."""
        removed: list[Project] = []

        def remove(doc: dict[str, Any] | None) -> None:
            removed[:] = [] if doc is None else [_load(Project, doc)]

        _, changed = await change(self._store, "project", project.id, remove)
        await self._store.remove_member("projects", project.account_id, project.id)
        return removed[0] if changed and removed else None

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
        generation = self.cache.generation
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
        live = record is not None and record.revoked_at is None
        if live and self.cache.generation == generation:
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
        record, _ = await self._revoke(key_id)
        return record

    async def revoke_key_once(self, key_id: str) -> ApiKey | None:
        """Revoke a live key; None if it was already revoked, even by a racing caller, so
        whatever the key held is freed exactly once."""
        record, revoked = await self._revoke(key_id)
        return record if revoked else None

    async def _revoke(self, key_id: str) -> tuple[ApiKey, bool]:
        """The key, revoked, and whether this call revoked it (one atomic step)."""
        pointer = await self._store.get_record("key_id", key_id)
        if pointer is None:
            raise NotFound(f"no key {key_id!r}")
        now = self._clock.now()

        def revoke(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                raise NotFound(f"no key {key_id!r}")
            if doc.get("revoked_at") is not None:
                return doc
            return {**doc, "revoked_at": now}

        doc, revoked = await change(self._store, "key", pointer["digest"], revoke)
        record: ApiKey = _load(ApiKey, doc)
        if revoked:
            await self._changed("key", record.digest)
        return record, revoked

    async def keys(self, account_id: str) -> list[ApiKey]:
        found = [await self.key(key_id) for key_id in await self._store.members("keys", account_id)]
        return sorted((k for k in found if k is not None), key=lambda k: int(k.id[4:]))
