"""Reliability and security (issue 7), tried the way a user meets them: untrusted checkpoints,
tokenizers and configs, bad input to `translate`, bad configs and run folders, and faults
during training. docs/reliability.md maps every case to the test that proves it; cases already
proven elsewhere (tests/test_checkpoint.py, test_config.py, test_training.py, ...) are not
repeated here."""

from __future__ import annotations

import ast
import logging
import math
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml
from typer.testing import CliRunner

from tests.helpers import TINY_RUN, raw_config, save_config
from translator.checkpoint import FORMAT_VERSION, atomic_save, load_checkpoint
from translator.cli import app
from translator.config import ConfigError, DecodingConfig, config_from_dict, load_config
from translator.data.sources import check_data_files
from translator.data.tokenizer import UNK_ID, build_tokenizer
from translator.decode.search import translate_ids
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.model.transformer import Transformer
from translator.modeling import build_model
from translator.run import RunLayout
from translator.train.loop import train

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")


def tiny_raw(run_dir: Path, **training: Any) -> dict[str, Any]:
    return raw_config(TINY_RUN, run_dir, **training)


def _copy_run(run: Path, dest: Path) -> Path:
    shutil.copytree(run, dest)
    return dest


def _cli(*args: str, input: str | bytes | None = None) -> tuple[int, str, str]:
    res = CliRunner().invoke(app, list(args), input=input)
    return res.exit_code, res.stdout, res.stderr


def _assert_one_line_error(code: int, out: str, err: str, *needles: str) -> None:
    """Exit code 2, nothing on stdout, exactly one line on stderr holding every needle."""
    assert code == 2, (out, err)
    assert "Traceback" not in out + err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def _subprocess(*args: str, stdin: bytes = b"", timeout: float = 90) -> subprocess.CompletedProcess:
    # PYTHONPATH: a script outside the tree imports this tree's translator package too.
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, *args], input=stdin, capture_output=True, cwd=ROOT,
                          env=env, timeout=timeout)


# ============================================================ 1. untrusted checkpoints, tokenizers


def _calls(tree: ast.AST, module: str, names: set[str]) -> list[ast.Call]:
    return [node for node in ast.walk(tree) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute) and node.func.attr in names
            and isinstance(node.func.value, ast.Name) and node.func.value.id == module]


def test_every_load_in_the_package_is_safe() -> None:
    """Statically: every torch.load passes weights_only=True and a map_location, every YAML
    parse goes through the safe loader, and nothing unpickles directly."""
    torch_loads = yaml_loads = hub_loads = 0
    files = sorted((ROOT / "translator").rglob("*.py"))  # subpackages too (model/, data/...)
    assert len(files) > len(list((ROOT / "translator").glob("*.py")))
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for call in _calls(tree, "datasets", {"load_dataset"}):
            hub_loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("trust_remote_code"), ast.Constant) and \
                kw["trust_remote_code"].value is False, f"{path.name}:{call.lineno}"
        for call in _calls(tree, "torch", {"load"}):
            torch_loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            assert isinstance(kw.get("weights_only"), ast.Constant) and \
                kw["weights_only"].value is True, f"{path.name}:{call.lineno}"
            assert "map_location" in kw, f"{path.name}:{call.lineno}"
        for call in _calls(tree, "yaml", {"load", "load_all", "unsafe_load", "full_load",
                                          "unsafe_load_all", "full_load_all"}):
            yaml_loads += 1
            kw = {k.arg: k.value for k in call.keywords}
            loader = kw.get("Loader")
            assert call.func.attr in ("load", "load_all") and isinstance(loader, ast.Name) \
                and loader.id == "_YamlLoader", f"{path.name}:{call.lineno}"
        assert not _calls(tree, "pickle", {"load", "loads", "Unpickler"}), path.name
    assert torch_loads >= 1 and yaml_loads >= 1 and hub_loads >= 2
    from translator.config import _YamlLoader

    assert issubclass(_YamlLoader, yaml.SafeLoader)


def test_checkpoints_are_mapped_to_the_chosen_device(trained_run: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A checkpoint written on a GPU opens on a CPU-only machine: loads pass map_location."""
    meta = load_checkpoint(RunLayout(trained_run).latest, map_location="meta")
    assert all(t.device.type == "meta" for t in meta["model"].values())
    seen: list[dict[str, Any]] = []
    real_load = torch.load

    def spy(*args: Any, **kwargs: Any) -> Any:
        seen.append(kwargs)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    Translator.from_run(trained_run, device="cpu")
    assert seen and all(k.get("weights_only") is True and k.get("map_location") ==
                        torch.device("cpu") for k in seen)


class _Evil:
    """Unpickling this calls open(marker, 'w'), which creates the marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (self.marker, "w"))


def _with_pickle(good: Path, out: Path, pickle_bytes: bytes) -> None:
    """A copy of the checkpoint zip `good` whose data.pkl is replaced by `pickle_bytes`."""
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, pickle_bytes if info.filename.endswith("/data.pkl")
                          else data)


def _other_vocab_checkpoint(trained_run: Path, path: Path) -> tuple[int, int]:
    """A checkpoint of another run: same model shape, vocabularies from other text."""
    cfg = load_config(RunLayout(trained_run).config)
    src = build_tokenizer(["Hello there, world.", "A cat."], cfg.tokenizer)
    tgt = build_tokenizer(["Hallo Welt.", "Eine Katze."], cfg.tokenizer)
    model = build_model(cfg, src.vocab_size, tgt.vocab_size)
    atomic_save({"format_version": FORMAT_VERSION, "model": model.state_dict(),
                 "config": cfg.to_dict(), "vocab": {"src": src.vocab_size,
                                                    "tgt": tgt.vocab_size}}, path)
    return src.vocab_size, tgt.vocab_size


def _make(kind: str, trained_run: Path, path: Path, marker: Path,
          monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Write a bad checkpoint of `kind` at `path`; returns what the error line must say."""
    latest = RunLayout(trained_run).latest
    if kind == "missing":
        return ["not found"]
    if kind == "truncated":
        path.write_bytes(latest.read_bytes()[: latest.stat().st_size // 2])
        return ["corrupt"]
    if kind == "garbage":
        path.write_bytes(b"this is not a checkpoint\n" * 10)
        return ["corrupt"]
    if kind == "damaged_pickle_memo":  # a pickle asking for a memo entry it never stored
        _with_pickle(latest, path, b"\x80\x02h\x05.")
        return ["corrupt"]
    if kind == "damaged_pickle_stack":  # a pickle that pops from an empty stack
        _with_pickle(latest, path, b"\x80\x02.")
        return ["corrupt"]
    if kind == "future_version":
        ckpt = load_checkpoint(latest)
        ckpt["format_version"] = FORMAT_VERSION + 1
        atomic_save(ckpt, path)
        return ["format", str(FORMAT_VERSION + 1)]
    if kind == "not_a_checkpoint":
        torch.save({"weights": torch.zeros(3)}, path)
        return ["not a translator checkpoint"]
    if kind == "crafted_pickle":
        ckpt = load_checkpoint(latest)
        ckpt["model"]["extra"] = _Evil(marker)  # type: ignore[assignment]
        torch.save(ckpt, path)
        return ["refusing", "could run code"]
    if kind == "other_vocabulary":
        src, tgt = _other_vocab_checkpoint(trained_run, path)
        return ["vocabular", f"{src}/{tgt}"]
    if kind == "unreadable":  # tests run as root here, where chmod 000 stops nothing
        shutil.copyfile(latest, path)
        real_load = torch.load

        def denied(f: Any, *args: Any, **kwargs: Any) -> Any:
            if Path(f) == path:
                raise PermissionError(13, "Permission denied", str(path))
            return real_load(f, *args, **kwargs)

        monkeypatch.setattr(torch, "load", denied)
        return ["Permission denied"]
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", [
    "missing", "truncated", "garbage", "damaged_pickle_memo", "damaged_pickle_stack",
    "future_version", "not_a_checkpoint", "crafted_pickle", "other_vocabulary", "unreadable"])
def test_bad_checkpoint_is_one_line_naming_the_file(kind: str, trained_run: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / f"{kind}.pt"
    marker = tmp_path / "marker"
    needles = _make(kind, trained_run, path, marker, monkeypatch)
    code, out, err = _cli("translate", "The dog sees the cat.", "--run", str(trained_run),
                          "--checkpoint", str(path))
    _assert_one_line_error(code, out, err, str(path), *needles)
    assert not marker.exists()


def test_crafted_checkpoint_would_run_code_but_runs_none(trained_run: Path, tmp_path: Path) -> None:
    """The crafted payload is live (plain pickle runs it), yet neither translate nor evaluate
    nor --resume runs it."""
    live = tmp_path / "live_marker"
    pickle.loads(pickle.dumps(_Evil(live))).close()
    assert live.exists()

    run = _copy_run(trained_run, tmp_path / "run")
    layout = RunLayout(run)
    marker = tmp_path / "marker"
    ckpt = load_checkpoint(layout.latest)
    ckpt["rng"] = _Evil(marker)
    for name in ("latest.pt", "best.pt"):
        (layout.checkpoints / name).unlink()
        torch.save(ckpt, layout.checkpoints / name)
    code, out, err = _cli("translate", "The dog sees the cat.", "--run", str(run))
    _assert_one_line_error(code, out, err, "best.pt", "could run code")
    code, out, err = _cli("evaluate", "--run", str(run))
    _assert_one_line_error(code, out, err, "best.pt", "could run code")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(run)), encoding="utf-8")
    code, out, err = _cli("train", "--config", str(config), "--resume", "--quiet")
    _assert_one_line_error(code, out, err, "latest.pt", "could run code")
    assert not marker.exists()


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no_special_tokens"])
def test_damaged_tokenizer_is_one_line_naming_the_file(damage: str, trained_run: Path,
                                                       tmp_path: Path) -> None:
    run = _copy_run(trained_run, tmp_path / "run")
    path = RunLayout(run).tokenizer("en")
    if damage == "garbage":
        path.write_bytes(b"\x00\xff{ not json")
    elif damage == "truncated":
        path.write_text(path.read_text(encoding="utf-8")[:300], encoding="utf-8")
    else:
        from tokenizers import Tokenizer, models

        Tokenizer(models.WordLevel({"Hund": 0, "[UNK]": 1}, unk_token="[UNK]")).save(str(path))
    code, out, err = _cli("translate", "The dog sees the cat.", "--run", str(run))
    _assert_one_line_error(code, out, err, str(path))


def test_yaml_tags_in_a_run_config_or_override_run_nothing(trained_run: Path,
                                                          tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    payload = f'!!python/object/apply:os.system ["touch {marker}"]'
    run = _copy_run(trained_run, tmp_path / "run")
    good_config = RunLayout(run).config.read_text(encoding="utf-8")
    RunLayout(run).config.write_text(f"model: {payload}\n", encoding="utf-8")
    code, out, err = _cli("translate", "The dog.", "--run", str(run))
    _assert_one_line_error(code, out, err, "config.yaml")
    RunLayout(run).config.write_text(good_config, encoding="utf-8")
    code, out, err = _cli("translate", "The dog.", "--config", str(RunLayout(run).config),
                          "--set", f"model.d_model={payload}")
    _assert_one_line_error(code, out, err, "model.d_model")
    assert not marker.exists()


# ============================================================ 2. bad input to translate


@pytest.mark.parametrize("text", [
    "  The dog   sees  the cat.  ",                  # extra white space
    "Xyzzy plugh frobnicate qwertz.",                # only unknown words
    "🙂🐕🎉 👍🏽",                                      # emoji
    "The\x00 dog\x07 sees\x1b[31m the\x7f cat.",     # control characters
    "The dog\rsees\x0bthe\x0ccat.\nThe cat.",        # line breaks inside the argument
    "مرحبا بالعالم",                                  # Arabic, right to left
    "שלום עולם",                                      # Hebrew, right to left
    "\u202eThe dog sees the cat.\u202c",             # bidi override
    "caf\udce9 The dog.",                            # an undecodable byte in argv
    "\u200b\ufeff\ufffd",                            # zero-width and replacement chars
])
def test_odd_input_gives_one_translated_line(text: str, trained_run: Path) -> None:
    code, out, err = _cli("translate", text, "--run", str(trained_run))
    assert code == 0, err
    assert "Traceback" not in err
    assert out.endswith("\n") and out.count("\n") == 1


def test_only_control_characters_translate_to_an_empty_line(trained_run: Path) -> None:
    """Control characters carry no words: they are not fed to the model as [UNK]s (which
    this model translates into words)."""
    text = "\x07\x1b\x00\x1f"
    translator = Translator.from_run(trained_run, device="cpu")
    raw_ids = translator.src_tok.encode(text)  # what the model would get, uncleaned
    assert raw_ids and set(raw_ids) == {UNK_ID}
    beam = translator.cfg.decoding.beam_size
    unk_output = translate_ids(translator.model, [raw_ids], translator.device,
                               DecodingConfig(beam_size=beam, length_penalty=0.6))
    assert translator.tgt_tok.decode(unk_output[0]).strip()
    code, out, err = _cli("translate", text, "--run", str(trained_run))
    assert code == 0, err
    assert out == "\n"


@pytest.mark.parametrize("text", ["", " ", "\t \t"])
def test_empty_sentence_is_a_one_line_error(text: str, trained_run: Path) -> None:
    code, out, err = _cli("translate", text, "--run", str(trained_run))
    _assert_one_line_error(code, out, err, "empty")


def test_stdin_of_blank_lines_gives_blank_lines(trained_run: Path) -> None:
    code, out, err = _cli("translate", "--run", str(trained_run), input="\n \n\t\n")
    assert code == 0, err
    assert out == "\n\n\n"


def test_invalid_utf8_on_real_stdin(trained_run: Path) -> None:
    proc = _subprocess("-m", "translator", "translate", "--run", str(trained_run),
                       stdin=b"The dog sees the cat.\nThe cat \xff\xfe sleeps.\n")
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert "UTF-8" in err and "line 2" in err


def test_ten_thousand_word_line_is_cut_with_a_warning(trained_run: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """A 10,000-word line (no sentence end to split at) is cut to data.max_len tokens with a
    warning on stderr, and translated in seconds: no out-of-memory, no endless decoding. The
    translation is that of the line's first 38 words (max_len 40 less [SOS] and [EOS])."""
    words = ["the", "big", "dog", "sees", "the", "small", "cat", "and"] * 1250
    line = " ".join(words)
    assert len(words) == 10_000
    translator = Translator.from_run(trained_run, device="cpu")
    assert translator.src_tok.encode(line)[:38] == translator.src_tok.encode(" ".join(words[:38]))
    expected = translator.translate([" ".join(words[:38])])[0]
    widths: list[int] = []
    encode = Transformer.encode

    def spy(self: Transformer, src: torch.Tensor, *args: Any) -> torch.Tensor:
        widths.append(src.shape[1])
        return encode(self, src, *args)

    monkeypatch.setattr(Transformer, "encode", spy)
    assert translator.translate([line])[0] == expected
    assert widths and max(widths) == 40  # the model never sees more than data.max_len
    proc = _subprocess("-m", "translator", "translate", "--run", str(trained_run),
                       stdin=(line + "\n").encode(), timeout=60)  # quickly: or TimeoutExpired
    err = proc.stderr.decode()
    assert proc.returncode == 0, err
    assert proc.stdout.decode() == expected + "\n"
    assert "10000 tokens is cut to its first 38" in err and "data.max_len" in err
    assert "Traceback" not in err


@pytest.mark.parametrize("option", [
    ["--beam", "0"], ["--beam", "-3"], ["--beam", "two"], ["--length-penalty", "nan"],
    ["--length-penalty", "-1"], ["--max-len-a", "inf"], ["--max-len-b", "-1"],
    ["--batch-size", "0"], ["--n-best", "0"]])
def test_bad_decoding_options_are_refused(option: list[str], trained_run: Path) -> None:
    code, out, err = _cli("translate", "The dog.", "--run", str(trained_run), *option)
    assert code == 2, (out, err)
    assert out == "" and "Traceback" not in err
    assert option[0] in err or option[0].lstrip("-").replace("-", "_") in err


@pytest.mark.parametrize("settings", [{"beam_size": 0}, {"beam_size": -1},
                                      {"length_penalty": math.nan},
                                      {"max_len_a": math.inf}, {"max_len_b": -1}])
def test_library_refuses_bad_decoding_settings(settings: dict[str, Any],
                                               trained_run: Path) -> None:
    """The check behind the CLI's option ranges, for library callers."""
    translator = Translator.from_run(trained_run, device="cpu")
    with pytest.raises(ConfigError, match=next(iter(settings))):
        translator.translate(["The dog."], **settings)


def test_debug_shows_the_traceback(trained_run: Path) -> None:
    res = CliRunner().invoke(app, ["--debug", "translate", "The dog.", "--run", str(trained_run),
                                   "--checkpoint", str(trained_run / "nope.pt")])
    assert res.exit_code != 0
    assert isinstance(res.exception, TranslatorError)
    res = CliRunner().invoke(app, ["translate", "The dog.", "--run", str(trained_run),
                                   "--checkpoint", str(trained_run / "nope.pt")])
    assert res.exit_code == 2 and not isinstance(res.exception, TranslatorError)


def test_unreadable_input_file_is_one_line(trained_run: Path, tmp_path: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    src = tmp_path / "in.txt"
    src.write_text("The dog.\n", encoding="utf-8")
    real = Path.read_bytes

    def denied(self: Path) -> bytes:
        if self == src:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", denied)
    code, out, err = _cli("translate", "--input", str(src), "--run", str(trained_run))
    _assert_one_line_error(code, out, err, str(src), "Permission denied")


# ============================================================ 3. bad configs and run folders


def _config_error(text: str, tmp_path: Path) -> str:
    path = tmp_path / "c.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return str(info.value)


def test_yaml_alias_bomb_gives_a_short_message(tmp_path: Path) -> None:
    """Nine levels of nine aliases each expand to 9**9 items when printed: the message quotes
    a bounded excerpt (depth 5 here: in full it would be ~350 kB)."""
    value = "[x, x, x, x, x, x, x, x, x]"
    anchors = [f"&a0 {value}"]
    for i in range(1, 5):
        anchors.append(f"&a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    start = time.monotonic()
    msg = _config_error("training:\n  lr: [" + ", ".join(anchors) + "]\n", tmp_path)
    assert "training.lr" in msg and len(msg) < 500
    assert time.monotonic() - start < 5


@pytest.mark.parametrize(("text", "needle"), [
    ("model:\n  d_model: " + "9" * 400 + "\n", "model.d_model"),      # beyond int64 / float
    ("training:\n  lr: " + "9" * 400 + "\n", "training.lr"),
    ("training:\n  seed: 99999999999999999999\n", "training.seed"),  # torch cannot seed it
    ("model:\n  d_model: " + "9" * 5000 + "\n", "not valid YAML"),   # past Python's int limit
    ("[" * 5000, "not valid YAML"),                                  # deeper than the stack
    ('model:\n  "d_mo\\ndel": 3\n', "model.d_mo del"),              # a key with a line break
])
def test_hostile_config_values_are_config_errors(text: str, needle: str,
                                                 tmp_path: Path) -> None:
    msg = _config_error(text, tmp_path)
    assert needle in msg and "\n" not in msg


def test_impossible_data_dir_is_a_config_error_where_data_is_read(tmp_path: Path) -> None:
    """A folder name too long for the OS: reading the config checks no folder, reading the
    data names the key in one line."""
    path = tmp_path / "c.yaml"
    path.write_text("data:\n  source: text\n  dir: " + "d" * 5000 + "\n", encoding="utf-8")
    cfg = load_config(path)
    with pytest.raises(ConfigError, match="data.dir: folder not found"):
        check_data_files(cfg.data)


def test_config_error_with_a_line_break_is_one_line_on_the_cli(tmp_path: Path) -> None:
    config = tmp_path / "bad.yaml"
    config.write_text('model:\n  "d_model\\n  heads": 3\n', encoding="utf-8")
    code, out, err = _cli("train", "--config", str(config))
    _assert_one_line_error(code, out, err, "d_model", "heads")


def test_unreadable_config_is_a_config_error(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("model: {}\n", encoding="utf-8")

    def denied(self: Path, *args: Any, **kwargs: Any) -> str:
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", denied)
    with pytest.raises(ConfigError, match="Permission denied"):
        load_config(path)


def test_folder_of_another_run_is_refused_unless_resume_or_overwrite(trained_run: Path,
                                                                     tmp_path: Path) -> None:
    run = _copy_run(trained_run, tmp_path / "run")
    layout = RunLayout(run)
    before = {p.name: p.read_bytes() for p in layout.checkpoints.iterdir()}
    saved_config = layout.config.read_text(encoding="utf-8")
    raw = tiny_raw(run, max_steps=1)
    raw["model"]["d_model"] = 16  # a different run
    config = tmp_path / "other.yaml"
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")

    code, out, err = _cli("train", "--config", str(config), "--quiet")
    _assert_one_line_error(code, out, err, str(run), "already holds a run", "--resume",
                           "--overwrite")
    code, out, err = _cli("train", "--config", str(config), "--quiet", "--resume")
    _assert_one_line_error(code, out, err, "--resume", "config differs")
    assert {p.name: p.read_bytes() for p in layout.checkpoints.iterdir()} == before
    assert layout.config.read_text(encoding="utf-8") == saved_config

    code, out, err = _cli("train", "--config", str(config), "--quiet", "--overwrite")
    assert code == 0, err
    ckpt = load_checkpoint(layout.latest)
    assert ckpt["step"] == 1 and ckpt["config"]["model"]["d_model"] == 16
    assert not set(p.name for p in layout.numbered_checkpoints()) & set(before)


# ============================================================ 4. faults during training


def test_non_finite_steps_are_skipped_counted_and_stop_the_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Training forwards 2, 4 and 6 have a NaN loss, then every one from 8 on: each is skipped
    and logged, the count of bad steps in a row restarts after a good one (the isolated ones
    never stop the run), and max_bad_steps=3 in a row stop it with an error naming the last
    good checkpoint, which is whole and finite."""
    original = Transformer.forward
    calls = {"n": 0}

    def nan_steps(self: Transformer, *args: Any, **kwargs: Any) -> Any:
        out = original(self, *args, **kwargs)
        if self.training:
            calls["n"] += 1
            if calls["n"] in (2, 4, 6) or calls["n"] >= 8:
                return out * float("nan")
        return out

    monkeypatch.setattr(Transformer, "forward", nan_steps)
    caplog.set_level(logging.WARNING, logger="translator")
    cfg = config_from_dict(tiny_raw(tmp_path / "r", epochs=50, save_every=2, max_bad_steps=3),
                           name="tiny")
    with pytest.raises(TranslatorError, match="3 steps in a row had a non-finite") as err:
        train(cfg, quiet=True)
    assert "latest.pt" in str(err.value) and calls["n"] == 10
    skipped = [r.getMessage() for r in caplog.records if "non-finite" in r.getMessage()]
    in_a_row = [re.search(r"\((\d+) in a row\)", m)[1] for m in skipped]  # type: ignore[index]
    assert in_a_row == ["1", "1", "1", "1", "2", "3"], skipped
    ckpt = load_checkpoint(RunLayout(tmp_path / "r").latest)
    assert ckpt["step"] == 4  # the good steps: forwards 1, 3, 5 and 7
    assert all(torch.isfinite(v).all() for v in ckpt["model"].values() if v.is_floating_point())


KILL_MID_WRITE = textwrap.dedent("""
    import os, shutil, signal, sys
    from pathlib import Path
    import torch
    from translator import checkpoint as ck
    from translator.run import RunLayout

    folder, moment = Path(sys.argv[1]), sys.argv[2]
    layout = RunLayout(folder)
    ckpt = ck.load_checkpoint(layout.latest)  # the run's next checkpoint, one step on
    ckpt["step"] += 1
    ckpt["model"] = {k: v + 1 if v.is_floating_point() else v for k, v in ckpt["model"].items()}

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if moment == "save":        # killed half way through writing the new latest.pt itself
        real_save = torch.save
        def half_save(obj, f, *args, **kwargs):
            real_save(obj, f, *args, **kwargs)
            f.truncate(f.tell() // 2)
            f.flush()
            die()
        torch.save = half_save
        ck.atomic_save(ckpt, layout.latest)
    elif moment == "copy":      # killed half way through copying a checkpoint to latest.pt
        numbered = layout.numbered(ckpt["epoch"], ckpt["step"])
        ck.atomic_save(ckpt, numbered)
        def no_link(*args):
            raise OSError("no hard links here")
        def half_copy(src, dst):
            data = Path(src).read_bytes()
            with open(dst, "wb") as f:
                f.write(data[: len(data) // 2])
            die()
        os.link, shutil.copyfile = no_link, half_copy
        ck.atomic_link(numbered, layout.latest)
    elif moment == "rename":    # killed just before the rename that publishes a write
        def replace(*args):
            die()
        os.replace = replace
        ck.atomic_save(ckpt, layout.latest)
    print("not killed")
""")


@pytest.mark.parametrize("moment", ["save", "copy", "rename"])
def test_kill_9_in_the_middle_of_a_checkpoint_write_keeps_latest_whole(
        moment: str, trained_run: Path, tmp_path: Path) -> None:
    """The worst moments of a kill -9, on purpose: SIGKILL half way through writing or copying
    a run's next checkpoint, or right before its rename. latest.pt is still the previous,
    whole checkpoint, every file with a checkpoint name loads, and --resume continues."""
    run = _copy_run(trained_run, tmp_path / "run")
    layout = RunLayout(run)
    before = load_checkpoint(layout.latest)
    script = tmp_path / "kill.py"
    script.write_text(KILL_MID_WRITE, encoding="utf-8")
    proc = _subprocess(str(script), str(run), moment)
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()
    ckpt = load_checkpoint(layout.latest)
    assert ckpt["step"] == before["step"]
    for name, value in before["model"].items():
        assert torch.equal(ckpt["model"][name], value), name
    for path in layout.numbered_checkpoints():
        load_checkpoint(path)
    step = ckpt["step"]
    cfg = config_from_dict(tiny_raw(run, epochs=2, max_steps=step + 2), name="tiny")
    assert train(cfg, resume=True, quiet=True).state.step == step + 2


def test_failed_checkpoint_write_stops_the_cli_cleanly(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """Disk full at the second checkpoint: training stops with one line naming the checkpoint,
    exit 2, and the first checkpoint is still latest.pt."""
    import translator.train.book as book

    original: Callable[..., None] = book.atomic_save
    calls = {"n": 0}

    def full_disk(obj: dict[str, Any], path: Path) -> None:
        calls["n"] += 1
        if calls["n"] >= 2:
            raise OSError(28, "No space left on device")
        original(obj, path)

    monkeypatch.setattr(book, "atomic_save", full_disk)
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_raw(tmp_path / "run", save_every=1, max_steps=4)),
                      encoding="utf-8")
    code, out, err = _cli("train", "--config", str(config), "--quiet")
    _assert_one_line_error(code, out, err, "could not write checkpoint", "No space left",
                           "intact")
    assert load_checkpoint(RunLayout(tmp_path / "run").latest)["step"] == 1


def test_save_config_round_trips_through_the_safe_loader(tmp_path: Path) -> None:
    """What a run writes, it can read back with the safe loader (no Python tags)."""
    cfg = config_from_dict(tiny_raw(tmp_path / "r"), name="tiny")
    save_config(cfg, tmp_path / "c.yaml")
    assert "!!python" not in (tmp_path / "c.yaml").read_text(encoding="utf-8")
    assert load_config(tmp_path / "c.yaml").to_dict() == cfg.to_dict()


# ============================================================ 6. the reliability table


def test_reliability_table_names_real_tests_and_all_of_these() -> None:
    """docs/reliability.md cites only tests that exist, and every test of this file, of
    test_trust.py and of test_fuzz.py appears in it."""
    text = (ROOT / "docs" / "reliability.md").read_text(encoding="utf-8")
    cited = set(re.findall(r"`(tests/\w+\.py)::(\w+)`", text))
    assert cited
    defined: dict[str, set[str]] = {}
    every = ("tests/test_reliability.py", "tests/test_trust.py", "tests/test_fuzz.py")
    for file, _ in cited | {(f, "") for f in every}:
        tree = ast.parse((ROOT / file).read_text(encoding="utf-8"))
        defined[file] = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)
                         and n.name.startswith("test_")}
    missing = sorted(f"{f}::{n}" for f, n in cited if n not in defined[f])
    assert not missing, f"the table cites tests that do not exist: {missing}"
    for file in every:
        uncited = sorted(defined[file] - {n for f, n in cited if f == file})
        assert not uncited, f"{file} tests missing from docs/reliability.md: {uncited}"
