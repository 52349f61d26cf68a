"""The lean decision script: what a decision reports, and the commands it sends to Redis.

The answers are held to the memory store on every store; the command counts (read from
Redis's own INFO commandstats, which counts the commands a script runs) are Redis only.
"""

from __future__ import annotations

import time

from gateway.metering.clock import FakeClock
from gateway.metering.keys import history_key
from gateway.metering.redis_store import RedisStore, script_source
from gateway.metering.store import Charge, Store
from gateway.metering.windows import window
from tests.redis_servers import RedisServer
from tests.test_store_contract import Make, make_store, store

__all__ = ["Make", "make_store", "store"]  # fixtures shared with the contract suite

HISTORY = 8 * 86400


def logic(cost: int = 1, limit: int | None = 100, *, overage: bool = False) -> list[Charge]:
    """An AgentStack logic call: two monthly counters with daily history."""
    return [
        Charge("logic_engine_calls", "42", "month", cost, limit, 0, overage, HISTORY),
        Charge("api_calls", "42", "month", cost, limit, 0, overage, HISTORY),
    ]


# -- every store ----------------------------------------------------------------------------


async def test_a_window_reports_its_source_counters_even_below_the_allowance(
    store: Store,
) -> None:
    charge = Charge("api_calls", "42", "month", 1, 2, 1, True)
    for _ in range(5):
        assert (await store.consume("42", [charge])).admitted
    (state,) = await store.peek("42", [charge])
    # an admin correction takes usage back below the allowance; the paid units stay paid
    await store.set_usage("42", charge, 0)
    decision = await store.consume("42", [charge])
    first = decision.states[0]
    assert (first.used, first.from_package, first.from_overage) == (1, 1, 2)
    assert (state.from_package, state.from_overage) == (1, 2)


async def test_unlimited_counters_report_no_paid_units(store: Store) -> None:
    # paid units while limited, then the tier's limit is lifted in the same window
    for _ in range(3):
        assert (await store.consume("42", logic(limit=1, overage=True))).admitted
    decision = await store.consume("42", logic(limit=None))
    assert [(s.used, s.from_package, s.from_overage) for s in decision.states] == [(4, 0, 0)] * 2


async def test_a_refusal_reports_every_charges_usage_unchanged(store: Store) -> None:
    unlimited = Charge("api_calls", "42", "month", 1, None)
    limited = Charge("logic_engine_calls", "42", "month", 2, 3)
    assert (await store.consume("42", [unlimited, limited])).admitted
    decision = await store.consume("42", [unlimited, limited])
    assert not decision.admitted and decision.refused == 1
    assert [s.used for s in decision.states] == [1, 2]


# -- Redis: the commands a decision sends ---------------------------------------------------


_ADMIN = ("evalsha", "config|", "info", "script|", "client|", "hello", "ping", "select")


def commands(server: RedisServer) -> dict[str, int]:
    """The data commands Redis ran since the last CONFIG RESETSTAT, scripts' own included."""
    stats = server.client().info("commandstats")
    calls = {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}
    return {name: n for name, n in calls.items() if not name.startswith(_ADMIN)}


async def test_a_decision_below_the_allowance_reads_once_and_writes_once_per_key(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    store = RedisStore(own_redis.url, clock=clock)
    try:
        own_redis.client().config_resetstat()
        assert (await store.consume("42", logic())).admitted
        first = commands(own_redis)
        own_redis.client().config_resetstat()
        assert (await store.consume("42", logic())).admitted
        again = commands(own_redis)
    finally:
        await store.close()
    # the first decision creates two window keys and two day keys: each gets its expiry once
    assert (first["mget"], first["incrby"], first["expire"]) == (2, 4, 4)
    # one MGET per limited counter, one INCRBY per key; the late-decision guard adds one
    # TIME (which is also the windows' clock), one EXISTS for a voided id and the SET of
    # its marker (gateway/metering/late.py); nothing else
    assert again == {"mget": 2, "incrby": 4, "time": 1, "exists": 1, "set": 1}


async def test_a_refusal_writes_nothing(own_redis: RedisServer, clock: FakeClock) -> None:
    store = RedisStore(own_redis.url, clock=clock)
    try:
        assert (await store.consume("42", logic(limit=1))).admitted
        own_redis.client().config_resetstat()
        assert not (await store.consume("42", logic(limit=1))).admitted
        seen = commands(own_redis)
    finally:
        await store.close()
    assert seen["mget"] == 2
    assert not {"incrby", "expire", "set"} & set(seen)


async def test_crossing_the_allowance_writes_the_source_counters_once(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    store = RedisStore(own_redis.url, clock=clock)
    charge = Charge("api_calls", "42", "month", 2, 2, 1, True)
    try:
        assert (await store.consume("42", [Charge("api_calls", "42", "month", 1, 2)])).admitted
        own_redis.client().config_resetstat()
        # positions 2..3: one from the allowance, one from the package
        decision = await store.consume("42", [charge])
        crossing = commands(own_redis)
        own_redis.client().config_resetstat()
        # positions 4..5: both paid overage
        decision = await store.consume("42", [charge])
        over = commands(own_redis)
    finally:
        await store.close()
    state = decision.states[0]
    assert (state.used, state.from_package, state.from_overage) == (5, 1, 2)
    # the window key, then the new source counter with its expiry
    assert (crossing["incrby"], crossing["expire"]) == (2, 1)
    assert (over["incrby"], over["expire"]) == (2, 1)
    ttl = own_redis.client().ttl(state.key + ":overage")
    assert ttl > 300 * 86400


async def test_a_wrong_window_guess_is_ignored_for_the_servers_own_window(
    own_redis: RedisServer, clock: FakeClock
) -> None:
    """A gateway whose clock is a month ahead (or a day behind) still counts in the window
    of the time the script runs at."""
    store = RedisStore(own_redis.url, clock=clock)
    charges = [Charge("api_calls", "42", "month", 1, None, history_ttl=HISTORY)]
    try:
        keys, args = store.consume_call("42", charges)
        month, _ = window("month", clock.now())
        day, _ = window("day", clock.now())
        ahead = 40 * 86400 + clock.now()
        wrong_month = [f":{window('month', ahead)[0]}", str(ahead - 10), str(ahead + 10)]
        wrong_day = [":1999-01-01", str(clock.now() - 2 * 86400), str(clock.now() - 86400)]
        args[2:8] = wrong_month + wrong_day
        sha = own_redis.client().script_load(script_source("consume"))
        reply = own_redis.client().evalsha(sha, len(keys), *keys, *args)
    finally:
        await store.close()
    assert reply[2].decode() == f"gw:{{a:42}}:m:api_calls:42:{month}"
    history = history_key("42", "api_calls", "42", day)
    assert own_redis.client().get(history) == b"1"


async def test_a_guarded_decision_reads_the_server_clock_once(own_redis: RedisServer) -> None:
    """The late-decision guard's TIME is also the windows' clock: one TIME per decision."""
    store = RedisStore(own_redis.url)  # no injected clock: windows from server time
    charges = [Charge("api_calls", "42", "month", 1, 5, history_ttl=HISTORY)]
    try:
        keys, args = store.consume_call("42", charges)
    finally:
        await store.close()
    args[-3:] = [str(time.time() + 60), "decision-1", "60000"]  # deadline, id, marker ttl
    client = own_redis.client()
    sha = client.script_load(script_source("consume"))
    client.config_resetstat()
    reply = client.evalsha(sha, len(keys), *keys, *args)
    seen = commands(own_redis)
    assert reply[0] == 1
    month, _ = window("month", time.time())
    assert reply[2].decode().endswith(":" + month)
    assert seen["time"] == 1
    assert client.exists("gw:{a:42}:d:decision-1") == 1
