"""The proxy's upstream client: pooled keep-alive HTTP/1.1 connections (gateway/proxy/h1.py).

Chosen over aiohttp's ClientSession by measurement (docs/hot-path-candidates.md): about 4.5x
the requests per second on small answers. It does only what a reverse proxy needs: the
request is written once and never re-sent, paths and queries go out as given, nothing is
decompressed or followed, and a connection returns to the pool only after its response was
read to the end.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass

from multidict import CIMultiDict, CIMultiDictProxy

from gateway.proxy.h1 import (
    ConnectFailed,
    Connection,
    ConnectTimeout,
    Disconnected,
)
from gateway.proxy.pool import Target

#: methods aiohttp's client sends without ``Content-Length: 0`` when they carry no body;
#: every other bodiless request gets one, as it did through aiohttp
_BODILESS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})


@dataclass(frozen=True, slots=True)
class Origin:
    """Where a target's connections go, and what every request to it starts with."""

    host: str
    port: int
    tls: bool
    authority: str  # the Host header: host, and the port when it is not the scheme's default
    base: str  # the target's base path, prepended to every forwarded path


def origin_of(target: Target) -> Origin:
    url = target.url
    host = url.host or ""
    port = url.port or (443 if url.scheme == "https" else 80)
    authority = url.host_port_subcomponent or host
    return Origin(host, port, url.scheme == "https", authority, url.raw_path.rstrip("/"))


class Response:
    """An upstream's answer, its head parsed and its body still on the wire.

    The surface the relay and the pipeline use: ``status``, ``reason``, ``headers``,
    ``content.readany()``, ``release()`` and ``close()``."""

    __slots__ = (
        "_client",
        "_conn",
        "_origin",
        "_released",
        "_sender",
        "headers",
        "reason",
        "status",
    )

    def __init__(
        self,
        client: UpstreamClient,
        origin: Origin,
        conn: Connection,
        sender: asyncio.Task[None] | None,
    ) -> None:
        self._client = client
        self._origin = origin
        self._conn = conn
        self._sender = sender
        self._released = False
        self.status = conn.status
        self.reason = conn.reason
        self.headers: CIMultiDictProxy[str] = conn.headers

    @property
    def host(self) -> str:
        """The target that answered (its host, as configured)."""
        return self._origin.host

    @property
    def port(self) -> int:
        return self._origin.port

    @property
    def content(self) -> Response:
        return self

    async def readany(self) -> bytes:
        return await self._conn.readany()

    @property
    def body_ready(self) -> bool:
        """The body's first bytes, or its end, arrived with the head: reading will not wait."""
        return self._conn.ready

    def release(self) -> None:
        """Hand the connection back if the exchange finished cleanly, close it otherwise."""
        if self._released:
            return
        self._released = True
        sender = self._sender
        sent = sender is None or (sender.done() and _succeeded(sender))
        if sender is not None and not sender.done():
            sender.cancel()  # the upstream answered before taking the whole body
        self._client.release(self._origin, self._conn, reuse=sent and self._conn.complete)

    def close(self) -> None:
        self._conn.close()
        self.release()


def _succeeded(task: asyncio.Task[None]) -> bool:
    return not task.cancelled() and task.exception() is None


class UpstreamClient:
    """Connections per origin, at most ``limit`` in use at once; idle ones closed after
    ``idle_seconds`` (0: none kept, and every request says ``Connection: close``)."""

    def __init__(
        self,
        *,
        limit: int,
        idle_seconds: float,
        connect_timeout: float,
        read_timeout: float,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._limit = limit
        self._idle_seconds = idle_seconds
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._in_use = 0
        self._waiters: deque[asyncio.Future[None]] = deque()
        self._idle: dict[Origin, deque[Connection]] = {}
        self._origins: dict[Target, Origin] = {}
        self._sweeper: asyncio.TimerHandle | None = None
        self._tls: ssl.SSLContext | None = None
        self._closing = b"Connection: close\r\n" if idle_seconds <= 0 else b""

    async def request(
        self,
        method: str,
        target: Target,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None,
    ) -> Response:
        """Send one request, at most once, and return once the response's head arrived.

        ``path_qs`` is written as given. A body with no ``Content-Length`` in ``headers`` goes
        chunked. ``ConnectFailed`` and ``ConnectTimeout`` mean not a byte was written; any
        other ``UpstreamError``, or whatever ``body`` raised, that it may have been."""
        origin = self._origins.get(target)
        if origin is None:
            origin = self._origins[target] = origin_of(target)
        head = self._head(method, origin, path_qs, headers, body)
        conn = await self._acquire(origin)
        try:
            conn.begin(head_only=method == "HEAD", read_timeout=self._read_timeout)
            conn.write(head)
            if body is None:
                await conn.wait_head()
                return Response(self, origin, conn, None)
            sender = await self._with_body(conn, body, chunked="content-length" not in headers)
            return Response(self, origin, conn, sender)
        except BaseException:
            self.release(origin, conn, reuse=False)
            raise

    async def _with_body(
        self, conn: Connection, body: AsyncIterator[bytes], *, chunked: bool
    ) -> asyncio.Task[None]:
        # the body goes out while the head is awaited: an upstream may answer before it has
        # read everything (a refusal), and its answer is then what the client gets
        sender = self._loop.create_task(_send(conn, body, chunked=chunked))
        sender.add_done_callback(lambda task: None if _succeeded(task) else conn.close())
        head = conn.head_arrived
        try:
            if not head.done():
                await asyncio.wait((sender, head), return_when=asyncio.FIRST_COMPLETED)
            if sender.done():
                sender.result()  # the body's own error (the client's doing), or a write error
            await conn.wait_head()
        except BaseException:
            sender.cancel()
            raise
        return sender

    def _head(
        self,
        method: str,
        origin: Origin,
        path_qs: str,
        headers: CIMultiDict[str],
        body: AsyncIterator[bytes] | None,
    ) -> bytes:
        lines = [f"{method} {origin.base}{path_qs} HTTP/1.1\r\nHost: {origin.authority}\r\n"]
        lines += [f"{name}: {value}\r\n" for name, value in headers.items()]
        if body is not None:
            if "content-length" not in headers:
                lines.append("Transfer-Encoding: chunked\r\n")
        elif method not in _BODILESS and "content-length" not in headers:
            lines.append("Content-Length: 0\r\n")
        lines.append("\r\n")
        text = "".join(lines)
        # a CR or LF inside a name or value would start a header (or a request) of its own
        lines_expected = len(lines) + 1
        if text.count("\n") != lines_expected or text.count("\r") != lines_expected:
            raise ValueError("a header name or value contains CR or LF")
        data = text.encode("utf-8")
        return data[:-2] + self._closing + b"\r\n" if self._closing else data

    async def _acquire(self, origin: Origin) -> Connection:
        deadline = self._loop.time() + self._connect_timeout
        while self._in_use >= self._limit:
            waiter = self._loop.create_future()
            self._waiters.append(waiter)
            try:
                async with asyncio.timeout_at(deadline):
                    await waiter
            except BaseException as exc:
                if not waiter.done():
                    self._waiters.remove(waiter)
                elif not waiter.cancelled():
                    self._wake()  # woken for a slot it will not take: pass it on
                if isinstance(exc, TimeoutError):
                    raise ConnectTimeout("no upstream connection was free in time") from exc
                raise
        self._in_use += 1
        try:
            idle = self._idle.get(origin)
            now = self._loop.time()
            while idle:
                conn = idle.pop()
                if conn.reusable and now - conn.idle_since < self._idle_seconds:
                    return conn
                conn.close()
            return await self._connect(origin, deadline)
        except BaseException:
            self._in_use -= 1
            self._wake()
            raise

    async def _connect(self, origin: Origin, deadline: float) -> Connection:
        tls = self._context() if origin.tls else None
        try:
            async with asyncio.timeout_at(deadline):
                _, conn = await self._loop.create_connection(
                    Connection,
                    origin.host,
                    origin.port,
                    ssl=tls,
                    server_hostname=origin.host if tls is not None else None,
                )
        except TimeoutError as exc:
            raise ConnectTimeout("the upstream did not accept a connection in time") from exc
        except (OSError, ssl.SSLError, ssl.CertificateError) as exc:
            raise ConnectFailed(f"cannot connect to the upstream: {exc}") from exc
        return conn

    def _context(self) -> ssl.SSLContext:
        # verified against the system's trust store, with SNI, as aiohttp's default did;
        # made on first use so SSL_CERT_FILE set before the first https request counts
        if self._tls is None:
            self._tls = ssl.create_default_context()
        return self._tls

    def release(self, origin: Origin, conn: Connection, *, reuse: bool) -> None:
        self._in_use -= 1
        self._wake()
        transport = conn.transport
        if (
            reuse
            and conn.reusable
            and self._idle_seconds > 0
            and transport is not None
            and not transport.is_closing()
        ):
            conn.idle(self._loop.time())
            self._idle.setdefault(origin, deque()).append(conn)
            if self._sweeper is None:
                self._sweeper = self._loop.call_later(self._idle_seconds, self._sweep)
        else:
            conn.close()

    def _wake(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    def _sweep(self) -> None:
        """Close connections idle for the limit: before an upstream's own keep-alive timeout
        can close one under a request being written."""
        self._sweeper = None
        now = self._loop.time()
        oldest = None
        for idle in self._idle.values():
            while idle and (not idle[0].reusable or now - idle[0].idle_since >= self._idle_seconds):
                idle.popleft().close()
            if idle:
                first = idle[0].idle_since
                oldest = first if oldest is None else min(oldest, first)
        if oldest is not None:
            self._sweeper = self._loop.call_at(oldest + self._idle_seconds, self._sweep)

    def close(self) -> None:
        """Close every idle connection; those in use close when their exchange ends."""
        if self._sweeper is not None:
            self._sweeper.cancel()
            self._sweeper = None
        for idle in self._idle.values():
            while idle:
                idle.pop().close()


async def _send(conn: Connection, body: AsyncIterator[bytes], *, chunked: bool) -> None:
    """Write the body as the client sends it, never faster than the upstream takes it."""
    async for chunk in body:
        if not chunk:
            continue  # an empty chunk would end a chunked body early
        conn.write(b"%x\r\n%b\r\n" % (len(chunk), chunk) if chunked else chunk)
        await conn.drain()
    if chunked:
        conn.write(b"0\r\n\r\n")
    if conn.transport is None or conn.transport.is_closing():
        raise Disconnected("the upstream closed the connection while the body was sent")
