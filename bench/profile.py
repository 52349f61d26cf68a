"""`make profile`: a py-spy flame graph of one gateway worker on Redis under the bench load."""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import threading
from contextlib import ExitStack
from pathlib import Path

from bench.load import run
from bench.run import PATH, ROOT, gateway, process, provision, unrated_policy
from tests.redis_servers import RedisServer, free_port


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--output", default=str(ROOT / "profile.svg"))
    # raw: collapsed stacks, one line per stack with its sample count, for grep and sort
    parser.add_argument(
        "--format", choices=("flamegraph", "raw", "speedscope"), default="flamegraph"
    )
    options = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install -e '.[dev]'")
    with ExitStack() as stack, tempfile.TemporaryDirectory() as tmp:
        redis = RedisServer(Path(tmp) / "redis").start()
        stack.callback(redis.kill)
        up_port = free_port()
        upstream = f"http://127.0.0.1:{up_port}"
        stack.enter_context(process("-m", "bench.upstream", str(up_port), wait_url=upstream))
        args, proxy, admin_base = gateway(redis.url, upstream, unrated_policy(Path(tmp)))
        with process(*args, wait_url=admin_base + "/healthz") as proc:
            headers = provision(admin_base)
            run(proxy + PATH, headers, connections=4, seconds=1)
            # one worker serves both listeners: its pid is the process started above
            record = [
                spy, "record", "--pid", str(proc.pid), "--duration", str(int(options.seconds)),
                "--rate", "200", "--output", options.output, "--format", options.format,
            ]  # fmt: skip
            spying = subprocess.Popen(record, stdout=subprocess.DEVNULL)
            load = threading.Thread(
                target=run,
                args=(proxy + PATH, headers),
                kwargs={"connections": options.connections, "seconds": options.seconds},
            )
            load.start()
            load.join()
            spying.wait(timeout=options.seconds + 60)
    print(f"{options.format} profile of one worker under load: {options.output}")


if __name__ == "__main__":
    main()
