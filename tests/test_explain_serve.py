"""explain equals serve: over one request corpus, the same decisions and refusal bodies.

A live gateway on the shipped policy answers each request twice: first /admin/explain
(which consumes nothing), then the proxy for real. A refusal must be the same status, body
and outcome; an admission must be forwarded (or answered) by serve as explain said. The
corpus is every route's representative requests for callers on several tiers, with
declared bodies on storage writes and accounts at their limits.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from gateway.cli import main
from gateway.policy.corpus import paths
from tests.conftest import POLICIES, GatewayFactory, Harness

STORES = ("memory",)
REFUSALS = {"quota_exceeded", "feature_unavailable", "tier_forbidden", "unauthenticated"}


def _outcomes(gw: Harness) -> dict[tuple[str, ...], float]:
    out = {}
    for metric in gw.gateway.metrics.registry.collect():
        if metric.name == "gateway_decisions":
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    out[tuple(sorted(sample.labels.items()))] = sample.value
    return out  # type: ignore[return-value]


def _served_outcome(before: dict[Any, float], after: dict[Any, float]) -> str:
    changed = [k for k, v in after.items() if v != before.get(k, 0)]
    assert len(changed) == 1, changed
    return str(dict(changed[0])["outcome"])


def _corpus(gw: Harness) -> list[tuple[str, str, int | None]]:
    out: list[tuple[str, str, int | None]] = []
    for route in gw.gateway.policy.current.routes:
        methods = sorted(route.methods) if route.methods else ["GET", "POST"]
        path = paths(route.pattern)[0]
        for method in methods:
            out.append((method, path, None))
            if route.body_meter is not None:
                out += [(method, path, 100), (method, path, 5_000)]
    return out


async def _compare(gw: Harness, key: str | None, method: str, path: str, size: int | None) -> str:
    ask: dict[str, Any] = {"request": f"{method} {path}"}
    if key is not None:
        ask["credential"] = key
    if size is not None:
        ask["content_length"] = size
    resp = await gw.admin.post("/admin/explain", json=ask, headers=gw.admin_headers)
    assert resp.status == 200, await resp.text()
    explained = (await resp.json())["decision"]

    headers = {"Authorization": f"Bearer {key}"} if key else {}
    before, reached = _outcomes(gw), gw.upstream.count()
    body = b"x" * size if size is not None else None
    served = await gw.client.request(method, path, headers=headers, data=body)
    text = await served.text()
    outcome = _served_outcome(before, _outcomes(gw))
    where = f"{method} {path} ({size} bytes) as {key}: explain {explained}, serve {outcome} {text}"
    if explained["outcome"] == "forwarded":
        assert outcome == "forwarded" and gw.upstream.count() == reached + 1, where
    elif explained["outcome"] == "answered":
        assert outcome not in REFUSALS and gw.upstream.count() == reached, where
    else:
        assert outcome == explained["outcome"], where
        assert served.status == explained["status"], where
        if method != "HEAD":
            assert await served.json() == explained["body"], where
    return dict(explained)


async def test_explain_and_serve_decide_the_corpus_alike(
    make_gateway: GatewayFactory, tmp_path: Path
) -> None:
    gw = await make_gateway("agentstack", policy_watch_seconds=0)
    callers: list[str | None] = [None]
    for tier, prefix in (("anonymous", "anon_ask_"), ("free", "user_ask_"), ("starter", "ask_")):
        callers.append(await gw.key(await gw.account(tier), prefix))
    # an account one call short of its monthly API calls
    full = await gw.account("pro")
    await gw.set_usage(full, "api_calls", 2_000_000 - 1)
    callers.append(await gw.key(full, "user_ask_"))
    # and one with 500 bytes of JSON storage left
    storage = await gw.account("pro")
    await gw.set_usage(storage, "json_storage", 2_000_000_000 - 500)
    callers.append(await gw.key(storage, "user_ask_"))
    seen: set[str] = set()
    meters: set[str] = set()
    for key in callers:
        for method, path, size in _corpus(gw):
            explained = await _compare(gw, key, method, path, size)
            seen.add(explained["outcome"])
            if explained["outcome"] == "quota_exceeded" and method != "HEAD":
                meters.add(explained["body"]["meter"])
    # the corpus reached every kind of decision
    assert {"forwarded", "answered", "quota_exceeded", "feature_unavailable"} <= seen
    assert {"tier_forbidden", "unauthenticated"} <= seen
    assert {"api_calls", "json_storage"} <= meters


def test_offline_explain_charges_the_body_and_refuses_an_unknown_handler(
    tmp_path: Path, capsys: Any
) -> None:
    import json

    shipped = str(POLICIES / "agentstack.yaml")
    args = ["explain", "POST", "/api/data/x", "--policy", shipped, "--tier", "free"]
    assert main([*args, "--body-bytes", "200000000"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["decision"]["status"] == 429
    assert report["decision"]["body"]["meter"] == "json_storage"
    assert main(args) == 0
    assert json.loads(capsys.readouterr().out)["decision"]["outcome"] == "forwarded"

    broken = tmp_path / "p.yaml"
    broken.write_text(shipped_text().replace("answer: list-projects", "answer: list-project"))
    assert main(["explain", "GET", "/api/projects", "--policy", str(broken), "--tier", "pro"]) == 0
    decision = json.loads(capsys.readouterr().out)["decision"]
    assert (decision["outcome"], decision["status"]) == ("not_found", 404)


def shipped_text() -> str:
    return (POLICIES / "agentstack.yaml").read_text(encoding="utf-8")
