"""The streaming forwarder: one client session, bodies streamed both ways, errors translated."""

from __future__ import annotations

import asyncio
import ipaddress
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
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.proxy.headers import (
    downstream_response_headers,
    header_family,
    upstream_request_headers,
)

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

#: when a relayed response's headers went out (perf_counter): request latency ends there,
#: not when a body of any size has finished streaming
HEADERS_SENT = web.RequestKey("gateway.headers_sent", float)


@dataclass(frozen=True, slots=True)
class Upstream:
    prefix: str
    url: URL
    # computed once: the prefix test and the URL head every forwarded path is appended to
    _under: str = field(init=False, repr=False, compare=False)
    _base: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_under", self.prefix.rstrip("/") + "/")
        # scheme, credentials, host and port as configured, without the trailing slash
        authority = str(self.url.with_path("/"))[:-1]
        object.__setattr__(self, "_base", authority + self.url.raw_path.rstrip("/"))

    def serves(self, path: str) -> bool:
        return self._under == "/" or path == self.prefix or path.startswith(self._under)

    def url_for(self, encoded_path: str, raw_query: str) -> URL:
        """The upstream URL for a canonical, already encoded path and the client's raw query.

        Built from strings with ``encoded=True`` so neither the path nor the query is decoded
        and re-encoded on the way: the upstream gets exactly the bytes that were matched."""
        target = self._base + encoded_path
        if raw_query:
            target += "?" + raw_query
        return URL(target, encoded=True)


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


class _Observed:
    """One upstream's metric children, bound once so a request pays no label lookup."""

    def __init__(self, metrics: Metrics, label: str) -> None:
        self.seconds = metrics.upstream_seconds.labels(label)
        self.refused = metrics.upstream_errors.labels(label, "refused")
        self.timeout = metrics.upstream_errors.labels(label, "timeout")
        self.broken = metrics.upstream_errors.labels(label, "broken")


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
        trusted_proxies: Sequence[IpNetwork] = (),
        metrics: Metrics,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._upstreams = upstreams
        # labelled by path prefix: bounded by the config, and free of any credentials in URLs
        self._observed = {u.prefix: _Observed(metrics, u.prefix) for u in upstreams}
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
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._trusted = tuple(trusted_proxies)

    def attach(self, session: aiohttp.ClientSession) -> None:
        """Use ``session`` (opened when the app starts) for every upstream request."""
        # aiohttp re-sends a GET/PUT/DELETE/... once, silently, when the connection breaks
        # before the response: the upstream may then act twice on what the client sent
        # once, and be paid once. It has no public switch; refuse to run where the private
        # one is gone rather than run with the re-send (tests/test_adversarial_delivery.py).
        if not hasattr(session, "_retry_connection"):
            raise RuntimeError("this aiohttp cannot turn off its re-send of idempotent requests")
        session._retry_connection = False
        self._session = session

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
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send the request upstream, at most once, and yield the response once its headers
        have arrived.

        ``path`` is the canonical encoded path, the one the route was matched on. Only the
        sending is translated into gateway errors: whatever the caller does with the yielded
        response (relaying it to a client that may vanish) keeps its own exceptions.
        ``delivery`` tells the caller afterwards whether the upstream may have received it.
        """
        upstream = self._upstreams.pick(path)
        if upstream is None:
            raise UpstreamUnavailable("no upstream is configured for this path")
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes")
        headers = upstream_request_headers(
            request.headers,
            drop_authorization=drop_authorization,
            inject=inject,
            strip=self._strip,
        )
        self._forwarding_headers(request, headers)
        data = None
        if request.body_exists:
            data = self._limited(request, body_meter)
            if declared is not None:
                headers[hdrs.CONTENT_LENGTH] = str(declared)
        if self._session is None:
            raise RuntimeError("Forwarder used before the app started")
        url = upstream.url_for(path, request.raw_path.partition("?")[2])
        observed = self._observed[upstream.prefix]
        started = time.perf_counter()
        delivery.sent = True
        try:
            response = await self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout,
                compress=False,
                chunked=None,
            )
        except aiohttp.ConnectionTimeoutError as exc:
            # no connection in time (pool slot or connect): not a byte was written
            delivery.sent = False
            if self._pool_size and self._relaying >= self._pool_size:
                raise GatewayBusy(
                    "every upstream connection is busy relaying a response; try again",
                    headers={"Retry-After": "1"},
                ) from exc
            observed.timeout.inc()
            raise UpstreamTimeout("the upstream did not accept a connection in time") from exc
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            observed.timeout.inc()
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except aiohttp.ClientConnectorError as exc:
            # refused, unreachable, or the TLS handshake failed: nothing was written
            delivery.sent = False
            observed.refused.inc()
            raise UpstreamUnavailable("the upstream refused the connection") from exc
        except aiohttp.ClientError as exc:
            # aiohttp wraps what the upload stream raised: those are the client's doing, and
            # must not count against the upstream
            if isinstance(exc.__cause__, _BodyLimit):
                raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes") from exc
            if isinstance(exc.__cause__, _BodyBroken):
                raise BadRequest("the request body broke off before it was complete") from exc
            if isinstance(exc.__cause__, _BodyStalled):
                raise RequestTimeout(str(exc.__cause__)) from exc
            if isinstance(exc.__cause__, _BodyRefused):
                raise exc.__cause__.error from exc
            observed.refused.inc()
            raise UpstreamUnavailable("the upstream dropped the connection") from exc
        observed.seconds.observe(time.perf_counter() - started)
        self._relaying += 1
        try:
            yield response
        except UpstreamBroken:
            observed.broken.inc()
            raise
        finally:
            # back to the pool when the body was read to the end, closed otherwise
            self._relaying -= 1
            response.release()

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


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
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
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)

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
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already: the only honest signal left is to cut the connection.
            if request.transport is not None:
                request.transport.close()
            raise UpstreamBroken(f"the upstream failed mid-body: {exc!r}", response) from exc
        if not chunk:
            break
        await send(response.write(chunk), "mid-body")
    await send(response.write_eof(), "at the end of the body")
    return response
