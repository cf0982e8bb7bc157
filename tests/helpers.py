"""Helpers only the tests use (kept out of the package)."""

from __future__ import annotations

from pathlib import Path

import yaml

from translator.config import Config


def save_config(cfg: Config, path: str | Path) -> None:
    """Write a resolved config as YAML, `output.dir` included (a run folder's own config.yaml
    is written by `translator.config.save_run_config`, without it)."""
    Path(path).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False), encoding="utf-8")
