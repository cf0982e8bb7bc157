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


MAX_POSITIONS = 1 << 16
"""The most positions a stored config may ask the sinusoid table for (its data.max_len):
that table is built before any weight is read, so a bigger number is refused, not allocated."""


def _block_count(weights: dict[str, Any], stack: str) -> int:
    """How many blocks of `stack` (encoder/decoder) the state dict holds."""
    found = [int(k.split(".")[2]) for k in weights
             if k.startswith(f"{stack}.blocks.") and k.split(".")[2].isdigit()]
    return max(found) + 1 if found else 0


def check_checkpoint_fits(cfg: Config, ckpt: dict[str, Any], path: Path, src_vocab: int,
                          tgt_vocab: int, shared: bool) -> None:
    """Check a checkpoint's weights against the model its config describes *before* that
    model is allocated: the config stored in a file is not trusted (a 1 KB checkpoint could
    ask for d_ff = 2**20). The model is built on the meta device (shapes only, no memory)
    once the block counts are known to match the file's, and every parameter's name and
    shape must match. Any mismatch is one CheckpointError line."""
    weights = ckpt.get("model")
    if not isinstance(weights, dict) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in weights.items()):
        raise CheckpointError(f"{path} is malformed: its model entry is not a state dict")
    m = cfg.model
    for stack, want in (("encoder", m.layers), ("decoder", m.decoder_layers or m.layers)):
        have = _block_count(weights, stack)
        if have != want:
            raise CheckpointError(f"{path} does not fit its config: the config asks for "
                                  f"{want} {stack} layers, the weights hold {have}")
    if not 0 < cfg.data.max_len <= MAX_POSITIONS:
        raise CheckpointError(f"{path}: data.max_len {cfg.data.max_len} is outside 1.."
                              f"{MAX_POSITIONS}")
    with torch.device("meta"):
        expected = build_model(cfg, src_vocab, tgt_vocab, shared).state_dict()
    missing = [k for k in expected if k not in weights]
    extra = [k for k in weights if k not in expected]
    if missing or extra:
        what = (f"missing {missing[0]}" if missing else f"unexpected {extra[0]}")
        raise CheckpointError(f"{path} does not fit its config: {what} "
                              f"({len(missing)} missing, {len(extra)} unexpected)")
    for name, tensor in expected.items():
        if tuple(weights[name].shape) != tuple(tensor.shape):
            raise CheckpointError(f"{path} does not fit its config: {name} has shape "
                                  f"{tuple(weights[name].shape)}, the config gives "
                                  f"{tuple(tensor.shape)}")


def model_from_checkpoint(cfg: Config, ckpt: dict[str, Any], path: Path, src_vocab: int,
                          tgt_vocab: int) -> Transformer:
    """The config's model holding the weights of checkpoint `ckpt` (read from `path`), for
    tokenizers of `src_vocab`/`tgt_vocab` tokens; a checkpoint that does not fit is a
    one-line CheckpointError."""
    vocab = ckpt.get("vocab") or {}
    if not isinstance(vocab, dict) or not all(
            isinstance(vocab.get(k, 0), int) for k in ("src", "tgt")):
        raise CheckpointError(f"{path} is malformed: its vocab entry is not "
                              "{'src': int, 'tgt': int}")
    if vocab and (vocab.get("src") != src_vocab or vocab.get("tgt") != tgt_vocab):
        raise CheckpointError(
            f"{path} was trained with vocabularies of {vocab.get('src')}/{vocab.get('tgt')} "
            f"tokens but the run's tokenizers have {src_vocab}/{tgt_vocab}")
    # Checkpoints from before source/target embedding sharing hold two different
    # matrices; tying them on load would silently keep only one.
    weights = ckpt["model"]
    if not isinstance(weights, dict):
        raise CheckpointError(f"{path} is malformed: its model entry is not a state dict")
    src_w, tgt_w = (weights.get(f"{side}_embed.embedding.weight") for side in ("src", "tgt"))
    shared = (src_w is not None and tgt_w is not None and src_w.shape == tgt_w.shape
              and torch.equal(src_w, tgt_w))
    check_checkpoint_fits(cfg, ckpt, path, src_vocab, tgt_vocab, shared)
    model = build_model(cfg, src_vocab, tgt_vocab, shared)
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(f"{path} does not fit this run's model: {first_line(exc)}")\
            from exc
    return model
