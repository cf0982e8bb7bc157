"""Transformer: shapes, masks that really block the future and the padding, norm variants,
weight tying, attention weights on request (the explicit-softmax path), the incremental cache,
state-dict compatibility with older checkpoints, positional encodings, and learning at all."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.model.transformer import (
    PositionalEncoding,
    Transformer,
    build_transformer,
    causal_mask,
    count_parameters,
    padding_mask,
    reorder_cache,
)

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


def _logits(model: Transformer, src: torch.Tensor, tgt: torch.Tensor, mask: torch.Tensor,
            need_weights: bool = False) -> torch.Tensor:
    """Teacher-forced logits [B, T, V]; with `need_weights` through the explicit-softmax path
    (the one that returns attention probabilities)."""
    if not need_weights:
        return model(src, tgt, mask)
    memory, _ = model.encode(src, mask, need_weights=True)
    states, _ = model.decode(memory, mask, tgt, need_weights=True)
    return model.project(states)


def _weights(model: Transformer, src: torch.Tensor, tgt: torch.Tensor,
             mask: torch.Tensor) -> dict[str, list[torch.Tensor]]:
    """Attention probabilities of a teacher-forced pass: kind -> per layer [B, H, Lq, Lk]."""
    memory, enc = model.encode(src, mask, need_weights=True)
    _, dec = model.decode(memory, mask, tgt, need_weights=True)
    return {"encoder_self": [w["self"] for w in enc], "decoder_self": [w["self"] for w in dec],
            "cross": [w["cross"] for w in dec]}


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


@pytest.mark.parametrize("need_weights", [False, True])
@pytest.mark.parametrize("norm", ["pre", "post"])
def test_decoder_output_at_t_ignores_tokens_after_t(norm: str, need_weights: bool) -> None:
    model = _model(norm)
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    gen = torch.Generator().manual_seed(1)
    tgt = torch.randint(4, TGT_V, (3, 8), generator=gen)
    with torch.no_grad():
        base = _logits(model, src, tgt, mask, need_weights)
        for t in range(7):
            edited = tgt.clone()
            # a different token at every position after t
            edited[:, t + 1:] = 4 + (tgt[:, t + 1:] - 4 + 1 + torch.randint(
                0, TGT_V - 5, edited[:, t + 1:].shape, generator=gen)) % (TGT_V - 4)
            assert (edited[:, t + 1:] != tgt[:, t + 1:]).all()
            out = _logits(model, src, edited, mask, need_weights)
            assert torch.allclose(out[:, :t + 1], base[:, :t + 1], atol=1e-5), t
            changed = (out[:, t + 1:] - base[:, t + 1:]).abs().amax(dim=-1)
            assert (changed > 1e-4).all(), t


def test_decoder_self_attention_weights_are_zero_above_the_diagonal() -> None:
    model = _model()
    src = _padded_src()
    with torch.no_grad():
        weights = _weights(model, src, torch.randint(4, TGT_V, (3, 6)), padding_mask(src, PAD_ID))
    future = ~causal_mask(6)[0, 0]
    assert len(weights["decoder_self"]) == 2
    for w in weights["decoder_self"]:
        assert w.shape == (3, 2, 6, 6)
        assert (w[..., future] == 0).all()
        assert (w[..., ~future] > 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(3, 2, 6))


# ---------------------------------------------------------------- source padding is ignored


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_padded_source_positions_get_no_attention(norm: str) -> None:
    model = _model(norm)
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    with torch.no_grad():
        weights = _weights(model, src, torch.randint(4, TGT_V, (3, 5)), mask)
    pad = ~mask[:, 0, 0]  # [B, S]
    assert len(weights["encoder_self"]) == 2 and len(weights["cross"]) == 2
    for w in weights["encoder_self"] + weights["cross"]:
        assert w.shape[-1] == src.size(1)
        keys_at_pad = pad[:, None, None, :].expand_as(w)
        assert (w[keys_at_pad] == 0).all()
        assert (w[~keys_at_pad] > 0).all()
        assert torch.allclose(w.sum(-1), torch.ones(w.shape[:-1]))


@pytest.mark.parametrize("need_weights", [False, True])
def test_token_ids_at_padded_positions_do_not_matter(need_weights: bool) -> None:
    model = _model()
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, TGT_V, (3, 5))
    garbage = src.clone()
    garbage[~mask[:, 0, 0]] = torch.randint(4, SRC_V, (int((~mask).sum()),))
    assert not torch.equal(garbage, src)
    with torch.no_grad():
        out = _logits(model, src, tgt, mask, need_weights)
        out_garbage = _logits(model, garbage, tgt, mask, need_weights)
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
    # a block returns (states, attention weights or None)
    hooks = [b.register_forward_hook(lambda _m, _i, out: outputs.append(out[0])) for b in blocks]
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
        explicit = _logits(model, src, tgt, mask, need_weights=True)
    assert torch.allclose(fused, explicit, atol=1e-5)


def test_attention_weights_come_out_only_when_asked() -> None:
    """Without `need_weights` encode/decode return their states alone and the model keeps no
    attention state; with it, per layer the probabilities, each row summing to 1."""
    model = _model()
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, TGT_V, (3, 5))
    with torch.no_grad():
        memory = model.encode(src, mask)
        states = model.decode(memory, mask, tgt)
        assert isinstance(memory, torch.Tensor) and isinstance(states, torch.Tensor)
        memory_w, enc = model.encode(src, mask, need_weights=True)
        states_w, dec = model.decode(memory, mask, tgt, need_weights=True)
    torch.testing.assert_close(memory_w, memory)
    torch.testing.assert_close(states_w, states)
    assert [set(w) for w in enc] == [{"self"}] * 2
    assert [set(w) for w in dec] == [{"self", "cross"}] * 2
    shapes = {"self": (3, 2, 5, 5), "cross": (3, 2, 5, 7)}
    for w in dec:
        for kind, probs in w.items():
            assert probs.shape == shapes[kind]
            torch.testing.assert_close(probs.sum(-1), torch.ones(probs.shape[:-1]))
    for w in enc:
        assert w["self"].shape == (3, 2, 7, 7)
        torch.testing.assert_close(w["self"].sum(-1), torch.ones(3, 2, 7))
    # nothing is stored on the modules
    for m in model.modules():
        assert not any(isinstance(v, torch.Tensor) for v in vars(m).values()), m


def test_cached_steps_return_the_weights_of_the_whole_prefix_rows() -> None:
    """A cached step with `need_weights` gives row t of the teacher-forced maps."""
    model = _model()
    src = _padded_src()
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, TGT_V, (3, 5))
    with torch.no_grad():
        forced = _weights(model, src, tgt, mask)
        memory = model.encode(src, mask)
        cache = model.new_cache()
        for t in range(5):
            _, dec = model.decode(memory, mask, tgt[:, t:t + 1], cache, offset=t,
                                  need_weights=True)
            for layer, w in enumerate(dec):
                assert w["self"].shape == (3, 2, 1, t + 1)
                torch.testing.assert_close(w["self"][:, :, 0],
                                           forced["decoder_self"][layer][:, :, t, :t + 1])
                torch.testing.assert_close(w["cross"][:, :, 0], forced["cross"][layer][:, :, t])


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
    assert len(cache) == 2 and set(cache[0]) == {"self_k", "self_v", "cross_k", "cross_v"}
    assert cache[0]["self_k"].shape == (3, 2, 6, D // 2)  # [B, H, T, K]
    assert cache[0]["cross_k"].shape == (3, 2, 7, D // 2)  # [B, H, S, K]
    # reordering the cache selects rows
    picked = reorder_cache(cache, torch.tensor([2, 0]))
    assert all(v.size(0) == 2 for layer in picked for v in layer.values())
    assert torch.equal(picked[0]["self_k"][1], cache[0]["self_k"][0])


# ---------------------------------------------------------------- checkpoint compatibility

# build_transformer(11, 13, 16, 16, d_model=16, N=1, h=2, d_ff=32, decoder_layers=2,
# norm="pre").state_dict(), captured from the code before issue 13 (commit 808d53f): the names
# and shapes that checkpoints and the CTranslate2 export (translator/decode/ct2.py) rely on.
STATE_DICT_BEFORE_ISSUE_13 = {
    'decoder.blocks.0.cross_attn.kv_proj.bias': (32,),
    'decoder.blocks.0.cross_attn.kv_proj.weight': (32, 16),
    'decoder.blocks.0.cross_attn.out_proj.bias': (16,),
    'decoder.blocks.0.cross_attn.out_proj.weight': (16, 16),
    'decoder.blocks.0.cross_attn.q_proj.bias': (16,),
    'decoder.blocks.0.cross_attn.q_proj.weight': (16, 16),
    'decoder.blocks.0.ff.linear1.bias': (32,),
    'decoder.blocks.0.ff.linear1.weight': (32, 16),
    'decoder.blocks.0.ff.linear2.bias': (16,),
    'decoder.blocks.0.ff.linear2.weight': (16, 32),
    'decoder.blocks.0.res.0.norm.bias': (16,),
    'decoder.blocks.0.res.0.norm.weight': (16,),
    'decoder.blocks.0.res.1.norm.bias': (16,),
    'decoder.blocks.0.res.1.norm.weight': (16,),
    'decoder.blocks.0.res.2.norm.bias': (16,),
    'decoder.blocks.0.res.2.norm.weight': (16,),
    'decoder.blocks.0.self_attn.out_proj.bias': (16,),
    'decoder.blocks.0.self_attn.out_proj.weight': (16, 16),
    'decoder.blocks.0.self_attn.qkv_proj.bias': (48,),
    'decoder.blocks.0.self_attn.qkv_proj.weight': (48, 16),
    'decoder.blocks.1.cross_attn.kv_proj.bias': (32,),
    'decoder.blocks.1.cross_attn.kv_proj.weight': (32, 16),
    'decoder.blocks.1.cross_attn.out_proj.bias': (16,),
    'decoder.blocks.1.cross_attn.out_proj.weight': (16, 16),
    'decoder.blocks.1.cross_attn.q_proj.bias': (16,),
    'decoder.blocks.1.cross_attn.q_proj.weight': (16, 16),
    'decoder.blocks.1.ff.linear1.bias': (32,),
    'decoder.blocks.1.ff.linear1.weight': (32, 16),
    'decoder.blocks.1.ff.linear2.bias': (16,),
    'decoder.blocks.1.ff.linear2.weight': (16, 32),
    'decoder.blocks.1.res.0.norm.bias': (16,),
    'decoder.blocks.1.res.0.norm.weight': (16,),
    'decoder.blocks.1.res.1.norm.bias': (16,),
    'decoder.blocks.1.res.1.norm.weight': (16,),
    'decoder.blocks.1.res.2.norm.bias': (16,),
    'decoder.blocks.1.res.2.norm.weight': (16,),
    'decoder.blocks.1.self_attn.out_proj.bias': (16,),
    'decoder.blocks.1.self_attn.out_proj.weight': (16, 16),
    'decoder.blocks.1.self_attn.qkv_proj.bias': (48,),
    'decoder.blocks.1.self_attn.qkv_proj.weight': (48, 16),
    'decoder.norm.bias': (16,),
    'decoder.norm.weight': (16,),
    'encoder.blocks.0.ff.linear1.bias': (32,),
    'encoder.blocks.0.ff.linear1.weight': (32, 16),
    'encoder.blocks.0.ff.linear2.bias': (16,),
    'encoder.blocks.0.ff.linear2.weight': (16, 32),
    'encoder.blocks.0.res.0.norm.bias': (16,),
    'encoder.blocks.0.res.0.norm.weight': (16,),
    'encoder.blocks.0.res.1.norm.bias': (16,),
    'encoder.blocks.0.res.1.norm.weight': (16,),
    'encoder.blocks.0.self_attn.out_proj.bias': (16,),
    'encoder.blocks.0.self_attn.out_proj.weight': (16, 16),
    'encoder.blocks.0.self_attn.qkv_proj.bias': (48,),
    'encoder.blocks.0.self_attn.qkv_proj.weight': (48, 16),
    'encoder.norm.bias': (16,),
    'encoder.norm.weight': (16,),
    'projection.proj.bias': (13,),
    'projection.proj.weight': (13, 16),
    'src_embed.embedding.weight': (11, 16),
    'tgt_embed.embedding.weight': (13, 16),
}


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_state_dict_keys_and_shapes_are_those_of_older_checkpoints(norm: str) -> None:
    torch.manual_seed(0)
    model = build_transformer(11, 13, 16, 16, d_model=16, N=1, h=2, d_ff=32, decoder_layers=2,
                              norm=norm)
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    expected = dict(STATE_DICT_BEFORE_ISSUE_13)
    if norm == "post":  # post-norm stacks have no final LayerNorm
        for k in ("encoder.norm.weight", "encoder.norm.bias", "decoder.norm.weight",
                  "decoder.norm.bias"):
            del expected[k]
    assert shapes == expected
    # an older checkpoint's state dict loads strictly into a freshly built model
    fresh = build_transformer(11, 13, 16, 16, d_model=16, N=1, h=2, d_ff=32, decoder_layers=2,
                              norm=norm)
    fresh.load_state_dict(model.state_dict(), strict=True)


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
    assert overfit.steps < 400  # stopped by its training loss < 0.01, not by the step cap
    with torch.no_grad():
        logits = overfit.model(overfit.batch.src, overfit.batch.tgt_in, overfit.batch.src_mask)
    pred = logits.argmax(-1)
    real = overfit.batch.tgt_out != PAD_ID
    assert torch.equal(pred[real], overfit.batch.tgt_out[real])
