"""An upstream on a raw socket for the upstream-client suites: it records every byte it
receives and answers with exactly the bytes a test writes, framing mistakes included."""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from yarl import URL

from tests.adversarial import request_bytes
from tests.conftest import GatewayFactory, Harness

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


@dataclass
class Seen:
    head: bytes  # the request line and headers, exactly as received
    body: bytes
    connection: int

    @property
    def line(self) -> bytes:
        return self.head.split(b"\r\n", 1)[0]

    def names(self) -> list[str]:
        return [
            line.split(b":", 1)[0].decode().lower() for line in self.head.split(b"\r\n")[1:] if line
        ]


@dataclass
class Out:
    """What the upstream writes back, and whether it hangs up afterwards."""

    data: bytes
    close: bool = False


#: the answer to a request; None: close the connection without answering
Answer = Callable[[Seen], Awaitable[Out | None]]


async def _ok(_: Seen) -> Out:
    return Out(OK)


@dataclass
class WireUpstream:
    """Answers each request with exactly the bytes ``answer`` returns and keeps the connection
    open unless told otherwise, so the gateway alone decides about reuse."""

    answer: Answer = _ok
    seen: list[Seen] = field(default_factory=list)
    raw: list[bytearray] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closed: list[asyncio.Event] = field(default_factory=list)
    server: asyncio.Server | None = None
    #: when set, a request's body is read only once this event is set
    hold_body: asyncio.Event | None = None

    scheme: str = "http"

    @property
    def url(self) -> URL:
        assert self.server is not None
        return URL(f"{self.scheme}://127.0.0.1:{self.server.sockets[0].getsockname()[1]}")

    async def start(self, tls: ssl.SSLContext | None = None) -> WireUpstream:
        self.scheme = "https" if tls is not None else "http"
        self.server = await asyncio.start_server(self.serve, "127.0.0.1", 0, ssl=tls)
        return self

    def close(self) -> None:
        for writer in self.writers:
            writer.close()
        if self.server is not None:
            self.server.close()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        index = len(self.raw)
        raw = bytearray()
        self.raw.append(raw)
        self.writers.append(writer)
        self.closed.append(asyncio.Event())
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except asyncio.IncompleteReadError as exc:
                    raw += exc.partial
                    return
                raw += head
                if self.hold_body is not None:
                    await self.hold_body.wait()
                body = await self._body(reader, head, raw)
                seen = Seen(head[:-4], body, index)
                self.seen.append(seen)
                out = await self.answer(seen)
                if out is None:
                    return
                writer.write(out.data)
                await writer.drain()
                if out.close:
                    return
        except ConnectionError:
            return
        finally:
            self.closed[index].set()
            writer.close()

    @staticmethod
    async def _body(reader: asyncio.StreamReader, head: bytes, raw: bytearray) -> bytes:
        fields = {
            name.strip().lower(): value.strip()
            for name, _, value in (line.partition(b":") for line in head.split(b"\r\n")[1:])
        }
        if b"content-length" in fields:
            body = await reader.readexactly(int(fields[b"content-length"]))
            raw += body
            return body
        if fields.get(b"transfer-encoding", b"").lower() != b"chunked":
            return b""
        body = b""
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";")[0], 16)
            data = await reader.readexactly(size + 2)
            raw += size_line + data
            if size == 0:
                return body
            body += data[:-2]


async def gateway_on(make_gateway: GatewayFactory, wire: WireUpstream) -> tuple[Harness, str]:
    gw = await make_gateway(upstreams=(("/", wire.url),))
    return gw, await gw.key(await gw.account("anonymous"))


def get(target: str, key: str, method: str = "GET") -> bytes:
    return request_bytes(method, target, {"Authorization": f"Bearer {key}", "Connection": "close"})


async def settled(gw: Harness) -> None:
    """Until no request is in hand: every exchange, its connection's return included, ended."""
    registry = gw.gateway.metrics.registry
    for _ in range(200):  # bounded: 10 s
        if not registry.get_sample_value("gateway_in_flight_requests"):
            return
        await asyncio.sleep(0.05)
    raise AssertionError("requests still in flight")


def decisions(gw: Harness, outcome: str) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(
        "gateway_decisions_total", {"tier": "anonymous", "route": "logic", "outcome": outcome}
    )
    return value or 0.0
