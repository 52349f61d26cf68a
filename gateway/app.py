"""The one composition root: builds the proxy and admin apps from settings; all AppKeys here."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry

from gateway.accesslog import AccessLog, access_log
from gateway.aio import cancel_and_wait
from gateway.api.accounts import AccountsApi
from gateway.api.admin import AdminApi, admin_guard
from gateway.api.admin_accounts import AdminAccountsApi
from gateway.api.admin_policy import AdminPolicyApi
from gateway.api.billing import BillingApi
from gateway.api.body import BODY_DEADLINES, BodyDeadlines
from gateway.api.local import LocalHandler, check_handlers
from gateway.api.ops import OpsApi
from gateway.api.projects import ProjectsApi
from gateway.api.stripe import StripeClient, StripeWebhook
from gateway.api.tiers import TiersApi
from gateway.boundary import error_boundary
from gateway.cors import Cors
from gateway.identity.cache import IdentityCache, follow
from gateway.identity.jwks import JwksClient
from gateway.identity.registry import Registry
from gateway.identity.resolve import Authenticator
from gateway.identity.sessions import Sessions
from gateway.identity.tier_moves import APPROVAL, MOVED, TierChangesRefused, tier_moves
from gateway.identity.tokens import JwtVerifier, load_public_keys
from gateway.identity.users import Users
from gateway.listener import PROXY_LISTENER, ProxyListener
from gateway.metering.clock import Clock, SystemClock
from gateway.metering.guard import GuardedStore
from gateway.metering.leases import SWEEP_SECONDS as LEASE_SWEEP_SECONDS
from gateway.metering.leases import Leases
from gateway.metering.memory import MemoryStore
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from gateway.metrics import Metrics
from gateway.pipeline import OUTCOME_LABEL, Pipeline
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy
from gateway.policy.reload import Reloader, read_policy
from gateway.proxy.expect import defer_continue
from gateway.proxy.forward import Forwarder, Upstream, Upstreams
from gateway.proxy.pool import Pool, PoolSettings, Target
from gateway.proxy.websocket import TunnelLimits, WebSocketTunnel
from gateway.settings import Settings, load_settings
from gateway.trace import load_otel


@dataclass
class Gateway:
    """Everything one process shares between its proxy and admin listeners."""

    settings: Settings
    clock: Clock
    policy: PolicyHolder
    store: GuardedStore
    leases: Leases  # hot accounts' leased units, in front of ``store`` for decisions
    registry: Registry
    metrics: Metrics
    authenticator: Authenticator
    sessions: Sessions
    users: Users
    reloader: Reloader
    jwks: JwksClient | None = None


GATEWAY = web.AppKey("gateway", Gateway)
log = logging.getLogger("gateway")


def open_store(url: str, clock: Clock, *, timeout_ms: int = 250) -> Store:
    """The store a ``--store`` URL names: ``memory`` or a Redis URL (see redis_store)."""
    if url == "memory":
        return MemoryStore(clock)
    # Redis computes windows from its own clock, so gateways with skewed clocks agree
    return RedisStore(url, timeout_ms=timeout_ms)


def build_verifier(
    settings: Settings, tenant_claim: str, metrics: Metrics | None = None
) -> tuple[JwtVerifier, JwksClient | None]:
    """The JWT verifier and, with ``jwt.jwks_url``, the client that keeps its keys fresh."""
    jwt = settings.jwt
    static = load_public_keys(jwt.public_key_file, jwt.jwks_file)
    verifier = JwtVerifier(
        algorithms=jwt.algorithms,
        secret=settings.jwt_secret(),
        public_keys=static,
        issuer=jwt.issuer,
        audience=jwt.audience,
        leeway=jwt.leeway_seconds,
        tenant_claim=tenant_claim,
        dynamic_keys=jwt.jwks_url is not None,
    )
    if jwt.jwks_url is None:
        return verifier, None
    jwks = JwksClient(
        jwt.jwks_url,
        verifier,
        static_keys=static,
        refresh_seconds=jwt.jwks_refresh_seconds,
        refetch_seconds=jwt.jwks_refetch_seconds,
        on_fetch=(lambda result: metrics.jwks_fetches.labels(result).inc()) if metrics else None,
    )
    return verifier, jwks


def build_gateway(
    settings: Settings,
    *,
    clock: Clock | None = None,
    store: Store | None = None,
    registry: CollectorRegistry | None = None,
) -> Gateway:
    clock = clock or SystemClock()
    settings.admin_token()  # a token too short to guard the admin API stops the start here
    policy, text = read_policy(settings.policy)
    metrics = Metrics(registry or CollectorRegistry())
    holder = PolicyHolder(policy, clock.now())
    metrics.policy_active(policy.name, policy.digest, holder.loaded_at)
    reloader = Reloader(settings.policy, holder, metrics, clock, text)
    reloader.add_check(_same_tenant_claim(policy.tenant_claim))
    metrics.store_degraded.set(0)
    store = GuardedStore(
        store or open_store(settings.store, clock, timeout_ms=settings.store_timeout_ms),
        mode=settings.store_failure_mode,
        allowance=settings.store_fail_open_allowance,
        clock=clock,
        metrics=metrics,
    )
    cache = IdentityCache(
        max_entries=settings.identity_cache_entries,
        ttl=settings.identity_cache_ttl_seconds,
        metrics=metrics,
    )
    accounts = Registry(store, clock, cache)
    reloader.set_guard(tier_guard(settings, accounts, store, metrics))
    sessions = Sessions(store, clock, ttl_seconds=settings.accounts.session_ttl_seconds)
    verifier, jwks = build_verifier(settings, policy.tenant_claim, metrics)
    return Gateway(
        settings=settings,
        clock=clock,
        policy=holder,
        store=store,
        leases=Leases(store, clock, policy=holder, metrics=metrics),
        registry=accounts,
        metrics=metrics,
        authenticator=Authenticator(accounts, verifier, sessions, jwks),
        sessions=sessions,
        users=Users(store, clock),
        reloader=reloader,
        jwks=jwks,
    )


def tier_guard(
    settings: Settings, registry: Registry, store: Store, metrics: Metrics
) -> Callable[[Policy, Policy, bool], Awaitable[None]]:
    """Refuse a reload that would serve accounts on another tier, unless allowed; when
    allowed, say in the log and a metric how many moved and to what."""

    async def guard(active: Policy, candidate: Policy, allowed: bool) -> None:
        moves = await tier_moves(registry, active, candidate)
        if not moves:
            return
        if allowed:
            # the other workers reload this digest on the admin API's notice: let them too
            await store.put_record(APPROVAL, candidate.digest, {"allowed": True})
        elif not settings.policy_allow_tier_changes and (
            await store.get_record(APPROVAL, candidate.digest) is None
        ):
            raise TierChangesRefused(moves)
        # every worker reloads the file; the first to install it counts the move, once
        if await store.put_record(MOVED, candidate.digest, moves.details(), only_if_absent=True):
            for (old, new), count in moves.moved.items():
                metrics.policy_tier_moves.labels(old, new).inc(count)
        log.warning("policy reload moves accounts: %s", moves.describe())

    return guard


def _same_tenant_claim(claim: str) -> Callable[[Policy], None]:
    def check(policy: Policy) -> None:
        # the JWT verifier is built once with the claim; a new one needs a restart
        if policy.tenant_claim != claim:
            raise ValueError(
                f"{policy.file}: identity.tenant_claim changed from {claim!r} to "
                f"{policy.tenant_claim!r}; that takes a restart, not a reload"
            )

    return check


def local_handlers(gateway: Gateway, stripe: StripeClient) -> dict[str, LocalHandler]:
    """Every handler a policy route may name with ``answer:``."""
    settings = gateway.settings
    handlers: dict[str, LocalHandler] = {}
    for api in (
        AccountsApi(
            registry=gateway.registry,
            users=gateway.users,
            sessions=gateway.sessions,
            store=gateway.store,
            clock=gateway.clock,
            settings=settings.accounts,
            trusted_proxies=settings.trusted_proxies,
        ),
        ProjectsApi(registry=gateway.registry),
        TiersApi(store=gateway.store, stripe=stripe),
        billing_api(gateway),
        StripeWebhook(
            settings=settings.stripe,
            registry=gateway.registry,
            store=gateway.store,
            clock=gateway.clock,
        ),
    ):
        handlers.update(api.handlers())
    return handlers


def handler_names(policy_file: str) -> frozenset[str]:
    """The names a route may ``answer:`` with, as `serve` builds them (for `policy check`)."""
    settings = load_settings(None, policy=policy_file, store="memory")
    gateway = build_gateway(settings, store=MemoryStore(SystemClock()))
    return frozenset(local_handlers(gateway, StripeClient(settings.stripe)))


def billing_api(gateway: Gateway) -> BillingApi:
    return BillingApi(
        policy=gateway.policy, registry=gateway.registry, store=gateway.store, clock=gateway.clock
    )


def build_upstreams(settings: Settings) -> Upstreams:
    """Every prefix's pool: the configured targets, or one target for a plain ``url`` (never
    ejected, no breaker: with nothing to fail over to, the caller gets the upstream's own
    errors)."""
    pools = {pool.prefix: pool for pool in settings.pools}
    built = []
    for prefix, url in settings.upstreams:
        pool = pools.get(prefix)
        if pool is None:
            built.append(Upstream(prefix, Pool([Target(url)], PoolSettings(eject_after=0))))
        else:
            targets = [Target(target, weight=weight) for target, weight in pool.targets]
            built.append(Upstream(prefix, Pool(targets, pool.settings)))
    return Upstreams(built)


def proxy_app(gateway: Gateway) -> web.Application:
    settings = gateway.settings
    log = AccessLog(settings.access_log) if settings.access_log else None
    cors = Cors(settings.cors) if settings.cors.allow_origins else None
    # OpenTelemetry spans (gateway/otel.py): imported, with the SDK, only when configured
    tracing = (
        load_otel()(
            settings.tracing,
            policy=gateway.policy,
            store="memory" if isinstance(gateway.store.inner, MemoryStore) else "redis",
        )
        if settings.tracing.enabled
        else None
    )
    middlewares = [
        access_log(log=log, clock=gateway.clock, outcome=OUTCOME_LABEL),
        # the request's span takes over the trace the access log started or continued
        *([tracing.middleware()] if tracing is not None else []),
        # preflights are answered before the error boundary counts a decision
        *([cors.middleware()] if cors is not None else []),
        error_boundary(metrics=gateway.metrics, max_in_flight=settings.max_in_flight),
    ]
    app = web.Application(middlewares=middlewares)
    if cors is not None:
        app.on_response_prepare.append(cors.on_prepare)
    app[GATEWAY] = gateway
    app[BODY_DEADLINES] = body_deadlines(settings)
    upstreams = build_upstreams(settings)

    forwarder = Forwarder(
        upstreams,
        max_body_bytes=settings.limits.max_body_bytes,
        connect_timeout=settings.connect_timeout_seconds,
        read_timeout=settings.read_timeout_seconds,
        body_timeout=settings.limits.body_timeout_seconds,
        body_idle=settings.limits.body_idle_seconds,
        write_timeout=settings.client_write_seconds,
        strip_headers=settings.method_override_headers,
        pool_size=settings.upstream_max_connections,
        pool_idle_seconds=settings.pool_idle_seconds,
        trusted_proxies=settings.trusted_proxies,
        metrics=gateway.metrics,
    )
    tunnel = WebSocketTunnel(
        forwarder,
        TunnelLimits(
            idle_seconds=settings.websocket.idle_seconds,
            max_seconds=settings.websocket.max_seconds,
            max_message_bytes=settings.websocket.max_message_bytes,
            connect_seconds=settings.connect_timeout_seconds,
        ),
    )
    stripe = StripeClient(settings.stripe)
    handlers = local_handlers(gateway, stripe)
    check_handlers(gateway.policy.current, handlers)
    gateway.reloader.add_check(lambda policy: check_handlers(policy, handlers))
    pipeline = Pipeline(
        policy=gateway.policy,
        authenticator=gateway.authenticator,
        store=gateway.store,
        leases=gateway.leases,
        forwarder=forwarder,
        metrics=gateway.metrics,
        clock=gateway.clock,
        handlers=handlers,
        websockets=tunnel,
        max_header_block=settings.limits.max_header_block_bytes,
        tracing=tracing,
        trusted_proxies=settings.trusted_proxies,
    )
    # every path reaches the pipeline, which canonicalises it; (?s) so an encoded newline
    # gets the pipeline's 400 rather than slipping past the route as a 404
    route = app.router.add_route(
        "*", "/{tail:(?s:.*)}", pipeline.handle, expect_handler=defer_continue
    )
    # GatewayRunner serves the app through this: the same route and middlewares, composed once
    app[PROXY_LISTENER] = ProxyListener(app, route, middlewares)

    async def session_ctx(app: web.Application) -> AsyncIterator[None]:
        # forwarded requests go through the forwarder's own pooled client; this one session
        # (and its pool) serves WebSocket handshakes and active health checks
        # an idle pooled connection is closed before the upstream's own keep-alive timeout
        # could close it under a request being written (0: never reuse one)
        idle = settings.pool_idle_seconds
        connector = aiohttp.TCPConnector(
            limit=settings.upstream_max_connections,
            limit_per_host=0,
            force_close=idle == 0,
            keepalive_timeout=idle if idle > 0 else None,
        )
        session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            # the upstream gets the client's headers, not aiohttp's defaults in their place
            skip_auto_headers=("User-Agent", "Accept", "Accept-Encoding", "Content-Type"),
            cookie_jar=aiohttp.DummyCookieJar(),
        )
        forwarder.attach(session)
        # other processes' registry writes reach this process's identity cache through here
        tasks = [asyncio.create_task(follow(gateway.store, gateway.registry.cache))]
        # a reload asked of any worker, or a changed file, reaches this worker through these
        tasks.append(asyncio.create_task(gateway.reloader.follow(gateway.store)))
        if settings.store_probe_seconds > 0:
            tasks.append(asyncio.create_task(gateway.store.watch(settings.store_probe_seconds)))
        # leases of a rolled window or a replaced policy go back to the store
        tasks.append(asyncio.create_task(gateway.leases.run(LEASE_SWEEP_SECONDS)))
        if settings.policy_watch_seconds > 0:
            tasks.append(asyncio.create_task(gateway.reloader.watch(settings.policy_watch_seconds)))
        if gateway.jwks is not None:
            tasks.append(asyncio.create_task(gateway.jwks.run()))
        # active health checks of upstream pools that configure them
        tasks.extend(
            asyncio.create_task(u.pool.watch(session))
            for u in upstreams
            if u.pool.settings.health_path is not None
        )
        if log is not None:
            log.open()
        async with stripe.opened():
            yield
        for task in tasks:
            await cancel_and_wait(task)
        if log is not None:
            log.close()
        forwarder.close()
        await session.close()
        await gateway.leases.close()  # unused leased units back to the store, best effort
        await gateway.store.close()

    app.cleanup_ctx.append(session_ctx)
    if tracing is not None:  # its cleanup flushes the spans the last requests left queued
        app.cleanup_ctx.append(tracing.lifecycle)
    return app


def admin_app(gateway: Gateway) -> web.Application:
    app = web.Application(
        middlewares=[
            error_boundary(metrics=None),
            admin_guard(gateway.settings.admin_token()),
        ]
    )
    app[GATEWAY] = gateway
    app[BODY_DEADLINES] = body_deadlines(gateway.settings)
    ops = OpsApi(
        store=gateway.store,
        metrics=gateway.metrics,
        policy=gateway.policy,
        workers=gateway.settings.workers,
    )
    admin = AdminApi(policy=gateway.policy, registry=gateway.registry, store=gateway.store)
    accounts = AdminAccountsApi(
        policy=gateway.policy,
        registry=gateway.registry,
        users=gateway.users,
        sessions=gateway.sessions,
        store=gateway.store,
    )
    policy = AdminPolicyApi(
        policy=gateway.policy,
        reloader=gateway.reloader,
        authenticator=gateway.authenticator,
        store=gateway.store,
        clock=gateway.clock,
        # explain refuses a route naming a handler serve lacks, as serve does
        handlers=local_handlers(gateway, StripeClient(gateway.settings.stripe)),
    )
    routes = (
        ops.routes()
        + admin.routes()
        + accounts.routes()
        + billing_api(gateway).routes()
        + policy.routes()
    )
    # 100 Continue only once the admin guard let the request through and a body is read
    app.add_routes(
        web.RouteDef(r.method, r.path, r.handler, {**r.kwargs, "expect_handler": defer_continue})
        for r in routes
    )
    return app


def body_deadlines(settings: Settings) -> BodyDeadlines:
    limits = settings.limits
    return BodyDeadlines(total=limits.body_timeout_seconds, idle=limits.body_idle_seconds)


def server_options(settings: Settings) -> dict[str, Any]:
    """aiohttp server limits: header size and count, and the time allowed to send headers."""
    limits = settings.limits
    return {
        "max_line_size": limits.max_header_bytes,
        "max_field_size": limits.max_header_bytes,
        "max_headers": limits.max_headers,
        # aiohttp arms this timer when a connection opens and after each response, and closes
        # the connection if no complete request head has arrived when it fires, however
        # steadily bytes trickle in: our defence against slowloris clients. It is also the
        # idle keep-alive timeout. tests/test_proxy_limits.py holds both cases.
        "keepalive_timeout": limits.header_timeout_seconds,
        # taken by GatewayRunner, not aiohttp: see gateway/server.py
        "max_connections_per_address": limits.max_connections_per_address,
        # bodies are relayed as sent; decompressing them would change what the upstream sees
        "auto_decompress": False,
        "access_log": None,
    }
