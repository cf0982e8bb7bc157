"""The one way the toolkit writes files, and the guard on what it may replace.

`atomic_write` is used for every file a run, an evaluation or an export writes: a regular (or
new) file is written under a temporary name beside it, fsynced and renamed over the target, so
a crash, a full disk or Ctrl-C leaves the old file or the new one, never half of one. What the
user names is written *into*, not replaced: a character device (`/dev/null`), a FIFO or
`/dev/stdout` is opened in place, and a symlink is followed to its target. A folder is refused
before any work. Every `OSError` becomes one `TranslatorError` line naming the file.

`replace_dir` swaps a freshly built export folder in for an old one; `check_replaceable`
decides whether an existing folder is provably ours to replace (`--force`).
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

from translator.errors import TranslatorError

EXPORT_MARKER = "translator.json"
"""The file every export folder holds: a folder with it is a previous export, ours to replace."""


class WriteError(TranslatorError, OSError):
    """A file could not be written (disk full, file-size limit, permissions, a folder in the
    way); the old file, if any, is left as it was. Also an `OSError`, so callers that guard a
    write with `except OSError` keep working."""


def new_file_mode() -> int:
    """The mode a newly created file gets here: 0o666 less the umask (0o644 under umask 022).
    Atomic writes start from a `mkstemp` file, which is 0o600 whatever the umask; they set
    this before the rename, so a checkpoint or an output file is as readable by the group (a
    serving account, a colleague) as any other file the user creates."""
    return 0o666 & ~_umask()


def _umask() -> int:
    mask = os.umask(0o022)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


def _reason(exc: OSError) -> str:
    return exc.strerror or str(exc) or type(exc).__name__


def _in_place(path: Path) -> bool:
    """Whether `path` is a stream to write into rather than a file to replace: a character
    device, a FIFO or a socket (`/dev/null`, `-o >(gzip)`, `/dev/stdout` on a terminal)."""
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISCHR(mode) or stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def resolve_target(path: str | Path) -> Path:
    """The file a write to `path` lands in: a symlink's final target (a link is written
    through, not replaced). Refuses a folder and a missing parent folder, before any work."""
    path = Path(path)
    target = Path(os.path.realpath(path)) if path.is_symlink() else path
    if target.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder (name a file)")
    parent = target.parent if str(target.parent) else Path(".")
    if not parent.is_dir():
        raise WriteError(f"cannot write {path}: folder {parent} does not exist")
    return target


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside `folder` durable (best effort: some filesystems refuse)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(tmp: str, target: Path) -> None:
    """Make the finished temp file `tmp` durable and rename it over `target`: fsync, the
    umask's mode, rename, fsync of the folder."""
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.chmod(tmp, new_file_mode())
    os.replace(tmp, target)
    _fsync_dir(target.parent if str(target.parent) else Path("."))


@contextmanager
def atomic_open(path: str | Path, mode: str = "w", **kwargs: Any) -> Iterator[IO[Any]]:
    """Open `path` for writing ("w" text or "wb" binary): a temp file renamed over the target
    when the block ends without error, or the device/FIFO itself (see the module docstring).
    Any `OSError` becomes a `WriteError` naming `path`; the target is untouched on failure."""
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes only ('w' or 'wb'), not {mode!r}")
    if mode == "w":
        kwargs.setdefault("encoding", "utf-8")
        kwargs.setdefault("newline", "\n")
    target = resolve_target(path)
    if _in_place(target):
        try:
            with open(target, mode, **kwargs) as f:
                yield f
        except OSError as exc:
            raise WriteError(f"cannot write {path}: {_reason(exc)}") from exc
        return
    folder = target.parent if str(target.parent) else Path(".")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, mode, **kwargs) as f:
            yield f
        _publish(tmp, target)
        tmp = ""
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_reason(exc)}") from exc
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


def atomic_write(path: str | Path, data: str | bytes) -> None:
    """Write `data` (text as UTF-8, or bytes) to `path` atomically (see `atomic_open`)."""
    with atomic_open(path, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)


def atomic_write_with(path: str | Path, writer: Callable[[str], None]) -> None:
    """Atomically write a file that a library writes by name (a tokenizer's `save(path)`,
    matplotlib's `savefig`, `torch.save`): `writer` writes to a temp path beside `path`,
    which is then renamed over it. Errors become one `WriteError` line naming `path`."""
    target = resolve_target(path)
    folder = target.parent if str(target.parent) else Path(".")
    tmp = ""
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}",
                                   dir=folder)
        os.close(fd)
        writer(tmp)
        _publish(tmp, target)
        tmp = ""
    except OSError as exc:
        raise WriteError(f"cannot write {path}: {_reason(exc)}") from exc
    except RuntimeError as exc:  # torch.save and the tokenizers library wrap write errors
        raise WriteError(f"cannot write {path}: {str(exc).splitlines()[0][:200]}") from exc
    finally:
        if tmp:
            Path(tmp).unlink(missing_ok=True)


# -- folders: what --force may replace, and the swap ------------------------------------------


def _is_within(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def protected_reason(out: Path, run_dirs: tuple[Path, ...] = ()) -> str | None:
    """Why `out` may never be replaced by an export (None when it may be): it is a run folder
    (or lies inside one's checkpoints/), the working folder, the home folder, the filesystem
    root, or an ancestor of any of them or of the runs in `run_dirs`."""
    out = out.resolve()
    guarded = {"the working folder": Path.cwd().resolve(), "the home folder":
               Path.home().resolve()}
    for run in run_dirs:
        guarded[f"run folder {run}"] = Path(run).resolve()
    for what, where in guarded.items():
        if _is_within(where, out):
            return (f"it is {what}" if where == out else f"it holds {what}")
    if (out / "config.yaml").is_file() and ((out / "checkpoints").is_dir()
                                            or (out / "splits.json").is_file()):
        return "it is a run folder"
    for parent in out.parents:
        if parent.name == "checkpoints" and (parent.parent / "config.yaml").is_file():
            return f"it lies inside the checkpoints of run {parent.parent}"
    if out.parent == out:
        return "it is the filesystem root"
    return None


def check_replaceable(out: str | Path, force: bool, run_dirs: tuple[Path, ...] = ()) -> None:
    """Refuse, in one line, an export target that is not ours to fill: a non-empty folder
    without --force, a protected folder (`protected_reason`) even with it, and with --force a
    non-empty folder that is not a previous export (holds no translator.json) or is a file."""
    out = Path(out)
    if not out.exists() and not out.is_symlink():
        if run_dirs and protected_reason(out, run_dirs):
            raise TranslatorError(f"refusing to export to {out}: "
                                  f"{protected_reason(out, run_dirs)}")
        return
    if not out.is_dir() or out.is_symlink():
        raise TranslatorError(f"{out} exists and is not a folder; name a new folder")
    reason = protected_reason(out, run_dirs)
    if reason:
        raise TranslatorError(f"refusing to export to {out}: {reason}")
    if not any(out.iterdir()):
        return
    if not force:
        raise TranslatorError(f"{out} exists and is not empty (add --force to replace a "
                              "previous export)")
    if not (out / EXPORT_MARKER).is_file():
        raise TranslatorError(f"--force replaces only an empty folder or a previous export "
                              f"(one holding {EXPORT_MARKER}); {out} is neither, so it is "
                              "left alone")


def replace_dir(out: str | Path, build: Callable[[Path], None]) -> Path:
    """Build a folder with `build(tmp)` in a fresh temp folder beside `out`, then swap it in:
    the old folder (checked by `check_replaceable` first) is renamed aside, the new one
    renamed to `out`, the old one deleted. A crash at any point leaves the old folder or the
    new one whole (the old one possibly under a `.out.old-*` name). Errors are one line."""
    out = Path(out)
    parent = out.parent if str(out.parent) else Path(".")
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=parent))
    except OSError as exc:
        raise WriteError(f"cannot write {out}: {_reason(exc)}") from exc
    old: Path | None = None
    try:
        build(tmp)
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp's folder is private (0o700)
        if out.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=parent))
            os.replace(out, old / out.name)
        os.replace(tmp, out)
    except OSError as exc:
        if old is not None and not out.exists():
            os.replace(old / out.name, out)  # put the old export back
        raise WriteError(f"cannot write {out}: {_reason(exc)}") from exc
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    return out


@contextmanager
def open_output(path: Path | None) -> Iterator[IO[str]]:
    """stdout, or `atomic_open(path)`: a regular file is written under a temporary name and
    renamed into place at the end, so that a failed run (or an output naming the input) never
    leaves half a file; a device, FIFO or symlink is written into."""
    if path is None:
        import sys

        yield sys.stdout
        return
    with atomic_open(path, "w") as f:
        yield f
