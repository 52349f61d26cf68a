"""The streaming forwarder: one pooled upstream client, bodies streamed both ways, errors
translated."""

from __future__ import annotations

import asyncio
import ipaddress
import math
import sys
import time
from collections.abc import (
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
    Sequence,
)
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import (
    BadRequest,
    GatewayBusy,
    GatewayError,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamCircuitOpen,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.proxy.expect import send_continue
from gateway.proxy.h1 import (
    ConnectFailed,
    ConnectTimeout,
    ReadTimeout,
    UpstreamError,
)
from gateway.proxy.headers import (
    downstream_response_headers,
    header_family,
    upstream_request_headers,
)
from gateway.proxy.pool import CircuitOpen, Pool, Target
from gateway.proxy.upstream import Response, UpstreamClient

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: when a relayed response's headers went out (perf_counter): request latency ends there,
#: not when a body of any size has finished streaming
HEADERS_SENT = web.RequestKey("gateway.headers_sent", float)


@dataclass(frozen=True, slots=True)
class Upstream:
    """A path prefix and the pool of targets that serve it (one target for a plain ``url``)."""

    prefix: str
    pool: Pool
    # computed once: the prefix test
    _under: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_under", self.prefix.rstrip("/") + "/")

    def serves(self, path: str) -> bool:
        return self._under == "/" or path == self.prefix or path.startswith(self._under)

    def url_for(self, target: Target, encoded_path: str, raw_query: str) -> URL:
        """The URL on ``target`` for a canonical, already encoded path and the client's raw
        query.

        Built from strings with ``encoded=True`` so neither the path nor the query is decoded
        and re-encoded on the way: the upstream gets exactly the bytes that were matched."""
        url = target.base + encoded_path
        if raw_query:
            url += "?" + raw_query
        return URL(url, encoded=True)


class Upstreams:
    """Upstreams by path prefix; the longest matching prefix wins."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self._by_length = sorted(upstreams, key=lambda u: -len(u.prefix))

    def __iter__(self) -> Iterator[Upstream]:
        return iter(self._by_length)

    def pick(self, path: str) -> Upstream | None:
        for upstream in self._by_length:
            if upstream.serves(path):
                return upstream
        return None


#: called with each request body chunk's size before the chunk goes upstream; raising a
#: GatewayError stops the body there and answers with it (a streaming meter's refusal)
BodyMeter = Callable[[int], Awaitable[None]]


@dataclass(slots=True)
class Delivery:
    """Whether the upstream may have received the request, which decides any refund.

    ``sent`` turns true when the forwarder starts sending and false again only when the
    connection provably never carried a byte (refused, or not made in time): once a request
    may have been written, the upstream may have acted on it, and the call stays charged."""

    sent: bool = False


class _BodyLimit(Exception):
    """Raised inside the upload stream when the body passes the limit."""


class _BodyBroken(Exception):
    """Raised inside the upload stream when the client's body breaks off or is malformed."""


class _BodyStalled(Exception):
    """Raised inside the upload stream when the client goes silent mid-body or is too slow."""


class _BodyRefused(Exception):
    """Raised inside the upload stream when the body meter refuses a chunk."""

    def __init__(self, error: GatewayError) -> None:
        super().__init__(error.message)
        self.error = error


class Forwarder:
    def __init__(
        self,
        upstreams: Upstreams,
        *,
        max_body_bytes: int,
        connect_timeout: float,
        read_timeout: float,
        body_timeout: float = 120.0,
        body_idle: float = 15.0,
        write_timeout: float = 60.0,
        strip_headers: Iterable[str] = (),
        pool_size: int = 0,
        pool_idle_seconds: float = 4.0,
        trusted_proxies: Sequence[IpNetwork] = (),
        metrics: Metrics,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._client: UpstreamClient | None = None
        self._upstreams = upstreams
        # labelled by the target's host:port: bounded by the config, free of any credentials
        self._observed = {
            t.label: metrics.upstream(t.label) for u in upstreams for t in u.pool.targets
        }
        self._retries = metrics.upstream_retries
        self._max_body = max_body_bytes
        # a client may neither go silent mid-body nor trickle it forever, and must read
        # what it asked for: each holds a handler and an upstream connection
        self._body_idle = body_idle
        self._body_total = body_timeout
        self.write_timeout = write_timeout
        self._strip = frozenset(header_family(name) for name in strip_headers)
        # responses being relayed, each holding a pooled connection: when they fill the pool,
        # a request that waited for a connection in vain is the gateway's busyness, not the
        # upstream's slowness
        self._pool_size = pool_size
        self._relaying = 0
        # an idle pooled connection is closed before the upstream's own keep-alive timeout
        # could close it under a request being written (0: never reuse one)
        self._pool_idle = pool_idle_seconds
        self._connect_timeout = connect_timeout
        self._read_timeout = read_timeout
        self._trusted = tuple(trusted_proxies)

    def attach(self, session: aiohttp.ClientSession) -> None:
        """Open the upstream client; ``session`` (opened when the app starts) serves only
        WebSocket handshakes and health checks, never a forwarded request."""
        # aiohttp re-sends a GET/PUT/DELETE/... once, silently, when the connection breaks
        # before the response: the upstream may then act twice on what the client sent
        # once, and be paid once. It has no public switch; refuse to run where the private
        # one is gone rather than run with the re-send (tests/test_adversarial_delivery.py).
        if not hasattr(session, "_retry_connection"):
            raise RuntimeError("this aiohttp cannot turn off its re-send of idempotent requests")
        session._retry_connection = False
        self._session = session
        self._client = UpstreamClient(
            limit=self._pool_size or sys.maxsize,
            idle_seconds=self._pool_idle,
            connect_timeout=self._connect_timeout,
            read_timeout=self._read_timeout,
        )

    def close(self) -> None:
        """Close the idle upstream connections (when the app stops)."""
        if self._client is not None:
            self._client.close()

    @asynccontextmanager
    async def open(
        self,
        request: web.Request,
        path: str,
        *,
        inject: Mapping[str, str],
        drop_authorization: bool,
        delivery: Delivery,
        body_meter: BodyMeter | None = None,
        route: str = "-",
    ) -> AsyncIterator[Response]:
        """Send the request upstream, at most once, and yield the response once its headers
        have arrived.

        ``path`` is the canonical encoded path, the one the route (named ``route``, for the
        metrics) was matched on. Only the
        sending is translated into gateway errors: whatever the caller does with the yielded
        response (relaying it to a client that may vanish) keeps its own exceptions.
        ``delivery`` tells the caller afterwards whether the upstream may have received it.
        """
        upstream = self.target(path)
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes")
        headers = self.upstream_headers(
            request, inject=inject, drop_authorization=drop_authorization
        )
        data = None
        if request.body_exists:
            # admitted by every check: only now is a client waiting on Expect told to send
            await send_continue(request)
            if declared is not None:
                headers[hdrs.CONTENT_LENGTH] = str(declared)
        client = self._client
        if client is None:
            raise RuntimeError("Forwarder used before the app started")
        pool = upstream.pool
        # the client's exact bytes after the path, the path as the route matched it
        query = request.raw_path.partition("?")[2]
        path_qs = f"{path}?{query}" if query else path
        tried: list[Target] = []
        while True:
            try:
                target = pool.pick(tried)
            except CircuitOpen as exc:
                if tried:  # every target was tried and none was reached: say why
                    raise UpstreamUnavailable("no upstream target accepted the connection") from exc
                delivery.sent = False
                raise UpstreamCircuitOpen(
                    str(exc), headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
                ) from exc
            observed = self._observed[target.label]
            if tried:
                self._retries.labels(tried[-1].label).inc()
            pool.begin(target)
            if request.body_exists:
                # a new stream each attempt: an attempt that never connected never read it
                data = self._limited(request, body_meter)
            started = time.perf_counter()
            delivery.sent = True
            try:
                response = await client.request(request.method, target, path_qs, headers, data)
            except ConnectTimeout as exc:
                # no connection in time (pool slot or connect): not a byte was written
                delivery.sent = False
                if self._pool_size and self._relaying >= self._pool_size:
                    pool.cancel(target)
                    raise GatewayBusy(
                        "every upstream connection is busy relaying a response; try again",
                        headers={"Retry-After": "1"},
                    ) from exc
                pool.done(target, "unreached")
                observed.timeout.inc()
                tried.append(target)
                if self._another(pool, tried):
                    continue
                raise UpstreamTimeout("the upstream did not accept a connection in time") from exc
            except ReadTimeout as exc:
                pool.done(target, "failure")
                observed.timeout.inc()
                raise UpstreamTimeout("the upstream did not answer in time") from exc
            except ConnectFailed as exc:
                # refused, unreachable, or the TLS handshake failed: nothing was written, so
                # another target may take the request (the refund's rule, the retry's rule)
                delivery.sent = False
                pool.done(target, "unreached")
                observed.refused.inc()
                tried.append(target)
                if self._another(pool, tried):
                    continue
                raise UpstreamUnavailable("the upstream refused the connection") from exc
            except (_BodyLimit, _BodyBroken, _BodyStalled, _BodyRefused) as exc:
                # what the upload stream raised is the client's doing, and must not count
                # against the upstream
                pool.cancel(target)
                if isinstance(exc, _BodyLimit):
                    raise PayloadTooLarge(
                        f"the body is larger than {self._max_body} bytes"
                    ) from exc
                if isinstance(exc, _BodyBroken):
                    raise BadRequest("the request body broke off before it was complete") from exc
                if isinstance(exc, _BodyStalled):
                    raise RequestTimeout(str(exc)) from exc
                raise exc.error from exc
            except UpstreamError as exc:
                # closed before or while answering, or an answer HTTP/1.1 cannot frame
                pool.done(target, "failure")
                observed.refused.inc()
                raise UpstreamUnavailable("the upstream dropped the connection") from exc
            break
        observed.answered(route, response.status, time.perf_counter() - started)
        self._relaying += 1
        failed = response.status >= 500
        try:
            yield response
        except UpstreamBroken:
            failed = True
            observed.broken.inc()
            raise
        finally:
            # back to the pool when the body was read to the end, closed otherwise
            self._relaying -= 1
            response.release()
            pool.done(target, "failure" if failed else "ok")

    @staticmethod
    def _another(pool: Pool, tried: list[Target]) -> bool:
        return any(t not in tried and pool.available(t) for t in pool.targets)

    async def _limited(
        self, request: web.Request, body_meter: BodyMeter | None
    ) -> AsyncIterator[bytes]:
        seen = 0
        content = request.content
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._body_total
        while True:
            try:
                # A client may not hold a handler and an upstream connection open by going
                # quiet mid-body, nor by trickling it (the deadline is for the whole body);
                # nor can a chunked body aiohttp's parser gave up on, whose reader is never
                # told and would wait forever.
                idle = loop.time() + self._body_idle
                async with asyncio.timeout_at(min(idle, deadline)):
                    chunk = await content.readany()
            except TimeoutError as exc:
                if loop.time() >= deadline:
                    raise _BodyStalled(
                        f"the request body did not arrive within {self._body_total} seconds"
                    ) from exc
                raise _BodyStalled(
                    f"the request body stalled for {self._body_idle} seconds"
                ) from exc
            except Exception as exc:  # a disconnect or a malformed body
                raise _BodyBroken from exc
            if not chunk:
                return
            seen += len(chunk)
            if seen > self._max_body:
                # the upstream never receives a byte past the limit
                raise _BodyLimit
            if body_meter is not None:
                try:
                    await body_meter(len(chunk))
                except GatewayError as exc:
                    # charged before it is sent: the upstream never gets an unpaid byte
                    raise _BodyRefused(exc) from exc
            yield chunk

    def upstream_headers(
        self, request: web.Request, *, inject: Mapping[str, str], drop_authorization: bool
    ) -> CIMultiDict[str]:
        """What the upstream gets as headers, for a request or a WebSocket handshake alike."""
        headers = upstream_request_headers(
            request.headers,
            drop_authorization=drop_authorization,
            inject=inject,
            strip=self._strip,
        )
        self._forwarding_headers(request, headers)
        return headers

    def target(self, path: str) -> Upstream:
        """The upstream serving ``path``."""
        upstream = self._upstreams.pick(path)
        if upstream is None:
            raise UpstreamUnavailable("no upstream is configured for this path")
        return upstream

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("Forwarder used before the app started")
        return self._session

    def _forwarding_headers(self, request: web.Request, headers: CIMultiDict[str]) -> None:
        # A client's own X-Forwarded-* were stripped with the other spoofable headers; only a
        # trusted proxy in front of us may extend the chain it started.
        peer = request.remote or ""
        scheme = request.scheme
        host = request.headers.get(hdrs.HOST, "")
        if self._trusted and self._is_trusted(peer):
            incoming = request.headers
            chain = ", ".join(incoming.getall(hdrs.X_FORWARDED_FOR, ()))
            if chain:
                peer = f"{chain}, {peer}"
            scheme = incoming.get(hdrs.X_FORWARDED_PROTO, scheme)
            host = incoming.get(hdrs.X_FORWARDED_HOST, host)
        headers[hdrs.X_FORWARDED_FOR] = peer
        headers[hdrs.X_FORWARDED_PROTO] = scheme
        if host:
            headers[hdrs.X_FORWARDED_HOST] = host

    def _is_trusted(self, peer: str) -> bool:
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)


class StreamCut(Exception):
    """The body stream broke after the headers were sent: nothing more can be said to the client.

    Carries the response so the error boundary can finish the exchange quietly.
    """

    outcome = "stream_cut"

    def __init__(self, message: str, response: web.StreamResponse) -> None:
        super().__init__(message)
        self.response = response


class UpstreamBroken(StreamCut):
    """The upstream failed mid-body; the client connection was cut so it sees a short body."""

    outcome = "upstream_broken"


class ClientGone(StreamCut):
    """The client disconnected mid-body; the upstream connection is closed, not reused."""

    outcome = "client_disconnected"


class ClientStalled(ClientGone):
    """The client stopped reading the response; both connections were closed."""

    outcome = "client_stalled"


class _CoalescedResponse(web.StreamResponse):
    """A response whose head leaves in the same write as its first body bytes.

    One send instead of two for the common small answer. Only for an upstream whose first
    body bytes (or its end) arrived with its head: a head held back for a body still on its
    way would reach the client late, which a long poll or an event stream cannot afford."""

    # aiohttp's own switch (web.Response turns it off the same way); an aiohttp without it
    # sends the head at once, which is the plain StreamResponse's behaviour
    _send_headers_immediately = False


async def relay(
    request: web.Request,
    upstream: Response,
    extra_headers: Mapping[str, str],
    *,
    write_timeout: float = 60.0,
) -> web.StreamResponse:
    """Stream the upstream's status, headers and bytes to the client, untouched.

    A client that accepts no bytes for ``write_timeout`` seconds loses its connection, and
    the upstream connection is closed too (never pooled half-read), so a reader that stalls
    cannot hold a connection from the pool for ever."""
    headers = downstream_response_headers(upstream.headers)
    headers.update(extra_headers)
    kind = _CoalescedResponse if upstream.body_ready else web.StreamResponse
    response = kind(status=upstream.status, reason=upstream.reason, headers=headers)

    async def send(write: Awaitable[object], when: str) -> None:
        try:
            async with asyncio.timeout(write_timeout):
                await write
        except TimeoutError as exc:
            upstream.close()
            if request.transport is not None:
                request.transport.abort()
            raise ClientStalled(
                f"the client read nothing for {write_timeout} seconds {when}", response
            ) from exc
        except ConnectionError as exc:
            raise ClientGone(f"the client went away {when}", response) from exc

    await send(response.prepare(request), "before the response")
    request[HEADERS_SENT] = time.perf_counter()
    # Read and write are told apart: a failed read is the upstream's fault, a failed write
    # the client's, and each is finished differently.
    content = upstream.content
    while True:
        try:
            chunk = await content.readany()
        except UpstreamError as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.close()
            raise UpstreamBroken(f"the upstream failed mid-body: {exc!r}", response) from exc
        if not chunk:
            break
        await send(response.write(chunk), "mid-body")
    await send(response.write_eof(), "at the end of the body")
    return response
