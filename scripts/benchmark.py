"""The one place benchmarks live: `python scripts/benchmark.py --suite NAME [--json PATH]`.

Each suite prints a Markdown table on stdout and returns a flat dict of results whose keys
(`data.*`, `decode.*`, `train.*`, `quality.*`, `serve.*`) are a stable interface: `--json
PATH` writes them (merged into PATH if it already holds results of other suites; a PATH that
is empty or not a JSON object of results is replaced, with a warning, and if PATH cannot be
written the results are printed on stderr: a long benchmark never ends without its numbers).

Suites live in `scripts/bench/<name>.py`, each with `add_arguments(parser)` and
`run(args) -> dict[str, float]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

SUITES = ("data", "decode", "train", "quality", "serve")


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, run the chosen suites, print their tables, write JSON."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suite", action="append", choices=SUITES + ("all",),
                        help="Suite to run (repeatable); default: all that exist.")
    parser.add_argument("--json", type=Path, help="Write results as JSON to this file.")
    parser.add_argument("--data-dir", type=Path, default=None,
                        help="Multi30k folder (train/val/test_2016_flickr .en/.de).")
    parser.add_argument("--quick", action="store_true", help="Smaller, faster measurements.")
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: all cores.")
    modules = {}
    for name in SUITES:
        try:
            modules[name] = importlib.import_module(f"bench.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"bench.{name}":
                raise
            continue
        group = parser.add_argument_group(f"suite {name}")
        modules[name].add_arguments(group)
    args = parser.parse_args(argv)
    if args.json and not args.json.parent.is_dir():  # say so now, not after an hour
        parser.error(f"--json {args.json}: folder {args.json.parent} does not exist")
    chosen = args.suite or ["all"]
    names = list(modules) if "all" in chosen else chosen
    missing = [n for n in names if n not in modules]
    if missing:
        parser.error(f"suite(s) not available: {', '.join(missing)}")
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    results: dict[str, float] = {}
    for name in names:
        results.update(modules[name].run(args))
    if args.json:
        write_results(args.json, results)
    return 0


def write_results(path: Path, results: dict[str, float]) -> None:
    """Merge `results` into the JSON object in `path` and write it atomically (temp file, then
    rename), so the file is never half-written. An existing file that is empty, unreadable or
    not a JSON object is replaced, with a warning; if `path` cannot be written at all, the
    results go to stderr as JSON."""
    old: dict[str, float] = {}
    if path.exists():
        try:
            loaded = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(loaded, dict):
                raise ValueError(f"it holds a JSON {type(loaded).__name__}, not an object")
            old = loaded
        except (OSError, ValueError) as exc:  # JSONDecodeError and UnicodeError included
            print(f"warning: {path} holds no readable results ({exc}); replacing it",
                  file=sys.stderr)
    old.update(results)
    text = json.dumps(old, indent=2, sort_keys=True) + "\n"
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        mask = os.umask(0o022)
        os.umask(mask)
        os.chmod(tmp, 0o666 & ~mask)  # mkstemp makes 0o600; give the umask's usual mode
        os.replace(tmp, path)
    except OSError as exc:
        if tmp:
            Path(tmp).unlink(missing_ok=True)
        print(f"warning: cannot write {path} ({exc}); the results:\n{text}", file=sys.stderr,
              end="")


if __name__ == "__main__":
    raise SystemExit(main())
