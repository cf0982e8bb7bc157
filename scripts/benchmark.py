"""The one place benchmarks live: `python scripts/benchmark.py --suite NAME [--json PATH]`.

Each suite prints a Markdown table on stdout and returns a flat dict of results whose keys
(`data.*`, `decode.*`, `train.*`, `quality.*`, `serve.*`) are a stable interface: `--json
PATH` writes them (merged into PATH if it already holds results of other suites).

Suites live in `scripts/bench/<name>.py`, each with `add_arguments(parser)` and
`run(args) -> dict[str, float]`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
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
        old = json.loads(args.json.read_text()) if args.json.is_file() else {}
        old.update(results)
        args.json.write_text(json.dumps(old, indent=2, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
