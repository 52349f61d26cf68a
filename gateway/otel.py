"""OpenTelemetry spans for proxied requests, exported by OTLP/HTTP when ``tracing:`` is set.

Imported only then (``gateway.trace.load_otel``): an untraced gateway never loads this
module, the SDK's tracer or its exporter, and its request path holds one ``is not None``
test per traced step, nothing more.

Each request gets a span of its own (server kind) around the whole exchange, with two
children: the store's quota decision, and the upstream call (client kind). The upstream
span's id is the parent id of the ``traceparent`` the upstream receives, so a tracing
backend draws caller -> gateway -> upstream call -> upstream. Where the spans go, and how
they are batched and flushed: gateway/otel_export.py.

Attributes follow the OTel HTTP semantic conventions, plus ``gateway.*`` ones that the
access log also holds (ids, tier, route, outcome): never a credential, a header value or a
query string, which may carry a key.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Protocol, TypeVar

from aiohttp import web
from aiohttp.typedefs import Handler, Middleware
from opentelemetry import context, trace
from opentelemetry.trace import SpanKind, Status, StatusCode

from gateway.accesslog import ENTRY
from gateway.metering.store import Charge, Decision
from gateway.otel_export import SpanExport
from gateway.pipeline import OUTCOME_LABEL, ROUTE_LABEL, TIER_LABEL
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy
from gateway.settings import TracingSettings
from gateway.trace import TRACEPARENT, TraceContext

# the methods the HTTP conventions name; any other is reported as _OTHER
_METHODS = frozenset(
    {"CONNECT", "DELETE", "GET", "HEAD", "OPTIONS", "PATCH", "POST", "PUT", "TRACE", "QUERY"}
)
# outcomes that are the gateway's or the upstream's failure although a status went out
_FAILED_OUTCOMES = frozenset({"upstream_broken"})


class Answered(Protocol):
    """What the upstream span reads of an upstream response."""

    @property
    def status(self) -> int: ...

    @property
    def host(self) -> str: ...

    @property
    def port(self) -> int: ...


R = TypeVar("R", bound=Answered)


class Tracing:
    """The tracer provider of one process's proxy app and the hooks the pipeline calls."""

    def __init__(self, settings: TracingSettings, *, policy: PolicyHolder, store: str) -> None:
        self._policy = policy
        self._store = "memory" if store == "memory" else "redis"  # never the URL: a password
        self._export = SpanExport(settings)
        # until the app starts, and after it stops, spans go nowhere
        self._tracer: trace.Tracer = trace.NoOpTracer()
        self._patterns: tuple[Policy, dict[str, str]] | None = None

    # -- lifecycle (a cleanup_ctx of the proxy app) ------------------------------------------

    async def lifecycle(self, _app: web.Application) -> AsyncIterator[None]:
        self._tracer = self._export.start()
        yield
        self._tracer = trace.NoOpTracer()
        await self._export.close()

    # -- the gateway's span ------------------------------------------------------------------

    def middleware(self) -> Middleware:
        """The request's span, inside the access log (whose trace context it takes over) and
        outside the error boundary (so it sees the status every error was rendered to)."""

        @web.middleware
        async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
            entry = request[ENTRY]
            incoming = entry.trace
            assert incoming is not None  # the access log starts or continues one
            span = self._tracer.start_span(
                request.method if request.method in _METHODS else "HTTP",
                context=_remote_parent(incoming),
                kind=SpanKind.SERVER,
            )
            own = span.get_span_context()
            # the access log's trace_id and the upstream's traceparent now name this span
            entry.trace = TraceContext(
                trace_id=trace.format_trace_id(own.trace_id),
                span_id=trace.format_span_id(own.span_id),
                flags=_flags(incoming, own.trace_flags.sampled),
                parent_id=incoming.parent_id,
                state=incoming.state,
            )
            recording = span.is_recording()
            if recording:
                _request_attributes(span, request, entry.path, entry.request_id)
            token = context.attach(trace.set_span_in_context(span))
            try:
                response = await handler(request)
            except BaseException as exc:
                # the error boundary renders every error; only a cancellation gets here
                span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
                span.set_attribute("error.type", type(exc).__qualname__)
                raise
            else:
                if recording:
                    self._answer_attributes(span, request, response.status)
                return response
            finally:
                context.detach(token)
                span.end()

        return middleware

    def _answer_attributes(self, span: trace.Span, request: web.Request, status: int) -> None:
        entry = request[ENTRY]
        outcome = request.get(OUTCOME_LABEL, "forwarded")
        span.set_attribute("http.response.status_code", status)
        span.set_attribute("gateway.outcome", outcome)
        route = request.get(ROUTE_LABEL)
        if route is not None:
            span.set_attribute("gateway.route", route)
            pattern = self._pattern(route)
            if pattern is not None:
                span.set_attribute("http.route", pattern)
                span.update_name(f"{_method(request.method)} {pattern}")
        tier = request.get(TIER_LABEL)
        if tier is not None:
            span.set_attribute("gateway.tier", tier)
        if entry.account_id is not None:
            span.set_attribute("gateway.account_id", entry.account_id)
        if entry.project_id is not None:
            span.set_attribute("gateway.project_id", entry.project_id)
        if entry.shadow:
            span.set_attribute("gateway.shadow", list(entry.shadow))
        # a server span's status is an error for 5xx only: a 4xx is the caller's doing
        if status >= 500 or outcome in _FAILED_OUTCOMES:
            span.set_attribute("error.type", outcome if outcome != "forwarded" else str(status))
            span.set_status(Status(StatusCode.ERROR))

    def _pattern(self, route: str) -> str | None:
        """The matched route's pattern (``http.route``), by name in the current policy; a
        route a reload removed mid-request has none."""
        policy = self._policy.current
        if self._patterns is None or self._patterns[0] is not policy:
            self._patterns = (policy, {r.name: r.pattern for r in policy.routes})
        return self._patterns[1].get(route)

    # -- the children: the store decision and the upstream call ------------------------------

    async def store(self, deciding: Awaitable[Decision], charges: Sequence[Charge]) -> Decision:
        """Await the store's decision (not begun yet: a coroutine runs when awaited) in a
        span of its own."""
        span = self._tracer.start_span("store decision", attributes={"gateway.store": self._store})
        try:
            decision = await deciding
        except BaseException as exc:
            _failed(span, exc)
            raise
        else:
            span.set_attribute("gateway.decision", "admitted" if decision.admitted else "refused")
            if decision.refused is not None:
                span.set_attribute("gateway.meter", charges[decision.refused].meter)
            if decision.degraded:  # admitted on the fail-open allowance, without the store
                span.set_attribute("gateway.degraded", True)
            return decision
        finally:
            span.end()

    @asynccontextmanager
    async def upstream(
        self,
        opening: AbstractAsyncContextManager[R],
        method: str,
        inject: dict[str, str],
        trace_context: TraceContext,
    ) -> AsyncIterator[R]:
        """Enter ``opening`` (the forwarder's send) in a client span, and name that span as
        the parent in the upstream's ``traceparent``.

        ``inject`` is the header map ``opening`` sends: the forwarder reads it when entered,
        so the traceparent set here, before entering, is the one that goes out."""
        span = self._tracer.start_span(
            _method(method), kind=SpanKind.CLIENT, attributes={"http.request.method": method}
        )
        own = trace.format_span_id(span.get_span_context().span_id)
        inject[TRACEPARENT] = f"00-{trace_context.trace_id}-{own}-{trace_context.flags}"
        try:
            async with opening as response:
                span.set_attribute("http.response.status_code", response.status)
                span.set_attribute("server.address", response.host)
                span.set_attribute("server.port", response.port)
                if response.status >= 500:
                    span.set_attribute("error.type", str(response.status))
                    span.set_status(Status(StatusCode.ERROR))
                yield response
        except BaseException as exc:
            _failed(span, exc)
            raise
        finally:
            span.end()


def _remote_parent(incoming: TraceContext) -> context.Context:
    """The caller's span as the parent, or an empty context: a new trace (whatever span
    happens to be current must not become the parent of an unrelated request)."""
    if incoming.parent_id is None:
        return context.Context()
    caller = trace.SpanContext(
        trace_id=int(incoming.trace_id, 16),
        span_id=int(incoming.parent_id, 16),
        is_remote=True,
        trace_flags=trace.TraceFlags(int(incoming.flags, 16)),
    )
    # tracestate is passed on as received (gateway/trace.py); it is not parsed here, where a
    # hostile one would cost a warning per request
    return trace.set_span_in_context(trace.NonRecordingSpan(caller))


def _flags(incoming: TraceContext, sampled: bool) -> str:
    """The caller's trace flags with the sampled bit this gateway decided on."""
    flags = int(incoming.flags, 16) if incoming.parent_id is not None else 0
    return f"{(flags & ~1) | int(sampled):02x}"


def _method(method: str) -> str:
    return method if method in _METHODS else "HTTP"


def _request_attributes(span: trace.Span, request: web.Request, path: str, rid: str) -> None:
    method = request.method
    if method in _METHODS:
        span.set_attribute("http.request.method", method)
    else:
        span.set_attribute("http.request.method", "_OTHER")
        span.set_attribute("http.request.method_original", method[:64])
    span.set_attribute("url.scheme", request.scheme)
    span.set_attribute("url.path", path)  # never the query: it may carry a key
    span.set_attribute("gateway.request_id", rid)
    try:
        url = request.url  # from the Host header, which a client may garble
    except ValueError:
        return
    if url.host is not None:
        span.set_attribute("server.address", url.host)
    if url.port is not None:
        span.set_attribute("server.port", url.port)


def _failed(span: trace.Span, exc: BaseException) -> None:
    # the type only: a message may quote what a client sent, or a store URL
    span.set_attribute("error.type", type(exc).__qualname__)
    span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
