"""Which methods the gateway answers itself on a path (another is a 405, never forwarded).

Policy model only, no store: one process and no Redis is enough.
"""

from __future__ import annotations

from gateway.policy.loader import load_policy
from tests.conftest import POLICIES


def test_answered_methods_are_those_of_the_answered_routes_on_that_path() -> None:
    policy = load_policy(str(POLICIES / "agentstack.yaml"))
    assert {"GET", "POST"} <= policy.answered_methods("/api/projects")
    # a path the policy only forwards: nothing is answered, every method goes upstream
    assert policy.answered_methods("/api/logic-engine/run") == frozenset()
    assert policy.answered_methods("/") == frozenset()
