"""The billing ledger, run against every store: allowance, then packages, then overage."""

from __future__ import annotations

import asyncio

from gateway.metering.clock import FakeClock
from gateway.metering.keys import history_key, source_key
from gateway.metering.store import Charge, Store
from gateway.metering.windows import window
from tests.test_store_contract import Make, make_store, store

__all__ = ["make_store", "store"]  # fixtures shared with the contract suite


def le_calls(cost: int = 1, *, package: int = 0, overage: bool = False, history: int = 0) -> Charge:
    return Charge("logic_engine_calls", "42", "month", cost, 3, package, overage, history)


async def test_overage_off_refuses_at_the_exact_unit_past_allowance_and_packages(
    store: Store,
) -> None:
    for _ in range(5):
        assert (await store.consume("42", [le_calls(package=2)])).admitted
    decision = await store.consume("42", [le_calls(package=2)])
    assert not decision.admitted and decision.refused == 0
    state = decision.states[0]
    assert (state.used, state.capacity, state.remaining) == (5, 5, 0)
    assert (state.from_package, state.from_overage) == (2, 0)


async def test_overage_on_pays_every_unit_past_capacity_once(store: Store) -> None:
    for _ in range(8):
        assert (await store.consume("42", [le_calls(package=2, overage=True)])).admitted
    (state,) = await store.peek("42", [le_calls(package=2)])
    assert (state.used, state.from_package, state.from_overage) == (8, 2, 3)


async def test_one_charge_straddling_every_boundary_splits_its_units(store: Store) -> None:
    assert (await store.consume("42", [le_calls(2)])).admitted
    decision = await store.consume("42", [le_calls(4, package=2, overage=True)])
    # positions 3..6: one from the allowance, two from packages, one paid overage
    assert (decision.states[0].from_package, decision.states[0].from_overage) == (2, 1)


async def test_refunds_give_back_overage_first_then_packages(store: Store) -> None:
    for _ in range(7):
        await store.consume("42", [le_calls(package=2, overage=True)])
    (state,) = await store.peek("42", [le_calls()])
    await store.release("42", [(state.key, 3)])
    (state,) = await store.peek("42", [le_calls()])
    assert (state.used, state.from_package, state.from_overage) == (4, 1, 0)


async def test_racing_consumers_at_the_boundaries_never_double_spend_or_skip_a_source(
    make_store: Make,
) -> None:
    stores = [make_store() for _ in range(4)]

    async def take(index: int, overage: bool) -> bool:
        charge = Charge("api_calls", "42", "month", 1, 5, 5, overage)
        return (await stores[index % 4].consume("42", [charge])).admitted

    admitted = await asyncio.gather(*(take(i, False) for i in range(16)))
    assert sum(admitted) == 10
    admitted = await asyncio.gather(*(take(i, True) for i in range(16)))
    assert all(admitted)
    (state,) = await stores[0].peek("42", [Charge("api_calls", "42", "month", 1, 5, 5)])
    assert (state.used, state.from_package, state.from_overage) == (26, 5, 16)


async def test_source_counters_are_readable_after_the_window_moves_on(
    store: Store, clock: FakeClock
) -> None:
    for _ in range(5):
        await store.consume("42", [le_calls(overage=True)])
    (state,) = await store.peek("42", [le_calls()])
    clock.advance(40 * 86400)  # a later month
    keys = [source_key(state.key, "overage"), source_key(state.key, "package")]
    assert await store.read("42", keys) == [2, 0]


async def test_history_counts_each_utc_day_apart(store: Store, clock: FakeClock) -> None:
    await store.consume("42", [le_calls(2, overage=True, history=7 * 86400)])
    today, _ = window("day", clock.now())
    clock.advance(86400)
    await store.consume("42", [le_calls(1, overage=True, history=7 * 86400)])
    tomorrow, _ = window("day", clock.now())
    keys = [history_key("42", "logic_engine_calls", "42", d) for d in (today, tomorrow)]
    assert await store.read("42", keys) == [2, 1]
    assert await store.read("42", []) == []
