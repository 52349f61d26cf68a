"""`make bench-clients`: the upstream HTTP client alone, three candidates, one run, one table.

Each candidate forwards what the gateway forwards to a fast local upstream (a raw asyncio
server, below, so the upstream is not what is measured):

- small JSON GETs: a dozen client headers, the body read to the end, many in flight;
- streamed 1 MB POSTs: the body handed over in 64 KB chunks from an async generator, as the
  Forwarder hands over the client's body, with its Content-Length.

Candidates:

- ``aiohttp``: the ClientSession exactly as gateway/app.py builds it and as
  gateway/proxy/forward.py calls it (timeouts, no redirects, no compression, no auto headers,
  no cookie jar, its re-send turned off), the body read with ``content.readany()``;
- ``gateway UpstreamClient``: the proxy's own pooled keep-alive HTTP/1.1 client
  (gateway/proxy/upstream.py, on asyncio protocols and the llhttp parser), exactly as the
  forwarder calls it;
- ``pyreqwest``: the Rust (reqwest/hyper) client, when it is installed.

Every candidate runs in this one process on the event loop `gateway serve` uses, against the
same upstream, one after another; compare the ratios of one run, not absolute figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.loop import new_loop

ROOT = Path(__file__).resolve().parent.parent
SMALL = b'{"ok":true,"items":[1,2,3],"note":"a small JSON answer"}'
CHUNK = 64 * 1024
POST_BYTES = 1024 * 1024
#: what a client's request typically carries through the gateway (after the hop-by-hop strip)
HEADERS = {
    "Accept": "application/json",
    "User-Agent": "bench-client/1.0",
    "Accept-Encoding": "gzip, deflate",
    "Accept-Language": "en",
    "X-Request-Id": "0123456789abcdef",
    "X-Forwarded-For": "127.0.0.1",
    "X-Forwarded-Proto": "http",
    "X-Forwarded-Host": "gateway.local",
    "X-Gateway-Account": "acct_0123456789",
    "X-Gateway-Tier": "enterprise",
}
PATH = "/api/logic/bench?a=1&b=%2F"


# --- the upstream ---------------------------------------------------------------------------


class _Upstream(asyncio.Protocol):
    """Answers every request with SMALL once its body has arrived; keep-alive; pipelining-safe."""

    def __init__(self) -> None:
        import httptools

        self._parser = httptools.HttpRequestParser(self)
        self._transport: asyncio.Transport | None = None
        self._answer = (
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: "
            + str(len(SMALL)).encode()
            + b"\r\n\r\n"
            + SMALL
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except Exception:
            assert self._transport is not None
            self._transport.close()

    def on_message_complete(self) -> None:
        assert self._transport is not None
        self._transport.write(self._answer)


def serve(port: int) -> None:
    loop = new_loop()
    server = loop.run_until_complete(loop.create_server(_Upstream, "127.0.0.1", port))
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        server.close()


# --- the harness -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Figures:
    requests_per_second: float
    p50_ms: float
    p99_ms: float
    megabytes_per_second: float


async def _chunks(total: int) -> AsyncIterator[bytes]:
    piece = b"x" * CHUNK
    sent = 0
    while sent < total:
        n = min(CHUNK, total - sent)
        yield piece if n == CHUNK else piece[:n]
        sent += n


def _expect_ok(status: int) -> None:
    if status != 200:
        raise RuntimeError(f"the bench upstream answered {status}: the figures would be wrong")


#: one exchange: a request, its answer read to the end; returns the bytes moved
Exchange = Callable[[], Awaitable[int]]


async def measure(exchange: Exchange, *, concurrency: int, seconds: float) -> Figures:
    for _ in range(max(concurrency, 8)):  # warm the pool
        await exchange()
    latencies: list[float] = []
    moved = 0
    deadline = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal moved
        while time.perf_counter() < deadline:
            started = time.perf_counter()
            moved += await exchange()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    latencies.sort()

    def pct(p: float) -> float:
        return latencies[min(int(len(latencies) * p), len(latencies) - 1)] * 1000

    return Figures(len(latencies) / elapsed, pct(0.5), pct(0.99), moved / elapsed / 1e6)


async def aiohttp_candidate(base: str) -> tuple[Exchange, Exchange, Callable[[], Awaitable[None]]]:
    import aiohttp
    from multidict import CIMultiDict
    from yarl import URL

    connector = aiohttp.TCPConnector(limit=100, limit_per_host=0, keepalive_timeout=30)
    session = aiohttp.ClientSession(
        connector=connector,
        auto_decompress=False,
        skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
        cookie_jar=aiohttp.DummyCookieJar(),
    )
    session._retry_connection = False
    timeout = aiohttp.ClientTimeout(total=None, connect=5, sock_connect=5, sock_read=30)
    url = URL(base + PATH, encoded=True)

    async def call(method: str, body: AsyncIterator[bytes] | None, length: int | None) -> int:
        headers = CIMultiDict(HEADERS)
        if length is not None:
            headers["Content-Length"] = str(length)
        response = await session.request(
            method,
            url,
            headers=headers,
            data=body,
            allow_redirects=False,
            timeout=timeout,
            compress=False,
            chunked=None,
        )
        _expect_ok(response.status)
        moved = 0
        try:
            while chunk := await response.content.readany():
                moved += len(chunk)
        finally:
            response.release()
        return moved + (length or 0)

    async def get() -> int:
        return await call("GET", None, None)

    async def post() -> int:
        return await call("POST", _chunks(POST_BYTES), POST_BYTES)

    return get, post, session.close


async def gateway_candidate(
    base: str,
) -> tuple[Exchange, Exchange, Callable[[], Awaitable[None]]]:
    from multidict import CIMultiDict
    from yarl import URL

    from gateway.proxy.pool import Target
    from gateway.proxy.upstream import UpstreamClient

    client = UpstreamClient(limit=100, idle_seconds=30, connect_timeout=5, read_timeout=30)
    target = Target(URL(base))

    async def call(method: str, body: AsyncIterator[bytes] | None, length: int | None) -> int:
        headers = CIMultiDict(HEADERS)
        if length is not None:
            headers["Content-Length"] = str(length)
        response = await client.request(method, target, PATH, headers, body)
        _expect_ok(response.status)
        moved = 0
        try:
            while chunk := await response.content.readany():
                moved += len(chunk)
        finally:
            response.release()
        return moved + (length or 0)

    async def get() -> int:
        return await call("GET", None, None)

    async def post() -> int:
        return await call("POST", _chunks(POST_BYTES), POST_BYTES)

    async def close() -> None:
        client.close()

    return get, post, close


async def pyreqwest_candidate(
    base: str,
) -> tuple[Exchange, Exchange, Callable[[], Awaitable[None]]]:
    from datetime import timedelta

    from pyreqwest.client import ClientBuilder

    client = (
        ClientBuilder()
        .connect_timeout(timedelta(seconds=5))
        .read_timeout(timedelta(seconds=30))
        .max_connections(100)
        .follow_redirects(False)
        .gzip(False)
        .brotli(False)
        .deflate(False)
        .error_for_status(False)
        .build()
    )
    url = base + PATH

    async def get() -> int:
        async with client.get(url).headers(HEADERS).build_streamed() as response:
            _expect_ok(response.status)
            moved = 0
            while (chunk := await response.body_reader.read_chunk()) is not None:
                moved += len(chunk)
            return moved

    async def post() -> int:
        request = (
            client.post(url)
            .headers({**HEADERS, "Content-Length": str(POST_BYTES)})
            .body_stream(_chunks(POST_BYTES))
            .build_streamed()
        )
        async with request as response:
            _expect_ok(response.status)
            moved = 0
            while (chunk := await response.body_reader.read_chunk()) is not None:
                moved += len(chunk)
            return moved + POST_BYTES

    async def close() -> None:
        await client.close()

    return get, post, close


CANDIDATES: dict[str, Callable[[str], Awaitable[Any]]] = {
    "aiohttp ClientSession": aiohttp_candidate,
    "gateway UpstreamClient": gateway_candidate,
    "pyreqwest": pyreqwest_candidate,
}


async def compare(
    base: str, seconds: float, connections: int, rounds: int
) -> dict[str, tuple[Figures, ...]]:
    """Every candidate once per round, rounds interleaved, the median of each figure kept: a
    neighbour's burst of load then lands on one round of every candidate, not on one of them."""
    clients = {}
    for label, make in CANDIDATES.items():
        try:
            clients[label] = await make(base)
        except ImportError as exc:
            print(f"{label}: not installed ({exc.name}); skipped", file=sys.stderr)
    runs: dict[str, list[tuple[Figures, ...]]] = {label: [] for label in clients}
    try:
        for _ in range(rounds):
            for label, (get, post, _close) in clients.items():
                runs[label].append(
                    (
                        await measure(get, concurrency=connections, seconds=seconds),
                        await measure(get, concurrency=1, seconds=seconds),
                        await measure(post, concurrency=4, seconds=seconds),
                    )
                )
    finally:
        for _get, _post, close in clients.values():
            await close()
    return {label: tuple(map(_median, zip(*found, strict=True))) for label, found in runs.items()}


def _median(figures: tuple[Figures, ...]) -> Figures:
    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Figures(
        mid([f.requests_per_second for f in figures]),
        mid([f.p50_ms for f in figures]),
        mid([f.p99_ms for f in figures]),
        mid([f.megabytes_per_second for f in figures]),
    )


def print_table(results: dict[str, tuple[Figures, ...]], connections: int, rounds: int) -> None:
    base = next(iter(results.values()))
    print(f"\nupstream client alone, loopback, median of {rounds} interleaved rounds;")
    print("x = ratio to the first row\n")
    print(f"{'client':<28}{'GET c=' + str(connections) + ' req/s':>16}{'p50':>7}{'p99':>7}", end="")
    print(f"{'x':>6}{'GET c=1 p50':>13}{'p99':>7}{'POST 1MB c=4 MB/s':>19}{'p99':>8}{'x':>6}")
    for label, (many, one, post) in results.items():
        print(
            f"{label:<28}{many.requests_per_second:>16.0f}{many.p50_ms:>7.2f}{many.p99_ms:>7.2f}"
            f"{many.requests_per_second / base[0].requests_per_second:>6.2f}"
            f"{one.p50_ms:>13.3f}{one.p99_ms:>7.3f}"
            f"{post.megabytes_per_second:>19.0f}{post.p99_ms:>8.2f}"
            f"{post.megabytes_per_second / base[2].megabytes_per_second:>6.2f}"
        )
    print("\nlatencies in ms; the machine may be shared: compare ratios within one run")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve)
        return
    from tests.redis_servers import free_port

    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    upstream = subprocess.Popen(
        [sys.executable, "-m", "bench.upstream_clients", "--serve", str(port)], cwd=ROOT, env=env
    )
    try:
        _wait_for(port)
        loop = new_loop()
        try:
            results = loop.run_until_complete(
                compare(
                    f"http://127.0.0.1:{port}", options.seconds, options.connections, options.rounds
                )
            )
        finally:
            loop.close()
    finally:
        upstream.terminate()
        upstream.wait(timeout=10)
    print_table(results, options.connections, options.rounds)


def _wait_for(port: int) -> None:
    import socket

    deadline = time.monotonic() + 15
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("the bench upstream did not start") from None
            time.sleep(0.05)


if __name__ == "__main__":
    main()
