"""'Did you mean' for a name the policy does not define: the nearest defined name."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


def suggest(name: str, choices: Iterable[str]) -> str | None:
    """The closest of ``choices`` to ``name`` (a case slip counts as closest), or None."""
    names = [choice for choice in choices if choice != name]
    folded = {choice.lower(): choice for choice in names}
    if name.lower() in folded:
        return folded[name.lower()]
    found = difflib.get_close_matches(name.lower(), list(folded), n=1, cutoff=0.6)
    return folded[found[0]] if found else None


def did_you_mean(name: object, choices: Iterable[str]) -> str:
    """``"; did you mean 'calls'?"`` to append to an error, or "" when nothing is near."""
    if not isinstance(name, str):
        return ""
    near = suggest(name, choices)
    return f"; did you mean {near!r}?" if near else ""
