"""Files a maintainer expects, and ignore lists that do not fight the tree."""

from __future__ import annotations

import re
import shutil
import subprocess
import tomllib

import pytest

from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))


def test_the_license_is_the_one_pyproject_names() -> None:
    assert PYPROJECT["project"]["license"] == {"text": "Apache-2.0"}
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert "Apache License" in text and "Version 2.0, January 2004" in text
    # the full text, not a pointer to it: all nine sections of the terms
    assert "9. Accepting Warranty or Additional Liability." in text


def test_security_and_contributing_say_what_they_must() -> None:
    security = (ROOT / "SECURITY.md").read_text(encoding="utf-8")
    assert "## Reporting a vulnerability" in security
    assert "## In scope" in security and "## Out of scope" in security
    contributing = (ROOT / "CONTRIBUTING.md").read_text(encoding="utf-8")
    for test_file in re.findall(r"`(tests/test_[a-z_]+\.py)`", contributing):
        assert (ROOT / test_file).is_file(), test_file


def test_the_changelog_has_the_release_and_unreleased() -> None:
    headings = re.findall(r"^## (.+)$", (ROOT / "CHANGELOG.md").read_text(encoding="utf-8"), re.M)
    version = PYPROJECT["project"]["version"]
    assert headings[0] == "[Unreleased]"
    assert any(h.startswith(f"[{version}] - ") for h in headings), headings


def test_no_tracked_file_is_ignored() -> None:
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--ignored", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert listed.stdout == ""
