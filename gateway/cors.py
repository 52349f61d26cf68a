"""CORS for browser callers: the gateway answers allowed preflights itself (never metered,
never forwarded) and puts the allow and expose headers on every response, refusals included,
so browser code can read a 429's limits and Retry-After."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

from gateway.accesslog import REQUEST_ID_HEADER
from gateway.metering.guard import DEGRADED_HEADER
from gateway.settings import CorsSettings

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: every response header the gateway itself adds (tests/test_cors.py checks none is missing)
GATEWAY_RESPONSE_HEADERS = (
    "RateLimit-Limit",
    "RateLimit-Remaining",
    "RateLimit-Reset",
    "RateLimit-Policy",
    "RateLimit",
    hdrs.RETRY_AFTER,
    REQUEST_ID_HEADER,
    DEGRADED_HEADER,
)
_REQUEST_METHOD = "Access-Control-Request-Method"
_PREFLIGHT = web.RequestKey("gateway.cors_preflight", bool)


class Cors:
    def __init__(self, settings: CorsSettings) -> None:
        self._any = "*" in settings.allow_origins
        self._exact = frozenset(o.lower() for o in settings.allow_origins if "*" not in o)
        # "https://*.example.com" allows "https://api.example.com", never "https://example.com"
        self._suffixes = tuple(
            (scheme + "://", "." + rest.lower())
            for o in settings.allow_origins
            if o != "*"
            for scheme, _, host in [o.partition("://")]
            if host.startswith("*.")
            for rest in [host[2:]]
        )
        self._credentials = settings.allow_credentials
        self._preflight = {
            hdrs.ACCESS_CONTROL_ALLOW_METHODS: ", ".join(settings.allow_methods),
            hdrs.ACCESS_CONTROL_ALLOW_HEADERS: ", ".join(settings.allow_headers),
            hdrs.ACCESS_CONTROL_MAX_AGE: str(settings.max_age_seconds),
        }
        expose = dict.fromkeys((*GATEWAY_RESPONSE_HEADERS, *settings.expose_headers))
        self._expose = ", ".join(expose)

    def allowed(self, origin: str) -> bool:
        if self._any:
            return True
        lower = origin.lower()
        if lower in self._exact:
            return True
        return any(
            lower.startswith(scheme) and lower.endswith(suffix) and "/" not in lower[len(scheme) :]
            for scheme, suffix in self._suffixes
        )

    def middleware(self) -> Middleware:
        @web.middleware
        async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
            origin = request.headers.get(hdrs.ORIGIN)
            if (
                request.method == hdrs.METH_OPTIONS
                and origin is not None
                and _REQUEST_METHOD in request.headers
                and self.allowed(origin)
            ):
                # a browser asking permission: answered here, so it costs the caller nothing
                # and the upstream never sees it; the allow-origin headers come in on_prepare
                request[_PREFLIGHT] = True
                return web.Response(status=204, headers=self._preflight)
            # anything else, including a preflight from an origin not allowed, is an ordinary
            # request: the policy routes, identifies and meters it like any other
            return await handler(request)

        return cors

    async def on_prepare(self, request: web.Request, response: web.StreamResponse) -> None:
        """Set on every response just before its headers go out (relayed ones too)."""
        headers = response.headers
        # the gateway owns CORS when it is configured: an upstream's own answer could allow
        # an origin the operator did not
        if not request.get(_PREFLIGHT, False):
            for name in {n for n in headers if n.lower().startswith("access-control-")}:
                headers.popall(name, None)
        if not self._any:
            vary = headers.get(hdrs.VARY)
            if vary is None:
                headers[hdrs.VARY] = hdrs.ORIGIN
            elif "origin" not in vary.lower():
                headers[hdrs.VARY] = f"{vary}, {hdrs.ORIGIN}"
        origin = request.headers.get(hdrs.ORIGIN)
        if origin is None or not self.allowed(origin):
            return
        headers[hdrs.ACCESS_CONTROL_ALLOW_ORIGIN] = (
            "*" if self._any and not self._credentials else origin
        )
        if self._credentials:
            headers[hdrs.ACCESS_CONTROL_ALLOW_CREDENTIALS] = "true"
        headers[hdrs.ACCESS_CONTROL_EXPOSE_HEADERS] = self._expose
