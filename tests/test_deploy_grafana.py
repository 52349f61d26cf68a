"""deploy/grafana: the dashboard's queries are valid PromQL and its provisioning fits together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from tests.deploy_tools import DEPLOY, run, tool
from tests.promql import dashboard, dashboard_queries, grafana_to_promql

PROVISIONING = DEPLOY / "grafana" / "provisioning"


def panels() -> list[dict[str, Any]]:
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_every_dashboard_query_is_valid_promql(tmp_path: Path) -> None:
    rules = {
        "groups": [
            {
                "name": "dashboard",
                "rules": [
                    {"record": f"dashboard:query_{index}", "expr": grafana_to_promql(query)}
                    for index, query in enumerate(dashboard_queries())
                ],
            }
        ]
    }
    file = tmp_path / "dashboard_rules.yml"
    file.write_text(yaml.safe_dump(rules), encoding="utf-8")
    output = run([tool("promtool"), "check", "rules", str(file)])
    assert f"SUCCESS: {len(dashboard_queries())} rules found" in output


def test_dashboard_has_the_panels_ops_need() -> None:
    titles = {panel["title"] for panel in panels()}
    assert {
        "Request rate by outcome",
        "Decisions by tier and route",
        "Request latency percentiles",
        "Store latency",
        "Store degraded",
        "Top refused routes",
    } <= titles


def test_panels_are_distinct_fit_the_grid_and_query_the_chosen_data_source() -> None:
    board = dashboard()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels():
        place = panel["gridPos"]
        assert place["x"] + place["w"] <= 24, panel["title"]
        assert panel["targets"], panel["title"]
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert all(target["expr"].strip() for target in panel["targets"]), panel["title"]
    variables = {variable["name"]: variable for variable in board["templating"]["list"]}
    source = yaml.safe_load((PROVISIONING / "datasources" / "prometheus.yaml").read_text())
    # the provisioned data source is the one the dashboard opens with
    assert variables["datasource"]["current"]["value"] == source["datasources"][0]["uid"]


def test_dashboard_provider_loads_from_a_folder() -> None:
    provider = yaml.safe_load((PROVISIONING / "dashboards" / "gateway.yaml").read_text())
    (entry,) = provider["providers"]
    assert entry["type"] == "file"
    assert entry["options"]["path"].startswith("/")
