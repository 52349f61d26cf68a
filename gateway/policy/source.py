"""YAML with positions: plain values plus the line of every key path, duplicates refused."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

KeyPath = tuple[str | int, ...]


class ConfigError(Exception):
    """A config or policy file is wrong; the message names file, line and key path."""

    def __init__(self, file: str, line: int | None, path: KeyPath, problem: str) -> None:
        self.file = file
        self.line = line
        self.path = path
        self.problem = problem
        self.dotted = format_path(path)
        where = f"{file}:{line}" if line else file
        dotted = format_path(path)
        super().__init__(f"{where} {dotted}: {problem}" if dotted else f"{where}: {problem}")


def format_path(path: KeyPath) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


@dataclass
class Source:
    """A parsed YAML document and the line (1-based) at which each key path starts."""

    file: str
    data: Any
    lines: dict[KeyPath, int] = field(default_factory=dict)

    def error(self, path: KeyPath, problem: str) -> ConfigError:
        line = None
        probe = path
        while probe:
            if probe in self.lines:
                line = self.lines[probe]
                break
            probe = probe[:-1]
        return ConfigError(self.file, line or self.lines.get((), 1), path, problem)


def load_source(path: str | Path) -> Source:
    """Read and parse a YAML file; syntax errors and duplicate keys become ConfigError."""
    file = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(file, None, (), f"cannot read file: {exc.strerror or exc}") from exc
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(file, line, (), f"not valid UTF-8 (byte {exc.start + 1})") from exc
    return parse_source(text, file)


def parse_source(text: str, file: str = "<string>") -> Source:
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        problem = f"invalid YAML: {exc.problem or exc}"
        # an unclosed bracket or quote is found lines later; say where it was opened
        context = exc.context_mark
        if exc.context and context is not None and context.line + 1 != line:
            problem += f" ({exc.context} on line {context.line + 1})"
        raise ConfigError(file, line, (), problem) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, (), f"invalid YAML: {exc}") from exc
    finally:
        loader.dispose()
    source = Source(file=file, data=None)
    if node is None:
        raise ConfigError(file, 1, (), "the file is empty")
    source.data = _convert(node, (), source, loader)
    return source


def _convert(node: yaml.Node, path: KeyPath, source: Source, loader: yaml.SafeLoader) -> Any:
    source.lines.setdefault(path, node.start_mark.line + 1)
    if isinstance(node, yaml.MappingNode):
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                raise ConfigError(
                    source.file,
                    key_node.start_mark.line + 1,
                    path,
                    "merge keys (<<) are not supported",
                )
            key = _convert(key_node, path, source, loader)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise ConfigError(
                    source.file,
                    key_node.start_mark.line + 1,
                    path,
                    f"keys must be strings, got {key!r}",
                )
            key = str(key)
            child = (*path, key)
            if key in out:
                raise ConfigError(
                    source.file,
                    key_node.start_mark.line + 1,
                    child,
                    f"duplicate key (first defined on line {source.lines[child]})",
                )
            source.lines[child] = key_node.start_mark.line + 1
            out[key] = _convert(value_node, child, source, loader)
        return out
    if isinstance(node, yaml.SequenceNode):
        items = []
        for index, item in enumerate(node.value):
            child = (*path, index)
            source.lines[child] = item.start_mark.line + 1
            items.append(_convert(item, child, source, loader))
        return items
    return loader.construct_object(node, deep=True)


_MISSING: Any = object()


@dataclass
class Node:
    """A value at a key path of a Source, with strict typed accessors that raise ConfigError."""

    source: Source
    path: KeyPath
    value: Any

    def fail(self, problem: str) -> ConfigError:
        return self.source.error(self.path, problem)

    def mapping(
        self, *, allowed: set[str] | None = None, required: frozenset[str] | set[str] = frozenset()
    ) -> Node:
        if not isinstance(self.value, dict):
            raise self.fail(f"expected a mapping, got {describe(self.value)}")
        if allowed is not None:
            for key in self.value:
                if key not in allowed:
                    raise self.child(key).fail(
                        f"unknown key; expected one of: {', '.join(sorted(allowed))}"
                    )
        for key in sorted(required):
            if key not in self.value:
                raise self.fail(f"missing required key {key!r}")
        return self

    def child(self, key: str | int) -> Node:
        if isinstance(self.value, dict):
            return Node(self.source, (*self.path, key), self.value.get(key))
        return Node(self.source, (*self.path, key), self.value[key])

    def get(self, key: str, default: Any = _MISSING) -> Node | None:
        if not isinstance(self.value, dict) or key not in self.value:
            if default is _MISSING:
                return None
            return Node(self.source, (*self.path, key), default)
        return self.child(key)

    def items(self) -> list[tuple[str, Node]]:
        self.mapping()
        return [(key, self.child(key)) for key in self.value]

    def list(self) -> list[Node]:
        if not isinstance(self.value, list):
            raise self.fail(f"expected a list, got {describe(self.value)}")
        return [Node(self.source, (*self.path, i), v) for i, v in enumerate(self.value)]

    def str(self, *, choices: tuple[str, ...] | None = None, max_len: int = 10_000) -> str:
        if not isinstance(self.value, str) or not self.value:
            raise self.fail(f"expected a non-empty string, got {describe(self.value)}")
        if len(self.value) > max_len:
            raise self.fail(f"expected at most {max_len} characters")
        if choices is not None and self.value not in choices:
            raise self.fail(f"expected one of {', '.join(choices)}, got {self.value!r}")
        return self.value

    def bool(self) -> bool:
        if not isinstance(self.value, bool):
            raise self.fail(f"expected true or false, got {describe(self.value)}")
        return self.value

    def int(self, *, minimum: int = 0, maximum: int | None = None) -> int:
        if not isinstance(self.value, int) or isinstance(self.value, bool):
            raise self.fail(f"expected an integer, got {describe(self.value)}")
        if self.value < minimum or (maximum is not None and self.value > maximum):
            upper = f" and at most {maximum}" if maximum is not None else ""
            raise self.fail(f"expected an integer of at least {minimum}{upper}, got {self.value}")
        return self.value

    def number(self, *, minimum: float = 0.0) -> float:
        if not isinstance(self.value, int | float) or isinstance(self.value, bool):
            raise self.fail(f"expected a number, got {describe(self.value)}")
        if self.value < minimum:
            raise self.fail(f"expected a number of at least {minimum}, got {self.value}")
        return float(self.value)


def root(source: Source) -> Node:
    return Node(source, (), source.data)


def describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False) if value else "an empty string"
    return f"{value!r}"
