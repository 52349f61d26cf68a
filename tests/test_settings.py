"""Runtime settings: the documented example config, flags over the file, errors with file:line."""

from __future__ import annotations

import ipaddress
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from yarl import URL

from gateway.settings import (
    KEYS,
    Address,
    ConfigError,
    JwtSettings,
    Limits,
    Settings,
    TracingSettings,
    load_settings,
    parse_address,
    parse_upstream,
)
from tests.conftest import ROOT

EXAMPLE = ROOT / "config" / "gateway.yaml"


def keys_in(data: dict[str, Any]) -> dict[str, set[str]]:
    """The example's keys by section, as settings.KEYS names sections."""
    out: dict[str, set[str]] = {"": set(data)}
    for section, value in data.items():
        if isinstance(value, dict):
            out[section] = set(value)
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            out[f"{section}[]"] = set().union(*value)
    return out


def test_the_example_config_loads_with_the_documented_values() -> None:
    settings = load_settings(str(EXAMPLE))
    assert settings.listen == Address("127.0.0.1", 8080)
    assert settings.admin_listen == Address("127.0.0.1", 9090)
    assert Path(settings.policy).resolve() == ROOT / "policies" / "agentstack.yaml"
    assert settings.store == "memory"
    assert settings.workers == 1
    assert settings.upstreams == (("/", URL("http://127.0.0.1:8000")),)
    assert settings.jwt == JwtSettings()
    assert settings.limits == Limits()
    # the example documents the defaults: loading it changes nothing but the policy path
    assert settings == Settings(policy=settings.policy)


def test_the_example_config_covers_every_key_and_documents_each() -> None:
    text = EXAMPLE.read_text()
    data = yaml.safe_load(text)
    # an upstream pool's keys would change the defaults the example documents: they are
    # shown as a commented example, which must load and name every one of them
    pool_sections = {s for s in KEYS if s.startswith("upstreams[].")}
    block = text.partition("# (upstreams-pool-example):\n")[2].splitlines()
    example = [line.replace("#", " ", 1) for line in block[: next(
        i for i, line in enumerate(block) if not line.startswith("  #")
    )]]  # fmt: skip
    pool = yaml.safe_load("\n".join(example))
    assert keys_in({"upstreams": pool})["upstreams[]"] == set(KEYS["upstreams[]"]) - {"url"}
    assert set(pool[0]["targets"][0]) == set(KEYS["upstreams[].targets[]"])
    for section in pool_sections - {"upstreams[].targets[]"}:
        assert set(pool[0][section.partition(".")[2]]) == set(KEYS[section]), section
    found = keys_in(data)
    assert found == {s: set(keys) for s, keys in KEYS.items() if s not in pool_sections} | {
        "upstreams[]": found["upstreams[]"]
    }
    assert found["upstreams[]"] == {"prefix", "url"}
    lines = text.splitlines()
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        # every key has a comment in its paragraph: on its line or above, up to a blank line
        paragraph = []
        for above in reversed(lines[: number + 1]):
            if not above.strip():
                break
            paragraph.append(above)
        assert any("#" in p for p in paragraph), f"line {number + 1} is undocumented: {line}"


def test_flags_override_the_file() -> None:
    settings = load_settings(
        str(EXAMPLE),
        listen="0.0.0.0:80",
        upstream="https://api.internal:8443/base",
        store="redis://127.0.0.1:6390/0",
        workers=4,
    )
    assert settings.listen == Address("0.0.0.0", 80)
    assert settings.upstreams == (("/", URL("https://api.internal:8443/base")),)
    assert settings.store == "redis://127.0.0.1:6390/0"
    assert settings.workers == 4
    assert settings.admin_listen == Address("127.0.0.1", 9090)  # not overridden: the file's


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "gateway.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    ("text", "line", "key_path", "problem"),
    [
        ("listen: :8080\ncolour: blue\n", 2, "colour", "unknown key"),
        ("jwt:\n  algorithms: [HS256]\n  secret: abc\n", 3, "jwt.secret", "unknown key"),
        ("limits:\n  max_body: 5\n", 2, "limits.max_body", "unknown key"),
        (
            "upstreams:\n  - prefix: /\n    url: http://a:1\n    weight: 2\n",
            4,
            "upstreams[0].weight",
            "unknown key",
        ),
        ("listen: 127.0.0.1\n", 1, "listen", "expected HOST:PORT, got '127.0.0.1'"),
        ("admin_listen: localhost:70000\n", 1, "admin_listen", "expected HOST:PORT"),
        ("listen: exa mple:80\n", 1, "listen", "invalid host 'exa mple'"),
        ("listen: '::1:80'\n", 1, "listen", "write an IPv6 address in brackets"),
        ("listen: '[::1:80'\n", 1, "listen", "unbalanced brackets"),
        (
            "upstreams:\n  - prefix: /\n    url: ftp://files\n",
            3,
            "upstreams[0].url",
            "expected an http:// or https:// URL, got 'ftp://files'",
        ),
        (
            "upstreams:\n  - prefix: /\n    url: http://h:99999\n",
            3,
            "upstreams[0].url",
            "invalid URL 'http://h:99999'",
        ),
        (
            "upstreams:\n  - prefix: /\n    url: http://h/?a=1\n",
            3,
            "upstreams[0].url",
            "no query",
        ),
        (
            "upstreams:\n  - prefix: /\n    url: http://user:pw@h/\n",
            3,
            "upstreams[0].url",
            "credentials",
        ),
        (
            "upstreams:\n  - {prefix: /, url: 'http://a:1'}\n  - {prefix: /, url: 'http://b:1'}\n",
            3,
            "upstreams[1].prefix",
            "listed twice",
        ),
        ("upstreams:\n  - prefix: api\n    url: http://h\n", 2, "upstreams[0].prefix", "'/'"),
        (
            "trusted_proxies:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n",
            3,
            "trusted_proxies[1]",
            "10.0.0.0/33",
        ),
        ("trusted_proxies: [not-an-ip]\n", 1, "trusted_proxies[0]", "not-an-ip"),
        ("workers: 0\n", 1, "workers", "at least 1"),
        ("workers: many\n", 1, "workers", 'expected an integer, got "many"'),
        ("store: postgres://db\n", 1, "store", "expected 'memory' or a redis:// URL"),
        ("jwt:\n  algorithms: [none]\n", 2, "jwt.algorithms[0]", "expected one of"),
        ("jwt:\n  algorithms: []\n", 2, "jwt.algorithms", "at least one algorithm"),
        (
            "jwt:\n  algorithms: [RS256]\n",
            1,
            "jwt",
            "RS256 needs public_key_file, jwks_file or jwks_url",
        ),
        ("timeouts:\n  read_seconds: 0\n", 2, "timeouts.read_seconds", "at least 0.001"),
        ("limits:\n  max_headers: -1\n", 2, "limits.max_headers", "at least 1"),
        ("listen: [1, 2\n", 2, "", "invalid YAML"),
        ("tracing:\n  exporter: otlp\n", 2, "tracing.exporter", "unknown key"),
        (
            "tracing:\n  endpoint: grpc://collector:4317\n",
            2,
            "tracing.endpoint",
            "expected an http:// or https:// URL, got 'grpc://collector:4317'",
        ),
        ("tracing:\n  endpoint: http://c/?k=1\n", 2, "tracing.endpoint", "no credentials, query"),
        ("tracing:\n  sample_ratio: 1.5\n", 2, "tracing.sample_ratio", "at most 1"),
        ("tracing:\n  sample_ratio: -0.1\n", 2, "tracing.sample_ratio", "at least 0"),
        ("tracing:\n  max_queue_size: 0\n", 2, "tracing.max_queue_size", "at least 1"),
        (
            "tracing:\n  max_queue_size: 10\n  max_export_batch_size: 11\n",
            1,
            "tracing",
            "max_export_batch_size cannot be larger than max_queue_size",
        ),
        (
            "tracing:\n  schedule_delay_seconds: 0\n",
            2,
            "tracing.schedule_delay_seconds",
            "at least 0.001",
        ),
        ("tracing:\n  service_name: ''\n", 2, "tracing.service_name", "non-empty string"),
    ],
)
def test_settings_errors_name_file_line_and_key_path(
    tmp_path: Path, text: str, line: int, key_path: str, problem: str
) -> None:
    file = write(tmp_path, text)
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    message = str(caught.value)
    where = f"{file}:{line} {key_path}: " if key_path else f"{file}:{line}: "
    assert message.startswith(where), message
    assert problem in message


def test_a_store_url_with_a_password_is_not_echoed(tmp_path: Path) -> None:
    file = write(tmp_path, "store: postgres://admin:s3cret@db:5432\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    assert "s3cret" not in str(caught.value)


def test_a_collector_credential_in_the_endpoint_is_refused_unechoed(tmp_path: Path) -> None:
    file = write(tmp_path, "tracing:\n  endpoint: https://user:s3cret@otlp.example.com\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(file)
    assert "OTEL_EXPORTER_OTLP_HEADERS" in str(caught.value)
    assert "s3cret" not in str(caught.value)


def test_tracing_is_on_with_an_endpoint_from_the_file_or_the_flag(tmp_path: Path) -> None:
    assert not Settings().tracing.enabled
    file = write(tmp_path, "tracing:\n  endpoint: http://collector:4318\n  sample_ratio: 0.25\n")
    tracing = load_settings(file).tracing
    # a URL with no path is the collector's base: the traces path is added
    assert tracing == TracingSettings(endpoint="http://collector:4318/v1/traces", sample_ratio=0.25)
    assert tracing.enabled
    flagged = load_settings(file, tracing_endpoint="https://otlp.example.com/otlp/v1/traces")
    assert flagged.tracing.endpoint == "https://otlp.example.com/otlp/v1/traces"
    assert flagged.tracing.sample_ratio == 0.25  # the rest of the file's section stays
    assert load_settings(None, tracing_endpoint="http://127.0.0.1:4318").tracing.enabled
    with pytest.raises(ValueError, match="expected an http"):
        load_settings(None, tracing_endpoint="127.0.0.1:4318")


def test_optional_jwt_keys_accept_null_and_resolve_paths(tmp_path: Path) -> None:
    file = write(
        tmp_path,
        "jwt:\n  algorithms: [RS256, ES256]\n  public_key_file: keys/idp.pem\n"
        "  jwks_file: null\n  issuer: https://idp.test\n  audience: null\n",
    )
    jwt = load_settings(file).jwt
    assert jwt.algorithms == ("RS256", "ES256")
    assert jwt.public_key_file == str(tmp_path / "keys" / "idp.pem")
    assert jwt.jwks_file is None
    assert jwt.issuer == "https://idp.test"
    assert jwt.audience is None


def test_addresses_and_upstreams_parse() -> None:
    assert parse_address("[::1]:8080") == Address("::1", 8080)
    assert parse_address(":8080") == Address("0.0.0.0", 8080)
    assert str(parse_address("[::1]:80")) == "[::1]:80"
    assert parse_address("gateway_1.internal:80") == Address("gateway_1.internal", 80)
    assert parse_upstream("http://[::1]:8000/base") == URL("http://[::1]:8000/base")
    for bad in ("http://h:0", "http://exa mple", "http://"):
        with pytest.raises(ValueError, match="http"):
            parse_upstream(bad)


def test_bad_flags_are_refused() -> None:
    with pytest.raises(ValueError, match="HOST:PORT"):
        load_settings(None, listen="8080")
    with pytest.raises(ValueError, match="redis"):
        load_settings(None, store="mysql://db")
    with pytest.raises(ValueError, match="at least 1"):
        load_settings(None, workers=0)


def test_trusted_proxies_are_networks(tmp_path: Path) -> None:
    file = write(tmp_path, "trusted_proxies: [10.1.2.3/8, '::1', 192.168.0.1]\n")
    assert load_settings(file).trusted_proxies == (
        ipaddress.ip_network("10.0.0.0/8"),
        ipaddress.ip_network("::1/128"),
        ipaddress.ip_network("192.168.0.1/32"),
    )


def test_serve_with_a_bad_config_exits_2_naming_the_place(tmp_path: Path) -> None:
    file = write(tmp_path, "listen: 127.0.0.1:8080\nupstreams:\n  - prefix: /\n    url: nope\n")
    result = subprocess.run(
        [sys.executable, "-m", "gateway", "serve", "--config", file],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: {file}:4 upstreams[0].url: expected an http:// or https:// URL, got 'nope'"
    )
