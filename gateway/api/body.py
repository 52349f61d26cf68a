"""Reading the bodies the gateway answers itself: bounded in size, in time and in JSON shape.

Every gateway-answered endpoint (login, provisioning, conversion, billing, keys, the admin
API, the Stripe webhook) reads its body here, so one set of rules holds for all of them:

- size: refused with 413 as soon as the body is known to pass the endpoint's limit;
- time: the whole body within ``total`` seconds and no silence longer than ``idle`` between
  two chunks, else 408 and the connection is closed (a stalled client must not hold a
  socket, a handler and a file descriptor for ever);
- shape: JSON nested at most ``MAX_DEPTH`` deep, integers of at most ``MAX_INT_DIGITS``
  digits, finite floats, no ``NaN``/``Infinity``: anything else is a 400, never a
  RecursionError, an int-conversion error or a non-JSON error body.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from gateway.errors import BadRequest, PayloadTooLarge, RequestTimeout, ValidationError
from gateway.proxy.expect import send_continue

MAX_JSON_BYTES = 64 * 1024
#: deeper than any body an endpoint takes (Stripe events nest about 5 levels)
MAX_DEPTH = 32
#: far more than any field needs (a 64-bit integer has 20), far less than Python's own
#: int-parsing limit (4,300 digits), whose error would otherwise be a 500; a client's extra
#: fields may hold big numbers the gateway ignores, so the bound is not 20
MAX_INT_DIGITS = 100
MAX_FLOAT_CHARS = 40


@dataclass(frozen=True, slots=True)
class BodyDeadlines:
    """How long a client may take to send a body the gateway reads itself."""

    total: float = 30.0
    idle: float = 10.0


#: set on the proxy and admin apps by app.py; the key lives beside its only reader because
#: app.py imports this package (a key defined there would make the import circular)
BODY_DEADLINES = web.AppKey("body_deadlines", BodyDeadlines)


async def read_bounded(request: web.Request, max_bytes: int, what: str) -> bytes:
    """The whole body, or 413 past ``max_bytes``, 408 past a deadline, 400 if it broke off."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"{what} is at most {max_bytes} bytes")
    deadlines = request.config_dict.get(BODY_DEADLINES) or BodyDeadlines()
    await send_continue(request)
    loop = asyncio.get_running_loop()
    ends = loop.time() + deadlines.total
    raw = bytearray()
    while True:
        left = ends - loop.time()
        wait = min(deadlines.idle, left)
        try:
            if wait <= 0:
                raise TimeoutError
            async with asyncio.timeout(wait):
                chunk = await request.content.readany()
        except TimeoutError as exc:
            if wait < deadlines.idle:
                raise RequestTimeout(
                    f"{what} was not complete within {deadlines.total:g} seconds"
                ) from exc
            raise RequestTimeout(f"{what} stalled for {deadlines.idle:g} seconds") from exc
        except (HttpProcessingError, ConnectionError) as exc:
            # a disconnect or a malformed chunked body: what arrived is not the body
            broken = BadRequest(f"{what} broke off before it was complete")
            broken.close_connection = True
            raise broken from exc
        if not chunk:
            return bytes(raw)
        raw.extend(chunk)
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"{what} is at most {max_bytes} bytes")


async def read_json(request: web.Request, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or a clear 400/408/413 that says what is wrong."""
    raw = await read_bounded(request, max_bytes, "a JSON body")
    if not raw:
        raise BadRequest("expected a JSON object in the request body")
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise BadRequest("expected a JSON object in the request body")
    return value


def parse_json(raw: bytes, what: str = "the body") -> Any:
    """``raw`` as JSON within the bounds above; BadRequest (400) for anything else."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise BadRequest(f"{what} is not UTF-8 (byte {exc.start + 1})") from exc
    depth = _depth(text)
    if depth > MAX_DEPTH:
        raise BadRequest(f"{what} nests JSON {depth} levels deep; at most {MAX_DEPTH} are allowed")
    try:
        return json.loads(
            text,
            parse_int=_int,
            parse_float=_float,
            parse_constant=_constant,
        )
    except json.JSONDecodeError as exc:
        raise BadRequest(f"{what} is malformed JSON: {exc}") from exc
    except (ValueError, RecursionError) as exc:  # defence in depth: the bounds hold first
        raise BadRequest(f"{what} is not acceptable JSON") from exc


# strings can hold brackets; they are skipped, then only brackets are counted
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"', re.DOTALL)
_BRACKETS = re.compile(r"[\[\]{}]")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _depth(text: str) -> int:
    """How deep the text's arrays and objects nest, found without recursing."""
    if "[" not in text and "{" not in text:
        return 0
    outside = _STRING.sub("", text)
    steps = (_STEP[m] for m in _BRACKETS.findall(outside))
    return max(itertools.accumulate(steps, initial=0))


def _int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise BadRequest(f"a JSON number has more than {MAX_INT_DIGITS} digits")
    return int(text)


def _float(text: str) -> float:
    value = float(text) if len(text) <= MAX_FLOAT_CHARS else math.inf
    if not math.isfinite(value):
        raise BadRequest(f"a JSON number is too long or too large ({text[:24]}...)")
    return value


def _constant(text: str) -> Any:
    # json.loads accepts NaN and Infinity, which JSON does not; echoed back they would make
    # an error body that is not JSON either
    raise BadRequest(f"{text} is not a JSON value")


def field(
    body: dict[str, Any], name: str, kind: type, *, required: bool = True, max_len: int = 200
) -> Any:
    """One typed field, with a VALIDATION_ERROR naming it and what was received."""
    value = body.get(name)
    if value is None:
        if required:
            raise ValidationError(f"{name} is required.", details={"field": name})
        return None
    if (kind is int and isinstance(value, bool)) or not isinstance(value, kind):
        raise ValidationError(
            f"{name} must be a {kind.__name__}.", details={"field": name, "received": value}
        )
    if isinstance(value, str) and not 0 < len(value) <= max_len:
        raise ValidationError(f"{name} must be 1 to {max_len} characters.", details={"field": name})
    return value
