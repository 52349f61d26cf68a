"""Leased counters at their edges: the instant a window rolls, one counter charged twice by a
request, and what a locally admitted request reports.

Each case is a mutant of gateway/metering/leases.py that test_leases let through (see
docs/testing.md, "Mutation testing"). Memory store and one redis-server, FakeClock.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from gateway.metering.clock import FakeClock
from gateway.metering.store import Charge, Store
from gateway.metrics import Metrics
from tests.test_leases import calls, process, used
from tests.test_store_contract import Make, make_store, store

__all__ = ["Make", "make_store", "store"]  # fixtures shared with the contract suite


async def test_a_leased_admission_reports_the_counter_as_the_store_would(
    store: Store, clock: FakeClock
) -> None:
    leases = process(store, clock)
    charge = calls(limit=100, lease=10, package=7)
    decision = await leases.consume("42", [charge], failure_mode=None)
    (state,) = decision.states
    (peeked,) = await store.peek("42", [charge])
    # RateLimit and X-Quota headers are built from these: the quota's name, its window,
    # when it resets and the package on top of the limit
    assert (state.key, state.meter, state.period) == (peeked.key, "api_calls", "month")
    assert (state.limit, state.package, state.reset_at) == (100, 7, peeked.reset_at)
    assert state.reset_at is not None and state.reset_at > clock.now()


async def test_at_the_instant_a_window_rolls_the_old_lease_admits_nothing(
    store: Store, clock: FakeClock
) -> None:
    leases = process(store, clock)
    first = await leases.consume("42", [calls(lease=10)], failure_mode=None)
    old_reset = first.states[0].reset_at
    assert old_reset is not None and leases.held == 9
    clock.set(old_reset)  # the first instant of the next window
    decision = await leases.consume("42", [calls(lease=10)], failure_mode=None)
    assert decision.admitted
    # admitted on a lease of the new window, not from the 9 units left of the old one
    (state,) = decision.states
    assert state.reset_at is not None and state.reset_at > old_reset
    assert (state.used, await used(store, calls())) == (1, 10)


async def test_a_counter_spent_last_window_is_leased_again_the_instant_it_rolls(
    store: Store, clock: FakeClock
) -> None:
    leases = process(store, clock)
    charge = calls(limit=3, lease=10)
    results = [await leases.consume("42", [charge], failure_mode=None) for _ in range(4)]
    assert [d.admitted for d in results] == [True, True, True, False]
    reset_at = results[0].states[0].reset_at
    assert reset_at is not None
    clock.set(reset_at)
    assert (await leases.consume("42", [charge], failure_mode=None)).admitted
    # a whole lease (the 3 units the limit allows), not one request decided by the store
    assert await used(store, charge) == 3
    assert leases.held == 2


async def test_one_counter_charged_twice_in_a_request_leases_and_admits_both_costs(
    store: Store, clock: FakeClock
) -> None:
    leases = process(store, clock)

    def twice(lease: int) -> list[Charge]:
        return [calls(lease=lease, cost=2), calls(lease=lease, cost=3)]

    # a lease smaller than the request: the refill takes what both charges cost, at once
    decision = await leases.consume("42", twice(2), failure_mode=None)
    assert decision.admitted
    assert (leases.held, await used(store, calls())) == (0, 5)
    # a larger lease: one request's two charges take 5 of its 10 units
    decision = await leases.consume("42", twice(10), failure_mode=None)
    assert decision.admitted
    assert (leases.held, await used(store, calls())) == (5, 15)
    assert [s.used for s in decision.states] == [10, 10]


async def test_units_given_back_by_a_new_lease_are_counted_as_returned(
    store: Store, clock: FakeClock
) -> None:
    registry = CollectorRegistry()
    leases = process(store, clock, Metrics(registry))
    assert (await leases.consume("42", [calls(lease=10)], failure_mode=None)).admitted
    # changed terms: the 9 units left are given back in the call that takes the new lease
    assert (await leases.consume("42", [calls(lease=5)], failure_mode=None)).admitted
    assert registry.get_sample_value("gateway_lease_units_returned_total") == 9


async def test_a_refund_after_the_window_rolled_goes_to_the_store(
    store: Store, clock: FakeClock
) -> None:
    leases = process(store, clock)
    decision = await leases.consume("42", [calls(lease=10)], failure_mode=None)
    (state,) = decision.states
    assert state.reset_at is not None
    clock.set(state.reset_at)
    await leases.give_back(rolled_only=True)
    # the lease is gone: the refund of a request of the old window is the store's business
    await leases.release("42", [(state.key, 1)])
    assert await store.read("42", [state.key]) == [0]
    assert leases.held == 0
