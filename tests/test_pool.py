"""Upstream pool logic with an injected clock: balancing, passive ejection, the breaker.

Pure logic: no store and no network (the forwarder tests drive real upstreams)."""

from __future__ import annotations

from collections import Counter

import pytest
from yarl import URL

from gateway.proxy.pool import CircuitOpen, Pool, PoolSettings, Target


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def targets(*weights: int) -> list[Target]:
    return [Target(URL(f"http://10.0.0.{i}:80"), weight=w) for i, w in enumerate(weights, 1)]


def test_least_pending_spreads_concurrent_requests_by_weight() -> None:
    pool = Pool(targets(1, 1, 2), clock=Clock())
    for _ in range(8):
        pool.begin(pool.pick())
    assert [t.pending for t in pool.targets] == [2, 2, 4]


def test_equal_idle_targets_take_turns() -> None:
    pool = Pool(targets(1, 1, 1), clock=Clock())
    seen = Counter(pool.pick().label for _ in range(300))
    assert set(seen.values()) == {100}


def test_smooth_weighted_round_robin_interleaves() -> None:
    pool = Pool(targets(5, 1), PoolSettings(balance="round_robin"), clock=Clock())
    order = "".join("a" if pool.pick() is pool.targets[0] else "b" for _ in range(12))
    assert order.count("b") == 2
    assert "bb" not in order and "aaaaaa" not in order


def test_consecutive_failures_eject_a_target_until_its_time_is_up() -> None:
    clock = Clock()
    changes: list[tuple[str, bool]] = []
    pool = Pool(
        targets(1, 1),
        PoolSettings(eject_after=3, eject_seconds=30),
        clock=clock,
        on_change=lambda t, up: changes.append((t.label, up)),
    )
    bad, good = pool.targets
    for outcome in ("failure", "unreached"):
        pool.begin(bad)
        pool.done(bad, outcome)
    assert pool.available(bad)  # two are not three
    pool.begin(bad)
    pool.done(bad, "failure")
    assert not pool.available(bad)
    assert changes == [(bad.label, False)]
    assert {pool.pick() for _ in range(10)} == {good}
    clock.now += 30
    assert pool.available(bad)
    pool.begin(bad)
    pool.done(bad, "ok")
    assert bad.failures == 0
    assert changes[-1] == (bad.label, True)


def test_a_success_in_between_resets_the_count() -> None:
    pool = Pool(targets(1), PoolSettings(eject_after=3), clock=Clock())
    (target,) = pool.targets
    for outcome in ("failure", "failure", "ok", "failure", "failure"):
        pool.begin(target)
        pool.done(target, outcome)  # type: ignore[arg-type]
    assert pool.available(target)


def test_with_every_target_out_the_pool_says_when_to_retry() -> None:
    clock = Clock()
    pool = Pool(targets(1), PoolSettings(eject_after=1, eject_seconds=12), clock=clock)
    (target,) = pool.targets
    pool.begin(target)
    pool.done(target, "unreached")
    with pytest.raises(CircuitOpen) as caught:
        pool.pick()
    assert caught.value.retry_after == pytest.approx(12)
    # excluding the only one tried is a different answer: nothing else to try
    clock.now += 12
    with pytest.raises(CircuitOpen, match="no other"):
        pool.pick(exclude=[target])


def test_the_breaker_opens_on_a_failure_ratio_and_closes_after_its_time() -> None:
    clock = Clock()
    pool = Pool(
        targets(1, 1),
        PoolSettings(
            eject_after=0,
            breaker_ratio=0.5,
            breaker_min_requests=10,
            breaker_window=10,
            breaker_open_seconds=20,
        ),
        clock=clock,
    )
    for i in range(9):
        target = pool.pick()
        pool.begin(target)
        pool.done(target, "failure" if i % 2 else "ok")
    pool.pick()  # 4 of 9: below the minimum count, and below the ratio
    target = pool.pick()
    pool.begin(target)
    pool.done(target, "failure")  # 5 of 10
    with pytest.raises(CircuitOpen) as caught:
        pool.pick()
    assert caught.value.retry_after == pytest.approx(20)
    clock.now += 20
    assert pool.pick() in pool.targets


def test_old_outcomes_leave_the_breaker_window() -> None:
    clock = Clock()
    settings = PoolSettings(
        eject_after=0, breaker_ratio=0.5, breaker_min_requests=4, breaker_window=10
    )
    pool = Pool(targets(1), settings, clock=clock)
    (target,) = pool.targets
    for _ in range(3):
        pool.begin(target)
        pool.done(target, "failure")
    clock.now += 11
    pool.begin(target)
    pool.done(target, "failure")  # the three before are out of the window: 1 of 1 < min
    assert pool.pick() is target
