"""Registered users: the unique email index, password hashes and one-time conversion claims."""

from __future__ import annotations

import re

from gateway.metering.clock import Clock
from gateway.metering.store import Store

MAX_EMAIL = 254
# deliberately plain: one '@', no spaces, a dotted domain; deliverability is the mailer's job
_EMAIL = re.compile(r"[^@\s]{1,64}@[A-Za-z0-9-]+(\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,63}")


def normalise_email(email: str) -> str | None:
    """The email as it is indexed (trimmed, lower case), or None if it is not an address."""
    email = email.strip().lower()
    if len(email) > MAX_EMAIL or not _EMAIL.fullmatch(email):
        return None
    return email


class Users:
    """Login data kept beside the account, never inside it, so no account view can leak it."""

    def __init__(self, store: Store, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    async def claim_email(self, email: str, account_id: str) -> bool:
        """Atomically make ``email`` (normalised) name ``account_id``; False if it is taken."""
        doc = {"account_id": account_id, "at": self._clock.now()}
        return await self._store.put_record("email", email, doc, only_if_absent=True)

    async def release_email(self, email: str) -> None:
        await self._store.delete_record("email", email)

    async def account_for_email(self, email: str) -> str | None:
        normalised = normalise_email(email)
        if normalised is None:
            return None
        doc = await self._store.get_record("email", normalised)
        return None if doc is None else str(doc["account_id"])

    async def claim_conversion(self, account_id: str) -> bool:
        """Atomically mark an anonymous account as being converted; False if another
        conversion got there first, so two racing conversions can never both win."""
        doc = {"at": self._clock.now()}
        return await self._store.put_record("conversion", account_id, doc, only_if_absent=True)

    async def release_conversion(self, account_id: str) -> None:
        await self._store.delete_record("conversion", account_id)

    async def set_password_hash(self, account_id: str, encoded: str) -> None:
        await self._store.put_record("password", account_id, {"hash": encoded})

    async def password_hash(self, account_id: str) -> str | None:
        doc = await self._store.get_record("password", account_id)
        return None if doc is None else str(doc["hash"])
