"""Header hygiene both ways: hop-by-hop dropped, identity headers stripped first, injected last."""

from __future__ import annotations

from collections.abc import Mapping

from aiohttp import hdrs
from multidict import CIMultiDict, CIMultiDictProxy

# RFC 9110 section 7.6.1 plus the legacy names proxies still see. One name per line so a
# missing comma cannot silently join two names (tests/test_proxy_headers.py checks the set).
HOP_BY_HOP = frozenset(
    name.lower()
    for name in (
        hdrs.CONNECTION,
        hdrs.KEEP_ALIVE,
        hdrs.PROXY_AUTHENTICATE,
        hdrs.PROXY_AUTHORIZATION,
        hdrs.TE,
        hdrs.TRAILER,
        hdrs.TRANSFER_ENCODING,
        hdrs.UPGRADE,
        "Proxy-Connection",
    )
)

#: every identity header the gateway sends upstream starts with this; clients may send none
IDENTITY_PREFIX = "x-gateway-"
ACCOUNT = "X-Gateway-Account"
TIER = "X-Gateway-Tier"
PROJECT = "X-Gateway-Project"
KEY_ID = "X-Gateway-Key-Id"
ORGANIZATION = "X-Gateway-Organization"
ROUTE = "X-Gateway-Route"
#: the caller's tier's features the policy marks ``enforced: upstream``, comma-separated
FEATURES = "X-Gateway-Features"

# headers the gateway itself sets on the way up, so client copies would be spoofs
_FORWARDING = frozenset(
    {"x-forwarded-for", "x-forwarded-proto", "x-forwarded-host", "forwarded", "x-real-ip"}
)
# request headers the gateway consumes (the credential; an Expect the gateway's server has
# already answered, which an upstream that ignores it would otherwise stall on) or
# recomputes (host, length, the trace context: gateway/trace.py)
_CONSUMED = frozenset(
    {"host", "x-api-key", "content-length", "expect", "traceparent", "tracestate"}
)
# one set lookup per header on the hot path instead of three
_NEVER_UP = HOP_BY_HOP | _FORWARDING | _CONSUMED


def header_family(name: str) -> str:
    """A header name as CGI/WSGI, PHP and Rack upstreams see it: case-folded, ``_`` and ``-``
    alike (both become ``HTTP_X_GATEWAY_ACCOUNT``), so ``X_Gateway_Account`` is ours too."""
    return name.lower().replace("_", "-")


def _connection_named(headers: CIMultiDictProxy[str] | CIMultiDict[str]) -> set[str]:
    named: set[str] = set()
    for value in headers.getall(hdrs.CONNECTION, ()):
        named.update(header_family(token.strip()) for token in value.split(",") if token.strip())
    return named


def upstream_request_headers(
    incoming: CIMultiDictProxy[str],
    *,
    drop_authorization: bool,
    inject: Mapping[str, str],
    strip: frozenset[str] = frozenset(),
) -> CIMultiDict[str]:
    """The headers to send upstream: strip first (hop-by-hop, Connection-named, identity,
    forwarding, the credential, ``strip``: method overrides), inject last, so nothing a client
    sent can survive as ours. Names are compared by ``header_family``, ``_`` as ``-``."""
    named = _connection_named(incoming) if hdrs.CONNECTION in incoming else ()
    out: CIMultiDict[str] = CIMultiDict()
    spelling: dict[str, str] = {}
    for name, value in incoming.items():
        lower = name.lower()
        family = lower.replace("_", "-") if "_" in lower else lower
        if (
            family in _NEVER_UP
            or family in named
            or family in strip
            or family.startswith(IDENTITY_PREFIX)
            or (drop_authorization and family == "authorization")
        ):
            continue
        # a repeated name is sent with its first spelling: aiohttp's client keeps only the
        # last of two copies spelled differently (``X-A`` then ``x-a``)
        out.add(spelling.setdefault(lower, name), value)
    for name, value in inject.items():
        out[name] = value
    return out


def downstream_response_headers(incoming: CIMultiDictProxy[str]) -> CIMultiDict[str]:
    """The upstream's response headers minus hop-by-hop, Connection-named and internal ones
    (an upstream's X-Gateway-* headers are for the gateway, never for the client)."""
    named = _connection_named(incoming)
    out: CIMultiDict[str] = CIMultiDict()
    for name, value in incoming.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower in named or lower.startswith(IDENTITY_PREFIX):
            continue
        out.add(name, value)
    return out
