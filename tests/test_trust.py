"""Nothing a user types destroys their work (issue 30): `export --force` replaces only what is
provably ours, `-o` writes into devices, FIFOs and links instead of replacing them, every run
file survives a full disk, one trainer per run folder, and loaders that run no code and
trust no stored shape. docs/reliability.md maps each guarantee to its test."""

from __future__ import annotations

import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import torch

from translator.checkpoint import (
    FORMAT_VERSION,
    SAFE_TORCH,
    CheckpointError,
    atomic_link,
    atomic_save,
    average_checkpoints,
    check_safe_torch,
    load_checkpoint,
)
from translator.config import load_config
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.files import (
    EXPORT_MARKER,
    WriteError,
    atomic_open,
    atomic_write,
    check_replaceable,
    replace_dir,
)
from translator.run import RunLayout, RunLock

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.usefixtures("single_thread")
SENTENCE = "The dog sees the cat."


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT),
                                                        os.environ.get("PYTHONPATH")]))}


def _translator(*args: str, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    """A real `translator` process (the user's shell), run from ROOT."""
    return subprocess.run([sys.executable, "-m", "translator", *args], capture_output=True,
                          text=True, cwd=kwargs.pop("cwd", ROOT), env=kwargs.pop("env", _env()),
                          timeout=timeout, **kwargs)


def _one_line_error(proc: subprocess.CompletedProcess, *needles: str) -> None:
    """A non-zero exit, no traceback, and one `error:` line (training's start-up lines may
    come before it) holding every needle."""
    assert proc.returncode != 0, proc.stdout
    assert "Traceback" not in proc.stderr, proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    for needle in needles:
        assert needle in errors[0], (needle, errors[0])


def _translates(run: Path) -> str:
    proc = _translator("translate", "--run", str(run), SENTENCE)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    return proc.stdout


# -- export --force -------------------------------------------------------------------------


def test_export_force_onto_the_run_folder_is_refused_and_the_run_still_translates(
        trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    before = sorted(p.relative_to(run) for p in run.rglob("*"))
    proc = _translator("export", "--run", str(run), "--out", str(run), "--force")
    _one_line_error(proc, "refusing to export", "run folder")
    assert sorted(p.relative_to(run) for p in run.rglob("*")) == before
    _translates(run)


@pytest.mark.parametrize("target", ["parent", "cwd", "home", "checkpoints", "foreign"])
def test_export_force_replaces_nothing_that_is_not_ours(target: str, trained_run: Path,
                                                        tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    runs = tmp_path / "runs"
    run = runs / "tiny"
    shutil.copytree(trained_run, run)
    work, home = tmp_path / "work", tmp_path / "home"
    for folder in (work, home):
        folder.mkdir()
        (folder / "notes.txt").write_text("mine", encoding="utf-8")
    monkeypatch.chdir(work)
    monkeypatch.setenv("HOME", str(home))
    out = {"parent": runs, "cwd": work, "home": home, "checkpoints": run / "checkpoints" / "x",
           "foreign": tmp_path / "photos"}[target]
    if target == "foreign":
        out.mkdir()
        (out / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(TranslatorError) as err:
        check_replaceable(out, force=True, run_dirs=(run,))
    assert "\n" not in str(err.value)
    assert (work / "notes.txt").is_file() and (home / "notes.txt").is_file()
    assert RunLayout(run).default_checkpoint().is_file()
    if target == "foreign":
        assert (out / "cat.jpg").is_file() and EXPORT_MARKER in str(err.value)


def test_export_force_replaces_a_previous_export_whole(trained_run: Path, tmp_path: Path) -> None:
    pytest.importorskip("ctranslate2")
    from translator.decode.ct2 import CT2Translator, export_ctranslate2

    out = tmp_path / "export"
    export_ctranslate2(trained_run, out, "int8")
    with pytest.raises(TranslatorError, match="add --force"):
        export_ctranslate2(trained_run, out, "int8")
    export_ctranslate2(trained_run, out, "float32", force=True)
    assert CT2Translator.from_dir(out).quantization == "float32"
    # No temp or old folder is left beside it.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


def test_a_crash_while_building_an_export_leaves_the_old_one_whole(tmp_path: Path) -> None:
    out = tmp_path / "export"
    replace_dir(out, lambda tmp: atomic_write(tmp / EXPORT_MARKER, "{}"))
    (out / "model.bin").write_bytes(b"old weights")

    def crash(tmp: Path) -> None:
        (tmp / "model.bin").write_bytes(b"half")
        raise OSError(28, "No space left on device")

    with pytest.raises(WriteError, match="No space left"):
        replace_dir(out, crash)
    assert (out / "model.bin").read_bytes() == b"old weights"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# -- -o / --output ----------------------------------------------------------------------------


@pytest.mark.skipif(not os.access("/dev/null", os.W_OK), reason="needs a writable /dev/null")
def test_translate_output_to_dev_null_leaves_the_device(trained_run: Path) -> None:
    proc = _translator("translate", "--run", str(trained_run), "-o", "/dev/null", SENTENCE)
    assert proc.returncode == 0, proc.stderr
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)


def test_translate_output_to_a_fifo_reaches_its_reader(trained_run: Path,
                                                       tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    proc = _translator("translate", "--run", str(trained_run), "-o", str(fifo), SENTENCE)
    reader.join(timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert got and got[0].decode().strip() == _translates(trained_run).strip()
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)


def test_output_through_a_symlink_writes_its_target(tmp_path: Path) -> None:
    target = tmp_path / "real.txt"
    target.write_text("old", encoding="utf-8")
    link = tmp_path / "link.txt"
    link.symlink_to(target)
    with atomic_open(link) as f:
        f.write("new\n")
    assert link.is_symlink() and target.read_text(encoding="utf-8") == "new\n"


def test_output_naming_a_folder_is_refused_before_any_work(trained_run: Path,
                                                           tmp_path: Path) -> None:
    started = time.monotonic()
    proc = _translator("translate", "--run", str(trained_run), "-i", os.devnull, "-o",
                       str(tmp_path))
    _one_line_error(proc, "is a folder")
    proc = _translator("average", "--run", str(trained_run), "--last", "1", "--output",
                       str(tmp_path))
    _one_line_error(proc, "is a folder")
    assert time.monotonic() - started < 60


def test_average_output_to_a_fifo_reaches_its_reader(trained_run: Path, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()), daemon=True)
    reader.start()
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    atomic_save(average_checkpoints([RunLayout(run).latest]), fifo)
    reader.join(timeout=60)
    saved = tmp_path / "copy.pt"
    saved.write_bytes(got[0])
    assert "model" in load_checkpoint(saved)


# -- a full disk, for real --------------------------------------------------------------------

FSIZE_RUN = textwrap.dedent("""
    import resource, runpy, sys
    limit = int(sys.argv.pop(1))
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    sys.argv[0] = "translator"
    runpy.run_module("translator", run_name="__main__")
""")


@pytest.mark.parametrize("limit", [1024, 64 * 1024])
def test_resume_on_a_full_disk_is_one_line_and_the_run_still_works(limit: int, trained_run: Path,
                                                                   tmp_path: Path) -> None:
    """A real file-size limit (RLIMIT_FSIZE, what `ulimit -f` sets): 1 KB fails the config
    write, 64 KB a checkpoint or tokenizer write. Either way: one line, and the run still
    translates and resumes."""
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    config = (run / "config.yaml").read_bytes()
    script = tmp_path / "limited.py"
    script.write_text(FSIZE_RUN, encoding="utf-8")
    proc = subprocess.run([sys.executable, str(script), str(limit), "train", "--run", str(run),
                           "--resume", "--quiet", "--set", "training.epochs=3"],
                          capture_output=True, text=True, cwd=ROOT, env=_env(), timeout=180)
    _one_line_error(proc, "error:")
    assert "File too large" in proc.stderr or "could not write" in proc.stderr, proc.stderr
    if limit == 1024:  # the config write itself failed: the old file is whole
        assert (run / "config.yaml").read_bytes() == config
    else:  # the config (epochs=3) was written; a checkpoint or tokenizer write failed
        assert load_config(run / "config.yaml").training.epochs == 3
    assert not [p for p in run.rglob("*.tmp*")]
    _translates(run)
    proc = _translator("train", "--run", str(run), "--resume", "--quiet", "--set",
                       "training.epochs=2")
    assert proc.returncode == 0, proc.stderr


# -- one trainer per run folder ---------------------------------------------------------------

HOLDER = textwrap.dedent("""
    import sys, time
    from translator.run import lock_run
    lock_run(sys.argv[1])
    print("locked", flush=True)
    time.sleep(120)
""")


def test_a_second_trainer_is_refused_naming_the_holder_until_it_dies(trained_run: Path,
                                                                      tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    script = tmp_path / "holder.py"
    script.write_text(HOLDER, encoding="utf-8")
    holder = subprocess.Popen([sys.executable, str(script), str(run)], stdout=subprocess.PIPE,
                              text=True, cwd=ROOT, env=_env())
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = load_checkpoint(RunLayout(run).latest)["step"]
        proc = _translator("train", "--run", str(run), "--resume", "--quiet", "--set",
                           "training.epochs=2")
        _one_line_error(proc, "being trained by process", str(holder.pid))
        assert load_checkpoint(RunLayout(run).latest)["step"] == before
    finally:
        holder.send_signal(signal.SIGKILL)  # a crash: the kernel drops the lock with it
        holder.wait()
    proc = _translator("train", "--run", str(run), "--resume", "--quiet", "--set",
                       "training.epochs=2")
    assert proc.returncode == 0, proc.stderr


def test_lock_is_exclusive_across_open_files(tmp_path: Path) -> None:
    first = RunLock(tmp_path).acquire()
    try:
        with pytest.raises(TranslatorError, match=str(os.getpid())):
            RunLock(tmp_path).acquire()
    finally:
        first.release()
    RunLock(tmp_path).acquire().release()


def test_links_use_unique_temp_names(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two writers linking latest.pt at once never share a temp name (the old fixed
    `.latest.pt.link.tmp` let one process copy its bytes through the other's link)."""
    src = tmp_path / "a.pt"
    atomic_save({"format_version": FORMAT_VERSION, "model": {}}, src)
    seen: list[str] = []
    replace = os.replace

    def spy(a: str, b: str) -> None:
        seen.append(Path(a).name)
        replace(a, b)

    monkeypatch.setattr(os, "replace", spy)
    atomic_link(src, tmp_path / "latest.pt")
    atomic_link(src, tmp_path / "latest.pt")
    assert len(set(seen)) == 2 and ".latest.pt.link.tmp" not in seen


# -- loaders that run no code and trust no stored shape -------------------------------------


def test_old_torch_is_refused_and_the_floor_is_in_pyproject() -> None:
    with pytest.raises(CheckpointError, match="cannot load checkpoints safely"):
        check_safe_torch("2.9.1+cpu")
    check_safe_torch("2.10.0")
    text = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    floors = {name: (int(major), int(minor)) for name, major, minor in
              re.findall(r'^\s*"([\w-]+)>=(\d+)\.(\d+)', text, re.M)}
    assert floors["torch"] >= SAFE_TORCH
    assert floors["datasets"] >= (4, 0)  # no dataset loading scripts at all


def _tiny_checkpoint(path: Path, **config_model: int) -> Path:
    model = {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, **config_model}
    atomic_save({"format_version": FORMAT_VERSION, "model": {"x": torch.zeros(2)},
                 "config": {"model": model}, "vocab": {"src": 40, "tgt": 40}}, path)
    return path


@pytest.mark.parametrize("change", ["d_ff", "layers", "vocab_type", "max_len"])
def test_a_checkpoint_config_asking_for_huge_shapes_is_refused_before_allocating(
        change: str, trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    ckpt = load_checkpoint(RunLayout(run).default_checkpoint())
    if change == "d_ff":
        ckpt["config"]["model"]["d_ff"] = 2 ** 20
    elif change == "layers":
        ckpt["config"]["model"]["layers"] = 100_000
    elif change == "vocab_type":
        ckpt["vocab"] = {"src": "many", "tgt": [1]}
    else:
        ckpt["config"]["data"]["max_len"] = 2 ** 40  # a sinusoid table of 2**40 rows
        ckpt["config"]["training"]["max_tokens"] = 2 ** 41  # so that the config validates
    path = RunLayout(run).checkpoints / "hostile.pt"
    atomic_save(ckpt, path)
    assert path.stat().st_size < 10 ** 6
    with pytest.raises(CheckpointError) as err:
        Translator.from_run(run, path, device="cpu")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_averaging_checkpoints_of_different_shapes_is_one_line(tmp_path: Path) -> None:
    a, b = tmp_path / "a.pt", tmp_path / "b.pt"
    atomic_save({"format_version": FORMAT_VERSION, "model": {"w": torch.zeros(2, 3)}}, a)
    atomic_save({"format_version": FORMAT_VERSION, "model": {"w": torch.zeros(3, 2)}}, b)
    with pytest.raises(CheckpointError, match="different models"):
        average_checkpoints([a, b])


def test_resuming_from_an_averaged_latest_is_one_line(trained_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(trained_run, run)
    latest = RunLayout(run).latest
    averaged = average_checkpoints([latest])
    latest.unlink()
    atomic_save(averaged, latest)
    proc = _translator("train", "--run", str(run), "--resume", "--quiet", "--set",
                       "training.epochs=2")
    _one_line_error(proc, "holds no training state", "translator average")


def test_the_seed_api_imports_from_the_model_package() -> None:
    proc = subprocess.run([sys.executable, "-c", "from translator.model import "
                           "build_transformer, Transformer; m = build_transformer(11, 13, 8, 8, "
                           "d_model=16, N=1, h=2, d_ff=32); print(type(m).__name__, "
                           "isinstance(m, Transformer))"], capture_output=True, text=True,
                          cwd=ROOT, env=_env(), timeout=60)
    assert proc.stdout.split() == ["Transformer", "True"], proc.stderr


def test_translate_config_with_a_model_override_is_refused_not_dropped(
        trained_run: Path, tmp_path: Path) -> None:
    config = tmp_path / "c.yaml"
    text = (trained_run / "config.yaml").read_text(encoding="utf-8")
    config.write_text(text + f"output:\n  dir: {trained_run}\n", encoding="utf-8")
    import yaml

    raw = yaml.safe_load(text)
    raw["output"] = {"dir": str(trained_run)}
    config.write_text(yaml.safe_dump(raw), encoding="utf-8")
    proc = _translator("translate", "--config", str(config), "--set", "model.d_model=64",
                       SENTENCE)
    _one_line_error(proc, "model.d_model")


def test_api_key_given_as_a_flag_guards_the_server(trained_run: Path, tmp_path: Path) -> None:
    """`--api-key KEY` on the command line (not only TRANSLATOR_API_KEY) is enforced."""
    httpx = pytest.importorskip("httpx")
    from tests.test_serve import server_process

    env = {k: v for k, v in os.environ.items() if k != "TRANSLATOR_API_KEY"}
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("TRANSLATOR_API_KEY", raising=False)
        with server_process(trained_run, tmp_path, "--api-key", "s3cret", env=env) as (url, _):
            body = {"q": SENTENCE, "source": "en", "target": "de"}
            assert httpx.post(f"{url}/translate", json=body).status_code in (401, 403)
            wrong = httpx.post(f"{url}/translate", json={**body, "api_key": "nope"})
            assert wrong.status_code == 403
            right = httpx.post(f"{url}/translate", json={**body, "api_key": "s3cret"})
            assert right.status_code == 200 and right.json()["translatedText"]
