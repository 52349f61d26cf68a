"""Password hashing: scrypt with a random salt, slow on purpose, verified in constant time."""

from __future__ import annotations

import asyncio
import base64
import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")

# scrypt cost: 2**14 x 8 takes ~16 MiB and tens of milliseconds, which is what makes an
# offline guess against a leaked store expensive (OWASP's minimum for scrypt)
_N, _R, _P, _LEN = 2**14, 8, 1, 32


def _scrypt(password: str, salt: bytes, n: int, r: int, p: int) -> bytes:
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=_LEN, maxmem=64 * 1024 * 1024
    )


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode("ascii")


def hash_password_sync(password: str) -> str:
    salt = secrets.token_bytes(16)
    derived = _scrypt(password, salt, _N, _R, _P)
    return f"scrypt${_N}${_R}${_P}${_b64(salt)}${_b64(derived)}"


def verify_password_sync(password: str, encoded: str) -> bool:
    try:
        scheme, n, r, p, salt, expected = encoded.split("$")
        if scheme != "scrypt":
            return False
        derived = _scrypt(password, base64.b64decode(salt), int(n), int(r), int(p))
    except (ValueError, TypeError):
        return False
    return hmac.compare_digest(derived, base64.b64decode(expected))


# Hashing runs on threads of its own, at most half the cores at once: a burst of logins
# queues here instead of taking every core (and the default executor, which policy reloads
# use) away from the requests the gateway is serving.
_HASHING = ThreadPoolExecutor(
    max_workers=max(1, (os.cpu_count() or 2) // 2), thread_name_prefix="password-hash"
)


@functools.cache
def _dummy() -> str:
    """What an unknown email is checked against: a hash at the same scrypt cost."""
    return hash_password_sync(secrets.token_urlsafe(16))


def _verify_unknown(password: str) -> bool:
    verify_password_sync(password, _dummy())
    return False


async def _run(fn: Callable[..., T], *args: Any) -> T:
    return await asyncio.get_running_loop().run_in_executor(_HASHING, fn, *args)


async def hash_password(password: str) -> str:
    """The encoded hash; computed off the event loop so other requests keep flowing."""
    return await _run(hash_password_sync, password)


async def verify_password(password: str, encoded: str | None) -> bool:
    """True when ``password`` matches; with no hash, runs the same verification against a
    dummy and says False, so response timing does not reveal whether an email is known."""
    if encoded is None:
        return await _run(_verify_unknown, password)
    return await _run(verify_password_sync, password, encoded)
