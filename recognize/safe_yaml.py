"""Reading a YAML file a user wrote, with limits: one line for every way it can go wrong.

PyYAML's `safe_load` is safe from code execution but not from size: aliases share one node, so a
528-byte "billion laughs" document expands to gigabytes as soon as anything walks it (pydantic,
`json.dumps` of the manifest). It also silently keeps the last of two equal keys, builds
self-containing lists from `&a [*a]`, and recurses once per nesting level. Here the composed node
graph is checked before anything is constructed:

- the number of nodes *after* alias expansion is bounded (`MAX_NODES`),
- nesting depth is bounded (`MAX_DEPTH`),
- an alias inside its own anchor (a cycle) is refused,
- a key given twice in one mapping is refused, naming both lines,

and the file must be UTF-8 (a UTF-8 or UTF-16 byte-order mark is honoured: Windows editors and
PowerShell's `>` write UTF-16 with a BOM; without a BOM only UTF-8 is accepted).
"""

from __future__ import annotations

import codecs
from pathlib import Path
from typing import Any

import yaml

#: Nodes a document may expand to (aliases counted once per use). A large recipe has a few hundred.
MAX_NODES = 20_000
#: Nesting levels (mappings and lists inside each other). Recipes use fewer than ten.
MAX_DEPTH = 50
#: Bytes a YAML file may have before it is read at all.
MAX_BYTES = 1 << 20

_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32-le"),  # before UTF-16 LE: it starts with the same two bytes
    (codecs.BOM_UTF32_BE, "utf-32-be"),
    (codecs.BOM_UTF8, "utf-8"),
    (codecs.BOM_UTF16_LE, "utf-16-le"),
    (codecs.BOM_UTF16_BE, "utf-16-be"),
)


class YamlProblem(ValueError):
    """What is wrong with the document, one line; `line` is 1-based where known."""

    def __init__(self, message: str, line: int | None = None, column: int | None = None) -> None:
        super().__init__(message)
        self.line = line
        self.column = column

    def where(self, source: str) -> str:
        if self.line is None:
            return source
        return f"{source}:{self.line}:{self.column}" if self.column is not None else f"{source}:{self.line}"


def decode(data: bytes) -> str:
    """Text of a YAML file: UTF-8, or UTF-8/16/32 with a byte-order mark."""
    for bom, encoding in _BOMS:
        if data.startswith(bom):
            try:
                return data[len(bom):].decode(encoding)
            except UnicodeDecodeError as exc:
                raise YamlProblem(f"starts with a {encoding.upper()} byte-order mark but byte {exc.start + len(bom)} "
                                  f"is not valid {encoding.upper()}; save the file as UTF-8") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16 without a byte-order mark)" if b"\x00" in data[:64] else ""
        line = data[: exc.start].count(b"\n") + 1
        raise YamlProblem(f"not UTF-8 text: byte {exc.start} (line {line}) is 0x{data[exc.start]:02x}{hint}; "
                          "save the file as UTF-8") from None


def read_file(path: str | Path) -> str:
    """The decoded text of a YAML file no larger than MAX_BYTES."""
    path = Path(path)
    with open(path, "rb") as handle:
        data = handle.read(MAX_BYTES + 1)
    if len(data) > MAX_BYTES:
        raise YamlProblem(f"larger than {MAX_BYTES // 1024} KiB; a recipe is a short text file")
    return decode(data)


def compose(text: str) -> yaml.Node | None:
    """The checked node graph of a one-document YAML text (None when it is empty)."""
    loader = None
    try:
        loader = yaml.SafeLoader(text)  # checks for unprintable characters already
        node = loader.get_single_node()
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlProblem(f"YAML syntax error: {problem}", *_line_col(mark)) from None
    except RecursionError:
        raise YamlProblem(f"nested too deeply (more than {MAX_DEPTH} levels)") from None
    finally:
        if loader is not None:
            loader.dispose()
    if node is not None:
        check(node)
    return node


def construct(node: yaml.Node | None) -> Any:
    """Python data of a checked node graph."""
    if node is None:
        return None
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise YamlProblem(f"YAML error: {problem}", *_line_col(mark)) from None
    finally:
        loader.dispose()


def load(text: str) -> Any:
    """`yaml.safe_load` with the checks of this module."""
    return construct(compose(text))


def check(root: yaml.Node) -> None:
    """Raise YamlProblem for cycles, too many expanded nodes, too deep nesting, duplicate keys.

    Iterative (no recursion) and memoised per node: an alias re-uses its anchor's count, so a
    bomb is measured without being expanded.
    """
    expanded: dict[int, int] = {}
    on_path: set[int] = set()
    seen_dupes: set[int] = set()
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 1, False)]
    while stack:
        node, depth, done = stack.pop()
        key = id(node)
        if done:
            on_path.discard(key)
            expanded[key] = 1 + sum(expanded[id(child)] for child in _children(node))
            if expanded[key] > MAX_NODES:
                raise YamlProblem(f"expands to more than {MAX_NODES} values (aliases counted at each use); "
                                  "is it an alias bomb?", *_line_col(node.start_mark))
            continue
        if key in expanded:
            continue
        if key in on_path:
            raise YamlProblem("an alias refers to the anchor that contains it (a self-referencing structure)",
                              *_line_col(node.start_mark))
        if depth > MAX_DEPTH:
            raise YamlProblem(f"nested too deeply (more than {MAX_DEPTH} levels)", *_line_col(node.start_mark))
        if isinstance(node, yaml.MappingNode) and key not in seen_dupes:
            seen_dupes.add(key)
            _check_duplicate_keys(node)
        on_path.add(key)
        stack.append((node, depth, True))
        for child in _children(node):
            if id(child) in on_path:
                raise YamlProblem("an alias refers to the anchor that contains it (a self-referencing structure)",
                                  *_line_col(child.start_mark))
            if id(child) not in expanded:
                stack.append((child, depth + 1, False))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _check_duplicate_keys(node: yaml.MappingNode) -> None:
    first: dict[tuple[str, str], int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        ident = (key.tag, key.value)
        line = key.start_mark.line + 1
        if ident in first:
            raise YamlProblem(f"key {key.value!r} is given twice (lines {first[ident]} and {line}); keep one",
                              line, key.start_mark.column + 1)
        first[ident] = line


def _line_col(mark: Any) -> tuple[int | None, int | None]:
    if mark is None:
        return None, None
    return mark.line + 1, mark.column + 1
