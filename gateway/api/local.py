"""Endpoints the gateway answers itself: what a local handler gets and what it may hand back.

A route with ``answer: <name>`` in the policy goes through the whole pipeline (identify,
gates, the one atomic consume) and then the handler registered under that name runs instead
of the forwarder. Settling is the same as for a proxied route: what was consumed for a live
count stays only when the handler answers 2xx.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from gateway.identity.resolve import Identity
from gateway.policy.model import Policy


@dataclass(slots=True)
class LocalContext:
    request: web.Request
    policy: Policy  # the snapshot this request was decided with
    identity: Identity | None  # None on routes without auth
    params: Mapping[str, str]
    #: live counts the handler freed beyond the route's own ``release`` (meter, cost); given
    #: back only when the handler answers 2xx, exactly like ``release``
    released: list[tuple[str, int]] = field(default_factory=list)

    def require_identity(self) -> Identity:
        if self.identity is None:
            raise RuntimeError("this handler needs a route with auth")
        return self.identity


LocalHandler = Callable[[LocalContext], Awaitable[web.StreamResponse]]


def check_handlers(policy: Policy, handlers: Mapping[str, LocalHandler]) -> None:
    """Refuse a policy naming a handler this gateway does not have, before it serves."""
    for route in policy.routes:
        if route.answer is not None and route.answer not in handlers:
            raise ValueError(
                f"{policy.file}: route {route.name} answers with {route.answer!r}, but the "
                f"gateway's handlers are: {', '.join(sorted(handlers)) or '(none)'}"
            )
