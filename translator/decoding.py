"""Search over the model's `encode` / `decode` / `project` API: batched greedy decoding.

The encoder runs once per batch. With the cache (the default) each step feeds only the newest
token: decoder self-attention keys/values of earlier positions and the cross-attention
keys/values of the source come from the cache. Sentences that have produced [EOS] (or reached
their length limit) leave the batch, so the remaining ones run on smaller tensors.
"""

from __future__ import annotations

import torch
from torch import Tensor

from translator.model import Transformer, padding_mask, reorder_cache
from translator.tokenizer import EOS_ID, PAD_ID, SOS_ID


def max_output_lengths(src: Tensor, a: float, b: int) -> Tensor:
    """Per-sentence cap on generated tokens ([EOS] included): a * source length + b, where the
    source length counts real tokens (specials included) of `src` [B, S]."""
    src_len = (src != PAD_ID).sum(dim=1)
    return (a * src_len.float() + b).floor().long().clamp(min=1)


@torch.no_grad()
def greedy_decode(model: Transformer, src: Tensor, *, max_len_a: float = 1.5,
                  max_len_b: int = 10, use_cache: bool = True) -> list[list[int]]:
    """Greedy translations of a batch of encoder inputs `src` [B, S] (`[SOS] x [EOS]`, padded).

    Returns one id list per sentence, without [SOS] and [EOS]. `use_cache=False` re-runs the
    decoder over the whole prefix at every step (the tutorial way); it exists to prove the
    cached path gives the same tokens.
    """
    model.eval()
    device = src.device
    src_mask = padding_mask(src, PAD_ID)
    memory = model.encode(src, src_mask)  # [B, S, D]
    limits = max_output_lengths(src, max_len_a, max_len_b)
    steps = int(limits.max())
    out: list[list[int]] = [[] for _ in range(src.size(0))]
    active = torch.arange(src.size(0), device=device)  # original rows still decoding
    ys = torch.full((src.size(0), 1), SOS_ID, dtype=torch.long, device=device)
    cache = model.new_cache() if use_cache else None
    for t in range(steps):
        if use_cache:
            h = model.decode(memory, src_mask, ys[:, -1:], cache, offset=t)
        else:
            h = model.decode(memory, src_mask, ys)
        next_tok = model.project(h[:, -1]).argmax(dim=-1)  # [B_active]
        ys = torch.cat([ys, next_tok.unsqueeze(1)], dim=1)
        done = (next_tok == EOS_ID) | (limits[active] <= t + 1)
        for row, tok in zip(active.tolist(), next_tok.tolist(), strict=True):
            if tok != EOS_ID:
                out[row].append(tok)
        if bool(done.all()):
            break
        if bool(done.any()):
            keep = (~done).nonzero(as_tuple=True)[0]
            active, ys = active[keep], ys[keep]
            memory, src_mask = memory[keep], src_mask[keep]
            if cache is not None:
                cache = reorder_cache(cache, keep)
    return out
