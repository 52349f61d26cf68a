"""Store key names, built in exactly one place.

Every key of an account carries the hash tag ``{a:<account>}`` so that a decision touching
several of its meters stays in one Redis Cluster slot.
"""

from __future__ import annotations


def account_tag(account_id: str) -> str:
    return "{a:" + account_id + "}"


def meter_key(account_id: str, meter: str, scope_id: str, period_id: str | None) -> str:
    """``gw:{a:42}:m:api_calls:42:2026-11`` for a counter, no period part for a gauge."""
    key = f"gw:{account_tag(account_id)}:m:{meter}:{scope_id}"
    return f"{key}:{period_id}" if period_id is not None else key


def record_key(kind: str, record_id: str) -> str:
    return f"gw:r:{kind}:{record_id}"


def set_key(kind: str, owner_id: str) -> str:
    return f"gw:s:{kind}:{owner_id}"


def sequence_key(kind: str) -> str:
    return f"gw:seq:{kind}"
