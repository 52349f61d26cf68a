"""deploy/prometheus: the alert rules pass their promtool unit tests, the scrape config is valid."""

from __future__ import annotations

from typing import Any

import yaml

from tests.deploy_tools import DEPLOY, run, tool

PROMETHEUS = DEPLOY / "prometheus"


def load(name: str) -> Any:
    return yaml.safe_load((PROMETHEUS / name).read_text(encoding="utf-8"))


def alert_names() -> set[str]:
    return {
        rule["alert"]
        for group in load("alerts.yml")["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }


def test_alert_rules_pass_their_unit_tests() -> None:
    output = run([tool("promtool"), "test", "rules", "alerts_test.yml"], cwd=PROMETHEUS)
    assert "SUCCESS" in output


def test_the_issue_s_alerts_exist() -> None:
    assert alert_names() == {
        "GatewayDown",
        "GatewayServerErrorRatio",
        "GatewayStoreDegraded",
        "GatewayRefusalRatioJump",
        "GatewayPolicyReloadFailing",
        "GatewayUpstreamSlow",
        "GatewayUpstreamErrorRatio",
    }


def test_every_alert_is_tested_firing_and_quiet() -> None:
    firing: set[str] = set()
    quiet: set[str] = set()
    for case in load("alerts_test.yml")["tests"]:
        for check in case.get("alert_rule_test", []):
            (firing if check.get("exp_alerts") else quiet).add(check["alertname"])
    assert alert_names() - firing == set(), "alerts never tested firing"
    assert alert_names() - quiet == set(), "alerts never tested quiet"


def test_prometheus_config_is_valid_and_loads_the_alert_rules() -> None:
    output = run([tool("promtool"), "check", "config", "prometheus.yml"], cwd=PROMETHEUS)
    assert "alerts.yml" in output
    jobs = {job["job_name"]: job for job in load("prometheus.yml")["scrape_configs"]}
    # the alert rules select job="gateway"
    assert jobs["gateway"]["metrics_path"] == "/metrics"
