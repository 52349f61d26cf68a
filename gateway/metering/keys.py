"""Store key names, built in exactly one place.

Every key of an account carries the hash tag ``{a:<account>}`` so that a decision touching
several of its meters stays in one Redis Cluster slot.
"""

from __future__ import annotations


def account_tag(account_id: str) -> str:
    return "{a:" + account_id + "}"


def meter_key(account_id: str, meter: str, scope_id: str, period_id: str | None) -> str:
    """``gw:{a:42}:m:api_calls:42:2026-11`` for a counter, no period part for a gauge.

    The Lua scripts receive the key without its period and append ``":" .. period_id``
    themselves (they compute the window from Redis server time), exactly as here.
    """
    key = f"gw:{account_tag(account_id)}:m:{meter}:{scope_id}"
    return f"{key}:{period_id}" if period_id is not None else key


def rate_key(account_id: str, meter: str, scope_id: str) -> str:
    """``gw:{a:42}:r:request_rate:key_7``: a rate meter's GCRA state (one timestamp).

    Whatever the meter's scope (an API key, a project, the account, a client address), the
    key carries the account's hash tag, so it shares the decision's Cluster slot."""
    return f"gw:{account_tag(account_id)}:r:{meter}:{scope_id}"


def decision_key(account_id: str, decision_id: str) -> str:
    """``gw:{a:42}:d:<id>``: a guarded decision's marker (decided-at time, or ``void``).

    consume.lua builds it from its first key the same way: the part up to the hash tag's
    ``}``, then ``":d:" .. id``; so it shares the account's Cluster slot.
    """
    return f"gw:{account_tag(account_id)}:d:{decision_id}"


#: the pub/sub channel on which registry writes tell every process to drop cached identities
INVALIDATION_CHANNEL = "gw:invalidate"


def record_key(kind: str, record_id: str) -> str:
    return f"gw:r:{kind}:{record_id}"


def set_key(kind: str, owner_id: str) -> str:
    return f"gw:s:{kind}:{owner_id}"


def sequence_key(kind: str) -> str:
    return f"gw:seq:{kind}"


def source_key(key: str, source: str) -> str:
    """The per-source counter of a window key: ``<key>:package`` or ``<key>:overage``.

    The Lua scripts build it the same way (``key .. ":" .. source``).
    """
    return f"{key}:{source}"


def history_key(account_id: str, meter: str, scope_id: str, day_id: str) -> str:
    """``gw:{a:42}:m:api_calls:42:h:2026-11-25``: one UTC day of a meter's usage history."""
    return f"{meter_key(account_id, meter, scope_id, None)}:h:{day_id}"
