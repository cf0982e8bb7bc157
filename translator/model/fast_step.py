"""A fast cached decoder step, built from a model once per search (`FastStep(model)`).

What it is for: at batch 1 a cached decoding step is mostly per-operation overhead (about 60
calls of 4 to 25 µs each, docs/benchmarks.md), not arithmetic. This step computes exactly
`model.project(model.decode(memory, src_mask, tokens[:, None], cache, offset))[:, -1]` (the
textbook path of `translator.model.transformer`, eval mode) in about half the operations: the
parameters are gathered once per search as plain tensors (a lookup through
`nn.Module.__getattr__` costs about as much as the arithmetic of a batch-1 step), positions are
[B, D] rather than [B, 1, D] so products are 2-D, there are no dropout calls, and no head
transposes (one position's [H*K] and [H, 1, K] share their memory layout). It reads and writes
the model's own cache layout (`Transformer.new_cache`, `reorder_cache`), and tests check it
against the model.

It is the searches' one cached step for our Transformer (the benchmark and the agreement
test run the textbook modules through `translator.decode.search.module_step` instead) because
it earned its place in an A/B: on the Multi30k model (d_model 256, 3+3 layers, 300
test_2016_flickr sentences, 2 threads, one process, the same tokens) it gave 1.22x the
sentences/s at batch 1 (14.58 against 11.95), 1.12x batched (121.4 against 108.4) and 1.17x
in beam 4 (48.6 against 41.5); the issue's bar was 1.10x. The fast path for deployment is
still the CTranslate2 export (`translator.decode.ct2`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from translator.model.transformer import LayerCache, LayerNormalization, Transformer


class _Block(NamedTuple):
    """One decoder block's parameters as plain tensors."""

    norm0_w: Tensor
    norm0_b: Tensor
    qkv_w: Tensor
    qkv_b: Tensor
    self_out_w: Tensor
    self_out_b: Tensor
    norm1_w: Tensor
    norm1_b: Tensor
    cross_q_w: Tensor
    cross_q_b: Tensor
    cross_out_w: Tensor
    cross_out_b: Tensor
    norm2_w: Tensor
    norm2_b: Tensor
    ff1_w: Tensor
    ff1_b: Tensor
    ff2_w: Tensor
    ff2_b: Tensor
    eps: float
    heads: int
    pre_norm: bool
    source_kv: Callable[[Tensor], tuple[Tensor, Tensor]]


def _block_step(x: Tensor, w: _Block, memory: Tensor, src_mask: Tensor | None,
                cache: LayerCache) -> Tensor:
    """`DecoderBlock.forward` of one new position per row, x: [B, D] -> [B, D], eval mode."""
    B, D = x.shape
    H, pre, eps = w.heads, w.pre_norm, w.eps
    K = D // H
    # Self-attention over the cached positions and this one.
    y = F.layer_norm(x, (D,), w.norm0_w, w.norm0_b, eps) if pre else x
    q, k, v = F.linear(y, w.qkv_w, w.qkv_b).view(B, 3, H, 1, K).unbind(1)  # [B, H, 1, K]
    if "self_k" in cache:
        k = torch.cat([cache["self_k"], k], dim=2)  # [B, H, t + 1, K]
        v = torch.cat([cache["self_v"], v], dim=2)
    cache["self_k"], cache["self_v"] = k, v
    a = F.scaled_dot_product_attention(q, k, v).view(B, D)
    x = x + F.linear(a, w.self_out_w, w.self_out_b)
    if not pre:
        x = F.layer_norm(x, (D,), w.norm0_w, w.norm0_b, eps)
    # Cross-attention; the source keys/values are projected on the first step only.
    y = F.layer_norm(x, (D,), w.norm1_w, w.norm1_b, eps) if pre else x
    q = F.linear(y, w.cross_q_w, w.cross_q_b).view(B, H, 1, K)
    if "cross_k" not in cache:
        cache["cross_k"], cache["cross_v"] = w.source_kv(memory)  # [B, H, S, K]
    a = F.scaled_dot_product_attention(q, cache["cross_k"], cache["cross_v"],
                                       attn_mask=src_mask).view(B, D)
    x = x + F.linear(a, w.cross_out_w, w.cross_out_b)
    if not pre:
        x = F.layer_norm(x, (D,), w.norm1_w, w.norm1_b, eps)
    # Feed-forward.
    y = F.layer_norm(x, (D,), w.norm2_w, w.norm2_b, eps) if pre else x
    h = F.linear(y, w.ff1_w, w.ff1_b).relu_()  # [B, d_ff]
    x = x + F.linear(h, w.ff2_w, w.ff2_b)
    return x if pre else F.layer_norm(x, (D,), w.norm2_w, w.norm2_b, eps)


class FastStep:
    """Next-token logits of a cached step, from a model's parameters gathered now: make one
    per search (it holds the parameters as they are when it is built)."""

    def __init__(self, model: Transformer) -> None:
        self.pos = model.tgt_pos
        self.embed = model.tgt_embed.embedding.weight
        self.embed_scale = math.sqrt(model.tgt_embed.d_model)
        self.blocks = []
        for b in model.decoder.blocks:
            sa, ca, ff = b.self_attn, b.cross_attn, b.ff
            n0, n1, n2 = (r.norm for r in b.res)
            self.blocks.append(_Block(
                n0.weight, n0.bias, sa.qkv_proj.weight, sa.qkv_proj.bias, sa.out_proj.weight,
                sa.out_proj.bias, n1.weight, n1.bias, ca.q_proj.weight, ca.q_proj.bias,
                ca.out_proj.weight, ca.out_proj.bias, n2.weight, n2.bias, ff.linear1.weight,
                ff.linear1.bias, ff.linear2.weight, ff.linear2.bias, n0.eps, sa.h,
                b.res[0].pre_norm, ca.source_kv))
        norm = model.decoder.norm
        self.norm = ((norm.weight, norm.bias, norm.eps)
                     if isinstance(norm, LayerNormalization) else None)
        self.proj_w, self.proj_b = model.projection.proj.weight, model.projection.proj.bias

    def __call__(self, memory: Tensor, src_mask: Tensor | None, tokens: Tensor,
                 cache: list[LayerCache], offset: int) -> Tensor:
        """tokens: [B] ids at position `offset`; memory: [B, S, D] -> logits [B, V]."""
        pe = self.pos.table(offset + 1)[offset]  # [D]
        x = F.embedding(tokens, self.embed).mul_(self.embed_scale).add_(pe.to(self.embed.dtype))
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x = _block_step(x, block, memory, src_mask, layer_cache)  # [B, D]
        if self.norm is not None:
            x = F.layer_norm(x, (x.size(-1),), *self.norm)
        return F.linear(x, self.proj_w, self.proj_b)
