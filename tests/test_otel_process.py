"""OpenTelemetry in a real `gateway serve`: never imported when off, exported and flushed on
SIGTERM when on, and a clear start-up error when the [otel] extra is missing.

The memory store is enough: these are about the process (imports, shutdown, start-up);
tests/test_otel.py holds the spans on memory and Redis.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from pathlib import Path

import aiohttp

from tests.conftest import ROOT, Upstream
from tests.gateway_process import Served, serve_gateway
from tests.otlp_collector import CLIENT, SERVER, Collector, only
from tests.redis_servers import free_port

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER = {"traceparent": f"00-{TRACE}-00f067aa0ba902b7-01"}
# every module's first import, with its time, on stderr (python -X importtime)
IMPORT_LOG = {"PYTHONPROFILEIMPORTTIME": "1"}


async def _one_request_then_sigterm(served: Served) -> None:
    """Serve one traced request, then stop the process and wait for it without blocking
    this loop (the collector and the upstream run on it)."""
    async with aiohttp.ClientSession() as session:
        await served.ready(session)
        async with session.get(served.proxy + "/health", headers=CALLER) as resp:
            assert resp.status == 200
    served.process.send_signal(signal.SIGTERM)
    async with asyncio.timeout(30):
        while served.process.poll() is None:
            await asyncio.sleep(0.05)
    assert served.process.returncode == 0


def _imported(log: str) -> set[str]:
    """Every module named in an import-time log."""
    return {
        line.rpartition("|")[2].strip()
        for line in log.splitlines()
        if line.startswith("import time:") and "|" in line
    }


def _tracing_code(modules: set[str]) -> set[str]:
    """Our tracing module, the SDK's tracing and its exporter. (redis-py 8 imports the SDK's
    metrics package itself when it is installed, for its own opt-in metrics; not ours.)"""
    ours = ("gateway.otel", "opentelemetry.sdk.trace", "opentelemetry.exporter")
    return {m for m in modules if m.startswith(ours)}


def _hide_opentelemetry(tmp_path: Path) -> Path:
    """A directory whose regular package ``opentelemetry``, first on the path, hides the
    installed one: as if the [otel] extra were not installed."""
    hidden = tmp_path / "hidden" / "opentelemetry"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("")
    return hidden.parent


async def test_serve_without_tracing_never_loads_tracing_code(
    upstream: Upstream, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    with serve_gateway("--upstream", str(upstream.url), log_path=log, env=IMPORT_LOG) as served:
        await _one_request_then_sigterm(served)
    imported = _imported(log.read_text())
    assert {"aiohttp", "gateway.pipeline", "gateway.trace"} <= imported  # the log works
    assert _tracing_code(imported) == set()
    assert "traceparent" in upstream.requests[-1].headers  # trace context needs no SDK


async def test_serve_without_tracing_needs_no_extra(upstream: Upstream, tmp_path: Path) -> None:
    log = tmp_path / "gateway.log"
    hidden = {"PYTHONPATH": f"{_hide_opentelemetry(tmp_path)}:{ROOT}"}
    with serve_gateway("--upstream", str(upstream.url), log_path=log, env=hidden) as served:
        await _one_request_then_sigterm(served)
    assert upstream.requests[-1].path == "/health"


async def test_serve_with_tracing_exports_and_flushes_on_sigterm(
    upstream: Upstream, collector: Collector, tmp_path: Path
) -> None:
    log = tmp_path / "gateway.log"
    args = ("--upstream", str(upstream.url), "--tracing-endpoint", collector.url)
    with serve_gateway(*args, log_path=log, env=IMPORT_LOG) as served:
        await _one_request_then_sigterm(served)
    # the default batch delay is 5 s: whatever was still queued went out on SIGTERM
    spans = collector.trace(TRACE)
    assert len(spans) == 2, spans  # /health meters nothing: no store decision
    client = only(spans, CLIENT)
    assert only(spans, SERVER).attributes["http.route"] == "/health"
    assert upstream.requests[-1].headers["traceparent"] == f"00-{TRACE}-{client.span_id}-01"
    assert spans[0].resource["service.name"] == "quota-gateway"
    assert "gateway.otel" in _tracing_code(_imported(log.read_text()))  # the control


def test_tracing_without_the_extra_stops_the_start_naming_it(tmp_path: Path) -> None:
    hidden = _hide_opentelemetry(tmp_path)
    config = tmp_path / "gateway.yaml"
    config.write_text("tracing:\n  endpoint: http://127.0.0.1:4318\n")
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "gateway",
            "serve",
            "--config",
            str(config),
            "--listen",
            f"127.0.0.1:{free_port()}",
            "--admin-listen",
            f"127.0.0.1:{free_port()}",
            "--policy",
            str(ROOT / "policies" / "agentstack.yaml"),
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": f"{hidden}:{ROOT}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines()[-1] == (
        "error: tracing.endpoint is set but the OpenTelemetry packages are not installed "
        "(opentelemetry is missing): pip install 'quota-gateway[otel]', or remove "
        "tracing.endpoint"
    )
