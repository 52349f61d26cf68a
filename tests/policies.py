"""Shipped policies as tests need them: without their request rates, or with other rates.

Tests that race hundreds of requests at one instant for a quota's last units measure the
quota; the shipped rates (gateway defaults, a burst of 10 to 1,000) would refuse most of the
race first. They use a copy without rate meters rather than weaker assertions; the rates
have their own suites (tests/test_rate_*.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

POLICIES = Path(__file__).resolve().parent.parent / "policies"


def strip_rates(text: str) -> str:
    """A policy's YAML without its rate meters, their tier limits and route costs."""
    data: dict[str, Any] = yaml.safe_load(text)
    rates = {name for name, meter in data["meters"].items() if meter.get("kind") == "rate"}
    for name in rates:
        del data["meters"][name]
    for tier in data["tiers"].values():
        for name in rates:
            tier["limits"].pop(name, None)
    for route in data["routes"]:
        for name in rates:
            route.get("consume", {}).pop(name, None)
        if route.get("consume") == {}:
            del route["consume"]
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def without_rates(name: str, folder: Path) -> Path:
    """``policies/<name>.yaml`` without rate meters, written to ``folder``."""
    path = folder / f"{name}-without-rates.yaml"
    path.write_text(strip_rates((POLICIES / f"{name}.yaml").read_text(encoding="utf-8")))
    return path
