"""The structured access log: one JSON line per proxied request, with its request id.

A line holds what ops and `gateway policy replay` need (time, ids, tier, route, meters,
decision, status, upstream latency) and never a credential, a header or a query string.
"""

from __future__ import annotations

import json
import re
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TextIO

from aiohttp import web
from aiohttp.typedefs import Middleware

from gateway.metering.clock import Clock
from gateway.trace import TRACEPARENT, TRACESTATE, TraceContext, continue_or_start

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

REQUEST_ID_HEADER = "X-Request-Id"
# a caller's id is kept only if it is short and plain, so it cannot forge log lines or headers
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")


@dataclass
class Entry:
    """What the request path learns about one request, filled in as it goes."""

    request_id: str
    time: float  # the gateway clock when the request arrived
    method: str
    path: str
    account_id: str | None = None
    project_id: str | None = None
    tier: str | None = None
    route: str | None = None
    meters: Sequence[tuple[str, int]] = ()  # (meter, cost) consumed; rendered only when logged
    refunded: Sequence[tuple[str, int]] = ()  # the part of ``meters`` given back afterwards
    shadow: list[str] = field(default_factory=list)  # refusals a shadow mode let through
    upstream_seconds: float | None = None
    trace: TraceContext | None = None  # the W3C trace this request belongs to

    def line(self, decision: str, status: int, duration: float) -> str:
        doc = {
            "time": iso_time(self.time),
            "request_id": self.request_id,
            "trace_id": self.trace.trace_id if self.trace is not None else None,
            "method": self.method,
            "path": self.path,
            "account_id": self.account_id,
            "project_id": self.project_id,
            "tier": self.tier,
            "route": self.route,
            "meters": [{"meter": meter, "cost": cost} for meter, cost in self.meters],
            "refunded": [{"meter": meter, "cost": cost} for meter, cost in self.refunded],
            "decision": decision,
            "shadow": self.shadow or None,
            "status": status,
            "upstream_seconds": _rounded(self.upstream_seconds),
            "duration_seconds": _rounded(duration),
        }
        return json.dumps(doc, separators=(",", ":"))


ENTRY = web.RequestKey("gateway.access_entry", Entry)


def iso_time(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat(timespec="milliseconds")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 6)


class AccessLog:
    """Appends lines to a file (O_APPEND, so worker processes do not interleave) or stdout."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._stream: TextIO | None = None

    def open(self) -> None:
        if self.target == "-":
            self._stream = sys.stdout
        else:
            self._stream = open(self.target, "a", encoding="utf-8", buffering=1)  # noqa: SIM115

    def write(self, line: str) -> None:
        if self._stream is not None:
            self._stream.write(line + "\n")

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None


def request_id_from(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.fullmatch(given) else uuid.uuid4().hex


def access_log(*, log: AccessLog | None, clock: Clock, outcome: web.RequestKey[str]) -> Middleware:
    """The outermost middleware: a request id for every request, and its line once answered."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        started = time.perf_counter()
        entry = Entry(
            request_id=request_id_from(request),
            time=clock.now(),
            method=request.method,
            path=request.raw_path.partition("?")[0][:2000],
            trace=continue_or_start(
                request.headers.get(TRACEPARENT), request.headers.get(TRACESTATE)
            ),
        )
        request[ENTRY] = entry
        response = await handler(request)
        if not response.prepared:
            response.headers[REQUEST_ID_HEADER] = entry.request_id
        if log is not None:
            decision = request.get(outcome, "forwarded")
            log.write(entry.line(decision, response.status, time.perf_counter() - started))
        return response

    return middleware
