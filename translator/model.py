"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Tensors in, tensors out: this module knows nothing of files, configs or tokenizers.

Shapes: B batch, S source length, T target length, D d_model, H heads, K = D / H, V vocabulary.
Masks are boolean with True meaning "may be attended to"; the source padding mask has shape
[B, 1, 1, S] so it broadcasts over heads and query positions. Decoder self-attention needs no
mask tensor: targets are right-padded, so the causal rule alone keeps every real position away
from padding, and `is_causal` lets the fused attention kernel apply it without materialising it.

Normalisation: the paper uses *post-norm* (LayerNorm after each residual addition,
x = LN(x + Sublayer(x))). `norm="pre"` (x = x + Sublayer(LN(x)), plus a final LayerNorm per
stack) is the variant most toolkits default to because it trains stably with short warmup.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# A decoder layer's incremental state: self-attention keys/values so far, cross-attention
# keys/values of the source (computed once). One dict per layer.
LayerCache = dict[str, Tensor]


class _ByteMaskDropout(torch.autograd.Function):
    """Dropout whose keep-mask comes from random bytes: one 64-bit draw gives 8 mask entries,
    so mask generation costs about a quarter of `F.dropout`'s per-element Bernoulli draws,
    which dominate a CPU training step at these sizes. The rate is rounded to a multiple of
    1/256 and the kept values are scaled by the exact inverse keep probability."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, threshold: int, scale: float) -> Tensor:
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64,
                              device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= threshold
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


class Dropout(nn.Module):
    """Dropout with probability `p`: `F.dropout` on accelerators, the byte-mask variant on CPU."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return _ByteMaskDropout.apply(x, self.threshold, 256 / (256 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"


class InputEmbedding(nn.Module):
    """Token ids -> vectors, scaled by sqrt(d_model) as in the paper (section 3.4)."""

    def __init__(self, vocab_size: int, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model
        self.embedding = nn.Embedding(vocab_size, d_model)

    def forward(self, ids: Tensor) -> Tensor:  # [B, L] -> [B, L, D]
        return self.embedding(ids) * math.sqrt(self.d_model)


class PositionalEncoding(nn.Module):
    """Adds the fixed sinusoidal position signal of section 3.5, then dropout.

    The table covers `max_len` positions and grows on demand, so a sentence longer than the
    training maximum still gets correct encodings at translation time.
    """

    def __init__(self, d_model: int, max_len: int, dropout: float) -> None:
        super().__init__()
        self.d_model = d_model
        self.dropout = Dropout(dropout)
        self.register_buffer("pe", self._table(max_len, d_model), persistent=False)

    @staticmethod
    def _table(length: int, d_model: int) -> Tensor:
        pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)  # [L, 1]
        div = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32)
                        * (-math.log(10000.0) / d_model))  # [D/2]
        pe = torch.zeros(length, d_model)
        pe[:, 0::2] = torch.sin(pos * div)
        pe[:, 1::2] = torch.cos(pos * div)
        return pe

    def table(self, length: int) -> Tensor:
        """The encodings table [>= length, D], grown first if it is shorter."""
        if length > self.pe.size(0):
            # A normal tensor even when this runs under inference mode (decoding): the table
            # outlives the call and training may use it afterwards.
            with torch.inference_mode(False):
                pe = self._table(max(length, 2 * self.pe.size(0)), self.d_model)
                self.pe = pe.to(self.pe.device)
        return self.pe

    def forward(self, x: Tensor, offset: int = 0) -> Tensor:  # [B, L, D] -> [B, L, D]
        end = offset + x.size(1)
        return self.dropout(x + self.table(end)[offset:end].to(x.dtype))


class LayerNormalization(nn.Module):
    """LayerNorm with learned gain and bias (Ba et al., 2016), via the fused kernel."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(D, d_ff) -> ReLU -> dropout -> Linear(d_ff, D). The paper has
    no dropout inside the FFN; `dropout` here is the model's `attention_dropout` (default 0)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        # In place: the hidden layer is the largest activation, and a fresh buffer for it costs
        # page faults on every large batch; ReLU's backward needs only its output.
        return self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads (section 3.2).

    Self-attention projects queries, keys and values with one fused [D, 3D] matrix;
    cross-attention projects queries from the decoder and keys/values (one [D, 2D] matrix)
    from the encoder output. Set `store_weights` to keep the last attention probabilities in
    `weights` ([B, H, Lq, Lk]) for inspection; that path computes the softmax explicitly,
    the normal path uses `F.scaled_dot_product_attention`.
    """

    def __init__(self, d_model: int, h: int, dropout: float, cross: bool = False) -> None:
        super().__init__()
        assert d_model % h == 0, "d_model must be divisible by h"
        self.h, self.d_k, self.cross = h, d_model // h, cross
        if cross:
            self.q_proj = nn.Linear(d_model, d_model)
            self.kv_proj = nn.Linear(d_model, 2 * d_model)
        else:
            self.qkv_proj = nn.Linear(d_model, 3 * d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.dropout = dropout
        self.store_weights = False
        self.weights: Tensor | None = None

    def _heads(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, K]
        return x.view(x.size(0), x.size(1), self.h, self.d_k).transpose(1, 2)

    def source_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output [B, S, D]: two [B, H, S, K]."""
        kv = self.kv_proj(memory).view(memory.size(0), memory.size(1), 2, self.h, self.d_k)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)
        return k, v

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: LayerCache | None = None,
        prefix: str = "",
    ) -> Tensor:
        """x: [B, Lq, D]; memory: [B, S, D] for cross-attention; mask: [B, 1, 1|Lq, Lk].

        With `cache`, self-attention appends this call's keys/values to those of earlier
        steps and cross-attention computes the source keys/values only on the first call.
        """
        if self.cross:
            q = self._heads(self.q_proj(x))
            if cache is not None and prefix + "k" in cache:
                k, v = cache[prefix + "k"], cache[prefix + "v"]
            else:
                assert memory is not None, "cross-attention needs the encoder output"
                k, v = self.source_kv(memory)
                if cache is not None:
                    cache[prefix + "k"], cache[prefix + "v"] = k, v
        else:
            # One view + permute splits the fused projection into heads: [3, B, H, L, K].
            qkv = self.qkv_proj(x).view(x.size(0), x.size(1), 3, self.h, self.d_k)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
            if cache is not None:
                if prefix + "k" in cache:
                    k = torch.cat([cache[prefix + "k"], k], dim=2)
                    v = torch.cat([cache[prefix + "v"], v], dim=2)
                cache[prefix + "k"], cache[prefix + "v"] = k, v
        # A cached step attends from the newest position(s) to everything before, so the
        # causal rule only matters when several query positions arrive at once.
        causal = is_causal and q.size(2) > 1
        if causal and q.size(2) != k.size(2):
            raise ValueError("causal attention over a cache takes one new position at a time")
        if causal and mask is not None:
            mask, causal = mask & causal_mask(q.size(2), q.device), False
        if self.store_weights:
            out = self._explicit(q, k, v, mask, causal)
        else:
            out = F.scaled_dot_product_attention(
                q, k, v, attn_mask=mask, is_causal=causal,
                dropout_p=self.dropout if self.training else 0.0,
            )
        out = out.transpose(1, 2).reshape(x.size(0), x.size(1), self.h * self.d_k)
        return self.out_proj(out)  # [B, Lq, D]

    def _explicit(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
                  causal: bool) -> Tensor:
        scores = q @ k.transpose(-2, -1) / math.sqrt(self.d_k)  # [B, H, Lq, Lk]
        if causal:
            mask = causal_mask(q.size(2), q.device)
        if mask is not None:
            scores = scores.masked_fill(~mask, float("-inf"))
        probs = scores.softmax(dim=-1)
        self.weights = probs.detach()
        probs = F.dropout(probs, self.dropout, self.training)
        return probs @ v


def causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """[1, 1, size, size] boolean mask: position t may attend to positions <= t only."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril().view(1, 1, size, size)


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """[B, 1, 1, L] boolean mask: True where `ids` [B, L] is a real token, False at padding."""
    return (ids != pad_id).view(ids.size(0), 1, 1, ids.size(1))


class ResidualConnection(nn.Module):
    """x + dropout(sublayer(x)) with LayerNorm before (pre-norm) or after the sum (post-norm)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = LayerNormalization(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        if self.pre_norm:
            return x + self.dropout(sublayer(self.norm(x)))
        return self.norm(x + self.dropout(sublayer(x)))


class EncoderBlock(nn.Module):
    """Self-attention then feed-forward, each wrapped in a residual connection."""

    def __init__(self, d_model: int, h: int, d_ff: int, dropout: float, pre_norm: bool,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, h, attn_dropout)
        self.ff = FeedForward(d_model, d_ff, attn_dropout)
        self.res = nn.ModuleList([ResidualConnection(d_model, dropout, pre_norm) for _ in range(2)])

    def forward(self, x: Tensor, src_mask: Tensor | None) -> Tensor:
        x = self.res[0](x, lambda y: self.self_attn(y, mask=src_mask))
        return self.res[1](x, self.ff)


class DecoderBlock(nn.Module):
    """Masked self-attention, cross-attention over the encoder output, then feed-forward."""

    def __init__(self, d_model: int, h: int, d_ff: int, dropout: float, pre_norm: bool,
                 attn_dropout: float = 0.0) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(d_model, h, attn_dropout)
        self.cross_attn = MultiHeadAttention(d_model, h, attn_dropout, cross=True)
        self.ff = FeedForward(d_model, d_ff, attn_dropout)
        self.res = nn.ModuleList([ResidualConnection(d_model, dropout, pre_norm) for _ in range(3)])

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None,
                cache: LayerCache | None = None) -> Tensor:
        x = self.res[0](x, lambda y: self.self_attn(y, is_causal=True, cache=cache, prefix="self_"))
        x = self.res[1](x, lambda y: self.cross_attn(y, memory, src_mask, cache=cache,
                                                     prefix="cross_"))
        return self.res[2](x, self.ff)

    def step_weights(self) -> BlockWeights:
        """This block's parameters for `decoder_step`, gathered once per search: looking up
        a submodule's parameter through `nn.Module.__getattr__` costs about as much as the
        arithmetic of a batch-1 step, so the cached path must not do it per token."""
        sa, ca, ff = self.self_attn, self.cross_attn, self.ff
        n0, n1, n2 = (r.norm for r in self.res)
        return BlockWeights(
            n0.weight, n0.bias, sa.qkv_proj.weight, sa.qkv_proj.bias, sa.out_proj.weight,
            sa.out_proj.bias, n1.weight, n1.bias, ca.q_proj.weight, ca.q_proj.bias,
            ca.out_proj.weight, ca.out_proj.bias, n2.weight, n2.bias, ff.linear1.weight,
            ff.linear1.bias, ff.linear2.weight, ff.linear2.bias, n0.eps, sa.h,
            self.res[0].pre_norm, ca.source_kv)


class BlockWeights(NamedTuple):
    """A decoder block's parameters as plain tensors, for `decoder_step`."""

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
    """Of all three norms: `DecoderBlock` builds them alike."""
    heads: int
    pre_norm: bool
    source_kv: Callable[[Tensor], tuple[Tensor, Tensor]]


def decoder_step(x: Tensor, w: BlockWeights, memory: Tensor, src_mask: Tensor | None,
                 cache: LayerCache) -> Tensor:
    """`DecoderBlock.forward` for one new position per row, x: [B, D] (not [B, 1, D]), with a
    cache, in eval mode: the same arithmetic in about half the operations (2-D matrix
    products, no dropout calls, no head transposes: one position's [H*K] and [H, 1, K] share
    their memory layout). At batch 1 a decoding step is mostly per-operation overhead, so this
    is where cached decoding gains its speed; tests check it against `forward`."""
    B, D = x.shape
    H, pre, eps = w.heads, w.pre_norm, w.eps
    K = D // H
    # Self-attention over the cached positions and this one.
    y = F.layer_norm(x, (D,), w.norm0_w, w.norm0_b, eps) if pre else x
    q, k, v = F.linear(y, w.qkv_w, w.qkv_b).view(B, 3, H, 1, K).unbind(1)
    if "self_k" in cache:
        k = torch.cat([cache["self_k"], k], dim=2)
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
        cache["cross_k"], cache["cross_v"] = w.source_kv(memory)
    a = F.scaled_dot_product_attention(q, cache["cross_k"], cache["cross_v"],
                                       attn_mask=src_mask).view(B, D)
    x = x + F.linear(a, w.cross_out_w, w.cross_out_b)
    if not pre:
        x = F.layer_norm(x, (D,), w.norm1_w, w.norm1_b, eps)
    # Feed-forward.
    y = F.layer_norm(x, (D,), w.norm2_w, w.norm2_b, eps) if pre else x
    h = F.linear(y, w.ff1_w, w.ff1_b).relu_()
    x = x + F.linear(h, w.ff2_w, w.ff2_b)
    return x if pre else F.layer_norm(x, (D,), w.norm2_w, w.norm2_b, eps)


class Encoder(nn.Module):
    """N encoder blocks; with pre-norm a final LayerNorm (post-norm outputs are normalised)."""

    def __init__(self, blocks: list[EncoderBlock], d_model: int, pre_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNormalization(d_model) if pre_norm else nn.Identity()

    def forward(self, x: Tensor, src_mask: Tensor | None) -> Tensor:
        for block in self.blocks:
            x = block(x, src_mask)
        return self.norm(x)


class Decoder(nn.Module):
    """N decoder blocks; with pre-norm a final LayerNorm."""

    def __init__(self, blocks: list[DecoderBlock], d_model: int, pre_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNormalization(d_model) if pre_norm else nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None,
                cache: list[LayerCache] | None = None) -> Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, memory, src_mask, None if cache is None else cache[i])
        return self.norm(x)

    def storing_weights(self) -> bool:
        """Whether some attention layer records its weights (only the module path does)."""
        return any(b.self_attn.store_weights or b.cross_attn.store_weights for b in self.blocks)


class DecoderWeights(NamedTuple):
    """What a cached decoding step reads: the target embedding, each block's `BlockWeights`,
    the final LayerNorm of a pre-norm decoder (None for post-norm) and the output projection."""

    embed: Tensor
    embed_scale: float
    blocks: list[BlockWeights]
    norm: tuple[Tensor, Tensor, float] | None
    proj_w: Tensor
    proj_b: Tensor


class DecoderCache(list[LayerCache]):
    """Incremental-decoding state: one `LayerCache` per decoder layer, plus the decoder's
    `DecoderWeights`, gathered once when the search starts rather than at every token."""

    def __init__(self, layers: list[LayerCache], weights: DecoderWeights) -> None:
        super().__init__(layers)
        self.weights = weights


class ProjectionLayer(nn.Module):
    """Decoder states -> vocabulary logits (softmax is left to the loss / the search)."""

    def __init__(self, d_model: int, vocab_size: int) -> None:
        super().__init__()
        self.proj = nn.Linear(d_model, vocab_size)

    def forward(self, x: Tensor) -> Tensor:  # [B, T, D] -> [B, T, V]
        return self.proj(x)


class Transformer(nn.Module):
    """Encoder-decoder Transformer exposing `encode`, `decode` and `project` separately, so a
    search can run the encoder once and the decoder step by step with a cache."""

    def __init__(self, encoder: Encoder, decoder: Decoder, src_embed: InputEmbedding,
                 tgt_embed: InputEmbedding, src_pos: PositionalEncoding,
                 tgt_pos: PositionalEncoding, projection: ProjectionLayer) -> None:
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.src_embed, self.tgt_embed = src_embed, tgt_embed
        self.src_pos, self.tgt_pos = src_pos, tgt_pos
        self.projection = projection

    def encode(self, src: Tensor, src_mask: Tensor | None) -> Tensor:
        """src: [B, S] ids -> memory [B, S, D]."""
        return self.encoder(self.src_pos(self.src_embed(src)), src_mask)

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor,
               cache: list[LayerCache] | None = None, offset: int = 0) -> Tensor:
        """tgt: [B, T] ids at positions offset..offset+T-1 -> states [B, T, D].

        With `cache` (from `new_cache`), pass only the newest token(s) and their `offset`;
        the keys and values of earlier positions come from the cache.
        """
        if cache is not None and tgt.size(1) == 1 and self._lean_step():
            w = self._step_weights(cache)
            h = self._decode_step(memory, src_mask, tgt.view(-1), cache, offset, w)  # [B, D]
            return h.unsqueeze(1)
        x = self.tgt_pos(self.tgt_embed(tgt), offset)
        return self.decoder(x, memory, src_mask, cache)

    def decode_step(self, memory: Tensor, src_mask: Tensor | None, tokens: Tensor,
                    cache: list[LayerCache], offset: int) -> Tensor:
        """Next-token logits [B, V] after `tokens` [B] at position `offset`, with a cache from
        `new_cache`: `project(decode(...))` of one position, in fewer operations. This is the
        inner loop of greedy and beam search; at batch 1 every operation saved counts."""
        if not self._lean_step():
            h = self.decode(memory, src_mask, tokens.view(-1, 1), cache, offset)
            return self.project(h[:, -1])
        w = self._step_weights(cache)
        return F.linear(self._decode_step(memory, src_mask, tokens, cache, offset, w),
                        w.proj_w, w.proj_b)

    def _lean_step(self) -> bool:
        """Whether a cached one-position step may take `decoder_step`: in eval mode, unless
        attention weights are being recorded (only the module path computes them)."""
        return not self.training and not self.decoder.storing_weights()

    def _step_weights(self, cache: list[LayerCache]) -> DecoderWeights:
        """The weights gathered in a `new_cache` cache; a plain list of dicts gets them now."""
        return cache.weights if isinstance(cache, DecoderCache) else self.decoder_weights()

    def _decode_step(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor,
                     cache: list[LayerCache], offset: int, w: DecoderWeights) -> Tensor:
        """`decode` of one new token per row, tgt: [B] ids -> states [B, D], via
        `decoder_step`; the same arithmetic as the module path."""
        pe = self.tgt_pos.table(offset + 1)[offset]
        x = F.embedding(tgt, w.embed).mul_(w.embed_scale).add_(pe.to(w.embed.dtype))  # [B, D]
        for block_weights, layer_cache in zip(w.blocks, cache, strict=True):
            x = decoder_step(x, block_weights, memory, src_mask, layer_cache)
        if w.norm is None:
            return x
        return F.layer_norm(x, (x.size(-1),), w.norm[0], w.norm[1], w.norm[2])

    def decoder_weights(self) -> DecoderWeights:
        """The parameters a cached decoding step reads, as plain tensors (see
        `DecoderBlock.step_weights`)."""
        norm, proj = self.decoder.norm, self.projection.proj
        return DecoderWeights(
            self.tgt_embed.embedding.weight, math.sqrt(self.tgt_embed.d_model),
            [b.step_weights() for b in self.decoder.blocks],
            (norm.weight, norm.bias, norm.eps) if isinstance(norm, LayerNormalization) else None,
            proj.weight, proj.bias)

    def project(self, x: Tensor) -> Tensor:
        """[B, T, D] -> logits [B, T, V]."""
        return self.projection(x)

    def forward(self, src: Tensor, tgt: Tensor, src_mask: Tensor | None,
                targets: Tensor | None = None, ignore_index: int = -100,
                label_smoothing: float = 0.0) -> Tensor:
        """Teacher-forced logits [B, T, V] for decoder input `tgt` [B, T]; or, given `targets`
        [B, T], the mean cross-entropy over the positions whose target is not `ignore_index`.

        The loss path projects only those positions onto the vocabulary (the projection is the
        largest matrix product per target token, so padding would be costly), and the loss
        lives in `forward` so that DistributedDataParallel sees the whole computation.
        """
        h = self.decode(self.encode(src, src_mask), src_mask, tgt)  # [B, T, D]
        if targets is None:
            return self.project(h)
        keep = targets != ignore_index  # [B, T]
        logits = self.project(h[keep])  # [N, V]
        return F.cross_entropy(logits.float(), targets[keep], label_smoothing=label_smoothing)

    def new_cache(self) -> DecoderCache:
        """An empty incremental-decoding cache, one dict per decoder layer. Make a new one
        per search: it also holds the decoder's parameters as they are now."""
        return DecoderCache([{} for _ in self.decoder.blocks], self.decoder_weights())

    def attention_modules(self) -> dict[str, list[MultiHeadAttention]]:
        """The attention layers by kind, for inspection (set `store_weights` on them)."""
        return {
            "encoder_self": [b.self_attn for b in self.encoder.blocks],
            "decoder_self": [b.self_attn for b in self.decoder.blocks],
            "cross": [b.cross_attn for b in self.decoder.blocks],
        }


def reorder_cache(cache: list[LayerCache], index: Tensor) -> list[LayerCache]:
    """Select batch rows `index` of every cached tensor (beam search reorders hypotheses)."""
    layers = [{k: v.index_select(0, index) for k, v in layer.items()} for layer in cache]
    return DecoderCache(layers, cache.weights) if isinstance(cache, DecoderCache) else layers


def build_transformer(
    src_vocab_size: int,
    tgt_vocab_size: int,
    src_seq_len: int,
    tgt_seq_len: int,
    d_model: int = 512,
    N: int = 6,
    h: int = 8,
    dropout: float = 0.1,
    d_ff: int = 2048,
    *,
    decoder_layers: int | None = None,
    norm: str = "pre",
    tie_embeddings: bool = False,
    attention_dropout: float = 0.0,
    share_src_tgt_embeddings: bool = False,
) -> Transformer:
    """Assemble a Transformer with N encoder and N (or `decoder_layers`) decoder blocks.

    `dropout` is the paper's P_drop: on the embedding + position sums and on every sublayer
    output. `attention_dropout` drops attention probabilities and FFN hidden units (not in the
    paper; 0 also lets attention use the fused kernel). `src_seq_len` / `tgt_seq_len` size the
    positional tables (they grow if a longer input comes). `tie_embeddings` shares the target
    embedding with the output projection; `share_src_tgt_embeddings` (for one joint
    vocabulary) makes the source embedding that same matrix too.
    Weights get Xavier-uniform initialisation.
    """
    if norm not in ("pre", "post"):
        raise ValueError(f"norm must be 'pre' or 'post', got {norm!r}")
    pre = norm == "pre"
    n_dec = decoder_layers or N
    model = Transformer(
        Encoder([EncoderBlock(d_model, h, d_ff, dropout, pre, attention_dropout)
                 for _ in range(N)], d_model, pre),
        Decoder([DecoderBlock(d_model, h, d_ff, dropout, pre, attention_dropout)
                 for _ in range(n_dec)], d_model, pre),
        InputEmbedding(src_vocab_size, d_model),
        InputEmbedding(tgt_vocab_size, d_model),
        PositionalEncoding(d_model, src_seq_len, dropout),
        PositionalEncoding(d_model, tgt_seq_len, dropout),
        ProjectionLayer(d_model, tgt_vocab_size),
    )
    for p in model.parameters():
        if p.dim() > 1:
            nn.init.xavier_uniform_(p)
    if tie_embeddings:
        # Scaled-by-sqrt(D) embeddings want small entries; N(0, D^-1/2) keeps the tied output
        # logits at unit scale too.
        nn.init.normal_(model.tgt_embed.embedding.weight, std=d_model**-0.5)
        model.projection.proj.weight = model.tgt_embed.embedding.weight
    if share_src_tgt_embeddings:
        if src_vocab_size != tgt_vocab_size:
            raise ValueError("shared source/target embeddings need one vocabulary")
        model.src_embed.embedding.weight = model.tgt_embed.embedding.weight
    return model


def count_parameters(model: nn.Module) -> int:
    """Trainable parameters, a tied matrix counted once."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
