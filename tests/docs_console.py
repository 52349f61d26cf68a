"""The docs' console examples, parsed so a test can run them against a live gateway.

The docs are the source. A fenced ``console`` block holds commands (``$ `` lines, with ``\\``
continuations) each followed by the output it shows. Rules a writer follows:

- ``<name>`` in shown output stands for a value that differs between runs (a key, an id,
  seconds to a reset, a timestamp, a request id). An UPPERCASE name (``<KEY>``, ``<TOKEN>``)
  also sets that shell variable for the commands after it; shown again, it must be the
  same value.
- Output from ``curl -i`` shows the status line, the headers and the body. Every header but
  ``Date``, ``Server`` and ``Content-Length`` is shown, and every field of a JSON body; a
  command whose trailing comment says ``abridged`` may leave headers and fields out.
- A command that starts ``gateway serve`` is started in the background on free ports (the
  docs' 127.0.0.1:8080, :9090 and :8000 stand for them) and its output is what it prints
  once ready.
- ``<!-- docs-test: setup`` ... ``-->`` just above a block holds commands run before it and
  not shown (state the prose describes, such as an account at its limit);
  ``<!-- docs-test: skip REASON -->`` leaves a block out, saying why.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

PLACEHOLDER = re.compile(r"<([A-Za-z][A-Za-z0-9_-]*)>")


@dataclass
class Command:
    where: str  # file:line, for failure messages
    shell: str
    output: list[str] = field(default_factory=list)

    @property
    def abridged(self) -> bool:
        return "abridged" in self.shell.rpartition("#")[2] if "#" in self.shell else False


@dataclass
class Block:
    where: str
    commands: list[Command]
    setup: list[str] = field(default_factory=list)
    skip: str | None = None


def parse(path: Path, root: Path) -> list[Block]:
    """Every console block of a Markdown file, with its setup and skip markers."""
    name = str(path.relative_to(root))
    lines = path.read_text(encoding="utf-8").splitlines()
    blocks: list[Block] = []
    setup: list[str] = []
    skip: str | None = None
    index = 0
    while index < len(lines):
        line = lines[index]
        if line.startswith("<!-- docs-test: skip "):
            skip = line.removeprefix("<!-- docs-test: skip ").removesuffix("-->").strip()
        elif line.strip() == "<!-- docs-test: setup":
            hidden = []
            index += 1
            while lines[index].strip() != "-->":
                hidden.append(lines[index])
                index += 1
            setup += _commands(hidden)
        elif line.strip() == "```console":
            start = index + 1
            index += 1
            body = []
            while lines[index].strip() != "```":
                body.append(lines[index])
                index += 1
            commands = _split(body, name, start + 1)
            blocks.append(Block(f"{name}:{start}", commands, setup, skip))
            setup, skip = [], None
        index += 1
    return blocks


def _commands(lines: list[str]) -> list[str]:
    """Shell commands from ``$ `` lines and their continuations."""
    out: list[str] = []
    for line in lines:
        if line.startswith("$ "):
            out.append(line[2:])
        elif out and out[-1].endswith("\\"):
            out[-1] += "\n" + line
    return out


def _split(body: list[str], name: str, first_line: int) -> list[Command]:
    commands: list[Command] = []
    continued = False
    for offset, line in enumerate(body):
        if line.startswith("$ ") and not continued:
            commands.append(Command(f"{name}:{first_line + offset}", line[2:]))
            continued = line.endswith("\\")
        elif continued:
            commands[-1].shell += "\n" + line
            continued = line.endswith("\\")
        elif commands:
            commands[-1].output.append(line)
    return commands
