"""WebSocket tunnels: chosen after the decision, like the forwarder, for routes that allow
them. The upgrade is identified, gated and metered as one call; then messages are relayed
both ways until either side closes, the tunnel is idle too long, or its total time is up."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass

import aiohttp
from aiohttp import WSMsgType, hdrs, web

from gateway.errors import UpstreamCircuitOpen, UpstreamTimeout, UpstreamUnavailable
from gateway.proxy.forward import HEADERS_SENT, Delivery, Forwarder
from gateway.proxy.pool import CircuitOpen, Outcome

#: the client's handshake is between it and the gateway; the gateway makes its own upstream
_HANDSHAKE = frozenset(
    {
        "sec-websocket-key",
        "sec-websocket-version",
        "sec-websocket-extensions",
        "sec-websocket-protocol",
        "sec-websocket-accept",
    }
)
#: close code when the gateway ends a tunnel (RFC 6455 7.4.1: "going away")
GOING_AWAY = 1001


def is_upgrade(request: web.Request) -> bool:
    """A WebSocket opening handshake (RFC 6455 4.1): a GET asking to upgrade to websocket."""
    if request.method != hdrs.METH_GET:
        return False
    upgrade = request.headers.get(hdrs.UPGRADE, "").strip().lower()
    connection = request.headers.get(hdrs.CONNECTION, "").lower()
    return upgrade == "websocket" and "upgrade" in {t.strip() for t in connection.split(",")}


@dataclass(frozen=True, slots=True)
class TunnelLimits:
    idle_seconds: float = 300.0  # no message either way for this long closes the tunnel
    max_seconds: float = 3600.0  # a tunnel's whole life; 0: no bound
    max_message_bytes: int = 1024 * 1024
    connect_seconds: float = 5.0


class WebSocketTunnel:
    """Shares the forwarder's upstreams, header rules and connection pool."""

    def __init__(self, forwarder: Forwarder, limits: TunnelLimits) -> None:
        self._forwarder = forwarder
        self._limits = limits

    async def open(
        self,
        request: web.Request,
        path: str,
        *,
        inject: Mapping[str, str],
        drop_authorization: bool,
        delivery: Delivery,
    ) -> aiohttp.ClientWebSocketResponse:
        """The upstream end of the tunnel, once the upstream accepted the handshake.

        ``delivery.sent`` follows the forwarder's rule: false only when the connection was
        provably never made, so only then is the upgrade's call refunded."""
        upstream = self._forwarder.target(path)
        headers = self._forwarder.upstream_headers(
            request, inject=inject, drop_authorization=drop_authorization
        )
        for name in [n for n in headers if n.lower() in _HANDSHAKE]:
            headers.popall(name, None)
        protocols = tuple(
            p.strip()
            for value in request.headers.getall(hdrs.SEC_WEBSOCKET_PROTOCOL, ())
            for p in value.split(",")
            if p.strip()
        )
        try:
            target = upstream.pool.pick()
        except CircuitOpen as exc:
            raise UpstreamCircuitOpen(
                str(exc), headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))}
            ) from exc
        url = upstream.url_for(target, path, request.raw_path.partition("?")[2])
        # a tunnel counts as pending only while its handshake is under way: balancing long
        # tunnels by count would starve a target of short requests for their whole life
        upstream.pool.begin(target)
        outcome: Outcome = "failure"
        delivery.sent = True
        try:
            # the whole handshake, connect included, within the connect deadline
            async with asyncio.timeout(self._limits.connect_seconds):
                tunnel = await self._forwarder.session.ws_connect(
                    url,
                    headers=headers,
                    protocols=protocols,
                    timeout=aiohttp.ClientWSTimeout(ws_close=self._limits.connect_seconds),
                    max_msg_size=self._limits.max_message_bytes,
                    autoping=True,
                    compress=0,
                    autoclose=False,
                )
            outcome = "ok"
            return tunnel
        except aiohttp.ClientConnectorError as exc:
            outcome = "unreached"
            delivery.sent = False  # the connection was never made: nothing reached it
            raise UpstreamUnavailable("the upstream refused the connection") from exc
        except aiohttp.WSServerHandshakeError as exc:
            outcome = "ok" if exc.status < 500 else "failure"  # it answered: it is alive
            raise UpstreamUnavailable(
                f"the upstream refused the WebSocket handshake ({exc.status})"
            ) from exc
        except TimeoutError as exc:
            raise UpstreamTimeout("the upstream did not complete the handshake in time") from exc
        except aiohttp.ClientError as exc:
            raise UpstreamUnavailable("the upstream dropped the handshake") from exc
        finally:
            upstream.pool.done(target, outcome)

    async def relay(
        self,
        request: web.Request,
        upstream: aiohttp.ClientWebSocketResponse,
        headers: Mapping[str, str],
    ) -> web.WebSocketResponse:
        """Accept the client's handshake and relay messages until the tunnel ends."""
        client = web.WebSocketResponse(
            protocols=(upstream.protocol,) if upstream.protocol else (),
            max_msg_size=self._limits.max_message_bytes,
            autoping=True,
            compress=False,
            autoclose=False,
        )
        client.headers.update(headers)
        try:
            await client.prepare(request)
        except BaseException:
            await upstream.close(code=GOING_AWAY)
            raise
        request[HEADERS_SENT] = time.perf_counter()
        activity = [time.monotonic()]
        pumps = [
            asyncio.create_task(_pump(client, upstream, activity)),
            asyncio.create_task(_pump(upstream, client, activity)),
        ]
        try:
            await self._watch(pumps, activity)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for side in (upstream, client):
                if not side.closed:
                    await side.close(code=GOING_AWAY, message=b"gateway: tunnel ended")
        return client

    async def _watch(self, pumps: list[asyncio.Task[None]], activity: list[float]) -> None:
        """Return when either side has finished, or the idle or total deadline passes."""
        limits = self._limits
        ends = time.monotonic() + limits.max_seconds if limits.max_seconds > 0 else None
        while True:
            now = time.monotonic()
            wait = activity[0] + limits.idle_seconds - now
            if ends is not None:
                wait = min(wait, ends - now)
            if wait <= 0:
                return
            done, _ = await asyncio.wait(pumps, timeout=wait, return_when=asyncio.FIRST_COMPLETED)
            if done:
                return


async def _pump(
    source: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    sink: web.WebSocketResponse | aiohttp.ClientWebSocketResponse,
    activity: list[float],
) -> None:
    """Relay ``source``'s messages to ``sink`` until ``source`` closes; a close is passed on
    with its code, so each end learns why the other left."""
    while True:
        msg = await source.receive()
        activity[0] = time.monotonic()
        if msg.type == WSMsgType.TEXT:
            await sink.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sink.send_bytes(msg.data)
        elif msg.type == WSMsgType.CLOSE:
            code = msg.data if isinstance(msg.data, int) and msg.data else 1000
            await sink.close(code=code, message=(msg.extra or "").encode()[:120])
            return
        else:  # CLOSING, CLOSED, ERROR: the source is gone
            return
