"""Running the gateway: listeners, worker processes, and a graceful SIGTERM."""

from __future__ import annotations

import asyncio
import json
import logging
import multiprocessing
import multiprocessing.connection
import os
import shutil
import signal
import sys
import tempfile
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong
from prometheus_client.multiprocess import mark_process_dead

from gateway.app import Gateway, admin_app, build_gateway, open_store, proxy_app, server_options
from gateway.boundary import error_response
from gateway.errors import BadRequest, GatewayError, HeadersTooLarge, StoreUnavailable
from gateway.identity.keys import redact
from gateway.listener import PROXY_LISTENER
from gateway.metering.clock import SystemClock
from gateway.metrics import MULTIPROC_ENV
from gateway.settings import Address, Settings

log = logging.getLogger("gateway")


def run_loop(main: Coroutine[Any, Any, None]) -> None:
    """Run ``main`` on uvloop where it is installed (it roughly halves the event loop's share
    of every proxied request, measured with `make bench`), else on asyncio's own loop."""
    try:
        import uvloop
    except ImportError:
        asyncio.run(main)
        return
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(main)


class ServeError(Exception):
    """The gateway cannot start as configured; the message says what to change."""


class _JsonErrorHandler(web.RequestHandler):
    """aiohttp's connection handler, answering requests its parser refused in our JSON shape.

    A header over the size limit, too many headers or a malformed request line never reaches
    the app (and so the error boundary); aiohttp would answer a plain-text 400 that echoes the
    client's bytes and log a traceback for each. Bad input is the client's fault: one log line,
    and neither it nor the body repeats a credential the bytes carried.

    It also holds the optional cap on connections per client address.
    """

    _counted: tuple[_JsonErrorServer, str] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        server = self._manager
        if not isinstance(server, _JsonErrorServer) or server.address_cap <= 0:
            return
        peer = transport.get_extra_info("peername")
        address = str(peer[0]) if peer else ""
        self._counted = (server, address)
        held = server.per_address[address] = server.per_address.get(address, 0) + 1
        if held > server.address_cap:
            # one more socket from an address that already holds its share: answered and
            # closed at once, so a flood of stalled sockets cannot use up the descriptors
            log.info("refused a connection from %s: it holds %s already", address, held - 1)
            cast(asyncio.Transport, transport).write(_TOO_MANY_CONNECTIONS)
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted is not None:
            server, address = self._counted
            self._counted = None
            left = server.per_address.get(address, 1) - 1
            if left > 0:
                server.per_address[address] = left
            else:
                server.per_address.pop(address, None)
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if not isinstance(exc, HttpProcessingError):
            return super().handle_error(request, status, exc, message)
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent on this connection")
        error = _parse_error(exc)
        log.info("refused a malformed request from %s: %r", request.remote, error.message)
        response = error_response(error)
        response.force_close()
        return response


def _parse_error(exc: HttpProcessingError) -> GatewayError:
    if isinstance(exc, LineTooLong):
        limit = exc.args[1] if len(exc.args) > 1 else "the limit of"
        return HeadersTooLarge(f"the request line or a header field is longer than {limit} bytes")
    if exc.message.startswith("Too many headers"):
        return HeadersTooLarge("the request has more header fields than the gateway accepts")
    return BadRequest(f"malformed HTTP request: {redact(exc.message)[:200]}")


def _too_many_connections() -> bytes:
    body = json.dumps(
        {
            "code": "TOO_MANY_CONNECTIONS",
            "message": "this address holds as many open connections as the gateway allows",
        }
    ).encode()
    head = (
        "HTTP/1.1 429 Too Many Requests\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


_TOO_MANY_CONNECTIONS = _too_many_connections()


class _JsonErrorServer(web.Server):
    address_cap = 0
    per_address: dict[str, int]

    def __call__(self) -> web.RequestHandler:
        return _JsonErrorHandler(self, loop=self._loop, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose connections answer unparseable requests with the gateway's JSON,
    and which caps the connections one client address may hold (0: no cap). An app carrying
    a ``PROXY_LISTENER`` (the proxy app) is served through it, not through its router."""

    def __init__(
        self, app: web.Application, *, max_connections_per_address: int = 0, **kwargs: Any
    ) -> None:
        super().__init__(app, **kwargs)
        self._address_cap = max_connections_per_address

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # aiohttp offers no option for the connection handler's class, so the server it built
        # for the app is given the subclass above, which only changes how it makes handlers
        server.__class__ = _JsonErrorServer
        ours = cast(_JsonErrorServer, server)
        ours.address_cap = self._address_cap
        ours.per_address = {}
        listener = self._app.get(PROXY_LISTENER)
        if listener is not None:
            # the proxy port: the low-level handler in place of the app's router and chain
            ours.request_handler = listener.handle
        return ours


def check_workers(settings: Settings) -> None:
    if settings.workers > 1 and settings.store == "memory":
        raise ServeError(
            f"--workers {settings.workers} needs a shared store: the embedded memory store lives "
            "in one process, so each worker would count on its own. Use --store redis://HOST:6379 "
            "(or a Sentinel or Cluster URL) to run several workers."
        )


async def run_worker(
    settings: Settings,
    *,
    reuse_port: bool = False,
    with_admin: bool = True,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
    extra_sites: list[tuple[web.Application, Address]] | None = None,
) -> None:
    """Serve until SIGTERM or SIGINT, then stop accepting and let in-flight requests finish."""
    gateway = build_gateway(settings)
    # a store that does not answer now is said once, here, not at the first request
    await gateway.store.start()
    options = server_options(settings)
    grace = settings.shutdown_grace_seconds
    runners: list[GatewayRunner] = []
    apps: list[tuple[web.Application, Address, bool]] = [
        (proxy_app(gateway), settings.listen, reuse_port)
    ]
    if with_admin:
        apps.append((admin_app(gateway), settings.admin_listen, False))
    for app, address in extra_sites or []:
        apps.append((app, address, False))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.reloader.reload_soon, "SIGHUP")
    try:
        for app, address, reuse in apps:
            runner = GatewayRunner(app, shutdown_timeout=grace, **options)
            await runner.setup()
            runners.append(runner)
            site = web.TCPSite(
                runner,
                address.host,
                address.port,
                reuse_port=reuse or None,
                backlog=1024,
            )
            await site.start()
        log.info(
            "gateway listening on %s (admin %s), policy %s, store %s",
            settings.listen,
            settings.admin_listen if with_admin else "off",
            gateway.policy.current.name,
            settings.store.split("@")[-1],
        )
        gateway.metrics.workers.set(1)
        if on_ready is not None:
            await on_ready(gateway)
        await stop.wait()
        log.info("shutting down: finishing in-flight requests (up to %ss)", grace)
    finally:
        gateway.metrics.workers.set(0)
        # the proxy listener first, so nothing new arrives while the rest drains
        for runner in runners:
            await runner.cleanup()


async def require_store(settings: Settings) -> None:
    """Raise ServeError unless the configured store answers a ping (``require_store``)."""
    store = open_store(settings.store, SystemClock(), timeout_ms=settings.store_timeout_ms)
    try:
        await store.ping()
    except StoreUnavailable as exc:
        raise ServeError(
            f"the store does not answer at start ({exc}); not starting, as require_store is set"
        ) from exc
    finally:
        await store.close()


def raise_open_file_limit() -> None:
    """Lift the soft limit on open files to the hard limit, as Go programs do at start.

    Every client connection holds a descriptor, and the soft limit many systems hand a
    process (1024, or 256) runs out under a few hundred slow clients; past it accept()
    fails and healthy callers are reset. Workers inherit the raised limit."""
    try:
        import resource
    except ImportError:  # not on POSIX: nothing to raise
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 65536
    if soft != resource.RLIM_INFINITY and soft < target:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %s: %s", soft, exc)
            return
        log.info("raised the open-file limit from %s to %s", soft, target)


def serve(
    settings: Settings,
    *,
    on_ready: Callable[[Gateway], Awaitable[None]] | None = None,
    extra_sites: list[tuple[web.Application, Address]] | None = None,
) -> None:
    check_workers(settings)
    if settings.require_store:
        run_loop(require_store(settings))
    raise_open_file_limit()
    if settings.workers == 1:
        run_loop(run_worker(settings, on_ready=on_ready, extra_sites=extra_sites))
        return
    context = multiprocessing.get_context("spawn")
    workers = [
        context.Process(
            target=_worker_main, args=(settings, index == 0), name=f"gateway-worker-{index}"
        )
        for index in range(settings.workers)
    ]
    # each worker writes its metric values to files here; the scrape sums them (gateway.metrics)
    metrics_dir = tempfile.mkdtemp(prefix="gateway-metrics-")
    try:
        _run_workers(workers, metrics_dir)
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    failed = [w.name for w in workers if w.exitcode not in (0, -signal.SIGTERM)]
    if failed:
        raise ServeError(f"workers exited with errors: {', '.join(str(n) for n in failed)}")


def _run_workers(workers: Sequence[multiprocessing.process.BaseProcess], metrics_dir: str) -> None:
    # the variable is read when a worker imports prometheus_client, so it is set for the
    # spawned processes only: this process keeps its own in-memory values
    before = os.environ.get(MULTIPROC_ENV)
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        for worker in workers:
            worker.start()
    finally:
        if before is None:
            del os.environ[MULTIPROC_ENV]
        else:
            os.environ[MULTIPROC_ENV] = before

    def forward(signum: int, _frame: object) -> None:
        for worker in workers:
            if worker.pid is not None:
                os.kill(worker.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    # SIGHUP reloads the policy: every worker re-reads and validates the file itself
    signal.signal(signal.SIGHUP, forward)
    running = list(workers)
    while running:
        ended = multiprocessing.connection.wait([w.sentinel for w in running])
        for worker in [w for w in running if w.sentinel in ended]:
            worker.join()
            running.remove(worker)
            # its live gauges (in flight, accepting requests, store state) leave the sums, so
            # /readyz answers 503 while a worker is gone
            if worker.pid is not None:
                mark_process_dead(worker.pid, metrics_dir)  # type: ignore[no-untyped-call]


def _worker_main(settings: Settings, with_admin: bool) -> None:
    # a SIGHUP forwarded before the event loop installs its handler must not end the worker
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    logging.basicConfig(
        level=logging.INFO,
        stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(processName)s %(message)s",
    )
    # the admin listener (metrics, health, admin API) is served by the first worker only
    run_loop(run_worker(settings, reuse_port=True, with_admin=with_admin))
