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

from translator.config import Config, DecodingConfig
from translator.data.tokenizer import TextTokenizer
from translator.decode.continuous import GreedyStream, SentenceStream
from translator.decode.engine import Engine, Scored
from translator.decode.search import nbest_ids, translate_ids
from translator.device import DTYPES, resolve_device
from translator.model.transformer import Transformer
from translator.modeling import model_from_checkpoint
from translator.run import RunLayout, check_inference_overrides, inference_config

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
        model's shape is the checkpoint's (`translator.run.inference_config` states the rule)."""
        layout = RunLayout(Path(run_dir))
        dev = resolve_device(device)
        cfg, ckpt, path = inference_config(layout, checkpoint, overrides, map_location=dev)
        src_tok = TextTokenizer.load(layout.tokenizer(cfg.data.src_lang))
        tgt_tok = TextTokenizer.load(layout.tokenizer(cfg.data.tgt_lang))
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

    def stream(self, decoding: DecodingConfig) -> SentenceStream:
        """Greedy translation of sentences that join and leave a running batch at every step
        (`translator.decode.continuous`), with `decoding`'s length caps (its beam is not
        used); what a server runs for greedy requests."""
        greedy = GreedyStream(self.model, self.device, max_len_a=decoding.max_len_a,
                              max_len_b=decoding.max_len_b)
        return SentenceStream(greedy, self.encode, self.tgt_tok.decode)
