"""Password hashing: scrypt with a random salt, slow on purpose, verified in constant time."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets

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


async def hash_password(password: str) -> str:
    """The encoded hash; computed off the event loop so other requests keep flowing."""
    return await asyncio.to_thread(hash_password_sync, password)


async def verify_password(password: str, encoded: str | None) -> bool:
    """True when ``password`` matches; with no hash, spends the same time and says False,
    so response timing does not reveal whether an email is registered."""
    if encoded is None:
        await asyncio.to_thread(hash_password_sync, password)
        return False
    return await asyncio.to_thread(verify_password_sync, password, encoded)
