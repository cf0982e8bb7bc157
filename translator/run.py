"""Rules about a run folder as a whole: the lock that keeps one trainer per folder, and the one
resume rule that both `train --config FILE --resume` and `train --run DIR --resume` apply.

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
from pathlib import Path
from typing import IO

from translator.config import RESUME_SAFE_KEYS, Config, config_diff
from translator.errors import TranslatorError

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
