"""One place knows the run folder (issue 31): no module but `translator/run.py` joins a path
inside a run, and `checkpoint.py` knows files, not runs (it imports neither the config nor the
run module)."""

from __future__ import annotations

import ast
from pathlib import Path

from translator.files import protected_reason
from translator.run import RunLayout

PACKAGE = Path(__file__).resolve().parent.parent / "translator"

RUN_NAMES = ("config.yaml", "checkpoints", "splits.json", "init.json", "tensorboard", "export",
             "latest.pt", "best.pt", "averaged.pt", "eval", ".lock")
"""Names of the files and folders in a run folder (`translator.run`'s docstring)."""
RUN_PREFIXES = ("tokenizer_",)

ALLOWED = {
    # files.py sits below run.py (run -> checkpoint -> files), so it cannot ask RunLayout
    # without an import cycle; it recognises a run folder by RunLayout.is_run's marks to refuse
    # replacing one, and test_files_knows_a_run_folder_as_run_py_does keeps them in step.
    ("files.py", "config.yaml"), ("files.py", "checkpoints"), ("files.py", "splits.json"),
    # transformers' own tokenizer settings in a Hugging Face export folder, not a run's file.
    ("export/huggingface.py", "tokenizer_config.json"),
}
"""(module, name) pairs that are allowed, each with its reason above."""

_PATH_CALLS = {"Path", "PurePath", "join", "joinpath", "with_name", "open"}


def _text(node: ast.AST) -> str | None:
    """The literal text of a string or f-string expression ('{}' for each hole), else None."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
    return None


def _path_operands(tree: ast.AST) -> list[ast.AST]:
    """Expressions used as parts of a path: operands of `/`, arguments of Path(), join(),
    joinpath(), with_name() and open(), and what a `.name` is compared with."""
    found: list[ast.AST] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            found += [node.left, node.right]
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            if name in _PATH_CALLS:
                found += node.args
        elif isinstance(node, ast.Compare) and isinstance(node.left, ast.Attribute) \
                and node.left.attr == "name":
            found += node.comparators
    return found


def _run_name(text: str) -> str | None:
    """The run-folder name among `text`'s path components, if any."""
    for part in text.replace("\\", "/").split("/"):
        if part in RUN_NAMES or part.startswith(RUN_PREFIXES):
            return part
    return None


def run_path_joins(package: Path = PACKAGE) -> list[str]:
    """`file:line name` for every run-folder name joined into a path outside run.py."""
    offenders = []
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel == "run.py":
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in _path_operands(tree):
            text = _text(node)
            name = _run_name(text) if text is not None else None
            if name is not None and (rel, name) not in ALLOWED:
                offenders.append(f"{rel}:{node.lineno} {name!r}")
    return sorted(set(offenders))


def test_no_run_folder_path_is_built_outside_run_py() -> None:
    offenders = run_path_joins()
    assert not offenders, ("run-folder paths built outside translator/run.py (use "
                           f"translator.run.RunLayout): {offenders}")


def test_the_check_sees_each_kind_of_join(tmp_path: Path) -> None:
    """The walk finds a `/` join, an f-string name, a Path() argument and a name compare."""
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "run.py").write_text('A = root / "checkpoints"\n')  # run.py may
    (pkg / "mod.py").write_text(
        'a = root / "checkpoints" / "best.pt"\n'
        'b = root / f"tokenizer_{lang}.json"\n'
        'c = Path(root, "config.yaml")\n'
        'd = folder.name == "eval"\n'
        'e = "config.yaml is a word in a message"\n'  # not a path: left alone
        'f = root / "translator.json"\n')  # an export marker, not a run path
    assert run_path_joins(pkg) == ["mod.py:1 'best.pt'", "mod.py:1 'checkpoints'",
                                   "mod.py:2 'tokenizer_{}.json'", "mod.py:3 'config.yaml'",
                                   "mod.py:4 'eval'"]


def test_files_knows_a_run_folder_as_run_py_does(tmp_path: Path) -> None:
    """The one allowed copy of the run marks (files.protected_reason) agrees with RunLayout."""
    for marks in ((), ("config.yaml",), ("config.yaml", "checkpoints/"),
                  ("config.yaml", "splits.json"), ("checkpoints/", "splits.json")):
        folder = tmp_path / "-".join(m.strip("/") for m in marks or ("empty",))
        folder.mkdir()
        for mark in marks:
            (folder / mark).mkdir() if mark.endswith("/") else (folder / mark).write_text("")
        is_run = protected_reason(folder) == "it is a run folder"
        assert is_run == RunLayout(folder).is_run(), marks


def _imports(path: Path) -> set[str]:
    """Every module `path` imports, at any depth of its code."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_checkpoint_module_imports_neither_config_nor_run() -> None:
    imported = _imports(PACKAGE / "checkpoint.py")
    bad = {m for m in imported if m.startswith(("translator.config", "translator.run"))
           or m in ("translator.config", "translator.run")}
    assert not bad, f"translator/checkpoint.py imports {sorted(bad)}"


def test_both_engines_follow_the_one_rule_for_the_config_in_force(trained_run: Path,
                                                                   tmp_path: Path) -> None:
    """translator.run's rule: config.yaml (and --set) decides decoding and data, the
    checkpoint's saved config decides the model's shape, for the native and the CTranslate2
    engine alike. Here config.yaml was changed after the checkpoint was written (as a resume
    with --set decoding.* does): its decoding is used, its model section is not."""
    import shutil

    import pytest

    from translator.config import load_config, save_run_config
    from translator.decode.translator import Translator
    from translator.run import inference_config

    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    layout = RunLayout(run)
    cfg = load_config(layout.config)
    saved_beam, saved_d_ff = cfg.decoding.beam_size, cfg.model.d_ff
    cfg.decoding.beam_size, cfg.model.d_ff = saved_beam + 2, saved_d_ff * 2
    save_run_config(cfg, layout.config)

    in_force, _, path = inference_config(layout)
    assert path == layout.default_checkpoint()
    assert in_force.decoding.beam_size == saved_beam + 2  # config.yaml's
    assert in_force.model.d_ff == saved_d_ff  # the checkpoint's: it describes the weights
    native = Translator.from_run(run, device="cpu", overrides=["decoding.max_len_b=7"])
    assert native.cfg.decoding.beam_size == saved_beam + 2
    assert native.cfg.decoding.max_len_b == 7
    assert native.cfg.model.d_ff == saved_d_ff  # loaded: config.yaml's d_ff would not fit
    pytest.importorskip("ctranslate2")
    from translator.decode.ct2 import CT2Translator

    ct2 = CT2Translator.from_run(run, "float32", device="cpu",
                                 overrides=["decoding.max_len_b=7"])
    assert ct2.cfg.decoding == native.cfg.decoding
    assert ct2.cfg.data == native.cfg.data
