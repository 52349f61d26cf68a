"""Raw-socket tools for the adversarial suites: a client that sends bytes exactly as written
and an upstream that records every byte it receives and answers as a test scripts it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Received:
    """One request as the upstream parsed it off the wire."""

    method: str
    target: str
    headers: list[tuple[str, str]]
    body: bytes
    connection: int  # which accepted connection it came on (0, 1, ...)

    def header(self, name: str) -> str | None:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"ok": true}'
    headers: dict[str, str] = field(default_factory=dict)
    close: bool = False  # close the connection after answering
    hang_up: bool = False  # close it after answering without saying so (no Connection: close)


#: what the upstream does with a request: a reply, or None to close without answering
Script = Callable[[Received], Awaitable[Reply | None]]


async def _ok(_: Received) -> Reply:
    return Reply()


class RawUpstream:
    """An HTTP/1.1 upstream on a raw socket: keep-alive, Content-Length and chunked bodies.

    ``received`` holds each parsed request; ``raw`` every byte read, per connection, so a test
    can tell exactly what reached the upstream (a re-sent request, a body cut short)."""

    def __init__(self, script: Script = _ok) -> None:
        self.script = script
        self.received: list[Received] = []
        self.raw: list[bytearray] = []
        self.arrived = asyncio.Event()  # set whenever a request head has been read
        self.peer_closed: list[asyncio.Event] = []  # per connection: the gateway closed it
        self._server: asyncio.Server | None = None
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def start(self) -> RawUpstream:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    def body_bytes(self) -> int:
        return sum(len(r.body) for r in self.received)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        self.peer_closed.append(asyncio.Event())
        self._writers.append(writer)
        try:
            while True:
                head = await _read_until(reader, b"\r\n\r\n", raw)
                if head is None:
                    self.peer_closed[index].set()
                    return
                lines = head.decode("latin-1").split("\r\n")
                method, target, _ = lines[0].split(" ", 2)
                headers = [
                    (name.strip(), value.strip())
                    for name, _, value in (line.partition(":") for line in lines[1:] if line)
                ]
                self.arrived.set()
                request = Received(method, target, headers, b"", index)
                request.body = await _read_body(reader, request, raw)
                self.received.append(request)
                reply = await self.script(request)
                if reply is None:
                    return
                writer.write(_render(reply))
                await writer.drain()
                if reply.close or reply.hang_up:
                    return
        except (ConnectionError, asyncio.IncompleteReadError):
            self.peer_closed[index].set()
            return
        finally:
            writer.close()


async def _read_until(reader: asyncio.StreamReader, marker: bytes, raw: bytearray) -> bytes | None:
    buffer = b""
    while marker not in buffer:
        chunk = await reader.read(1)
        if not chunk:
            return None
        raw += chunk
        buffer += chunk
    return buffer[: -len(marker)]


async def _read_body(reader: asyncio.StreamReader, request: Received, raw: bytearray) -> bytes:
    length = request.header("Content-Length")
    if length is not None:
        body = await reader.readexactly(int(length))
        raw += body
        return body
    if (request.header("Transfer-Encoding") or "").lower() != "chunked":
        return b""
    body = b""
    while True:
        size_line = await _read_until(reader, b"\r\n", raw)
        if size_line is None:
            raise asyncio.IncompleteReadError(body, None)
        size = int(size_line.split(b";")[0], 16)
        chunk = await reader.readexactly(size + 2)
        raw += chunk
        if size == 0:
            return body
        body += chunk[:-2]


def _render(reply: Reply) -> bytes:
    head = f"HTTP/1.1 {reply.status} X\r\nContent-Length: {len(reply.body)}\r\n"
    head += "Content-Type: application/json\r\n"
    if reply.close:
        head += "Connection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in reply.headers.items())
    return head.encode("latin-1") + b"\r\n" + reply.body


@dataclass
class RawResponse:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


async def send_raw(port: int, data: bytes, *, timeout: float = 20.0) -> RawResponse:
    """Write ``data`` as is on a new connection and read one response until it closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(data)
        await writer.drain()
        return await read_response(reader, timeout=timeout)
    finally:
        writer.close()


async def read_response(reader: asyncio.StreamReader, *, timeout: float = 20.0) -> RawResponse:
    """One response off ``reader``: head, then a Content-Length or chunked body, or to EOF."""
    async with asyncio.timeout(timeout):
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(":") for line in lines[1:] if line)
        }
        if "content-length" in headers:
            body = await reader.readexactly(int(headers["content-length"]))
        elif headers.get("transfer-encoding", "").lower() == "chunked":
            body = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = await reader.read()
    return RawResponse(status, headers, body)


def request_bytes(
    method: str, target: str, headers: dict[str, str] | list[tuple[str, str]], body: bytes = b""
) -> bytes:
    """A request head (``Host`` added) and body, exactly as given: nothing normalised."""
    items = headers.items() if isinstance(headers, dict) else headers
    head = f"{method} {target} HTTP/1.1\r\nHost: gateway.test\r\n"
    head += "".join(f"{name}: {value}\r\n" for name, value in items)
    return head.encode("latin-1") + b"\r\n" + body


def chunked(*pieces: bytes) -> bytes:
    """``pieces`` as a chunked body, terminator included."""
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"
