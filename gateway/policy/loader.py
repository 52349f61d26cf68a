"""Policy YAML -> a frozen Policy; every mistake is a ConfigError naming file, line and key path."""

from __future__ import annotations

import hashlib
import re
from decimal import Decimal
from pathlib import Path
from typing import Any, cast

from gateway.policy.billing import parse_billing
from gateway.policy.model import (
    DECISIONS,
    FailureMode,
    Feature,
    KeyType,
    Meter,
    Policy,
    Rate,
    ServiceCaps,
    Template,
    Tier,
)
from gateway.policy.names import did_you_mean
from gateway.policy.rates import meter_rate, tier_rate
from gateway.policy.routes import parse_routes, path_matching
from gateway.policy.source import ConfigError, Node, describe, load_source, parse_source, root
from gateway.policy.templates import check_template

_NAME = re.compile(r"[a-z][a-z0-9_]{0,62}")
_PREFIX = re.compile(r"[a-z][a-z0-9]*_([a-z0-9]+_)*")
_BYTE_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}
_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB)")

DEFAULT_RESPONSES: dict[str, Template] = {
    "quota_exceeded": Template(
        429,
        {
            "error": "Limit exceeded",
            "reason": "${meter_label} limit exceeded",
            "limit": "${limit}",
            "current": "${current}",
            "meter": "${meter}",
            "reset": "${reset}",
        },
    ),
    "feature_unavailable": Template(
        403,
        {
            "error": "Feature not available",
            "reason": "${feature_title} is not available on the ${tier_title} tier",
            "feature": "${feature}",
        },
    ),
    "tier_forbidden": Template(
        403,
        {
            "error": "Operation not allowed",
            "reason": "This operation is not available on the ${tier_title} tier",
        },
    ),
}


def load_policy(path: str | Path) -> Policy:
    """Load and validate a policy file."""
    source = load_source(path)
    digest = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return _build(root(source), str(path), digest)


def parse_policy(text: str, file: str = "<string>") -> Policy:
    """Validate a policy given as text; errors name ``file`` as if it had been read from it."""
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    return _build(root(parse_source(text, file)), file, digest)


def _build(top: Node, file: str, digest: str) -> Policy:
    top.mapping(
        allowed={
            "name",
            "default_tier",
            "identity",
            "meters",
            "features",
            "tiers",
            "routes",
            "responses",
            "table",
            "billing",
            "shadow",
            "service_caps",
            "path_matching",
        },
        required={"name", "default_tier", "meters", "tiers", "routes"},
    )
    name = top.child("name").str(max_len=100)
    meters = {key: _meter(key, node) for key, node in top.child("meters").items()}
    if not meters:
        raise top.child("meters").fail("define at least one meter")
    features_node = top.get("features", {})
    assert features_node is not None
    features = {key: _feature(key, node) for key, node in features_node.items()}
    raw_routes = top.value.get("routes")
    route_names = (
        {str(item.get("name")) for item in raw_routes if isinstance(item, dict)}
        if isinstance(raw_routes, list)
        else set()
    )
    responses = dict(DEFAULT_RESPONSES)
    responses_node = top.get("responses")
    if responses_node is not None:
        responses.update(_responses(responses_node, meters, features, route_names))
    key_types, tenant_claim = _identity(top.get("identity", {}))
    tiers_node = top.child("tiers")
    tiers: dict[str, Tier] = {}
    for rank, (key, node) in enumerate(tiers_node.items()):
        _check_name(tiers_node, key, "tier")
        tiers[key] = _tier(key, rank, node, meters, features, route_names)
    if not tiers:
        raise tiers_node.fail("define at least one tier")
    default_node = top.child("default_tier")
    default_tier = default_node.str()
    if default_tier not in tiers:
        raise default_node.fail(
            f"unknown tier {default_tier!r}; tiers are: {', '.join(tiers)}"
            + did_you_mean(default_tier, tiers)
        )
    service_caps = _service_caps(top.get("service_caps"), features)
    matching = path_matching(top.get("path_matching"), "strict")
    routes = parse_routes(top.child("routes"), meters, features, tiers, service_caps, matching)
    table = _table(top.get("table"), meters, features, tiers)
    billing_node = top.get("billing")
    billing = (
        parse_billing(billing_node, meters, tuple(tiers), parse_limit)
        if billing_node is not None
        else None
    )
    return Policy(
        name=name,
        file=file,
        digest=digest,
        meters=meters,
        features=features,
        tiers=tiers,
        default_tier=default_tier,
        routes=routes,
        responses=responses,
        key_types=key_types,
        tenant_claim=tenant_claim,
        table=table,
        billing=billing,
        shadow=_shadow(top),
        service_caps=service_caps,
    )


def _service_caps(node: Node | None, features: dict[str, Feature]) -> ServiceCaps | None:
    """``service_caps: {feature: service_caps, modules: {payments: Payments, ...}}``."""
    if node is None:
        return None
    node.mapping(allowed={"feature", "modules"}, required={"feature", "modules"})
    feature_node = node.child("feature")
    feature = feature_node.str()
    if feature not in features:
        raise feature_node.fail(
            f"unknown feature; features are: {', '.join(features) or '(none)'}"
            + did_you_mean(feature, features)
        )
    modules: dict[str, str] = {}
    for module, title_node in node.child("modules").items():
        _check_name(node.child("modules"), module, "module")
        modules[module] = title_node.str(max_len=100)
    if not modules:
        raise node.child("modules").fail("name at least one module")
    return ServiceCaps(feature=feature, modules=modules)


def _shadow(node: Node) -> bool:
    child = node.get("shadow")
    return child.bool() if child is not None else False


def _table(
    node: Node | None,
    meters: dict[str, Meter],
    features: dict[str, Feature],
    tiers: dict[str, Tier],
) -> tuple[str, ...]:
    attributes = list(dict.fromkeys(a for tier in tiers.values() for a in tier.attributes))
    if node is None:
        return (*attributes, *meters, *features)
    rows = []
    for item in node.list():
        row = item.str()
        if row not in meters and row not in features and row not in attributes:
            raise item.fail("a table row names a meter, a feature or a tier attribute")
        rows.append(row)
    return tuple(rows)


def _check_name(parent: Node, key: str, what: str, pattern: re.Pattern[str] = _NAME) -> None:
    if not pattern.fullmatch(key):
        raise parent.child(key).fail(
            f"{what} names are lowercase letters, digits and underscores, starting with a letter"
        )


def _meter(key: str, node: Node) -> Meter:
    _check_name(Node(node.source, node.path[:-1], None), key, "meter")
    node.mapping(
        allowed={
            "kind",
            "period",
            "scope",
            "title",
            "label",
            "unit",
            "display_unit",
            "reported",
            "rate",
            "burst",
        },
        required={"kind", "scope"},
    )
    kind = node.child("kind").str(choices=("counter", "gauge", "rate"))
    period_node = node.get("period")
    if kind == "counter":
        if period_node is None:
            raise node.fail("a counter needs a period: day or month")
        period = period_node.str(choices=("day", "month"))
    else:
        if period_node is not None:
            raise period_node.fail(
                "a gauge counts live resources and has no period"
                if kind == "gauge"
                else "a rate meter's period is in its rate (rate: 20/s)"
            )
        period = None
    rate = None
    if kind == "rate":
        scope = node.child("scope").str(choices=("key", "project", "account", "client"))
        rate = meter_rate(node)
        for field in ("reported", "display_unit"):
            if (extra := node.get(field)) is not None:
                raise extra.fail(f"a rate meter has no {field}: it counts requests as they come")
    else:
        for field in ("rate", "burst"):
            if (extra := node.get(field)) is not None:
                raise extra.fail(f"only a rate meter (kind: rate) has a {field}")
        scope_node = node.child("scope")
        if scope_node.value in ("key", "client"):
            raise scope_node.fail(
                f"scope {scope_node.value} is for rate meters (kind: rate); a quota belongs to "
                "an account or a project"
            )
        scope = scope_node.str(choices=("account", "project"))
    title = _text(node, "title", key.replace("_", " ").capitalize())
    label = _text(node, "label", title)
    unit = _text(node, "unit", "units")
    display_unit = None
    display_node = node.get("display_unit")
    if display_node is not None:
        if unit != "bytes":
            raise display_node.fail("display_unit applies to meters whose unit is bytes")
        display_unit = display_node.str(choices=tuple(_BYTE_UNITS))
    return Meter(
        name=key,
        kind=cast(Any, kind),
        period=cast(Any, period),
        scope=cast(Any, scope),
        title=title,
        label=label,
        unit=unit,
        display_unit=display_unit,
        reported=_flag(node, "reported"),
        rate=rate,
    )


def _flag(node: Node, key: str) -> bool:
    child = node.get(key)
    return child.bool() if child is not None else False


def _text(node: Node, key: str, default: str) -> str:
    child = node.get(key)
    return child.str(max_len=200) if child is not None else default


def _feature(key: str, node: Node) -> Feature:
    _check_name(Node(node.source, node.path[:-1], None), key, "feature")
    node.mapping(allowed={"title", "shown_enabled", "shown_disabled", "enforced"})
    enforced_node = node.get("enforced", "gateway")
    assert enforced_node is not None
    enforced = enforced_node.str(choices=("gateway", "upstream"))
    return Feature(
        name=key,
        title=_text(node, "title", key.replace("_", " ").capitalize()),
        shown_enabled=_text(node, "shown_enabled", "✅ Enabled"),
        shown_disabled=_text(node, "shown_disabled", "❌ Disabled"),
        enforced="upstream" if enforced == "upstream" else "gateway",
    )


def _identity(node: Node | None) -> tuple[tuple[KeyType, ...], str]:
    assert node is not None
    node.mapping(allowed={"key_types", "tenant_claim"})
    key_types: list[KeyType] = []
    types_node = node.get("key_types", [])
    assert types_node is not None
    seen: set[str] = set()
    for item in types_node.list():
        item.mapping(allowed={"prefix", "kind", "length"}, required={"prefix", "kind"})
        prefix_node = item.child("prefix")
        prefix = prefix_node.str(max_len=32)
        if not _PREFIX.fullmatch(prefix):
            raise prefix_node.fail("a key prefix is lowercase letters and digits ending in '_'")
        if prefix in seen:
            raise prefix_node.fail(f"prefix {prefix!r} is defined twice")
        seen.add(prefix)
        kind = item.child("kind").str(choices=("user", "project"))
        length_node = item.get("length", 32)
        assert length_node is not None
        length = length_node.int(minimum=16, maximum=128)
        regex = re.compile(re.escape(prefix) + f"[A-Za-z0-9]{{{length}}}")
        key_types.append(KeyType(prefix=prefix, kind=cast(Any, kind), length=length, regex=regex))
    # the longest prefix wins, so "anon_ask_" is never read as some shorter "anon_"
    key_types.sort(key=lambda k: -len(k.prefix))
    claim_node = node.get("tenant_claim", "organization_id")
    assert claim_node is not None
    return tuple(key_types), claim_node.str(max_len=64)


def parse_limit(node: Node, meter: Meter) -> int | None:
    """An integer, ``unlimited``, or for byte meters a size such as ``20 MB`` or ``0.02 GB``."""
    value = node.value
    if isinstance(value, str) and value.strip().lower() == "unlimited":
        return None
    if isinstance(value, str) and meter.unit == "bytes":
        found = _SIZE.fullmatch(value.strip())
        if found:
            number, unit = found.groups()
            # exact decimal arithmetic: in binary floating point "2.01 MB" is 2009999.9999999998
            scaled = Decimal(number) * _BYTE_UNITS[unit]
            if scaled != scaled.to_integral_value():
                raise node.fail(f"{value!r} is not a whole number of bytes")
            return int(scaled)
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 0:
            raise node.fail(f'expected a non-negative integer or "unlimited", got {value}')
        return value
    sizes = ' or a size such as "20 MB"' if meter.unit == "bytes" else ""
    raise node.fail(f'expected a non-negative integer{sizes} or "unlimited", got {describe(value)}')


def _tier(
    key: str,
    rank: int,
    node: Node,
    meters: dict[str, Meter],
    features: dict[str, Feature],
    route_names: set[str],
) -> Tier:
    node.mapping(
        allowed={
            "title",
            "limits",
            "features",
            "attributes",
            "responses",
            "store_failure_mode",
            "shadow",
            "leases",
        },
        required={"limits"},
    )
    limits_node = node.child("limits")
    limits: dict[str, int | None] = {}
    rates: dict[str, Rate | None] = {
        name: meter.rate for name, meter in meters.items() if meter.rate is not None
    }
    for meter_name, limit_node in limits_node.items():
        meter = meters.get(meter_name)
        if meter is None:
            raise limit_node.fail(
                f"unknown meter; meters are: {', '.join(meters)}" + did_you_mean(meter_name, meters)
            )
        if meter.kind == "rate":
            rates[meter_name] = tier_rate(limit_node, meter)
        else:
            limits[meter_name] = parse_limit(limit_node, meter)
    for meter_name, meter in meters.items():
        if meter_name not in limits and meter_name not in rates:
            raise limits_node.fail(
                f"missing a limit for meter {meter_name!r} ("
                + (
                    'a rate such as 10/s, or "unlimited"; or give the meter a default rate'
                    if meter.kind == "rate"
                    else 'a number or "unlimited"'
                )
                + ")"
            )
    enabled: set[str] = set()
    features_node = node.get("features", [])
    assert features_node is not None
    for item in features_node.list():
        feature = item.str()
        if feature not in features:
            raise item.fail(
                f"unknown feature; features are: {', '.join(features) or '(none)'}"
                + did_you_mean(feature, features)
            )
        enabled.add(feature)
    attributes: dict[str, str] = {}
    attributes_node = node.get("attributes", {})
    assert attributes_node is not None
    for attr, value_node in attributes_node.items():
        if not isinstance(value_node.value, str | int | float) or isinstance(
            value_node.value, bool
        ):
            raise value_node.fail("an attribute is a string or a number")
        attributes[attr] = str(value_node.value)
    responses_node = node.get("responses")
    responses = (
        _responses(responses_node, meters, features, route_names)
        if responses_node is not None
        else {}
    )
    mode: FailureMode | None = None
    if (mode_node := node.get("store_failure_mode")) is not None:
        mode = "open" if mode_node.str(choices=("closed", "open")) == "open" else "closed"
    return Tier(
        name=key,
        title=_text(node, "title", key.capitalize()),
        rank=rank,
        limits=limits,
        features=frozenset(enabled),
        attributes=attributes,
        responses=responses,
        store_failure_mode=mode,
        shadow=_shadow(node),
        leases=_leases(node, meters, limits),
        rates=rates,
    )


def _leases(node: Node, meters: dict[str, Meter], limits: dict[str, int | None]) -> dict[str, int]:
    """``leases: {meter: units}``: only a limited counter can be leased; a live count or an
    unlimited meter has no allowance to hand out in parts."""
    out: dict[str, int] = {}
    leases_node = node.get("leases", {})
    assert leases_node is not None
    for meter_name, units_node in leases_node.items():
        meter = meters.get(meter_name)
        if meter is None:
            raise units_node.fail(
                f"unknown meter; meters are: {', '.join(meters)}" + did_you_mean(meter_name, meters)
            )
        if meter.period is None:
            raise units_node.fail("a live count (a gauge) cannot be leased")
        if limits.get(meter_name) is None:
            raise units_node.fail("an unlimited meter needs no lease")
        out[meter_name] = units_node.int(minimum=1)
    return out


def _responses(
    node: Node, meters: dict[str, Meter], features: dict[str, Feature], routes: set[str]
) -> dict[str, Template]:
    out: dict[str, Template] = {}
    for selector, item in node.items():
        decision, _, subject = selector.partition(":")
        if decision not in DECISIONS:
            raise item.fail(
                f"unknown decision {decision!r}; expected {', '.join(DECISIONS)} optionally "
                "followed by ':' and a meter, feature or route name"
            )
        if subject:
            if decision == "quota_exceeded" and subject not in meters:
                raise item.fail(f"unknown meter {subject!r}" + did_you_mean(subject, meters))
            if decision == "quota_exceeded" and meters[subject].kind == "rate":
                raise item.fail(
                    f"{subject} is a rate meter: its refusal is the gateway's RATE_LIMITED "
                    "answer, not a template"
                )
            if decision == "feature_unavailable" and subject not in features:
                raise item.fail(f"unknown feature {subject!r}" + did_you_mean(subject, features))
            if decision == "tier_forbidden" and subject not in routes:
                raise item.fail(f"unknown route {subject!r}" + did_you_mean(subject, routes))
        out[selector] = _template(item)
    return out


def _template(node: Node) -> Template:
    node.mapping(allowed={"status", "body", "headers"}, required={"status", "body"})
    status = node.child("status").int(minimum=400, maximum=599)
    body_node = node.child("body")
    check_template(body_node)
    headers: dict[str, str] = {}
    headers_node = node.get("headers", {})
    assert headers_node is not None
    for name, value_node in headers_node.items():
        headers[name] = value_node.str(max_len=1000)
    return Template(status=status, body=body_node.value, headers=headers)


__all__ = ["ConfigError", "load_policy", "parse_limit", "parse_policy"]
