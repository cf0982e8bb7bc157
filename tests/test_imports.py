"""The package's import graph has no cycle (issue 31): every `import translator.x` and
`from translator.x import y` counts, at module level and inside functions (a function-level
import only hides a cycle until that function runs), except under `if TYPE_CHECKING:`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "translator"


def module_name(path: Path) -> str:
    """`translator.data.corpus` for translator/data/corpus.py (a package: its __init__)."""
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported(tree: ast.AST, modules: set[str], here: str) -> set[str]:
    """The package modules `tree` imports anywhere but under `if TYPE_CHECKING:`. `from a
    import b` names the module a.b when that is one, else a."""
    found: set[str] = set()
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, ast.If) and _type_checking_only(node):
            todo.extend(node.orelse)
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                package = here.rsplit(".", node.level)[0]
                base = f"{package}.{base}" if base else package
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
        todo.extend(ast.iter_child_nodes(node))
    return {m for m in found if m in modules and m != here}


def import_graph() -> dict[str, set[str]]:
    """Each package module and the package modules it imports."""
    paths = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    modules = set(paths)
    return {m: imported(ast.parse(p.read_text(encoding="utf-8")), modules, m)
            for m, p in paths.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of `graph` as a list of modules (first == last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph.get(m, ())):
            if state.get(n) == 1:
                return path[path.index(n):] + [n]
            if n not in state:
                cycle = visit(n)
                if cycle:
                    return cycle
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            cycle = visit(m)
            if cycle:
                return cycle
    return None


def test_the_package_has_no_import_cycle() -> None:
    graph = import_graph()
    assert "translator.data.corpus" in graph and graph["translator.config"] is not None
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_walker_sees_function_level_imports_and_skips_type_checking() -> None:
    modules = {"translator.a", "translator.b", "translator.c"}
    tree = ast.parse("from typing import TYPE_CHECKING\n"
                     "if TYPE_CHECKING:\n    import translator.c\n"
                     "def f():\n    from translator import b\n")
    assert imported(tree, modules, "translator.a") == {"translator.b"}
    assert find_cycle({"translator.a": {"translator.b"}, "translator.b": {"translator.a"}}) \
        == ["translator.a", "translator.b", "translator.a"]


def test_nothing_imports_the_cli() -> None:
    graph = import_graph()
    users = sorted(m for m, deps in graph.items() if "translator.cli" in deps
                   and m not in ("translator.__main__",))
    assert users == [], users
