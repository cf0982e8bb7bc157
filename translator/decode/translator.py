"""Using a trained run: the Translator loads a run folder (config, tokenizers, checkpoint) onto
a device and translates text in batches.

Its parts live apart: the device and dtype choice in `translator.device`, model building and
checkpoint loading in `translator.modeling`, the batched searches in `translator.decode.search`,
the text side shared with the CTranslate2 engine in `translator.decode.engine`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from translator.checkpoint import CheckpointError, RunLayout, load_checkpoint
from translator.config import (
    Config,
    ConfigError,
    DecodingConfig,
    config_from_dict,
    parse_override,
)
from translator.data.tokenizer import TextTokenizer
from translator.decode.engine import Engine, Scored
from translator.decode.search import nbest_ids, translate_ids
from translator.device import DTYPES, resolve_device
from translator.model.transformer import Transformer
from translator.modeling import model_from_checkpoint

__all__ = ["Translator", "check_inference_overrides"]


class Translator(Engine):
    """The native engine: a trained run's config, tokenizers and PyTorch model on a device.
    Code that needs the model itself (attention maps, exports) asks for this class."""

    engine_name = "native"

    def __init__(self, cfg: Config, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
                 model: Transformer, device: torch.device, checkpoint: Path | None = None) -> None:
        super().__init__(cfg, src_tok, tgt_tok, device, checkpoint)
        self.model = model.to(device).eval()

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str | Path | None = None,
                 device: str = "auto", dtype: str | None = None,
                 overrides: Sequence[str] = ()) -> Translator:
        """Load a run folder's config, tokenizers and checkpoint (best.pt, else latest.pt).

        `dtype` (fp32, bf16, fp16; default: the run's `decoding.dtype`) is the number format
        the weights are cast to for translation. `overrides` (`--set section.key=value`) may
        change the run's `decoding` and `data` keys (e.g. where its corpus now lives); the
        model's shape is the checkpoint's."""
        check_inference_overrides(overrides)
        layout = RunLayout(Path(run_dir))
        cfg = layout.load_config(list(overrides))
        path = _checkpoint_path(layout, checkpoint)
        dev = resolve_device(device)
        ckpt = load_checkpoint(path, map_location=dev)
        src_tok = TextTokenizer.load(layout.tokenizer(cfg.data.src_lang))
        tgt_tok = TextTokenizer.load(layout.tokenizer(cfg.data.tgt_lang))
        cfg = _checkpoint_config(cfg, ckpt, layout, overrides)
        model = model_from_checkpoint(cfg, ckpt, path, src_tok.vocab_size, tgt_tok.vocab_size)
        if dtype is not None:
            cfg.decoding = dataclasses.replace(cfg.decoding, dtype=dtype)  # validates it
        return cls(cfg, src_tok, tgt_tok, model.to(DTYPES[cfg.decoding.dtype]), dev, path)

    def search(self, src_ids: Sequence[Sequence[int]], decoding: DecodingConfig,
               n_best: int | None, batch_size: int) -> list[Scored]:
        """`translator.decode.search` over the model (greedy at beam 1 when only the best
        is asked for)."""
        if n_best is None:
            outs = translate_ids(self.model, src_ids, self.device, decoding,
                                 batch_size=batch_size)
            return [[(tokens, math.nan)] for tokens in outs]
        hyps = nbest_ids(self.model, src_ids, self.device, decoding, n_best,
                         batch_size=batch_size)
        return [[(h.tokens, h.score) for h in sent] for sent in hyps]


def check_inference_overrides(overrides: Sequence[str]) -> None:
    """`--set` on a trained run may change how it decodes and where its corpus is, not what
    the checkpoint holds: anything else is a one-line error naming the key."""
    for text in overrides:
        section, key, _ = parse_override(text)
        if section not in ("decoding", "data"):
            raise ConfigError(f"--set {section}.{key}: a trained run's "
                              f"{section} section is fixed; only decoding.* and data.* can "
                              "change here")


def _checkpoint_path(layout: RunLayout, checkpoint: str | Path | None) -> Path:
    """The checkpoint to load: the one given, else the run's best.pt, else latest.pt."""
    path = Path(checkpoint) if checkpoint else layout.default_checkpoint()
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}" + (
            "" if checkpoint else " (has this run been trained?)"))
    return path


def _checkpoint_config(cfg: Config, ckpt: dict, layout: RunLayout,
                       overrides: Sequence[str]) -> Config:
    """The config saved in the checkpoint (with the overrides), which describes its weights;
    the run's config.yaml `cfg` when the checkpoint holds none or one this version rejects."""
    if not ckpt.get("config"):
        return cfg
    try:
        cfg = config_from_dict(ckpt["config"], name=cfg.name, overrides=overrides)
    except ConfigError:
        pass  # the run's config.yaml is the reference; keep it
    cfg.output.dir = str(layout.root)
    return cfg
