"""Docs true to the code: design.md's module table (every module, its layer, imports only
downward, no import loops) and README's Python blocks, executed as written."""

from __future__ import annotations

import ast
import contextlib
import io
import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "vitedge"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """vitedge modules PATH imports, at module level or inside functions (a lazy import still
    ties the two together). `from vitedge import X` for a name that is not a submodule is an
    edge to the package root, which nothing inside the package may import (the version lives
    in `vitedge._version`)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vitedge"}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").split(".")[0] == "vitedge":
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                if submodule in modules:
                    found.add(submodule)
                else:
                    found.add(node.module)  # type: ignore[arg-type]
    return found - {_module_name(path)}


def _design_table() -> list[tuple[int, str, str]]:
    """(layer, module path, owns) rows of design.md's module table."""
    text = (REPO / "docs" / "design.md").read_text()
    section = text.split("## Modules", 1)[1].split("\n## ", 1)[0]
    rows = []
    for line in section.splitlines():
        match = re.match(r"\|\s*(\d+)\s*\|\s*`([^`]+)`\s*\|(.*)\|\s*$", line)
        if match:
            rows.append((int(match[1]), match[2], match[3]))
    return rows


def _row_of(module: str, rows: list[tuple[int, str, str]]) -> tuple[int, str, str]:
    """The most specific row for MODULE: a file row (`cli.py`) or its package row (`backends/`)."""
    rel = module.removeprefix("vitedge").lstrip(".").replace(".", "/")
    path = _modules()[module].relative_to(PACKAGE).as_posix()
    candidates = [r for r in rows if r[1] == path or (r[1].endswith("/") and (rel + "/").startswith(r[1]))]
    assert candidates, f"docs/design.md's module table does not list {path}"
    return max(candidates, key=lambda r: len(r[1]))


def test_design_table_lists_every_module_and_nothing_else() -> None:
    rows = _design_table()
    modules = _modules()
    for module, path in modules.items():
        layer, entry, owns = _row_of(module, rows)
        if entry.endswith("/") and path.name != "__init__.py":  # a package row names each of its files
            below = path.relative_to(PACKAGE / entry).as_posix()
            if "/" not in below:
                assert f"`{below}`" in owns, f"design.md's {entry} row does not mention {below}"
    for _, entry, _ in rows:
        assert (PACKAGE / entry).exists(), f"design.md lists {entry}, which does not exist"


def test_imports_point_down_the_layers_and_never_loop() -> None:
    rows = _design_table()
    modules = _modules()
    graph = {m: _imports(p, modules) for m, p in modules.items()}
    upward = []
    for module, targets in graph.items():
        layer = _row_of(module, rows)[0]
        for target in targets:
            if target in modules and _row_of(target, rows)[0] > layer:
                upward.append(f"{module} (layer {layer}) imports {target} (layer {_row_of(target, rows)[0]})")
    assert not upward, "imports that point up:\n" + "\n".join(upward)
    assert not _cycles(graph), f"import loops: {_cycles(graph)}"


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    loops: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in graph:
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                loops.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return loops


def test_cycle_finder_finds_a_loop() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _readme_python_blocks() -> list[str]:
    return re.findall(r"```python\n(.*?)```", (REPO / "README.md").read_text(), flags=re.S)


def test_readme_python_runs_as_written(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """README's Library example, executed from a repo-like folder (calibration/ and nothing else)."""
    blocks = _readme_python_blocks()
    assert blocks, "README.md has no Python block"
    (tmp_path / "calibration").symlink_to(REPO / "calibration")
    monkeypatch.chdir(tmp_path)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, "README.md", "exec"), {"__name__": "__readme__"})  # noqa: S102
    lines = printed.getvalue().splitlines()
    top3 = ast.literal_eval(lines[0])  # [[(label, probability), ...]] for one image
    assert len(top3) == 1 and len(top3[0]) == 3
    assert all(isinstance(label, str) for label, _ in top3[0]) and 0 < sum(p for _, p in top3[0]) <= 1 + 1e-6
    status, agreement = lines[-1].split()  # the bench summary table is printed in between
    assert status == "passed" and float(agreement) >= 0.99
    assert (tmp_path / "runs" / "library" / "report" / "report.html").is_file()


def test_library_functions_keep_their_names_after_submodule_imports() -> None:
    """`vitedge.export`/`vitedge.compile` are also submodules: importing those must not rebind the names."""
    import importlib

    import vitedge

    importlib.import_module("vitedge.export")
    importlib.import_module("vitedge.compile")
    assert all(callable(getattr(vitedge, name)) for name in vitedge.__all__ if name != "__version__")
