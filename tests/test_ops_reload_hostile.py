"""Hostile policy files on a live gateway: refused with 422, counted, the watch goes on,
and parsing happens off the event loop, so requests keep flowing while a file is read."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from gateway.policy import reload as reload_module
from gateway.policy.model import Policy
from gateway.policy.source import MAX_BYTES
from tests.conftest import GatewayFactory, Harness
from tests.ops_policy import ops_policy, write_policy

# the ops policy, broken once each way; each value a reload must refuse with a place
HOSTILE = {
    "unknown tag": ops_policy().replace("name: ops-test", "name: !foo ops-test"),
    "python tag": ops_policy().replace(
        "name: ops-test", "name: !!python/object/apply:os.system ['true']"
    ),
    "NUL byte": ops_policy().replace("ops-test", "ops\x00test"),
    "deep nesting": ops_policy() + "x: " + "[" * 5000 + "]" * 5000 + "\n",
    "alias bomb": ops_policy()
    + "x:\n  a: &a [l, l, l, l, l, l, l, l, l]\n"
    + "".join(
        f"  {n}: &{n} [{', '.join([f'*{p}'] * 9)}]\n"
        for p, n in zip("abcdefg", "bcdefgh", strict=True)
    ),
    "YAML 1.1 octal": ops_policy().replace("calls: 3", "calls: 010"),
    "too large": ops_policy() + "# " + "x" * MAX_BYTES + "\n",
}

WHERE = {
    "unknown tag": "ops.yaml:1 name: unknown tag '!foo'",
    "python tag": "ops.yaml:1 name: unknown tag '!!python/object/apply:os.system'",
    "NUL byte": "ops.yaml:1: invalid YAML: character U+0000",
    "deep nesting": "invalid YAML: the document nests deeper than 64 levels",
    "alias bomb": "aliases (*name) repeat more than 10000 values",
    "YAML 1.1 octal": "ops.yaml:14 tiers.free.limits.calls: 010 is a YAML 1.1 number form",
    "too large": f"ops.yaml: the file is larger than {MAX_BYTES} bytes",
}


def failures(gw: Harness) -> float:
    value = gw.gateway.metrics.registry.get_sample_value(
        "gateway_policy_reloads_total", {"result": "failure"}
    )
    return value or 0.0


@pytest.mark.parametrize("case", HOSTILE)
async def test_a_hostile_file_is_a_422_naming_the_place(
    make_gateway: GatewayFactory, tmp_path: Path, case: str
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)
    digest = gw.gateway.policy.current.digest
    write_policy(path, HOSTILE[case])
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == 422, body
    assert body["code"] == "POLICY_INVALID"
    assert WHERE[case] in body["message"]
    assert "Traceback" not in body["message"]
    assert gw.gateway.policy.current.digest == digest
    assert failures(gw) == 1


async def test_the_watch_outlives_every_hostile_file_and_loads_the_next_good_one(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0.05)
    headers = await gw.caller("free", "k_")
    for count, text in enumerate(HOSTILE.values(), start=1):
        write_policy(path, text)
        async with asyncio.timeout(20):
            while failures(gw) < count:
                await asyncio.sleep(0.05)
    write_policy(path, ops_policy(free_calls=1))
    async with asyncio.timeout(20):
        while gw.gateway.policy.current.tiers["free"].limits["calls"] != 1:
            await asyncio.sleep(0.05)
    statuses = []
    for _ in range(2):
        resp = await gw.client.get("/api/things", headers=headers)
        statuses.append(resp.status)
    assert statuses == [200, 429]


async def test_requests_are_served_while_a_reload_parses(
    make_gateway: GatewayFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0)
    headers = await gw.caller("free", "k_")
    parsing, release = threading.Event(), threading.Event()
    real = reload_module.read_policy

    def held(file: str) -> tuple[Policy, str]:
        # were this on the event loop, nothing below could run until it returned
        parsing.set()
        if not release.wait(20):
            raise RuntimeError("the test never let the parse finish")
        return real(file)

    monkeypatch.setattr(reload_module, "read_policy", held)
    write_policy(path, ops_policy(free_calls=7))
    reload = asyncio.create_task(gw.admin.post("/admin/policy/reload", headers=gw.admin_headers))
    assert await asyncio.to_thread(parsing.wait, 20)
    resp = await gw.client.get("/api/things", headers=headers)
    assert resp.status == 200
    assert gw.gateway.policy.current.tiers["free"].limits["calls"] == 3
    release.set()
    assert (await reload).status == 200
    assert gw.gateway.policy.current.tiers["free"].limits["calls"] == 7


async def test_an_unexpected_error_while_loading_is_a_counted_422_too(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    path = tmp_path / "ops.yaml"
    write_policy(path, ops_policy())
    gw = await make_gateway(str(path.with_suffix("")), policy_watch_seconds=0.05)
    broken = True

    def check(policy: Policy) -> None:
        if broken:
            raise RuntimeError("a bug in some check")

    gw.gateway.reloader.add_check(check)
    write_policy(path, ops_policy(free_calls=5))
    resp = await gw.admin.post("/admin/policy/reload", headers=gw.admin_headers)
    body = await resp.json()
    assert resp.status == 422, body
    assert "RuntimeError: a bug in some check" in body["message"]
    # the watch met the same error and is still there for the next edit
    broken = False
    write_policy(path, ops_policy(free_calls=6))
    async with asyncio.timeout(20):
        while gw.gateway.policy.current.tiers["free"].limits["calls"] != 6:
            await asyncio.sleep(0.05)
