"""The request path in order: canonical path, match, identify, gate, meter, forward, settle."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

from aiohttp import hdrs, web
from multidict import CIMultiDictProxy

from gateway.accesslog import ENTRY, REQUEST_ID_HEADER, Entry
from gateway.api.local import LocalContext, LocalHandler
from gateway.errors import (
    HeadersTooLarge,
    MethodNotAllowed,
    NotFound,
    PolicyRefusal,
    Unauthenticated,
)
from gateway.identity.resolve import Authenticator, Identity, credential_from
from gateway.metering import caps, decide, rates
from gateway.metering.clock import Clock
from gateway.metering.guard import DEGRADED_HEADER, GuardedStore
from gateway.metering.leases import Leases
from gateway.metering.reported import USAGE_HEADER, Reported, parse_usage
from gateway.metering.store import Charge, Decision, MeterState
from gateway.metering.stream import StreamedCharge
from gateway.metrics import Metrics
from gateway.policy.holder import PolicyHolder
from gateway.policy.model import Policy, Route, Tier
from gateway.proxy import headers as identity_headers
from gateway.proxy.client import IpNetwork, client_address
from gateway.proxy.forward import Delivery, Forwarder, relay
from gateway.proxy.path import canonical_path, encode_path
from gateway.proxy.websocket import WebSocketTunnel, is_upgrade

if TYPE_CHECKING:  # imported only with tracing configured (gateway/trace.py: load_otel)
    from gateway.otel import Tracing

# request-scoped labels the error boundary reads for metrics
ROUTE_LABEL = web.RequestKey("gateway.route", str)
TIER_LABEL = web.RequestKey("gateway.tier", str)
OUTCOME_LABEL = web.RequestKey("gateway.outcome", str)
METER_LABEL = web.RequestKey("gateway.meter", str)


class Pipeline:
    def __init__(
        self,
        *,
        policy: PolicyHolder,
        authenticator: Authenticator,
        store: GuardedStore,
        leases: Leases,
        forwarder: Forwarder,
        metrics: Metrics,
        clock: Clock,
        handlers: Mapping[str, LocalHandler] | None = None,
        max_header_block: int = 64 * 1024,
        websockets: WebSocketTunnel | None = None,
        tracing: Tracing | None = None,
        trusted_proxies: Sequence[IpNetwork] = (),
    ) -> None:
        self._websockets = websockets
        self._tracing = tracing
        self._trusted = tuple(trusted_proxies)  # whose X-Forwarded-For names the client
        self._handlers = dict(handlers or {})
        self._policy = policy
        self._auth = authenticator
        self._store = store
        self._leases = leases  # decisions and refunds: a leased counter's stay in the process
        self._forwarder = forwarder
        self._metrics = metrics
        self._clock = clock
        self._max_header_block = max_header_block

    async def handle(self, request: web.Request) -> web.StreamResponse:
        # aiohttp bounds each header line and their number, not the block: 100 lines of
        # 8 KB would all be forwarded
        if sum(len(k) + len(v) + 4 for k, v in request.raw_headers) > self._max_header_block:
            raise HeadersTooLarge(
                f"the request headers are larger than {self._max_header_block} bytes"
            )
        # One policy for the whole request, even if a reload lands halfway through it.
        policy = self._policy.current
        path, encoded = canonical_path(request.raw_path.partition("?")[0])
        matched = policy.resolve(request.method, path)
        if matched is None or matched.route.methods is None or matched.route.answer is not None:
            # a path the gateway answers itself (its first `answer:` route claiming the path)
            # takes only the methods listed for it: another (TRACE, a typo'd verb) is a 405,
            # never forwarded, unless a route naming that method comes first
            allowed = policy.answered_methods(path)
            if allowed and request.method not in allowed:
                raise MethodNotAllowed(request.method, path, allowed)
        if matched is None:
            raise NotFound(f"no route for {request.method} {path}")
        route, params = matched.route, matched.params
        if matched.path != path:
            # a lenient route's variant spelling goes up spelled as the pattern is
            path, encoded = matched.path, encode_path(matched.path)
        request[ROUTE_LABEL] = route.name
        entry = request.get(ENTRY) or Entry("-", self._clock.now(), request.method, path)
        entry.route = route.name

        identity: Identity | None = None
        decision: Decision | None = None
        streamed: StreamedCharge | None = None
        costs: tuple[tuple[str, int], ...] = route.consume
        if route.auth:
            credential = credential_from(request.headers)
            if credential is None:
                raise Unauthenticated("this route needs an API key or a bearer token")
            identity = await self._auth.identify(policy, credential)
            tier = policy.tier(identity.tier)
            request[TIER_LABEL] = tier.name
            entry.account_id, entry.tier = identity.account_id, tier.name
            entry.project_id = decide.project_scope(route, identity, params)
            try:
                decide.check_gates(policy, tier, route)
                caps.check(policy, route, identity)
            except PolicyRefusal as gate:
                self._shadow_or_raise(policy, tier, route, entry, gate)
            costs = decide.request_costs(route, request.content_length)
            chunked = request.content_length is None and request.body_exists
            if route.body_meter is not None and chunked:  # charged as it flows, never free
                streamed = self._streamed_charge(policy, tier, route, identity, entry)
            # the key's service cap is one more charge in the same single decision
            capped = caps.charges(route, identity)
            if costs or capped:
                charges = decide.charges(
                    policy,
                    tier,
                    identity.account_id,
                    entry.project_id,
                    costs,
                    identity,
                    client=(
                        client_address(request, self._trusted) if policy.meters_clients else None
                    ),
                )
                charges += capped
                started = time.perf_counter()
                deciding = self._leases.consume(
                    identity.account_id, charges, failure_mode=tier.store_failure_mode
                )
                if self._tracing is not None:  # OpenTelemetry: the decision's span
                    deciding = self._tracing.store(deciding, charges)
                decision = await deciding
                self._metrics.consume_seconds.observe(time.perf_counter() - started)
                if decision.admitted:
                    entry.meters = costs
                else:
                    index = decision.refused
                    assert index is not None
                    request[METER_LABEL] = charges[index].meter
                    refusal = (
                        caps.refusal(
                            policy, charges[index], decision.states[index], self._clock.now()
                        )
                        if caps.is_cap(charges[index].meter)
                        else decide.refusal(
                            policy,
                            tier,
                            route,
                            charges[index],
                            decision.states[index],
                            self._clock.now(),
                        )
                    )
                    if decision.degraded:
                        refusal.headers[DEGRADED_HEADER] = "fail-open"
                    self._shadow_or_raise(policy, tier, route, entry, refusal)
                    decision = None  # forwarded in shadow: nothing was consumed
                # settling walks the decision's states: one (meter, cost) per charge (a rate
                # the tier leaves unlimited is none)
                costs = tuple((c.meter, c.cost) for c in charges)

        if route.answer is not None:
            return await self._answer(request, policy, route, params, identity, decision, costs)

        inject = _identity_headers(policy, identity, route) if identity is not None else {}
        inject[REQUEST_ID_HEADER] = entry.request_id
        if entry.trace is not None:
            inject.update(entry.trace.upstream_headers())
        # a gateway key is ours alone, on every route; a JWT is passed on so the upstream can
        # verify it too, and so is whatever an unauthenticated route's callers authorise with
        if identity is not None:
            drop_authorization = identity.kind != "jwt"
        else:
            drop_authorization = _carries_gateway_key(policy, request.headers)
        if route.websocket and self._websockets is not None and is_upgrade(request):
            return await self._tunnel(
                request,
                policy,
                route,
                params,
                identity,
                decision,
                costs,
                path=encoded,
                inject=inject,
                drop_authorization=drop_authorization,
                entry=entry,
            )
        answered = False
        delivery = Delivery()
        started = time.perf_counter()
        try:
            opening = self._forwarder.open(
                request,
                encoded,
                inject=inject,
                drop_authorization=drop_authorization,
                delivery=delivery,
                body_meter=streamed,
                route=route.name,
            )
            if self._tracing is not None and entry.trace is not None:
                # OpenTelemetry: the upstream call's span, the parent in its traceparent
                opening = self._tracing.upstream(opening, request.method, inject, entry.trace)
            async with opening as upstream:
                answered = True
                entry.upstream_seconds = time.perf_counter() - started
                ok = 200 <= upstream.status < 300
                await self._settle(
                    policy,
                    identity,
                    route,
                    params,
                    decision,
                    costs,
                    delivered=True,
                    ok=ok,
                    streamed=streamed,
                    entry=entry,
                )
                extra = self._relayed_headers(decision, entry)
                reported = parse_usage(policy, upstream.headers.get(USAGE_HEADER))
                response = await relay(
                    request, upstream, extra, write_timeout=self._forwarder.write_timeout
                )
        except Exception:
            # Whatever stopped the forward before the upstream answered (refused, too slow,
            # a body too large, broken or stalled) gives back live counts; calls are given
            # back only if the upstream provably never received the request.
            if not answered:
                await self._settle(
                    policy,
                    identity,
                    route,
                    params,
                    decision,
                    costs,
                    delivered=delivery.sent,
                    ok=False,
                    streamed=streamed,
                    entry=entry,
                )
            raise
        if identity is not None and reported:
            # after the client has its response: the upstream already did the work
            await self._record_usage(policy, identity, route, params, reported)
        return response

    async def _tunnel(
        self,
        request: web.Request,
        policy: Policy,
        route: Route,
        params: dict[str, str],
        identity: Identity | None,
        decision: Decision | None,
        costs: tuple[tuple[str, int], ...],
        *,
        path: str,
        inject: dict[str, str],
        drop_authorization: bool,
        entry: Entry,
    ) -> web.StreamResponse:
        """A WebSocket route's upgrade: metered as one call like any request, then tunnelled.

        The same settlement rule as the forwarder: refunded only when the upstream was never
        reached; once its handshake began the call stays charged."""
        assert self._websockets is not None
        delivery = Delivery()
        started = time.perf_counter()
        try:
            upstream = await self._websockets.open(
                request,
                path,
                inject=inject,
                drop_authorization=drop_authorization,
                delivery=delivery,
            )
        except Exception:
            await self._settle(
                policy,
                identity,
                route,
                params,
                decision,
                costs,
                delivered=delivery.sent,
                ok=False,
                entry=entry,
            )
            raise
        entry.upstream_seconds = time.perf_counter() - started
        await self._settle(
            policy, identity, route, params, decision, costs, delivered=True, ok=True, entry=entry
        )
        return await self._websockets.relay(
            request, upstream, self._relayed_headers(decision, entry)
        )

    def _relayed_headers(self, decision: Decision | None, entry: Entry) -> dict[str, str]:
        """What the gateway adds to a relayed response, forwarded or tunnelled alike."""
        if decision is not None and decision.degraded:
            # admitted on the local allowance: the shared count is not known here
            extra = {DEGRADED_HEADER: "fail-open"}
        else:
            states = decision.states if decision is not None else ()
            extra = decide.rate_limit_headers(states, self._clock.now())
        extra[REQUEST_ID_HEADER] = entry.request_id
        return extra

    def _streamed_charge(
        self, policy: Policy, tier: Tier, route: Route, identity: Identity, entry: Entry
    ) -> StreamedCharge:
        assert route.body_meter is not None
        charge = decide.charges(
            policy, tier, identity.account_id, entry.project_id, [(route.body_meter, 0)], identity
        )[0]

        def refuse(charge: Charge, state: MeterState) -> None:
            refusal = decide.quota_refusal(policy, tier, route, charge, state, self._clock.now())
            self._shadow_or_raise(policy, tier, route, entry, refusal)

        return StreamedCharge(
            self._store, identity.account_id, charge, tier.store_failure_mode, refuse
        )

    def _shadow_or_raise(
        self, policy: Policy, tier: Tier, route: Route, entry: Entry, refusal: PolicyRefusal
    ) -> None:
        """Raise ``refusal``, unless shadow mode covers it: then count it, log it, go on."""
        if not policy.shadowed(tier, route):
            raise refusal
        self._metrics.shadow_refusals.labels(tier.name, route.name, refusal.outcome).inc()
        entry.shadow.append(refusal.outcome)

    async def _answer(
        self,
        request: web.Request,
        policy: Policy,
        route: Route,
        params: dict[str, str],
        identity: Identity | None,
        decision: Decision | None,
        costs: tuple[tuple[str, int], ...],
    ) -> web.StreamResponse:
        """A gateway-answered route: the local handler stands where the forwarder would."""
        handler = self._handlers.get(route.answer or "")
        if handler is None:
            raise NotFound(f"route {route.name} names no handler this gateway has")
        request[OUTCOME_LABEL] = "answered"
        context = LocalContext(request, policy, identity, params)
        ok = False
        try:
            response = await handler(context)
            ok = 200 <= response.status < 300
        finally:
            await self._settle(
                policy,
                identity,
                route,
                params,
                decision,
                costs,
                delivered=True,
                ok=ok,
                freed=context.released,
                entry=request.get(ENTRY),
            )
        states = decision.states if decision is not None else ()
        response.headers.update(decide.rate_limit_headers(states, self._clock.now()))
        return response

    async def _settle(
        self,
        policy: Policy,
        identity: Identity | None,
        route: Route,
        params: dict[str, str],
        decision: Decision | None,
        costs: tuple[tuple[str, int], ...],
        *,
        delivered: bool,
        ok: bool,
        freed: Sequence[tuple[str, int]] = (),
        streamed: StreamedCharge | None = None,
        entry: Entry | None = None,
    ) -> None:
        """Give back what the request should not keep; free live resources a delete removed.

        A call is refunded only when the upstream provably never received it (``delivered``
        false: the connection was refused or not made); once a byte may have reached it, the
        upstream may have done the work, and a 502 or 504 stays charged."""
        if identity is None:
            return
        giveback: list[tuple[str, int]] = []
        refunded: list[tuple[str, int]] = []
        if decision is not None:
            for (name, cost), state in zip(costs, decision.states, strict=True):
                meter = policy.meters.get(name)
                # a service cap counts calls like a counter
                kind = meter.kind if meter is not None else "counter" if caps.is_cap(name) else None
                refundable = not delivered and route.refund == "unanswered"
                if kind == "rate":
                    # a rate unit is given back like a call: the bucket's TAT moves back
                    if refundable and state.rate is not None:
                        giveback.append(rates.refund(state, cost))
                        refunded.append((name, cost))
                    continue
                # a live count rises only when the upstream created the thing (2xx)
                if (kind == "gauge" and not ok) or (kind == "counter" and refundable):
                    giveback.append((state.key, cost))
                    refunded.append((name, cost))
        if streamed is not None:
            if entry is not None and streamed.total:
                entry.meters = (*entry.meters, (route.body_meter or "", streamed.total))
            if not ok and (items := streamed.giveback()):
                giveback.extend(items)
                refunded.append((route.body_meter or "", streamed.total))
        if entry is not None and refunded:
            entry.refunded = refunded
        if ok and (route.release or freed):
            tier = policy.tier(identity.tier)
            project_id = decide.project_scope(route, identity, params)
            freeing = [
                *route.release,
                *(
                    (m, c)
                    for m, c in freed
                    if m in policy.meters and policy.meters[m].kind == "gauge"
                ),
            ]
            released = decide.charges(policy, tier, identity.account_id, project_id, freeing)
            giveback.extend(decide.releases(identity.account_id, released))
        if giveback:
            await self._leases.release(identity.account_id, giveback)

    async def _record_usage(
        self,
        policy: Policy,
        identity: Identity,
        route: Route,
        params: dict[str, str],
        reported: Sequence[Reported],
    ) -> None:
        """Settle what the upstream reported: absolute byte counts, counter increments."""
        tier = policy.tier(identity.tier)
        project_id = decide.project_scope(route, identity, params)
        items = [(r.meter, r.amount) for r in reported]
        charges = decide.charges(policy, tier, identity.account_id, project_id, items)
        increments = []
        for item, charge in zip(reported, charges, strict=True):
            if item.absolute:
                await self._store.set_usage(identity.account_id, charge, item.amount)
            else:
                increments.append(dataclasses.replace(charge, limit=None))
        if increments:
            await self._store.consume(identity.account_id, increments)


def _carries_gateway_key(policy: Policy, headers: CIMultiDictProxy[str]) -> bool:
    authorization = headers.get(hdrs.AUTHORIZATION)
    if authorization is None:
        return False
    return policy.key_type(authorization.strip().partition(" ")[2].strip()) is not None


def _identity_headers(policy: Policy, identity: Identity, route: Route) -> dict[str, str]:
    out = {
        identity_headers.ACCOUNT: identity.account_id,
        identity_headers.TIER: identity.tier,
        identity_headers.ROUTE: route.name,
    }
    upstream = policy.upstream_features(policy.tier(identity.tier))
    if upstream:
        # only the gateway sets it: a client's X-Gateway-* headers are stripped first
        out[identity_headers.FEATURES] = upstream
    if identity.project_id is not None:
        out[identity_headers.PROJECT] = identity.project_id
    if identity.key_id is not None:
        out[identity_headers.KEY_ID] = identity.key_id
    if identity.organization_id is not None:
        out[identity_headers.ORGANIZATION] = identity.organization_id
    return out
