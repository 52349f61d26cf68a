"""One upstream HTTP/1.1 connection on an asyncio protocol, parsed by llhttp (httptools).

A connection carries one exchange at a time and is handed back to its pool only when the
response was read to its end, the request body was sent whole, and neither side asked to
close. Everything the wire can do wrong is raised as one of the ``UpstreamError`` kinds below,
so the forwarder maps them without knowing about sockets or parsers.
"""

from __future__ import annotations

import asyncio
from collections import deque

import httptools
from multidict import CIMultiDict, CIMultiDictProxy

#: the same limits aiohttp's client parser applies to an upstream's head
MAX_LINE = 8190
MAX_FIELD = 8190
MAX_HEADERS = 128
#: pause reading the upstream past this much body the client has not taken yet
HIGH_WATER = 256 * 1024
LOW_WATER = 64 * 1024


class UpstreamError(Exception):
    """The upstream exchange failed; the kinds below say how far it got."""


class ConnectFailed(UpstreamError):
    """Refused, unreachable or the TLS handshake failed: not a byte was written."""


class ConnectTimeout(UpstreamError):
    """No connection (a pool slot, the connect, the handshake) in time: nothing was written."""


class ReadTimeout(UpstreamError):
    """The upstream went silent (or stopped reading our body) for the read deadline."""


class Disconnected(UpstreamError):
    """The upstream closed the connection before its response was complete."""


class ProtocolError(UpstreamError):
    """The upstream's response broke HTTP/1.1 framing or the head limits."""


class _Stop(Exception):
    """Raised from a parser callback to stop parsing bytes that belong to no request."""


class Connection(asyncio.Protocol):
    """The transport's and the parser's callbacks, and the caller's side of one exchange."""

    def __init__(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.reusable = True
        self.idle_since = 0.0
        self._parser: httptools.HttpResponseParser | None = None
        self._head: asyncio.Future[None] | None = None
        self._waiter: asyncio.Future[None] | None = None
        self._drain: asyncio.Future[None] | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._chunks: deque[bytes] = deque()
        self._buffered = 0
        self._paused = False
        self._error: UpstreamError | None = None
        self._done = False  # the final response was read off the wire to its end
        self._headed = False  # the final response's head was parsed
        self._head_only = False  # a HEAD request: the head is the whole response
        self._close_delimited = False
        self._chunked = False
        self._length = False
        self._reason = b""
        self._raw: list[tuple[bytes, bytes]] = []
        self._head_bytes = 0
        self._last = 0.0  # when the upstream last sent anything: the read deadline's origin
        self.read_timeout = 30.0
        self.status = 0
        self.reason = ""
        self.headers: CIMultiDictProxy[str] = CIMultiDictProxy(CIMultiDict())

    # --- transport callbacks ---------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.reusable = False
        if self._parser is not None and not self._done:
            if self._headed and self._close_delimited and exc is None:
                self._done = True  # the upstream's close is how this body ends
            else:
                where = "mid-body" if self._headed else "before answering"
                self._fail(Disconnected(f"the upstream closed the connection {where}"))
        if self._drain is not None and not self._drain.done():
            self._drain.set_exception(Disconnected("the upstream closed while being written to"))
            self._drain.exception()  # raised by drain if a writer still waits; never logged
        self._wake()

    def pause_writing(self) -> None:
        self._drain = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._drain is not None and not self._drain.done():
            self._drain.set_result(None)
        self._drain = None

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if parser is None or self._done:
            # bytes nobody asked for (idle, or after a complete response): the connection's
            # framing cannot be trusted again; what was read stays readable
            self.close()
            return
        self._last = self._loop.time()
        if not self._headed:
            self._head_bytes += len(data)
            if self._head_bytes > MAX_HEADERS * (MAX_FIELD + 4) + MAX_LINE:
                self._abort(ProtocolError("the upstream's response head is too large"))
                return
        try:
            parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._abort(ProtocolError("the upstream switched protocols unasked"))
        except httptools.HttpParserError as exc:
            cause = exc.__context__
            if isinstance(cause, _Stop):
                self.close()  # after a complete answer: it stands, the connection does not
            elif isinstance(cause, UpstreamError):
                self._abort(cause)
            else:
                self._abort(ProtocolError(f"the upstream's response is malformed: {exc}"))

    # --- parser callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        if self._headed:
            raise _Stop  # a second response to one request

    def on_status(self, reason: bytes) -> None:
        self._reason += reason
        if len(self._reason) > MAX_LINE:
            raise ProtocolError("the upstream's status line is too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._headed:
            return  # a chunked body's trailers: dropped, as aiohttp's client drops them
        if len(name) > MAX_FIELD or len(value) > MAX_FIELD:
            raise ProtocolError("an upstream response header is too long")
        if len(self._raw) >= MAX_HEADERS:
            raise ProtocolError("the upstream's response has too many headers")
        lower = name.lower()
        if lower == b"content-length":
            self._length = True
        elif lower == b"transfer-encoding":
            self._chunked = value.strip().lower().endswith(b"chunked")
        self._raw.append((name, value))

    def on_headers_complete(self) -> None:
        assert self._parser is not None
        status = self._parser.get_status_code()
        if status == 101:
            # the proxy never asks an upstream to switch protocols (WebSockets go elsewhere)
            raise ProtocolError("the upstream switched protocols unasked")
        if 100 <= status < 200:
            # an interim answer: the final one follows on the same parser
            self._raw, self._reason, self._length, self._chunked = [], b"", False, False
            return
        self._headed = True
        self.status = status
        self.reason = self._reason.decode("utf-8", "surrogateescape").strip()
        headers: CIMultiDict[str] = CIMultiDict()
        for name, value in self._raw:
            headers.add(
                name.decode("utf-8", "surrogateescape"), value.decode("utf-8", "surrogateescape")
            )
        self.headers = CIMultiDictProxy(headers)
        if not self._parser.should_keep_alive():
            self.reusable = False
        bodiless = self._head_only or status in (204, 304)
        if not bodiless and not self._length and not self._chunked:
            self._close_delimited = True
            self.reusable = False
        if self._head_only:
            # llhttp cannot be told the request was a HEAD: it would wait for the announced
            # body. The head is the whole answer; the parser is replaced before any reuse.
            self._done = True
        if self._head is not None and not self._head.done():
            self._head.set_result(None)

    def on_body(self, body: bytes) -> None:
        if self._head_only:
            raise _Stop  # a body to a HEAD: the framing cannot be trusted any more
        self._chunks.append(body)
        self._buffered += len(body)
        if self._buffered > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._headed:
            self._done = True
            self._wake()

    # --- the caller's side -----------------------------------------------------------------

    def begin(self, *, head_only: bool, read_timeout: float) -> None:
        """Ready a fresh parser and state for the next exchange."""
        self._parser = httptools.HttpResponseParser(self)
        self._head = self._loop.create_future()
        self._head_only = head_only
        self.read_timeout = read_timeout
        self._done = self._headed = self._close_delimited = False
        self._chunked = self._length = False
        self._reason, self._raw, self._head_bytes = b"", [], 0
        self._error = None
        self._last = self._loop.time()

    def write(self, data: bytes) -> None:
        if self.transport is None or self.transport.is_closing():
            raise Disconnected("the upstream connection closed before the request was written")
        self.transport.write(data)

    async def drain(self) -> None:
        """Wait while the upstream is not taking our bytes, up to the read deadline."""
        if self._drain is None:
            return
        try:
            async with asyncio.timeout(self.read_timeout):
                await self._drain
        except TimeoutError as exc:
            raise ReadTimeout("the upstream stopped reading the request body") from exc

    @property
    def head_arrived(self) -> asyncio.Future[None]:
        assert self._head is not None
        return self._head

    async def wait_head(self) -> None:
        """Until the final response's head was parsed; the read deadline counts from now."""
        assert self._head is not None
        self._last = self._loop.time()
        if not self._head.done():
            await self._timed(self._head)
        self._head.result()

    async def readany(self) -> bytes:
        """The next piece of the body as it arrived, ``b""`` at its end."""
        while not self._chunks:
            if self._done:
                return b""
            if self._error is not None:
                raise self._error
            self._waiter = self._loop.create_future()
            try:
                await self._timed(self._waiter)
            finally:
                self._waiter = None
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        if self._paused and self._buffered <= LOW_WATER and self.transport is not None:
            self._paused = False
            self.transport.resume_reading()
        return chunk

    @property
    def ready(self) -> bool:
        """Body bytes, or the body's clean end, are already here: ``readany`` will not wait."""
        return bool(self._chunks) or self._done

    @property
    def complete(self) -> bool:
        """The response was read to its end, by the caller too."""
        return self._done and not self._chunks and self._error is None

    def close(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def idle(self, now: float) -> None:
        self._parser = None
        self._head = None
        self.idle_since = now

    # --- internals -------------------------------------------------------------------------

    async def _timed(self, waiter: asyncio.Future[None]) -> None:
        # one timer per wait, pushed back by whatever arrived meanwhile, instead of one
        # per data_received
        self._timer = self._loop.call_at(self._last + self.read_timeout, self._expire, waiter)
        try:
            await waiter
        finally:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None

    def _expire(self, waiter: asyncio.Future[None]) -> None:
        if waiter.done():
            return
        due = self._last + self.read_timeout
        if self._loop.time() < due:
            self._timer = self._loop.call_at(due, self._expire, waiter)
            return
        self.close()
        waiter.set_exception(ReadTimeout("the upstream did not answer in time"))

    def _abort(self, error: UpstreamError) -> None:
        self._fail(error)
        self.close()

    def _fail(self, error: UpstreamError) -> None:
        self.reusable = False
        if self._error is None:
            self._error = error
        if self._head is not None and not self._head.done():
            self._head.set_exception(error)
            self._head.exception()  # raised by wait_head if anyone still waits; never logged
        self._wake()

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)
