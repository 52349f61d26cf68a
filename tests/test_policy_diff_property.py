"""`policy diff` misses nothing: "No changes." only when every tier decides alike.

Random single edits of both shipped policies (a value changed, a key dropped, a list item
dropped, two routes swapped); whenever the diff of the edit says "No changes.", the two
policies must decide a generated request corpus identically for every tier: the route
matched, the gates, every charge (meter, scope, window, cost, limit, packages, overage,
history), every refusal body and header, releases, refunds, prices and key types.
"""

from __future__ import annotations

import copy
import difflib
from typing import Any

import yaml
from hypothesis import HealthCheck, event, given, reject, settings
from hypothesis import strategies as st

from gateway.errors import PolicyRefusal
from gateway.identity.resolve import Identity
from gateway.metering import decide
from gateway.metering.store import MeterState
from gateway.policy.corpus import requests
from gateway.policy.diff import markdown, policy_diff
from gateway.policy.loader import parse_policy
from gateway.policy.model import PathVariant, Policy, Route, Tier
from gateway.policy.source import ConfigError, parse_source
from tests.conftest import POLICIES

NOW = 1_800_000_000.0
RAW = {
    name: parse_source((POLICIES / f"{name}.yaml").read_text(encoding="utf-8")).data
    for name in ("agentstack", "agentidp")
}


def _dump(data: Any) -> str:
    # libyaml's emitter when PyYAML has it: the pure-Python one took half of this test's time
    dumper = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
    return yaml.dump(data, Dumper=dumper, sort_keys=False, allow_unicode=True)


OLD_TEXT = {name: _dump(data) for name, data in RAW.items()}
OLD = {name: parse_policy(text) for name, text in OLD_TEXT.items()}
EXTRA_STRINGS = [
    "1 MB",
    "unlimited",
    "never",
    "open",
    "closed",
    "day",
    "month",
    "project",
    "account",
    "gauge",
    "counter",
    "upstream",
    "gateway",
    "$0.01",
    "/api/**",
]


def _leaves(value: Any, path: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    out = [path] if path else []
    if isinstance(value, dict):
        for key, item in value.items():
            out += _leaves(item, (*path, key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            out += _leaves(item, (*path, index))
    return out


def _strings(value: Any) -> set[str]:
    if isinstance(value, dict):
        return {k for k in value} | {s for v in value.values() for s in _strings(v)}
    if isinstance(value, list):
        return {s for v in value for s in _strings(v)}
    return {value} if isinstance(value, str) else set()


def _get(data: Any, path: tuple[Any, ...]) -> Any:
    for part in path:
        data = data[part]
    return data


class Edit(tuple[str, str, str]):
    """(policy name, old text, new text), shown in a failure as the lines that changed."""

    def __repr__(self) -> str:
        changed = difflib.unified_diff(self[1].splitlines(), self[2].splitlines(), n=0)
        return f"Edit({self[0]}: " + " ".join(list(changed)[2:12]) + ")"


@st.composite
def edits(draw: st.DrawFn) -> tuple[str, str, str]:
    """(policy name, old text, edited text) for one random single edit."""
    name = draw(st.sampled_from(sorted(RAW)))
    data = copy.deepcopy(RAW[name])
    kind = draw(st.sampled_from(["value", "value", "drop", "swap-routes"]))
    if kind == "swap-routes":
        routes = data["routes"]
        i = draw(st.integers(0, len(routes) - 2))
        j = draw(st.integers(i + 1, len(routes) - 1))
        routes[i], routes[j] = routes[j], routes[i]
    else:
        path = draw(st.sampled_from(_leaves(data)))
        parent, key = _get(data, path[:-1]), path[-1]
        value = parent[key]
        if kind == "drop":
            del parent[key]
        elif isinstance(value, bool):
            parent[key] = not value
        elif isinstance(value, int):
            parent[key] = draw(st.sampled_from([0, 1, value + 1, max(value - 1, 0), value * 10]))
        elif isinstance(value, str):
            pool = sorted(_strings(RAW[name]) | set(EXTRA_STRINGS))
            parent[key] = draw(st.sampled_from(pool))
        elif isinstance(value, list) and value:
            parent[key] = list(reversed(value))
        else:
            reject()
    return Edit((name, OLD_TEXT[name], _dump(data)))


def _refusal(exc: PolicyRefusal) -> tuple[Any, ...]:
    return (type(exc).__name__, exc.status, repr(exc.body()), sorted(exc.headers.items()))


def _route_decision(policy: Policy, tier: Tier, route: Route) -> tuple[Any, ...]:
    """Everything serve decides for ``tier`` on ``route``, from the policy alone."""
    meters = list(policy.meters)
    identity = Identity(
        account_id="a",
        tier=tier.name,
        kind="project",
        project_id="p",
        packages={m: 7 for m in meters},
        overage=frozenset(meters),
    )
    try:
        decide.check_gates(policy, tier, route)
        gate = None
    except PolicyRefusal as exc:
        gate = _refusal(exc)
    out: list[Any] = [route.name, route.auth, route.answer, route.refund, gate]
    out += [policy.shadowed(tier, route), tier.store_failure_mode, route.module]
    out += [policy.upstream_features(tier), route.release, route.project_param]
    for body in (None, 5000):
        costs = decide.request_costs(route, body)
        charges = decide.charges(policy, tier, "a", "p", costs, identity)
        out.append(charges)
        out.append(decide.charges(policy, tier, "a", "p", route.release))
        for charge in charges:
            state = MeterState(
                key="k",
                used=charge.limit or 0,
                limit=charge.limit,
                reset_at=NOW + 100 if charge.period else None,
                package=charge.package,
                meter=charge.meter,
                period=charge.period,
            )
            out.append(_refusal(decide.quota_refusal(policy, tier, route, charge, state, NOW)))
    return tuple(out)


def _decisions(policy: Policy, corpus: list[tuple[str, str]]) -> dict[Any, Any]:
    out: dict[Any, Any] = {
        "default_tier": policy.tier(None).name,
        "key_types": [(k.prefix, k.kind, k.length) for k in policy.key_types],
        "tenant_claim": policy.tenant_claim,
        "meters": {m: (x.kind, x.period, x.scope, x.unit) for m, x in policy.meters.items()},
    }
    billing = policy.billing
    for name in policy.tiers:
        tier = policy.tier(name)
        if billing is not None:
            out[("billing", name)] = (
                sorted(
                    billing.overage_meters(
                        name, {"enabled": True, **dict.fromkeys(billing.switches, True)}
                    )
                ),
                {m: [billing.overage_cost(m, u) for u in (1, 999, 12_345)] for m in policy.meters},
                billing.tier_prices.get(name),
                billing.retention_days.get(name),
                decide.history_ttl(policy, tier),
                sorted(
                    (p.name, p.meter, p.units, p.price)
                    for s in billing.packages.values()
                    for p in s.values()
                ),
            )
        # what each route means for the tier; which route each request reaches is below
        out[("routes", name)] = {r.name: _route_decision(policy, tier, r) for r in policy.routes}
    for method, path in corpus:
        try:
            resolved = policy.resolve(method, path)
        except PathVariant as exc:
            out[(method, path)] = ("variant", exc.details)
            continue
        out[(method, path)] = (
            None
            if resolved is None
            else (
                resolved.route.name,
                resolved.params,
                resolved.path,
            )
        )
    return out


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow],
)
@given(edits())
def test_no_changes_means_the_same_decisions(edit: tuple[str, str, str]) -> None:
    name, _, new_text = edit
    old = OLD[name]
    try:
        new = parse_policy(new_text)
    except ConfigError:
        reject()
    if markdown(policy_diff(old, new)) != "No changes.\n":
        event("the diff shows the edit")
        return
    event("no changes")
    corpus = requests((old, new))
    assert _decisions(old, corpus) == _decisions(new, corpus)
