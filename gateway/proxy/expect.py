"""`Expect: 100-continue`, answered only once the gateway has decided to read the body.

aiohttp's default sends ``100 Continue`` as soon as the request head is parsed, before any
check ran, so a client told "go ahead" uploads a body the gateway then refuses (401, 403,
413, 429). Here the interim response waits until a reader actually wants the body: a
request refused before that gets its final status instead, and its connection is closed
(RFC 9110 15.2.1) because the body it announced was never sent.
"""

from __future__ import annotations

from aiohttp import hdrs, web
from aiohttp.http import HttpVersion11

_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"
#: per request: True once the interim response went out, False while it is owed
_OWED = web.RequestKey("gateway.continue_owed", bool)


async def defer_continue(request: web.Request) -> web.StreamResponse | None:
    """aiohttp's ``expect_handler``: note that a ``100 Continue`` is owed; send nothing yet."""
    expect = request.headers.get(hdrs.EXPECT, "")
    if request.version != HttpVersion11:
        return None  # HTTP/1.0 has no interim responses; the header is ignored
    if expect.lower() != "100-continue":
        return web.json_response(
            {"code": "EXPECTATION_FAILED", "message": "only 100-continue is served"},
            status=417,
        )
    request[_OWED] = True
    return None


async def send_continue(request: web.Request) -> None:
    """Tell a waiting client to send its body; call just before reading it. Idempotent."""
    if request.get(_OWED):
        request[_OWED] = False
        await request.writer.write(_CONTINUE)
        # the final response's head has not started: aiohttp counts it from zero
        request.writer.output_size = 0


def awaiting_body(request: web.BaseRequest) -> bool:
    """True when the client still waits for ``100 Continue``: its body was never sent."""
    return bool(request.get(_OWED))
