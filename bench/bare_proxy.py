"""The baseline: an aiohttp pass-through proxy with one session and no metering at all."""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator

import aiohttp
from aiohttp import web

from bench.loop import new_loop

HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "host", "content-length"}


def build(upstream: str) -> web.Application:
    app = web.Application()
    session_key = web.AppKey("session", aiohttp.ClientSession)

    async def forward(request: web.Request) -> web.StreamResponse:
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        body = request.content if request.can_read_body else None
        async with app[session_key].request(
            request.method, upstream + request.raw_path, headers=headers, data=body
        ) as answer:
            response = web.StreamResponse(status=answer.status)
            for name, value in answer.headers.items():
                if name.lower() not in HOP_BY_HOP:
                    response.headers[name] = value
            await response.prepare(request)
            async for chunk in answer.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=0)
        app[session_key] = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        yield
        await app[session_key].close()

    app.cleanup_ctx.append(session_ctx)
    app.router.add_route("*", "/{tail:.*}", forward)
    return app


def main() -> None:
    port, upstream = int(sys.argv[1]), sys.argv[2]
    web.run_app(
        build(upstream), host="127.0.0.1", port=port, print=None, access_log=None, loop=new_loop()
    )


if __name__ == "__main__":
    main()
