"""`make bench-redis`: decisions per second of the real consume script, beside INCR and a
minimal EVALSHA, on a single redis-server and on one primary of a local 3-primary Cluster.

Every decision is sent exactly as production sends it: the charges come from the shipped
policies through ``decide.charges`` and the keys and arguments from
``RedisStore.consume_call``; the script is the one ``RedisStore`` loads. Only the limits are
raised out of reach, so each decision is the common one (a request far below its limit).
Load comes from ``redis-benchmark`` (50 clients, pipeline 16), so the figures measure Redis
running the script, not a Python client. Each figure is the median of ``--repeats`` runs,
taken round-robin so that noise from other work on the machine spreads over every row; the
final counters are checked, so a script that errors cannot pass for a fast one.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import hashlib
import statistics
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from gateway.identity.resolve import Identity
from gateway.metering import decide
from gateway.metering.redis_store import RedisStore, script_source
from gateway.metering.store import Charge
from gateway.policy.loader import load_policy
from tests.redis_servers import RedisServer, start_cluster

ROOT = Path(__file__).resolve().parent.parent
BENCHMARK = "redis-benchmark"
FAR = 10**15  # a limit no run reaches: every decision is admitted from the allowance
MINIMAL = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


@dataclasses.dataclass(frozen=True)
class Scenario:
    label: str
    account: str
    charges: tuple[Charge, ...]


def _route_charges(policy_file: str, tier: str, route: str, account: str) -> tuple[Charge, ...]:
    """What a request on ``route`` by a project key of ``tier`` is charged, limits raised."""
    policy = load_policy(ROOT / "policies" / policy_file)
    (found,) = [r for r in policy.routes if r.name == route]
    identity = Identity(account, tier, "project", project_id="p1")
    charges = decide.charges(policy, policy.tier(tier), account, "p1", found.consume, identity)
    return tuple(dataclasses.replace(c, limit=None if c.limit is None else FAR) for c in charges)


def scenarios() -> list[Scenario]:
    api = _route_charges("agentstack.yaml", "pro", "api", "bench-api")
    return [
        Scenario(
            "AgentStack logic call: 2 monthly charges + daily history",
            "bench-logic",
            _route_charges("agentstack.yaml", "pro", "logic", "bench-logic"),
        ),
        Scenario("AgentStack API call: 1 monthly charge + daily history", "bench-api", api),
        Scenario(
            "one monthly charge, no history",
            "bench-month",
            (dataclasses.replace(api[0], scope_id="bench-month", history_ttl=0),),
        ),
        Scenario(
            "AgentIdP API call: 1 daily charge",
            "bench-idp",
            _route_charges("agentidp.yaml", "pro", "api", "bench-idp"),
        ),
        Scenario(
            "AgentStack logic call, enterprise: 2 unlimited counters + history",
            "bench-ent",
            _route_charges("agentstack.yaml", "enterprise", "logic", "bench-ent"),
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    command: tuple[str, ...]
    key: str  # where the command runs on a Cluster (a key of its slot)
    scenario: Scenario | None = None


def rows(store: RedisStore) -> list[Row]:
    consume = hashlib.sha1(script_source("consume").encode()).hexdigest()
    minimal = hashlib.sha1(MINIMAL.encode()).hexdigest()
    plain = "gw:{a:bench}:plain"
    out = [
        Row("INCR", ("INCR", plain), plain),
        Row("EVALSHA of a one-line INCRBY script", ("EVALSHA", minimal, "1", plain, "1"), plain),
    ]
    for scenario in scenarios():
        keys, args = store.consume_call(scenario.account, scenario.charges)
        command = ("EVALSHA", consume, str(len(keys)), *keys, *(str(a) for a in args))
        out.append(Row("consume.lua, " + scenario.label, command, keys[0], scenario))
    return out


def benchmark(port: int, command: Sequence[str], requests: int) -> float:
    """Requests per second redis-benchmark reports for one command (50 clients, pipeline 16)."""
    address = ["-h", "127.0.0.1", "-p", str(port)]
    load = ["-n", str(requests), "-c", "50", "-P", "16", "--csv"]
    done = subprocess.run(
        [BENCHMARK, *address, *load, *command],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    last = done.stdout.strip().splitlines()[-1]
    return float(last.split(",")[1].strip('"'))


def owner(ports: Sequence[int], key: str) -> int:
    """The port of the primary that serves ``key``'s slot."""
    client = redis.Redis(host="127.0.0.1", port=ports[0], decode_responses=True)
    slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
    for start, end, (_, port, *_rest), *_replicas in client.execute_command("CLUSTER", "SLOTS"):
        if int(start) <= slot <= int(end):
            return int(port)
    raise RuntimeError(f"no primary serves slot {slot}")


def check(port: int, row: Row, sent: int) -> None:
    """The decisions were made and applied: one more lands on a counter at exactly ``sent``."""
    client = redis.Redis(host="127.0.0.1", port=port, decode_responses=True)
    reply = client.execute_command(*row.command)
    if row.scenario is None:
        if int(reply) != sent + 1:
            raise RuntimeError(f"{row.label}: counter at {reply}, expected {sent + 1}")
        return
    admitted, used = int(reply[0]), int(reply[3])
    cost = row.scenario.charges[0].cost
    if admitted != 1 or used != (sent + 1) * cost:
        raise RuntimeError(f"{row.label}: admitted={admitted} used={used}, sent {sent}")


def measure(
    topology: str, ports: Sequence[int], table: list[Row], requests: int, repeats: int
) -> dict[str, list[float]]:
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        client.script_load(script_source("consume"))
        client.script_load(MINIMAL)
    where = {row.label: owner(ports, row.key) if len(ports) > 1 else ports[0] for row in table}
    figures: dict[str, list[float]] = {row.label: [] for row in table}
    sent: dict[str, int] = {}
    for repeat in range(repeats):
        for row in table:
            rate = benchmark(where[row.label], row.command, requests)
            figures[row.label].append(rate)
            # INCR and the minimal script share a counter; each consume row has its own keys
            shared = row.key if row.scenario is None else row.label
            sent[shared] = sent.get(shared, 0) + requests
            print(f"  {topology:<8} run {repeat + 1}/{repeats}  {rate:>10,.0f}/s  {row.label}")
    for row in table:
        shared = row.key if row.scenario is None else row.label
        check(where[row.label], row, sent[shared])
        if row.scenario is None:
            sent[shared] += 1
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=200_000, help="per figure and run")
    parser.add_argument("--repeats", type=int, default=3, help="runs per figure (median)")
    parser.add_argument("--no-cluster", action="store_true", help="single node only")
    options = parser.parse_args()
    store = RedisStore("redis://127.0.0.1:1/0")  # builds calls only; never connects
    table = rows(store)
    asyncio.run(store.close())
    results: dict[str, dict[str, list[float]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        single = RedisServer(Path(tmp) / "single").start()
        try:
            results["single"] = measure(
                "single", [single.port], table, options.requests, options.repeats
            )
        finally:
            single.kill()
        if not options.no_cluster:
            cluster = start_cluster(Path(tmp) / "cluster")
            try:
                ports = [node.port for node in cluster.nodes]
                results["cluster"] = measure(
                    "cluster", ports, table, options.requests, options.repeats
                )
            finally:
                cluster.kill()
    print_table(results, options)


def print_table(results: dict[str, dict[str, list[float]]], options: argparse.Namespace) -> None:
    print(
        f"\nredis-benchmark -c 50 -P 16, {options.requests:,} requests per run, median of "
        f"{options.repeats} runs (all runs in parentheses); Cluster: the one primary serving "
        "the account's slot\n"
    )
    topologies = list(results)
    print("| command | " + " | ".join(f"{t} node, per second" for t in topologies) + " |")
    print("|---|" + "---:|" * len(topologies))
    for label in results[topologies[0]]:
        cells = []
        for topology in topologies:
            runs = results[topology][label]
            spread = ", ".join(f"{r / 1000:.0f}k" for r in runs)
            cells.append(f"{statistics.median(runs):,.0f} ({spread})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
