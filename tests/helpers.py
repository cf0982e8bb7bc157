"""Helpers only the tests use (kept out of the package)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from translator.config import Config

# The tiny config of the session's shared trained run (conftest `trained_run`): one short
# epoch on the built-in corpus, enough for real (if poor) translations.
TINY_RUN: dict[str, dict[str, Any]] = {
    "data": {"source": "builtin", "builtin_size": 400, "max_len": 40},
    "model": {"d_model": 32, "layers": 1, "heads": 2, "d_ff": 64, "dropout": 0.0},
    "training": {"epochs": 1, "max_tokens": 800, "lr": 0.003, "warmup_steps": 5,
                 "log_every": 1, "valid_max_sentences": 5, "examples": 0, "threads": 1},
    "decoding": {"beam_size": 2},
}


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


def uncached_step(model: Any) -> Any:
    """A search step (`translator.decode.search.Step`) that re-runs the decoder over the whole
    prefix at every step, the tutorial way, keeping no cache of its own: the reference the
    cached path must equal. The prefix so far rides in the cache's first layer, so that the
    searches' `reorder_cache` keeps it in step with the beams and the rows that remain."""
    import torch

    def step(memory: Any, src_mask: Any, tokens: Any, cache: list, t: int) -> Any:
        new = tokens.view(-1, 1)
        prefix = new if t == 0 else torch.cat([cache[0]["uncached_prefix"], new], dim=1)
        cache[0]["uncached_prefix"] = prefix
        return model.project(model.decode(memory, src_mask, prefix)[:, -1])
    return step
