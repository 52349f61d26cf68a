"""W3C trace context: a caller's trace continued with the gateway as one hop, a malformed or
missing one restarted, the trace id in the access log.

The memory store is enough: trace context never reaches the store.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from gateway.trace import continue_or_start
from tests.conftest import GatewayFactory

VALID = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
CALLER = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


async def test_the_callers_trace_reaches_the_upstream_with_the_gateway_as_parent(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = await make_gateway(access_log=str(log))
    headers = {
        **(await gw.caller("anonymous")),
        "traceparent": CALLER,
        "tracestate": "vendor=opaque",
    }
    resp = await gw.client.get("/api/logic/x", headers=headers)
    assert resp.status == 200
    seen = gw.upstream.requests[-1].headers
    version, trace_id, parent, flags = seen["traceparent"].split("-")
    assert (version, trace_id, flags) == ("00", "4bf92f3577b34da6a3ce929d0e0e4736", "01")
    assert parent != "00f067aa0ba902b7"  # the gateway's own span, not the caller's
    assert seen["tracestate"] == "vendor=opaque"

    # a second request of the same trace gets a span of its own
    await gw.client.get("/api/logic/x", headers=headers)
    assert gw.upstream.requests[-1].headers["traceparent"].split("-")[2] != parent

    line = json.loads(log.read_text().splitlines()[0])
    assert line["trace_id"] == trace_id


async def test_a_malformed_traceparent_starts_a_new_trace(make_gateway: GatewayFactory) -> None:
    gw = await make_gateway()
    caller = await gw.caller("anonymous")
    for bad in (
        None,
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # forbidden version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # uppercase
        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",  # 00 has 4 fields
        "garbage",
    ):
        headers = dict(caller) if bad is None else {**caller, "traceparent": bad}
        headers["tracestate"] = "vendor=stale"
        resp = await gw.client.get("/api/logic/x", headers=headers)
        assert resp.status == 200
        sent = gw.upstream.requests[-1].headers["traceparent"]
        assert VALID.fullmatch(sent), (bad, sent)
        # a restarted trace carries no state from the one it replaced
        assert "tracestate" not in gw.upstream.requests[-1].headers
        assert "4bf92f3577b34da6a3ce929d0e0e4736" not in sent or bad is None, bad


def test_a_future_version_is_continued_as_version_00() -> None:
    trace = continue_or_start("cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-more")
    assert trace.trace_id == "4bf92f3577b34da6a3ce929d0e0e4736"
    assert trace.parent_id == "00f067aa0ba902b7"
    assert trace.traceparent.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


def test_tracestate_is_dropped_with_a_restarted_trace() -> None:
    assert continue_or_start("garbage", "vendor=x").upstream_headers().keys() == {"traceparent"}
    kept = continue_or_start(CALLER, "vendor=x").upstream_headers()
    assert kept["tracestate"] == "vendor=x"


@given(st.text(max_size=80), st.one_of(st.none(), st.text(max_size=600)))
def test_any_input_gives_a_valid_traceparent(value: str, state: str | None) -> None:
    trace = continue_or_start(value, state)
    assert VALID.fullmatch(trace.traceparent)
    for name, header in trace.upstream_headers().items():
        assert header.isprintable() and "\n" not in header, name
