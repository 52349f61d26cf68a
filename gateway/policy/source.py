"""YAML with positions: plain values plus the line of every key path, duplicates refused."""

from __future__ import annotations

import json
import math
import re
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


#: bigger than any real policy or config (the shipped policy is 20 KB); it also bounds the
#: time a reload can spend parsing
MAX_BYTES = 1024 * 1024
#: nesting (aliases expanded) deeper than any real file; the composer and _Walk recurse
MAX_DEPTH = 64
#: values that aliases may repeat, counted as they expand: an anchored tier or limits block
#: reused a few times repeats dozens, an "alias bomb" (aliases of aliases) millions
MAX_ALIASED = 10_000

_CORE = "tag:yaml.org,2002:"
#: the only tags a value may carry: plain scalars, lists and mappings
_TAGS = frozenset(_CORE + t for t in ("str", "int", "float", "bool", "null", "seq", "map"))
# integers and floats as YAML 1.2 writes them; YAML 1.1 also reads 050 (octal 40),
# 1:30 (base 60: 90), 0x32, 0b11 and 1_000, which a reviewer easily misreads
_INT_12 = re.compile(r"[-+]?(0|[1-9][0-9]*)")
_FLOAT_12 = re.compile(
    r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?|[-+]?\.(inf|Inf|INF)|\.(nan|NaN|NAN)"
)


def load_source(path: str | Path) -> Source:
    """Read and parse a YAML file; every problem with it becomes a ConfigError."""
    file = str(path)
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_BYTES + 1)
    except OSError as exc:
        raise ConfigError(file, None, (), f"cannot read file: {exc.strerror or exc}") from exc
    if len(raw) > MAX_BYTES:
        raise ConfigError(file, None, (), f"the file is larger than {MAX_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = exc.object[: exc.start].count(b"\n") + 1
        raise ConfigError(file, line, (), f"not valid UTF-8 (byte {exc.start + 1})") from exc
    return parse_source(text, file)


try:
    # libyaml's scanner and parser: about eight times faster than PyYAML's own, which
    # counts on every reload and every `policy check`; composing stays in Python below
    from yaml._yaml import CParser as _Parser
except ImportError:  # PyYAML built without libyaml

    class _Parser(yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser):  # type: ignore[no-redef]
        def __init__(self, text: str) -> None:
            yaml.reader.Reader.__init__(self, text)
            yaml.scanner.Scanner.__init__(self)
            yaml.parser.Parser.__init__(self)


class _Loader(
    yaml.composer.Composer, _Parser, yaml.constructor.SafeConstructor, yaml.resolver.Resolver
):
    """A safe loader that refuses deep nesting while composing, before anything recurses far,
    and resolves no timestamps (YAML 1.2 has none: ``2026-01-01`` stays a string)."""

    yaml_implicit_resolvers = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _CORE + "timestamp"]
        for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
    }

    def __init__(self, text: str) -> None:
        _Parser.__init__(self, text)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        yaml.composer.Composer.__init__(self)
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self._depth >= MAX_DEPTH:
            event = self.peek_event()
            # libyaml's marks are their own class with the same line and column fields
            mark: Any = event.start_mark if event is not None else None
            raise yaml.composer.ComposerError(
                None, None, f"the document nests deeper than {MAX_DEPTH} levels", mark
            )
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def parse_source(text: str, file: str = "<string>") -> Source:
    if len(text) > MAX_BYTES:
        raise ConfigError(file, None, (), f"the file is larger than {MAX_BYTES} bytes")
    loader: _Loader | None = None
    try:
        # PyYAML's reader refuses NUL and other control characters as soon as it is built,
        # naming the character and its place (libyaml's parser would say only "?")
        yaml.reader.Reader(text)
        loader = _Loader(text)
        node = loader.get_single_node()
    except yaml.reader.ReaderError as exc:
        at = text[: exc.position or 0].count("\n") + 1
        char = exc.character
        code = ord(char) if isinstance(char, str) else int(char or 0)
        problem = f"invalid YAML: character U+{code:04X} is not allowed"
        raise ConfigError(file, at, (), problem) from exc
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        # libyaml puts an error at the end of input on the line after a last line that has
        # no newline; name the file's last line instead
        line = min(mark.line + 1, text.count("\n") + 1) if mark else None
        problem = f"invalid YAML: {exc.problem or exc}"
        if exc.problem == "exceeded maximum nesting depth":  # libyaml's own bound, past ours
            problem = f"invalid YAML: the document nests deeper than {MAX_DEPTH} levels"
        # an unclosed bracket or quote is found lines later; say where it was opened
        context = exc.context_mark
        if exc.context and context is not None and context.line + 1 != line:
            problem += f" ({exc.context} on line {context.line + 1})"
        raise ConfigError(file, line, (), problem) from exc
    except yaml.YAMLError as exc:
        raise ConfigError(file, None, (), f"invalid YAML: {exc}") from exc
    finally:
        if loader is not None:
            loader.dispose()
    source = Source(file=file, data=None)
    if node is None:
        raise ConfigError(file, 1, (), "the file is empty")
    source.data = _Walk(source, loader).convert(node, ())
    return source


class _Walk:
    """Turns composed nodes into plain values, noting each key path's line as it goes."""

    def __init__(self, source: Source, loader: _Loader) -> None:
        self.source = source
        self.loader = loader
        self.visited: set[int] = set()
        self.aliased = 0

    def fail(self, node: yaml.Node, path: KeyPath, problem: str) -> ConfigError:
        return ConfigError(self.source.file, node.start_mark.line + 1, path, problem)

    def convert(self, node: yaml.Node, path: KeyPath) -> Any:
        if id(node) in self.visited:
            # the composer hands back the anchored node itself for every alias: a node met
            # twice is a value an alias repeats
            self.aliased += 1
            if self.aliased > MAX_ALIASED:
                raise self.fail(
                    node, path, f"aliases (*name) repeat more than {MAX_ALIASED} values"
                )
        self.visited.add(id(node))
        if len(path) > MAX_DEPTH:
            raise self.fail(node, path, f"nested deeper than {MAX_DEPTH} levels")
        if node.tag not in _TAGS:
            raise self.fail(
                node, path, f"unknown tag {node.tag.replace(_CORE, '!!')!r}; use plain values"
            )
        self.source.lines.setdefault(path, node.start_mark.line + 1)
        if isinstance(node, yaml.MappingNode):
            return self._mapping(node, path)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for index, item in enumerate(node.value):
                child = (*path, index)
                self.source.lines[child] = item.start_mark.line + 1
                items.append(self.convert(item, child))
            return items
        kind = node.tag.replace(_CORE, "")
        try:
            # PyYAML's constructors fail in assorted ways on an explicit !!int a or !!bool x
            value = self.loader.construct_object(node, deep=True)
        except Exception as exc:
            raise self.fail(node, path, f"{node.value!r} is not a valid {kind}") from exc
        if kind in ("int", "float") and not _yaml12_number(node):
            raise self.fail(
                node,
                path,
                f"{node.value} is a YAML 1.1 number form ({_form(node.value)}, read as "
                f"{value}); write it in plain decimal, or quote it for a string",
            )
        return value

    def _mapping(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == _CORE + "merge":
                raise self.fail(key_node, path, "merge keys (<<) are not supported")
            key = self.convert(key_node, path)
            if not isinstance(key, str | int) or isinstance(key, bool):
                raise self.fail(key_node, path, f"keys must be strings, got {key!r}")
            key = str(key)
            child = (*path, key)
            if key in out:
                raise self.fail(
                    key_node,
                    child,
                    f"duplicate key (first defined on line {self.source.lines[child]})",
                )
            self.source.lines[child] = key_node.start_mark.line + 1
            out[key] = self.convert(value_node, child)
        return out


def _yaml12_number(node: yaml.Node) -> bool:
    pattern = _INT_12 if node.tag == _CORE + "int" else _FLOAT_12
    return bool(pattern.fullmatch(str(node.value)))


def _form(text: str) -> str:
    digits = text.lstrip("+-")
    if ":" in digits:
        return "base 60"
    if digits[:2] in ("0x", "0X"):
        return "hexadecimal"
    if digits[:2] in ("0b", "0B"):
        return "binary"
    if "_" in digits:
        return "digit separators"
    return "octal" if digits[:1] == "0" else "not YAML 1.2"


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
        if not math.isfinite(self.value):
            raise self.fail(f"expected a finite number, got {self.value}")
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
