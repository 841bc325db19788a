"""Safe, linear-time YAML loading that keeps the line of every value.

Used for the gateway config and for drivers' data files (register maps), so a problem in
either is reported as `file:line: path: message`. The document is built straight from the
parser's event stream (libyaml when available) with an explicit stack, which gives:

* one pass, linear in the text (no per-scalar loader or node-graph walk);
* no recursion: nesting deeper than `MAX_DEPTH` is an error with its line;
* aliases are shared, never copied, and the nodes they would add if expanded are counted:
  past `MAX_ALIAS_NODES` the file is refused (billion laughs, merge-key bombs);
* duplicate keys are an error naming both lines;
* `<<` merge keys (a mapping or a list of mappings; explicit keys win, earlier sources win);
* optional `${NAME}` / `${NAME:-default}` interpolation of string scalars: the result stays
  a string, so the field's own type converts it and `123456`, `on` or `null` in a secret
  are never re-typed by YAML.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError
from yaml import events as ev
from yaml.constructor import SafeConstructor
from yaml.nodes import ScalarNode
from yaml.resolver import Resolver

from gateway.errors import ConfigError, ConfigProblem

#: Deepest nesting of mappings and sequences accepted (real configs use fewer than 10).
MAX_DEPTH = 100
#: Most nodes that aliases (`*x`, `<<: *x`) may add to a document if it were expanded.
MAX_ALIAS_NODES = 500_000

Loc = tuple[Any, ...]
Lines = dict[Loc, int]
M = TypeVar("M", bound=BaseModel)

_ENV = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::?-([^}]*))?\}")
_STR = "tag:yaml.org,2002:str"
_MERGE = "tag:yaml.org,2002:merge"
_MAP_TAGS = (None, "!", "tag:yaml.org,2002:map")
_SEQ_TAGS = (None, "!", "tag:yaml.org,2002:seq")
_Loader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def interpolate(text: str) -> str:
    """Replace `${NAME}` / `${NAME:-default}` / `${NAME-default}`; ValueError names a missing variable."""

    def sub(m: re.Match[str]) -> str:
        name, default = m.group(1), m.group(2)
        value = os.environ.get(name)
        if value is None or (value == "" and default is not None and ":-" in m.group(0)):
            if default is None:
                raise ValueError(f"environment variable {name} is not set and has no default")
            return default
        return value

    return _ENV.sub(sub, text)


def format_path(loc: Loc) -> str:
    """`devices[0].port` from `("devices", 0, "port")`."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out


def line_of(lines: Lines, path: Loc) -> int | None:
    """The line of `path`, or of its nearest ancestor that has one."""
    for cut in range(len(path), -1, -1):
        if path[:cut] in lines:
            return lines[path[:cut]]
    return None


@dataclass
class _Frame:
    path: Loc
    line: int
    anchor: str | None
    items: list[Any] | None = None  # a sequence
    mapping: dict[Any, Any] | None = None  # a mapping (explicit keys)
    key_lines: dict[Any, int] = field(default_factory=dict)
    key: Any = None
    key_line: int = 0
    key_is_merge: bool = False
    has_key: bool = False
    merges: list[tuple[int, list[dict[Any, Any]]]] = field(default_factory=list)
    weight: int = 1


class _Builder:
    def __init__(self, source: str, env: bool) -> None:
        self.source = source
        self.env = env
        self.lines: Lines = {}
        self.problems: list[ConfigProblem] = []  # missing environment variables
        self.duplicates: list[ConfigProblem] = []
        self.anchors: dict[str, tuple[Any, int]] = {}
        self.open_anchors: set[str] = set()
        self.alias_nodes = 0
        self.stack: list[_Frame] = []
        self.root: Any = None
        self.resolver = Resolver()
        self.constructor = SafeConstructor()

    def fail(self, line: int | None, path: Loc, message: str) -> ConfigError:
        return ConfigError([*self.duplicates, ConfigProblem(self.source, line, format_path(path), message)])

    def child_path(self) -> Loc:
        if not self.stack:
            return ()
        top = self.stack[-1]
        if top.items is not None:
            return (*top.path, len(top.items))
        return (*top.path, top.key) if top.has_key else (*top.path, "<key>")

    def scalar(self, event: ev.ScalarEvent, line: int, path: Loc) -> tuple[Any, str]:
        tag = event.tag
        if tag is None or tag == "!":
            tag = self.resolver.resolve(ScalarNode, event.value, event.implicit)  # type: ignore[no-untyped-call]
        if tag == _STR:
            if self.env and "${" in event.value:
                try:
                    return interpolate(event.value), tag
                except ValueError as exc:
                    self.problems.append(ConfigProblem(self.source, line, format_path(path), str(exc)))
                    return None, tag
            return event.value, tag
        if tag == _MERGE:
            return "<<", tag
        node = ScalarNode(tag, event.value, None, None, event.style)  # marks: errors use our own line
        construct = self.constructor.yaml_constructors.get(tag) or self.constructor.yaml_constructors[None]
        try:
            return construct(self.constructor, node), tag
        except yaml.YAMLError as exc:
            raise self.fail(line, path, f"YAML: {getattr(exc, 'problem', None) or exc}") from None

    def add(self, value: Any, weight: int, line: int, is_merge: bool = False) -> None:
        """Attach a finished value to the open collection (or make it the document)."""
        if not self.stack:
            self.root = value
            return
        top = self.stack[-1]
        if top.items is not None:
            self.lines.setdefault((*top.path, len(top.items)), line)
            top.items.append(value)
            top.weight += weight
            return
        assert top.mapping is not None
        if not top.has_key:
            if isinstance(value, list | dict):
                raise self.fail(line, top.path, "a mapping key must be a plain value")
            top.key, top.key_line, top.key_is_merge, top.has_key = value, line, is_merge, True
            if not is_merge and value in top.key_lines:
                self.duplicates.append(ConfigProblem(
                    self.source, line, format_path((*top.path, value)),
                    f"duplicate key {value!r} (first at line {top.key_lines[value]})",
                ))
            elif not is_merge:
                top.key_lines[value] = line
            return
        top.has_key = False
        top.weight += 1 + weight
        if top.key_is_merge:
            sources = value if isinstance(value, list) else [value]
            if not all(isinstance(s, dict) for s in sources):
                raise self.fail(top.key_line, top.path, "`<<` needs a mapping or a list of mappings to merge")
            top.merges.append((top.key_line, sources))
            return
        if top.key in top.mapping:  # duplicate, already reported: keep the first
            return
        self.lines[(*top.path, top.key)] = top.key_line
        top.mapping[top.key] = value

    def open(self, event: ev.CollectionStartEvent, line: int, is_map: bool) -> None:
        path = self.child_path()
        if len(self.stack) >= MAX_DEPTH:
            raise self.fail(line, path, f"nested deeper than {MAX_DEPTH} levels")
        tag = event.tag
        if tag not in (_MAP_TAGS if is_map else _SEQ_TAGS):
            raise self.fail(line, path, f"unsupported YAML tag {tag}")
        if event.anchor is not None:
            self.open_anchors.add(event.anchor)
        self.lines.setdefault(path, line)
        frame = _Frame(path, line, event.anchor)
        if is_map:
            frame.mapping = {}
        else:
            frame.items = []
        self.stack.append(frame)

    def close(self) -> None:
        frame = self.stack.pop()
        value: Any
        if frame.items is not None:
            value = frame.items
        else:
            assert frame.mapping is not None
            value = frame.mapping
            if frame.merges:
                merged: dict[Any, Any] = {}
                for merge_line, sources in frame.merges:
                    for source in sources:
                        for k, v in source.items():
                            if k not in merged and k not in frame.mapping:
                                merged[k] = v
                                self.lines.setdefault((*frame.path, k), merge_line)
                value = {**merged, **frame.mapping}
        self.finish(value, frame.weight, frame.line, frame.anchor)

    def finish(self, value: Any, weight: int, line: int, anchor: str | None, is_merge: bool = False) -> None:
        if anchor is not None:
            self.anchors[anchor] = (value, weight)
            self.open_anchors.discard(anchor)
        self.add(value, weight, line, is_merge)

    def alias(self, event: ev.AliasEvent, line: int) -> None:
        name = event.anchor
        path = self.child_path()
        if name in self.open_anchors:
            raise self.fail(line, path, f"alias *{name} refers to a node that contains it")
        if name not in self.anchors:
            raise self.fail(line, path, f"alias *{name} has no anchor &{name} before it")
        value, weight = self.anchors[name]
        self.alias_nodes += weight
        if self.alias_nodes > MAX_ALIAS_NODES:
            raise self.fail(line, path, f"too many alias expansions (more than {MAX_ALIAS_NODES:,} nodes)")
        self.add(value, weight, line)

    def run(self, text: str) -> Any:
        loader = _Loader(text)
        documents = 0
        try:
            while loader.check_event():
                event = loader.get_event()
                line = event.start_mark.line + 1 if event.start_mark is not None else 0
                if isinstance(event, ev.ScalarEvent):
                    path = self.child_path()
                    value, tag = self.scalar(event, line, path)
                    self.finish(value, 1, line, event.anchor, tag == _MERGE)
                elif isinstance(event, ev.MappingStartEvent):
                    self.open(event, line, True)
                elif isinstance(event, ev.SequenceStartEvent):
                    self.open(event, line, False)
                elif isinstance(event, ev.MappingEndEvent | ev.SequenceEndEvent):
                    self.close()
                elif isinstance(event, ev.AliasEvent):
                    self.alias(event, line)
                elif isinstance(event, ev.DocumentStartEvent):
                    documents += 1
                    if documents > 1:
                        raise self.fail(line, (), "expected a single YAML document, found another")
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line_no = mark.line + 1 if mark is not None else None
            problem = getattr(exc, "problem", None) or exc
            raise ConfigError([ConfigProblem(self.source, line_no, "", f"YAML syntax: {problem}")]) from None
        finally:
            loader.dispose()
        return self.root


def load_yaml(text: str, source: str, *, env: bool = False) -> tuple[Any, Lines, list[ConfigProblem]]:
    """Parse one YAML document: (data, line of every key and item by path, interpolation problems).

    Raises `ConfigError` (file:line) for syntax errors, duplicate keys, excessive nesting and
    alias expansion. With `env`, string scalars get `${NAME}` interpolation; a missing variable
    is returned as a problem (with its line) and its value is None.
    """
    builder = _Builder(source, env)
    data = builder.run(text)
    if builder.duplicates:
        raise ConfigError(builder.duplicates)
    return data, builder.lines, builder.problems


def validation_problems(exc: ValidationError, source: str, lines: Lines) -> list[ConfigProblem]:
    """Pydantic errors as `file:line: path: message` problems."""
    return [
        ConfigProblem(source, line_of(lines, tuple(err["loc"])), format_path(tuple(err["loc"])), err["msg"])
        for err in exc.errors(include_url=False)
    ]


def load_model(model: type[M], path: Path) -> M:
    """Load and validate a data file (e.g. a driver's map); every problem is `file:line: path: message`.

    Raises `ConfigError`, or `FileNotFoundError` when the file does not exist.
    """
    text = path.read_text(encoding="utf-8")
    data, lines, _ = load_yaml(text, str(path))
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(validation_problems(exc, str(path), lines)) from None


__all__ = [
    "MAX_ALIAS_NODES", "MAX_DEPTH", "Lines", "format_path", "interpolate", "line_of", "load_model", "load_yaml",
    "validation_problems",
]
