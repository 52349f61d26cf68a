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


def provision(admin_base: str) -> dict[str, str]:
    """An enterprise account (unlimited, still counted) and a project key for it."""
    account = admin(admin_base, "POST", "/admin/accounts", {"tier": "enterprise"})["id"]
    project = admin(admin_base, "POST", f"/admin/accounts/{account}/projects", {"name": "b"})
    key = admin(
        admin_base,
        "POST",
        f"/admin/accounts/{account}/keys",
        {"prefix": "ask_", "project_id": project["id"]},
    )["key"]
    return {"Authorization": f"Bearer {key}"}


def gateway(store: str, upstream: str) -> tuple[list[str], str, str]:
    port, admin_port = free_port(), free_port()
    args = [
        "-m", "gateway", "serve",
        "--listen", f"127.0.0.1:{port}",
        "--admin-listen", f"127.0.0.1:{admin_port}",
        "--upstream", upstream,
        "--store", store,
        "--policy", str(ROOT / "policies" / "agentstack.yaml"),
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
        help="measure every target once per round, rounds interleaved, and keep each figure's "
        "median: a burst of load from elsewhere then lands on one round of every target",
    )
    options = parser.parse_args()
    measure = {"connections": options.connections, "seconds": options.seconds}
    # label -> url and headers, measured in this order every round
    loads: dict[str, tuple[str, dict[str, str]]] = {}
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        stack.callback(redis.kill)
        up_port, bare_port = free_port(), free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        stack.enter_context(process("-m", "bench.upstream", str(up_port), wait_url=upstream))
        bare = f"http://127.0.0.1:{bare_port}"
        stack.enter_context(
            process("-m", "bench.bare_proxy", str(bare_port), upstream, wait_url=bare)
        )
        loads["bare aiohttp proxy"] = (bare + PATH, {})
        if available() is not None:
            base = stack.enter_context(
                nginx(free_port(), f"127.0.0.1:{up_port}", Path(tmp) / "nginx")
            )
            loads["nginx reverse proxy"] = (base + PATH, {})
        trees = [("", ROOT)]
        if options.baseline:
            trees.insert(0, (" (baseline)", Path(options.baseline).resolve()))
        targets = [
            (f"gateway, {name}{suffix}", store, root)
            for suffix, root in trees
            for name, store in (("memory", "memory"), ("Redis", redis.url))
        ]
        for label, store, root in targets:
            args, proxy, admin_base = gateway(store, upstream)
            stack.enter_context(process(*args, wait_url=admin_base + "/healthz", root=root))
            loads[label] = (proxy + PATH, provision(admin_base))
        # every target runs for the whole measurement (idle while another is loaded); each is
        # warmed briefly, then measured once per round
        for url, headers in loads.values():
            run(url, headers, connections=4, seconds=1)
        runs: dict[str, list[Result]] = {label: [] for label in loads}
        for _ in range(options.rounds):
            for label, (url, headers) in loads.items():
                runs[label].append(run(url, headers, **measure))
    results = {label: _median(found) for label, found in runs.items()}
    print_table(results, options.connections)


def _median(results: list[Result]) -> Result:
    def mid(values: list[float]) -> float:
        return sorted(values)[len(values) // 2]

    return Result(
        mid([r.requests_per_second for r in results]),
        mid([r.p50_ms for r in results]),
        mid([r.p99_ms for r in results]),
        int(mid([float(r.non_2xx) for r in results])),
        results[0].tool,
    )


def print_table(results: dict[str, Result], connections: int) -> None:
    base = results["bare aiohttp proxy"]
    tool = base.tool
    print(f"\nGET {PATH} over loopback, {connections} connections, load by {tool}\n")
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
