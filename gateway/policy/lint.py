"""`gateway policy check`'s lint: a policy that loads but would not enforce what it says.

The loader refuses what cannot be a policy; these rules find what loads and still opens a
hole: routes that can never match, paths that miss the requests they were written for,
byte limits without a unit, zero limits, features and meters nothing uses, handler names
the gateway does not have. Each finding names the file, line and key path and says the fix.
"""

from __future__ import annotations

from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import Literal

from gateway.policy.corpus import reaches
from gateway.policy.model import Policy, Route
from gateway.policy.names import did_you_mean
from gateway.policy.source import KeyPath, Source, format_path

Severity = Literal["error", "warning"]
#: every method a route may list; a route without ``methods`` also takes any other
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_ANY = "(any other method)"
#: how a rule reports: severity, key path, the problem, the fix
Add = Callable[[Severity, KeyPath, str, str], None]


@dataclass(frozen=True, slots=True)
class Finding:
    severity: Severity
    line: int | None
    path: KeyPath
    problem: str
    fix: str

    def format(self, file: str) -> str:
        where = f"{file}:{self.line}" if self.line else file
        return (
            f"{where}: {self.severity}: {format_path(self.path)}: {self.problem}; fix: {self.fix}"
        )


def lint(policy: Policy, source: Source, handlers: Collection[str] | None = None) -> list[Finding]:
    """Every finding for ``policy`` (built from ``source``), errors first, in file order."""
    found: list[Finding] = []

    def add(severity: Severity, path: KeyPath, problem: str, fix: str) -> None:
        found.append(Finding(severity, source.error(path, "").line, path, problem, fix))

    _shadowed(policy, add)
    _near_misses(policy, add)
    _limits(policy, source, add)
    _leases(policy, add)
    _rates(policy, add)
    _unused(policy, add)
    if handlers is not None:
        _handlers(policy, handlers, add)
    return sorted(found, key=lambda f: (f.severity != "error", f.line or 0))


# ---- routes -----------------------------------------------------------------------------


def segments(pattern: str) -> list[str]:
    return ["**"] if pattern == "/**" else pattern[1:].split("/")


def _wild(segment: str) -> bool:
    return segment == "*" or (segment.startswith("{") and segment.endswith("}"))


def covers(first: list[str], later: list[str]) -> bool:
    """Whether every path ``later`` matches is also matched by ``first``."""
    if not first:
        return not later
    if first[0] == "**":
        return True
    if not later or later[0] == "**":
        return False
    if _wild(first[0]):
        return later[0] != "" and covers(first[1:], later[1:])
    return first[0] == later[0] and covers(first[1:], later[1:])


def _methods(route: Route) -> set[str]:
    return set(route.methods) if route.methods is not None else {*METHODS, _ANY}


def _shadowed(policy: Policy, add: Add) -> None:
    hidden: dict[int, list[str]] = {}  # catch-all index -> names of the routes it hides
    for index, route in enumerate(policy.routes):
        left = _methods(route)
        taken_by: list[tuple[int, Route, set[str]]] = []
        for earlier_index, earlier in enumerate(policy.routes[:index]):
            if not covers(segments(earlier.pattern), segments(route.pattern)):
                continue
            taken = left & _methods(earlier)
            if taken:
                taken_by.append((earlier_index, earlier, taken))
                left -= taken
        if not taken_by:
            continue
        first_index, first, _ = taken_by[0]
        if not left:
            if first.pattern.endswith("**") and len(taken_by) == 1:
                hidden.setdefault(first_index, []).append(route.name)
                continue
            names = ", ".join(f"{r.name} ({r.pattern})" for _, r, _ in taken_by)
            add(
                "error",
                ("routes", index, "path"),
                f"route {route.name} can never match: {names} comes first and takes every "
                "request it would",
                f"move {route.name} above {first.name}, or narrow {first.name}",
            )
        elif route.methods is not None:
            methods = ", ".join(sorted(_methods(route) - left))
            add(
                "warning",
                ("routes", index, "methods"),
                f"{methods} never reach route {route.name}: {first.name} ({first.pattern}) "
                "comes first and takes them",
                f"move {route.name} above {first.name}, or drop those methods from one of them",
            )
    for index, hides in hidden.items():
        route = policy.routes[index]
        add(
            "error",
            ("routes", index, "path"),
            f"catch-all route {route.name} ({route.pattern}) comes before {len(hides)} more "
            f"specific route(s), which can never match: {', '.join(hides)}",
            f"move {route.name} below them (a catch-all goes last)",
        )


def _sample(parts: list[str]) -> str:
    """A concrete path a pattern matches."""
    out = []
    for part in parts:
        if part == "**":
            break
        out.append("x1" if _wild(part) else part)
    return "/" + "/".join(out)


def _goes_to(policy: Policy, route: Route, path: str) -> str | None:
    """Where a request on ``path`` meant for ``route`` goes instead; None if it reaches it."""
    method = next(iter(sorted(route.methods))) if route.methods else "GET"
    found = reaches(policy, method, path)
    if found == route.name:
        return None
    if found.startswith("variant of"):
        return f"is refused as a {found}"
    return f"goes to {found}" if found != "no route (404)" else "matches no route (404)"


def _near_misses(policy: Policy, add: Add) -> None:
    """Paths written so that the requests they were meant for go to another route."""
    literals = {
        part for route in policy.routes for part in segments(route.pattern) if not _wild(part)
    }
    globbed = {route.pattern[:-3] for route in policy.routes if route.pattern.endswith("/**")}
    for index, route in enumerate(policy.routes):
        parts = segments(route.pattern)
        where = ("routes", index, "path")
        gates = bool(route.consume or route.features or route.deny_tiers or route.body_meter)
        for part in parts:
            if part == part.lower() or _wild(part):
                continue
            twin = next((p for p in literals if p != part and p.lower() == part.lower()), None)
            if twin is not None or all(p == p.lower() for p in literals - {part}):
                lower = route.pattern.replace(part, part.lower())
                other = _goes_to(policy, route, _sample(segments(lower)))
                if other is None:  # a lenient route takes the other spelling too
                    continue
                went = f"; {_sample(segments(lower))} {other}"
                what = f"differs from {twin!r} only by case" if twin else "has capitals"
                add(
                    "warning",
                    where,
                    f"segment {part!r} {what}{went}",
                    f"write {lower}",
                )
        if len(parts) > 1 and parts[-1] == "":
            bare = route.pattern.rstrip("/")
            other = _goes_to(policy, route, bare)
            if other is not None and not any(
                r.pattern.endswith("/") for r in policy.routes if r is not route
            ):
                add(
                    "warning",
                    where,
                    f"the trailing slash makes {bare} (without it) miss this route: it {other}",
                    f"write {bare}",
                )
        if not gates or route.methods is not None or parts[-1] == "**" or parts[-1] == "":
            continue
        base = route.pattern if not _wild(parts[-1]) else route.pattern.rsplit("/", 1)[0]
        parent = base.rsplit("/", 1)[0]
        siblings = [p for p in globbed if p.rsplit("/", 1)[0] == parent and p != base]
        if not siblings:
            continue
        below = f"{base}/x1/x2"
        other = _goes_to(policy, route, below)
        if other is None:
            continue
        reach = f"one segment below {base}" if base != route.pattern else f"only {base} itself"
        near = ", ".join(sorted(s + "/**" for s in siblings)[:3])
        add(
            "warning",
            where,
            f"{route.pattern} matches {reach}, so {below} {other}; sibling routes use /** ({near})",
            f"write {base}/**",
        )


# ---- limits -----------------------------------------------------------------------------


def _leases(policy: Policy, add: Add) -> None:
    """A lease is units one process takes at a time; near the limit each process's unused
    units go unadmitted by the others until given back (metering/leases.py)."""
    for tier in policy.tiers.values():
        for meter_name, units in tier.leases.items():
            limit = tier.limit(meter_name) or 0
            if units * 10 > limit:
                add(
                    "warning",
                    ("tiers", tier.name, "leases", meter_name),
                    f"a lease of {units:,} is more than a tenth of the limit of {limit:,}: a "
                    "few processes can hold the whole allowance and refuse one another's calls",
                    "lease a small share of the limit (under 1% keeps the unadmitted rest "
                    "small), or decide this meter per request",
                )


def _limits(policy: Policy, source: Source, add: Add) -> None:
    raw_tiers = source.data.get("tiers") if isinstance(source.data, dict) else None
    for tier in policy.tiers.values():
        raw = raw_tiers.get(tier.name, {}).get("limits", {}) if isinstance(raw_tiers, dict) else {}
        for meter_name, limit in tier.limits.items():
            meter = policy.meters[meter_name]
            path: KeyPath = ("tiers", tier.name, "limits", meter_name)
            if limit == 0:
                add(
                    "warning",
                    path,
                    f"a limit of 0 refuses every request that consumes {meter_name}",
                    "deny the routes with deny_tiers or leave a feature out (the refusal then "
                    "says so), or set a positive limit",
                )
            value = raw.get(meter_name) if isinstance(raw, dict) else None
            if meter.unit == "bytes" and _bare_number(value) and limit:
                add(
                    "warning",
                    path,
                    f"{value} has no unit, so it means {value} bytes",
                    f'write "{value} B" if you mean bytes, or a size such as "{value} MB"',
                )
    billing = source.data.get("billing") if isinstance(source.data, dict) else None
    packages = billing.get("packages") if isinstance(billing, dict) else None
    if policy.billing is None or not isinstance(packages, dict):
        return
    for kind, sizes in policy.billing.packages.items():
        for size, package in sizes.items():
            if policy.meters[package.meter].unit != "bytes":
                continue
            value = packages.get(kind, {}).get("sizes", {}).get(size, {}).get("units")
            if _bare_number(value):
                add(
                    "warning",
                    ("billing", "packages", kind, "sizes", size, "units"),
                    f"{value} has no unit, so the package adds {value} bytes",
                    f'write "{value} B" if you mean bytes, or a size such as "{value} GB"',
                )


def _bare_number(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---- unused names -----------------------------------------------------------------------


def _unused(policy: Policy, add: Add) -> None:
    gating = {f for route in policy.routes for f in route.features}
    if policy.service_caps is not None:
        gating.add(policy.service_caps.feature)
    granted = {f for tier in policy.tiers.values() for f in tier.features}
    for name, feature in policy.features.items():
        path: KeyPath = ("features", name)
        if name in gating or feature.enforced == "upstream":
            continue
        if name in granted:
            tiers = ", ".join(t.name for t in policy.tiers.values() if name in t.features)
            add(
                "warning",
                path,
                f"feature {name} is granted ({tiers}) but nothing enforces it: no route needs it",
                f"gate a route with features: [{name}], or mark it enforced: upstream if the "
                "upstream enforces it (it is told through X-Gateway-Features)",
            )
        else:
            add(
                "warning",
                path,
                f"feature {name} is defined but no tier grants it and no route needs it",
                "remove it, or grant it to the tiers that have it",
            )
    used = {m for route in policy.routes for m, _ in (*route.consume, *route.release)}
    used |= {route.body_meter for route in policy.routes if route.body_meter}
    if policy.billing is not None and policy.billing.exports_meter:
        used.add(policy.billing.exports_meter)
    for name, meter in policy.meters.items():
        if name not in used and not meter.reported:
            add(
                "warning",
                ("meters", name),
                f"meter {name} is defined and limited, but no route consumes or releases it",
                "consume it on a route, or mark it reported: true if only the upstream's "
                "X-Gateway-Usage reports count it",
            )


def _rates(policy: Policy, add: Add) -> None:
    """A route costing more of a rate than a tier's burst is refused for that tier always."""
    for index, route in enumerate(policy.routes):
        for meter_name, cost in route.consume:
            for tier in policy.tiers.values():
                rate = tier.rates.get(meter_name)
                if rate is not None and cost > rate.burst and tier.name not in route.deny_tiers:
                    add(
                        "error",
                        ("routes", index, "consume", meter_name),
                        f"route {route.name} costs {cost} of {meter_name}, more than tier "
                        f"{tier.name}'s burst of {rate.burst}: every request is refused",
                        f"lower the cost, or give tier {tier.name} a burst of {cost} or more",
                    )


def _handlers(policy: Policy, handlers: Collection[str], add: Add) -> None:
    for index, route in enumerate(policy.routes):
        if route.answer is not None and route.answer not in handlers:
            add(
                "error",
                ("routes", index, "answer"),
                f"route {route.name} answers with {route.answer!r}, which this gateway does not "
                f"have{did_you_mean(route.answer, handlers)}; `gateway serve` refuses it",
                f"name one of: {', '.join(sorted(handlers))}",
            )
