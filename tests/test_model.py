"""Transformer: shapes, masks that really block the future and the padding, norm variants,
weight tying, the explicit-softmax path, positional encodings, and learning at all."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch

from translator.model import (
    DecoderCache,
    PositionalEncoding,
    Transformer,
    build_transformer,
    causal_mask,
    count_parameters,
    padding_mask,
    reorder_cache,
)
from translator.tokenizer import EOS_ID, PAD_ID, SOS_ID

if TYPE_CHECKING:
    from tests.conftest import Overfit

pytestmark = pytest.mark.usefixtures("single_thread")

SRC_V, TGT_V, D = 11, 13, 16


def _model(norm: str = "pre", seed: int = 0, **kw: object) -> Transformer:
    torch.manual_seed(seed)
    params: dict = {"d_model": D, "N": 2, "h": 2, "dropout": 0.0, "d_ff": 32, "norm": norm}
    params.update(kw)
    model = build_transformer(SRC_V, TGT_V, 16, 16, **params)
    return model.eval()


def _padded_src() -> torch.Tensor:
    P, S, E = PAD_ID, SOS_ID, EOS_ID
    return torch.tensor([[S, 5, 6, E, P, P, P],
                         [S, 5, 6, 7, 8, 9, E],
                         [S, E, P, P, P, P, P]])


def _set_store_weights(model: Transformer, on: bool) -> None:
    for modules in model.attention_modules().values():
        for m in modules:
            m.store_weights = on


# ---------------------------------------------------------------- shapes and masks helpers


def test_output_shapes() -> None:
    model = _model(decoder_layers=3)
    assert len(model.encoder.blocks) == 2 and len(model.decoder.blocks) == 3
    src = _padded_src()
    tgt = torch.randint(4, TGT_V, (3, 5))
    mask = padding_mask(src, PAD_ID)
    memory = model.encode(src, mask)
    assert memory.shape == (3, 7, D)
    states = model.decode(memory, mask, tgt)
    assert states.shape == (3, 5, D)
    logits = model.project(states)
    assert logits.shape == (3, 5, TGT_V)
    assert torch.allclose(model(src, tgt, mask), logits, atol=1e-6)
    assert torch.isfinite(logits).all()


def test_causal_mask_values() -> None:
    m = causal_mask(4)
    assert m.shape == (1, 1, 4, 4) and m.dtype == torch.bool
    assert m[0, 0].tolist() == [[True, False, False, False],
                                [True, True, False, False],
                                [True, True, True, False],
                                [True, True, True, True]]


def test_padding_mask_values() -> None:
    ids = torch.tensor([[SOS_ID, 7, EOS_ID, PAD_ID], [SOS_ID, EOS_ID, PAD_ID, PAD_ID]])
    m = padding_mask(ids, PAD_ID)
    assert m.shape == (2, 1, 1, 4) and m.dtype == torch.bool
    assert m[:, 0, 0].tolist() == [[True, True, True, False], [True, True, False, False]]


# ---------------------------------------------------------------- the future is blocked


@pytest.mark.parametrize("store_weights", [False, True])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_decoder_output_at_t_ignores_tokens_after_t(norm: str, store_weights: bool) -> None:
    model = _model(norm)
    _set_store_weights(model, store_weights)
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    gen = torch.Generator().manual_seed(1)
    tgt = torch.randint(4, TGT_V, (3, 8), generator=gen)
    with torch.no_grad():
        base = model(src, tgt, mask)
        for t in range(7):
            edited = tgt.clone()
            # a different token at every position after t
            edited[:, t + 1:] = 4 + (tgt[:, t + 1:] - 4 + 1 + torch.randint(
                0, TGT_V - 5, edited[:, t + 1:].shape, generator=gen)) % (TGT_V - 4)
            assert (edited[:, t + 1:] != tgt[:, t + 1:]).all()
            out = model(src, edited, mask)
            assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5), t
            changed = (out[:, t + 1:] - base[:, t + 1:]).abs().amax(dim=-1)
            assert (changed > 1e-4).all(), t


def test_decoder_self_attention_weights_are_zero_above_the_diagonal() -> None:
    model = _model()
    _set_store_weights(model, True)
    src = _padded_src()
    with torch.no_grad():
        model(src, torch.randint(4, TGT_V, (3, 6)), padding_mask(src, PAD_ID))
    future = ~causal_mask(6)[0, 0]
    for attn in model.attention_modules()["decoder_self"]:
        w = attn.weights
        assert w is not None and w.shape == (3, 2, 6, 6)
        assert (w[..., future] == 0).all()
        assert (w[..., ~future] > 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(3, 2, 6))


# ---------------------------------------------------------------- source padding is ignored


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padded_source_positions_get_no_attention(norm: str) -> None:
    model = _model(norm)
    _set_store_weights(model, True)
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    with torch.no_grad():
        model(src, torch.randint(4, TGT_V, (3, 5)), mask)
    pad = ~mask[:, 0, 0]  # [B, S]
    mods = model.attention_modules()
    assert len(mods["encoder_self"]) == 2 and len(mods["cross"]) == 2
    for attn in mods["encoder_self"] + mods["cross"]:
        w = attn.weights
        assert w is not None and w.shape[-1] == src.size(1)
        keys_at_pad = pad[:, None, None, :].expand_as(w)
        assert (w[keys_at_pad] == 0).all()
        assert (w[~keys_at_pad] > 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]))


@pytest.mark.parametrize("store_weights", [False, True])
def test_token_ids_at_padded_positions_do_not_matter(store_weights: bool) -> None:
    model = _model()
    _set_store_weights(model, store_weights)
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, TGT_V, (3, 5))
    garbage = src.clone()
    garbage[~mask[:, 0, 0]] = torch.randint(4, SRC_V, (int((~mask).sum()),))
    assert not torch.equal(garbage, src)
    with torch.no_grad():
        out = model(src, tgt, mask)
        out_garbage = model(garbage, tgt, mask)
        memory = model.encode(src, mask)
        memory_garbage = model.encode(garbage, mask)
    assert torch.allclose(out, out_garbage, atol=1e-5)
    real = mask[:, 0, 0]
    assert torch.allclose(memory[real], memory_garbage[real], atol=1e-5)


def test_padding_does_not_change_a_sentences_output() -> None:
    model = _model()
    alone = torch.tensor([[SOS_ID, 5, 6, EOS_ID]])
    padded = torch.tensor([[SOS_ID, 5, 6, EOS_ID, PAD_ID, PAD_ID, PAD_ID]])
    tgt = torch.tensor([[SOS_ID, 7, 8]])
    with torch.no_grad():
        a = model(alone, tgt, padding_mask(alone, PAD_ID))
        b = model(padded, tgt, padding_mask(padded, PAD_ID))
    assert torch.allclose(a, b, atol=1e-5)


# ---------------------------------------------------------------- variants


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_norm_variants_build_run_and_train(norm: str) -> None:
    model = _model(norm).train()
    src = _padded_src()
    tgt = torch.randint(4, TGT_V, (3, 5))
    logits = model(src, tgt, padding_mask(src, PAD_ID))
    assert torch.isfinite(logits).all()
    logits.logsumexp(-1).mean().backward()
    grads = [p.grad for p in model.parameters()]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)


def test_pre_and_post_norm_differ() -> None:
    src = _padded_src()
    tgt = torch.randint(4, TGT_V, (3, 5))
    mask = padding_mask(src, PAD_ID)
    with torch.no_grad():
        pre = _model("pre", seed=3)(src, tgt, mask)
        post = _model("post", seed=3)(src, tgt, mask)
    assert not torch.allclose(pre, post, atol=1e-3)


def _is_normalised(x: torch.Tensor) -> bool:
    """Every position has mean 0 and variance 1 over d_model (LayerNorm at its init)."""
    mean, var = x.mean(-1), x.var(-1, unbiased=False)
    return bool(torch.allclose(mean, torch.zeros_like(mean), atol=1e-4)
                and torch.allclose(var, torch.ones_like(var), atol=1e-3))


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_where_layer_norm_sits(norm: str) -> None:
    """post: LN(x + sublayer(x)), so every block's output is normalised; pre: the residual
    stream is not normalised, only the final LayerNorm of each stack normalises it."""
    model = _model(norm)
    outputs: list[torch.Tensor] = []
    blocks = [*model.encoder.blocks, *model.decoder.blocks]
    hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out)) for b in blocks]
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    with torch.no_grad():
        memory = model.encode(src, mask)
        states = model.decode(memory, mask, torch.randint(4, TGT_V, (3, 5)))
    for h in hooks:
        h.remove()
    assert len(outputs) == len(blocks)
    assert _is_normalised(memory) and _is_normalised(states)
    assert all(_is_normalised(o) == (norm == "post") for o in outputs)


def test_unknown_norm_is_rejected() -> None:
    with pytest.raises(ValueError, match="norm"):
        build_transformer(SRC_V, TGT_V, 8, 8, d_model=D, N=1, h=2, d_ff=32, norm="middle")


def test_tie_embeddings_shares_the_tensor() -> None:
    tied = _model(tie_embeddings=True)
    untied = _model(tie_embeddings=False)
    emb = tied.tgt_embed.embedding.weight
    assert tied.projection.proj.weight is emb
    assert untied.projection.proj.weight is not untied.tgt_embed.embedding.weight
    assert count_parameters(untied) - count_parameters(tied) == TGT_V * D
    # a training step updates both views together
    opt = torch.optim.SGD(tied.parameters(), lr=0.1)
    src = _padded_src()
    tied.train()
    tied(src, torch.randint(4, TGT_V, (3, 4)), padding_mask(src, PAD_ID)).sum().backward()
    before = emb.detach().clone()
    opt.step()
    assert not torch.equal(before, emb)
    assert tied.projection.proj.weight.data_ptr() == tied.tgt_embed.embedding.weight.data_ptr()


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_explicit_attention_path_matches_sdpa(norm: str) -> None:
    model = _model(norm)
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, TGT_V, (3, 6))
    with torch.no_grad():
        fused = model(src, tgt, mask)
        _set_store_weights(model, True)
        explicit = model(src, tgt, mask)
    assert torch.allclose(fused, explicit, atol=1e-5)
    assert all(m.weights is not None for ms in model.attention_modules().values() for m in ms)


def test_cached_decode_matches_full_decode() -> None:
    model = _model()
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, TGT_V, (3, 6))
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(memory, mask, tgt)
        cache = model.new_cache()
        steps = [model.decode(memory, mask, tgt[:, t:t + 1], cache, offset=t) for t in range(6)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)
    # reordering the cache selects rows
    picked = reorder_cache(cache, torch.tensor([2, 0]))
    assert isinstance(picked, DecoderCache) and picked.weights is cache.weights
    assert all(v.size(0) == 2 for layer in picked for v in layer.values())
    assert torch.equal(picked[0]["self_k"][1], cache[0]["self_k"][0])


# ---------------------------------------------------------------- positional encoding


def test_positional_encoding_values_and_offset() -> None:
    pe = PositionalEncoding(8, max_len=16, dropout=0.0)
    out = pe(torch.zeros(1, 5, 8))[0]
    for pos in range(5):
        for i in range(4):
            angle = pos / 10000 ** (2 * i / 8)
            assert out[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert out[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)
    shifted = pe(torch.zeros(1, 2, 8), offset=3)[0]
    assert torch.allclose(shifted, out[3:5])


def test_positional_encoding_grows_for_longer_inputs() -> None:
    pe = PositionalEncoding(8, max_len=4, dropout=0.0)
    short = pe(torch.zeros(1, 4, 8))[0].clone()
    long = pe(torch.zeros(2, 11, 8))
    assert long.shape == (2, 11, 8)
    assert pe.pe.size(0) >= 11
    assert torch.allclose(long[0, :4], short)
    assert torch.allclose(long[0], PositionalEncoding(8, max_len=64, dropout=0.0).pe[:11])
    assert pe(torch.zeros(1, 1, 8), offset=30).shape == (1, 1, 8)  # grows for offsets too


def test_model_runs_on_inputs_longer_than_its_tables() -> None:
    torch.manual_seed(0)
    model = build_transformer(SRC_V, TGT_V, 4, 4, d_model=D, N=1, h=2, dropout=0.0,
                              d_ff=32).eval()
    src = torch.randint(4, SRC_V, (2, 12))
    tgt = torch.randint(4, TGT_V, (2, 9))
    with torch.no_grad():
        out = model(src, tgt, padding_mask(src, PAD_ID))
    assert out.shape == (2, 9, TGT_V) and torch.isfinite(out).all()


# ---------------------------------------------------------------- it learns


def test_tiny_model_memorises_fixed_pairs(overfit: Overfit) -> None:
    assert overfit.loss < 0.05, (overfit.loss, overfit.steps)
    assert overfit.steps <= 400
    with torch.no_grad():
        logits = overfit.model(overfit.batch.src, overfit.batch.tgt_in, overfit.batch.src_mask)
    pred = logits.argmax(-1)
    real = overfit.batch.tgt_out != PAD_ID
    assert torch.equal(pred[real], overfit.batch.tgt_out[real])
    assert len(overfit.src) == overfit.batch.src.size(0)
