"""A rate bucket's key lives until its bucket is full again, not a millisecond less.

The memory store drops a bucket's key after ``rates.ttl_ms``; dropped early, the bucket reads
as full while units are still owed, and a request is admitted over the rate. On a slow rate
(one unit every 10 s) a shortfall of one part in a thousand is 10 ms: the FakeClock stands
5 ms before the bucket refills. Memory, one redis-server and the Cluster (the Redis script
keeps its own expiry; the same answer is owed there).
"""

from __future__ import annotations

from gateway.metering.clock import FakeClock
from gateway.metering.store import Charge
from gateway.policy.model import Rate
from tests.test_rate_store import Make, make_store

__all__ = ["Make", "make_store"]  # the fixture shared with the rate store suite

SLOW = Rate(count=1, seconds=10, burst=1)  # one unit back every 10 s


async def test_a_bucket_is_kept_until_the_instant_it_refills(
    make_store: Make, clock: FakeClock
) -> None:
    store = make_store()
    charge = Charge("request_rate", "key_7", None, 1, SLOW.burst, rate=SLOW)
    assert (await store.consume("42", [charge])).admitted
    clock.advance(9.995)  # 5 ms before the unit is back
    assert not (await store.consume("42", [charge])).admitted
    clock.advance(0.005)
    assert (await store.consume("42", [charge])).admitted
