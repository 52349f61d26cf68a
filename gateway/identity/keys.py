"""API key material: generated from a CSPRNG, stored only as SHA-256 digests."""

from __future__ import annotations

import hashlib
import re
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


# Credentials inside text a client sent (a header line aiohttp's parser refused, say): the
# value of a header that carries one, a Bearer/Basic token, and anything after a key prefix
# (anon_ask_..., ask_...). What they match is replaced, so an error body or a log line can
# quote the client's bytes without handing a key to whoever reads them.
_SECRET = re.compile(
    r"(?i)(\b(?:proxy-)?authorization|\bx[-_]api[-_]key|\bcookie|\bstripe-signature)"
    r"(\s*:\s*)[^\r\n'\"]*"
    r"|\b(bearer|basic)(\s+)[^\s'\",]+"
    r"|\b([a-z][a-z0-9]*_(?:[a-z0-9]+_)*)[A-Za-z0-9]{12,}"
)
REDACTED = "[redacted]"


def redact(text: str) -> str:
    """``text`` with every credential-looking part replaced by ``[redacted]``."""

    def hide(match: re.Match[str]) -> str:
        if match.group(1) is not None:
            return f"{match.group(1)}{match.group(2)}{REDACTED}"
        if match.group(3) is not None:
            return f"{match.group(3)}{match.group(4)}{REDACTED}"
        return f"{match.group(5)}{REDACTED}"

    return _SECRET.sub(hide, text)
