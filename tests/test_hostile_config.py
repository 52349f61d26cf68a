"""Settings that would quietly weaken the gateway are refused at start with a clear error."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from gateway.app import build_gateway
from gateway.metering.redis_store import RedisStore
from gateway.settings import ConfigError, Settings, load_settings
from tests.conftest import JWT_SECRET, POLICIES, ROOT


@pytest.mark.parametrize("token", ["x", "a" * 31, "é" * 15])
def test_an_admin_token_under_32_bytes_stops_the_start(
    token: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", token)
    settings = Settings(policy=str(POLICIES / "agentstack.yaml"))
    with pytest.raises(
        ValueError, match=r"GATEWAY_ADMIN_TOKEN is \d+ bytes; the admin token needs"
    ):
        build_gateway(settings, registry=CollectorRegistry())


def test_a_32_byte_admin_token_is_accepted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GATEWAY_ADMIN_TOKEN", "a" * 32)
    assert Settings().admin_token() == "a" * 32


def test_serve_with_a_short_admin_token_exits_2_without_a_traceback() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--listen", "127.0.0.1:0"],
        cwd=ROOT,
        env={
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "GATEWAY_ADMIN_TOKEN": "short",
            "GATEWAY_JWT_SECRET": JWT_SECRET,
        },
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result
    assert "GATEWAY_ADMIN_TOKEN is 5 bytes" in result.stderr
    assert "short" not in result.stderr.replace("GATEWAY_ADMIN_TOKEN is 5 bytes", "")
    assert "Traceback" not in result.stderr


BAD_DBS = [
    "redis://127.0.0.1:6379/abc",
    "redis://:p%40ss@127.0.0.1:6379/1x",
    "rediss://127.0.0.1:6379/-1",
    "redis+sentinel://127.0.0.1:26379/mymaster/abc",
    "redis+cluster://127.0.0.1:7000,127.0.0.1:7001/3",
]


@pytest.mark.parametrize("url", BAD_DBS)
def test_a_store_url_with_a_non_numeric_db_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="database"):
        load_settings(store=url)
    with pytest.raises(ValueError, match="database"):
        RedisStore(url)


def test_a_config_file_names_the_line_of_a_bad_store_url(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("listen: 127.0.0.1:8080\nstore: redis://127.0.0.1:6379/abc\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(str(config))
    assert str(caught.value).startswith(f"{config}:2 store: the database in a store URL")


@pytest.mark.parametrize(
    "url", ["redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/15", "redis://127.0.0.1:6379"]
)
def test_numeric_or_absent_dbs_pass(url: str) -> None:
    assert load_settings(store=url).store == url
