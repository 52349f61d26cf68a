"""Runtime settings: config file, then command-line flags, then secrets from the environment."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from yarl import URL

from gateway.identity.tokens import SUPPORTED
from gateway.metering.redis_store import check_db
from gateway.policy.source import ConfigError, Node, load_source, root
from gateway.proxy.pool import PoolSettings


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


# a DNS name: dot-separated labels of letters, digits, '-' (and '_', which container names use)
_HOSTNAME = re.compile(
    r"(?=.{1,253}\.?$)[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?"
    r"(\.[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?)*\.?"
)


def _check_host(host: str, text: str) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if not _HOSTNAME.fullmatch(host):
            raise ValueError(f"invalid host {host!r} in {text!r}") from None


def parse_address(text: str) -> Address:
    """``HOST:PORT``, ``[v6]:PORT`` or ``:PORT`` (all interfaces)."""
    host, sep, port = text.rpartition(":")
    if not sep or not (port.isascii() and port.isdigit()) or not 0 <= int(port) <= 65535:
        raise ValueError(f"expected HOST:PORT, got {text!r}")
    if host.startswith("[") or host.endswith("]"):
        if not (host.startswith("[") and host.endswith("]")):
            raise ValueError(f"unbalanced brackets in {text!r}")
        host = host[1:-1]
        if ":" not in host:
            raise ValueError(f"brackets are for IPv6 addresses, got {text!r}")
    elif ":" in host:
        raise ValueError(f"write an IPv6 address in brackets, as [::1]:PORT, got {text!r}")
    host = host or "0.0.0.0"  # noqa: S104 - only when the user asks for ":PORT"
    _check_host(host, text)
    return Address(host, int(port))


def parse_upstream(text: str) -> URL:
    try:
        url = URL(text)
        port = url.port
    except ValueError as exc:
        raise ValueError(f"invalid URL {text!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.raw_host:
        raise ValueError(f"expected an http:// or https:// URL, got {text!r}")
    _check_host(url.raw_host, text)
    if port == 0:
        raise ValueError(f"an upstream URL needs a port between 1 and 65535, got {text!r}")
    if url.query_string or url.fragment or url.user is not None:
        raise ValueError(f"an upstream URL has no query, fragment or credentials, got {text!r}")
    return url


def parse_store(text: str) -> str:
    """``memory`` or a Redis URL: ``redis://``, ``rediss://``, ``unix://``, Sentinel, Cluster."""
    if text == "memory":
        return text
    scheme, sep, rest = text.partition("://")
    if not sep or scheme not in _STORE_SCHEMES or not rest:
        # the host part only: a URL may carry a password
        raise ValueError(
            f"expected 'memory' or a redis:// URL (schemes: {', '.join(_STORE_SCHEMES)}), "
            f"got {text.split('@')[-1]!r}"
        )
    check_db(text)
    return text


_STORE_SCHEMES = ("redis", "rediss", "unix", "redis+sentinel", "redis+cluster")

#: like the JWT secret's floor: 32 bytes (256 bits if random) cannot be guessed online
MIN_ADMIN_TOKEN_BYTES = 32


@dataclass(frozen=True, slots=True)
class JwtSettings:
    algorithms: tuple[str, ...] = ("HS256",)
    secret_env: str = "GATEWAY_JWT_SECRET"  # noqa: S105 - a variable name
    public_key_file: str | None = None
    jwks_file: str | None = None
    jwks_url: str | None = None  # an identity provider's JWKS, fetched and refreshed
    jwks_refresh_seconds: float = 300.0
    jwks_refetch_seconds: float = 10.0  # at most one refetch per interval for unknown kids
    issuer: str | None = None
    audience: str | None = None
    leeway_seconds: float = 30.0


@dataclass(frozen=True, slots=True)
class UpstreamPool:
    prefix: str
    targets: tuple[tuple[URL, int], ...]  # (url, weight)
    settings: PoolSettings


@dataclass(frozen=True, slots=True)
class CorsSettings:
    """Browser cross-origin access to the proxy listener (gateway/cors.py); off when no
    origin is allowed."""

    #: exact origins (``https://app.example.com``), ``https://*.example.com`` for any
    #: subdomain, or ``*`` for any origin (never with credentials)
    allow_origins: tuple[str, ...] = ()
    allow_methods: tuple[str, ...] = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE")
    allow_headers: tuple[str, ...] = (
        "Authorization",
        "Content-Type",
        "X-API-Key",
        "Idempotency-Key",
        "X-Request-Id",
        "traceparent",
        "tracestate",
    )
    #: exposed besides the gateway's own response headers (rate limits, Retry-After, ids)
    expose_headers: tuple[str, ...] = ()
    allow_credentials: bool = False
    max_age_seconds: int = 600


@dataclass(frozen=True, slots=True)
class WebSocketSettings:
    """Tunnels on routes with ``websocket: true`` (gateway/proxy/websocket.py)."""

    idle_seconds: float = 300.0  # no message either way for this long closes the tunnel
    max_seconds: float = 3600.0  # a tunnel's whole life; 0 for no bound
    max_message_bytes: int = 1024 * 1024


@dataclass(frozen=True, slots=True)
class TracingSettings:
    """OpenTelemetry spans exported by OTLP/HTTP (gateway/otel.py); off without an endpoint."""

    endpoint: str | None = None  # the collector's traces URL: http://127.0.0.1:4318/v1/traces
    service_name: str = "quota-gateway"
    #: the share of traces the gateway starts that are sampled; a caller's traceparent
    #: decides for its own trace (parent-based: its sampled flag is honoured)
    sample_ratio: float = 1.0
    max_queue_size: int = 2048  # spans waiting for export; more are dropped, never waited on
    max_export_batch_size: int = 512
    schedule_delay_seconds: float = 5.0  # the longest a finished span waits for its batch
    export_timeout_seconds: float = 10.0  # one export request to the collector

    @property
    def enabled(self) -> bool:
        return self.endpoint is not None


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 10 * 1024 * 1024
    max_header_bytes: int = 8190  # one header line; aiohttp's own default
    max_headers: int = 100
    header_timeout_seconds: float = 15.0
    # the whole header block (names, values, separators): 100 lines of 8 KB each would pass
    # the per-line bounds above; Envoy's default is 60 KiB
    max_header_block_bytes: int = 64 * 1024
    # every request body the gateway reads (proxied, or answered itself: login,
    # provisioning, billing, admin, Stripe webhook) must arrive whole within
    # body_timeout_seconds and may not go silent for longer than body_idle_seconds (a
    # 1-byte-per-3-s trickle ends at the total)
    body_timeout_seconds: float = 60.0
    body_idle_seconds: float = 10.0
    # open connections one client address may hold (0: no cap); behind a load balancer every
    # connection comes from its address, so leave it off there or set it above its pool
    max_connections_per_address: int = 0


@dataclass(frozen=True, slots=True)
class AccountSettings:
    """Accounts the gateway answers for itself: provisioning, conversion, login."""

    provisions_per_address_per_day: int | None = 20  # None: no abuse guard
    session_ttl_seconds: float = 7 * 86400.0
    min_password_length: int = 8
    # login attempts that may fail per account and per client address in each window;
    # past either, 429 with Retry-After until the window ends (None: no limit)
    login_failures_per_account: int | None = 10
    login_failures_per_address: int | None = 100
    login_window_seconds: float = 900.0


@dataclass(frozen=True, slots=True)
class StripeSettings:
    """Stripe Checkout for tier upgrades; the secrets come from the environment."""

    secret_key_env: str = "GATEWAY_STRIPE_SECRET_KEY"  # noqa: S105 - a variable name
    webhook_secret_env: str = "GATEWAY_STRIPE_WEBHOOK_SECRET"  # noqa: S105 - a variable name
    api_base_env: str = "GATEWAY_STRIPE_API_BASE"
    prices: tuple[tuple[str, str], ...] = ()  # (tier, Stripe price id)
    mode: str = "subscription"
    success_url: str = "http://localhost/billing/success?session_id={CHECKOUT_SESSION_ID}"
    cancel_url: str = "http://localhost/billing/cancel"
    tolerance_seconds: float = 300.0

    def secret_key(self, environ: Mapping[str, str] = os.environ) -> str | None:
        return environ.get(self.secret_key_env) or None

    def webhook_secret(self, environ: Mapping[str, str] = os.environ) -> str | None:
        return environ.get(self.webhook_secret_env) or None

    def api_base(self, environ: Mapping[str, str] = os.environ) -> str:
        return (environ.get(self.api_base_env) or "https://api.stripe.com").rstrip("/")


@dataclass(frozen=True, slots=True)
class Settings:
    listen: Address = Address("127.0.0.1", 8080)
    admin_listen: Address = Address("127.0.0.1", 9090)
    policy: str = "policies/agentstack.yaml"
    # seconds between checks of the policy file for changes (0: only SIGHUP and the admin API)
    policy_watch_seconds: float = 1.0
    # a reload may serve accounts on another tier (a tier dropped, default_tier changed)
    # without the admin API's allow_tier_changes=true (see docs/operations.md)
    policy_allow_tier_changes: bool = False
    # the JSON-lines access log: a file path, "-" for stdout, or None for none
    access_log: str | None = None
    store: str = "memory"
    # every store command must answer within this budget, or the failure mode applies
    store_timeout_ms: int = 250
    # seconds between pings of a healthy store, so an idle process notices an outage (0: off)
    store_probe_seconds: float = 2.0
    # closed: refuse with 503 while the store is unreachable; open: admit on a local allowance
    store_failure_mode: Literal["closed", "open"] = "closed"
    # fail open: units each meter of an account may take per outage, counted and written back
    store_fail_open_allowance: int = 100
    # refuse to start (exit 2) when the store does not answer at start, instead of probing it
    require_store: bool = False
    identity_cache_ttl_seconds: float = 5.0
    identity_cache_entries: int = 10_000
    workers: int = 1
    upstreams: tuple[tuple[str, URL], ...] = (("/", URL("http://127.0.0.1:8000")),)
    #: prefixes served by several targets (``targets:`` in the file): every target with its
    #: weight, and the pool's balancing, health and breaker settings; the prefix's entry in
    #: ``upstreams`` holds the first target
    pools: tuple[UpstreamPool, ...] = ()
    connect_timeout_seconds: float = 5.0
    read_timeout_seconds: float = 30.0
    # a pooled upstream connection idle longer than this is closed, never reused: below the
    # keep-alive timeouts of common upstreams (Node.js and uvicorn 5 s, nginx 75 s), so the
    # gateway never writes a request on a connection the upstream is closing
    pool_idle_seconds: float = 4.0
    # the longest a client may leave a relayed response unread before both connections close
    client_write_seconds: float = 60.0
    # request headers that ask an upstream framework to treat the request as another method;
    # stripped, since the gateway meters the method on the request line
    method_override_headers: tuple[str, ...] = (
        "X-HTTP-Method-Override",
        "X-HTTP-Method",
        "X-Method-Override",
    )
    upstream_max_connections: int = 512
    # requests one worker handles at once; past it a request is shed with 503 OVERLOADED
    # (Retry-After: 1) before anything is read from the store, so a flood queues nowhere
    max_in_flight: int = 1024
    shutdown_grace_seconds: float = 30.0
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    admin_token_env: str = "GATEWAY_ADMIN_TOKEN"  # noqa: S105 - a variable name
    jwt: JwtSettings = field(default_factory=JwtSettings)
    limits: Limits = field(default_factory=Limits)
    accounts: AccountSettings = field(default_factory=AccountSettings)
    stripe: StripeSettings = field(default_factory=StripeSettings)
    cors: CorsSettings = field(default_factory=CorsSettings)
    websocket: WebSocketSettings = field(default_factory=WebSocketSettings)
    tracing: TracingSettings = field(default_factory=TracingSettings)

    def admin_token(self, environ: Mapping[str, str] = os.environ) -> str | None:
        """The admin API's bearer token, or None (the admin API is then disabled).

        Refused when shorter than ``MIN_ADMIN_TOKEN_BYTES``: it guards every account and key,
        and a short one falls to guessing through the admin listener."""
        value = environ.get(self.admin_token_env) or None
        if value is not None and len(value.encode("utf-8")) < MIN_ADMIN_TOKEN_BYTES:
            raise ValueError(
                f"{self.admin_token_env} is {len(value.encode('utf-8'))} bytes; the admin token "
                f"needs at least {MIN_ADMIN_TOKEN_BYTES} (for example: openssl rand -hex 32)"
            )
        return value

    def jwt_secret(self, environ: Mapping[str, str] = os.environ) -> bytes | None:
        value = environ.get(self.jwt.secret_env)
        return value.encode("utf-8") if value else None


#: every key a config file may hold, by section ("" is the top level); anything else is an error
KEYS: dict[str, frozenset[str]] = {
    "": frozenset(
        {
            "listen",
            "admin_listen",
            "policy",
            "policy_watch_seconds",
            "policy_allow_tier_changes",
            "access_log",
            "store",
            "store_timeout_ms",
            "store_probe_seconds",
            "store_failure_mode",
            "store_fail_open_allowance",
            "require_store",
            "identity_cache_ttl_seconds",
            "identity_cache_entries",
            "workers",
            "upstreams",
            "upstream_max_connections",
            "max_in_flight",
            "timeouts",
            "trusted_proxies",
            "secrets",
            "jwt",
            "limits",
            "shutdown_grace_seconds",
            "accounts",
            "stripe",
            "method_override_headers",
            "cors",
            "websocket",
            "tracing",
        }
    ),
    "tracing": frozenset(
        {
            "endpoint",
            "service_name",
            "sample_ratio",
            "max_queue_size",
            "max_export_batch_size",
            "schedule_delay_seconds",
            "export_timeout_seconds",
        }
    ),
    "websocket": frozenset({"idle_seconds", "max_seconds", "max_message_bytes"}),
    "cors": frozenset(
        {
            "allow_origins",
            "allow_methods",
            "allow_headers",
            "expose_headers",
            "allow_credentials",
            "max_age_seconds",
        }
    ),
    "accounts": frozenset(
        {
            "provisions_per_address_per_day",
            "session_ttl_seconds",
            "min_password_length",
            "login_failures_per_account",
            "login_failures_per_address",
            "login_window_seconds",
        }
    ),
    "stripe": frozenset(
        {
            "secret_key_env",
            "webhook_secret_env",
            "api_base_env",
            "mode",
            "prices",
            "success_url",
            "cancel_url",
            "tolerance_seconds",
        }
    ),
    "upstreams[]": frozenset({"prefix", "url", "targets", "balance", "eject", "health", "breaker"}),
    "upstreams[].targets[]": frozenset({"url", "weight"}),
    "upstreams[].eject": frozenset({"after", "seconds"}),
    "upstreams[].health": frozenset({"path", "interval_seconds", "timeout_seconds"}),
    "upstreams[].breaker": frozenset(
        {"failure_ratio", "min_requests", "window_seconds", "open_seconds"}
    ),
    "timeouts": frozenset(
        {"connect_seconds", "read_seconds", "pool_idle_seconds", "client_write_seconds"}
    ),
    "secrets": frozenset({"admin_token_env"}),
    "jwt": frozenset(
        {
            "algorithms",
            "secret_env",
            "public_key_file",
            "jwks_file",
            "jwks_url",
            "jwks_refresh_seconds",
            "jwks_refetch_seconds",
            "issuer",
            "audience",
            "leeway_seconds",
        }
    ),
    "limits": frozenset(
        {
            "max_body_bytes",
            "max_header_bytes",
            "max_headers",
            "header_timeout_seconds",
            "max_header_block_bytes",
            "body_timeout_seconds",
            "body_idle_seconds",
            "max_connections_per_address",
        }
    ),
}


def load_settings(config_file: str | None = None, **flags: Any) -> Settings:
    """Settings from an optional config file, overridden by flags that are not None."""
    settings = Settings()
    if config_file is not None:
        settings = _from_file(config_file)
    overrides: dict[str, Any] = {}
    for name, value in flags.items():
        if value is None:
            continue
        if name in ("listen", "admin_listen"):
            value = parse_address(value)
        elif name == "upstream":
            name, value = "upstreams", (("/", parse_upstream(value)),)
        elif name == "store":
            value = parse_store(value)
        elif name == "workers" and value < 1:
            raise ValueError("--workers must be at least 1")
        elif name == "store_timeout_ms" and value < 1:
            raise ValueError("--store-timeout-ms must be at least 1")
        elif name == "max_in_flight" and value < 1:
            raise ValueError("--max-in-flight must be at least 1")
        elif name == "tracing_endpoint":
            endpoint = parse_otlp_endpoint(value)
            name, value = "tracing", dataclasses.replace(settings.tracing, endpoint=endpoint)
        overrides[name] = value
    return dataclasses.replace(settings, **overrides)


def _from_file(path: str) -> Settings:
    node = root(load_source(path)).mapping(allowed=set(KEYS[""]))
    base = Path(path).parent
    values: dict[str, Any] = {}
    for key in ("listen", "admin_listen"):
        child = node.get(key)
        if child is not None:
            values[key] = _convert(child, parse_address)
    if (child := node.get("policy")) is not None:
        values["policy"] = str(_relative(base, child.str()))
    if (child := node.get("policy_watch_seconds")) is not None:
        values["policy_watch_seconds"] = child.number(minimum=0)
    if (child := node.get("policy_allow_tier_changes")) is not None:
        values["policy_allow_tier_changes"] = child.bool()
    if (child := node.get("access_log")) is not None and child.value is not None:
        target = child.str()
        values["access_log"] = target if target == "-" else str(_relative(base, target))
    if (child := node.get("store")) is not None:
        values["store"] = _convert(child, parse_store)
    if (child := node.get("store_timeout_ms")) is not None:
        values["store_timeout_ms"] = child.int(minimum=1, maximum=60_000)
    if (child := node.get("store_probe_seconds")) is not None:
        values["store_probe_seconds"] = child.number(minimum=0)
    if (child := node.get("store_failure_mode")) is not None:
        values["store_failure_mode"] = child.str(choices=("closed", "open"))
    if (child := node.get("store_fail_open_allowance")) is not None:
        values["store_fail_open_allowance"] = child.int(minimum=0)
    if (child := node.get("require_store")) is not None:
        values["require_store"] = child.bool()
    if (child := node.get("identity_cache_ttl_seconds")) is not None:
        values["identity_cache_ttl_seconds"] = child.number(minimum=0)
    if (child := node.get("identity_cache_entries")) is not None:
        values["identity_cache_entries"] = child.int(minimum=0)
    if (child := node.get("workers")) is not None:
        values["workers"] = child.int(minimum=1, maximum=256)
    if (child := node.get("upstream_max_connections")) is not None:
        values["upstream_max_connections"] = child.int(minimum=1, maximum=100_000)
    if (child := node.get("max_in_flight")) is not None:
        values["max_in_flight"] = child.int(minimum=1, maximum=1_000_000)
    if (child := node.get("shutdown_grace_seconds")) is not None:
        values["shutdown_grace_seconds"] = child.number()
    if (child := node.get("upstreams")) is not None:
        upstreams: list[tuple[str, URL]] = []
        pools: list[UpstreamPool] = []
        for item in child.list():
            item.mapping(allowed=set(KEYS["upstreams[]"]), required={"prefix"})
            prefix = item.child("prefix").str()
            if not prefix.startswith("/"):
                raise item.child("prefix").fail("a prefix starts with '/'")
            if any(prefix == seen for seen, _ in upstreams):
                raise item.child("prefix").fail(f"prefix {prefix!r} is listed twice")
            if ("url" in item.value) == ("targets" in item.value):
                raise item.fail("give either url (one target) or targets (a pool)")
            if "url" in item.value:
                if any(k in item.value for k in ("balance", "eject", "health", "breaker")):
                    raise item.fail("balance, eject, health and breaker need targets")
                upstreams.append((prefix, _convert(item.child("url"), parse_upstream)))
                continue
            pool = _pool(prefix, item)
            pools.append(pool)
            upstreams.append((prefix, pool.targets[0][0]))
        if not upstreams:
            raise child.fail("list at least one upstream")
        values["upstreams"] = tuple(upstreams)
        values["pools"] = tuple(pools)
    if (child := node.get("timeouts")) is not None:
        child.mapping(allowed=set(KEYS["timeouts"]))
        if (sub := child.get("connect_seconds")) is not None:
            values["connect_timeout_seconds"] = sub.number(minimum=0.001)
        if (sub := child.get("read_seconds")) is not None:
            values["read_timeout_seconds"] = sub.number(minimum=0.001)
        if (sub := child.get("pool_idle_seconds")) is not None:
            values["pool_idle_seconds"] = sub.number(minimum=0)
        if (sub := child.get("client_write_seconds")) is not None:
            values["client_write_seconds"] = sub.number(minimum=0.001)
    if (child := node.get("method_override_headers")) is not None:
        values["method_override_headers"] = tuple(item.str(max_len=200) for item in child.list())
    if (child := node.get("trusted_proxies")) is not None:
        values["trusted_proxies"] = tuple(
            _convert(item, lambda text: ipaddress.ip_network(text, strict=False))
            for item in child.list()
        )
    if (child := node.get("secrets")) is not None:
        child.mapping(allowed=set(KEYS["secrets"]))
        if (sub := child.get("admin_token_env")) is not None:
            values["admin_token_env"] = sub.str()
    if (child := node.get("jwt")) is not None:
        values["jwt"] = _jwt(child, base)
    if (child := node.get("limits")) is not None:
        values["limits"] = _limits(child)
    if (child := node.get("accounts")) is not None:
        values["accounts"] = _accounts(child)
    if (child := node.get("stripe")) is not None:
        values["stripe"] = _stripe(child)
    if (child := node.get("cors")) is not None:
        values["cors"] = _cors(child)
    if (child := node.get("websocket")) is not None:
        child.mapping(allowed=set(KEYS["websocket"]))
        ws: dict[str, Any] = {}
        if (sub := child.get("idle_seconds")) is not None:
            ws["idle_seconds"] = sub.number(minimum=0.001)
        if (sub := child.get("max_seconds")) is not None:
            ws["max_seconds"] = sub.number(minimum=0)
        if (sub := child.get("max_message_bytes")) is not None:
            ws["max_message_bytes"] = sub.int(minimum=1, maximum=1 << 30)
        values["websocket"] = WebSocketSettings(**ws)
    if (child := node.get("tracing")) is not None:
        values["tracing"] = _tracing(child)
    return Settings(**values)


def parse_otlp_endpoint(text: str) -> str:
    """An OTLP/HTTP traces URL; one with no path gets the standard ``/v1/traces``."""
    try:
        url = URL(text)
    except ValueError as exc:
        raise ValueError(f"invalid URL {text.split('@')[-1]!r}: {exc}") from exc
    if url.scheme not in ("http", "https") or not url.raw_host or url.port == 0:
        raise ValueError(f"expected an http:// or https:// URL, got {text.split('@')[-1]!r}")
    _check_host(url.raw_host, text.split("@")[-1])
    if url.user is not None or url.query_string or url.fragment:
        # a collector's credentials are a secret: OTEL_EXPORTER_OTLP_HEADERS carries them
        raise ValueError(
            "an OTLP endpoint has no credentials, query or fragment (put an API key in "
            f"OTEL_EXPORTER_OTLP_HEADERS), got {text.split('@')[-1]!r}"
        )
    return str(url.with_path("/v1/traces")) if url.path in ("", "/") else str(url)


def _tracing(node: Node) -> TracingSettings:
    node.mapping(allowed=set(KEYS["tracing"]))
    values: dict[str, Any] = {}
    if (child := node.get("endpoint")) is not None and child.value is not None:
        values["endpoint"] = _convert(child, parse_otlp_endpoint)
    if (child := node.get("service_name")) is not None:
        values["service_name"] = child.str(max_len=200)
    if (child := node.get("sample_ratio")) is not None:
        ratio = child.number(minimum=0.0)
        if ratio > 1:
            raise child.fail(f"a ratio is at most 1, got {ratio}")
        values["sample_ratio"] = ratio
    for key in ("max_queue_size", "max_export_batch_size"):
        if (child := node.get(key)) is not None:
            values[key] = child.int(minimum=1, maximum=1_000_000)
    for key in ("schedule_delay_seconds", "export_timeout_seconds"):
        if (child := node.get(key)) is not None:
            values[key] = child.number(minimum=0.001)
    tracing = TracingSettings(**values)
    if tracing.max_export_batch_size > tracing.max_queue_size:
        raise node.fail("max_export_batch_size cannot be larger than max_queue_size")
    return tracing


_ORIGIN = re.compile(r"(\*|https?://(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?)")
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # an RFC 9110 token: a header or method


def _cors(node: Node) -> CorsSettings:
    node.mapping(allowed=set(KEYS["cors"]))
    values: dict[str, Any] = {}
    if (child := node.get("allow_origins")) is not None:
        origins = []
        for item in child.list():
            origin = item.str(max_len=300)
            if not _ORIGIN.fullmatch(origin):
                raise item.fail(
                    "expected an origin like https://app.example.com (no path or trailing "
                    f"slash), https://*.example.com or *, got {origin!r}"
                )
            origins.append(origin)
        values["allow_origins"] = tuple(origins)
    for key in ("allow_methods", "allow_headers", "expose_headers"):
        if (child := node.get(key)) is not None:
            names = []
            for item in child.list():
                name = item.str(max_len=100)
                if not _TOKEN.fullmatch(name):
                    raise item.fail(f"expected a header or method name, got {name!r}")
                names.append(name.upper() if key == "allow_methods" else name)
            values[key] = tuple(names)
    if (child := node.get("allow_credentials")) is not None:
        values["allow_credentials"] = child.bool()
    if (child := node.get("max_age_seconds")) is not None:
        values["max_age_seconds"] = child.int(minimum=0, maximum=86_400)
    cors = CorsSettings(**values)
    # browsers refuse credentials with a wildcard origin: say so here, not in a console
    if cors.allow_credentials and "*" in cors.allow_origins:
        raise node.fail("allow_credentials cannot be used with allow_origins '*'; list origins")
    return cors


def _pool(prefix: str, item: Node) -> UpstreamPool:
    """An upstream served by several targets: ``targets`` and its pool settings."""
    targets: list[tuple[URL, int]] = []
    for target in item.child("targets").list():
        if isinstance(target.value, str):
            targets.append((_convert(target, parse_upstream), 1))
            continue
        target.mapping(allowed=set(KEYS["upstreams[].targets[]"]), required={"url"})
        weight_node = target.get("weight")
        weight = weight_node.int(minimum=1, maximum=1000) if weight_node is not None else 1
        targets.append((_convert(target.child("url"), parse_upstream), weight))
    if not targets:
        raise item.child("targets").fail("list at least one target")
    values: dict[str, Any] = {}
    if (node := item.get("balance")) is not None:
        values["balance"] = node.str(choices=("least_pending", "round_robin"))
    if (node := item.get("eject")) is not None:
        node.mapping(allowed=set(KEYS["upstreams[].eject"]))
        if (sub := node.get("after")) is not None:
            values["eject_after"] = sub.int(minimum=0)
        if (sub := node.get("seconds")) is not None:
            values["eject_seconds"] = sub.number(minimum=0.001)
    if (node := item.get("health")) is not None:
        node.mapping(allowed=set(KEYS["upstreams[].health"]), required={"path"})
        path = node.child("path").str(max_len=2000)
        if not path.startswith("/"):
            raise node.child("path").fail("a health check path starts with '/'")
        values["health_path"] = path
        if (sub := node.get("interval_seconds")) is not None:
            values["health_interval"] = sub.number(minimum=0.01)
        if (sub := node.get("timeout_seconds")) is not None:
            values["health_timeout"] = sub.number(minimum=0.01)
    if (node := item.get("breaker")) is not None:
        node.mapping(allowed=set(KEYS["upstreams[].breaker"]), required={"failure_ratio"})
        ratio = node.child("failure_ratio").number(minimum=0.0)
        if ratio > 1:
            raise node.child("failure_ratio").fail("a ratio is at most 1")
        values["breaker_ratio"] = ratio
        if (sub := node.get("min_requests")) is not None:
            values["breaker_min_requests"] = sub.int(minimum=1)
        if (sub := node.get("window_seconds")) is not None:
            values["breaker_window"] = sub.number(minimum=0.01)
        if (sub := node.get("open_seconds")) is not None:
            values["breaker_open_seconds"] = sub.number(minimum=0.01)
    return UpstreamPool(prefix, tuple(targets), PoolSettings(**values))


def _accounts(node: Node) -> AccountSettings:
    node.mapping(allowed=set(KEYS["accounts"]))
    values: dict[str, Any] = {}
    for key in (
        "provisions_per_address_per_day",
        "login_failures_per_account",
        "login_failures_per_address",
    ):
        if (child := node.get(key)) is not None:
            unlimited = isinstance(child.value, str) and child.value == "unlimited"
            values[key] = None if unlimited else child.int(minimum=1)
    if (child := node.get("login_window_seconds")) is not None:
        values["login_window_seconds"] = child.number(minimum=1)
    if (child := node.get("session_ttl_seconds")) is not None:
        values["session_ttl_seconds"] = child.number(minimum=60)
    if (child := node.get("min_password_length")) is not None:
        values["min_password_length"] = child.int(minimum=8, maximum=128)
    return AccountSettings(**values)


def _stripe(node: Node) -> StripeSettings:
    keys = {"secret_key_env", "webhook_secret_env", "api_base_env"}
    node.mapping(allowed=set(KEYS["stripe"]))
    values: dict[str, Any] = {}
    for key in (*sorted(keys), "success_url", "cancel_url"):
        if (child := node.get(key)) is not None:
            values[key] = child.str(max_len=2000)
    if (child := node.get("mode")) is not None:
        values["mode"] = child.str(choices=("subscription", "payment"))
    if (child := node.get("prices")) is not None:
        values["prices"] = tuple((tier, item.str()) for tier, item in child.items())
    if (child := node.get("tolerance_seconds")) is not None:
        values["tolerance_seconds"] = child.number(minimum=1)
    return StripeSettings(**values)


def _jwt(node: Node, base: Path) -> JwtSettings:
    node.mapping(allowed=set(KEYS["jwt"]))
    values: dict[str, Any] = {}
    if (child := node.get("algorithms")) is not None:
        values["algorithms"] = tuple(
            item.str(choices=tuple(sorted(SUPPORTED))) for item in child.list()
        )
        if not values["algorithms"]:
            raise child.fail("list at least one algorithm")
    if (child := node.get("secret_env")) is not None:
        values["secret_env"] = child.str()
    # null (or leaving the key out) means "not used"
    for key in ("issuer", "audience"):
        if (child := node.get(key)) is not None and child.value is not None:
            values[key] = child.str()
    for key in ("public_key_file", "jwks_file"):
        if (child := node.get(key)) is not None and child.value is not None:
            values[key] = str(_relative(base, child.str()))
    if (child := node.get("jwks_url")) is not None and child.value is not None:
        url = child.str(max_len=2000)
        if not url.startswith(("https://", "http://")):
            raise child.fail(f"expected an http:// or https:// URL, got {url!r}")
        values["jwks_url"] = url
    if (child := node.get("leeway_seconds")) is not None:
        values["leeway_seconds"] = child.number()
    for key in ("jwks_refresh_seconds", "jwks_refetch_seconds"):
        if (child := node.get(key)) is not None:
            values[key] = child.number(minimum=1)
    jwt = JwtSettings(**values)
    # an RS/ES algorithm with no key to verify it would refuse every token, silently
    asymmetric = [a for a in jwt.algorithms if not a.startswith("HS")]
    if asymmetric and jwt.public_key_file is None and jwt.jwks_file is None and not jwt.jwks_url:
        raise node.fail(f"{asymmetric[0]} needs public_key_file, jwks_file or jwks_url")
    return jwt


def _limits(node: Node) -> Limits:
    node.mapping(allowed=set(KEYS["limits"]))
    values: dict[str, Any] = {}
    for key in ("max_body_bytes", "max_header_bytes", "max_headers", "max_header_block_bytes"):
        if (child := node.get(key)) is not None:
            values[key] = child.int(minimum=1)
    if (child := node.get("max_connections_per_address")) is not None:
        values["max_connections_per_address"] = child.int(minimum=0)
    for key in ("header_timeout_seconds", "body_timeout_seconds", "body_idle_seconds"):
        if (child := node.get(key)) is not None:
            values[key] = child.number(minimum=0.1)
    limits = Limits(**values)
    if limits.body_idle_seconds > limits.body_timeout_seconds:
        raise node.fail("body_idle_seconds cannot be longer than body_timeout_seconds")
    return limits


def _relative(base: Path, value: str) -> Path:
    path = Path(value)
    return path if path.is_absolute() else base / path


def _convert(node: Node, parse: Any) -> Any:
    try:
        return parse(node.str())
    except ValueError as exc:
        raise node.fail(str(exc)) from exc


__all__ = [
    "KEYS",
    "Address",
    "ConfigError",
    "JwtSettings",
    "Limits",
    "Settings",
    "TracingSettings",
    "load_settings",
]
