"""Beam search: it finds the known best sequence of a model with hand-set probabilities where
greedy does not, ranks by the GNMT length penalty exactly as the formula says, equals greedy at
beam size 1, and keeps the decoding rules (caps, [EOS], batch independence, cache == no cache).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import pytest
import torch
from torch import Tensor, nn

from tests.helpers import uncached_step
from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.decode.search import (
    Hypothesis,
    beam_search,
    greedy_decode,
    length_norm,
    max_output_lengths,
    module_step,
)
from translator.model.transformer import Transformer, build_transformer, padding_mask

if TYPE_CHECKING:
    from tests.conftest import Overfit

pytestmark = pytest.mark.usefixtures("single_thread")

V = 12
A, B, C, D, E = 4, 5, 6, 7, 8  # ordinary token ids of the hand-set tables

Table = dict[tuple[int, ...], dict[int, float]]


class TableModel(nn.Module):
    """A stand-in for the Transformer with the same `encode` / `decode` / `project` /
    `new_cache` API, whose next-token probabilities are looked up in a hand-written table by
    the prefix generated so far. Each source sentence picks its table by its first token, so
    one batch can hold sentences with different tables. Tokens a table row leaves out share a
    probability of 1e-9; a prefix missing from the table gives [EOS] for sure.
    """

    def __init__(self, tables: dict[int, Table], vocab: int = V) -> None:
        super().__init__()
        self.tables, self.vocab = tables, vocab

    def encode(self, src: Tensor, src_mask: Tensor) -> Tensor:
        return src[:, 1:2].double().unsqueeze(-1)  # [B, 1, 1]: the table key

    def new_cache(self) -> list[dict[str, Tensor]]:
        return [{}]

    def decode(self, memory: Tensor, src_mask: Tensor, tgt: Tensor,
               cache: list[dict[str, Tensor]] | None = None, offset: int = 0) -> Tensor:
        full = tgt
        if cache is not None:
            if "tokens" in cache[0]:
                full = torch.cat([cache[0]["tokens"], tgt], dim=1)
            cache[0]["tokens"] = full  # reorder_cache reorders it like any cached tensor
        first = full.size(1) - tgt.size(1)
        rows = []
        for b in range(full.size(0)):
            table = self.tables[int(memory[b, 0, 0])]
            rows.append([self._log_probs(table, tuple(full[b, 1:t + 1].tolist()))
                         for t in range(first, full.size(1))])
        return torch.tensor(rows, dtype=torch.float64)  # [B, T, V]: "states" = log-probs

    def project(self, h: Tensor) -> Tensor:
        return h

    def _log_probs(self, table: Table, prefix: tuple[int, ...]) -> list[float]:
        row = table.get(prefix, {EOS_ID: 1.0})
        rest = [t for t in range(self.vocab) if t not in row]
        probs = [row.get(t, 1e-9) for t in range(self.vocab)]
        scale = (1.0 - 1e-9 * len(rest)) / sum(row.values())
        return [math.log(p * scale) if t in row else math.log(p) for t, p in enumerate(probs)]


def _src(keys: list[int], length: int = 3) -> Tensor:
    """One source row per table key: [SOS] key x x ... [EOS] (real length `length` + 2)."""
    src = torch.full((len(keys), length + 2), A, dtype=torch.long)
    src[:, 0], src[:, 1], src[:, -1] = SOS_ID, torch.tensor(keys), EOS_ID
    return src


# Greedy takes A (0.5) and then can only reach 0.5 * 0.4 = 0.2; B (0.4) then C (0.9) is
# 0.36, the best sequence. Every complete sequence ends with [EOS] at probability 1.
GREEDY_TRAP: Table = {
    (): {A: 0.5, B: 0.4, EOS_ID: 0.1},
    (A,): {C: 0.4, D: 0.3, E: 0.3},
    (B,): {C: 0.9, EOS_ID: 0.1},
}

# Stopping at once scores log 0.52; going on through A B C D [EOS] scores log(0.48 * 0.99^3)
# over four tokens + [EOS]. Without a length penalty the short one wins; with a large enough
# alpha the long one does.
SHORT_OR_LONG: Table = {
    (): {EOS_ID: 0.52, A: 0.48},
    (A,): {B: 0.99, D: 0.01},
    (A, B): {C: 0.99, D: 0.01},
    (A, B, C): {D: 0.99, E: 0.01},
}


def _tokens(result: list[list[Hypothesis]]) -> list[list[list[int]]]:
    return [[h.tokens for h in hyps] for hyps in result]


# ---------------------------------------------------------------- hand-set probabilities


def test_beam_finds_the_best_sequence_where_greedy_does_not() -> None:
    model = TableModel({1: GREEDY_TRAP})
    src = _src([1])
    assert greedy_decode(model, src) == [[A, C]]
    best = beam_search(model, src, beam_size=2, length_penalty=0.0, n_best=2)[0]
    assert [h.tokens for h in best] == [[B, C], [A, C]]
    assert best[0].log_prob == pytest.approx(math.log(0.4 * 0.9 * 1.0), abs=1e-5)
    assert best[1].log_prob == pytest.approx(math.log(0.5 * 0.4 * 1.0), abs=1e-5)
    assert best[0].length == 3  # B C [EOS]
    # beam 1 falls into the same trap as greedy
    assert _tokens(beam_search(model, src, beam_size=1, length_penalty=0.0)) == [[[A, C]]]


def test_sentences_with_different_tables_in_one_batch() -> None:
    model = TableModel({1: GREEDY_TRAP, 2: SHORT_OR_LONG, 3: {(): {D: 0.9, EOS_ID: 0.1}}})
    src = _src([2, 1, 3, 1])
    together = beam_search(model, src, beam_size=3, length_penalty=0.0)
    assert _tokens(together) == [[[]], [[B, C]], [[D]], [[B, C]]]
    alone = [beam_search(model, src[i:i + 1], beam_size=3, length_penalty=0.0)[0]
             for i in range(4)]
    assert together == alone


def test_length_norm_changes_the_ranking_as_the_formula_says() -> None:
    model = TableModel({1: SHORT_OR_LONG})
    src = _src([1])
    short_lp, long_lp = math.log(0.52), math.log(0.48 * 0.99**3)
    # The alpha at which ((5 + 5) / 6) ** alpha turns the long one's deficit around:
    # short_lp / lp(1) = long_lp / lp(5), lp(1) = 1.
    crossover = math.log(long_lp / short_lp) / math.log(10 / 6)
    assert 0.2 < crossover < 1.0
    for alpha in (0.0, crossover - 0.05, crossover + 0.05, 1.0):
        hyps = beam_search(model, src, beam_size=2, length_penalty=alpha, n_best=2)[0]
        expected = {(): short_lp / length_norm(1, alpha),
                    (A, B, C, D): long_lp / length_norm(5, alpha)}
        winner = max(expected, key=expected.__getitem__)
        assert tuple(hyps[0].tokens) == winner, alpha
        for h in hyps:  # every score is the formula applied to its log-probability
            assert h.score == pytest.approx(h.log_prob / ((5 + h.length) / 6) ** alpha)
            assert h.log_prob == pytest.approx(expected[tuple(h.tokens)]
                                               * length_norm(h.length, alpha), abs=1e-5)
        assert hyps[0].score >= hyps[1].score


def test_length_norm_formula() -> None:
    assert length_norm(1, 0.0) == 1.0
    assert length_norm(1, 0.6) == pytest.approx(1.0)
    assert length_norm(7, 1.0) == pytest.approx(2.0)
    assert length_norm(13, 0.5) == pytest.approx(math.sqrt(3.0))
    lengths = torch.tensor([1.0, 7.0])
    assert torch.allclose(length_norm(lengths, 1.0), torch.tensor([1.0, 2.0]))


def test_search_stops_once_no_live_hypothesis_can_win() -> None:
    """[EOS] is certain after A; the search must not run on to the cap (40 steps here)."""
    steps = []
    model = TableModel({1: {(): {A: 0.9, B: 0.1}, (B,): {C: 1.0}}})
    original = model.decode

    def counting(*args: object, **kwargs: object) -> Tensor:
        steps.append(1)
        return original(*args, **kwargs)

    model.decode = counting  # type: ignore[method-assign]
    out = beam_search(model, _src([1]), beam_size=2, length_penalty=1.0, max_len_a=0.0,
                      max_len_b=40)
    assert _tokens(out) == [[[A]]]
    assert len(steps) <= 4


def test_hypothesis_at_the_cap_keeps_its_last_token() -> None:
    model = TableModel({1: {(): {A: 1.0}, (A,): {A: 1.0}, (A, A): {A: 1.0}}})
    out = beam_search(model, _src([1]), beam_size=2, length_penalty=0.0, max_len_a=0.0, max_len_b=3,
                      n_best=2)[0]
    assert out[0].tokens == [A, A, A] and out[0].length == 3  # cut at the cap, no [EOS]
    assert greedy_decode(model, _src([1]), max_len_a=0.0, max_len_b=3) == [[A, A, A]]


# ---------------------------------------------------------------- real models


def _random_model(norm: str = "pre", seed: int = 0, eos_bias: float = 1.0) -> Transformer:
    """A random float64 model nudged towards [EOS], so outputs end at different lengths."""
    torch.manual_seed(seed)
    model = build_transformer(V, V, 8, 8, d_model=16, N=2, h=2, dropout=0.1, d_ff=32,
                              norm=norm).double().eval()
    with torch.no_grad():
        model.projection.proj.bias[EOS_ID] += eos_bias
    return model


def _src_batch(lengths: list[int], seed: int = 0) -> Tensor:
    gen = torch.Generator().manual_seed(seed)
    src = torch.full((len(lengths), max(lengths) + 2), PAD_ID, dtype=torch.long)
    for i, n in enumerate(lengths):
        src[i, 0] = SOS_ID
        src[i, 1:n + 1] = torch.randint(4, V, (n,), generator=gen)
        src[i, n + 1] = EOS_ID
    return src


def _alone(src: Tensor) -> list[Tensor]:
    return [row[row != PAD_ID].unsqueeze(0) for row in src]


@pytest.mark.parametrize("norm", ["pre", "post"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_beam_size_1_equals_greedy_on_random_models(norm: str, seed: int) -> None:
    model = _random_model(norm, seed)
    src = _src_batch([5, 1, 8, 3, 2, 6], seed=seed)
    greedy = greedy_decode(model, src, max_len_a=2.0, max_len_b=5)
    beam = beam_search(model, src, beam_size=1, length_penalty=0.0, max_len_a=2.0,
                       max_len_b=5)
    assert [hyps[0].tokens for hyps in beam] == greedy
    limits = max_output_lengths(src, 2.0, 5).tolist()
    assert any(len(g) < lim for g, lim in zip(greedy, limits, strict=True))  # some hit [EOS]


def test_beam_size_1_equals_greedy_on_trained_model(overfit: Overfit) -> None:
    src = overfit.batch.src
    beam = beam_search(overfit.model, src, beam_size=1, length_penalty=0.0)
    assert [hyps[0].tokens for hyps in beam] == greedy_decode(overfit.model, src)


def test_beam_on_trained_model_reproduces_targets(overfit: Overfit) -> None:
    src = overfit.batch.src
    for alpha in (0.0, 0.6):
        out = beam_search(overfit.model, src, beam_size=4, length_penalty=alpha, n_best=4)
        assert [hyps[0].tokens for hyps in out] == overfit.tgt
        assert all(len(hyps) == 4 for hyps in out)


@pytest.mark.parametrize("alpha", [0.0, 0.6, 2.0])
def test_cached_beam_equals_uncached(alpha: float) -> None:
    model = _random_model(seed=3)
    src = _src_batch([4, 7, 1, 3], seed=3)
    kwargs = {"beam_size": 3, "length_penalty": alpha, "max_len_a": 1.5, "max_len_b": 3,
              "n_best": 3}
    # the textbook modules' cache
    cached = beam_search(model, src, make_step=module_step, **kwargs)
    uncached = beam_search(model, src, make_step=uncached_step, **kwargs)
    assert _tokens(cached) == _tokens(uncached)
    for c_hyps, u_hyps in zip(cached, uncached, strict=True):
        for c, u in zip(c_hyps, u_hyps, strict=True):
            assert c.score == pytest.approx(u.score, abs=1e-9)
    fast = beam_search(model, src, **kwargs)  # the default: model.fast_step.FastStep
    assert _tokens(fast) == _tokens(cached)
    for f_hyps, c_hyps in zip(fast, cached, strict=True):
        for f, c in zip(f_hyps, c_hyps, strict=True):
            assert f.score == pytest.approx(c.score, abs=1e-9)


@pytest.mark.parametrize("beam_size", [2, 5])
def test_each_sentence_alone_equals_in_batch(beam_size: int) -> None:
    model = _random_model(seed=4, eos_bias=1.5)
    src = _src_batch([5, 1, 8, 3, 2, 6], seed=4)
    kwargs = {"beam_size": beam_size, "length_penalty": 0.6, "max_len_a": 2.0, "max_len_b": 4,
              "n_best": beam_size}
    together = beam_search(model, src, **kwargs)
    alone = [beam_search(model, row, **kwargs)[0] for row in _alone(src)]
    assert _tokens(together) == _tokens(alone)


@torch.no_grad()
def test_scores_are_the_models_log_probabilities() -> None:
    """Each hypothesis's log_prob is what a teacher-forced pass of the model gives its tokens
    (plus [EOS] when it ended with one)."""
    model = _random_model(seed=5, eos_bias=1.0)
    src = _src_batch([3, 6], seed=5)
    limits = max_output_lengths(src, 1.5, 3).tolist()
    out = beam_search(model, src, beam_size=3, length_penalty=0.8, max_len_a=1.5, max_len_b=3,
                      n_best=3)
    for i, hyps in enumerate(out):
        row = _alone(src)[i]
        memory = model.encode(row, padding_mask(row, PAD_ID))
        for h in hyps:
            ended = h.length == len(h.tokens) + 1
            assert ended or h.length == limits[i]
            target = h.tokens + ([EOS_ID] if ended else [])
            tgt_in = torch.tensor([[SOS_ID, *target[:-1]]])
            logp = model.project(model.decode(memory, padding_mask(row, PAD_ID), tgt_in))
            logp = logp.double().log_softmax(-1)[0]
            expected = sum(float(logp[t, tok]) for t, tok in enumerate(target))
            assert h.log_prob == pytest.approx(expected, abs=1e-9)
            assert h.score == pytest.approx(expected / length_norm(h.length, 0.8))
        assert [h.score for h in hyps] == sorted((h.score for h in hyps), reverse=True)
        assert len({tuple(h.tokens) for h in hyps}) == len(hyps)


def test_beam_respects_caps_and_eos_first() -> None:
    torch.manual_seed(0)
    model = build_transformer(V, V, 8, 8, d_model=8, N=1, h=2, dropout=0.0, d_ff=16).eval()
    with torch.no_grad():
        model.projection.proj.weight.zero_()
        model.projection.proj.bias.zero_()
        model.projection.proj.bias[7] = 10.0  # always 7, never [EOS]
    src = _src_batch([1, 4, 2])
    out = beam_search(model, src, beam_size=3, length_penalty=0.6, max_len_a=1.0, max_len_b=2)
    assert [len(h[0].tokens) for h in out] == max_output_lengths(src, 1.0, 2).tolist()
    with torch.no_grad():
        model.projection.proj.bias[EOS_ID] = 20.0  # [EOS] first
    out = beam_search(model, src, beam_size=3, length_penalty=0.6)
    assert [h[0].tokens for h in out] == [[], [], []]
    assert all(h[0].length == 1 for h in out)


def test_bad_arguments() -> None:
    model = _random_model()
    src = _src_batch([2])
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(model, src, beam_size=0)
    with pytest.raises(ValueError, match="n_best"):
        beam_search(model, src, beam_size=2, n_best=3)
