"""Login sessions: random bearer tokens kept only as digests, expiring, revocable."""

from __future__ import annotations

import dataclasses
import math
import re
from dataclasses import dataclass
from typing import Any

from gateway.errors import NotFound
from gateway.identity.keys import digest, random_token
from gateway.identity.records import change
from gateway.metering.clock import Clock
from gateway.metering.store import Store

#: a session token is 32 characters with no prefix, as the seed's ``session_token`` shows
SESSION_TOKEN = re.compile(r"[A-Za-z0-9]{32}")


@dataclass(frozen=True, slots=True)
class Session:
    id: str
    digest: str
    account_id: str
    created_at: float
    expires_at: float
    revoked_at: float | None = None

    def public(self) -> dict[str, Any]:
        """What the admin API shows: never the digest, never the token."""
        out = dataclasses.asdict(self)
        del out["digest"]
        return out


def _remaining(session: Session, now: float) -> int:
    """Whole seconds (at least one) until the session expires: its records' ttl in the store."""
    return max(1, math.ceil(session.expires_at - now))


def _load(doc: dict[str, Any] | None) -> Session | None:
    if doc is None:
        return None
    names = {f.name for f in dataclasses.fields(Session)}
    return Session(**{k: v for k, v in doc.items() if k in names})


class Sessions:
    """Sessions over the Store's record layer, so every store and process sees the same ones."""

    def __init__(self, store: Store, clock: Clock, *, ttl_seconds: float) -> None:
        self._store = store
        self._clock = clock
        self._ttl = ttl_seconds

    async def open(self, account_id: str) -> tuple[Session, str]:
        """A new session and its token, which is returned here once and never stored."""
        token = random_token(32)
        now = self._clock.now()
        session = Session(
            id=f"ses_{await self._store.next_id('session')}",
            digest=digest(token),
            account_id=account_id,
            created_at=now,
            expires_at=now + self._ttl,
        )
        # both records go when the session expires: nothing is kept for a dead session
        ttl = _remaining(session, now)
        await self._store.put_record(
            "session", session.digest, dataclasses.asdict(session), ttl_seconds=ttl
        )
        await self._store.put_record(
            "session_id", session.id, {"digest": session.digest}, ttl_seconds=ttl
        )
        await self._store.add_member("sessions", account_id, session.id)
        return session, token

    async def resolve(self, token: str) -> Session | None:
        """The live session a token names, or None (unknown, expired or revoked)."""
        session = _load(await self._store.get_record("session", digest(token)))
        if session is None or session.revoked_at is not None:
            return None
        if session.expires_at <= self._clock.now():
            return None
        return session

    async def get(self, session_id: str) -> Session | None:
        pointer = await self._store.get_record("session_id", session_id)
        if pointer is None:
            return None
        return _load(await self._store.get_record("session", pointer["digest"]))

    async def revoke(self, session_id: str) -> Session:
        pointer = await self._store.get_record("session_id", session_id)
        if pointer is None:
            raise NotFound(f"no session {session_id!r}")
        now = self._clock.now()

        def revoke(doc: dict[str, Any] | None) -> dict[str, Any] | None:
            if doc is None:
                raise NotFound(f"no session {session_id!r}")
            return doc if doc.get("revoked_at") is not None else {**doc, "revoked_at": now}

        doc, _ = await change(self._store, "session", pointer["digest"], revoke)
        session = _load(doc)
        if session is None:
            raise NotFound(f"no session {session_id!r}")
        return session

    async def of_account(self, account_id: str) -> list[Session]:
        found = [await self.get(sid) for sid in await self._store.members("sessions", account_id)]
        return sorted((s for s in found if s is not None), key=lambda s: int(s.id[4:]))

    async def revoke_all(self, account_id: str) -> list[Session]:
        """Revoke every live session of an account (a password change, a compromised login)."""
        return [
            await self.revoke(s.id)
            for s in await self.of_account(account_id)
            if s.revoked_at is None
        ]
