"""The metrics that answer on-call's questions: upstream status and latency per route, which
meter refused, the identity cache, store errors and the idle probe, reload failures once."""

from __future__ import annotations

import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from gateway.proxy.pool import target_label
from tests.conftest import ROOT, GatewayFactory, Harness, Upstream
from tests.live_scrape import scrape
from tests.ops_policy import ops_policy, write_policy

STORES = ("memory", "redis")


async def _setup(make_gateway: GatewayFactory, tmp_path: Path, **overrides: object) -> Harness:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    return await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0, **overrides)


def _sample(gw: Harness, name: str, **labels: str) -> float:
    return gw.gateway.metrics.registry.get_sample_value(name, labels) or 0.0


async def test_relayed_responses_count_by_status_class_route_and_target(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    target = target_label(gw.gateway.settings.upstreams[0][1])
    assert target.startswith("127.0.0.1:") and target != "127.0.0.1:None"
    gw.upstream.status["/api/broken"] = 502
    gw.upstream.status["/api/missing"] = 404
    headers = await gw.caller("pro", "k_")
    for path in ("/api/broken", "/api/broken", "/api/missing", "/api/fine"):
        resp = await gw.client.get(path, headers=headers)
        await resp.read()
    counted = {
        code_class: _sample(
            gw,
            "gateway_upstream_responses_total",
            upstream=target,
            route="api",
            code_class=code_class,
        )
        for code_class in ("2xx", "4xx", "5xx")
    }
    assert counted == {"2xx": 1, "4xx": 1, "5xx": 2}
    # the relayed 502 is still the gateway's decision to forward
    assert _sample(gw, "gateway_decisions_total", tier="pro", route="api", outcome="forwarded") == 4
    seconds = _sample(gw, "gateway_upstream_duration_seconds_count", upstream=target, route="api")
    assert seconds == 4


async def test_quota_refusals_name_the_meter(
    make_gateway: GatewayFactory, tmp_path: Path, store_kind: str
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    headers = await gw.caller("free", "k_")
    statuses = []
    for _ in range(5):
        resp = await gw.client.get("/api/things", headers=headers)
        await resp.read()
        statuses.append(resp.status)
    assert statuses == [200, 200, 200, 429, 429]
    refused = _sample(gw, "gateway_quota_refusals_total", tier="free", route="api", meter="calls")
    assert refused == 2
    # a tier gate is not a meter's refusal
    resp = await gw.client.get("/api/export/x", headers=await gw.caller("free", "k_"))
    assert resp.status == 403
    scraped = await (await gw.admin.get("/metrics")).text()
    assert scraped.count("gateway_quota_refusals_total{") == 1


async def test_identity_cache_hits_misses_evictions_and_size(
    make_gateway: GatewayFactory, tmp_path: Path, store_kind: str
) -> None:
    gw = await _setup(make_gateway, tmp_path, identity_cache_entries=2)
    callers = [await gw.caller("pro", "k_") for _ in range(3)]
    for headers in (callers[0], callers[0], callers[0]):
        assert (await gw.client.get("/api/x", headers=headers)).status == 200
    keys_hit = _sample(gw, "gateway_identity_cache_lookups_total", cache="keys", result="hit")
    keys_miss = _sample(gw, "gateway_identity_cache_lookups_total", cache="keys", result="miss")
    assert (keys_hit, keys_miss) == (2, 1)
    assert _sample(gw, "gateway_identity_cache_entries", cache="keys") == 1
    for headers in callers[1:]:
        assert (await gw.client.get("/api/x", headers=headers)).status == 200
    # three keys through a cache of two: the least recently used one is dropped
    assert _sample(gw, "gateway_identity_cache_evictions_total", cache="keys") == 1
    assert _sample(gw, "gateway_identity_cache_entries", cache="keys") == 2


async def test_a_broken_policy_counts_once_per_content_and_reason(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    reloader = gw.gateway.reloader
    path = tmp_path / "ops.yaml"
    loaded = _sample(gw, "gateway_policy_last_reload_success_timestamp_seconds")
    assert _sample(gw, "gateway_policy_last_reload_failure_timestamp_seconds") == 0

    write_policy(path, ops_policy().replace("calls: 3", "calls: lots"))
    gw.clock.advance(10)
    for why in ("SIGHUP", "reconnected to the store", "reconnected to the store"):
        await reloader.try_reload(why)
    assert _sample(gw, "gateway_policy_reloads_total", result="failure") == 1
    failed_at = _sample(gw, "gateway_policy_last_reload_failure_timestamp_seconds")
    assert failed_at == loaded + 10

    # another broken content is another failure
    write_policy(path, ops_policy().replace("calls: 3", "calls: many"))
    gw.clock.advance(10)
    await reloader.try_reload("file changed")
    await reloader.try_reload("file changed")
    assert _sample(gw, "gateway_policy_reloads_total", result="failure") == 2
    assert _sample(gw, "gateway_policy_last_reload_failure_timestamp_seconds") == failed_at + 10

    # fixed, then broken the same way again: a new failure after a success
    write_policy(path, ops_policy(free_calls=4))
    await reloader.try_reload("SIGHUP")
    write_policy(path, ops_policy().replace("calls: 3", "calls: many"))
    await reloader.try_reload("SIGHUP")
    assert _sample(gw, "gateway_policy_reloads_total", result="failure") == 3
    assert _sample(gw, "gateway_policy_reloads_total", result="success") == 1


async def test_counters_export_no_created_series(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    text = await scrape(make_gateway, upstream)
    assert "_created" not in text
    # series a dashboard divides by or alerts on exist at 0 before the first failure
    for line in (
        'gateway_store_degraded_decisions_total{outcome="refused_closed"} 0.0',
        'gateway_store_errors_total{kind="timeout"} 0.0',
        'gateway_policy_reloads_total{result="failure"} 0.0',
        "gateway_policy_last_reload_failure_timestamp_seconds 0.0",
    ):
        assert line in text


def _documented() -> dict[str, set[str]]:
    """Metric name -> labels, from the table under "## Metrics" in docs/operations.md."""
    text = (ROOT / "docs" / "operations.md").read_text(encoding="utf-8")
    section = text.split("\n## Metrics\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(gateway_\w+)` \| ([^|]*) \|", section, re.MULTILINE)
    # label names are backticked; their values, in parentheses, are not names
    return {
        name: set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", labels))) for name, labels in rows
    }


async def test_every_exported_metric_is_documented_with_its_labels(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    text = await scrape(make_gateway, upstream)
    documented = _documented()
    exported: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        labels = {k for s in family.samples for k in s.labels if k != "le"}
        exported[family.name if family.type != "counter" else family.name + "_total"] = labels
    assert set(exported) == set(documented)
    for name, labels in exported.items():
        # a labelled metric shows its labels once a sample has them
        assert labels <= documented[name], name
