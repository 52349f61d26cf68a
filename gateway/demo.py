"""A small upstream for trying the gateway: echoes what it received as JSON."""

from __future__ import annotations

from aiohttp import web

from gateway.proxy.headers import IDENTITY_PREFIX


async def _echo(request: web.Request) -> web.Response:
    size = 0
    async for chunk in request.content.iter_any():
        size += len(chunk)
    seen = {k: v for k, v in request.headers.items() if k.lower().startswith(IDENTITY_PREFIX)}
    return web.json_response(
        {
            "upstream": "demo",
            "method": request.method,
            "path": request.path,
            "query": request.query_string,
            "body_bytes": size,
            "identity": seen,
        }
    )


def demo_app() -> web.Application:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", _echo)
    return app
