"""The encoder-decoder Transformer of "Attention Is All You Need" (Vaswani et al., 2017).

Tensors in, tensors out: this module knows nothing of files, configs or tokenizers.

Parts, top to bottom as in the paper: InputEmbedding (3.4), PositionalEncoding (3.5),
LayerNormalization, FeedForward (3.3), MultiHeadAttention (3.2), ResidualConnection,
EncoderBlock, Encoder, DecoderBlock, Decoder, ProjectionLayer, Transformer, build_transformer.

Shapes: B batch, S source length, T target length, D d_model, H heads, K = D / H, V vocabulary,
Lq / Lk query / key length of an attention call. Masks are boolean with True meaning "may be
attended to"; the source padding mask has shape [B, 1, 1, S] so it broadcasts over heads and
query positions. Decoder self-attention needs no mask tensor: targets are right-padded, so the
causal rule alone keeps every real position away from padding, and `is_causal` lets the fused
attention kernel apply it without materialising it.

Incremental decoding (fairseq's "incremental state"): a search passes `cache`, one dict per
decoder layer (`new_cache`), and feeds only the newest token. Each attention layer keeps its
keys and values there: self-attention appends this step's to those of earlier steps,
cross-attention projects the encoder output once, on the first step. The same classes compute
training, whole-prefix decoding and cached steps.

Attention weights come out only when asked: `encode(..., need_weights=True)` and
`decode(..., need_weights=True)` also return each layer's attention probabilities
[B, H, Lq, Lk]; without it attention runs in the fused kernel and computes none.

Normalisation: the paper uses *post-norm* (LayerNorm after each residual addition,
x = LN(x + Sublayer(x))). `norm="pre"` (x = x + Sublayer(LN(x)), plus a final LayerNorm per
stack) is the variant most toolkits default to because it trains stably with short warmup.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from translator.model.fast_dropout import Dropout

# A decoder layer's incremental state: self-attention keys/values so far ("self_k", "self_v":
# [B, H, t, K]) and cross-attention keys/values of the source ("cross_k", "cross_v":
# [B, H, S, K], computed once). One dict per layer.
LayerCache = dict[str, Tensor]
# Attention probabilities by kind, when asked for: "self" (and "cross" in the decoder), each
# [B, H, Lq, Lk].
AttentionWeights = dict[str, Tensor]


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
        """PE(pos, 2i) = sin(pos / 10000^(2i/D)), PE(pos, 2i+1) = cos(...): [length, D]."""
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
        """x holds positions offset .. offset + L - 1 (a cached step: offset = t, L = 1)."""
        end = offset + x.size(1)
        return self.dropout(x + self.table(end)[offset:end].to(x.dtype))


class LayerNormalization(nn.Module):
    """LayerNorm with learned gain and bias (Ba et al., 2016), via the fused kernel."""

    def __init__(self, d_model: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(d_model))
        self.bias = nn.Parameter(torch.zeros(d_model))

    def forward(self, x: Tensor) -> Tensor:  # [..., D] -> [..., D]
        return F.layer_norm(x, (x.size(-1),), self.weight, self.bias, self.eps)


class FeedForward(nn.Module):
    """Position-wise FFN: Linear(D, d_ff) -> ReLU -> dropout -> Linear(d_ff, D). The paper has
    no dropout inside the FFN; `dropout` here is the model's `attention_dropout` (default 0)."""

    def __init__(self, d_model: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.linear1 = nn.Linear(d_model, d_ff)
        self.linear2 = nn.Linear(d_ff, d_model)
        self.dropout = Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, L, D]
        # In place: the hidden layer is the largest activation, and a fresh buffer for it costs
        # page faults on every large batch; ReLU's backward needs only its output.
        return self.linear2(self.dropout(F.relu(self.linear1(x), inplace=True)))


def causal_mask(size: int, device: torch.device | str | None = None) -> Tensor:
    """[1, 1, size, size] boolean mask: position t may attend to positions <= t only."""
    return torch.ones(size, size, dtype=torch.bool, device=device).tril().view(1, 1, size, size)


def padding_mask(ids: Tensor, pad_id: int) -> Tensor:
    """[B, 1, 1, L] boolean mask: True where `ids` [B, L] is a real token, False at padding."""
    return (ids != pad_id).view(ids.size(0), 1, 1, ids.size(1))


def scaled_dot_product_attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None,
                                 is_causal: bool = False, dropout: float = 0.0,
                                 need_weights: bool = False) -> tuple[Tensor, Tensor | None]:
    """softmax(Q K^T / sqrt(K) + mask) V, equation 1 of the paper.

    q: [B, H, Lq, K]; k, v: [B, H, Lk, K]; mask: [B, 1, 1|Lq, Lk] (True = may attend).
    Returns ([B, H, Lq, K], the probabilities [B, H, Lq, Lk] if `need_weights` else None).
    Without weights PyTorch's fused kernel computes the same thing without materialising the
    probabilities; with them the softmax is spelled out.
    """
    if not need_weights:
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=is_causal,
                                             dropout_p=dropout)
        return out, None
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))  # [B, H, Lq, Lk]
    if is_causal:
        mask = causal_mask(q.size(2), q.device)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = scores.softmax(dim=-1)
    return F.dropout(probs, dropout) @ v, probs.detach()


class MultiHeadAttention(nn.Module):
    """Scaled dot-product attention over H heads (section 3.2).

    Self-attention projects queries, keys and values with one fused [D, 3D] matrix;
    cross-attention projects queries from the decoder and keys/values (one [D, 2D] matrix)
    from the encoder output. With a `cache` (incremental decoding) self-attention appends
    this call's keys/values to those of earlier calls, and cross-attention projects the
    encoder output only on the first call.
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
        # Where this layer keeps its keys and values in a decoder layer's cache.
        kind = "cross" if cross else "self"
        self.cache_k, self.cache_v = f"{kind}_k", f"{kind}_v"

    def _heads(self, x: Tensor) -> Tensor:  # [B, L, D] -> [B, H, L, K]
        return x.view(x.size(0), x.size(1), self.h, self.d_k).transpose(1, 2)

    def _split(self, x: Tensor, n: int) -> tuple[Tensor, ...]:
        """[B, L, n*D] (n fused projections) -> n tensors [B, H, L, K], one view + permute."""
        parts = x.view(x.size(0), x.size(1), n, self.h, self.d_k).permute(2, 0, 3, 1, 4)
        return parts.unbind(0)

    def source_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values of the encoder output [B, S, D]: two [B, H, S, K]."""
        k, v = self._split(self.kv_proj(memory), 2)
        return k, v

    def forward(
        self,
        x: Tensor,
        memory: Tensor | None = None,
        mask: Tensor | None = None,
        is_causal: bool = False,
        cache: LayerCache | None = None,
        need_weights: bool = False,
    ) -> tuple[Tensor, Tensor | None]:
        """x: [B, Lq, D]; memory: [B, S, D] (cross-attention); mask: [B, 1, 1|Lq, Lk].

        Returns ([B, Lq, D], the attention probabilities [B, H, Lq, Lk] or None).
        """
        if self.cross:
            q = self._heads(self.q_proj(x))  # [B, H, Lq, K]
            if cache is not None and self.cache_k in cache:
                k, v = cache[self.cache_k], cache[self.cache_v]  # [B, H, S, K]
            else:
                assert memory is not None, "cross-attention needs the encoder output"
                k, v = self.source_kv(memory)
                if cache is not None:
                    cache[self.cache_k], cache[self.cache_v] = k, v
        else:
            q, k, v = self._split(self.qkv_proj(x), 3)  # 3 x [B, H, Lq, K]
            if cache is not None:
                if self.cache_k in cache:  # earlier positions first: [B, H, t + Lq, K]
                    k = torch.cat([cache[self.cache_k], k], dim=2)
                    v = torch.cat([cache[self.cache_v], v], dim=2)
                cache[self.cache_k], cache[self.cache_v] = k, v
        # A cached step attends from the newest position to everything before, so the causal
        # rule only matters when several query positions arrive at once.
        causal = is_causal and q.size(2) > 1
        if causal and q.size(2) != k.size(2):
            raise ValueError("causal attention over a cache takes one new position at a time")
        if causal and mask is not None:
            mask, causal = mask & causal_mask(q.size(2), q.device), False
        out, weights = scaled_dot_product_attention(
            q, k, v, mask, causal, self.dropout if self.training else 0.0, need_weights)
        out = out.transpose(1, 2).reshape(x.size(0), x.size(1), self.h * self.d_k)
        return self.out_proj(out), weights  # [B, Lq, D]


class ResidualConnection(nn.Module):
    """x + dropout(sublayer(x)) with LayerNorm before (pre-norm) or after the sum (post-norm)."""

    def __init__(self, d_model: int, dropout: float, pre_norm: bool) -> None:
        super().__init__()
        self.norm = LayerNormalization(d_model)
        self.dropout = Dropout(dropout)
        self.pre_norm = pre_norm

    def forward(self, x: Tensor, sublayer: Callable[[Tensor], Tensor]) -> Tensor:
        # [B, L, D] -> [B, L, D]
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

    def forward(self, x: Tensor, src_mask: Tensor | None,
                need_weights: bool = False) -> tuple[Tensor, AttentionWeights | None]:
        """x: [B, S, D] -> ([B, S, D], {"self": [B, H, S, S]} if `need_weights` else None)."""
        weights: AttentionWeights = {}

        def self_attention(y: Tensor) -> Tensor:
            y, weights["self"] = self.self_attn(y, mask=src_mask, need_weights=need_weights)
            return y

        x = self.res[0](x, self_attention)
        x = self.res[1](x, self.ff)
        return x, weights if need_weights else None


class Encoder(nn.Module):
    """N encoder blocks; with pre-norm a final LayerNorm (post-norm outputs are normalised)."""

    def __init__(self, blocks: list[EncoderBlock], d_model: int, pre_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNormalization(d_model) if pre_norm else nn.Identity()

    def forward(self, x: Tensor, src_mask: Tensor | None,
                need_weights: bool = False) -> tuple[Tensor, list[AttentionWeights] | None]:
        """x: [B, S, D] -> ([B, S, D], per block its weights, or None)."""
        weights = []
        for block in self.blocks:
            x, w = block(x, src_mask, need_weights)
            weights.append(w)
        return self.norm(x), weights if need_weights else None


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
                cache: LayerCache | None = None,
                need_weights: bool = False) -> tuple[Tensor, AttentionWeights | None]:
        """x: [B, T, D] (T = 1 on a cached step); memory: [B, S, D] -> ([B, T, D], weights:
        {"self": [B, H, T, t + T], "cross": [B, H, T, S]} if `need_weights` else None)."""
        weights: AttentionWeights = {}

        def self_attention(y: Tensor) -> Tensor:
            y, weights["self"] = self.self_attn(y, is_causal=True, cache=cache,
                                                need_weights=need_weights)
            return y

        def cross_attention(y: Tensor) -> Tensor:
            y, weights["cross"] = self.cross_attn(y, memory, src_mask, cache=cache,
                                                  need_weights=need_weights)
            return y

        x = self.res[0](x, self_attention)
        x = self.res[1](x, cross_attention)
        x = self.res[2](x, self.ff)
        return x, weights if need_weights else None


class Decoder(nn.Module):
    """N decoder blocks; with pre-norm a final LayerNorm."""

    def __init__(self, blocks: list[DecoderBlock], d_model: int, pre_norm: bool) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.norm = LayerNormalization(d_model) if pre_norm else nn.Identity()

    def forward(self, x: Tensor, memory: Tensor, src_mask: Tensor | None,
                cache: list[LayerCache] | None = None,
                need_weights: bool = False) -> tuple[Tensor, list[AttentionWeights] | None]:
        """x: [B, T, D]; memory: [B, S, D] -> ([B, T, D], per block its weights, or None)."""
        weights = []
        for i, block in enumerate(self.blocks):
            x, w = block(x, memory, src_mask, None if cache is None else cache[i], need_weights)
            weights.append(w)
        return self.norm(x), weights if need_weights else None


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

    def encode(self, src: Tensor, src_mask: Tensor | None, need_weights: bool = False,
               ) -> Tensor | tuple[Tensor, list[AttentionWeights]]:
        """src: [B, S] ids -> memory [B, S, D]; with `need_weights`, (memory, per layer
        {"self": [B, H, S, S]})."""
        memory, weights = self.encoder(self.src_pos(self.src_embed(src)), src_mask, need_weights)
        return (memory, weights) if need_weights else memory

    def decode(self, memory: Tensor, src_mask: Tensor | None, tgt: Tensor,
               cache: list[LayerCache] | None = None, offset: int = 0,
               need_weights: bool = False) -> Tensor | tuple[Tensor, list[AttentionWeights]]:
        """tgt: [B, T] ids at positions offset .. offset+T-1 -> states [B, T, D]; with
        `need_weights`, (states, per layer {"self": [B, H, T, offset+T], "cross": [B, H, T, S]}).

        With `cache` (from `new_cache`), pass only the newest token ([B, 1]) and its `offset`;
        the keys and values of earlier positions come from the cache.
        """
        x = self.tgt_pos(self.tgt_embed(tgt), offset)  # [B, T, D]
        states, weights = self.decoder(x, memory, src_mask, cache, need_weights)
        return (states, weights) if need_weights else states

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

    def new_cache(self) -> list[LayerCache]:
        """An empty incremental-decoding cache: one dict per decoder layer."""
        return [{} for _ in self.decoder.blocks]


def reorder_cache(cache: list[LayerCache], index: Tensor) -> list[LayerCache]:
    """Select batch rows `index` [B'] of every cached tensor (beam search reorders hypotheses,
    finished sentences leave the batch): [B, ...] -> [B', ...]."""
    return [{k: v.index_select(0, index) for k, v in layer.items()} for layer in cache]


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
