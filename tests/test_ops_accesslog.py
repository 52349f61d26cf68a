"""The JSON access log and X-Request-Id, and replaying a log against a candidate policy."""

from __future__ import annotations

import asyncio
import json
import re
import uuid
from pathlib import Path
from typing import Any

import pytest

from gateway.accesslog import new_request_id
from gateway.cli import main
from gateway.policy.loader import load_policy
from gateway.replay import read_log, replay
from tests.conftest import GatewayFactory, Harness, utc
from tests.ops_policy import ops_policy, write_policy

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


async def _gateway(
    make_gateway: GatewayFactory, tmp_path: Path, name: str, text: str, log: Path
) -> Harness:
    path = tmp_path / f"{name}.yaml"
    write_policy(path, text)
    return await make_gateway(
        str(path.with_suffix("")), policy_watch_seconds=0, access_log=str(log)
    )


def _lines(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


async def test_every_request_gets_an_id_and_one_line_without_secrets(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    gw = await _gateway(make_gateway, tmp_path, "ops", ops_policy(free_calls=1), log)
    account = await gw.account("free")
    key = await gw.key(account, "k_")
    headers = {"Authorization": f"Bearer {key}"}

    given = await gw.client.get(
        "/api/things?token=s3cret", headers={**headers, "X-Request-Id": "abc-123"}
    )
    assert given.status == 200
    assert given.headers["X-Request-Id"] == "abc-123"
    seen = {k.lower(): v for k, v in gw.upstream.requests[-1].headers.items()}
    assert seen["x-request-id"] == "abc-123"
    refused = await gw.client.get("/api/things", headers=headers)
    assert refused.status == 429
    assert re.fullmatch(r"[0-9a-f]{32}", refused.headers["X-Request-Id"])
    # an id that could forge a log line or a header is replaced, not passed on
    forged = await gw.client.get("/nowhere", headers={"X-Request-Id": 'a"b c'})
    assert forged.headers["X-Request-Id"] != 'a"b c'

    text = log.read_text()
    assert key not in text
    assert "s3cret" not in text
    first, second, third = _lines(log)
    assert first["request_id"] == "abc-123"
    assert first["time"] == "2026-11-25T12:00:00.000+00:00"
    assert (first["method"], first["path"], first["route"]) == ("GET", "/api/things", "api")
    assert (first["account_id"], first["tier"]) == (account, "free")
    assert first["meters"] == [{"meter": "calls", "cost": 1}]
    assert (first["decision"], first["status"]) == ("forwarded", 200)
    assert first["upstream_seconds"] >= 0
    assert second["request_id"] == refused.headers["X-Request-Id"]
    assert (second["decision"], second["status"], second["meters"]) == ("quota_exceeded", 429, [])
    assert (third["decision"], third["status"], third["account_id"]) == ("not_found", 404, None)


async def test_shadow_refusals_are_written_to_the_log(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    log = tmp_path / "access.log"
    text = ops_policy(free_calls=1, tier_shadow="shadow: true")
    gw = await _gateway(make_gateway, tmp_path, "ops", text, log)
    headers = await gw.caller("free", "k_")
    for _ in range(2):
        assert (await gw.client.get("/api/things", headers=headers)).status == 200
    first, second = _lines(log)
    assert first["shadow"] is None
    assert (second["decision"], second["shadow"]) == ("forwarded", ["quota_exceeded"])


# (hours after noon, caller, method, path): two free callers, one pro, across a day boundary
TRAFFIC = [
    *((0.1 * i, "alice", "GET", "/api/things") for i in range(4)),
    (1.0, "bob", "GET", "/api/things"),
    (1.5, "alice", "POST", "/api/export/all"),
    (2.0, "bob", "GET", "/api/things"),
    *((2.5 + 0.1 * i, "carol", "POST", "/api/export/all") for i in range(5)),
    (3.0, "bob", "GET", "/api/things"),
    (3.5, "bob", "GET", "/api/things"),
    # past midnight UTC: the daily window starts afresh
    *((13.0 + 0.1 * i, "alice", "GET", "/api/things") for i in range(3)),
    *((13.0 + 0.1 * i, "carol", "GET", "/api/things") for i in range(5)),
]


async def _run(gw: Harness) -> dict[str, int]:
    """Send TRAFFIC on the gateway's fake clock; the status of each request id."""
    callers = {
        "alice": await gw.caller("free", "k_"),
        "bob": await gw.caller("free", "k_"),
        "carol": await gw.caller("pro", "k_"),
    }
    statuses = {}
    for index, (hours, who, method, path) in enumerate(TRAFFIC):
        gw.clock.set(utc(2026, 11, 25, 12) + hours * 3600)
        request_id = f"r{index}"
        resp = await gw.client.request(
            method, path, headers={**callers[who], "X-Request-Id": request_id}
        )
        await resp.read()
        statuses[request_id] = resp.status
    return statuses


async def test_replay_reports_exactly_what_a_live_run_of_the_candidate_refuses(
    make_gateway: GatewayFactory, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    recorded = tmp_path / "recorded.log"
    current = ops_policy(free_calls=3, pro_calls=100)
    candidate = ops_policy(free_calls=2, pro_calls=4)
    lived = await _run(await _gateway(make_gateway, tmp_path, "current", current, recorded))
    tight = await _run(
        await _gateway(make_gateway, tmp_path, "candidate", candidate, tmp_path / "live.log")
    )

    refused = {rid for rid, status in lived.items() if status >= 400}
    refused_live = {rid for rid, status in tight.items() if status >= 400}
    assert refused_live - refused, "the candidate must refuse something new for this test"

    report = await replay(
        load_policy(tmp_path / "candidate.yaml"), read_log([recorded]), examples=100
    )
    newly_refused = {e["request_id"] for g in report.groups.values() for e in g.refused_examples}
    newly_admitted = {e["request_id"] for g in report.groups.values() for e in g.admitted_examples}
    assert newly_refused == refused_live - refused
    assert newly_admitted == refused - refused_live
    assert report.replayed == len(TRAFFIC)
    by_group = {key: g.newly_refused for key, g in report.groups.items()}
    assert by_group == {("free", "api"): 3, ("pro", "api"): 1, ("pro", "export"): 1}

    argv = ["policy", "replay", "--policy", str(tmp_path / "candidate.yaml"), str(recorded)]
    assert await asyncio.to_thread(main, argv) == 0
    out = capsys.readouterr().out
    assert "| free | api | 3 | 0 |" in out
    assert "r5" not in out  # refused in both runs: not a change


def test_a_generated_request_id_is_a_random_version_4_uuid_in_hex() -> None:
    ids = [new_request_id() for _ in range(2000)]
    assert len(set(ids)) == len(ids)
    for text in ids:
        parsed = uuid.UUID(hex=text)
        assert (parsed.version, parsed.variant, parsed.hex) == (4, uuid.RFC_4122, text)
    # every other bit is random: each takes both values somewhere in the sample
    fixed = (0xC000 << 48) | (0xF000 << 64)
    seen_set = seen_clear = 0
    for text in ids:
        seen_set |= int(text, 16)
        seen_clear |= ~int(text, 16)
    assert (seen_set & seen_clear) | fixed == (1 << 128) - 1
