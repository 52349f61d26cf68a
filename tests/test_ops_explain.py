"""Explain agrees with the real decision (allowed, refused, feature-gated) and consumes nothing."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from gateway.cli import main
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy

STORES = ("memory", "redis")


async def _gateway(make_gateway: GatewayFactory, tmp_path: Path, text: str = "") -> Harness:
    path = tmp_path / "ops.yaml"
    write_policy(path, text or ops_policy())
    return await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)


async def _explain(gw: Harness, key: str, request: str) -> dict[str, Any]:
    resp = await gw.admin.post(
        "/admin/explain",
        json={"credential": key, "request": request},
        headers=gw.admin_headers,
    )
    assert resp.status == 200, await resp.text()
    return dict(await resp.json())


async def test_explain_matches_allowed_refused_and_gated_requests(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path)
    account = await gw.account("free")
    key = await gw.key(account, "k_")
    headers = {"Authorization": f"Bearer {key}"}

    allowed = await _explain(gw, key, "GET /api/things")
    assert allowed["route"]["name"] == "api"
    assert allowed["tier"] == "free"
    assert allowed["identity"]["account_id"] == account
    [meter] = allowed["meters"]
    assert (meter["meter"], meter["used"], meter["limit"], meter["remaining"]) == ("calls", 0, 3, 3)
    assert meter["reset"] == "2026-11-26T00:00:00Z"
    assert allowed["decision"]["outcome"] == "forwarded"
    # asking again changes nothing: explain consumed no unit
    assert (await _explain(gw, key, "GET /api/things"))["meters"] == allowed["meters"]
    real = await gw.client.get("/api/things", headers=headers)
    assert real.status == 200
    assert real.headers["RateLimit-Remaining"] == "2"

    await gw.set_usage(account, "calls", 3)
    refused = await _explain(gw, key, "GET /api/things")
    real = await gw.client.get("/api/things", headers=headers)
    assert refused["decision"]["outcome"] == "quota_exceeded"
    assert refused["decision"]["status"] == real.status == 429
    assert refused["decision"]["body"] == await real.json()
    assert refused["meters"][0]["used"] == 3
    assert refused["meters"][0]["remaining"] == 0

    gated = await _explain(gw, key, "POST /api/export/all")
    real = await gw.client.post("/api/export/all", headers=headers)
    assert gated["route"]["name"] == "export"
    assert gated["decision"]["outcome"] == "feature_unavailable"
    assert gated["decision"]["status"] == real.status == 403
    assert gated["decision"]["body"] == await real.json()

    unknown = await _explain(gw, "k_" + "A" * 32, "GET /api/things")
    assert unknown["decision"]["status"] == 401
    assert gw.upstream.count("/api/") == 1


async def test_explain_reports_what_shadow_mode_lets_through(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await _gateway(make_gateway, tmp_path, ops_policy(tier_shadow="shadow: true"))
    key = await gw.key(await gw.account("free"), "k_")
    report = await _explain(gw, key, "GET /api/export/x")
    assert report["decision"]["outcome"] == "forwarded"
    assert [s["outcome"] for s in report["decision"]["shadow"]] == ["feature_unavailable"]
    real = await gw.client.get("/api/export/x", headers={"Authorization": f"Bearer {key}"})
    assert real.status == 200


async def test_the_explain_command_asks_the_admin_api_and_works_offline(
    make_gateway: GatewayFactory,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    gw = await _gateway(make_gateway, tmp_path)
    key = await gw.key(await gw.account("free"), "k_")
    monkeypatch.setenv("GATEWAY_CREDENTIAL", key)
    admin = str(gw.admin.make_url("")).rstrip("/")
    code = await asyncio.to_thread(main, ["explain", "--admin", admin, "GET", "/api/export/x"])
    assert code == 0
    online = json.loads(capsys.readouterr().out)
    assert online["decision"]["outcome"] == "feature_unavailable"
    assert online["tier"] == "free"

    policy = str(tmp_path / "ops.yaml")
    argv = ["explain", "--policy", policy, "--tier", "pro", "GET", "/api/export/x"]
    assert await asyncio.to_thread(main, argv) == 0
    offline = json.loads(capsys.readouterr().out)
    assert offline["decision"]["outcome"] == "forwarded"
    assert offline["meters"][0]["limit"] == 100
