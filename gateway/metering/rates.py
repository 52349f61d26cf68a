"""Rate meters in a decision: GCRA arithmetic, their states, refusals and header fields.

GCRA (the generic cell rate algorithm) keeps one number per key: the theoretical arrival
time (TAT), in whole microseconds. With emission interval ``T`` (period / count) and burst
``B``, a request costing ``c`` at ``now`` is admitted when
``max(TAT, now) + c*T <= now + B*T``, and then TAT becomes ``max(TAT, now) + c*T``. So a
full bucket admits exactly ``B`` unit requests at one instant, and after ``k*T`` more,
exactly ``k`` more. A key expires when its bucket would be full again (TAT), which is the
same as a key never seen. consume.lua's GCRA block does the same integer arithmetic in
Redis; the memory store calls ``gcra`` below.

A refund (the upstream provably never got the request) moves TAT back by ``c*T``: the same
release every store already does (subtract, never below zero), since a TAT at or before
``now`` means a full bucket, whatever its value.
"""

from __future__ import annotations

import math

from gateway.errors import RateLimited
from gateway.metering.store import Charge, MeterState
from gateway.policy.model import Policy, Rate, Route, Tier

MICROS = 1_000_000


def micros(now: float) -> int:
    """Epoch seconds as whole microseconds (consume.lua rounds the same way)."""
    return math.floor(now * MICROS + 0.5)


def gcra(tat_us: int, now_us: int, cost: int, rate: Rate) -> tuple[bool, int]:
    """``(admitted, TAT after)``; a refusal leaves TAT as it was (``max(TAT, now)``)."""
    base = max(tat_us, now_us)
    after = base + cost * rate.emission_us
    if after - now_us > rate.burst * rate.emission_us:
        return False, base
    return True, after


def ttl_ms(tat_us: int, now_us: int) -> int:
    """How long a key is worth keeping: until its bucket is full again."""
    return max(-(-(tat_us - now_us) // 1000), 1)


def state(key: str, tat_us: int, now_us: int, charge: Charge, local_now: float) -> MeterState:
    """A rate charge's MeterState from the store's TAT and its own ``now`` (Redis time on
    Redis), told in this process's clock (``local_now``) so headers need no other clock."""
    assert charge.rate is not None
    full_in = max(tat_us - now_us, 0)
    used = -(-full_in // charge.rate.emission_us)
    return MeterState(
        key,
        used,
        charge.rate.burst,
        local_now + full_in / MICROS,
        meter=charge.meter,
        rate=charge.rate,
    )


def refund(state: MeterState, cost: int) -> tuple[str, int]:
    """The release item that gives ``cost`` back to a rate meter's bucket."""
    assert state.rate is not None
    return state.key, cost * state.rate.emission_us


def retry_after(rate: Rate, state: MeterState, cost: int, now: float) -> int:
    """Whole seconds (rounded up, at least 1) until ``cost`` fits the bucket."""
    fits_at = (state.reset_at or now) + (cost - rate.burst) * rate.emission_us / MICROS
    return max(math.ceil(fits_at - now - 1e-9), 1)


def window_seconds(rate: Rate) -> int:
    """The window the RateLimit fields give a bucket: the time it takes to refill all of
    it (``burst`` units at ``count`` per period), in whole seconds, at least 1."""
    return max(math.ceil(rate.burst * rate.emission_us / MICROS), 1)


def fields(rate: Rate, state: MeterState, now: float) -> tuple[str, str]:
    """A bucket's items of ``RateLimit-Policy`` and ``RateLimit`` (draft-ietf-httpapi-
    ratelimit-headers): ``q`` the burst over ``w`` the refill time; ``r`` what a burst may
    take now, ``t`` the seconds until the bucket is full again."""
    name = '"' + state.meter + '"'
    until_full = max(math.ceil((state.reset_at or now) - now - 1e-9), 0)
    return (
        f"{name};q={rate.burst};w={window_seconds(rate)}",
        f"{name};r={state.remaining};t={until_full}",
    )


def refusal(
    policy: Policy, tier: Tier, route: Route, charge: Charge, state: MeterState, now: float
) -> RateLimited:
    """The gateway's own 429 for a rate meter: ``RATE_LIMITED`` with the limit, its window
    and when to retry, ``Retry-After`` and the RateLimit fields of this limit alone."""
    rate = charge.rate
    assert rate is not None
    meter = policy.meters[charge.meter]
    wait = retry_after(rate, state, charge.cost, now)
    policy_item, current = fields(rate, state, now)
    headers = {
        "Retry-After": str(wait),
        "RateLimit-Limit": str(rate.burst),
        "RateLimit-Remaining": str(state.remaining),
        "RateLimit-Reset": str(wait),
        "RateLimit-Policy": policy_item,
        "RateLimit": current,
    }
    return RateLimited(
        f"Rate limit exceeded: the {tier.title} tier allows {rate.count:,} {meter.label}"
        f"/{rate.per} (bursts of {rate.burst:,}); retry in {wait} s.",
        details={
            "meter": meter.name,
            "scope": meter.scope,
            "limit": rate.count,
            "window": rate.per,
            "window_seconds": rate.seconds,
            "burst": rate.burst,
            "cost": charge.cost,
            "remaining": state.remaining,
            "retry_after": wait,
            "tier": tier.name,
            "route": route.name,
        },
        headers=headers,
    )
