"""Response templates: ``${name}`` placeholders, checked at load and filled at refusal time.

A string that is exactly one placeholder takes the variable's own JSON type (``"${limit}"``
becomes the number 1000); anywhere else a placeholder is replaced by its text.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from gateway.policy.source import Node

PLACEHOLDER = re.compile(r"\$\{([a-z_]+)\}")

#: every variable a template may use, and what it holds
VARIABLES: dict[str, str] = {
    "limit": "the meter's limit for the tier (number)",
    "limit_text": "the limit with thousands separators, e.g. 1,000",
    "current": "the usage the request would have reached (number)",
    "current_text": "current with thousands separators",
    "remaining": "units left before the limit (number)",
    "meter": "the meter's name",
    "meter_title": "the meter's table title",
    "meter_label": "the meter's label for sentences",
    "tier": "the caller's tier name",
    "tier_title": "the caller's tier title",
    "feature": "the feature the route needs",
    "feature_title": "the feature's title",
    "route": "the route's name",
    "reset": "when the meter's window resets, ISO 8601 UTC (null for live counts)",
    "retry_after": "seconds until the reset (null for live counts)",
    "retryable": "whether retrying later can succeed without an upgrade (boolean)",
    "upgrade_tier": "the cheapest tier that would allow the request (null if none)",
    "upgrade_tier_title": "that tier's title",
    "upgrade_price": "that tier's monthly price, e.g. $29.00 (null if the policy lists none)",
    "package": "the cheapest package that would allow the request, e.g. logic-engine:small",
    "package_price": "that package's one-time price, e.g. $5.00 (null without a package)",
    "package_url": "where to buy that package (null without a package)",
    "next_step": "the cheapest of that package and that tier: {kind, name, price[, url]}",
}


def check_template(node: Node) -> None:
    """Raise ConfigError at the first placeholder that names no known variable."""
    value = node.value
    if isinstance(value, str):
        for name in PLACEHOLDER.findall(value):
            if name not in VARIABLES:
                raise node.fail(
                    f"unknown template variable ${{{name}}}; known: {', '.join(sorted(VARIABLES))}"
                )
    elif isinstance(value, dict):
        for key in value:
            check_template(node.child(key))
    elif isinstance(value, list):
        for child in node.list():
            check_template(child)


def render(body: Any, variables: Mapping[str, Any]) -> Any:
    """Fill a template body; unknown names cannot occur (checked at load)."""
    if isinstance(body, str):
        whole = PLACEHOLDER.fullmatch(body)
        if whole is not None:
            return variables.get(whole.group(1))
        if "${" not in body:
            return body
        return PLACEHOLDER.sub(lambda m: _text(variables.get(m.group(1))), body)
    if isinstance(body, dict):
        return {key: render(value, variables) for key, value in body.items()}
    if isinstance(body, list):
        return [render(value, variables) for value in body]
    return body


def _text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
