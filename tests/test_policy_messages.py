"""A bad limit in a policy is refused naming what was found instead (found by `make mutate`).

Parsing only: no store is involved, so one process and no Redis is enough.
"""

from __future__ import annotations

import pytest

from gateway.policy.loader import parse_policy
from gateway.policy.source import ConfigError
from tests.conftest import POLICIES

AGENTSTACK = (POLICIES / "agentstack.yaml").read_text(encoding="utf-8")
LIMIT = "api_calls: 10000"


@pytest.mark.parametrize(
    ("value", "found"),
    [
        ("null", "nothing (null)"),
        ("true", "a boolean (true)"),
        ("{a: 1}", "a mapping"),
        ("[1]", "a list"),
        ('""', "an empty string"),
        ('"many"', '"many"'),
    ],
)
def test_a_limit_of_the_wrong_kind_says_what_it_found(value: str, found: str) -> None:
    assert LIMIT in AGENTSTACK
    text = AGENTSTACK.replace(LIMIT, f"api_calls: {value}", 1)
    with pytest.raises(ConfigError) as refused:
        parse_policy(text, "x.yaml")
    assert str(refused.value).endswith(f'or "unlimited", got {found}'), str(refused.value)
