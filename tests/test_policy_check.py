"""`gateway policy check`: every bad policy fixture fails with exit 2, file, line and key path."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.policy.loader import load_policy, parse_policy
from gateway.policy.source import ConfigError
from tests.conftest import POLICIES, ROOT

BAD = Path(__file__).resolve().parent / "fixtures" / "bad_policies"

# The valid policy every fixture departs from by exactly one mistake.
GOOD = """\
name: tiny
default_tier: free
meters:
  calls:
    kind: counter
    period: month
    scope: account
tiers:
  free:
    limits: {calls: 10}
routes:
  - name: api
    path: /api/**
    consume: {calls: 1}
"""

# fixture -> (line, key path, words of the problem); a blank key path is a file-level error
EXPECTED: dict[str, tuple[int, str, str]] = {
    "unknown_key_top": (15, "colour", "unknown key; expected one of:"),
    "unknown_key_tier": (11, "tiers.free.price", "unknown key; expected one of:"),
    "unknown_key_route": (15, "routes[0].cost", "unknown key; expected one of:"),
    "unknown_key_meter": (8, "meters.calls.window", "unknown key; expected one of:"),
    "wrong_type": (15, "routes[0].auth", 'expected true or false, got "yes"'),
    "negative_limit": (
        10,
        "tiers.free.limits.calls",
        'expected a non-negative integer or "unlimited", got -5',
    ),
    "lots_limit": (
        10,
        "tiers.free.limits.calls",
        'expected a non-negative integer or "unlimited", got "lots"',
    ),
    "lease_zero": (11, "tiers.free.leases.calls", "expected an integer of at least 1, got 0"),
    "lease_unknown_meter": (11, "tiers.free.leases.cals", "unknown meter; meters are: calls"),
    "lease_unlimited": (11, "tiers.free.leases.calls", "an unlimited meter needs no lease"),
    "unknown_meter_limits": (10, "tiers.free.limits.cals", "unknown meter; meters are: calls"),
    "unknown_meter_consume": (14, "routes[0].consume.cals", "unknown meter; meters are: calls"),
    "unknown_meter_release": (15, "routes[0].release.agents", "unknown meter; meters are: calls"),
    "release_counter": (15, "routes[0].release.calls", "only gauges (live counts) can be released"),
    "duplicate_key": (15, "name", "duplicate key (first defined on line 1)"),
    "duplicate_route_name": (15, "routes[1].name", "route name 'api' is used twice"),
    "invalid_yaml": (11, "", "invalid YAML: did not find expected ',' or '}'"),
    "missing_required_key": (4, "meters.calls", "missing required key 'kind'"),
    "missing_limit": (13, "tiers.free.limits", "missing a limit for meter 'agents'"),
    "unknown_default_tier": (2, "default_tier", "unknown tier 'gold'; tiers are: free"),
    "unknown_deny_tier": (15, "routes[0].deny_tiers[1]", "unknown tier; tiers are: free"),
    "unknown_feature": (11, "tiers.free.features[0]", "unknown feature; features are: (none)"),
    "unknown_template_variable": (
        20,
        "responses.quota_exceeded.body.message",
        "unknown template variable ${nope}",
    ),
    "bad_path_double_star": (13, "routes[0].path", "'**' may only be the last segment"),
    "bad_path_no_leading_slash": (13, "routes[0].path", "a path pattern starts with '/'"),
    "auth_false_with_consume": (15, "routes[0].auth", "a route without auth cannot meter"),
    "empty": (1, "", "the file is empty"),
    # rate meters (kind: rate)
    "rate_not_a_rate": (
        14,
        "tiers.free.limits.rps",
        'expected a rate such as "20/s", "600/min" or "10000/h", got "fast"',
    ),
    "rate_unknown_key": (14, "tiers.free.limits.rps.per", "unknown key; expected one of: burst"),
    "rate_with_period": (11, "meters.rps.period", "a rate meter's period is in its rate"),
    "rate_burst_without_rate": (11, "meters.rps.burst", "burst goes with a rate"),
    "rate_zero": (11, "meters.rps.rate", "a rate admits at least 1 request per period"),
    "rate_reported": (11, "meters.rps.reported", "a rate meter has no reported"),
    "rate_scope_on_counter": (7, "meters.calls.scope", "scope client is for rate meters"),
    "rate_on_counter": (8, "meters.calls.rate", "only a rate meter (kind: rate) has a rate"),
    "rate_missing_limit": (
        13,
        "tiers.free.limits",
        "missing a limit for meter 'rps' (a rate such as 10/s",
    ),
    "rate_quota_template": (
        20,
        "responses.quota_exceeded:rps",
        "rps is a rate meter: its refusal is the gateway's RATE_LIMITED answer",
    ),
    "tab_garbage": (2, "", "invalid YAML: found a tab character that violates indentation"),
    "not_utf8": (2, "", "not valid UTF-8"),
    "billing_unknown_key": (
        19,
        "billing.overage.meters.calls.cap",
        "unknown key; expected one of: per, price, switch",
    ),
    # money is never a float: a bare number is refused, and so is a fraction of a cent
    "billing_float_price": (
        19,
        "billing.overage.meters.calls.price",
        'expected an amount in dollars with at most two decimals such as "$0.50", got 0.5',
    ),
    "billing_fraction_of_a_cent": (
        19,
        "billing.overage.meters.calls.price",
        'such as "$0.50", got "$0.005"',
    ),
    "billing_unknown_switch": (
        19,
        "billing.overage.meters.calls.switch",
        "unknown switch; switches are: calls",
    ),
    "billing_package_unknown_meter": (
        18,
        "billing.packages.calls.meter",
        "unknown meter; meters are: calls",
    ),
    "billing_missing_retention": (
        17,
        "billing.analytics.retention_days",
        "missing a retention for tier 'free' (days or unlimited)",
    ),
    "body_meter_not_bytes": (
        15,
        "routes[0].body_meter",
        "body_meter names a gauge whose unit is bytes",
    ),
    # hostile YAML: refused with a place, never a traceback or a 40-second expansion
    "unknown_tag": (13, "routes[0].path", "unknown tag '!foo'; use plain values"),
    "python_tag": (2, "default_tier", "unknown tag '!!python/name:os.system'"),
    "nul_byte": (12, "", "invalid YAML: character U+0000 is not allowed"),
    "deep_nesting": (14, "", "invalid YAML: the document nests deeper than 64 levels"),
    "alias_bomb": (16, "x-lol.e[0][2][0][6][7]", "aliases (*name) repeat more than 10000 values"),
    # YAML 1.1 number forms a reviewer misreads: refused, never loaded as 8, 90 or 50
    "octal_limit": (
        10,
        "tiers.free.limits.calls",
        "010 is a YAML 1.1 number form (octal, read as 8)",
    ),
    "sexagesimal_limit": (
        10,
        "tiers.free.limits.calls",
        "1:30 is a YAML 1.1 number form (base 60, read as 90)",
    ),
    "hex_limit": (
        10,
        "tiers.free.limits.calls",
        "0x32 is a YAML 1.1 number form (hexadecimal, read as 50)",
    ),
}


def gateway_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gateway", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def relative(path: Path) -> str:
    return str(path.relative_to(ROOT))


@pytest.fixture(scope="module")
def checked() -> dict[str, subprocess.CompletedProcess[str]]:
    """Every fixture checked by one `gateway policy check` process (which reports each file
    on its own line), split back into one result per fixture: one interpreter start instead
    of dozens keeps the module quick on a loaded machine."""
    files = [relative(BAD / f"{name}.yaml") for name in EXPECTED]
    result = gateway_cli("policy", "check", *files)
    lines = result.stderr.splitlines()
    out = {}
    for name, file in zip(EXPECTED, files, strict=True):
        mine = [line for line in lines if line.startswith(f"error: {file}:")]
        stderr = "\n".join(mine) + "\n" if "Traceback" not in result.stderr else result.stderr
        out[name] = subprocess.CompletedProcess(
            result.args, result.returncode, result.stdout, stderr
        )
    return out


def test_every_fixture_is_listed() -> None:
    assert {p.stem for p in BAD.glob("*.yaml")} == set(EXPECTED)


def test_the_fixtures_depart_from_a_valid_policy(tmp_path: Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(GOOD)
    policy = load_policy(good)
    assert policy.tiers["free"].limits == {"calls": 10}


@pytest.mark.parametrize("name", list(EXPECTED))
def test_bad_policy_fails_check_with_file_line_and_key_path(
    name: str, checked: dict[str, subprocess.CompletedProcess[str]]
) -> None:
    line, key_path, problem = EXPECTED[name]
    result = checked[name]
    assert result.returncode == 2, result
    assert result.stdout == ""
    file = relative(BAD / f"{name}.yaml")
    where = f"{file}:{line} {key_path}:" if key_path else f"{file}:{line}:"
    message = result.stderr.strip()
    assert message.startswith(f"error: {where} "), message
    assert problem in message.removeprefix(f"error: {where} ")
    assert "Traceback" not in result.stderr


def test_check_of_several_files_reports_each_and_fails_on_one_bad() -> None:
    bad = relative(BAD / "lots_limit.yaml")
    good = [relative(POLICIES / "agentstack.yaml"), relative(POLICIES / "agentidp.yaml")]
    result = gateway_cli("policy", "check", good[0], bad, good[1])
    assert result.returncode == 2
    routes = [
        len(load_policy(POLICIES / f"{name}.yaml").routes) for name in ("agentstack", "agentidp")
    ]
    assert result.stdout.splitlines() == [
        f"ok: {good[0]}: policy 'agentstack', 7 tiers, 14 meters, {routes[0]} routes",
        f"ok: {good[1]}: policy 'agentidp', 3 tiers, 4 meters, {routes[1]} routes",
    ]
    assert result.stderr.splitlines() == [
        f"error: {bad}:10 tiers.free.limits.calls: "
        'expected a non-negative integer or "unlimited", got "lots"'
    ]


def test_check_of_good_files_exits_zero() -> None:
    result = gateway_cli("policy", "check", relative(POLICIES / "agentidp.yaml"))
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ok: policies/agentidp.yaml: policy 'agentidp'")


def test_a_missing_file_is_a_clear_error() -> None:
    result = gateway_cli("policy", "check", "policies/nope.yaml")
    assert result.returncode == 2
    assert result.stderr.startswith("error: policies/nope.yaml: cannot read file:")


def _with_limit(limit: str) -> str:
    return GOOD.replace("limits: {calls: 10}", f"limits: {{calls: {limit}}}")


@settings(deadline=None)
@given(st.integers(min_value=0, max_value=10**15))
def test_any_non_negative_integer_limit_loads_as_itself(limit: int) -> None:
    policy = parse_policy(_with_limit(str(limit)), "p.yaml")
    assert policy.tiers["free"].limit("calls") == limit


@settings(deadline=None)
@given(st.integers(max_value=-1) | st.text(alphabet="abcxyz!? ", min_size=1, max_size=12))
def test_any_negative_or_wordy_limit_is_refused_at_its_line(limit: int | str) -> None:
    text = str(limit) if isinstance(limit, int) else f'"{limit}"'
    with pytest.raises(ConfigError) as caught:
        parse_policy(_with_limit(text), "p.yaml")
    assert caught.value.line == 10
    assert caught.value.path == ("tiers", "free", "limits", "calls")


SIZED = GOOD.replace("    scope: account\n", "    scope: account\n    unit: bytes\n", 1).replace(
    "kind: counter\n    period: month", "kind: gauge"
)


@settings(deadline=None)
@given(
    st.integers(min_value=0, max_value=10**6),
    st.integers(min_value=0, max_value=3),
    st.sampled_from([("KB", 10**3), ("MB", 10**6), ("GB", 10**9), ("TB", 10**12)]),
)
def test_decimal_sizes_load_as_exact_bytes(digits: int, places: int, unit: tuple[str, int]) -> None:
    number = f"{digits / 10**places:.{places}f}" if places else str(digits)
    text = SIZED.replace("limits: {calls: 10}", f'limits: {{calls: "{number} {unit[0]}"}}')
    policy = parse_policy(text, "p.yaml")
    assert policy.tiers["free"].limit("calls") == digits * unit[1] // 10**places


def test_show_of_a_bad_policy_exits_2_naming_the_place() -> None:
    bad = relative(BAD / "unknown_key_tier.yaml")
    result = gateway_cli("policy", "show", bad)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.startswith(f"error: {bad}:11 tiers.free.price: unknown key")
