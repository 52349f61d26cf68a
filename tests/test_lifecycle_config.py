"""Configuration of the lifecycle: settings sections, and `answer:` routes in a policy."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.app import build_gateway, proxy_app
from gateway.policy.loader import load_policy
from gateway.policy.source import ConfigError
from gateway.settings import load_settings
from tests.conftest import POLICIES

# every test here runs on the embedded store and on a real redis-server
STORES = ("memory", "redis")


def test_accounts_and_stripe_sections(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text(
        "accounts:\n"
        "  provisions_per_address_per_day: 5\n"
        "  session_ttl_seconds: 3600\n"
        "stripe:\n"
        "  prices: {pro: price_123}\n"
        "  success_url: https://example.com/ok\n"
        "  tolerance_seconds: 120\n",
        encoding="utf-8",
    )
    settings = load_settings(str(config))
    assert settings.accounts.provisions_per_address_per_day == 5
    assert settings.accounts.session_ttl_seconds == 3600
    assert settings.stripe.prices == (("pro", "price_123"),)
    assert settings.stripe.success_url == "https://example.com/ok"
    assert settings.stripe.tolerance_seconds == 120
    assert settings.stripe.api_base({}) == "https://api.stripe.com"


def test_unknown_settings_key_names_the_place(tmp_path: Path) -> None:
    config = tmp_path / "gateway.yaml"
    config.write_text("accounts:\n  provisions_per_day: 5\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"gateway.yaml:2.*accounts.provisions_per_day"):
        load_settings(str(config))


def test_a_policy_naming_an_unknown_handler_is_refused_at_start(tmp_path: Path) -> None:
    text = (POLICIES / "agentidp.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("answer: tier-status", "answer: tier-stats"), encoding="utf-8")
    with pytest.raises(ValueError, match="route tier-status answers with 'tier-stats'"):
        proxy_app(build_gateway(load_settings(None, policy=str(bad))))


def test_a_bad_handler_name_names_file_line_and_key(tmp_path: Path) -> None:
    text = (POLICIES / "agentidp.yaml").read_text(encoding="utf-8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(text.replace("answer: tier-status", "answer: Tier Status"), encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml:\d+ routes\[\d+\]\.answer"):
        load_policy(bad)
