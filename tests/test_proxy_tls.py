"""TLS upstreams (``https://`` targets): verified against the trust store with the target's
name, kept alive like plain ones, and a certificate that does not verify is the upstream
never reached (502, refunded). The certificate is self-signed, made by ``openssl`` here, and
trusted through ``SSL_CERT_FILE``, which the default verification reads."""

from __future__ import annotations

import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from tests.adversarial import request_bytes, send_raw
from tests.conftest import GatewayFactory, Harness
from tests.wire import OK, WireUpstream

STORES = ("memory", "redis")

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        [
            *(
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ),
            *(
                "-nodes",
                "-days",
                "2",
                "-subj",
                "/CN=127.0.0.1",
                "-addext",
                "subjectAltName=IP:127.0.0.1",
            ),
            *("-keyout", str(key), "-out", str(cert)),
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.fixture
async def tls_upstream(certificate: tuple[Path, Path]) -> AsyncIterator[WireUpstream]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(*certificate)
    upstream = await WireUpstream().start(context)
    yield upstream
    upstream.close()


async def usage(gw: Harness, account: str) -> int:
    resp = await gw.admin.get(f"/admin/accounts/{account}/usage", headers=gw.admin_headers)
    return int((await resp.json())["meters"]["api_calls"]["used"])


def get(target: str, key: str) -> bytes:
    return request_bytes("GET", target, {"Authorization": f"Bearer {key}", "Connection": "close"})


async def test_a_trusted_tls_upstream_is_served_over_kept_alive_connections(
    make_gateway: GatewayFactory,
    tls_upstream: WireUpstream,
    certificate: tuple[Path, Path],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("SSL_CERT_FILE", str(certificate[0]))
    gw = await make_gateway(upstreams=(("/", tls_upstream.url),))
    key = await gw.key(await gw.account("anonymous"))
    for path in ("/api/logic/a?x=%41", "/api/logic/b"):
        answer = await send_raw(gw.client.port, get(path, key))
        assert (answer.status, answer.body) == (200, OK.split(b"\r\n\r\n")[1])
    assert [s.line for s in tls_upstream.seen] == [
        b"GET /api/logic/a?x=%41 HTTP/1.1",
        b"GET /api/logic/b HTTP/1.1",
    ]
    assert len(tls_upstream.raw) <= 2  # a second handshake only if the first was not free yet


async def test_an_untrusted_certificate_is_502_and_refunded_with_nothing_sent(
    make_gateway: GatewayFactory, tls_upstream: WireUpstream, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE", raising=False)
    gw = await make_gateway(upstreams=(("/", tls_upstream.url),))
    account = await gw.account("anonymous")
    key = await gw.key(account)
    assert (await send_raw(gw.client.port, get("/api/logic/a", key))).status == 502
    assert tls_upstream.seen == []
    assert await usage(gw, account) == 0
