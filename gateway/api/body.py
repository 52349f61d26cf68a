"""Reading JSON request bodies for the endpoints the gateway answers itself."""

from __future__ import annotations

import json
from typing import Any

from aiohttp import web

from gateway.errors import BadRequest, PayloadTooLarge, ValidationError

MAX_JSON_BYTES = 64 * 1024


async def read_bounded(request: web.Request, max_bytes: int, what: str) -> bytes:
    """The whole body, refused with 413 as soon as it is known to pass ``max_bytes``."""
    if request.content_length is not None and request.content_length > max_bytes:
        raise PayloadTooLarge(f"{what} is at most {max_bytes} bytes")
    raw = bytearray()
    async for chunk in request.content.iter_any():
        raw.extend(chunk)
        if len(raw) > max_bytes:
            raise PayloadTooLarge(f"{what} is at most {max_bytes} bytes")
    return bytes(raw)


async def read_json(request: web.Request, *, max_bytes: int = MAX_JSON_BYTES) -> dict[str, Any]:
    """The body as a JSON object, or a clear 400/413 that says what is wrong."""
    raw = await read_bounded(request, max_bytes, "a JSON body")
    if not raw:
        raise BadRequest("expected a JSON object in the request body")
    try:
        value = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"malformed JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise BadRequest("expected a JSON object in the request body")
    return value


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
