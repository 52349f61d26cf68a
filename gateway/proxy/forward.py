"""The streaming forwarder: one client session, bodies streamed both ways, errors translated."""

from __future__ import annotations

import asyncio
import ipaddress
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import (
    BadRequest,
    PayloadTooLarge,
    RequestTimeout,
    UpstreamTimeout,
    UpstreamUnavailable,
)
from gateway.metrics import Metrics
from gateway.proxy.expect import send_continue
from gateway.proxy.headers import downstream_response_headers, upstream_request_headers

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


class _BodyLimit(Exception):
    """Raised inside the upload stream when the body passes the limit."""


class _BodyBroken(Exception):
    """Raised inside the upload stream when the client's body breaks off or is malformed."""


class _BodyStalled(Exception):
    """Raised inside the upload stream when the client goes silent mid-body."""


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
        trusted_proxies: Sequence[IpNetwork] = (),
        metrics: Metrics,
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._upstreams = upstreams
        # labelled by path prefix: bounded by the config, and free of any credentials in URLs
        self._observed = {u.prefix: _Observed(metrics, u.prefix) for u in upstreams}
        self._max_body = max_body_bytes
        # the longest either side may go silent mid-exchange: the upstream before answering
        # or between body chunks, the client between chunks of its body
        self._body_idle = read_timeout
        self._timeout = aiohttp.ClientTimeout(
            total=None,
            connect=connect_timeout,
            sock_connect=connect_timeout,
            sock_read=read_timeout,
        )
        self._trusted = tuple(trusted_proxies)

    def attach(self, session: aiohttp.ClientSession) -> None:
        """Use ``session`` (opened when the app starts) for every upstream request."""
        self._session = session

    @asynccontextmanager
    async def open(
        self,
        request: web.Request,
        path: str,
        *,
        inject: Mapping[str, str],
        drop_authorization: bool,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """Send the request upstream and yield the response once its headers have arrived.

        ``path`` is the canonical encoded path, the one the route was matched on. Only the
        sending is translated into gateway errors: whatever the caller does with the yielded
        response (relaying it to a client that may vanish) keeps its own exceptions.
        """
        upstream = self._upstreams.pick(path)
        if upstream is None:
            raise UpstreamUnavailable("no upstream is configured for this path")
        declared = request.content_length
        if declared is not None and declared > self._max_body:
            raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes")
        headers = upstream_request_headers(
            request.headers, drop_authorization=drop_authorization, inject=inject
        )
        self._forwarding_headers(request, headers)
        data = None
        if request.body_exists:
            # admitted by every check: only now is a client waiting on Expect told to send
            await send_continue(request)
            data = self._limited(request)
            if declared is not None:
                headers[hdrs.CONTENT_LENGTH] = str(declared)
        if self._session is None:
            raise RuntimeError("Forwarder used before the app started")
        url = upstream.url_for(path, request.raw_path.partition("?")[2])
        observed = self._observed[upstream.prefix]
        started = time.perf_counter()
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
        except TimeoutError as exc:  # aiohttp's ServerTimeoutError is one too
            observed.timeout.inc()
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            # aiohttp wraps what the upload stream raised: those are the client's doing, and
            # must not count against the upstream
            if isinstance(exc.__cause__, _BodyLimit):
                raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes") from exc
            if isinstance(exc.__cause__, _BodyBroken):
                raise BadRequest("the request body broke off before it was complete") from exc
            if isinstance(exc.__cause__, _BodyStalled):
                raise RequestTimeout(
                    f"the request body stalled for {self._body_idle} seconds"
                ) from exc
            observed.refused.inc()
            raise UpstreamUnavailable("the upstream refused or dropped the connection") from exc
        observed.seconds.observe(time.perf_counter() - started)
        try:
            yield response
        except UpstreamBroken:
            observed.broken.inc()
            raise
        finally:
            # back to the pool when the body was read to the end, closed otherwise
            response.release()

    async def _limited(self, request: web.Request) -> AsyncIterator[bytes]:
        seen = 0
        content = request.content
        while True:
            try:
                # A client may not hold a handler and an upstream connection open by going
                # quiet mid-body; nor can a chunked body aiohttp's parser gave up on, whose
                # reader is never told and would wait forever.
                async with asyncio.timeout(self._body_idle):
                    chunk = await content.readany()
            except TimeoutError as exc:
                raise _BodyStalled from exc
            except Exception as exc:  # a disconnect or a malformed body
                raise _BodyBroken from exc
            if not chunk:
                return
            seen += len(chunk)
            if seen > self._max_body:
                # the upstream never receives a byte past the limit
                raise _BodyLimit
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


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    extra_headers: Mapping[str, str],
) -> web.StreamResponse:
    """Stream the upstream's status, headers and bytes to the client, untouched."""
    headers = downstream_response_headers(upstream.headers)
    headers.update(extra_headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    try:
        await response.prepare(request)
    except ConnectionError as exc:
        raise ClientGone("the client went away before the response", response) from exc
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
        try:
            await response.write(chunk)
        except ConnectionError as exc:
            raise ClientGone("the client went away mid-body", response) from exc
    try:
        await response.write_eof()
    except ConnectionError as exc:
        raise ClientGone("the client went away at the end of the body", response) from exc
    return response
