"""Safe, bounded YAML reading with source positions, and YAML writing.

Only the YAML core types are constructed (safe loader semantics: no tags that build
objects). A file is limited to ``MAX_BYTES``, the expanded document to ``MAX_NODES``
nodes (so an alias bomb fails fast) and ``MAX_DEPTH`` levels. Duplicate keys and
non-string keys are errors. Positions are recorded per path for error messages.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path as FsPath
from typing import Any

import yaml

from .errors import Issue, Path, SpecError

MAX_BYTES = 1 << 20
MAX_NODES = 200_000
MAX_DEPTH = 64

_MAP = "tag:yaml.org,2002:map"
_SEQ = "tag:yaml.org,2002:seq"
_MERGE = "tag:yaml.org,2002:merge"
_SAFE_SCALARS = {
    f"tag:yaml.org,2002:{t}" for t in ("str", "int", "float", "bool", "null", "timestamp")
}


@dataclass
class Document:
    """A parsed YAML document: plain data plus 1-based (line, column) per path."""

    data: Any
    source: str
    key_pos: dict[Path, tuple[int, int]] = field(default_factory=dict)
    value_pos: dict[Path, tuple[int, int]] = field(default_factory=dict)
    origins: dict[Path, str] = field(default_factory=dict)
    """Paths whose value came from the command line, e.g. ``("train", "steps")`` ->
    ``--set train.steps=abc``: issues at or below them are located there."""

    def set_origin(self, path: Path, origin: str) -> None:
        """Mark ``path`` as set by ``origin``, forgetting the file positions below it."""
        p = tuple(path)
        for table in (self.key_pos, self.value_pos):
            for q in [q for q in table if q[: len(p)] == p]:
                del table[q]
        self.origins[p] = origin

    def origin(self, path: Path) -> str | None:
        """The command-line origin of the value at ``path`` (or of a parent), if any."""
        p = tuple(path)
        while p:
            if p in self.origins:
                return self.origins[p]
            p = p[:-1]
        return None

    def locate(self, path: Path, *, key: bool = False) -> tuple[int | None, int | None]:
        """Position of the value (or key) at ``path``, else of its nearest located parent."""
        table = self.key_pos if key else self.value_pos
        p = tuple(path)
        while p:
            if p in table:
                return table[p]
            if p in self.value_pos:
                return self.value_pos[p]
            p = p[:-1]
        return self.value_pos.get((), (None, None))

    def issue(self, path: Path, message: str, *, key: bool = False, hint: str | None = None):
        origin = self.origin(path)
        line, col = (None, None) if origin is not None else self.locate(path, key=key)
        return Issue(tuple(path), message, line, col, hint, origin)


class _Loader(yaml.SafeLoader):
    """The safe loader, reading plain scalars as the YAML 1.2 core schema does, where
    PyYAML's YAML 1.1 rules differ: only ``true``/``false`` (``True``, ``TRUE``, ...) are
    booleans (``yes``, ``no``, ``on``, ``off`` are text); ``1:30`` is text (not the
    sexagesimal 90); ``2024-01-01`` is text (no timestamps) and so is ``=``; floats such
    as ``2.0e6`` and ``1e-3`` are numbers (YAML 1.1 reads them as text; editors and JSON
    Schema read numbers); ``010`` is 10 (not octal 8) and ``0o17`` is 15. Kept from YAML
    1.1, as before: ``0x1F`` and ``0b101`` integers, ``_`` digit separators (``1_000``)."""


_YAML11_ONLY = {f"tag:yaml.org,2002:{t}" for t in ("bool", "int", "float", "timestamp", "value")}
_Loader.yaml_implicit_resolvers = {
    k: [(tag, rx) for tag, rx in v if tag not in _YAML11_ONLY]
    for k, v in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)
_Loader.add_implicit_resolver(  # YAML 1.1's integers without the sexagesimal 1:30
    "tag:yaml.org,2002:int",
    re.compile(
        r"""^(?:[-+]?0b[0-1_]+
        |[-+]?0[0-7_]+
        |[-+]?(?:0|[1-9][0-9_]*)
        |[-+]?0x[0-9a-fA-F_]+)$""",
        re.X,
    ),
    list("-+0123456789"),
)
_Loader.add_implicit_resolver(  # YAML 1.1's floats without the sexagesimal 1:30.5
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+][0-9]+)?
        |\.[0-9][0-9_]*(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+
        |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?)$""",
        re.X,
    ),
    list("-+0123456789."),
)
_LEADING_ZERO = re.compile(r"^[-+]?0[0-9_]+$")
# YAML 1.2 (core schema): 010 is the decimal 10 (YAML 1.1 read it as octal 8) and 09 an
# integer; only 0o17 is octal.
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", _LEADING_ZERO, list("-+0"))
_Loader.add_implicit_resolver("tag:yaml.org,2002:int", re.compile(r"^0o[0-7]+$"), ["0"])
_INT = "tag:yaml.org,2002:int"


def _yaml12_int(text: str) -> int | None:
    """The YAML 1.2 value of integers that YAML 1.1 reads otherwise (``010``, ``0o17``)."""
    if _LEADING_ZERO.match(text):
        return int(text.replace("_", ""), 10)
    if text.startswith("0o"):
        return int(text[2:], 8)
    return None


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


class _Builder:
    def __init__(self, doc: Document):
        self.doc = doc
        self.nodes = 0
        self.constructor = yaml.SafeLoader("")

    def fail(self, node: yaml.Node | None, path: Path, msg: str) -> SpecError:
        line, col = _pos(node) if node is not None else (None, None)
        return SpecError([Issue(path, msg, line, col)], self.doc.source)

    def build(self, node: yaml.Node, path: Path, depth: int) -> Any:
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise self.fail(
                node, path, f"document expands to more than {MAX_NODES} nodes (alias bomb?)"
            )
        if depth > MAX_DEPTH:
            raise self.fail(node, path, f"nesting deeper than {MAX_DEPTH} levels")
        self.doc.value_pos.setdefault(path, _pos(node))
        if isinstance(node, yaml.ScalarNode):
            if node.tag not in _SAFE_SCALARS:
                raise self.fail(
                    node, path, f"YAML tag {node.tag!r} is not allowed (plain data only)"
                )
            if node.tag == _INT and (as12 := _yaml12_int(node.value)) is not None:
                return as12
            try:
                value = self.constructor.construct_object(node, deep=True)
            except yaml.YAMLError as exc:
                raise self.fail(node, path, f"bad scalar: {exc}") from None
            if not isinstance(value, (str, int, float, bool, type(None))):
                value = str(value)  # timestamps stay text
            return value
        if isinstance(node, yaml.SequenceNode):
            if node.tag != _SEQ:
                raise self.fail(
                    node, path, f"YAML tag {node.tag!r} is not allowed (plain data only)"
                )
            return [self.build(child, path + (i,), depth + 1) for i, child in enumerate(node.value)]
        if isinstance(node, yaml.MappingNode):
            if node.tag != _MAP:
                raise self.fail(
                    node, path, f"YAML tag {node.tag!r} is not allowed (plain data only)"
                )
            out: dict[str, Any] = {}
            explicit: set[str] = set()
            merged: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE:
                    sources = (
                        value_node.value
                        if isinstance(value_node, yaml.SequenceNode)
                        else [value_node]
                    )
                    for src in sources:
                        val = self.build(src, path, depth + 1)
                        if not isinstance(val, dict):
                            raise self.fail(src, path, "'<<' merge needs a mapping")
                        for k, v in val.items():
                            merged.setdefault(k, v)
                    continue
                key = self.build(key_node, path + ("<key>",), depth + 1)
                if not isinstance(key, str):
                    raise self.fail(key_node, path, _key_message(key_node, key))
                if key in explicit:
                    raise self.fail(key_node, path + (key,), f"duplicate key {key!r}")
                explicit.add(key)
                self.doc.key_pos[path + (key,)] = _pos(key_node)
                out[key] = self.build(value_node, path + (key,), depth + 1)
            for k, v in merged.items():
                out.setdefault(k, v)
            return out
        raise self.fail(node, path, "unsupported YAML node")


KINDS: dict[type, str] = {dict: "a mapping", list: "a list", str: "text", bool: "a boolean",
                          int: "an integer", float: "a number", type(None): "nothing (null)"}
"""How messages name the type of a YAML value."""


def kind_of(value: Any) -> str:
    """``value``'s type as messages name it (:data:`KINDS`)."""
    return KINDS.get(type(value), type(value).__name__)


def _key_message(node: yaml.Node, key: Any) -> str:
    """Why a mapping key that is not text is refused, and how to quote it."""
    if not isinstance(node, yaml.ScalarNode):
        return f"a key must be a string, not {type(key).__name__}"
    return (f"key {node.value} is read as {kind_of(key)}, not a string; quote it: "
            f"{json.dumps(node.value)}")


def parse_text(text: str, source: str = "<input>") -> Document:
    """Parse one YAML document from text; raises :class:`SpecError` on any problem."""
    doc = Document(None, source)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_BYTES:
        raise SpecError([Issue((), f"file larger than {MAX_BYTES} bytes")], source)
    if "\x00" in text:
        raise SpecError([Issue((), "not a text file (contains NUL bytes)")], source)
    try:
        nodes = list(yaml.compose_all(text, Loader=_Loader))
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        what = exc.problem or exc.context or "invalid YAML"
        raise SpecError([Issue((), f"invalid YAML: {what}", line, col)], source) from None
    except yaml.YAMLError as exc:
        raise SpecError([Issue((), f"invalid YAML: {exc}")], source) from None
    except RecursionError:
        raise SpecError([Issue((), f"nesting deeper than {MAX_DEPTH} levels")], source) from None
    nodes = [n for n in nodes if n is not None]
    if not nodes:
        raise SpecError(
            [Issue((), "the file is empty: expected a mapping with model/task/train")], source
        )
    if len(nodes) > 1:
        line, _ = _pos(nodes[1])
        raise SpecError([Issue((), "more than one YAML document (---) in the file", line)], source)
    try:
        doc.data = _Builder(doc).build(nodes[0], (), 0)
    except RecursionError:
        raise SpecError([Issue((), f"nesting deeper than {MAX_DEPTH} levels")], source) from None
    return doc


def read_document(path: str | FsPath) -> Document:
    """Read and parse a YAML file with the size bound; missing, unreadable and binary files
    are SpecErrors."""
    p = FsPath(path)
    source = str(path)
    try:
        if not p.exists():
            raise SpecError([Issue((), "no such file")], source)
        if not p.is_file():
            raise SpecError([Issue((), "not a regular file")], source)
        size = p.stat().st_size
        if size > MAX_BYTES:
            raise SpecError([Issue((), f"file is {size} bytes; the limit is {MAX_BYTES}")],
                            source)
        raw = p.read_bytes()
    except OSError as exc:  # permission denied, an I/O error, a name too long, ...
        raise SpecError([Issue((), f"cannot read the file: {exc.strerror or exc}")],
                        source) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SpecError(
            [Issue((), f"not a UTF-8 text file (byte {exc.start} is {raw[exc.start]:#04x})")],
            source,
        ) from None
    return parse_text(text, source)


class _Dumper(yaml.SafeDumper):
    """Quotes every string that :class:`_Loader` (YAML 1.2) or a YAML 1.1 reader (PyYAML's
    ``safe_load``, older tools) would read as something else (``"09"``, ``"1e-3"``,
    ``"yes"``, ``"1:30"``, ``"2024-01-01"``), so dumped files load back unchanged in
    both."""


_Dumper.yaml_implicit_resolvers = {
    k: list(yaml.SafeLoader.yaml_implicit_resolvers.get(k, []))
    + [r for r in _Loader.yaml_implicit_resolvers.get(k, [])
       if r not in yaml.SafeLoader.yaml_implicit_resolvers.get(k, [])]
    for k in {*yaml.SafeLoader.yaml_implicit_resolvers, *_Loader.yaml_implicit_resolvers}
}


def _str_presenter(dumper: yaml.SafeDumper, data: str) -> yaml.Node:
    return dumper.represent_scalar("tag:yaml.org,2002:str", data)


_Dumper.add_representer(str, _str_presenter)


def dump_yaml(data: Any, header: str = "") -> str:
    """Plain YAML (block style, key order kept) with an optional comment header."""
    body = yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, allow_unicode=True
    )
    return header + body


def json_safe(data: Any) -> Any:
    """``data`` with every NaN or infinite float (nested in dicts, lists and tuples) as
    ``None``: JSON has no NaN or infinity."""
    if isinstance(data, float):
        return data if math.isfinite(data) else None
    if isinstance(data, dict):
        return {k: json_safe(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [json_safe(v) for v in data]
    return data
