"""The active policy, swapped whole; a request reads it once and keeps that snapshot."""

from __future__ import annotations

from gateway.policy.model import Policy


class PolicyHolder:
    def __init__(self, policy: Policy, loaded_at: float = 0.0) -> None:
        self.current = policy
        self.loaded_at = loaded_at  # epoch seconds the current policy was installed

    def swap(self, policy: Policy, loaded_at: float = 0.0) -> Policy:
        """Install ``policy``; returns the one it replaced."""
        # one assignment: a reader sees the old policy or the new one, never a mix
        previous, self.current = self.current, policy
        self.loaded_at = loaded_at
        return previous
