"""The CLI's edges (issue 14, parts 3 and 4): training logs that read well in a file, the help
of every verb, --version and --debug anywhere, config files that are empty or broken, no raw
library warnings, files that follow the umask, and the benchmark's JSON writer."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import warnings
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

import translator
import translator.train.loop as train_mod
from tests.helpers import raw_config
from translator.checkpoint import atomic_save, load_checkpoint
from translator.cli import app
from translator.config import ConfigError, config_from_dict, load_config
from translator.errors import TranslatorError

ROOT = Path(__file__).resolve().parent.parent
TINY: dict[str, dict[str, Any]] = {
    "data": {"source": "builtin", "builtin_size": 400, "max_len": 40},
    "model": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.0},
    "training": {"epochs": 1, "max_tokens": 800, "lr": 0.003, "warmup_steps": 5,
                 "log_every": 3, "valid_max_sentences": 5, "examples": 1, "threads": 1},
}
VERBS = ("train", "translate", "evaluate", "attention", "average", "export", "serve",
         "info")

pytestmark = pytest.mark.usefixtures("single_thread")


def _raw(run_dir: Path, **training: Any) -> dict[str, Any]:
    return raw_config(TINY, run_dir, **training)


def _cli(*args: str, input: str | None = None) -> tuple[int, str, str, Any]:
    res = CliRunner().invoke(app, list(args), input=input)
    return res.exit_code, res.stdout, res.stderr, res


def _env() -> dict[str, str]:
    # PYTHONPATH: the child imports this tree's translator, whatever is installed.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


# ---------------------------------------------------------------- training logs


def _train_to_file(tmp_path: Path, name: str, *extra: str) -> str:
    """Run `translator train` with stderr going to a file, as `2> log.txt` does."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(yaml.safe_dump(_raw(tmp_path / name)), encoding="utf-8")
    log = tmp_path / f"{name}.log"
    with open(log, "wb") as err:
        proc = subprocess.run([sys.executable, "-m", "translator", "train", "--config",
                               str(config), *extra], stdout=subprocess.PIPE, stderr=err,
                              cwd=ROOT, env=_env(), timeout=300)
    text = log.read_bytes().decode("utf-8")
    assert proc.returncode == 0, text
    assert proc.stdout == b""  # stdout stays free: everything about training is on stderr
    return text


PROGRESS = re.compile(r"^step (\d+)/(\d+) \| epoch 1/1 \| loss \d+\.\d{3} \| lr \d\.\d\de[-+]\d+ "
                      r"\| [\d,]+ tok/s \| elapsed \d+:\d\d:\d\d \| ETA \d+:\d\d:\d\d$")


def test_training_log_in_a_file_is_plain_lines(tmp_path: Path) -> None:
    text = _train_to_file(tmp_path, "loud")
    assert "\r" not in text and "\x1b" not in text
    lines = text.splitlines()
    steps = [int(m[1]) for m in map(PROGRESS.match, lines) if m]
    assert steps and steps[0] == 1 and all(s % 3 == 0 for s in steps[1:]), text
    assert len(steps) >= 3, text
    assert any(line.startswith("run folder ") for line in lines), text
    assert any(line.startswith("validation at step ") and "BLEU" in line for line in lines)
    assert any(line.startswith("  PREDICTED  ") for line in lines)  # training.examples: 1
    assert lines[-1].startswith("done in ")


def test_quiet_drops_only_progress(tmp_path: Path) -> None:
    text = _train_to_file(tmp_path, "quiet", "--quiet")
    lines = text.splitlines()
    assert "\r" not in text
    assert not any(PROGRESS.match(line) or line.startswith("step ") for line in lines), text
    assert any(line.startswith("run folder ") for line in lines), text
    assert any(line.startswith("validation at step ") for line in lines), text
    assert lines[-1].startswith("done in ")


def test_progress_bar_loss_is_a_running_mean_of_every_step(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a terminal the bar's loss is the epoch's mean so far over every step (not only
    every log_every steps), read back from the device whenever the bar redraws."""
    import tqdm

    import translator.train.log as train_log

    monkeypatch.setattr(train_log, "stderr_is_terminal", lambda: True)
    monkeypatch.setattr(train_log, "BAR_REFRESH_S", 0.0)  # redraw at every step
    losses: list[float] = []
    shown: list[tuple[int, float]] = []
    real_step = train_mod.Trainer._step
    real_postfix = tqdm.tqdm.set_postfix

    def step(self: Any, group: Any) -> Any:
        out = real_step(self, group)
        losses.append(float(out.loss))
        return out

    def postfix(self: Any, *args: Any, **kwargs: Any) -> None:
        shown.append((len(losses), float(kwargs["loss"])))
        real_postfix(self, *args, **kwargs)

    monkeypatch.setattr(train_mod.Trainer, "_step", step)
    monkeypatch.setattr(tqdm.tqdm, "set_postfix", postfix)
    cfg = config_from_dict(_raw(tmp_path / "r", log_every=1000, examples=0))
    train_mod.train(cfg)
    assert len(losses) >= 4 and len(shown) == len(losses)
    for k, value in shown:
        assert value == pytest.approx(sum(losses[:k]) / k, abs=6e-4)


def test_tensorboard_train_scalars_share_the_step_axis(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.utils.tensorboard import SummaryWriter

    logged: dict[str, list[int]] = {}
    real = SummaryWriter.add_scalar

    def spy(self: Any, tag: str, value: Any, step: Any = None, *args: Any, **kw: Any) -> Any:
        logged.setdefault(tag, []).append(step)
        return real(self, tag, value, step, *args, **kw)

    monkeypatch.setattr(SummaryWriter, "add_scalar", spy)
    result = train_mod.train(config_from_dict(_raw(tmp_path / "r", epochs=2, examples=0)),
                             quiet=True)
    # Logged at each epoch start: step 0, then the step the first epoch ended at (not 1).
    start, second = logged["train/padding_fraction"]
    assert start == 0 and 1 < second < result.state.step
    assert max(logged["train/loss"]) <= result.state.step


# ---------------------------------------------------------------- help, version, --debug


TYPE_LABEL = re.compile(r"<(?:bool|int|float|str|text|path|file|directory|list\[[^>]*\]|"
                        r"(?:int|float) range)>", re.I)


@pytest.mark.parametrize("verb", VERBS)
def test_every_verb_has_readable_help_with_an_example(verb: str) -> None:
    for flag in ("-h", "--help"):
        code, out, err, _ = _cli(verb, flag)
        assert code == 0, err
        assert f"Example: translator {verb} " in " ".join(out.split()), out
        # Metavars name what a value is; no raw type labels such as <bool> or <list[str]>.
        assert not TYPE_LABEL.search(out), out
        if verb != "info":  # info's one option is a flag: no value, no default to show
            assert "default:" in out


def test_help_shows_metavars_and_defaults() -> None:
    _, out, _, _ = _cli("train", "-h")
    assert "KEY=VALUE" in out and "PATH" in out
    _, out, _, _ = _cli("translate", "-h")
    flat = " ".join(out.split())
    assert "--batch-size N" in flat and "default: 64" in flat and "--n-best N" in flat


def test_version() -> None:
    code, out, _, _ = _cli("--version")
    assert code == 0 and out.strip() == f"translator {translator.__version__}"


def test_debug_works_after_the_verb(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    for args in (["--debug", "train", "--config", str(missing)],
                 ["train", "--debug", "--config", str(missing)],
                 ["train", "--config", str(missing), "--debug"]):
        code, _, _, res = _cli(*args)
        assert code != 0 and isinstance(res.exception, ConfigError), args
    code, _, err, res = _cli("train", "--config", str(missing))
    assert code == 2 and not isinstance(res.exception, TranslatorError)
    assert err.startswith("error: config error: file not found")


# ---------------------------------------------------------------- configs


def test_yaml_syntax_error_keeps_line_and_column(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("model:\n  d_model: 64\n  heads: 4\n layers: 2\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    msg = str(info.value)
    assert "not valid YAML at line 4, column 2:" in msg and "\n" not in msg, msg
    code, _, err, _ = _cli("train", "--config", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "line 4, column 2" in err


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here yet\n"])
def test_empty_config_file_is_an_error(text: str, tmp_path: Path) -> None:
    path = tmp_path / "empty.yaml"
    path.write_text(text, encoding="utf-8")
    code, out, err, _ = _cli("train", "--config", str(path))
    assert code == 2 and out == ""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "empty.yaml is empty" in lines[0] and "base" in lines[0]
    assert not (tmp_path / "runs").exists() and not Path("runs/empty").exists()
    # Settings given by --set alone are settings: the file may then be empty.
    cfg = load_config(path, overrides=["model.d_model=64", "model.heads=4"])
    assert cfg.model.d_model == 64


# ---------------------------------------------------------------- library warnings


def test_no_raw_library_warnings_unless_debug(trained_run: Path, tmp_path: Path) -> None:
    """A foreign pickle (plain `pickle.dumps`, protocol 4) makes torch warn ("Detected pickle
    protocol 4 ...") before it refuses the file: the user sees our one line only; --debug
    lets the warning through."""
    import pickle

    foreign = tmp_path / "foreign.pt"
    foreign.write_bytes(pickle.dumps({"model": {}}, protocol=4))
    args = ["translate", "The dog.", "--run", str(trained_run), "--checkpoint", str(foreign)]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, out, err, _ = _cli(*args)
    assert code == 2 and len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    assert [str(w.message) for w in caught] == []
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        code, _, _, _ = _cli("--debug", *args)
    assert code != 0 and caught  # the same warning, shown with --debug


# ---------------------------------------------------------------- file modes


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(umask: int, mode: int, trained_run: Path,
                                        tmp_path: Path) -> None:
    before = os.umask(umask)
    try:
        ckpt = tmp_path / "c.pt"
        atomic_save({"format_version": 1, "model": {}}, ckpt)
        out = tmp_path / "out.txt"
        code, _, err, _ = _cli("translate", "The dog.", "--run", str(trained_run), "--output",
                               str(out))
        assert code == 0, err
    finally:
        os.umask(before)
    assert (ckpt.stat().st_mode & 0o777) == mode
    assert (out.stat().st_mode & 0o777) == mode
    assert load_checkpoint(ckpt)["model"] == {}


def test_training_checkpoints_follow_the_umask(trained_run: Path) -> None:
    # trained_run was trained under pytest's umask, whatever it is.
    mask = os.umask(0o022)
    os.umask(mask)
    for path in (trained_run / "checkpoints").glob("*.pt"):
        assert (path.stat().st_mode & 0o777) == 0o666 & ~mask, path


# ---------------------------------------------------------------- benchmark --json


def _benchmark(monkeypatch: pytest.MonkeyPatch) -> Any:
    """scripts/benchmark.py with one stand-in suite, `data`, that returns a fixed result."""
    spec = importlib.util.spec_from_file_location("benchmark_script",
                                                  ROOT / "scripts" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(module)
    for name in module.SUITES:
        fake = types.ModuleType(f"bench.{name}")
        fake.add_arguments = lambda group: None
        fake.run = lambda args, name=name: {f"{name}.value": 1.5}
        monkeypatch.setitem(sys.modules, f"bench.{name}", fake)
    return module


@pytest.mark.parametrize("existing", [b"", b"{not json", b"[1, 2]", b"\xff\xfe"])
def test_benchmark_json_replaces_an_unreadable_file_and_keeps_the_results(
        existing: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark(monkeypatch)
    path = tmp_path / "results.json"
    path.write_bytes(existing)
    assert bench.main(["--suite", "data", "--json", str(path)]) == 0
    assert json.loads(path.read_text()) == {"data.value": 1.5}
    assert "warning:" in capsys.readouterr().err
    assert [p.name for p in tmp_path.iterdir()] == ["results.json"]  # no temp file left


def test_benchmark_json_merges_and_never_loses_results(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    bench = _benchmark(monkeypatch)
    path = tmp_path / "results.json"
    path.write_text(json.dumps({"train.value": 3.0}))
    assert bench.main(["--suite", "data", "--json", str(path)]) == 0
    assert json.loads(path.read_text()) == {"data.value": 1.5, "train.value": 3.0}
    # A file that cannot be replaced (here: a folder in its place): the numbers go to stderr.
    blocked = tmp_path / "blocked.json"
    blocked.mkdir()
    capsys.readouterr()
    assert bench.main(["--suite", "data", "--json", str(blocked)]) == 0
    err = capsys.readouterr().err
    assert "cannot write" in err and '"data.value": 1.5' in err
    with pytest.raises(SystemExit):  # a --json folder that does not exist: refused up front
        bench.main(["--suite", "data", "--json", str(tmp_path / "no" / "r.json")])
