"""Prometheus collectors on an injected registry; labels are bounded (no per-account labels)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

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


class Metrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.decisions = Counter(
            "gateway_decisions_total",
            "Requests by decision: tier and route from the policy, and the outcome.",
            ["tier", "route", "outcome"],
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
            "Time from forwarding to the upstream's response headers.",
            ["upstream"],
            buckets=_LATENCY,
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
        self.store_degraded = Gauge(
            "gateway_store_degraded",
            "1 while the store is unreachable and the failure mode decides, else 0.",
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
            "Requests being handled right now.",
            registry=registry,
        )
        self.policy_info = Gauge(
            "gateway_policy_info",
            "The active policy: always 1, labelled with its name and SHA-256 digest.",
            ["name", "digest"],
            registry=registry,
        )
        self.policy_reloads = Counter(
            "gateway_policy_reloads_total",
            "Policy reloads by result: success (validated and active) or failure (old kept).",
            ["result"],
            registry=registry,
        )
        self.policy_reload_success = Gauge(
            "gateway_policy_last_reload_success_timestamp_seconds",
            "When the active policy was last loaded and validated, in Unix seconds.",
            registry=registry,
        )
        self.shadow_refusals = Counter(
            "gateway_shadow_refusals_total",
            "Requests a shadowed tier, route or policy would have refused, forwarded instead.",
            ["tier", "route", "decision"],
            registry=registry,
        )
        for result in ("success", "failure"):
            self.policy_reloads.labels(result)

    def policy_active(self, name: str, digest: str, loaded_at: float) -> None:
        """Point ``gateway_policy_info`` at the active policy only."""
        self.policy_info.clear()
        self.policy_info.labels(name, digest).set(1)
        self.policy_reload_success.set(loaded_at)
