"""Building the Transformer a config describes, and loading a checkpoint's weights into it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from translator.checkpoint import CheckpointError
from translator.config import Config
from translator.errors import first_line
from translator.model.transformer import Transformer, build_transformer


def build_model(cfg: Config, src_vocab: int, tgt_vocab: int,
                share_embeddings: bool | None = None) -> Transformer:
    """The Transformer a config describes. Source and target embeddings are one matrix when
    the tokenizer is shared, unless `share_embeddings` says otherwise."""
    m = cfg.model
    if share_embeddings is None:
        share_embeddings = cfg.tokenizer.shared
    share_embeddings = share_embeddings and src_vocab == tgt_vocab
    return build_transformer(
        src_vocab, tgt_vocab, cfg.data.max_len, cfg.data.max_len,
        d_model=m.d_model, N=m.layers, h=m.heads, dropout=m.dropout, d_ff=m.d_ff,
        decoder_layers=m.decoder_layers or None, norm=m.norm, tie_embeddings=m.tie_embeddings,
        attention_dropout=m.attention_dropout,
        share_src_tgt_embeddings=share_embeddings,
    )


def model_from_checkpoint(cfg: Config, ckpt: dict[str, Any], path: Path, src_vocab: int,
                          tgt_vocab: int) -> Transformer:
    """The config's model holding the weights of checkpoint `ckpt` (read from `path`), for
    tokenizers of `src_vocab`/`tgt_vocab` tokens; a checkpoint that does not fit is a
    one-line CheckpointError."""
    vocab = ckpt.get("vocab", {})
    if vocab and (vocab.get("src") != src_vocab or vocab.get("tgt") != tgt_vocab):
        raise CheckpointError(
            f"{path} was trained with vocabularies of {vocab.get('src')}/{vocab.get('tgt')} "
            f"tokens but the run's tokenizers have {src_vocab}/{tgt_vocab}")
    # Checkpoints from before source/target embedding sharing hold two different
    # matrices; tying them on load would silently keep only one.
    weights = ckpt["model"]
    src_w, tgt_w = (weights.get(f"{side}_embed.embedding.weight") for side in ("src", "tgt"))
    shared = (src_w is not None and tgt_w is not None and src_w.shape == tgt_w.shape
              and torch.equal(src_w, tgt_w))
    model = build_model(cfg, src_vocab, tgt_vocab, shared)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this run's model: {first_line(exc)}")\
            from exc
    return model
