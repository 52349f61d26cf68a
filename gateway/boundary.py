"""The one error boundary: typed errors become status + JSON body + a decision metric."""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import GatewayError, Overloaded
from gateway.identity.keys import redact
from gateway.metrics import Metrics
from gateway.pipeline import METER_LABEL, OUTCOME_LABEL, ROUTE_LABEL, TIER_LABEL
from gateway.proxy.expect import awaiting_body
from gateway.proxy.forward import HEADERS_SENT, ClientGone, StreamCut

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
_OVERLOADED = "the gateway is handling as many requests as it may; try again shortly"


def error_response(exc: GatewayError) -> web.Response:
    response = web.json_response(exc.body(), status=exc.status, headers=exc.headers, dumps=dumps)
    if exc.close_connection:
        response.force_close()
    return response


def dumps(body: Any) -> str:
    """Strict JSON: an error may echo what a client sent, and NaN or Infinity are not JSON."""
    try:
        return json.dumps(body, allow_nan=False)
    except ValueError:
        return json.dumps(_finite(body), allow_nan=False)


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


def error_boundary(*, metrics: Metrics | None, max_in_flight: int | None = None) -> Middleware:
    """Render errors; with ``metrics``, also count each request's decision and latency; with
    ``max_in_flight``, shed what comes past that many requests in hand (503 OVERLOADED)."""
    in_flight = 0

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        nonlocal in_flight
        started = time.perf_counter()
        if metrics is not None:
            metrics.in_flight.inc()
        outcome = "forwarded"
        in_flight += 1
        try:
            if max_in_flight is not None and in_flight > max_in_flight:
                if metrics is not None:
                    metrics.shed.inc()
                raise Overloaded(_OVERLOADED, headers={"Retry-After": "1"})
            response = await handler(request)
            outcome = request.get(OUTCOME_LABEL, outcome)
            return response
        except GatewayError as exc:
            outcome = exc.outcome
            response = error_response(exc)
            if exc.close_connection or awaiting_body(request):
                return await _answer_and_close(request, response)
            return response
        except StreamCut as exc:
            # The status line went out long ago: there is no error to render, only the
            # exchange to finish. aiohttp sees a prepared response and closes quietly.
            outcome = exc.outcome
            if isinstance(exc, ClientGone):
                log.debug("%s %r: %s", request.method, redact(request.raw_path), exc)
            else:
                # a query string may carry a key (?api_key=ask_...): never into the log
                log.warning("%s %r: %s", request.method, redact(request.raw_path), exc)
            return exc.response
        except web.HTTPException as exc:
            # aiohttp's own refusals (e.g. 413 from request.read()) in our JSON shape
            outcome = "bad_request" if exc.status < 500 else "error"
            allow = exc.headers.get("Allow")  # a 405 says what is allowed (RFC 9110)
            return web.json_response(
                {"code": exc.reason.upper().replace(" ", "_"), "message": exc.text or exc.reason},
                status=exc.status,
                headers=None if allow is None else {"Allow": allow},
            )
        except Exception:
            outcome = "error"
            log.exception("unhandled error on %s %s", request.method, request.rel_url.path)
            return web.json_response(
                {"code": "INTERNAL_ERROR", "message": "the gateway failed to handle this request"},
                status=500,
            )
        finally:
            in_flight -= 1
            # the access log, outside this boundary, reports the same outcome
            request[OUTCOME_LABEL] = outcome
            if metrics is not None:
                _record(metrics, request, outcome, started)

    return middleware


async def _answer_and_close(request: web.Request, response: web.Response) -> web.Response:
    """Send ``response`` and close the connection without reading the rest of the body.

    aiohttp would otherwise keep reading (and discarding) an unread body for up to ten
    seconds before closing: exactly what a stalled client, or one still waiting for
    ``100 Continue`` before it sends anything, must not be given."""
    response.force_close()
    await response.prepare(request)
    await response.write_eof()
    request.protocol.force_close()
    return response


def _record(metrics: Metrics, request: web.Request, outcome: str, started: float) -> None:
    metrics.in_flight.dec()
    route = request.get(ROUTE_LABEL, "-")
    tier = request.get(TIER_LABEL, "-")
    metrics.decision(tier, route, outcome).inc()
    if outcome in ("quota_exceeded", "rate_limited"):
        metrics.quota_refusals.labels(tier, route, request.get(METER_LABEL, "-")).inc()
    ended = request.get(HEADERS_SENT) or time.perf_counter()
    metrics.route_seconds(route).observe(ended - started)
