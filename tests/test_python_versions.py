"""The package runs on every Python that `requires-python` admits (>= 3.10): no module imports a
standard-library name that only newer Pythons have. Checked from the source (the AST), so the test
runs on whatever Python the suite uses; the names are the ones 3.11-3.13 added that code tends to
reach for (`typing.Self` broke `recognize run` on 3.10 once: `recognize.run_inputs` imported it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: stdlib names added after 3.10, by module
NEWER: dict[str, set[str]] = {
    "typing": {"Self", "LiteralString", "Never", "assert_never", "assert_type", "reveal_type", "Required",
               "NotRequired", "TypeVarTuple", "Unpack", "dataclass_transform", "get_overloads",
               "clear_overloads", "override", "TypeAliasType", "ReadOnly", "TypeIs", "get_protocol_members",
               "is_protocol"},
    "enum": {"StrEnum", "ReprEnum", "EnumCheck", "FlagBoundary", "verify", "member", "nonmember",
             "global_enum", "show_flag_values", "EnumType"},
    "datetime": {"UTC"},
    "asyncio": {"TaskGroup", "Runner", "timeout", "timeout_at", "Timeout"},
    "contextlib": {"chdir"},
    "itertools": {"batched"},
}
NEWER_MODULES = {"tomllib", "wsgiref.types"}


def _sources() -> list[Path]:
    packages = [ROOT / "recognize", *sorted((ROOT / "plugins").glob("*/recognize_*"))]
    return [path for package in packages for path in sorted(package.rglob("*.py"))]


def _imports_of_newer_names(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module is not None and node.level == 0:
            if node.module in NEWER_MODULES:
                found.append(f"{node.module}")
            found += [f"{node.module}.{alias.name}" for alias in node.names
                      if alias.name in NEWER.get(node.module, set())]
        elif isinstance(node, ast.Import):
            found += [alias.name for alias in node.names if alias.name in NEWER_MODULES]
    return found


def test_the_package_declares_python_3_10():
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    declared = re.search(r'^requires-python = "(.+)"$', pyproject, re.MULTILINE)
    assert declared is not None and declared.group(1) == ">=3.10"  # if this changes, change NEWER with it


@pytest.mark.parametrize("path", _sources(), ids=lambda p: p.relative_to(ROOT).as_posix())
def test_no_module_imports_a_name_python_3_10_lacks(path):
    assert _imports_of_newer_names(path) == []
