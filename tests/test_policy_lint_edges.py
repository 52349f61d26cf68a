"""Policy loading and lint details that only the `gateway policy` subprocess suites showed.

Each case is a mutant of gateway/policy (loader.py, lint.py) that the in-process policy
suites let through (docs/testing.md, "Mutation testing"): the file and digest a loaded policy
carries (reload compares digests), where a finding points, which route patterns cover which,
and the example path a case warning names. No store is involved.
"""

from __future__ import annotations

import hashlib

from gateway.policy.lint import Finding, covers, lint, segments
from gateway.policy.loader import load_policy, parse_policy
from gateway.policy.source import parse_source
from tests.conftest import POLICIES

HEAD = """\
name: tiny
default_tier: free
meters:
  calls: {kind: counter, period: month, scope: account}
tiers:
  free:
    limits: {calls: 10}
routes:
"""


def test_a_loaded_policy_carries_its_file_and_the_digest_of_its_bytes() -> None:
    path = POLICIES / "agentidp.yaml"
    policy = load_policy(path)
    assert policy.file == str(path)
    assert policy.digest == hashlib.sha256(path.read_bytes()).hexdigest()
    # the same bytes parsed from text: the same digest, so a reload of them changes nothing
    assert parse_policy(path.read_text(encoding="utf-8"), "x.yaml").digest == policy.digest


def test_a_finding_names_the_line_when_it_has_one() -> None:
    finding = Finding("warning", 12, ("routes", 0, "path"), "a problem", "a fix")
    assert finding.format("p.yaml") == "p.yaml:12: warning: routes[0].path: a problem; fix: a fix"
    whole = Finding("error", None, ("features",), "a problem", "a fix")
    assert whole.format("p.yaml") == "p.yaml: error: features: a problem; fix: a fix"


def test_which_patterns_cover_which() -> None:
    assert covers(segments("/api/*/x"), segments("/api/a/x"))
    assert not covers(segments("/api/*"), segments("/api/**"))  # ** reaches deeper than *
    assert not covers(segments("/*/x"), segments("/a"))
    assert covers(segments("/api/**"), segments("/api/*/x"))


def _lint(routes: str) -> list[str]:
    text = HEAD + routes
    policy = parse_policy(text, "p.yaml")
    return [f.format("p.yaml") for f in lint(policy, parse_source(text, "p.yaml"))]


def test_a_capital_segment_warns_with_a_concrete_path_that_misses_the_route() -> None:
    found = _lint("  - name: upper\n    path: /api/Users/{id}\n    consume: {calls: 1}\n")
    assert found == [
        "p.yaml:10: warning: routes[0].path: segment 'Users' has capitals; /api/users/x1 is "
        "refused as a variant of upper (400); fix: write /api/users/{id}"
    ]


def test_a_segment_differing_from_another_only_by_case_names_the_other() -> None:
    found = _lint(
        "  - name: upper\n    path: /api/{id}/Users\n    consume: {calls: 1}\n"
        "  - name: lower\n    path: /api/{id}/users\n    methods: [GET]\n"
        "    consume: {calls: 1}\n"
    )
    assert found == [
        "p.yaml:10: warning: routes[0].path: segment 'Users' differs from 'users' only by "
        "case; /api/x1/users is refused as a variant of upper (400); fix: write /api/{id}/users"
    ]


def test_route_overlaps_are_named_errors_first_then_in_file_order() -> None:
    found = _lint(
        "  - name: upper\n    path: /api/Users/{id}\n    consume: {calls: 1}\n"
        "  - name: a\n    path: /api/x/{id}\n    methods: [GET]\n    consume: {calls: 1}\n"
        "  - name: e\n    path: /api/x/{n}\n    methods: [GET, PUT]\n    consume: {calls: 1}\n"
        "  - name: c\n    path: /api/x/*\n    methods: [PUT]\n    consume: {calls: 1}\n"
        "  - name: d\n    path: /api/x/{n}\n    methods: [GET, PUT]\n    consume: {calls: 1}\n"
    )
    assert found == [
        "p.yaml:21: error: routes[3].path: route c can never match: e (/api/x/{n}) comes first "
        "and takes every request it would; fix: move c above e, or narrow e",
        "p.yaml:25: error: routes[4].path: route d can never match: a (/api/x/{id}), "
        "e (/api/x/{n}) comes first and takes every request it would; fix: move d above a, "
        "or narrow a",
        "p.yaml:10: warning: routes[0].path: segment 'Users' has capitals; /api/users/x1 is "
        "refused as a variant of upper (400); fix: write /api/users/{id}",
        "p.yaml:18: warning: routes[2].methods: GET never reach route e: a (/api/x/{id}) comes "
        "first and takes them; fix: move e above a, or drop those methods from one of them",
    ]
