"""Checkpoint files: atomic save, safe load, link, average and prune. Where they lie in a run
folder is `translator.run`'s business; this module knows files, not runs, and imports neither
the config nor the run module.

Checkpoints hold plain data only (tensors, numbers, strings, lists, dicts), so they load with
`torch.load(weights_only=True)`: a file from anywhere cannot run code when it is opened.
"""

from __future__ import annotations

import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from translator.errors import TranslatorError, first_line
from translator.files import (  # noqa: F401 - new_file_mode re-exported
    WriteError,
    atomic_open,
    new_file_mode,
)

FORMAT_VERSION = 1
SAFE_TORCH = (2, 10)
"""The oldest torch whose `weights_only=True` loader has no known way to run code: 2.6 fixed
CVE-2025-32434, 2.10 fixed CVE-2026-24747 (GHSA-63cw-57p8-fm3p, heap corruption)."""


def torch_version(text: str | None = None) -> tuple[int, int]:
    """(major, minor) of the installed torch (or of `text`, e.g. "2.9.1+cpu")."""
    found = re.match(r"(\d+)\.(\d+)", text or torch.__version__)
    return (int(found[1]), int(found[2])) if found else (0, 0)


def check_safe_torch(text: str | None = None) -> None:
    """Refuse to open checkpoints with a torch whose safe loader is known to be unsafe."""
    if torch_version(text) < SAFE_TORCH:
        need = ".".join(map(str, SAFE_TORCH))
        raise CheckpointError(f"torch {text or torch.__version__} cannot load checkpoints "
                              f"safely (weights_only has known code-execution bugs before "
                              f"{need}): pip install 'torch>={need}'")


class CheckpointError(TranslatorError):
    """A checkpoint that is missing, corrupt, unsafe, or from an incompatible run."""


def atomic_save(obj: dict[str, Any], path: Path) -> None:
    """Write `obj` to a temp file in the same folder, fsync, then rename over `path`, so a crash
    at any moment leaves either the old file or the new one, never half of one. The file gets
    the umask's usual mode (`new_file_mode`); a failed write is one `WriteError` line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_open(path, "wb") as f:
            torch.save(obj, f)
    except RuntimeError as exc:
        # torch's zip writer turns a failed write (EFBIG, ENOSPC) into a RuntimeError while
        # it closes; the OSError it hit is in the chain.
        cause = exc.__context__ or exc.__cause__
        if isinstance(cause, OSError):
            raise WriteError(f"cannot write {path}: {cause.strerror or cause}") from exc
        raise


def atomic_link(src: Path, dst: Path) -> None:
    """Make `dst` name the same file as `src` (hard link, else copy), replacing it atomically.
    `latest.pt` and `best.pt` are such names, so they cost no extra write. The temp name is
    unique (`mkstemp`), so two processes never write through each other's link."""
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", suffix=".link.tmp", dir=dst.parent)
    os.close(fd)
    try:
        os.unlink(tmp)  # os.link wants a free name; the unique one stays ours
        try:
            os.link(src, tmp)
        except OSError:
            import shutil

            shutil.copyfile(src, tmp)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint safely (`weights_only=True`); any failure is one clear error naming
    the file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    check_safe_torch()
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        # torch names what it refused ("Unsupported global: GLOBAL io.open"); bytes that are
        # no pickle at all give "Unsupported operand": a corrupt file, not an attack.
        text = str(exc)
        if "Unsupported operand" in text:
            raise CheckpointError(f"cannot read checkpoint {path}: corrupt or not a "
                                  "checkpoint") from exc
        found = re.search(r"Unsupported (?:global: GLOBAL|class) ([\w.]+)", text)
        what = f" ({found[1]})" if found else ""
        raise CheckpointError(f"refusing to load {path}: it holds objects other than plain "
                              f"data{what}, which could run code") from exc
    except PermissionError as exc:
        raise CheckpointError(f"cannot read checkpoint {path}: {exc.strerror}") from exc
    except Exception as exc:  # noqa: BLE001 - a damaged zip or pickle fails in many ways
        # (RuntimeError, EOFError, BadZipFile, KeyError, IndexError, ...): all mean corrupt.
        first = first_line(exc)
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt or truncated "
                              f"({first.split('. ')[0][:200]})") from exc
    if not isinstance(ckpt, dict) or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a translator checkpoint")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format {version!r}; this version of "
                              f"translator reads format <= {FORMAT_VERSION}")
    return ckpt


def prune_checkpoints(numbered: list[Path], keep_last: int) -> None:
    """Delete all but the newest `keep_last` of the periodic checkpoints `numbered` (oldest
    first, as `RunLayout.numbered_checkpoints` lists them); latest/best are separate links,
    so their data survives."""
    if keep_last <= 0:
        return
    for path in numbered[:-keep_last]:
        path.unlink(missing_ok=True)


def average_checkpoints(paths: list[Path]) -> dict[str, Any]:
    """A checkpoint whose model weights are the mean of those in `paths` (Vaswani et al.
    average the last checkpoints of a run). Metadata comes from the newest; optimizer and
    RNG states are left out: the result is for translation, not for resuming."""
    if not paths:
        raise CheckpointError("no checkpoints to average")
    total: dict[str, torch.Tensor] = {}
    last: dict[str, Any] = {}
    for path in paths:
        last = load_checkpoint(path)
        model = last["model"]
        if total and set(model) != set(total):
            raise CheckpointError(f"{path} has different model parameters than {paths[0]}")
        for name, value in model.items():
            if name in total and tuple(value.shape) != tuple(total[name].shape):
                raise CheckpointError(f"cannot average {path} with {paths[0]}: {name} has "
                                      f"shape {tuple(value.shape)} there, "
                                      f"{tuple(total[name].shape)} here (different models)")
        for name, value in model.items():
            if not value.is_floating_point():
                total[name] = value
            elif name in total:
                total[name] += value.double()
            else:
                total[name] = value.double()
    avg = {name: (v / len(paths)).to(last["model"][name].dtype) if v.is_floating_point()
           else v for name, v in total.items()}
    keep = ("format_version", "step", "epoch", "config", "vocab")
    out = {k: last[k] for k in keep if k in last}
    out["model"] = avg
    out["averaged_from"] = [str(p) for p in paths]
    return out

