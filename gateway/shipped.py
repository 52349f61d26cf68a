"""The policies and example config shipped inside the package, found from any directory.

The repository's ``policies/`` and ``config/`` are the single source: ``gateway/policies``
and ``gateway/config`` link to them, and the package data (pyproject.toml) carries them
into every install. So ``gateway serve`` needs no checkout: a relative path naming a shipped
file (``policies/agentidp.yaml``, ``config/gateway.yaml``) that does not exist where the
command runs is read from the installed copy.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

#: the folders a shipped file is named by, as in the repository
FOLDERS = ("policies", "config")

DEFAULT_POLICY = "policies/agentstack.yaml"


def shipped_root() -> Path:
    """The installed package's folder that holds ``policies/`` and ``config/``."""
    return Path(str(resources.files("gateway")))


def locate(path: str) -> str:
    """``path`` itself if it exists (or is absolute); else the installed copy of the shipped
    file it names; else ``path`` unchanged, so the error names what the user typed."""
    given = Path(path)
    if given.is_absolute() or given.exists():
        return path
    parts = given.parts
    if len(parts) == 2 and parts[0] in FOLDERS:
        candidate = shipped_root() / parts[0] / parts[1]
        if candidate.is_file():
            return str(candidate)
    return path
