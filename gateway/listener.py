"""The proxy port's listener: aiohttp's low-level server calling one handler composed once.

The proxy app has a single catch-all route into the pipeline, so for every request aiohttp's
router parsed the target into a URL, matched the one route, built a match info and walked
the middleware chain (`make bench-clients` measured that at ~115 us per request beside the
low-level server). Here that work is done once, when the app is built: the match info is
made and frozen, the middlewares wrapped around the pipeline in the order the app lists
them, and the server calls ``ProxyListener.handle`` directly (GatewayRunner installs it).

What the app does for a request is kept: requests are still ``web.Request`` objects made by
the app (same body size limit), ``config_dict`` and ``app`` still reach the app's keys (the
body deadlines of gateway-answered routes), the app's ``on_response_prepare`` signal still
fires for every response (the CORS headers), an ``Expect`` header still goes to the route's
expect handler before any middleware, and the app's lifecycle (startup, cleanup context,
shutdown) is run by the runner as before.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence

from aiohttp import hdrs, web
from aiohttp.typedefs import Middleware

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ProxyListener:
    """The proxy port's request handler: ``route`` behind ``middlewares``, for ``app``."""

    def __init__(
        self, app: web.Application, route: web.AbstractRoute, middlewares: Sequence[Middleware]
    ) -> None:
        self._app = app
        # the match info every request gets: the same route and app each time, so one
        # frozen instance serves them all (no handler reads the catch-all's path parameter)
        match = web.UrlMappingMatchInfo({}, route)
        match.add_app(app)
        match.freeze()
        self._match = match
        self._expect = route.handle_expect_header
        handler: Handler = route.handler
        # aiohttp's own composition: the first middleware listed is the outermost
        for middleware in reversed(middlewares):
            handler = functools.partial(middleware, handler=handler)
        self._handler = handler

    async def handle(self, request: web.BaseRequest) -> web.StreamResponse:
        """aiohttp's low-level request handler; ``request`` comes from the app's factory."""
        assert isinstance(request, web.Request)
        target = request.raw_path
        if target[:1] != "/" or target[:2] == "//":
            # an asterisk-, authority- or absolute-form target, or one aiohttp's URL parsing
            # reads as a host: rare, and the router's answer for them is kept exactly
            return await self._app._handle(request)
        request._match_info = self._match
        if request.headers.get(hdrs.EXPECT):
            # as the app does: before the middlewares, and its answer (a 417) goes out as is
            response = await self._expect(request)
            await request.writer.drain()
            if response is not None:
                return response
        return await self._handler(request)


PROXY_LISTENER = web.AppKey("proxy_listener", ProxyListener)
