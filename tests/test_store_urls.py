"""Every documented store URL form reaches a real server: unix socket, TLS, Sentinel."""

from __future__ import annotations

import datetime
import ipaddress
import subprocess
import time
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from gateway.app import open_store
from gateway.metering.clock import FakeClock
from gateway.metering.redis_store import RedisStore
from gateway.metering.store import Charge
from tests.redis_servers import REDIS_SERVER, RedisServer, free_port

CALLS = Charge("api_calls", "42", "month", 1, 2)


async def exercise(url: str, clock: FakeClock) -> None:
    """Meter and store a record through ``url``: what a gateway does on every request."""
    store = RedisStore(url, clock=clock, timeout_ms=2000)
    try:
        assert (await store.consume("42", [CALLS])).admitted
        assert (await store.consume("42", [CALLS])).admitted
        assert not (await store.consume("42", [CALLS])).admitted
        await store.put_record("account", "42", {"tier": "free"})
        await store.ping()
    finally:
        await store.close()


def used(server: RedisServer) -> bytes | None:
    value: bytes | None = server.client().get("gw:{a:42}:m:api_calls:42:2026-11")
    return value


async def test_unix_socket(tmp_path: Path, clock: FakeClock) -> None:
    socket_path = tmp_path / "redis.sock"
    server = RedisServer(
        tmp_path / "unix", extra=("--unixsocket", str(socket_path), "--unixsocketperm", "700")
    ).start()
    try:
        await exercise(f"unix://{socket_path}?db=0", clock)
        assert used(server) == b"2"
    finally:
        server.kill()


def _certificates(directory: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a server certificate for 127.0.0.1."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(1)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(2)
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return paths


async def test_tls(tmp_path: Path, clock: FakeClock) -> None:
    ca, cert, key = _certificates(tmp_path / "tls")
    tls_port = free_port()
    server = RedisServer(
        tmp_path / "tls-redis",
        extra=(
            "--tls-port", str(tls_port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        ),
    ).start()  # fmt: skip
    try:
        await exercise(f"rediss://127.0.0.1:{tls_port}/0?ssl_ca_certs={ca}", clock)
        assert used(server) == b"2"
    finally:
        server.kill()


async def test_sentinel(tmp_path: Path, clock: FakeClock, own_redis: RedisServer) -> None:
    port = free_port()
    config = tmp_path / "sentinel.conf"
    config.write_text(
        f"port {port}\nbind 127.0.0.1\ndir {tmp_path}\n"
        f"sentinel monitor gateway 127.0.0.1 {own_redis.port} 1\n"
    )
    sentinel = subprocess.Popen(
        [REDIS_SERVER, str(config), "--sentinel"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        client = redis.Redis(host="127.0.0.1", port=port, socket_timeout=2)
        deadline = time.monotonic() + 10
        while True:
            try:
                if client.execute_command("SENTINEL", "get-master-addr-by-name", "gateway"):
                    break
            except redis.ConnectionError:
                pass
            assert time.monotonic() < deadline, "sentinel did not start"
            time.sleep(0.05)
        await exercise(f"redis+sentinel://127.0.0.1:{port}/gateway/0", clock)
        assert used(own_redis) == b"2"
    finally:
        sentinel.kill()
        sentinel.wait(timeout=10)


@pytest.mark.parametrize(
    "url",
    ["memcached://127.0.0.1:11211", "redis+sentinel://127.0.0.1:26379", "redis+cluster://nohost"],
)
def test_unsupported_or_malformed_urls_are_refused_at_start(url: str, clock: FakeClock) -> None:
    with pytest.raises(ValueError, match=r"store URL|unsupported store|Sentinel URL"):
        open_store(url, clock)
