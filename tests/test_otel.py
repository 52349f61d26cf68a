"""OpenTelemetry spans over real HTTP: the gateway exports to a local OTLP/HTTP collector.

Each proxied request gives a server span with a store-decision child and an upstream (client)
child; the trace is the caller's, and the upstream's traceparent names the upstream span.
The store span is the store's decision, so every test runs on memory and on Redis.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from gateway.settings import TracingSettings
from tests.conftest import GatewayFactory, Harness
from tests.live_scrape import closed_port
from tests.ops_policy import ops_policy, write_policy
from tests.otlp_collector import (
    CLIENT,
    ERROR,
    INTERNAL,
    SERVER,
    UNSET,
    Collector,
    only,
)

STORES = ("memory", "redis")

CALLER_TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
CALLER_SPAN = "00f067aa0ba902b7"


def caller(flags: str = "01", trace_id: str = CALLER_TRACE) -> dict[str, str]:
    return {"traceparent": f"00-{trace_id}-{CALLER_SPAN}-{flags}"}


Traced = Callable[..., Awaitable[tuple[Harness, dict[str, str]]]]


@pytest.fixture
def traced(make_gateway: GatewayFactory, collector: Collector, tmp_path: Path) -> Traced:
    """A gateway exporting to the collector, on a one-route policy (a day's allowance of
    ``free_calls``), and the headers of a caller on it."""

    async def make(
        free_calls: int = 100, tracing: dict[str, Any] | None = None, **overrides: Any
    ) -> tuple[Harness, dict[str, str]]:
        path = tmp_path / "ops.yaml"
        write_policy(path, ops_policy(free_calls=free_calls))
        settings = TracingSettings(
            endpoint=collector.url,
            service_name="edge-gateway",
            schedule_delay_seconds=0.01,
        )
        gw = await make_gateway(
            str(path.with_suffix("")),
            policy_watch_seconds=0,
            tracing=dataclasses.replace(settings, **(tracing or {})),
            **overrides,
        )
        return gw, await gw.caller("free", "k_")

    return make


def upstream_traceparent(gw: Harness) -> list[str]:
    return gw.upstream.requests[-1].headers["traceparent"].split("-")


async def test_a_proxied_request_exports_three_spans_of_the_callers_trace(
    traced: Traced, collector: Collector, store_kind: str
) -> None:
    gw, headers = await traced()
    resp = await gw.client.get("/api/things?api_key=k_secret", headers={**headers, **caller()})
    assert resp.status == 200
    spans = await collector.wait_trace(CALLER_TRACE, 3)
    assert len(spans) == 3
    server, store, upstream = only(spans, SERVER), only(spans, INTERNAL), only(spans, CLIENT)

    # the gateway's span continues the caller's; both others are its children
    assert server.parent_id == CALLER_SPAN
    assert store.parent_id == server.span_id
    assert upstream.parent_id == server.span_id
    # the upstream's parent is the upstream span, in the caller's trace, still sampled
    assert upstream_traceparent(gw) == ["00", CALLER_TRACE, upstream.span_id, "01"]

    assert server.name == "GET /api/**"
    assert server.attributes == {
        "http.request.method": "GET",
        "url.scheme": "http",
        "url.path": "/api/things",
        "server.address": "127.0.0.1",
        "server.port": gw.client.port,
        "http.route": "/api/**",
        "http.response.status_code": 200,
        "gateway.request_id": resp.headers["X-Request-Id"],
        "gateway.route": "api",
        "gateway.tier": "free",
        "gateway.account_id": server.attributes["gateway.account_id"],
        "gateway.outcome": "forwarded",
    }
    assert server.attributes["gateway.account_id"]
    assert server.status == UNSET
    assert store.name == "store decision"
    assert store.attributes == {"gateway.store": store_kind, "gateway.decision": "admitted"}
    assert upstream.name == "GET"
    assert upstream.attributes == {
        "http.request.method": "GET",
        "http.response.status_code": 200,
        "server.address": "127.0.0.1",
        "server.port": URL(str(gw.upstream.url)).port,
    }
    assert server.resource["service.name"] == "edge-gateway"
    assert collector.content_types == ["application/x-protobuf"] * len(collector.content_types)
    # no credential reaches the collector: neither the key nor the query that carried one
    key = headers["Authorization"].removeprefix("Bearer ")
    for span in spans:
        for value in span.attributes.values():
            assert key not in str(value), (span.name, value)
            assert "k_secret" not in str(value), (span.name, value)


async def test_a_refused_request_has_the_outcome_on_its_span_and_no_upstream_span(
    traced: Traced, collector: Collector
) -> None:
    gw, headers = await traced(free_calls=1)
    assert (await gw.client.get("/api/a", headers=headers)).status == 200
    resp = await gw.client.get("/api/b", headers={**headers, **caller()})
    assert resp.status == 429
    spans = await collector.wait_trace(CALLER_TRACE, 2)
    assert len(gw.upstream.requests) == 1
    server, store = only(spans, SERVER), only(spans, INTERNAL)
    assert [s for s in spans if s.kind == CLIENT] == []
    assert server.attributes["gateway.outcome"] == "quota_exceeded"
    assert server.attributes["http.response.status_code"] == 429
    assert server.status == UNSET  # a 4xx is the caller's doing, not the gateway's error
    assert store.attributes["gateway.decision"] == "refused"
    assert store.attributes["gateway.meter"] == "calls"
    assert store.parent_id == server.span_id


async def test_an_unsampled_caller_trace_is_not_exported(
    traced: Traced, collector: Collector
) -> None:
    gw, headers = await traced()
    resp = await gw.client.get("/api/x", headers={**headers, **caller("00")})
    assert resp.status == 200
    _, trace_id, parent, flags = upstream_traceparent(gw)
    # passed on unsampled, with a span id of the gateway's own
    assert (trace_id, flags) == (CALLER_TRACE, "00")
    assert parent != CALLER_SPAN
    # a sampled request after it: its spans are exported, and they are all there is
    other = "0af7651916cd43dd8448eb211c80319c"
    await gw.client.get("/api/y", headers={**headers, **caller("01", other)})
    await collector.wait_trace(other, 3)
    assert {s.trace_id for s in collector.spans} == {other}


async def test_a_new_trace_is_sampled_by_the_ratio_and_logged_with_its_id(
    traced: Traced, collector: Collector, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw, headers = await traced(access_log=str(log))
    assert (await gw.client.get("/api/x", headers=headers)).status == 200
    _, trace_id, parent, flags = upstream_traceparent(gw)
    assert flags == "01"  # the gateway sampled the trace it started: the upstream may too
    spans = await collector.wait_trace(trace_id, 3)
    server = only(spans, SERVER)
    assert server.parent_id == ""  # the root
    assert parent == only(spans, CLIENT).span_id
    # the access log names the exported trace
    await gw.client.close()  # writes the access log's last batch
    assert json.loads(log.read_text().splitlines()[-1])["trace_id"] == trace_id


async def test_a_zero_ratio_samples_no_new_trace_but_honours_a_sampled_caller(
    traced: Traced, collector: Collector
) -> None:
    gw, headers = await traced(tracing={"sample_ratio": 0.0})
    assert (await gw.client.get("/api/x", headers=headers)).status == 200
    unsampled = upstream_traceparent(gw)
    assert unsampled[3] == "00"
    # parent-based: the caller's sampled flag wins over the ratio
    assert (await gw.client.get("/api/y", headers={**headers, **caller()})).status == 200
    await collector.wait_trace(CALLER_TRACE, 3)
    assert {s.trace_id for s in collector.spans} == {CALLER_TRACE}


async def test_upstream_failures_mark_the_spans_as_errors(
    traced: Traced, collector: Collector
) -> None:
    refused = URL(f"http://127.0.0.1:{closed_port()}")
    gw, headers = await traced(upstreams=(("/", refused),))
    resp = await gw.client.get("/api/x", headers={**headers, **caller()})
    assert resp.status == 502
    spans = await collector.wait_trace(CALLER_TRACE, 3)
    server, upstream = only(spans, SERVER), only(spans, CLIENT)
    assert (server.status, server.attributes["error.type"]) == (ERROR, "upstream_error")
    assert server.attributes["http.response.status_code"] == 502
    assert (upstream.status, upstream.attributes["error.type"]) == (ERROR, "UpstreamUnavailable")
    assert only(spans, INTERNAL).status == UNSET  # the store did its part


async def test_a_slow_upstream_and_an_upstream_5xx_are_errors_too(
    traced: Traced, collector: Collector
) -> None:
    gw, headers = await traced(read_timeout_seconds=0.3)
    gw.upstream.delay["/api/slow"] = 1.5
    gw.upstream.status["/api/broken"] = 500
    slow = "11111111111111111111111111111111"
    broken = "22222222222222222222222222222222"
    resp = await gw.client.get("/api/slow", headers={**headers, **caller("01", slow)})
    assert resp.status == 504
    resp = await gw.client.get("/api/broken", headers={**headers, **caller("01", broken)})
    assert resp.status == 500
    spans = await collector.wait_trace(slow, 3)
    assert only(spans, SERVER).attributes["error.type"] == "upstream_timeout"
    assert only(spans, SERVER).status == ERROR
    assert only(spans, CLIENT).attributes["error.type"] == "UpstreamTimeout"
    spans = await collector.wait_trace(broken, 3)
    assert only(spans, SERVER).status == ERROR
    assert only(spans, SERVER).attributes["error.type"] == "500"
    assert only(spans, CLIENT).status == ERROR
    assert only(spans, CLIENT).attributes["http.response.status_code"] == 500


async def test_spans_still_queued_are_exported_when_the_gateway_stops(
    traced: Traced, collector: Collector
) -> None:
    # a minute between batches: only the shutdown flush can deliver these spans
    gw, headers = await traced(tracing={"schedule_delay_seconds": 60})
    for _ in range(3):
        assert (await gw.client.get("/api/x", headers={**headers, **caller()})).status == 200
    assert collector.spans == []
    await gw.client.close()
    assert len(collector.trace(CALLER_TRACE)) == 9


async def test_tracing_off_exports_nothing_even_where_otel_variables_point(
    make_gateway: GatewayFactory, collector: Collector, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the SDK's own variables name the collector: only tracing.endpoint turns tracing on
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", collector.url)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", collector.url.removesuffix("/v1/traces"))
    gw = await make_gateway(tracing=TracingSettings(service_name="unused"))
    headers = await gw.caller("anonymous")
    resp = await gw.client.get("/api/logic/x", headers={**headers, **caller()})
    assert resp.status == 200
    # the trace context still passes, with the gateway's hop id
    assert upstream_traceparent(gw)[1] == CALLER_TRACE
    await gw.client.close()  # a gateway that traced would flush here
    assert collector.spans == []


@pytest.mark.stores("memory")  # the exporter's shutdown, not the store, is under test
async def test_a_dead_collector_holds_the_shutdown_no_longer_than_the_export_timeout(
    traced: Traced, caplog: pytest.LogCaptureFixture
) -> None:
    gone = f"http://127.0.0.1:{closed_port()}/v1/traces"
    # nine spans in nine batches: the SDK alone would retry each until its timeout
    tracing = {
        "endpoint": gone,
        "schedule_delay_seconds": 60,
        "max_export_batch_size": 1,
        "export_timeout_seconds": 2,
    }
    gw, headers = await traced(tracing=tracing)
    for _ in range(3):
        assert (await gw.client.get("/api/x", headers=headers)).status == 200
    await gw.client.close()
    assert "did not take the last spans within 2s" in caplog.text
