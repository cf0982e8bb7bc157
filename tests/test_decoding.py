"""Greedy decoding: the cache changes nothing, [EOS] stops a sentence, length caps hold, and
sentences in one batch do not influence each other."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pytest
import torch

from tests.helpers import uncached_step
from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.decode.search import cached_step, greedy_decode, max_output_lengths, module_step
from translator.model.transformer import Transformer, build_transformer

if TYPE_CHECKING:
    from tests.conftest import Overfit

pytestmark = pytest.mark.usefixtures("single_thread")

V = 12


def _random_model(norm: str = "pre", seed: int = 0, layers: int = 2) -> Transformer:
    """A randomly initialised model in float64, so that the cached and uncached paths (which
    add up the same numbers in a different order) cannot flip an argmax by rounding."""
    torch.manual_seed(seed)
    model = build_transformer(V, V, 8, 8, d_model=16, N=layers, h=2, dropout=0.1, d_ff=32,
                              norm=norm)
    return model.double().eval()


def _src_batch(lengths: list[int], seed: int = 0) -> torch.Tensor:
    """[SOS] x [EOS] rows with x of the given lengths, right-padded."""
    gen = torch.Generator().manual_seed(seed)
    width = max(lengths) + 2
    src = torch.full((len(lengths), width), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, 0] = SOS_ID
        src[i, 1:n + 1] = torch.randint(4, V, (n,), generator=gen)
        src[i, n + 1] = EOS_ID
    return src


def _rows(src: torch.Tensor) -> list[torch.Tensor]:
    """Each row of a padded batch alone, without its padding."""
    return [row[row != PAD_ID].unsqueeze(0) for row in src]


def _constant_model(token: int) -> Transformer:
    """A model whose logits are its projection bias: it always predicts `token`."""
    torch.manual_seed(0)
    model = build_transformer(V, V, 8, 8, d_model=8, N=1, h=2, dropout=0.0, d_ff=16)
    with torch.no_grad():
        model.projection.proj.weight.zero_()
        model.projection.proj.bias.zero_()
        model.projection.proj.bias[token] = 10.0
    return model.eval()


# ---------------------------------------------------------------- cache == no cache


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cached_greedy_equals_uncached_on_random_model(norm: str, seed: int) -> None:
    model = _random_model(norm, seed)
    src = _src_batch([1, 7, 3, 5, 2, 9], seed=seed)
    cached = greedy_decode(model, src, max_len_a=1.0, max_len_b=4)
    uncached = greedy_decode(model, src, max_len_a=1.0, max_len_b=4, make_step=uncached_step)
    assert cached == uncached
    assert len(cached) == src.size(0)
    assert any(len(out) > 1 for out in cached)
    assert not model.training


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_cached_steps_equal_the_whole_prefix(norm: str) -> None:
    """One position at a time with the cache gives the decoder states (and so the logits) of
    the whole-prefix pass at every position of a padded batch."""
    from translator.model.transformer import padding_mask

    model = _random_model(norm, seed=3, layers=3)
    src = _src_batch([1, 6, 4], seed=3)
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, V, (3, 6), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        memory = model.encode(src, mask)
        full = model.decode(memory, mask, tgt)  # [B, T, D], no cache
        cache = model.new_cache()
        steps = [model.decode(memory, mask, tgt[:, t:t + 1], cache, offset=t)
                 for t in range(tgt.size(1))]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)
    torch.testing.assert_close(model.project(torch.cat(steps, dim=1)), model.project(full))
    assert set(cache[0]) == {"self_k", "self_v", "cross_k", "cross_v"}
    assert cache[0]["self_k"].shape == (3, 2, 6, 8)  # [B, H, T, K]


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_fast_step_gives_the_logits_of_the_whole_prefix(norm: str) -> None:
    """`model.fast_step.FastStep` (newest token in, logits out) equals projecting the last
    position of the uncached decoder, at every step of a padded batch, and fills the model's
    own cache layout."""
    from translator.model.fast_step import FastStep
    from translator.model.transformer import padding_mask

    model = _random_model(norm, seed=4, layers=2)
    src = _src_batch([2, 5], seed=4)
    mask = padding_mask(src, PAD_ID)
    tgt = torch.randint(4, V, (2, 5), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        memory = model.encode(src, mask)
        step, cache, module_cache = FastStep(model), model.new_cache(), model.new_cache()
        for t in range(tgt.size(1)):
            logits = step(memory, mask, tgt[:, t], cache, offset=t)  # [B, V]
            full = model.project(model.decode(memory, mask, tgt[:, :t + 1])[:, -1])
            torch.testing.assert_close(logits, full)
            model.decode(memory, mask, tgt[:, t:t + 1], module_cache, offset=t)
    for fast_layer, module_layer in zip(cache, module_cache, strict=True):
        assert fast_layer.keys() == module_layer.keys()
        for k in fast_layer:
            torch.testing.assert_close(fast_layer[k], module_layer[k])


@pytest.mark.parametrize("norm", ["pre", "post"])
def test_fast_greedy_equals_the_module_path(norm: str) -> None:
    model = _random_model(norm, seed=6)
    src = _src_batch([1, 7, 3, 5, 2, 9], seed=6)
    assert greedy_decode(model, src, max_len_a=1.0, max_len_b=4) == greedy_decode(
        model, src, max_len_a=1.0, max_len_b=4, make_step=module_step)


def test_cached_greedy_equals_uncached_in_float32() -> None:
    torch.manual_seed(0)
    model = build_transformer(V, V, 8, 8, d_model=16, N=2, h=2, dropout=0.0, d_ff=32).eval()
    src = _src_batch([2, 6, 4], seed=5)
    assert greedy_decode(model, src) == greedy_decode(model, src, make_step=uncached_step)


def test_cached_greedy_equals_uncached_on_trained_model(overfit: Overfit) -> None:
    src = overfit.batch.src
    assert greedy_decode(overfit.model, src) == greedy_decode(overfit.model, src,
                                                              make_step=uncached_step)


# ---------------------------------------------------------------- stopping


def test_trained_model_reproduces_targets_and_stops_at_eos(overfit: Overfit) -> None:
    src = overfit.batch.src
    out = greedy_decode(overfit.model, src, max_len_a=3.0, max_len_b=20)
    assert out == overfit.tgt  # exactly the memorised targets, [EOS] not included
    limits = max_output_lengths(src, 3.0, 20)
    assert all(len(o) < int(lim) for o, lim in zip(out, limits, strict=True))
    assert all(EOS_ID not in o and SOS_ID not in o and PAD_ID not in o for o in out)


def test_eos_first_gives_empty_output() -> None:
    model = _constant_model(EOS_ID)
    src = _src_batch([3, 1, 5])
    assert greedy_decode(model, src, max_len_a=2.0, max_len_b=10) == [[], [], []]
    assert greedy_decode(model, src, make_step=uncached_step) == [[], [], []]


def test_without_eos_output_length_is_the_cap() -> None:
    model = _constant_model(7)
    src = _src_batch([1, 4, 2])  # real lengths 3, 6, 4
    out = greedy_decode(model, src, max_len_a=1.0, max_len_b=2)
    assert [len(o) for o in out] == [5, 8, 6]
    assert all(set(o) == {7} for o in out)
    out = greedy_decode(model, src, max_len_a=0.5, max_len_b=1, make_step=uncached_step)
    assert [len(o) for o in out] == [2, 4, 3]


# ---------------------------------------------------------------- length caps


def test_max_output_lengths_is_a_times_source_length_plus_b() -> None:
    P, S, E = PAD_ID, SOS_ID, EOS_ID
    src = torch.tensor([[S, 5, 6, E, P, P], [S, 5, 6, 7, 8, E], [S, E, P, P, P, P]])
    assert max_output_lengths(src, 1.5, 10).tolist() == [16, 19, 13]
    assert max_output_lengths(src, 0.5, 1).tolist() == [3, 4, 2]
    assert max_output_lengths(src, 1.0, 0).tolist() == [4, 6, 2]
    assert max_output_lengths(src, 0.0, 0).tolist() == [1, 1, 1]  # at least one token
    assert max_output_lengths(src, 1.5, 10).dtype == torch.long


def test_random_model_output_respects_caps() -> None:
    model = _random_model()
    src = _src_batch([1, 6, 3])
    limits = max_output_lengths(src, 1.2, 3).tolist()
    out = greedy_decode(model, src, max_len_a=1.2, max_len_b=3)
    assert all(len(o) <= lim for o, lim in zip(out, limits, strict=True))


# ---------------------------------------------------------------- batch independence


def test_each_sentence_alone_equals_in_batch_trained(overfit: Overfit) -> None:
    src = overfit.batch.src
    together = greedy_decode(overfit.model, src)
    alone = [greedy_decode(overfit.model, row)[0] for row in _rows(src)]
    assert together == alone
    assert len({len(o) for o in together}) > 2  # sentences really finish at different steps


@pytest.mark.parametrize("make_step", [cached_step, uncached_step])
def test_each_sentence_alone_equals_in_batch_random(make_step: Any) -> None:
    model = _random_model(seed=2)
    src = _src_batch([5, 1, 8, 3, 2], seed=3)
    together = greedy_decode(model, src, max_len_a=1.0, max_len_b=3, make_step=make_step)
    alone = [greedy_decode(model, row, max_len_a=1.0, max_len_b=3, make_step=make_step)[0]
             for row in _rows(src)]
    assert together == alone


@pytest.mark.parametrize(("seed", "eos_bias"), [(0, 1.0), (1, 1.5)])
def test_rows_finishing_at_eos_do_not_change_the_others(seed: int, eos_bias: float) -> None:
    """A random model nudged towards [EOS], so that rows stop at different steps by [EOS]
    (not only by their caps) and leave the batch while the others go on."""
    model = _random_model(seed=seed)
    with torch.no_grad():
        model.projection.proj.bias[EOS_ID] += eos_bias
    src = _src_batch([5, 1, 8, 3, 2, 6], seed=seed)
    limits = max_output_lengths(src, 2.0, 5).tolist()
    together = greedy_decode(model, src, max_len_a=2.0, max_len_b=5)
    lengths = [len(o) for o in together]
    # the premise: some rows stopped at [EOS] early, at different steps, and some did not
    early = {n for n, lim in zip(lengths, limits, strict=True) if n < lim}
    assert len(early) >= 2 and any(n == lim for n, lim in zip(lengths, limits, strict=True))
    alone = [greedy_decode(model, row, max_len_a=2.0, max_len_b=5)[0] for row in _rows(src)]
    assert together == alone
    assert together == greedy_decode(model, src, max_len_a=2.0, max_len_b=5,
                                     make_step=uncached_step)


def test_every_engine_caps_with_the_same_rule() -> None:
    """`output_caps` (CTranslate2's caps, per source) and `max_output_lengths` (the searches',
    per batch row) agree, also at lengths where float32 and float64 floor a * n differently
    (0.7 * 90: 63 in float32, as the searches always capped, 62 in float64)."""
    from translator.decode.search import output_caps

    rows = [[4] * n for n in range(0, 100, 11)] + [[4] * 88]
    for a, b in [(0.7, 0), (1.3, 1), (1.5, 10), (0.0, 0), (2.1, 0)]:
        src = torch.full((len(rows), 101), PAD_ID, dtype=torch.long)
        for r, ids in enumerate(rows):
            src[r, :len(ids) + 2] = torch.tensor([SOS_ID, *ids, EOS_ID])
        assert max_output_lengths(src, a, b).tolist() == output_caps(
            [len(x) for x in rows], a, b), (a, b)
    assert output_caps([88, 0], 0.7, 0) == [63, 1]
