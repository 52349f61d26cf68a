"""W3C trace context: continue the caller's trace, or start one, and pass it upstream.

The gateway is one hop of the trace: the upstream sees a ``traceparent`` whose parent id is
the gateway's own span id, so a tracing backend shows client -> gateway -> upstream. The
trace id goes into the access log line, which ties a log line to a trace.

With ``tracing:`` configured, OpenTelemetry spans are exported too (gateway/otel.py, loaded
through ``load_otel`` only then): the span ids in the upstream's traceparent are then the
exported spans'.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gateway.otel import Tracing

TRACEPARENT = "traceparent"
TRACESTATE = "tracestate"

# version-traceid-parentid-flags, lowercase hex only (W3C Trace Context, section 3.2);
# a future version may append fields after another dash
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
_ZERO_TRACE = "0" * 32
_ZERO_SPAN = "0" * 16
_MAX_TRACESTATE = 512  # the spec's recommended minimum a vendor must propagate


@dataclass(frozen=True, slots=True)
class TraceContext:
    trace_id: str
    span_id: str  # this hop's span: the parent id the upstream sees
    flags: str  # the caller's trace flags (sampled or not), kept as sent
    parent_id: str | None = None  # the caller's span, when it sent a valid traceparent
    state: str | None = None  # the caller's tracestate, passed on only with its traceparent

    @property
    def traceparent(self) -> str:
        return f"00-{self.trace_id}-{self.span_id}-{self.flags}"

    def upstream_headers(self) -> dict[str, str]:
        out = {TRACEPARENT: self.traceparent}
        if self.state:
            out[TRACESTATE] = self.state
        return out


def _new_span() -> str:
    return os.urandom(8).hex()


def continue_or_start(traceparent: str | None, tracestate: str | None = None) -> TraceContext:
    """The caller's trace with a new span for this hop; a new trace when the caller sent
    none or a malformed one (the spec: restart the trace, ignore its tracestate)."""
    parsed = _parse(traceparent) if traceparent is not None else None
    if parsed is None:
        return TraceContext(trace_id=os.urandom(16).hex(), span_id=_new_span(), flags="00")
    trace_id, parent_id, flags = parsed
    state = tracestate.strip() if tracestate else None
    if state is not None and (len(state) > _MAX_TRACESTATE or not state.isprintable()):
        state = None
    return TraceContext(trace_id, _new_span(), flags, parent_id, state or None)


def _parse(value: str) -> tuple[str, str, str] | None:
    match = _TRACEPARENT.fullmatch(value.strip())
    if match is None:
        return None
    version, trace_id, parent_id, flags, rest = match.groups()
    # version ff is forbidden; version 00 has exactly four fields
    if version == "ff" or (version == "00" and rest is not None):
        return None
    if trace_id == _ZERO_TRACE or parent_id == _ZERO_SPAN:
        return None
    return trace_id, parent_id, flags


#: what to install for OpenTelemetry spans
OTEL_EXTRA = "quota-gateway[otel]"


class TracingUnavailable(ValueError):
    """``tracing`` is configured but the OpenTelemetry packages are not installed."""


def load_otel() -> type[Tracing]:
    """gateway.otel's Tracing, imported now (the OpenTelemetry SDK with it), or a
    TracingUnavailable that says which extra to install."""
    try:
        from gateway.otel import Tracing
    except ImportError as exc:
        # a package of the extra (OpenTelemetry, or what it needs) is missing; a bug of ours
        # that happens to be an ImportError is not reported as one
        if exc.name is None or exc.name.split(".")[0] == "gateway":
            raise
        raise TracingUnavailable(
            f"tracing.endpoint is set but the OpenTelemetry packages are not installed "
            f"({exc.name} is missing): pip install '{OTEL_EXTRA}', or remove tracing.endpoint"
        ) from exc
    return Tracing
