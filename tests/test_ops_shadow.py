"""Shadow mode: a tier, a route or a whole policy meters and decides but forwards refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.policy.loader import parse_policy
from gateway.policy.source import ConfigError
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def _gateway(make_gateway: GatewayFactory, tmp_path: Path, text: str) -> Harness:
    path = tmp_path / "ops.yaml"
    write_policy(path, text)
    return await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)


async def _statuses(gw: Harness, headers: dict[str, str], path: str, n: int) -> list[int]:
    out = []
    for _ in range(n):
        resp = await gw.client.get(path, headers=headers)
        await resp.read()
        out.append(resp.status)
    return out


def _shadowed(gw: Harness, tier: str, route: str, decision: str) -> float | None:
    return gw.gateway.metrics.registry.get_sample_value(
        "gateway_shadow_refusals_total", {"tier": tier, "route": route, "decision": decision}
    )


async def test_a_shadowed_tier_forwards_what_it_would_refuse_and_counts_it(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path, ops_policy(tier_shadow="shadow: true"))
    free = await gw.caller("free", "k_")
    assert await _statuses(gw, free, "/api/things", 5) == [200] * 5
    assert await _statuses(gw, free, "/api/export/x", 1) == [200]
    assert gw.upstream.count("/api/") == 6
    assert _shadowed(gw, "free", "api", "quota_exceeded") == 2
    # the export call is both feature-gated and over the limit: each would-be refusal counts
    assert _shadowed(gw, "free", "export", "feature_unavailable") == 1
    assert _shadowed(gw, "free", "export", "quota_exceeded") == 1
    # a tier that is not shadowed is enforced as usual
    pro = await gw.caller("pro", "k_")
    assert await _statuses(gw, pro, "/api/export/x", 101) == [200] * 100 + [429]
    assert _shadowed(gw, "pro", "export", "quota_exceeded") is None


async def test_a_shadowed_route_leaves_the_other_routes_enforced(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path, ops_policy(route_shadow="shadow: true"))
    free = await gw.caller("free", "k_")
    assert await _statuses(gw, free, "/api/things", 4) == [200] * 4
    assert _shadowed(gw, "free", "api", "quota_exceeded") == 1
    assert await _statuses(gw, free, "/api/export/x", 1) == [403]
    assert _shadowed(gw, "free", "export", "feature_unavailable") is None


async def test_a_shadowed_policy_refuses_nothing(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path, ops_policy(policy_shadow="shadow: true"))
    free = await gw.caller("free", "k_")
    assert await _statuses(gw, free, "/api/export/x", 4) == [200] * 4
    assert _shadowed(gw, "free", "export", "feature_unavailable") == 4


@pytest.mark.parametrize(
    ("overrides", "where"),
    [
        ({"policy_shadow": "shadow: yes please"}, "<string>:3 shadow: expected true or false"),
        ({"tier_shadow": "shadow: 1"}, "<string>:13 tiers.free.shadow: expected true or false"),
        ({"route_shadow": "shadw: true"}, "<string>:26 routes[1].shadw: unknown key"),
    ],
)
def test_shadow_keys_are_strictly_validated(overrides: dict[str, str], where: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_policy(ops_policy(**overrides))
    assert str(caught.value).startswith(where)
