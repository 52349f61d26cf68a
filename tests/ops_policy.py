"""A small policy for the operations tests, written to a file so it can be reloaded."""

from __future__ import annotations

import os
from pathlib import Path


def ops_policy(
    *,
    free_calls: int = 3,
    pro_calls: int = 100,
    api_route: str = "api",
    policy_shadow: str = "",
    tier_shadow: str = "",
    route_shadow: str = "",
) -> str:
    """Tiers free and pro, one daily meter, an export route only pro may use."""
    return f"""\
name: ops-test
default_tier: free
{policy_shadow}
identity:
  key_types:
    - {{prefix: k_, kind: user}}
meters:
  calls: {{kind: counter, period: day, scope: account}}
features:
  export: {{title: Data export}}
tiers:
  free:
    {tier_shadow}
    limits: {{calls: {free_calls}}}
  pro:
    limits: {{calls: {pro_calls}}}
    features: [export]
routes:
  - name: export
    path: /api/export/**
    features: [export]
    consume: {{calls: 1}}
  - name: {api_route}
    path: /api/**
    consume: {{calls: 1}}
    {route_shadow}
"""


def write_policy(path: Path, text: str) -> None:
    """Replace the file atomically, as ops are told to (a reader never sees half a file)."""
    scratch = path.with_suffix(".tmp")
    scratch.write_text(text)
    os.replace(scratch, path)
