"""A fast stand-in upstream: answers every request at once with a small JSON body."""

from __future__ import annotations

import sys

from aiohttp import web

from bench.loop import new_loop

BODY = b'{"ok":true}'


async def answer(request: web.Request) -> web.Response:
    await request.read()
    return web.Response(body=BODY, content_type="application/json")


def main() -> None:
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", answer)
    web.run_app(
        app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None, loop=new_loop()
    )


if __name__ == "__main__":
    main()
