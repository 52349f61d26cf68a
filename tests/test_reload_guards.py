"""Reload guards: a policy that would serve accounts on another tier needs an explicit yes.

Dropping a tier leaves its accounts on the default tier while their records still name the
old one; changing default_tier moves every caller not seen yet. Both are refused with the
count of affected accounts on every reload path (admin API, file watch, pub/sub notice),
unless allowed; an allowed move is logged and counted once.
"""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.app import build_gateway
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy

STORES = ("memory", "redis")
RENAMED = ops_policy().replace("  pro:\n", "  gold:\n")
MOVES = "gateway_policy_tier_moves_total"


async def _setup(make_gateway: GatewayFactory, tmp_path: Path, **overrides: object) -> Harness:
    write_policy(tmp_path / "ops.yaml", ops_policy())
    return await make_gateway(str(tmp_path / "ops"), policy_watch_seconds=0, **overrides)


def _moves(gw: Harness, old: str, new: str) -> float | None:
    labels = {"from_tier": old, "to_tier": new}
    return gw.gateway.metrics.registry.get_sample_value(MOVES, labels)


async def test_dropping_a_tier_with_accounts_is_refused_until_allowed(
    make_gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    digest = gw.gateway.policy.current.digest
    await gw.account("pro")
    await gw.account("pro")
    moved_up = await gw.account("free")
    resp = await gw.admin.put(
        f"/admin/accounts/{moved_up}/tier", json={"tier": "pro"}, headers=gw.admin_headers
    )
    assert resp.status == 200
    await gw.account("free")  # stays on free: not affected
    write_policy(tmp_path / "ops.yaml", RENAMED)

    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 409, await resp.text()
    body = await resp.json()
    assert body["code"] == "CONFLICT"
    assert (
        "3 account(s) on tier 'pro', which the new policy lacks, would be served as 'free'"
        in (body["message"])
    )
    assert "allow_tier_changes=true" in body["message"]
    assert body["details"] == {
        "affected_accounts": 3,
        "moves": [{"from": "pro", "to": "free", "accounts": 3}],
        "default_tier": None,
    }
    assert gw.gateway.policy.current.digest == digest
    assert _moves(gw, "pro", "free") is None

    resp = await gw.admin.post(
        "/admin/policy/reload?allow_tier_changes=maybe", headers=gw.admin_headers
    )
    assert resp.status == 400
    resp = await gw.admin.post(
        "/admin/policy/reload?allow_tier_changes=true", headers=gw.admin_headers
    )
    assert resp.status == 200, await resp.text()
    assert gw.gateway.policy.current.digest != digest
    assert _moves(gw, "pro", "free") == 3
    assert "policy reload moves accounts: 3 account(s) on tier 'pro'" in caplog.text


async def test_a_changed_default_tier_is_refused_on_the_file_watch_path_too(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    digest = gw.gateway.policy.current.digest
    write_policy(
        tmp_path / "ops.yaml", ops_policy().replace("default_tier: free", "default_tier: pro")
    )
    # what the watcher runs when the file changes: nobody was asked, so nothing was allowed
    await gw.gateway.reloader.try_reload("file changed")
    assert gw.gateway.policy.current.digest == digest
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 409
    assert (await resp.json())["details"]["default_tier"] == {"from": "free", "to": "pro"}


async def test_the_config_flag_allows_it_on_every_path(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path, policy_allow_tier_changes=True)
    await gw.account("pro")
    write_policy(tmp_path / "ops.yaml", RENAMED)
    await gw.gateway.reloader.try_reload("file changed")
    assert "gold" in gw.gateway.policy.current.tiers
    assert _moves(gw, "pro", "free") == 1


async def test_a_reload_that_moves_nobody_needs_no_permission(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    await gw.account("free")
    write_policy(tmp_path / "ops.yaml", RENAMED)  # pro has no accounts
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 200, await resp.text()


async def test_a_worker_told_by_pub_sub_takes_the_allowed_policy_and_counts_nothing_twice(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    await gw.account("pro")
    # a second worker on the same store and file, with the file watch off
    settings = dataclasses.replace(gw.gateway.settings)
    other = build_gateway(
        settings, clock=gw.clock, store=gw.gateway.store.inner, registry=CollectorRegistry()
    )
    write_policy(tmp_path / "ops.yaml", RENAMED)
    # before anyone allowed it, the notice path refuses it too
    await other.reloader.try_reload("requested through the admin API")
    assert "pro" in other.policy.current.tiers
    resp = await gw.admin.post(
        "/admin/policy/reload?allow_tier_changes=true", headers=gw.admin_headers
    )
    assert resp.status == 200
    await other.reloader.try_reload("requested through the admin API")
    assert "gold" in other.policy.current.tiers
    assert _moves(gw, "pro", "free") == 1
    assert (
        other.metrics.registry.get_sample_value(MOVES, {"from_tier": "pro", "to_tier": "free"})
        is None
    )


async def test_sighup_is_guarded_too(make_gateway: GatewayFactory, tmp_path: Path) -> None:
    gw = await _setup(make_gateway, tmp_path)
    await gw.account("pro")
    digest = gw.gateway.policy.current.digest
    write_policy(tmp_path / "ops.yaml", RENAMED)
    failures = "gateway_policy_reloads_total"
    before = gw.gateway.metrics.registry.get_sample_value(failures, {"result": "failure"})
    # what the SIGHUP handler calls: the reload runs in a task of the loop
    gw.gateway.reloader.reload_soon("SIGHUP")
    for _ in range(500):
        now = gw.gateway.metrics.registry.get_sample_value(failures, {"result": "failure"})
        if now != before:
            break
        await asyncio.sleep(0.01)
    assert now == (before or 0) + 1
    assert gw.gateway.policy.current.digest == digest
