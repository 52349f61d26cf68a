"""Representative requests for a policy's routes: what `policy diff` matches to compare order.

From every route's pattern and methods: a concrete path per pattern (``{id}`` and ``*`` filled
in, ``**`` as nothing, one and two segments), and near variants that a careless edit of a
pattern sends elsewhere (a trailing slash, another letter case).
"""

from __future__ import annotations

from collections.abc import Iterable

from gateway.policy.model import PathVariant, Policy

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def paths(pattern: str) -> list[str]:
    """Concrete paths ``pattern`` matches, then near misses of them."""
    parts = ["**"] if pattern == "/**" else pattern[1:].split("/")
    fixed: list[str] = []
    tails: list[list[str]] = [[]]
    for part in parts:
        if part == "**":
            tails = [[], ["x1"], ["x1", "x2"]]
            break
        fixed.append("1" if part == "*" or part.startswith("{") else part)
    found = ["/" + "/".join([*fixed, *tail]) for tail in tails]
    variants = []
    for path in found:
        variants += [path.rstrip("/") + "/", path.rstrip("/") or "/", path.lower(), path.title()]
    return list(dict.fromkeys([*found, *variants]))


def requests(policies: Iterable[Policy]) -> list[tuple[str, str]]:
    """(method, path) pairs covering every route of every policy given, without repeats."""
    out: dict[tuple[str, str], None] = {}
    for policy in policies:
        for route in policy.routes:
            methods = sorted(route.methods) if route.methods is not None else METHODS
            for path in paths(route.pattern):
                for method in methods:
                    out[(method, path)] = None
    return list(out)


def reaches(policy: Policy, method: str, path: str) -> str:
    """Where a request goes: a route's name, ``variant of NAME (400)`` when the path is a
    spelling of a strict route's pattern (refused), or ``no route (404)``."""
    try:
        found = policy.resolve(method, path)
    except PathVariant as exc:
        return f"variant of {(exc.details or {}).get('route')} (400)"
    return found.route.name if found is not None else "no route (404)"
