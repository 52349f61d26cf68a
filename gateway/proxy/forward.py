"""The streaming forwarder: one client session, bodies streamed both ways, errors translated."""

from __future__ import annotations

import ipaddress
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp import hdrs, web
from multidict import CIMultiDict
from yarl import URL

from gateway.errors import PayloadTooLarge, UpstreamTimeout, UpstreamUnavailable
from gateway.proxy.headers import downstream_response_headers, upstream_request_headers

IpNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@dataclass(frozen=True, slots=True)
class Upstream:
    prefix: str
    url: URL


class Upstreams:
    """Upstreams by path prefix; the longest matching prefix wins."""

    def __init__(self, upstreams: Sequence[Upstream]) -> None:
        self._by_length = sorted(upstreams, key=lambda u: -len(u.prefix))

    def pick(self, path: str) -> Upstream | None:
        for upstream in self._by_length:
            prefix = upstream.prefix
            if prefix == "/" or path == prefix or path.startswith(prefix.rstrip("/") + "/"):
                return upstream
        return None


class _BodyLimit(Exception):
    """Raised inside the upload stream when the body passes the limit."""


class Forwarder:
    def __init__(
        self,
        upstreams: Upstreams,
        *,
        max_body_bytes: int,
        connect_timeout: float,
        read_timeout: float,
        trusted_proxies: Sequence[IpNetwork] = (),
    ) -> None:
        self._session: aiohttp.ClientSession | None = None
        self._upstreams = upstreams
        self._max_body = max_body_bytes
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
        """Send the request upstream and yield the response once its headers have arrived."""
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
            data = self._limited(request)
            if declared is not None:
                headers[hdrs.CONTENT_LENGTH] = str(declared)
        assert self._session is not None, "Forwarder used before the app started"
        url = upstream.url.with_path(upstream.url.path.rstrip("/") + path, encoded=True)
        if request.query_string:
            url = url.with_query(request.query_string)
        try:
            async with self._session.request(
                request.method,
                url,
                headers=headers,
                data=data,
                allow_redirects=False,
                timeout=self._timeout,
                compress=False,
                chunked=None,
            ) as response:
                yield response
        except _BodyLimit as exc:
            raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes") from exc
        except (TimeoutError, aiohttp.ServerTimeoutError) as exc:
            raise UpstreamTimeout("the upstream did not answer in time") from exc
        except aiohttp.ClientError as exc:
            if isinstance(exc.__cause__, _BodyLimit) or isinstance(exc.__context__, _BodyLimit):
                raise PayloadTooLarge(f"the body is larger than {self._max_body} bytes") from exc
            raise UpstreamUnavailable("the upstream refused or dropped the connection") from exc

    async def _limited(self, request: web.Request) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in request.content.iter_any():
            seen += len(chunk)
            if seen > self._max_body:
                # the upstream never receives a byte past the limit
                raise _BodyLimit
            yield chunk

    def _forwarding_headers(self, request: web.Request, headers: CIMultiDict[str]) -> None:
        peer = request.remote or ""
        trusted = self._is_trusted(peer)
        incoming = request.headers
        chain = incoming.get("X-Forwarded-For") if trusted else None
        headers["X-Forwarded-For"] = f"{chain}, {peer}" if chain else peer
        headers["X-Forwarded-Proto"] = (
            incoming.get("X-Forwarded-Proto", request.scheme) if trusted else request.scheme
        )
        headers["X-Forwarded-Host"] = (
            incoming.get("X-Forwarded-Host", request.host) if trusted else request.host
        )

    def _is_trusted(self, peer: str) -> bool:
        if not self._trusted or not peer:
            return False
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return False
        return any(address in network for network in self._trusted)


async def relay(
    request: web.Request,
    upstream: aiohttp.ClientResponse,
    extra_headers: Mapping[str, str],
) -> web.StreamResponse:
    """Stream the upstream's status, headers and bytes to the client, untouched."""
    headers = downstream_response_headers(upstream.headers)
    headers.update(extra_headers)
    response = web.StreamResponse(status=upstream.status, reason=upstream.reason, headers=headers)
    await response.prepare(request)
    try:
        async for chunk in upstream.content.iter_any():
            await response.write(chunk)
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Headers are gone already: the only honest signal left is to cut the connection.
        if request.transport is not None:
            request.transport.close()
        raise UpstreamBroken(str(exc)) from exc
    await response.write_eof()
    return response


class UpstreamBroken(Exception):
    """The upstream failed after its headers were relayed; the client connection was cut."""
