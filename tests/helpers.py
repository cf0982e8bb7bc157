"""Helpers only the tests use (kept out of the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from translator.config import Config


def save_config(cfg: Config, path: str | Path) -> None:
    """Write a resolved config as YAML, `output.dir` included (a run folder's own config.yaml
    is written by `translator.config.save_run_config`, without it)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")


def raw_config(base: dict[str, dict[str, Any]], run_dir: Path,
               **training: Any) -> dict[str, Any]:
    """A copy of the config sections `base` writing to `run_dir`, with `training` keys
    overridden: the raw dict `config_from_dict` takes."""
    raw = {k: dict(v) for k, v in base.items()}
    raw["training"].update(training)
    raw["output"] = {"dir": str(run_dir)}
    return raw
