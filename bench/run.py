"""`make bench`: upstream, nginx, bare proxy, gateway on memory and Redis: one load, one table."""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import yaml

from bench.load import Result, run
from bench.nginx import available, nginx
from tests.redis_servers import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
ADMIN_TOKEN = "bench-admin-token-0123456789abcdefghij"
PATH = "/api/logic/bench"


@contextmanager
def process(*args: str, wait_url: str, root: Path = ROOT) -> Iterator[subprocess.Popen[bytes]]:
    env = {**os.environ, "PYTHONPATH": str(root), "GATEWAY_ADMIN_TOKEN": ADMIN_TOKEN}
    proc = subprocess.Popen([sys.executable, *args], cwd=root, env=env, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(wait_url, timeout=1).close()
                break
            except urllib.error.HTTPError:
                break  # it answers: that is all we wait for
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"{' '.join(args)} did not start") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()


def admin(base: str, method: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        base + path,
        method=method,
        data=json.dumps(body).encode(),
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=10) as resp:
        return dict(json.loads(resp.read()))


def provision(admin_base: str, tier: str = "enterprise") -> dict[str, str]:
    """An account on ``tier`` (enterprise: unlimited, still counted) and a project key for it."""
    account = admin(admin_base, "POST", "/admin/accounts", {"tier": tier})["id"]
    project = admin(admin_base, "POST", f"/admin/accounts/{account}/projects", {"name": "b"})
    key = admin(
        admin_base,
        "POST",
        f"/admin/accounts/{account}/keys",
        {"prefix": "ask_", "project_id": project["id"]},
    )["key"]
    return {"Authorization": f"Bearer {key}"}


def unrated_policy(folder: Path) -> Path:
    """The shipped AgentStack policy with every tier's request rates raised out of reach.

    The rate meters stay (each decision still evaluates them, as in production); only their
    limits move, so a fast gateway measures forwarding, not a stream of cheap 429s."""
    data: dict[str, Any] = yaml.safe_load((ROOT / "policies" / "agentstack.yaml").read_text())
    rates = {name for name, meter in data["meters"].items() if meter.get("kind") == "rate"}
    for tier in data["tiers"].values():
        for name in rates & tier["limits"].keys():
            tier["limits"][name] = {"rate": "1000000/s", "burst": 1000000}
    path = folder / "agentstack-unrated.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    return path


def gateway(store: str, upstream: str, policy: Path | None = None) -> tuple[list[str], str, str]:
    port, admin_port = free_port(), free_port()
    args = [
        "-m", "gateway", "serve",
        "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
        "--upstream", upstream,
        "--store", store,
        "--policy", str(policy or ROOT / "policies" / "agentstack.yaml"),
    ]  # fmt: skip
    return args, f"http://127.0.0.1:{port}", f"http://127.0.0.1:{admin_port}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument(
        "--baseline",
        metavar="DIR",
        help="also run the gateway from this checkout (e.g. a clone at the commit before a "
        "change), so before and after are measured in one run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every target this many times, interleaved, and keep each figure's "
        "median: on a shared machine a burst of load then lands on one round of every target",
    )
    options = parser.parse_args()
    measure = {"connections": options.connections, "seconds": options.seconds}
    found: dict[str, list[Result]] = {}
    cpu: dict[str, list[float]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        stack.callback(redis.kill)
        up_port, bare_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        stack.enter_context(process("-m", "bench.upstream", str(up_port), wait_url=upstream))
        bare = f"http://127.0.0.1:{bare_port}"
        bare_proc = stack.enter_context(
            process("-m", "bench.bare_proxy", str(bare_port), upstream, wait_url=bare)
        )
        # every target runs for the whole measurement; each is loaded alone, in turn; the
        # pid (of the targets this script starts) is for their CPU time per request
        urls: dict[str, tuple[str, dict[str, str], int | None]] = {
            "bare aiohttp proxy": (bare + PATH, {}, bare_proc.pid)
        }
        if available() is not None:
            base = stack.enter_context(
                nginx(free_port(), f"127.0.0.1:{up_port}", Path(tmp) / "nginx")
            )
            urls["nginx reverse proxy"] = (base + PATH, {}, None)
        trees = [("", ROOT)]
        if options.baseline:
            trees.insert(0, (" (baseline)", Path(options.baseline).resolve()))
        for suffix, root in trees:
            for name, store in (("memory", "memory"), ("Redis", redis.url)):
                args, proxy, admin_base = gateway(store, upstream, unrated_policy(Path(tmp)))
                proc = stack.enter_context(
                    process(*args, wait_url=admin_base + "/healthz", root=root)
                )
                urls[f"gateway, {name}{suffix}"] = (proxy + PATH, provision(admin_base), proc.pid)
        for _ in range(options.rounds):
            for label, (url, headers, pid) in urls.items():
                # warm each target briefly, then measure; all in this one run
                run(url, headers, connections=4, seconds=1)
                before = cpu_seconds(pid)
                result = run(url, headers, **measure)
                found.setdefault(label, []).append(result)
                served = result.requests_per_second * options.seconds
                if pid is not None and served > 0:
                    cpu.setdefault(label, []).append((cpu_seconds(pid) - before) / served * 1e6)
    print_table({label: median(results) for label, results in found.items()}, options)
    print("\nCPU time of the target's process per request (its user + system time over the")
    print("measurement; far steadier than req/s on a shared machine), median:")
    for label, figures in cpu.items():
        print(f"{label:<30}{sorted(figures)[len(figures) // 2]:>8.0f} us")


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds used so far by ``pid`` (0 without one, or off Linux)."""
    if pid is None:
        return 0.0
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    # the fields after the command name (which may hold spaces) start at its closing ")"
    fields = stat.rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def median(results: list[Result]) -> Result:
    """Each figure's median over the rounds (the worst non-2xx count)."""

    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Result(
        mid([r.requests_per_second for r in results]),
        mid([r.p50_ms for r in results]),
        mid([r.p99_ms for r in results]),
        max(r.non_2xx for r in results),
        results[0].tool,
    )


def print_table(results: dict[str, Result], options: argparse.Namespace) -> None:
    base = results["bare aiohttp proxy"]
    print(
        f"\nGET {PATH} over loopback, {options.connections} connections, load by {base.tool},"
        f" median of {options.rounds} interleaved round(s)\n"
    )
    print(
        f"{'target':<30}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'req/s x':>9}{'p50 x':>8}{'p99 x':>8}{'non-2xx':>9}"
    )
    for label, r in results.items():
        print(
            f"{label:<30}{r.requests_per_second:>10.0f}{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}"
            f"{r.requests_per_second / base.requests_per_second:>9.2f}"
            f"{r.p50_ms / base.p50_ms:>8.2f}{r.p99_ms / base.p99_ms:>8.2f}{r.non_2xx:>9}"
        )
    print("\nx = ratio to the bare proxy measured in this same run")
    if "nginx reverse proxy" in results:
        reference = results["nginx reverse proxy"].requests_per_second
        for label, r in results.items():
            if label.startswith("gateway"):
                print(f"{label} / nginx: {r.requests_per_second / reference:.3f}x req/s")


if __name__ == "__main__":
    main()
