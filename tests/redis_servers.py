"""Real redis-server processes for tests: a single server and a three-primary Cluster.

Loaded as a pytest plugin from conftest.py. Servers listen on free loopback ports in a
temporary directory and never touch the machine's own Redis on 6379.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import redis

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
_START_TIMEOUT = 10.0


def _bindable(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_cluster_port() -> int:
    """A free port whose cluster bus port (port + 10000) is valid and free as well."""
    for _ in range(200):
        port = free_port()
        if port + 10000 <= 65535 and _bindable(port + 10000):
            return port
    raise RuntimeError("no free port pair for a cluster node")


@dataclass
class RedisServer:
    """One redis-server process; ``stop``/``cont`` freeze it, ``restart`` brings it back empty."""

    directory: Path
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self.directory.mkdir(parents=True, exist_ok=True)
        command = [
            REDIS_SERVER,
            "--port",
            str(self.port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
            "--dir",
            str(self.directory),
            *self.extra,
        ]
        self.process = subprocess.Popen(
            command, cwd=self.directory, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while True:
            try:
                if self.client().ping():
                    return self
            except redis.ConnectionError:
                if self.process.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"redis-server on port {self.port} did not start") from None
                time.sleep(0.02)

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait(timeout=10)

    def restart(self) -> None:
        """Kill it and start it again on the same port: no data, no scripts."""
        self.kill()
        self.start()

    def freeze(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        os.kill(self.process.pid, signal.SIGCONT)

    @contextlib.contextmanager
    def monitor(self) -> Iterator[list[str]]:
        """Commands clients send while the block runs (MONITOR; scripts' own calls excluded).

        The list fills when the block exits: a marker command is sent and read back so that
        every command before it has been seen.
        """
        log = self.directory / f"monitor-{free_port()}.log"
        seen: list[str] = []
        signaller = self.client()
        signaller.ping()  # connected before MONITOR starts, so its handshake is not seen
        with log.open("wb") as out:
            process = subprocess.Popen(
                [REDIS_CLI, "-p", str(self.port), "monitor"], stdout=out, stderr=subprocess.STDOUT
            )
        try:
            _wait_for(lambda: log.read_bytes().startswith(b"OK"), "MONITOR to start")
            yield seen
            marker = f"end-of-monitor-{free_port()}"
            signaller.echo(marker)
            _wait_for(lambda: marker.encode() in log.read_bytes(), "MONITOR to catch up")
        finally:
            process.kill()
            process.wait(timeout=10)
        for line in log.read_text().splitlines()[1:]:
            # 1700000000.123456 [0 127.0.0.1:5555] "EVALSHA" ...  ; script calls say [0 lua]
            source, _, command = line.partition("] ")
            if " lua" not in source and marker not in command:
                seen.append(command.split(" ")[0].strip('"').upper())


@dataclass
class RedisCluster:
    """Three primaries, no replicas, slots spread by ``redis-cli --cluster create``."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def flush(self) -> None:
        for node in self.nodes:
            node.client().flushall()

    def kill(self) -> None:
        for node in self.nodes:
            node.kill()


def start_cluster(directory: Path) -> RedisCluster:
    nodes = []
    for index in range(3):
        node = RedisServer(
            directory / f"node{index}",
            port=free_cluster_port(),
            extra=(
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                "2000",
            ),
        )
        nodes.append(node.start())
    cluster = RedisCluster(nodes)
    try:
        subprocess.run(
            [
                REDIS_CLI,
                "--cluster",
                "create",
                *(f"127.0.0.1:{n.port}" for n in nodes),
                "--cluster-replicas",
                "0",
                "--cluster-yes",
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )
        deadline = time.monotonic() + _START_TIMEOUT
        while not all(_cluster_ok(n) for n in nodes):
            if time.monotonic() > deadline:
                raise RuntimeError("the test Redis Cluster did not reach cluster_state:ok")
            time.sleep(0.05)
    except BaseException:
        cluster.kill()
        raise
    return cluster


def _wait_for(check: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + _START_TIMEOUT
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _cluster_ok(node: RedisServer) -> bool:
    info = node.client().execute_command("CLUSTER", "INFO")
    text = info.decode() if isinstance(info, bytes) else str(info)
    return "cluster_state:ok" in text


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()


@pytest.fixture(scope="session")
def redis_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    cluster = start_cluster(tmp_path_factory.mktemp("cluster"))
    yield cluster
    cluster.kill()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    """The shared session server, emptied for this test."""
    redis_server.client().flushall()
    redis_server.client().script_flush()
    return redis_server.url


@pytest.fixture
def cluster_url(redis_cluster: RedisCluster) -> str:
    redis_cluster.flush()
    return redis_cluster.url


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[RedisServer]:
    """A server of this test's own, for tests that freeze, kill or restart it."""
    server = RedisServer(tmp_path / "own-redis").start()
    yield server
    server.kill()
