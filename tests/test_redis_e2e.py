"""The AgentStack flows end to end with the gateway on a real redis-server."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import pytest

from gateway.metering.clock import FakeClock
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Store
from tests.test_agentstack import (
    test_anonymous_key_is_held_at_1000_logic_engine_calls,
    test_free_key_is_held_at_10000_logic_engine_calls,
    test_live_counts_rise_on_2xx_and_fall_on_delete,
    test_rate_limit_headers_name_the_tightest_meter,
)

# collected again here, now running on Redis through the store_factory below
__all__ = [
    "test_anonymous_key_is_held_at_1000_logic_engine_calls",
    "test_free_key_is_held_at_10000_logic_engine_calls",
    "test_live_counts_rise_on_2xx_and_fall_on_delete",
    "test_rate_limit_headers_name_the_tightest_meter",
]


@pytest.fixture
def store_factory(redis_url: str) -> Callable[[FakeClock], Awaitable[Store]]:
    async def make(clock: FakeClock) -> Store:
        return RedisStore(redis_url, clock=clock, timeout_ms=2000)

    return make
