"""A local OTLP/HTTP trace collector: POST /v1/traces on loopback, protobuf decoded with
opentelemetry-proto (what a real collector or Jaeger receives from the gateway)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as ProtoSpan
from opentelemetry.proto.trace.v1.trace_pb2 import Status as ProtoStatus

SERVER = ProtoSpan.SPAN_KIND_SERVER
CLIENT = ProtoSpan.SPAN_KIND_CLIENT
INTERNAL = ProtoSpan.SPAN_KIND_INTERNAL
ERROR = ProtoStatus.STATUS_CODE_ERROR
UNSET = ProtoStatus.STATUS_CODE_UNSET


@dataclass(frozen=True)
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_id: str  # "" for a root span
    attributes: dict[str, Any]
    status: int
    resource: dict[str, Any]


def _value(value: AnyValue) -> Any:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        return [_value(v) for v in value.array_value.values]
    return getattr(value, kind) if kind else None


@dataclass
class Collector:
    """What reached POST /v1/traces, span by span, in arrival order."""

    spans: list[Span] = field(default_factory=list)
    content_types: list[str] = field(default_factory=list)
    url: str = ""
    _arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        self.content_types.append(request.content_type)
        message = ExportTraceServiceRequest()
        message.ParseFromString(await request.read())
        for resource_spans in message.resource_spans:
            resource = {a.key: _value(a.value) for a in resource_spans.resource.attributes}
            for scope_spans in resource_spans.scope_spans:
                for span in scope_spans.spans:
                    self.spans.append(
                        Span(
                            name=span.name,
                            kind=span.kind,
                            trace_id=span.trace_id.hex(),
                            span_id=span.span_id.hex(),
                            parent_id=span.parent_span_id.hex(),
                            attributes={a.key: _value(a.value) for a in span.attributes},
                            status=span.status.code,
                            resource=resource,
                        )
                    )
        self._arrived.set()
        return web.Response(
            body=ExportTraceServiceResponse().SerializeToString(),
            content_type="application/x-protobuf",
        )

    def trace(self, trace_id: str) -> list[Span]:
        return [s for s in self.spans if s.trace_id == trace_id]

    async def wait_for(self, done: Callable[[], bool], seconds: float = 20) -> None:
        """Return once ``done()`` holds after an export; fail after ``seconds``."""
        async with asyncio.timeout(seconds):
            while not done():
                self._arrived.clear()
                await self._arrived.wait()

    async def wait_trace(self, trace_id: str, count: int) -> list[Span]:
        await self.wait_for(lambda: len(self.trace(trace_id)) >= count)
        return self.trace(trace_id)


def collector_app(collector: Collector) -> web.Application:
    app = web.Application()
    app.router.add_post("/v1/traces", collector.handle)
    return app


def only(spans: list[Span], kind: int) -> Span:
    found = [s for s in spans if s.kind == kind]
    assert len(found) == 1, found
    return found[0]
