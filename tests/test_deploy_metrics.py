"""A live scrape: promtool accepts it, and it has every metric the dashboard and alerts query."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import GatewayFactory, Upstream
from tests.deploy_tools import run, tool
from tests.live_scrape import scrape
from tests.promql import alert_rules, dashboard_queries, metric_names

# series Prometheus makes itself for every target
FROM_PROMETHEUS = frozenset({"up"})

# the series names each metric type exposes, by suffix
SUFFIXES = {
    "counter": ("_total", "_created"),
    "gauge": ("",),
    "histogram": ("_bucket", "_sum", "_count", "_created"),
    "summary": ("", "_sum", "_count", "_created"),
    "info": ("_info",),
}


def exported_names(text: str) -> set[str]:
    """Every series name the scrape declares. Declared, not sampled: a labelled series appears
    only once something has been counted under its labels, and a scrape need not count all."""
    return {
        family.name + suffix
        for family in text_string_to_metric_families(text)
        for suffix in SUFFIXES[family.type]
    }


def recorded_names() -> set[str]:
    return {rule["record"] for rule in alert_rules() if "record" in rule}


def queried_names() -> dict[str, set[str]]:
    """Each metric name the dashboard and alert rules use, with the queries using it."""
    queries = [rule["expr"] for rule in alert_rules()] + dashboard_queries()
    used: dict[str, set[str]] = {}
    for query in queries:
        for name in metric_names(query):
            used.setdefault(name, set()).add(" ".join(query.split()))
    return used


async def test_promtool_accepts_a_live_scrape_of_every_outcome(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    text = await scrape(make_gateway, upstream)
    # promtool prints one line per lint problem and exits non-zero on any
    assert run([tool("promtool"), "check", "metrics"], stdin=text) == ""


async def test_dashboard_and_alerts_query_only_metrics_the_gateway_exports(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    exported = exported_names(await scrape(make_gateway, upstream))
    known = exported | recorded_names() | FROM_PROMETHEUS
    used = queried_names()
    unknown = {name: sorted(queries) for name, queries in used.items() if name not in known}
    assert unknown == {}, "queries use metrics the gateway does not export"
    # the dashboard shows the four areas the issue names
    for name in (
        "gateway_decisions_total",
        "gateway_request_duration_seconds_bucket",
        "gateway_store_duration_seconds_bucket",
        "gateway_store_degraded",
    ):
        assert name in used
    # and the reload and shadow series the alerts and dashboard rely on
    for name in (
        "gateway_policy_reloads_total",
        "gateway_policy_last_reload_success_timestamp_seconds",
        "gateway_shadow_refusals_total",
    ):
        assert name in used


def test_metric_names_finds_selectors_and_skips_functions_labels_and_durations() -> None:
    expr = """
        histogram_quantile(0.99, sum by (job, le) (rate(a_seconds_bucket{job=~"$job"}[5m])))
        > 3 * (sum without (route) (b_total offset 1d) / on (job) group_left (tier) c:d:e)
        and max_over_time((timestamp(f_total) - 60 and g_total > bool 1e3)[6h:15s])
    """
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c:d:e", "f_total", "g_total"}
