"""Where OpenTelemetry spans go: a tracer provider batching them to an OTLP/HTTP collector.

Imported with gateway/otel.py, only when ``tracing.endpoint`` is set. Spans are exported
from the SDK's own thread, never on the request path; a full queue drops spans rather than
slowing requests, and stopping flushes what is queued within a bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.metadata
import logging
import threading

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

from gateway.settings import TracingSettings

log = logging.getLogger("gateway")


class SpanExport:
    """One process's tracer provider: built when the proxy app starts, flushed when it stops."""

    def __init__(self, settings: TracingSettings) -> None:
        self._settings = settings
        self._provider: TracerProvider | None = None

    def start(self) -> trace.Tracer:
        """Build the provider in the process that serves (its export thread lives as long
        as the app) and return the tracer whose spans it exports."""
        settings = self._settings
        if settings.endpoint is None:
            raise ValueError("tracing.endpoint is not set: nothing to export to")
        version = _version()
        attributes = {"service.name": settings.service_name}
        if version is not None:
            attributes["service.version"] = version
        # the exporter also reads OTEL_EXPORTER_OTLP_HEADERS (a collector's API key) and the
        # certificate variables; Resource.create adds OTEL_RESOURCE_ATTRIBUTES
        exporter = OTLPSpanExporter(
            endpoint=settings.endpoint, timeout=settings.export_timeout_seconds
        )
        provider = TracerProvider(
            resource=Resource.create(attributes),
            # a caller's sampled flag decides for its trace; the ratio only for new traces
            sampler=ParentBased(TraceIdRatioBased(settings.sample_ratio)),
            # close() flushes on shutdown; an exit hook would block on a gone collector
            shutdown_on_exit=False,
        )
        provider.add_span_processor(
            BatchSpanProcessor(
                exporter,
                max_queue_size=settings.max_queue_size,
                schedule_delay_millis=settings.schedule_delay_seconds * 1000,
                max_export_batch_size=settings.max_export_batch_size,
                export_timeout_millis=settings.export_timeout_seconds * 1000,
            )
        )
        self._provider = provider
        return provider.get_tracer("gateway", version)

    async def close(self) -> None:
        """Export the spans still queued, then stop, within ``export_timeout_seconds``.

        Off the event loop (which may still be serving, and in tests runs the collector),
        on a daemon thread: with the collector down the SDK would retry each batch until
        its own timeout, batch after batch, for up to 30 s; a process told to stop gives
        up on those spans rather than keep a rolling update waiting."""
        provider, self._provider = self._provider, None
        if provider is None:
            return
        loop = asyncio.get_running_loop()
        done = loop.create_future()

        def shutdown() -> None:
            try:
                provider.shutdown()
            finally:
                with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                    loop.call_soon_threadsafe(_finish, done)

        threading.Thread(target=shutdown, name="gateway-otel-shutdown", daemon=True).start()
        timeout = self._settings.export_timeout_seconds
        try:
            await asyncio.wait_for(asyncio.shield(done), timeout)
        except TimeoutError:
            log.warning(
                "tracing: the collector did not take the last spans within %ss; "
                "stopping without them",
                timeout,
            )


def _finish(done: asyncio.Future[None]) -> None:
    if not done.done():
        done.set_result(None)


def _version() -> str | None:
    try:
        return importlib.metadata.version("quota-gateway")
    except importlib.metadata.PackageNotFoundError:  # a checkout never installed
        return None
