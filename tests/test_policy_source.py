"""The YAML reader under hostile input: any text gives a value or a ConfigError, quickly."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gateway.policy.source import MAX_ALIASED, MAX_BYTES, ConfigError, load_source, parse_source

# pieces of YAML syntax, so that generated documents reach the composer and the constructor
# (anchors, aliases, tags, flow and block collections, number forms), not only the scanner
TOKENS = st.sampled_from(
    [
        "a",
        "key",
        ": ",
        ":",
        "- ",
        "\n",
        "  ",
        "[",
        "]",
        "{",
        "}",
        ", ",
        "&x ",
        "*x",
        "&y ",
        "*y",
        "!foo ",
        "!!python/name:os.system ",
        "!!binary ",
        "!!int ",
        "!!set ",
        "<<: ",
        "? ",
        "'",
        '"',
        "#",
        "010",
        "0x1F",
        "1:30",
        "1_000",
        ".nan",
        "-.inf",
        "1e400",
        "2026-01-01",
        "~",
        "\x00",
        "\t",
        "\ufeff",
        "%YAML 1.1\n",
        "---\n",
        "...\n",
    ]
)


def parses_or_refuses(text: str) -> None:
    try:
        parse_source(text, "p.yaml")
    except ConfigError as exc:
        assert str(exc).startswith("p.yaml")


@settings(max_examples=300, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(TOKENS, max_size=60).map("".join))
def test_yaml_built_from_syntax_pieces_loads_or_is_a_config_error(text: str) -> None:
    parses_or_refuses(text)


@settings(max_examples=200, deadline=2000)
@given(st.text(max_size=300))
def test_any_text_loads_or_is_a_config_error(text: str) -> None:
    parses_or_refuses(text)


# one line of brackets costs PyYAML's scanner about a second however long it is (it looks
# 1024 characters ahead for a key); the composer stops at MAX_DEPTH
@settings(max_examples=25, deadline=5000)
@given(st.integers(min_value=1, max_value=3000), st.sampled_from("[{"))
def test_any_nesting_depth_loads_or_is_refused(depth: int, opener: str) -> None:
    closer = {"[": "]", "{": "}"}[opener]
    inner = "1" if opener == "[" else "a: 1"
    text = "v: " + (opener if opener == "[" else "{k: ") * depth + inner
    text += closer * depth
    parses_or_refuses(text)


@settings(max_examples=50, deadline=2000)
@given(st.integers(min_value=2, max_value=12), st.integers(min_value=2, max_value=12))
def test_alias_expansion_is_bounded_however_it_is_stacked(width: int, levels: int) -> None:
    lines = ["l0: &l0 [" + ", ".join(["x"] * width) + "]"]
    for level in range(1, levels):
        lines.append(f"l{level}: &l{level} [" + ", ".join([f"*l{level - 1}"] * width) + "]")
    text = "\n".join(lines) + "\n"
    # level k is a list of ``width`` aliases of level k-1: walked in full it holds
    # 1 + width * walked(k-1) nodes, of which only its own list node is new
    walked = [1 + width]
    for _ in range(1, levels):
        walked.append(1 + width * walked[-1])
    repeated = sum(walked) - (1 + width) - (levels - 1)
    if repeated <= MAX_ALIASED:
        parse_source(text)
    else:
        with pytest.raises(ConfigError, match=f"repeat more than {MAX_ALIASED} values"):
            parse_source(text)


def test_a_few_aliases_still_work() -> None:
    source = parse_source("base: &b {calls: 10}\nfree: *b\npro: *b\n")
    assert source.data == {"base": {"calls": 10}, "free": {"calls": 10}, "pro": {"calls": 10}}


def test_a_recursive_alias_is_refused() -> None:
    with pytest.raises(ConfigError, match=r"aliases|nested deeper"):
        parse_source("a: &a [1, *a]\n")


@given(st.integers(min_value=-(10**30), max_value=10**30))
def test_a_decimal_integer_loads_as_itself(value: int) -> None:
    assert parse_source(f"n: {value}\n").data == {"n": value}


@given(
    st.integers(min_value=1, max_value=10**9),
    st.sampled_from(["0{:o}", "0x{:x}", "0b{:b}", "{:,}"]),
)
def test_yaml_1_1_integer_forms_are_refused(value: int, form: str) -> None:
    text = form.format(value).replace(",", "_")
    if text.isdigit() and not text.startswith("0"):
        return  # the _ form of a number below 1000 has no separator
    with pytest.raises(ConfigError, match=r"is a YAML 1\.1 number form") as caught:
        parse_source(f"n: {text}\n", "p.yaml")
    assert str(caught.value).startswith("p.yaml:1 n: ")


def test_dates_stay_strings_and_quoted_numbers_stay_strings() -> None:
    data = parse_source("d: 2026-01-01\nq: '010'\nf: 0.5\nz: 0\n").data
    assert data == {"d": "2026-01-01", "q": "010", "f": 0.5, "z": 0}


def test_a_file_over_the_size_cap_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * MAX_BYTES + "\n")
    with pytest.raises(ConfigError, match=f"larger than {MAX_BYTES} bytes"):
        load_source(big)
