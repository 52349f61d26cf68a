"""`gateway policy check` lints what loads but would not enforce what it says.

Each case is one edit of a shipped policy that once passed check and changed enforcement
when served; each must now give an error or a warning naming the line, key path and fix.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from gateway.app import handler_names
from gateway.cli import main
from gateway.policy.lint import Finding, covers, lint, segments
from gateway.policy.loader import parse_policy
from gateway.policy.source import ConfigError, parse_source
from tests.conftest import POLICIES

AGENTSTACK = (POLICIES / "agentstack.yaml").read_text(encoding="utf-8")
HANDLERS = handler_names(str(POLICIES / "agentstack.yaml"))

ADVANCED = """\
  - name: advanced-webhooks
    path: /api/webhooks/advanced/**
    features: [webhooks, advanced_webhooks]
    consume: {api_calls: 1, request_rate: 1}
"""


def _edit(old: str, new: str, count: int = 1) -> Callable[[str], str]:
    def apply(text: str) -> str:
        assert old in text, old
        return text.replace(old, new, count)

    return apply


def _move_advanced(text: str) -> str:
    text = _edit(ADVANCED, "")(text)
    return _edit("  - name: custom-analytics\n", ADVANCED + "  - name: custom-analytics\n")(text)


def _add_extra(text: str) -> str:
    return _edit(
        "  white_label: {title: White label}\n",
        "  white_label: {title: White label}\n  extra: {title: Extra}\n",
    )(text)


# edit -> (severity, key path, words of the problem)
CASES: dict[str, tuple[Callable[[str], str], str, str, str]] = {
    "advanced webhooks below webhooks": (
        _move_advanced,
        "error",
        "routes[",
        "catch-all route webhooks (/api/webhooks/**) comes before 1 more specific route(s), "
        "which can never match: advanced-webhooks",
    ),
    "a catch-all first": (
        _edit("  - name: health\n", "  - name: all\n    path: /api/**\n  - name: health\n"),
        "error",
        "routes[0].path",
        "catch-all route all (/api/**) comes before 45 more specific route(s)",
    ),
    "a method-limited route under an earlier one": (
        _edit(
            "  - name: list-projects\n    methods: [GET]\n",
            "  - name: list-projects\n    methods: [POST]\n",
        ),
        "error",
        "routes[6].path",
        "route list-projects can never match: create-project (/api/projects) comes first",
    ),
    "capital letters": (
        _edit("path: /api/logic/**", "path: /api/Logic/**"),
        "warning",
        "routes[44].path",
        "segment 'Logic' has capitals; /api/logic is refused as a variant of logic (400)",
    ),
    "missing /**": (
        _edit("path: /api/logic/**", "path: /api/logic"),
        "warning",
        "routes[44].path",
        "/api/logic matches only /api/logic itself, so /api/logic/x1/x2 goes to api",
    ),
    "one segment only": (
        _edit("path: /api/logic/**", "path: /api/logic/*"),
        "warning",
        "routes[44].path",
        "/api/logic/* matches one segment below /api/logic, so /api/logic/x1/x2 goes to api",
    ),
    "trailing slash": (
        _edit("path: /api/triggers\n", "path: /api/triggers/\n"),
        "warning",
        "routes[26].path",
        "the trailing slash makes /api/triggers (without it) miss this route: it is refused as "
        "a variant of create-trigger (400)",
    ),
    "byte limit without a unit": (
        _edit("json_storage: 100 MB", "json_storage: 100"),
        "warning",
        "tiers.free.limits.json_storage",
        "100 has no unit, so it means 100 bytes",
    ),
    "zero limit": (
        _edit("      triggers: 50\n", "      triggers: 0\n"),
        "warning",
        "tiers.free.limits.triggers",
        "a limit of 0 refuses every request that consumes triggers",
    ),
    "misspelled handler": (
        _edit("answer: list-projects", "answer: list-project"),
        "error",
        "routes[6].answer",
        "answers with 'list-project', which this gateway does not have; did you mean "
        "'list-projects'?",
    ),
    "feature granted, gating nothing": (
        lambda t: _edit(
            "    features: [payments]\n\n  starter:",
            "    features: [payments, extra]\n\n  starter:",
        )(_add_extra(t)),
        "warning",
        "features.extra",
        "feature extra is granted (free) but nothing enforces it: no route needs it",
    ),
    "feature defined, used by nothing": (
        lambda t: _add_extra(t),
        "warning",
        "features.extra",
        "feature extra is defined but no tier grants it and no route needs it",
    ),
    "an upstream-enforced feature no longer marked": (
        _edit(
            "advanced_api: {title: Advanced API access, enforced: upstream}",
            "advanced_api: {title: Advanced API access}",
        ),
        "warning",
        "features.advanced_api",
        "feature advanced_api is granted (starter, basic, pro, premium, enterprise) but nothing",
    ),
    "a route costing more of a rate than a tier's burst": (
        _edit(
            "consume: {logic_engine_calls: 1, api_calls: 1, request_rate: 1}",
            "consume: {logic_engine_calls: 1, api_calls: 1, request_rate: 11}",
        ),
        "error",
        "routes[44].consume.request_rate",
        "route logic costs 11 of request_rate, more than tier anonymous's burst of 10",
    ),
    "meter nothing consumes": (
        lambda t: _edit(
            "consume: {logic_pages: 1, api_calls: 1, request_rate: 1}", "consume: {api_calls: 1}"
        )(_edit("    release: {logic_pages: 1}\n", "")(t)),
        "warning",
        "meters.logic_pages",
        "meter logic_pages is defined and limited, but no route consumes or releases it",
    ),
}


def _lint(text: str) -> list[Finding]:
    return lint(parse_policy(text, "x.yaml"), parse_source(text, "x.yaml"), HANDLERS)


@pytest.mark.parametrize("case", list(CASES))
def test_each_edit_that_changed_enforcement_is_reported(case: str) -> None:
    apply, severity, path, words = CASES[case]
    found = _lint(apply(AGENTSTACK))
    lines = [f.format("x.yaml") for f in found]
    hits = [f for f in found if f.severity == severity and words in f.problem]
    assert hits, lines
    assert hits[0].format("x.yaml").split(": ")[2].startswith(path), lines
    assert hits[0].line is not None and hits[0].fix


def test_the_shipped_policies_lint_clean() -> None:
    for name in ("agentstack", "agentidp"):
        text = (POLICIES / f"{name}.yaml").read_text(encoding="utf-8")
        assert _lint(text) == [], name


def test_findings_name_the_line_of_the_key() -> None:
    text = _edit("json_storage: 100 MB", "json_storage: 100")(AGENTSTACK)
    (finding,) = _lint(text)
    line = next(
        i
        for i, row in enumerate(text.splitlines(), 1)
        if "json_storage: 100" in row and "MB" not in row
    )
    assert finding.line == line


def test_covers_reads_patterns_as_the_matcher_does() -> None:
    assert covers(segments("/api/**"), segments("/api"))
    assert covers(segments("/api/**"), segments("/api/x/**"))
    assert covers(segments("/api/{id}"), segments("/api/x"))
    assert not covers(segments("/api/{id}"), segments("/api/x/y"))
    assert not covers(segments("/api/x"), segments("/api/{id}"))
    assert not covers(segments("/api/*"), segments("/api/"))
    assert not covers(segments("/api/x/**"), segments("/api/**"))
    assert covers(segments("/**"), segments("/"))


def test_unknown_names_say_what_was_meant() -> None:
    text = _edit(
        "consume: {analytics_exports: 1, request_rate: 1}",
        "consume: {analytics_export: 1, request_rate: 1}",
    )(AGENTSTACK)
    with pytest.raises(ConfigError, match="did you mean 'analytics_exports'"):
        parse_policy(text, "x.yaml")
    text = _edit("features: [custom_analytics]", "features: [custom_analytic]")(AGENTSTACK)
    with pytest.raises(ConfigError, match="did you mean 'custom_analytics'"):
        parse_policy(text, "x.yaml")


def _write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "p.yaml"
    path.write_text(text, encoding="utf-8")
    return str(path)


def test_strict_fails_on_warnings_and_errors_fail_always(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shipped = [str(POLICIES / "agentstack.yaml"), str(POLICIES / "agentidp.yaml")]
    assert main(["policy", "check", "--strict", *shipped]) == 0
    warned = _write(tmp_path, _edit("json_storage: 100 MB", "json_storage: 100")(AGENTSTACK))
    assert main(["policy", "check", warned]) == 0
    assert main(["policy", "check", "--strict", warned]) == 1
    err = capsys.readouterr().err
    assert f"{warned}:" in err and "warning: tiers.free.limits.json_storage" in err
    broken = _write(tmp_path, _edit("answer: list-projects", "answer: list-project")(AGENTSTACK))
    assert main(["policy", "check", broken]) == 2
    assert "error: routes[6].answer" in capsys.readouterr().err
