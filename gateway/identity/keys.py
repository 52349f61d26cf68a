"""API key material: generated from a CSPRNG, stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import secrets
import string

_ALPHABET = string.ascii_letters + string.digits


def random_token(length: int = 32) -> str:
    """``length`` characters of [A-Za-z0-9] from the OS CSPRNG (~190 bits at 32)."""
    return "".join(secrets.choice(_ALPHABET) for _ in range(length))


def new_key(prefix: str, length: int = 32) -> str:
    return prefix + random_token(length)


def digest(key: str) -> str:
    """What is kept at rest: a leaked store reveals no usable key."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()
