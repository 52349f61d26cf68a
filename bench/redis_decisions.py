"""`make bench-redis`: decisions per second of the real consume script, beside INCR and a
minimal EVALSHA, on a single redis-server and on one primary of a local 3-primary Cluster.

Every decision is sent exactly as production sends it: the charges come from the shipped
policies through ``decide.charges``, and the script, keys and arguments are the ones
``RedisStore.consume`` sends (caught on their way out). ``--baseline REV`` adds the same rows
as the gateway at git revision REV sends them, for a before/after in one run. Only the limits are
raised out of reach, so each decision is the common one (a request far below its limit).
Load comes from ``redis-benchmark`` (50 clients, pipeline 16), so the figures measure Redis
running the script, not a Python client. Each figure is the median of ``--repeats`` runs,
taken round-robin so that noise from other work on the machine spreads over every row; the
final counters are checked, so a script that errors cannot pass for a fast one.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import redis

from gateway.identity.resolve import Identity
from gateway.metering import decide
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


def scenarios(prefix: str = "") -> list[Scenario]:
    """The rows measured; ``prefix`` sets accounts (and so keys) apart for a baseline script."""
    api = _route_charges("agentstack.yaml", "pro", "api", prefix + "bench-api")
    return [
        Scenario(
            "AgentStack logic call: 2 monthly charges + daily history",
            prefix + "bench-logic",
            _route_charges("agentstack.yaml", "pro", "logic", prefix + "bench-logic"),
        ),
        Scenario(
            "AgentStack API call: 1 monthly charge + daily history", prefix + "bench-api", api
        ),
        Scenario(
            "one monthly charge, no history",
            prefix + "bench-month",
            (dataclasses.replace(api[0], scope_id=prefix + "bench-month", history_ttl=0),),
        ),
        Scenario(
            "AgentIdP API call: 1 daily charge",
            prefix + "bench-idp",
            _route_charges("agentidp.yaml", "pro", "api", prefix + "bench-idp"),
        ),
        Scenario(
            "AgentStack logic call, enterprise: 2 unlimited counters + history",
            prefix + "bench-ent",
            _route_charges("agentstack.yaml", "enterprise", "logic", prefix + "bench-ent"),
        ),
    ]


@dataclasses.dataclass(frozen=True)
class Row:
    label: str
    command: tuple[str, ...]
    key: str  # where the command runs on a Cluster (a key of its slot)
    script: str  # the script the command calls, loaded on every node first
    scenario: Scenario | None = None


# Run in a subprocess with a tree of the gateway on its path: the consume script's source and,
# per scenario, the keys and arguments RedisStore.consume hands it (caught on their way out).
_CAPTURE = """
import asyncio, json, sys
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge

class Sent(Exception):
    pass

class Capture(RedisStore):
    async def _script(self, name, keys, args):
        raise Sent([list(keys), [str(a) for a in args]])

async def main():
    store = Capture("redis://127.0.0.1:1/0")
    calls = []
    for account, charges in json.load(sys.stdin):
        try:
            await store.consume(account, [Charge(**c) for c in charges])
        except Sent as sent:
            calls.append(sent.args[0])
    await store.close()
    print(json.dumps({"source": store._sources["consume"], "calls": calls}))

asyncio.run(main())
"""


def sent_by(tree: Path, table: Sequence[Scenario]) -> tuple[str, list[tuple[list[str], list[str]]]]:
    """The consume script of the gateway in ``tree`` and the calls its RedisStore makes."""
    request = [(s.account, [dataclasses.asdict(c) for c in s.charges]) for s in table]
    done = subprocess.run(
        [sys.executable, "-c", _CAPTURE],
        input=json.dumps(request),
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise RuntimeError(f"the gateway in {tree} could not build its calls:\n{done.stderr}")
    reply = json.loads(done.stdout)
    return reply["source"], [(keys, args) for keys, args in reply["calls"]]


def _sha(source: str) -> str:
    return hashlib.sha1(source.encode()).hexdigest()


def rows(trees: Sequence[tuple[str, Path, str]]) -> list[Row]:
    """INCR, the minimal script, then each scenario as sent by each gateway tree (this one,
    and a baseline revision's for a before/after in one run), each on accounts of its own."""
    plain = "gw:{a:bench}:plain"
    out = [
        Row("INCR", ("INCR", plain), plain, MINIMAL),
        Row(
            "EVALSHA of a one-line INCRBY script",
            ("EVALSHA", _sha(MINIMAL), "1", plain, "1"),
            plain,
            MINIMAL,
        ),
    ]
    by_tree = []
    for name, tree, prefix in trees:
        table = scenarios(prefix)
        source, calls = sent_by(tree, table)
        by_tree.append((name, source, table, calls))
    for index in range(len(scenarios())):
        for name, source, table, calls in by_tree:
            keys, args = calls[index]
            command = ("EVALSHA", _sha(source), str(len(keys)), *keys, *args)
            label = f"{name}, {table[index].label}"
            out.append(Row(label, command, keys[0], source, table[index]))
    return out


@dataclasses.dataclass(frozen=True)
class Figure:
    per_second: float  # what redis-benchmark reports: the wall-clock rate
    per_cpu_second: float  # requests per second of the server's own CPU time (user + sys)


def _cpu(port: int) -> float:
    info = redis.Redis(host="127.0.0.1", port=port).info("cpu")
    return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def benchmark(port: int, command: Sequence[str], requests: int) -> Figure:
    """One redis-benchmark run of ``command`` (50 clients, pipeline 16).

    Besides redis-benchmark's rate, the server's CPU time over the run gives the rate one
    fully busy Redis core would reach: on a machine shared with other work the wall-clock
    rate swings with the load, the CPU time a request costs much less so.
    """
    address = ["-h", "127.0.0.1", "-p", str(port)]
    load = ["-n", str(requests), "-c", "50", "-P", "16", "--csv"]
    before = _cpu(port)
    done = subprocess.run(
        [BENCHMARK, *address, *load, *command],
        check=True,
        capture_output=True,
        text=True,
        timeout=600,
    )
    spent = _cpu(port) - before
    last = done.stdout.strip().splitlines()[-1]
    return Figure(float(last.split(",")[1].strip('"')), requests / spent)


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
) -> dict[str, list[Figure]]:
    for port in ports:
        client = redis.Redis(host="127.0.0.1", port=port)
        for source in {row.script for row in table}:
            client.script_load(source)
    where = {row.label: owner(ports, row.key) if len(ports) > 1 else ports[0] for row in table}
    figures: dict[str, list[Figure]] = {row.label: [] for row in table}
    sent: dict[str, int] = {}
    for repeat in range(repeats):
        for row in table:
            figure = benchmark(where[row.label], row.command, requests)
            figures[row.label].append(figure)
            # INCR and the minimal script share a counter; each consume row has its own keys
            shared = row.key if row.scenario is None else row.label
            sent[shared] = sent.get(shared, 0) + requests
            print(
                f"  {topology:<8} run {repeat + 1}/{repeats}  {figure.per_second:>10,.0f}/s"
                f"  {figure.per_cpu_second:>10,.0f}/cpu-s  {row.label}"
            )
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
    parser.add_argument(
        "--baseline", metavar="REV", help="also measure consume.lua as of this git revision"
    )
    options = parser.parse_args()
    # stopped with SIGTERM, still stop the servers it started
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))
    results: dict[str, dict[str, list[Figure]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        trees = [("consume.lua", ROOT, "")]
        if options.baseline:
            base = Path(tmp) / "baseline"
            base.mkdir()
            archive = subprocess.run(
                ["git", "archive", options.baseline, "gateway", "policies"],
                cwd=ROOT,
                check=True,
                capture_output=True,
            )
            subprocess.run(["tar", "-x", "-C", str(base)], input=archive.stdout, check=True)
            trees.append((f"consume.lua at {options.baseline}", base, "base-"))
        table = rows(trees)
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


def print_table(results: dict[str, dict[str, list[Figure]]], options: argparse.Namespace) -> None:
    print(
        f"\nredis-benchmark -c 50 -P 16, {options.requests:,} requests per run, median of "
        f"{options.repeats} runs (all runs in parentheses). per s: redis-benchmark's rate; "
        "per CPU-s: requests per second of the server's CPU time (one busy core). Cluster: "
        "the primary serving the account's slot.\n"
    )
    topologies = list(results)
    heads = [f"{t} {what}" for t in topologies for what in ("per s", "per CPU-s")]
    print("| command | " + " | ".join(heads) + " |")
    print("|---|" + "---:|" * len(heads))
    for label in results[topologies[0]]:
        cells = []
        for topology in topologies:
            runs = results[topology][label]
            for rates in ([f.per_second for f in runs], [f.per_cpu_second for f in runs]):
                spread = ", ".join(f"{r / 1000:.0f}k" for r in rates)
                cells.append(f"{statistics.median(rates):,.0f} ({spread})")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
