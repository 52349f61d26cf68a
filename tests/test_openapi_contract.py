"""The OpenAPI document as a tested contract: schemathesis (`--checks all`, a fixed seed)
against a live `gateway serve`, on both listeners and under both shipped policies.

Schema-valid requests must be accepted, schema-violating ones refused, every answer must match
its documented status, headers and schema, a 405 must carry `Allow`, and a method the
document does not list must be refused, not forwarded. Memory store only: this is a contract
on the HTTP surface; what it stores is tested on Redis by the store-facing suites.
"""

from __future__ import annotations

import asyncio
import re
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
import yaml

from gateway.policy.loader import load_policy
from tests.conftest import JWT_SECRET, POLICIES, Upstream, mint
from tests.gateway_process import Served, serve_gateway
from tests.test_stripe import PRICES, FakeStripe, stripe

__all__ = ["stripe"]  # the local stand-in for Stripe's API, shared with the Stripe suite

SEED = 20261125
EXAMPLES = 4  # per operation and phase: the whole module stays around a minute
WEBHOOK_PATH = "/api/v1/webhooks/stripe"
WEBHOOK = f"^{re.escape(WEBHOOK_PATH)}$"
ADMIN_PATHS = r"^/(admin/|healthz$|readyz$|metrics$|openapi\.yaml$)"


@pytest.fixture(params=["agentstack", "agentidp"])
async def served(
    request: pytest.FixtureRequest,
    upstream: Upstream,
    stripe: FakeStripe,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> AsyncIterator[tuple[str, Served]]:
    monkeypatch.setenv("GATEWAY_JWT_SECRET", JWT_SECRET)
    policy = str(request.param)
    config = tmp_path / "gateway.yaml"
    prices = ", ".join(f"{tier}: {price}" for tier, price in PRICES)
    config.write_text(f"stripe:\n  prices: {{{prices}}}\n")
    with serve_gateway(
        "--config", str(config),
        "--upstream", str(upstream.url),
        "--policy", str(POLICIES / f"{policy}.yaml"),
        log_path=tmp_path / "gateway.log",
    ) as gateway:  # fmt: skip
        async with aiohttp.ClientSession() as session:
            await gateway.ready(session)
        yield policy, gateway


async def caller(policy: str, gateway: Served) -> str:
    """A credential for the proxy listener: a pro user's key, or an organisation's JWT."""
    if policy == "agentidp":
        return mint({"organization_id": "org-contract", "sub": "agent-1"})
    async with aiohttp.ClientSession(headers=gateway.auth) as session:
        async with session.post(gateway.admin + "/admin/accounts", json={"tier": "pro"}) as resp:
            account = (await resp.json())["id"]
        url = f"{gateway.admin}/admin/accounts/{account}/keys"
        async with session.post(url, json={"prefix": "user_ask_"}) as resp:
            return str((await resp.json())["key"])


def answered_paths(policy: str) -> str:
    """The document's paths the policy answers itself, as an --include-path-regex."""
    patterns = {
        route.pattern
        for route in load_policy(POLICIES / f"{policy}.yaml").routes
        if route.answer and route.pattern != WEBHOOK_PATH
    }
    return "^(" + "|".join(re.escape(p) for p in sorted(patterns)) + ")$"


async def unusable(gateway: Served) -> list[str]:
    """Operations the policy leaves nothing to send to (``enum: []``: AgentIdP has no key
    types and no packages), which no request can pass; schemathesis cannot generate them."""
    async with (
        aiohttp.ClientSession() as session,
        session.get(gateway.admin + "/openapi.yaml") as resp,
    ):
        doc = yaml.safe_load(await resp.text())

    def empty(node: object) -> bool:
        if isinstance(node, dict):
            return node.get("enum") == [] or any(empty(v) for v in node.values())
        return isinstance(node, list) and any(empty(v) for v in node)

    return [
        f"{method.upper()} {path}"
        for path, ops in doc["paths"].items()
        for method, op in ops.items()
        if method != "parameters" and empty(op)
    ]


async def schemathesis(
    gateway: Served, url: str, paths: str, token: str, *more: str
) -> tuple[int, str]:
    """Run schemathesis on the document this gateway serves (its policy's tiers filled in)."""
    cwd = tempfile.mkdtemp(prefix="schemathesis-")  # its .schemathesis/ cache goes there
    # a schema-valid request the caller's tier may not make is refused as the seeds say: 402
    # Upgrade Required is such a business answer, like the 403/409/429 schemathesis expects
    Path(cwd, "schemathesis.toml").write_text(
        "[checks.positive_data_acceptance]\n"
        'expected-statuses = ["2xx", "3xx", "401", "402", "403", "404", "409", "429", "5xx"]\n'
    )
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "schemathesis.cli", "--no-color",
        "run", gateway.admin + "/openapi.yaml",
        "--url", url,
        "--include-path-regex", paths,
        "--header", f"Authorization: Bearer {token}",
        "--checks", "all",
        "--seed", str(SEED),
        "--max-examples", str(EXAMPLES),
        "--workers", "1",
        # no stateful phase: its inferred links feed one account's project to another's
        "--phases", "examples,coverage,fuzzing",
        *more,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        cwd=cwd,
    )  # fmt: skip
    out, _ = await process.communicate()
    return await process.wait(), out.decode(errors="replace")


@pytest.mark.slow
@pytest.mark.timeout(600)  # about a minute alone; several on a machine shared with other runs
@pytest.mark.parametrize("listener", ["proxy", "admin"])
async def test_the_gateway_keeps_its_openapi_contract(
    served: tuple[str, Served], listener: str
) -> None:
    policy, gateway = served
    if listener == "proxy":
        token = await caller(policy, gateway)
        code, report = await schemathesis(gateway, gateway.proxy, answered_paths(policy), token)
        if code == 0 and policy == "agentidp":
            # Stripe's webhook is signed: no fuzzer forges a valid Stripe-Signature, so a
            # schema-valid delivery is still a 400 SIGNATURE_INVALID, as Stripe expects (the
            # signature is held to a fixed vector in test_stripe.py); every other check runs
            code, report = await schemathesis(
                gateway, gateway.proxy, WEBHOOK, token, "--exclude-checks",
                "positive_data_acceptance",
            )  # fmt: skip
    else:
        token = gateway.auth["Authorization"].removeprefix("Bearer ")
        skip = [f"--exclude-name={name}" for name in await unusable(gateway)]
        code, report = await schemathesis(gateway, gateway.admin, ADMIN_PATHS, token, *skip)
    assert "Operations:" in report, report[-3000:]  # it ran against the document
    failures = report[report.find("FAILURES") : report.find("WARNINGS")]
    assert code == 0, "\n".join(line[:300] for line in failures.splitlines()) or report[-3000:]
