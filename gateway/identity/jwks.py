"""Signing keys from a JWKS URL: fetched at start, refreshed in the background, refetched
(rate-limited) when a token names a key the gateway has not seen, as after a rotation."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from gateway.identity.tokens import JwtVerifier, parse_jwks

log = logging.getLogger("gateway.jwks")

#: a JWKS is a handful of keys; anything much larger is not one
_MAX_DOCUMENT = 256 * 1024
#: after a failed fetch, the background loop tries again this soon (or at the refresh, if sooner)
_RETRY_SECONDS = 10.0


class JwksClient:
    """Keeps a verifier's public keys in step with an identity provider's JWKS document.

    Keys configured from files stay; keys from the URL are replaced whole by each successful
    fetch, so a key the provider withdrew stops verifying at the next refresh. A failed fetch
    keeps the keys already held (an identity provider outage must not log everybody out).
    """

    def __init__(
        self,
        url: str,
        verifier: JwtVerifier,
        *,
        static_keys: dict[str | None, Any] | None = None,
        refresh_seconds: float = 300.0,
        refetch_seconds: float = 10.0,
        timeout_seconds: float = 5.0,
        on_fetch: Callable[[str], None] | None = None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url = url
        self._verifier = verifier
        self._static = dict(static_keys or {})
        self._refresh = refresh_seconds
        self._refetch = refetch_seconds
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._on_fetch = on_fetch or (lambda result: None)
        self._monotonic = monotonic
        self._lock = asyncio.Lock()
        self._last_attempt: float | None = None
        self._fetches = 0  # completed attempts, so waiters on the lock can tell one happened
        self.kids: frozenset[str | None] = frozenset()

    async def fetch(self) -> bool:
        """Fetch the document now and install its keys; False (keys kept) on any failure."""
        async with self._lock:
            return await self._fetch_locked()

    async def refetch(self) -> bool:
        """For a token with an unknown key: fetch again unless one was tried very recently.

        True when a fetch (this caller's, or one it waited for) installed a key set. Forged
        tokens with random key ids cost the provider at most one request per interval.
        """
        seen = self._fetches
        async with self._lock:
            if self._fetches != seen:
                return True  # a fetch finished while this caller waited: use its keys
            now = self._monotonic()
            if self._last_attempt is not None and now - self._last_attempt < self._refetch:
                return False
            return await self._fetch_locked()

    async def run(self) -> None:
        """The background refresh: fetch now, then every ``refresh_seconds`` (sooner after a
        failure). Runs until cancelled."""
        while True:
            ok = await self.fetch()
            await asyncio.sleep(self._refresh if ok else min(self._refresh, _RETRY_SECONDS))

    async def _fetch_locked(self) -> bool:
        self._last_attempt = self._monotonic()
        try:
            keys = await self._download()
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            log.warning(
                "JWKS fetch from %s failed, keeping %d keys: %s", self.url, len(self.kids), exc
            )
            self._on_fetch("failure")
            return False
        finally:
            self._fetches += 1
        self._verifier.set_public_keys({**self._static, **keys})
        if set(keys) != set(self.kids):
            log.info("JWKS from %s: key ids %s", self.url, sorted(str(k) for k in keys))
        self.kids = frozenset(keys)
        self._on_fetch("success")
        return True

    async def _download(self) -> dict[str | None, Any]:
        async with (
            aiohttp.ClientSession(timeout=self._timeout) as session,
            # a JWKS URL that redirects elsewhere is a misconfiguration, not a key source
            session.get(self.url, allow_redirects=False) as resp,
        ):
            if resp.status != 200:
                raise ValueError(f"HTTP {resp.status}")
            body = await resp.content.read(_MAX_DOCUMENT + 1)
        if len(body) > _MAX_DOCUMENT:
            raise ValueError(f"document larger than {_MAX_DOCUMENT} bytes")
        try:
            data = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a JSON JWKS document: {exc}") from exc
        return parse_jwks(data, self.url, strict=False)
