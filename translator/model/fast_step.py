"""A fast cached decoder step, built once per model (`FastStep.of(model)`).

What it is for: at batch 1 a cached decoding step is mostly per-operation overhead (about 60
calls of 4 to 25 µs each, docs/benchmarks.md), not arithmetic. This step computes
`model.project(model.decode(memory, src_mask, tokens[:, None], cache, offset))[:, -1]` (the
textbook path of `translator.model.transformer`, eval mode) in about half the operations: the
parameters are gathered once per search as plain tensors (a lookup through
`nn.Module.__getattr__` costs about as much as the arithmetic of a batch-1 step), positions are
[B, D] rather than [B, 1, D] so products are 2-D, there are no dropout calls, and no head
transposes (one position's [H*K] and [H, 1, K] share their memory layout); on the CPU the
products use transposed copies of the weights, a faster kernel with its own rounding (see
`FastStep.__init__`). Rows may be at different positions, with a mask over cached positions
that are not theirs (`translator.decode.continuous`). It reads and writes
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
import weakref
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from translator.model.transformer import LayerCache, LayerNormalization, Transformer


def _linear(x: Tensor, w: Tensor, b: Tensor, transposed: bool) -> Tensor:
    """`F.linear(x, weight, b)` of 2-D x, where `w` is the weight itself, or its transpose
    as a contiguous [in, out] tensor (`transposed`): see `FastStep.of`."""
    return torch.addmm(b, x, w) if transposed else F.linear(x, w, b)


class _Block(NamedTuple):
    """One decoder block's parameters as plain tensors (the linear weights as `_weights`
    gives them)."""

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
    t: bool  # the weights are transposed


def _block_step(x: Tensor, w: _Block, memory: Tensor | None, src_mask: Tensor | None,
                cache: LayerCache, self_mask: Tensor | None = None) -> Tensor:
    """`DecoderBlock.forward` of one new position per row, x: [B, D] -> [B, D], eval mode.
    `self_mask` [B, 1, 1, T + 1] hides cached positions of other sentences (rows that joined
    a running batch late, `translator.decode.continuous`); `memory` may be None once the
    cache holds the source keys/values."""
    B, D = x.shape
    H, pre, eps = w.heads, w.pre_norm, w.eps
    K = D // H
    # Self-attention over the cached positions and this one.
    y = F.layer_norm(x, (D,), w.norm0_w, w.norm0_b, eps) if pre else x
    q, k, v = _linear(y, w.qkv_w, w.qkv_b, w.t).view(B, 3, H, 1, K).unbind(1)  # [B, H, 1, K]
    if "self_k" in cache:
        k = torch.cat([cache["self_k"], k], dim=2)  # [B, H, t + 1, K]
        v = torch.cat([cache["self_v"], v], dim=2)
    cache["self_k"], cache["self_v"] = k, v
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=self_mask).view(B, D)
    x = x + _linear(a, w.self_out_w, w.self_out_b, w.t)
    if not pre:
        x = F.layer_norm(x, (D,), w.norm0_w, w.norm0_b, eps)
    # Cross-attention; the source keys/values are projected on the first step only.
    y = F.layer_norm(x, (D,), w.norm1_w, w.norm1_b, eps) if pre else x
    q = _linear(y, w.cross_q_w, w.cross_q_b, w.t).view(B, H, 1, K)
    if "cross_k" not in cache:
        assert memory is not None, "a first step needs the encoder output"
        cache["cross_k"], cache["cross_v"] = w.source_kv(memory)  # [B, H, S, K]
    a = F.scaled_dot_product_attention(q, cache["cross_k"], cache["cross_v"],
                                       attn_mask=src_mask).view(B, D)
    x = x + _linear(a, w.cross_out_w, w.cross_out_b, w.t)
    if not pre:
        x = F.layer_norm(x, (D,), w.norm1_w, w.norm1_b, eps)
    # Feed-forward.
    y = F.layer_norm(x, (D,), w.norm2_w, w.norm2_b, eps) if pre else x
    h = _linear(y, w.ff1_w, w.ff1_b, w.t).relu_()  # [B, d_ff]
    x = x + _linear(h, w.ff2_w, w.ff2_b, w.t)
    return x if pre else F.layer_norm(x, (D,), w.norm2_w, w.norm2_b, eps)


class FastStep:
    """Next-token logits of a cached step, from a model's parameters gathered now: make one
    per search (it holds the parameters as they are when it is built)."""

    def __init__(self, model: Transformer) -> None:
        # On the CPU, MKL multiplies by a transposed weight (contiguous [in, out]) faster than
        # F.linear by the [out, in] one: 1.0-1.8x per product at 1 to 32 rows, 10-12% off a
        # whole greedy stream at 4 to 14 rows, nothing at batch 1 (measured: docs/
        # benchmarks.md, "Continuous batching"). The copies cost the decoder's weights once
        # more in memory, made once per model by `of`. Not measured on a GPU: weights as they are.
        weight = model.projection.proj.weight
        self.transposed = t = weight.device.type == "cpu"
        lin = (lambda m: m.weight.t().contiguous()) if t else (lambda m: m.weight)
        self.pos = model.tgt_pos
        self.embed = model.tgt_embed.embedding.weight
        self.embed_scale = math.sqrt(model.tgt_embed.d_model)
        self.blocks = []
        for b in model.decoder.blocks:
            sa, ca, ff = b.self_attn, b.cross_attn, b.ff
            n0, n1, n2 = (r.norm for r in b.res)
            self.blocks.append(_Block(
                n0.weight, n0.bias, lin(sa.qkv_proj), sa.qkv_proj.bias, lin(sa.out_proj),
                sa.out_proj.bias, n1.weight, n1.bias, lin(ca.q_proj), ca.q_proj.bias,
                lin(ca.out_proj), ca.out_proj.bias, n2.weight, n2.bias, lin(ff.linear1),
                ff.linear1.bias, lin(ff.linear2), ff.linear2.bias, n0.eps, sa.h,
                b.res[0].pre_norm, ca.source_kv, t))
        norm = model.decoder.norm
        self.norm = ((norm.weight, norm.bias, norm.eps)
                     if isinstance(norm, LayerNormalization) else None)
        self.proj_w, self.proj_b = lin(model.projection.proj), model.projection.proj.bias

    @classmethod
    def of(cls, model: Transformer) -> FastStep:
        """The step of `model`, made once and kept while its parameters stay the same
        tensors, unchanged (training changes them in place: their versions move)."""
        stamp = _stamp(model)
        kept = _STEPS.get(model)
        if kept is None or kept[0] != stamp:
            with torch.inference_mode(False), torch.no_grad():
                kept = _STEPS[model] = (stamp, cls(model))
        return kept[1]

    def source_kv(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Each decoder layer's cross-attention keys and values of `memory` [B, S, D]."""
        return [block.source_kv(memory) for block in self.blocks]

    def __call__(self, memory: Tensor | None, src_mask: Tensor | None, tokens: Tensor,
                 cache: list[LayerCache], offset: int | Tensor,
                 self_mask: Tensor | None = None, last: int | None = None) -> Tensor:
        """tokens: [B] ids at position `offset` (one for all rows, or a [B] tensor of each
        row's own, whose largest is `last`); memory: [B, S, D] -> logits [B, V]. `self_mask`
        as in `_block_step`."""
        if isinstance(offset, Tensor):
            top = int(offset.max()) if last is None else last
            pe = self.pos.table(top + 1)[offset]  # [B, D]
        else:
            pe = self.pos.table(offset + 1)[offset]  # [D]
        x = F.embedding(tokens, self.embed).mul_(self.embed_scale).add_(pe.to(self.embed.dtype))
        for block, layer_cache in zip(self.blocks, cache, strict=True):
            x = _block_step(x, block, memory, src_mask, layer_cache, self_mask)  # [B, D]
        if self.norm is not None:
            x = F.layer_norm(x, (x.size(-1),), *self.norm)
        return _linear(x, self.proj_w, self.proj_b, self.transposed)


_STEPS: weakref.WeakKeyDictionary[Transformer, tuple[tuple[Any, ...], FastStep]] = \
    weakref.WeakKeyDictionary()


def _stamp(model: Transformer) -> tuple[Any, ...]:
    """What identifies the decoder's parameters as they are now: storage, version, type."""
    return tuple((p.data_ptr(), _version(p), p.dtype, p.device) for p in model.parameters())


def _version(p: Tensor) -> int:
    """The in-place version of `p`; -1 for a tensor made under inference mode, which has none
    (and cannot be changed in place outside it)."""
    return -1 if p.is_inference() else p._version
