"""The one place that knows a run folder: its layout, finding a run from `--run` / `--config` /
`--checkpoint`, starting, resuming or fine-tuning one, the lock that keeps one trainer per
folder, and which config is in force when a trained run translates. Nothing outside this
module joins a path inside a run (`tests/test_run_paths.py` checks it).

A run folder holds everything needed to reproduce and to translate:

    runs/<name>/config.yaml            the resolved config (no path into the run: a moved or
                                       copied folder is still a whole run)
    runs/<name>/tokenizer_<lang>.json  one tokenizer per language
    runs/<name>/splits.json            split seed and sizes (checked on resume)
    runs/<name>/init.json              fine-tuned runs: the base run and checkpoint
    runs/<name>/checkpoints/           epoch/step checkpoints, latest.pt, best.pt, averaged.pt
    runs/<name>/tensorboard/           event files
    runs/<name>/eval/                  evaluation reports
    runs/<name>/export/ctranslate2-<q> the CTranslate2 export the ctranslate2 engine caches
    runs/<name>/.lock                  held by the process training the run

The config in force at inference (both engines, `inference_config`):
- the run's own config.yaml, with the `--set` overrides, which may change only `decoding.*`
  and `data.*` (how to decode, where the corpus now is), because the checkpoint fixes the rest;
- except what describes the weights, `model.*`, `tokenizer.*` and `data.max_len`, which come
  from the config saved inside the checkpoint when it holds one this version reads: the
  checkpoint is what gets loaded, and it may be another run's, an averaged one, or a best.pt
  older than a resume;
- a checkpoint without a config, or with one this version rejects, leaves config.yaml whole
  (and must then fit it, `translator.modeling.check_checkpoint_fits`).
The checkpoint is the one named, else the run's best.pt, else latest.pt.

The resume rule (docs/reliability.md has it as a table):
- allowed: `RESUME_SAFE_KEYS` (when and how long it trains, validates, logs and saves; threads,
  device, data.num_proc, data.cache_dir) and `decoding.*`;
- allowed when the files there give the same split record (sizes and content hashes in
  splits.json): `data.dir` or a corpus' `dir`, i.e. a moved corpus;
- refused: anything else (model, tokenizer, which data, lr, seed, batch size, ...), because
  it changes what a step computes.
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from translator.checkpoint import (
    CheckpointError,
    atomic_save,
    average_checkpoints,
    load_checkpoint,
)
from translator.config import (
    RESUME_SAFE_KEYS,
    Config,
    ConfigError,
    config_diff,
    config_from_dict,
    init_changes,
    load_config,
    parse_override,
    save_run_config,
)
from translator.errors import TranslatorError
from translator.files import resolve_target

CONFIG_NAME = "config.yaml"
CHECKPOINTS = "checkpoints"


def tokenizer_file(lang: str) -> str:
    """The file name of a language's tokenizer, in a run folder and in an export alike."""
    return f"tokenizer_{lang}.json"


@dataclass(frozen=True)
class RunLayout:
    """Paths inside one run folder."""

    root: Path

    @property
    def config(self) -> Path:
        return self.root / CONFIG_NAME

    def tokenizer(self, lang: str) -> Path:
        return self.root / tokenizer_file(lang)

    @property
    def splits(self) -> Path:
        """The split record: seed and sizes of train/valid/test (checked on resume)."""
        return self.root / "splits.json"

    @property
    def init(self) -> Path:
        """The record of a fine-tuned run's starting point (`train --init-from`)."""
        return self.root / "init.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / CHECKPOINTS

    @property
    def latest(self) -> Path:
        return self.checkpoints / "latest.pt"

    @property
    def best(self) -> Path:
        return self.checkpoints / "best.pt"

    @property
    def averaged(self) -> Path:
        """Where `translator average` writes by default."""
        return self.checkpoints / "averaged.pt"

    @property
    def tensorboard(self) -> Path:
        return self.root / "tensorboard"

    @property
    def eval(self) -> Path:
        """Evaluation reports; an export folder keeps its own in the same place."""
        return self.root / "eval"

    def ct2_export(self, quantization: str) -> Path:
        """The CTranslate2 export the ctranslate2 engine makes and reuses for this run."""
        return self.root / "export" / f"ctranslate2-{quantization}"

    def numbered(self, epoch: int, step: int) -> Path:
        """Name of a periodic checkpoint; zero-padded so names sort in training order."""
        return self.checkpoints / f"epoch{epoch:03d}_step{step:08d}.pt"

    def numbered_checkpoints(self) -> list[Path]:
        """Periodic checkpoints, oldest first."""
        return sorted(self.checkpoints.glob("epoch*_step*.pt"))

    def default_checkpoint(self) -> Path:
        """What translate/evaluate use: best.pt if it exists, else latest.pt."""
        return self.best if self.best.is_file() else self.latest

    def load_config(self, overrides: Sequence[str] = ()) -> Config:
        """The run's own config with `--set` overrides applied; `output.dir` is this folder,
        wherever it has been moved or copied to."""
        if not self.root.is_dir():
            raise TranslatorError(f"run folder not found: {self.root}")
        if not self.config.is_file():
            raise TranslatorError(f"{self.root} is not a run folder (no config.yaml)")
        cfg = load_config(self.config, list(overrides))
        cfg.output.dir, cfg.name = str(self.root), self.root.resolve().name
        return cfg

    @classmethod
    def of_file(cls, path: Path) -> RunLayout | None:
        """The run folder that a config.yaml or a checkpoint file belongs to, if any: the
        file's folder, or for a file in checkpoints/ the folder above, holding a config.yaml."""
        folder = path.resolve().parent
        if folder.name == CHECKPOINTS and not (folder / CONFIG_NAME).is_file():
            folder = folder.parent
        layout = cls(folder)
        return layout if layout.is_run() else None

    def is_run(self) -> bool:
        """Whether the folder holds a run that training started: a config and its checkpoints
        folder or split record (a lone config.yaml is just a config)."""
        return self.config.is_file() and (self.checkpoints.is_dir() or self.splits.is_file())


def latest_run(runs_root: str | Path = "runs") -> Path | None:
    """The run folder under `runs_root` whose latest checkpoint is newest, if any."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    candidates = [p for p in root.iterdir() if RunLayout(p).latest.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: os.path.getmtime(RunLayout(p).latest))


# -- finding a trained run --------------------------------------------------------------------


def find_run(run: Path | None, config: Path | None, overrides: Sequence[str] | None,
             checkpoint: Path | None = None,
             announce: Callable[[Path], None] | None = None) -> tuple[Path, list[str]]:
    """The run folder a model-reading verb uses (--run; the run of --config; the run that
    --checkpoint lies in; else the newest under runs/, passed to `announce`) and the --set
    overrides for loading it (with --config, those that only located the run are dropped)."""
    overrides = list(overrides or [])
    if run is not None:
        return run, overrides
    if config is not None:
        # output.* only located the run; anything else goes on to be checked (and a model.*
        # or training.* key refused: a trained run's shape is its checkpoint's).
        kept = [o for o in overrides if parse_override(o)[0] != "output"]
        return load_config(config, overrides).run_dir, kept
    if checkpoint is not None:
        owner = RunLayout.of_file(checkpoint)
        if owner is None:
            raise TranslatorError(f"{checkpoint} is not inside a run folder (no config.yaml "
                                  "beside it or above its checkpoints/ folder): add --run DIR")
        return owner.root, overrides
    found = latest_run()
    if found is None:
        raise TranslatorError("no trained run found under runs/; train one first "
                              "(translator train --config configs/toy.yaml) or pass --run DIR")
    if announce is not None:
        announce(found)
    return found, overrides


# -- which config is in force at inference (the rule is in the module docstring) --------------


def check_inference_overrides(overrides: Sequence[str]) -> None:
    """`--set` on a trained run may change how it decodes and where its corpus is, not what
    the checkpoint holds: anything else is a one-line error naming the key."""
    for text in overrides:
        section, key, _ = parse_override(text)
        if section not in ("decoding", "data"):
            raise ConfigError(f"--set {section}.{key}: a trained run's "
                              f"{section} section is fixed; only decoding.* and data.* can "
                              "change here")


def checkpoint_path(layout: RunLayout, checkpoint: str | Path | None) -> Path:
    """The checkpoint to load: the one given, else the run's best.pt, else latest.pt."""
    path = Path(checkpoint) if checkpoint else layout.default_checkpoint()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" + (
            "" if checkpoint else " (has this run been trained?)"))
    return path


def weights_config(cfg: Config, saved: Any, overrides: Sequence[str]) -> Config:
    """`cfg` (the run's config.yaml with `overrides`) with the sections that describe the
    weights taken from `saved`, the config dict stored in the checkpoint, when this version
    reads it; `cfg` itself otherwise."""
    if not saved:
        return cfg
    try:
        stored = config_from_dict(saved, name=cfg.name, overrides=overrides)
    except ConfigError:
        return cfg  # the run's config.yaml is the reference; keep it
    cfg.model, cfg.tokenizer = stored.model, stored.tokenizer
    cfg.data.max_len = stored.data.max_len
    return cfg


def inference_config(layout: RunLayout, checkpoint: str | Path | None = None,
                     overrides: Sequence[str] = (), map_location: Any = "cpu",
                     ) -> tuple[Config, dict[str, Any], Path]:
    """The config in force when the run in `layout` translates with `checkpoint` (default:
    best.pt, else latest.pt), the loaded checkpoint and its path. Both engines use this; the
    rule is stated in this module's docstring."""
    check_inference_overrides(overrides)
    cfg = layout.load_config(overrides)
    path = checkpoint_path(layout, checkpoint)
    ckpt = load_checkpoint(path, map_location=map_location)
    return weights_config(cfg, ckpt.get("config"), overrides), ckpt, path


# -- the lock and the resume rule --------------------------------------------------------------


LOCK_NAME = ".lock"


class RunLock:
    """An exclusive `flock` on `<run>/.lock`, held while one process trains the run. The kernel
    drops it when the process ends, however it ends, so a crashed run leaves no stale lock;
    the file only records the holder's PID for the refusal message."""

    def __init__(self, root: str | Path) -> None:
        self.path = Path(root) / LOCK_NAME
        self._file: IO[str] | None = None

    def acquire(self) -> RunLock:
        """Take the lock or raise a one-line TranslatorError naming the holder's PID."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8")  # noqa: SIM115 - held until release()
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise TranslatorError(f"{self.path.parent} is being trained by process "
                                      f"{holder}; wait for it to finish or stop it (one "
                                      "trainer per run folder)") from None
            raise TranslatorError(f"cannot lock {self.path}: {exc.strerror}") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Drop the lock (also dropped by the kernel when the process exits)."""
        if self._file is not None:
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


_HELD: dict[Path, RunLock] = {}


def lock_run(root: str | Path) -> RunLock:
    """Hold `root`'s lock for this process (re-entrant: a process that already holds it, e.g.
    a notebook training the same run twice, keeps it). See `RunLock`."""
    key = Path(root).resolve()
    if key not in _HELD:
        _HELD[key] = RunLock(key).acquire()
    return _HELD[key]


def release_run(root: str | Path) -> None:
    """Drop this process' lock on `root`, if it holds one."""
    held = _HELD.pop(Path(root).resolve(), None)
    if held is not None:
        held.release()


def _without_dirs(cfg: Config) -> list[dict]:
    return [{**dataclasses.asdict(c), "dir": None} for c in cfg.data.corpora]


def resume_changes(saved: Config, new: Config) -> tuple[list[str], list[str]]:
    """How a resumed run's config differs from its saved one: (refused keys, moved-data keys).
    Moved-data keys (`data.dir`, a corpus' `dir`) are allowed only when the split record
    matches, which `check_split_record` checks with content hashes."""
    refused, moved = [], []
    for key in config_diff(saved, new):
        if key in RESUME_SAFE_KEYS or key.startswith("decoding.") or key == "output.dir":
            continue
        if key == "data.dir":
            moved.append(key)
        elif key == "data.corpora" and _without_dirs(saved) == _without_dirs(new):
            moved.append("data.corpora.dir")
        else:
            refused.append(key)
    return refused, moved


def check_resume(saved: Config, new: Config, where: Path) -> list[str]:
    """Apply the resume rule: refuse in one line, naming every key, a change that alters what
    a step computes; return the moved-data keys (to be checked against the split record)."""
    refused, moved = resume_changes(saved, new)
    if refused:
        raise TranslatorError(
            f"--resume: the config differs from the saved config of the run in {where} in "
            f"{', '.join(refused)}, which changes what a step computes (start a new run, or "
            "fine-tune with --init-from). Safe to "
            "change: training.epochs, max_steps, max_minutes, patience, valid_every, "
            "save_every, keep_last, log_every, threads, device, data.num_proc, "
            "data.cache_dir, decoding.*; data.dir when the data there is the same")
    return moved


# -- starting, resuming and fine-tuning a run ---------------------------------------------------


def training_config(config: Path | None, run: Path | None, overrides: list[str],
                    resume: bool) -> Config:
    """The config `translator train` trains with: `--config FILE` (a run folder's own
    config.yaml always means that folder, wherever it now is) or `--run DIR --resume` (the
    folder's saved config; `overrides` may change only `RESUME_SAFE_KEYS` and decoding)."""
    if (config is None) == (run is None):
        raise TranslatorError("give --config FILE to train a run, or --run DIR --resume to "
                              "continue one" if config is None else
                              "give either --config or --run, not both")
    if run is not None:
        if not resume:
            raise TranslatorError(f"--run continues a run: add --resume (to start a new run "
                                  f"in {run}, use --config with --overwrite)")
        if any(parse_override(o)[0] == "output" for o in overrides):
            raise TranslatorError(f"--set output.*: the run folder is {run} itself")
        layout = RunLayout(run)
        cfg = layout.load_config(overrides)
        check_resume(layout.load_config(), cfg, layout.root)
        return cfg
    cfg = load_config(config, overrides)
    owner = RunLayout.of_file(config) if config.name == CONFIG_NAME else None
    if owner is not None:
        cfg.output.dir, cfg.name = str(owner.root), owner.root.name
    return cfg


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool) -> tuple[RunLayout, list[str]]:
    """Lock and create the run folder, refusing to mix two different runs in one folder and
    a second trainer in a running one; returns the layout and, when resuming, the moved-data
    keys (`check_resume`) that the split record must confirm."""
    layout = RunLayout(cfg.run_dir)
    lock_run(layout.root)  # before anything in the folder is read, replaced or deleted
    has_run = layout.latest.is_file() or layout.config.is_file()
    moved: list[str] = []
    if resume:
        if not layout.latest.is_file():
            raise TranslatorError(f"--resume: no checkpoint to resume in {layout.checkpoints}")
        moved = check_resume(load_config(layout.config), cfg, layout.root)
    elif has_run and not overwrite:
        raise TranslatorError(f"{layout.root} already holds a run; use --resume to continue it "
                              "or --overwrite to start again")
    elif has_run and overwrite:
        for sub in (layout.checkpoints, layout.tensorboard, layout.eval):
            shutil.rmtree(sub, ignore_errors=True)
    if not moved:  # a moved corpus is recorded once its split record has matched
        save_run_config(cfg, layout.config)
    return layout, moved


def _init_base(path: Path) -> tuple[Path, RunLayout]:
    """The checkpoint and run folder that `--init-from PATH` names."""
    if path.is_dir():
        base = RunLayout(path)
        if not base.config.is_file():
            raise TranslatorError(f"--init-from: {path} is not a run folder (no config.yaml)")
        checkpoint = base.default_checkpoint()
        if not checkpoint.is_file():
            raise TranslatorError(f"--init-from: no best.pt or latest.pt in {base.checkpoints}")
        return checkpoint, base
    if path.is_file():
        owner = RunLayout.of_file(path)
        if owner is None:
            raise TranslatorError(f"--init-from: {path} is not inside a run folder (its "
                                  "tokenizers are needed): give the run folder")
        return path, owner
    raise TranslatorError(f"--init-from: no run folder or checkpoint file at {path}")


def init_source(path: Path, cfg: Config) -> tuple[Path, RunLayout]:
    """The checkpoint and base run that `train --init-from PATH` starts from: PATH a run
    folder (its best.pt, else latest.pt) or a checkpoint file inside one (the run's
    tokenizers are needed too). Refuses a config whose tokenizer or model section or language
    pair differs from the base run's, and a new run folder that is the base's own."""
    checkpoint, base = _init_base(Path(path))
    if base.root.resolve() == cfg.run_dir.resolve():
        raise TranslatorError(f"--init-from: {base.root} is this run's own folder; give the "
                              "new run another output.dir (or config name)")
    differ = init_changes(base.load_config(), cfg)
    if differ:
        raise TranslatorError(f"--init-from: the config differs from the base run's "
                              f"{base.config} in {', '.join(differ)} (fine-tuning keeps its "
                              "vocabulary and model shape)")
    for lang in (cfg.data.src_lang, cfg.data.tgt_lang):
        if not base.tokenizer(lang).is_file():
            raise TranslatorError(f"--init-from: {base.tokenizer(lang)} not found")
    return checkpoint, base


def average_run(run_dir: Path, last: int, output: Path | None = None) -> tuple[Path, list[Path]]:
    """Average the newest `last` periodic checkpoints of a run into `output` (default:
    <run>/checkpoints/averaged.pt); returns where it was written and what was averaged."""
    layout = RunLayout(Path(run_dir))
    if not layout.config.is_file():
        raise TranslatorError(f"{layout.root} is not a run folder (no config.yaml)")
    paths = layout.numbered_checkpoints()[-last:]
    if len(paths) < last:
        raise TranslatorError(f"{layout.checkpoints} holds {len(paths)} periodic "
                              f"checkpoints, fewer than --last {last} (training.keep_last "
                              "limits how many are kept)")
    out = output or layout.averaged
    resolve_target(out)  # a folder or a missing parent: refused before any work
    atomic_save(average_checkpoints(paths), out)
    return out, paths
