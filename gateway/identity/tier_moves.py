"""What a policy reload does to accounts: who would be served on another tier.

An account whose tier the new policy lacks is served on the new default tier (Policy.tier),
while its record still names the old one; a changed ``default_tier`` moves every caller the
gateway has not seen yet. Either is refused on reload unless the operator says so.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from gateway.identity.registry import Registry
from gateway.policy.model import Policy

#: a store record per policy digest an operator allowed to move accounts, so that every
#: worker reloading the same file on the admin API's notice takes it too
APPROVAL = "policy_tier_changes_allowed"
#: a store record per policy digest whose moves were counted, so N workers count them once
MOVED = "policy_tier_moves"


@dataclass(frozen=True, slots=True)
class TierMoves:
    moved: dict[tuple[str, str], int] = field(default_factory=dict)  # (from, to) -> accounts
    default: tuple[str, str] | None = None  # default_tier (old, new) when it changes

    def __bool__(self) -> bool:
        return bool(self.moved) or self.default is not None

    @property
    def accounts(self) -> int:
        return sum(self.moved.values())

    def describe(self) -> str:
        parts = [
            f"{count} account(s) on tier {old!r}, which the new policy lacks, would be served "
            f"as {new!r}"
            for (old, new), count in self.moved.items()
        ]
        if self.default is not None:
            parts.append(
                f"default_tier changes from {self.default[0]!r} to {self.default[1]!r} (the tier "
                "of every caller without an account yet)"
            )
        return "; ".join(parts)

    def details(self) -> dict[str, object]:
        return {
            "affected_accounts": self.accounts,
            "moves": [
                {"from": old, "to": new, "accounts": count}
                for (old, new), count in self.moved.items()
            ],
            "default_tier": (
                {"from": self.default[0], "to": self.default[1]} if self.default else None
            ),
        }


class TierChangesRefused(ValueError):
    """A reload would move accounts to another tier and nobody allowed it."""

    def __init__(self, moves: TierMoves) -> None:
        self.moves = moves
        super().__init__(
            f"refused: {moves.describe()}; reload with allow_tier_changes "
            "(POST /admin/policy/reload?allow_tier_changes=true, or "
            "policy_allow_tier_changes: true in the gateway config) if that is meant"
        )


async def tier_moves(registry: Registry, old: Policy, new: Policy) -> TierMoves:
    """Who ``new`` would serve on another tier than ``old`` does; the store is asked only
    about tiers ``new`` drops."""
    moved: dict[tuple[str, str], int] = {}
    for name in old.tiers:
        if name in new.tiers:
            continue
        count = len(await registry.accounts_on_tier(name))
        if count:
            moved[(name, new.default_tier)] = count
    default = None
    if old.default_tier != new.default_tier:
        default = (old.default_tier, new.default_tier)
    return TierMoves(moved, default)
