"""`make bench-clients` (second half): the proxy port's listener alone, three shapes, one run.

The same handler (reads the raw path and a header, answers a small JSON body) served by:

- ``web.Application, gateway shape``: the proxy app's shape in gateway/app.py: a catch-all
  route with an expect handler, two pass-through middlewares (the access log's and the error
  boundary's places) and an ``on_response_prepare`` signal (the CORS hook's place);
- ``web.Application, bare``: the catch-all route only;
- ``gateway's listener``: the gateway shape served as `gateway serve` serves the proxy port:
  GatewayRunner and gateway/listener.py (aiohttp's low-level handler, the same middlewares and
  signal, composed once);
- ``low-level web.Server``: aiohttp's low-level server (aiohttp.web_server.Server) calling the
  handler with a ``BaseRequest``: no router, no middlewares, no signals.

Each runs in its own process on the event loop `gateway serve` uses, one worker, loaded in
turn by the same load generator (wrk when installed); rounds are interleaved and the median of
each figure kept. Compare the ratios within one run: the machine may be shared.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from bench.load import Result, run
from bench.loop import new_loop
from bench.run import cpu_seconds, median
from gateway.listener import PROXY_LISTENER, ProxyListener
from gateway.server import GatewayRunner

ROOT = Path(__file__).resolve().parent.parent
SMALL = b'{"ok":true,"items":[1,2,3],"note":"a small JSON answer"}'
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]


async def answer(request: web.BaseRequest) -> web.StreamResponse:
    request.headers.get("Authorization")
    return web.Response(body=SMALL, content_type="application/json")


def _passthrough() -> Callable[..., Awaitable[web.StreamResponse]]:
    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        return await handler(request)

    return middleware


async def _no_expect(request: web.Request) -> None:
    return None


async def _prepared(request: web.Request, response: web.StreamResponse) -> None:
    return None


def application(shape: str) -> web.Application:
    if shape == "bare":
        app = web.Application()
        app.router.add_route("*", "/{tail:(?s:.*)}", answer)
        return app
    middlewares = [_passthrough(), _passthrough()]
    app = web.Application(middlewares=middlewares)
    app.on_response_prepare.append(_prepared)
    route = app.router.add_route("*", "/{tail:(?s:.*)}", answer, expect_handler=_no_expect)
    if shape == "listener":
        # as gateway/app.py builds the proxy app: GatewayRunner then serves it through this
        app[PROXY_LISTENER] = ProxyListener(app, route, middlewares)
    return app


def serve(shape: str, port: int) -> None:
    loop = new_loop()
    asyncio.set_event_loop(loop)

    async def start() -> web.BaseRunner:
        if shape == "server":
            runner: web.BaseRunner = web.ServerRunner(web.Server(answer, access_log=None))
        elif shape == "listener":
            runner = GatewayRunner(application(shape), access_log=None)
        else:
            runner = web.AppRunner(application(shape), access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        return runner

    runner = loop.run_until_complete(start())
    loop.add_signal_handler(signal.SIGTERM, loop.stop)
    try:
        loop.run_forever()
    finally:
        loop.run_until_complete(runner.cleanup())


SHAPES = {
    "web.Application, gateway shape": "gateway",
    "gateway's listener (same shape)": "listener",
    "web.Application, bare": "bare",
    "low-level web.Server": "server",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    options = parser.parse_args()
    if options.serve:
        serve(options.serve[0], int(options.serve[1]))
        return
    from tests.redis_servers import free_port

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    servers: dict[str, tuple[subprocess.Popen[bytes], str]] = {}
    try:
        for label, shape in SHAPES.items():
            port = free_port()
            command = [sys.executable, "-m", "bench.listeners", "--serve", shape, str(port)]
            servers[label] = (subprocess.Popen(command, cwd=ROOT, env=env), port_url(port))
        for _, url in servers.values():
            _wait_for(url)
        found: dict[str, list[Result]] = {label: [] for label in servers}
        cpu: dict[str, list[float]] = {label: [] for label in servers}
        for _ in range(options.rounds):
            for label, (proc, url) in servers.items():
                run(url, {}, connections=4, seconds=1)
                before = cpu_seconds(proc.pid)
                result = run(url, {}, connections=options.connections, seconds=options.seconds)
                found[label].append(result)
                served = result.requests_per_second * options.seconds
                cpu[label].append((cpu_seconds(proc.pid) - before) / max(served, 1) * 1e6)
    finally:
        for proc, _ in servers.values():
            proc.terminate()
        for proc, _ in servers.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:  # a loaded machine; the figures are kept
                proc.kill()
                proc.wait()
    print_table({label: median(results) for label, results in found.items()}, options)
    print("\nCPU time of the listener's process per request (user + system), median:")
    for label, figures in cpu.items():
        print(f"{label:<34}{sorted(figures)[len(figures) // 2]:>8.0f} us")


def port_url(port: int) -> str:
    return f"http://127.0.0.1:{port}/api/logic/bench?a=1"


def print_table(results: dict[str, Result], options: argparse.Namespace) -> None:
    base = next(iter(results.values()))
    print(
        f"\nlistener alone, one worker, {options.connections} connections, load by {base.tool},"
        f" median of {options.rounds} interleaved rounds; x = ratio to the first row\n"
    )
    print(f"{'listener':<34}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}{'x':>7}{'non-2xx':>9}")
    for label, r in results.items():
        print(
            f"{label:<34}{r.requests_per_second:>9.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
            f"{r.requests_per_second / base.requests_per_second:>7.2f}{r.non_2xx:>9}"
        )
    print("\nthe machine may be shared: compare ratios within one run")


def _wait_for(url: str) -> None:
    import urllib.request

    deadline = time.monotonic() + 60  # a loaded machine starts five processes slowly
    while True:
        try:
            urllib.request.urlopen(url, timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url} did not start") from None
            time.sleep(0.05)


if __name__ == "__main__":
    main()
