"""Size limits of the package's functions (issue 13): none longer than about 60 lines or with
more than about 12 branches, unless a `# shape:` comment says why it is legitimately so."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "translator"
MAX_LINES = 60
MAX_BRANCHES = 12
MARK = "# shape:"

_BRANCHING = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.IfExp, ast.ExceptHandler)
_FUNCTIONS = (ast.FunctionDef, ast.AsyncFunctionDef)


def branches(fn: ast.AST) -> int:
    """Decision points of `fn`'s own body (nested functions count on their own): if, for,
    while, except and ternaries, plus one per extra operand of `and`/`or`."""
    count, todo = 0, list(ast.iter_child_nodes(fn))
    while todo:
        node = todo.pop()
        if isinstance(node, (*_FUNCTIONS, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, _BRANCHING):
            count += 1
        elif isinstance(node, ast.BoolOp):
            count += len(node.values) - 1
        todo.extend(ast.iter_child_nodes(node))
    return count


def _marked(fn: ast.FunctionDef | ast.AsyncFunctionDef, lines: list[str]) -> bool:
    """Whether a `# shape:` comment sits in the comment lines right above the def (or its
    decorators) or anywhere inside the function."""
    first = min([fn.lineno, *(d.lineno for d in fn.decorator_list)]) - 1  # 0-based
    above = first
    while above > 0 and lines[above - 1].strip().startswith("#"):
        above -= 1
    return any(line.strip().startswith(MARK) for line in lines[above:fn.end_lineno])


def _functions(tree: ast.Module) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """(qualified name, node) of every function and method, nested ones included."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _FUNCTIONS):
                found.append((prefix + child.name, child))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(tree, "")
    return found


def shape_report() -> tuple[list[str], list[str]]:
    """(offenders without a `# shape:` comment, functions over the limits that carry one),
    each as `file:line name (N lines, M branches)`. There is no allow-list: a function over
    the limits says why where it stands, or is split."""
    offenders, marked = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        text = path.read_text(encoding="utf-8")
        lines = text.splitlines()
        rel = path.relative_to(PACKAGE).as_posix()
        for name, fn in _functions(ast.parse(text, filename=str(path))):
            length = fn.end_lineno - fn.lineno + 1
            count = branches(fn)
            if length <= MAX_LINES and count <= MAX_BRANCHES:
                continue
            entry = f"{rel}:{fn.lineno} {name} ({length} lines, {count} branches)"
            (marked if _marked(fn, lines) else offenders).append(entry)
    return offenders, marked


def test_functions_are_short_and_simple_or_say_why() -> None:
    offenders, _ = shape_report()
    assert not offenders, (
        f"functions over {MAX_LINES} lines or {MAX_BRANCHES} branches without a '{MARK}' "
        "comment saying why (split them, or add the comment):\n" + "\n".join(offenders))


@pytest.mark.parametrize(("source", "marked"), [
    ("# shape: a table of cases\ndef f():\n    pass\n", True),
    ("@decorator\ndef f():\n    # shape: one dispatch\n    pass\n", True),
    ("# a plain comment\ndef f():\n    pass\n", False),
    ("x = 1  # shape: not about f\n\ndef f():\n    pass\n", False),
])
def test_the_mark_is_found_above_or_inside_the_function(source: str, marked: bool) -> None:
    tree = ast.parse(source)
    fn = next(node for node in tree.body if isinstance(node, _FUNCTIONS))
    assert _marked(fn, source.splitlines()) is marked


def test_the_counter_counts_what_it_should() -> None:
    fn = ast.parse("def f(a, b):\n"
                   "    if a and b or a:\n"
                   "        for x in a:\n"
                   "            pass\n"
                   "    def g():\n"
                   "        if b: pass\n"
                   "    return 1 if a else 2\n").body[0]
    assert branches(fn) == 5  # if, 2 boolean operands, for, ternary; g's if is g's



def test_training_takes_only_the_translator_from_inference() -> None:
    """Model building and device choice live apart from the Translator (issue 13.3): the
    training modules import nothing from `translator.decode.translator` (the Translator's
    module) except `train.step`, whose validation decodes through the Translator with
    `evaluate_pairs`, as `translator evaluate` does (issue 13.2)."""
    imports: dict[str, set[str]] = {}
    for path in sorted((PACKAGE / "train").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module == "translator.decode.translator":
                imports.setdefault(path.name, set()).update(a.name for a in node.names)
            elif isinstance(node, ast.Import) and any(
                    a.name == "translator.decode.translator" for a in node.names):
                imports.setdefault(path.name, set()).add("*")
    assert imports == {"step.py": {"Translator"}}, imports


def test_every_data_source_has_an_entry_in_the_source_table() -> None:
    import typing

    from translator.config import DataConfig
    from translator.data.sources import SOURCES

    choices = typing.get_args(typing.get_type_hints(DataConfig)["source"])
    assert set(SOURCES) == set(choices)

if __name__ == "__main__":
    bad, ok = shape_report()
    print("offenders:", *bad, sep="\n  ")
    print("marked:", *ok, sep="\n  ")
