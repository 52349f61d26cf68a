"""Prometheus collectors on an injected registry; labels are bounded (no per-account labels).

Every label value comes from the configuration or the policy: tier, route and meter names,
upstream host:port, outcome and status-class words. Never a key, an account id or a path.

With ``gateway serve --workers N`` each worker writes its values to files in one directory
(prometheus_client's multiprocess mode, ``PROMETHEUS_MULTIPROC_DIR``, set up by the serving
parent); a scrape of the admin listener reads them all, so counters and histograms are sums
over the workers, and each gauge says how it aggregates (``multiprocess_mode`` below).
"""

from __future__ import annotations

import glob
import os
from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

# a `_created` series per counter and histogram doubles the series count for a timestamp no
# dashboard or alert reads (rate() handles resets on its own)
disable_created_metrics()  # type: ignore[no-untyped-call]

#: the directory workers write their values to; set only in worker processes
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

_LATENCY = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
_STATUS_CLASSES = ("1xx", "2xx", "3xx", "4xx", "5xx")


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = Counter(
            "gateway_decisions_total",
            "Requests by decision: tier and route from the policy, and the outcome.",
            ["tier", "route", "outcome"],
            registry=registry,
        )
        self.quota_refusals = Counter(
            "gateway_quota_refusals_total",
            "Requests refused because a meter was at its limit, by tier, route and that meter.",
            ["tier", "route", "meter"],
            registry=registry,
        )
        self.request_seconds = Histogram(
            "gateway_request_duration_seconds",
            "Time from request received to response headers sent, by route.",
            ["route"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.upstream_seconds = Histogram(
            "gateway_upstream_duration_seconds",
            "Time from forwarding to the upstream's response headers, by upstream and route.",
            ["upstream", "route"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.upstream_responses = Counter(
            "gateway_upstream_responses_total",
            "Responses the upstream answered and the gateway relayed, by status class.",
            ["upstream", "route", "code_class"],
            registry=registry,
        )
        self.upstream_retries = Counter(
            "gateway_upstream_retries_total",
            "Requests moved to another target of a pool because this target was never "
            "reached (refused or no connection in time); each request is still sent once.",
            ["upstream"],
            registry=registry,
        )
        self.upstream_errors = Counter(
            "gateway_upstream_errors_total",
            "Upstream failures by kind: refused, timeout, broken (failed mid-response).",
            ["upstream", "kind"],
            registry=registry,
        )
        self.jwks_fetches = Counter(
            "gateway_jwks_fetches_total",
            "Fetches of the JWT signing keys from jwt.jwks_url, by result (success, failure).",
            ["result"],
            registry=registry,
        )
        self.store_seconds = Histogram(
            "gateway_store_duration_seconds",
            "Time spent in store operations on the request path.",
            ["operation"],
            buckets=_LATENCY,
            registry=registry,
        )
        self.store_errors = Counter(
            "gateway_store_errors_total",
            "Store commands that failed while the store counted as healthy: timeout or error.",
            ["kind"],
            registry=registry,
        )
        self.store_degraded = Gauge(
            "gateway_store_degraded",
            "1 while the store is unreachable and the failure mode decides, else 0.",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.leases_taken = Counter(
            "gateway_leases_taken_total",
            "Leases of allowance units taken from the store (hot accounts; policy leases).",
            registry=registry,
        )
        self.lease_units_returned = Counter(
            "gateway_lease_units_returned_total",
            "Leased units given back unused (window rolled, reload, refill, shutdown).",
            registry=registry,
        )
        self.lease_admissions = Counter(
            "gateway_lease_admissions_total",
            "Requests admitted from leased units, without a store call.",
            registry=registry,
        )
        self.store_degraded_decisions = Counter(
            "gateway_store_degraded_decisions_total",
            "Decisions taken without the store: admitted_open, refused_open, refused_closed.",
            ["outcome"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "gateway_in_flight_requests",
            "Requests being handled right now (summed over the workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "gateway_overload_shed_total",
            "Requests answered 503 OVERLOADED: the worker already had max_in_flight in hand.",
            registry=registry,
        )
        self.workers = Gauge(
            "gateway_workers",
            "Worker processes accepting requests (summed over the workers).",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.identity_cache_lookups = Counter(
            "gateway_identity_cache_lookups_total",
            "Identity cache lookups by cache (keys, accounts) and result (hit, miss).",
            ["cache", "result"],
            registry=registry,
        )
        self.identity_cache_evictions = Counter(
            "gateway_identity_cache_evictions_total",
            "Entries dropped from an identity cache because it was full.",
            ["cache"],
            registry=registry,
        )
        self.identity_cache_entries = Gauge(
            "gateway_identity_cache_entries",
            "Entries held by an identity cache (summed over the workers).",
            ["cache"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.policy_info = Gauge(
            "gateway_policy_info",
            "The active policy: 1, labelled with its name and SHA-256 digest (one per policy "
            "some worker serves).",
            ["name", "digest"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.policy_reloads = Counter(
            "gateway_policy_reloads_total",
            "Policy reloads by result: success (validated and active) or failure (old kept; "
            "counted once per broken file content and reason, not per retry).",
            ["result"],
            registry=registry,
        )
        self.policy_reload_success = Gauge(
            "gateway_policy_last_reload_success_timestamp_seconds",
            "When the active policy was last loaded and validated, in Unix seconds.",
            registry=registry,
            multiprocess_mode="max",
        )
        self.policy_reload_failure = Gauge(
            "gateway_policy_last_reload_failure_timestamp_seconds",
            "When a policy reload last failed, in Unix seconds (0: never).",
            registry=registry,
            multiprocess_mode="max",
        )
        self.policy_tier_moves = Counter(
            "gateway_policy_tier_moves_total",
            "Accounts a reload moved to another tier (their tier dropped), by old and new tier.",
            ["from_tier", "to_tier"],
            registry=registry,
        )
        self.shadow_refusals = Counter(
            "gateway_shadow_refusals_total",
            "Requests a shadowed tier, route or policy would have refused, forwarded instead.",
            ["tier", "route", "decision"],
            registry=registry,
        )
        # series that exist, at 0, from the first scrape: rate() and increase() then see the
        # first failure, and dashboards show 0 rather than nothing
        for result in ("success", "failure"):
            self.policy_reloads.labels(result)
        for outcome in ("admitted_open", "refused_open", "refused_closed"):
            self.store_degraded_decisions.labels(outcome)
        for kind in ("timeout", "error"):
            self.store_errors.labels(kind)
        self.policy_reload_failure.set(0)
        self._policy: tuple[str, str] | None = None
        # children bound once per label set: a labels() lookup per request takes a lock and
        # builds a key; tiers, routes and outcomes come from the policy, so these stay small
        self._decisions: dict[tuple[str, str, str], Counter] = {}
        self._route_seconds: dict[str, Histogram] = {}
        self.consume_seconds = self.store_seconds.labels("consume")

    def decision(self, tier: str, route: str, outcome: str) -> Counter:
        """The ``gateway_decisions_total`` child for these labels."""
        key = (tier, route, outcome)
        child = self._decisions.get(key)
        if child is None:
            child = self._decisions[key] = self.decisions.labels(tier, route, outcome)
        return child

    def route_seconds(self, route: str) -> Histogram:
        """The ``gateway_request_duration_seconds`` child for ``route``."""
        child = self._route_seconds.get(route)
        if child is None:
            child = self._route_seconds[route] = self.request_seconds.labels(route)
        return child

    def policy_active(self, name: str, digest: str, loaded_at: float) -> None:
        """Point ``gateway_policy_info`` at the active policy only."""
        if self._policy is not None and self._policy != (name, digest):
            # a worker's value file keeps every label set it wrote: 0 marks this one gone
            self.policy_info.labels(*self._policy).set(0)
            self.policy_info.remove(*self._policy)
        self._policy = (name, digest)
        self.policy_info.labels(name, digest).set(1)
        self.policy_reload_success.set(loaded_at)

    def policy_reload_failed(self, now: float) -> None:
        self.policy_reloads.labels("failure").inc()
        self.policy_reload_failure.set(now)

    def upstream(self, label: str) -> UpstreamStats:
        return UpstreamStats(self, label)

    def cache(self, name: str) -> CacheStats:
        return CacheStats(self, name)


class UpstreamStats:
    """One upstream's metric children, bound once (per route on first use): a request pays a
    dict lookup, not a label lookup."""

    def __init__(self, metrics: Metrics, upstream: str) -> None:
        self._metrics = metrics
        self._upstream = upstream
        self.refused = metrics.upstream_errors.labels(upstream, "refused")
        self.timeout = metrics.upstream_errors.labels(upstream, "timeout")
        self.broken = metrics.upstream_errors.labels(upstream, "broken")
        self._routes: dict[str, tuple[Histogram, dict[int, Counter]]] = {}

    def answered(self, route: str, status: int, seconds: float) -> None:
        """The upstream answered ``status`` for ``route`` after ``seconds``."""
        bound = self._routes.get(route)
        if bound is None:
            bound = self._bind(route)
        histogram, classes = bound
        histogram.observe(seconds)
        counter = classes.get(status // 100)
        if counter is None:  # outside 1xx-5xx: counted with the server errors
            counter = classes[5]
        counter.inc()

    def _bind(self, route: str) -> tuple[Histogram, dict[int, Counter]]:
        # routes are the policy's names; every class exists from the route's first answer
        histogram = self._metrics.upstream_seconds.labels(self._upstream, route)
        classes = {
            index + 1: self._metrics.upstream_responses.labels(self._upstream, route, name)
            for index, name in enumerate(_STATUS_CLASSES)
        }
        self._routes[route] = (histogram, classes)
        return self._routes[route]


class CacheStats:
    """One identity cache's hit, miss and eviction counters and its size."""

    def __init__(self, metrics: Metrics, cache: str) -> None:
        self.hits = metrics.identity_cache_lookups.labels(cache, "hit")
        self.misses = metrics.identity_cache_lookups.labels(cache, "miss")
        self.evictions = metrics.identity_cache_evictions.labels(cache)
        self.entries = metrics.identity_cache_entries.labels(cache)
        self.entries.set(0)


def multiprocess_dir() -> str | None:
    return os.environ.get(MULTIPROC_ENV) or None


def exposition(metrics: Metrics) -> bytes:
    """The scrape: this process's registry, or every worker's values when there are several."""
    path = multiprocess_dir()
    if path is None:
        return generate_latest(metrics.registry)
    merged = CollectorRegistry(auto_describe=False)
    merged.register(_AllWorkers(path))
    return generate_latest(merged)


class _AllWorkers(Collector):
    def __init__(self, path: str) -> None:
        self._path = path

    def collect(self) -> Iterable[Metric]:
        collector = MultiProcessCollector(None, self._path)  # type: ignore[no-untyped-call]
        for family in collector.collect():  # type: ignore[no-untyped-call]
            if family.name == "gateway_policy_info":
                # a policy no live worker serves any more is written 0: not an active policy
                family.samples = [s for s in family.samples if s.value]
            yield family


def workers_state(path: str) -> tuple[int, bool]:
    """(workers accepting requests, whether any live worker has its store degraded), read from
    the workers' value files: readiness of the whole process group, not just this worker."""
    files = glob.glob(os.path.join(path, "gauge_live*.db"))
    serving, degraded = 0, False
    merged = MultiProcessCollector.merge(files, accumulate=True)  # type: ignore[no-untyped-call]
    for family in merged:
        for sample in family.samples:
            if sample.name == "gateway_workers":
                serving += int(sample.value)
            elif sample.name == "gateway_store_degraded" and sample.value:
                degraded = True
    return serving, degraded
