"""The active policy, swapped whole; a request reads it once and keeps that snapshot."""

from __future__ import annotations

from gateway.policy.model import Policy


class PolicyHolder:
    def __init__(self, policy: Policy) -> None:
        self.current = policy

    def swap(self, policy: Policy) -> Policy:
        """Install ``policy``; returns the one it replaced."""
        previous, self.current = self.current, policy
        return previous
