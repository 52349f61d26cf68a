"""`gateway policy check` in this process: every bad fixture refused at its line and key path.

test_policy_check runs the same fixtures through a `gateway policy check` subprocess, which is
what a user runs but which mutation testing cannot trace (the child imports the code afresh).
Here the loader and the check command run in the test's own interpreter, so `make mutate
MODULE=gateway/policy` sees which mutant each fixture kills. No store is involved.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.cli import main
from gateway.policy.loader import load_policy
from gateway.policy.source import ConfigError
from tests.conftest import POLICIES, ROOT
from tests.test_policy_check import BAD, EXPECTED


@pytest.mark.parametrize("name", list(EXPECTED))
def test_each_bad_fixture_is_refused_at_its_line_and_key_path(name: str) -> None:
    line, key_path, problem = EXPECTED[name]
    with pytest.raises(ConfigError) as caught:
        load_policy(BAD / f"{name}.yaml")
    error = caught.value
    assert (error.line, error.dotted) == (line, key_path), str(error)
    assert problem in error.problem, error.problem
    where = f"{BAD / f'{name}.yaml'}:{line}"
    assert str(error) == (
        f"{where} {key_path}: {error.problem}" if key_path else f"{where}: {error.problem}"
    )


def test_check_prints_one_line_per_file_and_exits_2_on_one_bad(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    bad = str((BAD / "lots_limit.yaml").relative_to(ROOT))
    good = str((POLICIES / "agentidp.yaml").relative_to(ROOT))
    assert main(["policy", "check", good, bad]) == 2
    out, err = capsys.readouterr()
    routes = len(load_policy(POLICIES / "agentidp.yaml").routes)
    assert out.splitlines() == [
        f"ok: {good}: policy 'agentidp', 3 tiers, 4 meters, {routes} routes"
    ]
    assert err.splitlines() == [
        f"error: {bad}:10 tiers.free.limits.calls: "
        'expected a non-negative integer or "unlimited", got "lots"'
    ]


def test_check_of_shipped_policies_exits_zero_even_strict(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(ROOT)
    files = [str(p.relative_to(ROOT)) for p in sorted(POLICIES.glob("*.yaml"))]
    assert main(["policy", "check", "--strict", *files]) == 0
    out, err = capsys.readouterr()
    assert err == ""
    assert [line.split(":")[0] for line in out.splitlines()] == ["ok"] * len(files)


def test_check_strict_exits_1_on_a_warning_only(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a meter every tier limits but no route consumes loads, and check warns about it
    policy = tmp_path / "unused.yaml"
    policy.write_text(
        "name: tiny\ndefault_tier: free\nmeters:\n"
        "  calls: {kind: counter, period: month, scope: account}\n"
        "  spare: {kind: counter, period: month, scope: account}\n"
        "tiers:\n  free:\n    limits: {calls: 10, spare: 5}\n"
        "routes:\n  - name: api\n    path: /api/**\n    consume: {calls: 1}\n"
    )
    assert main(["policy", "check", str(policy)]) == 0
    out, err = capsys.readouterr()
    assert "meter spare is defined and limited, but no route consumes or releases it" in err
    counts = "1 tiers, 2 meters, 1 routes; 0 error(s), 1 warning(s)"
    assert out == f"warnings: {policy}: policy 'tiny', {counts}\n"
    assert main(["policy", "check", "--strict", str(policy)]) == 1
