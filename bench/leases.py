"""`make bench-leases`: a leased hot account's throughput beside an unlimited caller's.

One `gateway serve --workers N` on a private Redis, the shipped AgentStack policy with the
premium tier's call counters leased (``leases``, units per process), drives three callers
of the logic route in turn, round-robin over ``--repeats``: an enterprise account (unlimited,
still counted: one consume script per request), a premium account decided per request (a
second gateway on the shipped policy) and the same premium account leased. Besides req/s and
p99 each row shows the store scripts (EVALSHA, from Redis's INFO commandstats) per request.
Issue 14's target: the leased account as fast as the unlimited caller.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from contextlib import ExitStack
from pathlib import Path

from bench.load import Result, run
from bench.run import ROOT, gateway, process, provision
from tests.redis_servers import RedisServer, free_port

PATH = "/api/logic/bench"
PREMIUM = "  premium:\n    title: PREMIUM\n"


def leased_policy(directory: Path, units: int) -> Path:
    text = (ROOT / "policies" / "agentstack.yaml").read_text()
    if PREMIUM not in text:
        raise SystemExit("the shipped policy no longer has the premium tier this bench leases")
    leases = f"    leases: {{logic_engine_calls: {units}, api_calls: {units}}}\n"
    path = directory / "leased.yaml"
    path.write_text(text.replace(PREMIUM, PREMIUM + leases, 1))
    return path


def scripts(redis: RedisServer) -> int:
    stats = redis.client().info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--lease", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    options = parser.parse_args()
    rows: dict[str, list[tuple[Result, float]]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        stack.callback(redis.kill)
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        stack.enter_context(process("-m", "bench.upstream", str(up_port), wait_url=upstream))
        targets = []
        for policy, callers in (
            (
                leased_policy(Path(tmp), options.lease),
                (
                    ("enterprise: unlimited, per request", "enterprise"),
                    (f"premium: leased {options.lease}", "premium"),
                ),
            ),
            (ROOT / "policies" / "agentstack.yaml", (("premium: per request", "premium"),)),
        ):
            args, proxy, admin_base = gateway(redis.url, upstream)
            args[args.index("--policy") + 1] = str(policy)
            args += ["--workers", str(options.workers)]
            stack.enter_context(process(*args, wait_url=admin_base + "/healthz"))
            for label, tier in callers:
                targets.append((label, proxy + PATH, provision(admin_base, tier)))
        for _label, url, headers in targets:
            run(url, headers, connections=4, seconds=1)  # warm: connections, leases
        for _ in range(options.repeats):
            for label, url, headers in targets:
                redis.client().config_resetstat()
                result = run(url, headers, connections=options.connections, seconds=options.seconds)
                total = result.requests_per_second * options.seconds
                rows.setdefault(label, []).append((result, scripts(redis) / max(total, 1)))
    print(
        f"\nGET {PATH}, {options.workers} workers, {options.connections} connections, "
        f"median of {options.repeats} x {options.seconds:.0f} s\n"
    )
    print(f"{'caller':<38}{'req/s':>9}{'p99 ms':>9}{'scripts/req':>13}{'non-2xx':>9}")
    for label, measured in rows.items():
        rps = statistics.median(r.requests_per_second for r, _ in measured)
        p99 = statistics.median(r.p99_ms for r, _ in measured)
        per = statistics.median(s for _, s in measured)
        failed = sum(r.non_2xx for r, _ in measured)
        print(f"{label:<38}{rps:>9.0f}{p99:>9.1f}{per:>13.3f}{failed:>9}")


if __name__ == "__main__":
    main()
