"""Hot reload in one process: swap, keep the last good policy, snapshot per request."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from yarl import URL

from gateway.metering import decide
from tests.adversarial import RawUpstream, Received, Reply
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def _setup(make_gateway: GatewayFactory, tmp_path: Path, **overrides: object) -> Harness:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    # make_gateway joins the name to policies/; an absolute path replaces that folder
    return await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0, **overrides)


async def _calls(gw: Harness, headers: dict[str, str], n: int) -> list[int]:
    statuses = []
    for _ in range(n):
        resp = await gw.client.get("/api/things", headers=headers)
        await resp.read()
        statuses.append(resp.status)
    return statuses


def _sample(gw: Harness, name: str, labels: dict[str, str] | None = None) -> float | None:
    return gw.gateway.metrics.registry.get_sample_value(name, labels or {})


async def test_reload_swaps_the_policy_and_usage_carries_over(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    old_digest = gw.gateway.policy.current.digest
    headers = await gw.caller("free", "k_")
    assert await _calls(gw, headers, 2) == [200, 200]

    text = ops_policy(free_calls=5)
    write_policy(tmp_path / "ops.yaml", text)
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 200, await resp.text()
    new_digest = (await resp.json())["digest"]
    assert new_digest != old_digest

    shown = await (await gw.admin.get("/admin/policy", headers=gw.admin_headers)).json()
    assert shown["digest"] == new_digest
    assert shown["name"] == "ops-test"
    assert shown["content"] == text
    assert shown["file"].endswith("ops.yaml")
    assert shown["loaded_at"].startswith("2026-11-25T12:00:00")

    # the two calls made under the old policy still count against the new limit of 5
    assert await _calls(gw, headers, 4) == [200, 200, 200, 429]
    assert _sample(gw, "gateway_policy_reloads_total", {"result": "success"}) == 1
    assert _sample(gw, "gateway_policy_info", {"name": "ops-test", "digest": new_digest}) == 1
    assert _sample(gw, "gateway_policy_info", {"name": "ops-test", "digest": old_digest}) is None


async def test_a_broken_file_keeps_the_last_good_policy(
    make_gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    digest = gw.gateway.policy.current.digest
    headers = await gw.caller("free", "k_")
    write_policy(tmp_path / "ops.yaml", ops_policy().replace("calls: 3", "calls: lots"))

    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 422
    body = await resp.json()
    assert body["code"] == "POLICY_INVALID"
    assert "ops.yaml:14 tiers.free.limits.calls" in body["message"]
    assert body["details"]["path"] == "tiers.free.limits.calls"
    assert "ops.yaml:14 tiers.free.limits.calls" in caplog.text
    assert "still serving ops-test" in caplog.text

    shown = await (await gw.admin.get("/admin/policy", headers=gw.admin_headers)).json()
    assert shown["digest"] == digest
    assert await _calls(gw, headers, 4) == [200, 200, 200, 429]
    assert _sample(gw, "gateway_policy_reloads_total", {"result": "failure"}) == 1
    assert _sample(gw, "gateway_policy_reloads_total", {"result": "success"}) == 0


async def test_a_reload_is_logged_whether_or_not_the_policy_changed(
    make_gateway: GatewayFactory, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = await _setup(make_gateway, tmp_path)
    digest = gw.gateway.policy.current.digest
    caplog.set_level("INFO", logger="gateway")
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 200
    reloads = [r.getMessage() for r in caplog.records if "policy reloaded" in r.getMessage()]
    assert reloads == [
        f"policy reloaded (POST /admin/policy/reload): ops-test sha256 {digest[:12]} unchanged"
    ]
    write_policy(tmp_path / "ops.yaml", ops_policy(free_calls=5))
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    new = (await resp.json())["digest"]
    reloads = [r.getMessage() for r in caplog.records if "policy reloaded" in r.getMessage()]
    why = "POST /admin/policy/reload"
    assert reloads[1] == f"policy reloaded ({why}): ops-test sha256 {digest[:12]} -> {new[:12]}"


async def test_a_changed_file_is_picked_up_by_the_watch(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0.05)
    headers = await gw.caller("free", "k_")
    write_policy(path, ops_policy(free_calls=1))
    async with asyncio.timeout(10):
        while gw.gateway.policy.current.tiers["free"].limits["calls"] != 1:
            await asyncio.sleep(0.05)
    assert await _calls(gw, headers, 2) == [200, 429]


async def test_an_in_flight_request_settles_under_the_policy_it_started_with(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    release = asyncio.Event()

    async def hold(_: Received) -> Reply:
        await release.wait()
        return Reply()

    raw = await RawUpstream(hold).start()
    # one pooled connection: while the first request holds it, the second waits for it and
    # gives up without ever reaching the upstream, so its call is refunded
    gw = await _setup(
        make_gateway,
        tmp_path,
        upstreams=(("/", URL(raw.url)),),
        upstream_max_connections=1,
        connect_timeout_seconds=2.0,
    )
    account = await gw.account("free")
    headers = {"Authorization": f"Bearer {await gw.key(account, 'k_')}"}
    old = gw.gateway.policy.current
    charges = decide.charges(old, old.tiers["free"], account, None, [("calls", 1)])

    async def call(path: str) -> int:
        resp = await gw.client.get(path, headers=headers)
        await resp.read()
        return resp.status

    holding = asyncio.create_task(call("/api/hold"))
    await asyncio.wait_for(raw.arrived.wait(), 10)
    waiting = asyncio.create_task(call("/api/waits"))
    async with asyncio.timeout(10):
        while (await gw.gateway.store.peek(account, charges))[0].used != 2:
            await asyncio.sleep(0.01)
    # the new policy has no `calls` meter: settling under it would refund nothing
    write_policy(tmp_path / "ops.yaml", ops_policy().replace("calls", "requests"))
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    assert resp.status == 200
    assert await waiting == 504
    release.set()
    assert await holding == 200
    await raw.close()
    # the waiting request never reached the upstream, so the old policy's call was given back
    assert (await gw.gateway.store.peek(account, charges))[0].used == 1
