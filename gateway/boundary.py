"""The one error boundary: typed errors become status + JSON body + a decision metric."""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.errors import GatewayError
from gateway.metrics import Metrics
from gateway.pipeline import OUTCOME_LABEL, ROUTE_LABEL, TIER_LABEL
from gateway.proxy.forward import HEADERS_SENT, ClientGone, StreamCut

log = logging.getLogger("gateway")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def error_response(exc: GatewayError) -> web.Response:
    return web.json_response(exc.body(), status=exc.status, headers=exc.headers)


def error_boundary(*, metrics: Metrics | None) -> Middleware:
    """Render errors; with ``metrics``, also count each request's decision and latency."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        if metrics is not None:
            metrics.in_flight.inc()
        outcome = "forwarded"
        try:
            response = await handler(request)
            outcome = request.get(OUTCOME_LABEL, outcome)
            return response
        except GatewayError as exc:
            outcome = exc.outcome
            return error_response(exc)
        except StreamCut as exc:
            # The status line went out long ago: there is no error to render, only the
            # exchange to finish. aiohttp sees a prepared response and closes quietly.
            outcome = exc.outcome
            if isinstance(exc, ClientGone):
                log.debug("%s %r: %s", request.method, request.raw_path, exc)
            else:
                log.warning("%s %r: %s", request.method, request.raw_path, exc)
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
            # the access log, outside this boundary, reports the same outcome
            request[OUTCOME_LABEL] = outcome
            if metrics is not None:
                _record(metrics, request, outcome, started)

    return middleware


def _record(metrics: Metrics, request: web.Request, outcome: str, started: float) -> None:
    metrics.in_flight.dec()
    route = request.get(ROUTE_LABEL, "-")
    metrics.decisions.labels(request.get(TIER_LABEL, "-"), route, outcome).inc()
    ended = request.get(HEADERS_SENT) or time.perf_counter()
    metrics.request_seconds.labels(route).observe(ended - started)
