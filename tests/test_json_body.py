"""The bounded JSON reader: any bytes give a value or a 400, never another exception."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.api.body import MAX_DEPTH, MAX_INT_DIGITS, parse_json
from gateway.boundary import dumps
from gateway.errors import BadRequest

# JSON values within the reader's bounds
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**18), max_value=10**18)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=30,
)

# pieces of JSON syntax, so that generated bodies reach the parser's deeper paths
PIECES = st.sampled_from(
    [
        "[",
        "]",
        "{",
        "}",
        ",",
        ":",
        '"a"',
        '"\\u00e9"',
        '"\\ud800"',
        '"[{"',
        "1",
        "-0",
        "1e999",
        "9" * 30,
        "1.5",
        "NaN",
        "Infinity",
        "-Infinity",
        "true",
        "null",
        " ",
        "\\",
        '"',
        "\x00",
    ]
)


def parsed_or_refused(raw: bytes) -> Any:
    try:
        value = parse_json(raw)
    except BadRequest as exc:
        # the refusal renders as strict JSON, whatever the body held
        json.loads(dumps(exc.body()), parse_constant=_no_constants)
        return None
    # whatever was accepted can be echoed in a strict JSON body
    json.loads(dumps({"received": value}), parse_constant=_no_constants)
    return value


def _no_constants(name: str) -> Any:
    raise AssertionError(f"{name} in a rendered body")


@settings(max_examples=300, deadline=1000)
@given(st.binary(max_size=200))
def test_any_bytes_parse_or_are_a_400(raw: bytes) -> None:
    parsed_or_refused(raw)


@settings(max_examples=300, deadline=1000)
@given(st.lists(PIECES, max_size=80).map("".join))
def test_json_like_text_parses_or_is_a_400(text: str) -> None:
    parsed_or_refused(text.encode("utf-8", "surrogatepass"))


@settings(max_examples=200, deadline=1000)
@given(VALUES)
def test_values_within_the_bounds_round_trip(value: Any) -> None:
    assert parse_json(json.dumps(value).encode()) == value


@settings(max_examples=50, deadline=2000)
@given(st.integers(min_value=1, max_value=100_000), st.sampled_from(["[", '{"a":']))
def test_any_depth_is_read_or_refused_by_its_bound(depth: int, opener: str) -> None:
    closer = "]" if opener == "[" else "}"
    raw = (opener * depth + "1" + closer * depth).encode()
    if depth <= MAX_DEPTH:
        assert parse_json(raw) is not None
    else:
        with pytest.raises(BadRequest, match="levels deep"):
            parse_json(raw)


@given(st.integers(min_value=1, max_value=6000))
def test_integers_are_bounded_by_their_digits(digits: int) -> None:
    raw = ("7" * digits).encode()
    if digits <= MAX_INT_DIGITS:
        assert parse_json(raw) == int("7" * digits)
    else:
        with pytest.raises(BadRequest, match="digits"):
            parse_json(raw)


@pytest.mark.parametrize("raw", [b"NaN", b"[Infinity]", b'{"a": -Infinity}', b"1e400", b"-1e400"])
def test_non_finite_numbers_are_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest):
        parse_json(raw)


def test_brackets_inside_strings_are_not_nesting() -> None:
    text = json.dumps({"a": "[" * 100 + "{" * 100, "b": ['\\"[[[', "]]]"]})
    assert parse_json(text.encode())["a"] == "[" * 100 + "{" * 100


def test_floats_keep_their_value() -> None:
    assert math.isclose(parse_json(b"[1.5e10]")[0], 1.5e10)
