"""A live scrape: promtool accepts it, and it has every metric the dashboard and alerts query."""

from __future__ import annotations

from tests.conftest import GatewayFactory, Upstream
from tests.deploy_tools import run, tool
from tests.live_scrape import scrape


async def test_promtool_accepts_a_live_scrape_of_every_outcome(
    make_gateway: GatewayFactory, upstream: Upstream
) -> None:
    text = await scrape(make_gateway, upstream)
    # promtool prints one line per lint problem and exits non-zero on any
    assert run([tool("promtool"), "check", "metrics"], stdin=text) == ""
