"""The client's address: the peer, or what trusted proxies in front of us say it was."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from aiohttp import web

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def _trusted(address: str, trusted: Sequence[IpNetwork]) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in network for network in trusted)


def client_address(request: web.Request, trusted: Sequence[IpNetwork]) -> str:
    """The nearest address no trusted proxy vouches for.

    ``X-Forwarded-For`` is read only when the peer is a trusted proxy, and from the right:
    every hop to the left of the first untrusted one could have been written by the client,
    so a forged header can never pick the address we meter.
    """
    peer = request.remote or "unknown"
    if not trusted or not _trusted(peer, trusted):
        return peer
    chain = [
        hop.strip()
        for value in request.headers.getall("X-Forwarded-For", ())
        for hop in value.split(",")
        if hop.strip()
    ]
    for hop in reversed(chain):
        if not _trusted(hop, trusted):
            try:
                return str(ipaddress.ip_address(hop))
            except ValueError:
                return peer  # garbage in the chain: meter the proxy that sent it
    return chain[0] if chain else peer
