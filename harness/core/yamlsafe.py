"""Bounded YAML for every file harness reads (suites, prices): `yaml.safe_load` in bounded time and memory.

A few hundred bytes of nested aliases expand into billions of nodes (a "billion laughs" bomb), an alias inside
the node it names is a recursive structure, and deep nesting exhausts Python's stack: each is refused while the
file is composed, before anything walks the result, as an `InputError` naming the file and line. So are files
over `MAX_BYTES`, text that is not UTF-8 and a key given twice in one mapping (YAML keeps the last silently).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from harness.core.errors import InputError

MAX_BYTES = 1 << 20  # 1 MiB: a hand-written suite of hundreds of cases is tens of KiB
MAX_NODES = 100_000  # nodes after expanding every alias
MAX_DEPTH = 64  # nested mappings / sequences


class _Refused(yaml.MarkedYAMLError):
    """A limit of the bounded loader, at the mark where it was reached."""


class BoundedLoader(yaml.SafeLoader):
    """SafeLoader that counts nodes with every alias expanded, refuses recursive aliases, nesting deeper than
    MAX_DEPTH and duplicate keys while composing (`yaml.SafeLoader` itself stays untouched)."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._sizes: dict[int, int] = {}  # id(node) -> its node count with aliases expanded, once composed
        self._open: set[str] = set()  # anchors whose node is being composed: an alias to one is recursive
        self._depth = 0
        self._total = 0

    def compose_node(self, parent, index):
        event = self.peek_event()
        if isinstance(event, yaml.AliasEvent):
            if event.anchor in self._open:
                raise _Refused(None, None, f"alias *{event.anchor} is inside the node it names (a recursive "
                                           "alias); YAML files harness reads must be trees", event.start_mark)
            node = super().compose_node(parent, index)
            self._add(self._sizes[id(node)], event.start_mark)
            return node
        self._depth += 1
        if self._depth > MAX_DEPTH:
            raise _Refused(None, None, f"nested more than {MAX_DEPTH} levels deep", event.start_mark)
        if event.anchor is not None:
            self._open.add(event.anchor)
        self._add(1, event.start_mark)
        try:
            node = super().compose_node(parent, index)
        finally:
            self._depth -= 1
            self._open.discard(event.anchor)
        self._sizes[id(node)] = 1 + sum(self._sizes[id(child)] for child in _children(node))
        if isinstance(node, yaml.MappingNode):
            _check_duplicate_keys(node)
        return node

    def _add(self, nodes: int, mark) -> None:
        self._total += nodes
        if self._total > MAX_NODES:
            raise _Refused(None, None, f"expands to more than {MAX_NODES:,} values (aliases repeat what they name: "
                                       "an alias bomb?)", mark)


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    seen: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        line = key.start_mark.line + 1
        if (key.tag, key.value) in seen:
            raise _Refused(None, None, f"key '{key.value}' is given twice in one mapping (lines "
                                       f"{seen[key.tag, key.value]} and {line}); YAML would keep the last silently",
                           key.start_mark)
        seen[key.tag, key.value] = line


def read_text(path: str | Path, what: str, limit: int = MAX_BYTES) -> str:
    """The UTF-8 text of a small input file, at most `limit` bytes; InputError ("cannot read WHAT: ...") for an
    unreadable file, a larger one or one that is not UTF-8 text."""
    try:
        with open(path, "rb") as f:
            raw = f.read(limit + 1)
    except OSError as exc:
        raise InputError(f"cannot read {what}: {exc.strerror or exc}", str(path)) from None
    if len(raw) > limit:
        raise InputError(f"cannot read {what}: it is over {limit / 2**20:g} MiB, more than such a file needs",
                         str(path))
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InputError(f"cannot read {what}: not UTF-8 text (byte {exc.start})", str(path),
                         raw[:exc.start].count(b"\n") + 1) from None


def parse(text: str, path: str | Path) -> tuple[Any, yaml.Node | None]:
    """(data, root node) of one YAML document through `BoundedLoader`; InputError with the file and line for
    malformed YAML and for what the loader refuses."""
    loader = None
    try:
        loader = BoundedLoader(text)  # the reader checks every character here
        node = loader.get_single_node()
        return (loader.construct_document(node) if node is not None else None), node
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = mark.line + 1 if mark else None
        if isinstance(exc, _Refused):
            raise InputError(exc.problem, str(path), line) from None
        said = ": ".join(x for x in (exc.context, exc.problem) if x) or str(exc)
        raise InputError(f"malformed YAML: {said}", str(path), line) from None
    except yaml.reader.ReaderError as exc:  # a character YAML does not allow
        line = text.count("\n", 0, exc.position) + 1
        raise InputError(f"malformed YAML: {exc.reason} (character #x{exc.character:04x})", str(path),
                         line) from None
    except RecursionError:  # a limit above should come first; never a traceback
        raise InputError(f"malformed YAML: nested too deeply (more than {MAX_DEPTH} levels)", str(path)) from None
    finally:
        if loader is not None:
            loader.dispose()


def load(path: str | Path, what: str) -> tuple[Any, yaml.Node | None]:
    """Read and parse a small YAML file (`read_text`, `parse`): (data, root node), InputError naming the file
    and line for anything it cannot use."""
    return parse(read_text(path, what), path)
