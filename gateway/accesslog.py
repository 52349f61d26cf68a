"""The structured access log: one JSON line per proxied request, with its request id.

A line holds what ops and `gateway policy replay` need (time, ids, tier, route, meters,
decision, status, upstream latency) and never a credential, a header or a query string.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

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
    """Appends lines to a file (O_APPEND, so worker processes do not interleave) or stdout.

    Lines are written in batches off the request path: the lines of one loop turn go out in
    one write at the turn's end (so under load one system call serves many requests), and
    the buffer is bounded (``max_buffered`` lines: past it, it is written at once). ``close``
    writes what is left, so a shutdown loses nothing.
    """

    def __init__(self, target: str, *, max_buffered: int = 4096) -> None:
        self.target = target
        self._max = max_buffered
        self._lines: list[str] = []
        self._scheduled = False
        self._fd: int | None = None  # the file, or None for stdout or when closed
        self._open = False

    def open(self) -> None:
        if self.target != "-":
            self._fd = os.open(self.target, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._open = True

    def write(self, line: str) -> None:
        if not self._open:
            return
        self._lines.append(line)
        if len(self._lines) >= self._max:
            self.flush()
        elif not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self.flush)

    def flush(self) -> None:
        self._scheduled = False
        if not self._lines:
            return
        text = "\n".join(self._lines) + "\n"
        self._lines.clear()
        if self._fd is None:
            sys.stdout.write(text)
            sys.stdout.flush()
            return
        # one write per batch: appends by other workers land between batches, never inside
        data = memoryview(text.encode("utf-8"))
        while data:
            data = data[os.write(self._fd, data) :]

    def close(self) -> None:
        self.flush()
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._open = False


def request_id_from(request: web.Request) -> str:
    given = request.headers.get(REQUEST_ID_HEADER, "")
    return given if _REQUEST_ID.fullmatch(given) else new_request_id()


# RFC 9562's version 4 and variant bits, set as uuid.UUID(version=4) sets them
_V4_CLEAR = ~((0xC000 << 48) | (0xF000 << 64))
_V4_SET = (0x8000 << 48) | (4 << 76)


def new_request_id() -> str:
    """``uuid.uuid4().hex``, without building the UUID object it would discard (a few
    microseconds on every request that brings no id of its own)."""
    return f"{int.from_bytes(os.urandom(16)) & _V4_CLEAR | _V4_SET:032x}"


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
