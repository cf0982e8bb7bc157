"""Search over the model's `encode` / `decode` / `project` API: batched greedy and beam search.

Both run the encoder once per batch and then one cached decoding path: each step feeds only
the newest token of each row to a step function (`Step`), which keeps decoder self-attention
keys/values of earlier positions and the source's cross-attention keys/values in the model's
cache. For our Transformer that step is `translator.model.fast_step.FastStep`; `module_step`
(the textbook modules) is what a stand-in model gets, and what the agreement tests and the
benchmark compare against. Sentences that are finished leave the batch, so the remaining ones
run on smaller tensors.

Output lengths are capped per sentence at `a * source length + b` tokens ([EOS] included; the
source length counts its [SOS] and [EOS]); a hypothesis that reaches the cap without [EOS] ends
there, as it is.

Beam search keeps `beam_size` hypotheses per sentence, all sentences of a batch at once
(B * beam rows). Hypotheses are ranked by their summed log-probability divided by the GNMT
length normalisation ((5 + length) / 6) ** length_penalty (Wu et al., 2016, who call
length_penalty alpha), length counting the generated tokens, [EOS] included. A sentence is
done once it has `beam_size` finished hypotheses that no live one can still beat, or at its
length cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from torch import Tensor

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.model.fast_step import FastStep
from translator.model.transformer import Transformer, padding_mask, reorder_cache

if TYPE_CHECKING:
    from translator.config import DecodingConfig

T = TypeVar("T")

Step = Callable[[Tensor, "Tensor | None", Tensor, list, int], Tensor]
"""`step(memory, src_mask, tokens, cache, t)`: the next-token logits [rows, V] of each row,
given its newest token `tokens` [rows] at position t and the cache of the earlier ones."""


@dataclass(frozen=True)
class Hypothesis:
    """One finished beam-search output."""

    tokens: list[int]
    """Generated ids without [SOS] and [EOS]."""
    score: float
    """`log_prob / length_norm(length, length_penalty)`: what the search ranks by."""
    log_prob: float
    """Sum of the token log-probabilities, the final [EOS] included when it was generated."""
    length: int
    """Generated tokens counted by the length penalty: `len(tokens)`, plus 1 for [EOS]."""


def output_caps(n_ids: Sequence[int], a: float, b: int) -> list[int]:
    """The cap on generated tokens ([EOS] included) of sources of `n_ids` ids each (without
    specials): floor(a * (n + 2) + b), at least 1 (the source length counts [SOS] and [EOS]).
    Every engine caps its output with this (through `_caps`)."""
    return _caps(torch.tensor([n + 2 for n in n_ids], dtype=torch.long), a, b).tolist()


def max_output_lengths(src: Tensor, a: float, b: int) -> Tensor:
    """The caps of `output_caps` for each row of encoder inputs `src` [B, S] (specials
    included, padded)."""
    return _caps((src != PAD_ID).sum(dim=1), a, b)


def _caps(src_len: Tensor, a: float, b: int) -> Tensor:
    # In float32, as the searches always have: 0.7 * 90 floors to 63 here, to 62 in float64;
    # one expression for every engine keeps them token for token equal at such lengths.
    return (a * src_len.float() + b).floor().long().clamp(min=1)


def length_norm(length: int | float | Tensor, length_penalty: float) -> float | Tensor:
    """GNMT's divisor ((5 + length) / 6) ** length_penalty; 1 for length_penalty 0 (no
    normalisation)."""
    return ((5.0 + length) / 6.0) ** length_penalty


# Finished rows leave a greedy batch once they are at least this share of it.
_COMPACT_FRACTION = 0.25


def _source_mask(src: Tensor) -> Tensor | None:
    """The padding mask of `src` [B, S], or None when no row is padded (a batch of one, or of
    equal lengths): attention then runs without a mask, on a faster path."""
    return padding_mask(src, PAD_ID) if bool((src == PAD_ID).any()) else None


def _eval(model: Transformer) -> None:
    """Put the model in eval mode; skipped when it already is, since `eval()` visits every
    submodule (about 0.5 ms, as much as a decoding step at batch 1)."""
    if model.training:
        model.eval()


def module_step(model: Transformer) -> Step:
    """The textbook cached step: the model's own `decode` on one new position per row, then
    `project`. Any model with the `encode` / `decode` / `project` / `new_cache` API has it."""
    def step(memory: Tensor, src_mask: Tensor | None, tokens: Tensor, cache: list,
             t: int) -> Tensor:
        h = model.decode(memory, src_mask, tokens.view(-1, 1), cache, offset=t)  # [rows, 1, D]
        return model.project(h[:, -1])
    return step


def cached_step(model: Transformer) -> Step:
    """The searches' step: `FastStep` (the same numbers as `module_step`, in about half the
    operations) for our Transformer, `module_step` for a stand-in with the same API."""
    return FastStep.of(model) if isinstance(model, Transformer) else module_step(model)


@torch.inference_mode()
def greedy_decode(model: Transformer, src: Tensor, *, max_len_a: float = 1.5,
                  max_len_b: int = 10,
                  make_step: Callable[[Transformer], Step] = cached_step) -> list[list[int]]:
    """Greedy translations of a batch of encoder inputs `src` [B, S] (`[SOS] x [EOS]`, padded).

    Returns one id list per sentence, without [SOS] and [EOS]. `make_step` builds the step
    function from the model (default `cached_step`); the tests and the benchmark pass others
    (the textbook modules, or a step that re-decodes the whole prefix) to compare against.
    """
    _eval(model)
    src_mask = _source_mask(src)
    memory = model.encode(src, src_mask)  # [B, S, D]
    limits = max_output_lengths(src, max_len_a, max_len_b).tolist()
    out: list[list[int]] = [[] for _ in range(src.size(0))]
    rows = list(range(src.size(0)))  # the original sentence of each batch row
    running = [True] * len(rows)  # per batch row: still decoding
    ys = torch.full((src.size(0),), SOS_ID, dtype=torch.long, device=src.device)  # newest
    cache = model.new_cache()
    step = make_step(model)
    for t in range(max(limits)):
        logits = step(memory, src_mask, ys, cache, t)  # [rows, V]
        # max().indices: the first maximum, like argmax, and several times faster on CPU.
        next_tok = logits.max(dim=-1).indices  # [rows]
        n_running = _take_tokens(next_tok.tolist(), rows, running, out, limits)
        if n_running == 0:
            break
        ys = next_tok
        # Finished rows leave the batch, but only in groups: removing rows copies every cached
        # tensor, which costs more than decoding a few idle rows for some steps.
        if len(rows) - n_running >= _COMPACT_FRACTION * len(rows):
            keep = [i for i, r in enumerate(running) if r]
            index = torch.tensor(keep, device=src.device)
            rows, running = [rows[i] for i in keep], [True] * len(keep)
            ys, memory = ys[index], memory[index]
            src_mask = None if src_mask is None else src_mask[index]
            cache = reorder_cache(cache, index)
    return out


def _take_tokens(tokens: list[int], rows: list[int], running: list[bool],
                 out: list[list[int]], limits: list[int]) -> int:
    """Append each running batch row's new token to its sentence's output, and stop the rows
    that produced [EOS] or reached their cap; returns how many still run."""
    for i, (row, tok) in enumerate(zip(rows, tokens, strict=True)):
        if not running[i]:
            continue  # finished, waiting to leave the batch: its token means nothing
        if tok == EOS_ID:
            running[i] = False
        else:
            out[row].append(tok)
            running[i] = len(out[row]) < limits[row]
    return sum(running)


# shape: one search loop whose state (ys, scores, cache, memory, mask, active sentences)
# changes together at every step; its parts that stand alone are _candidates and _finish.
@torch.inference_mode()
def beam_search(model: Transformer, src: Tensor, *, beam_size: int = 4,
                length_penalty: float = 0.6, max_len_a: float = 1.5, max_len_b: int = 10,
                n_best: int = 1,
                make_step: Callable[[Transformer], Step] = cached_step) -> list[list[Hypothesis]]:
    """Beam search over a batch of encoder inputs `src` [B, S] (`[SOS] x [EOS]`, padded).

    Returns, per sentence, its `n_best` (<= `beam_size`) best finished hypotheses, best first.
    With `beam_size=1` and `length_penalty=0` the result is exactly greedy decoding's.
    `make_step` as in `greedy_decode`.
    """
    _check_beam(beam_size, n_best)
    _eval(model)
    K, device = beam_size, src.device
    n = src.size(0)
    src_mask = _source_mask(src)
    # Sentence i's hypotheses are rows i*K .. i*K+K-1 of every per-hypothesis tensor.
    memory = model.encode(src, src_mask).repeat_interleave(K, dim=0)  # [n*K, S, D]
    if src_mask is not None:
        src_mask = src_mask.repeat_interleave(K, dim=0)  # [n*K, 1, 1, S]
    limits = max_output_lengths(src, max_len_a, max_len_b)  # [B], indexed by original sentence
    lp_limit = length_norm(limits.double(), length_penalty)  # [B]
    steps = int(limits.max())
    finished: list[list[Hypothesis]] = [[] for _ in range(n)]
    # Score of each sentence's K-th best finished hypothesis (-inf while it has fewer).
    kth_best = torch.full((n,), -math.inf, dtype=torch.float64, device=device)
    active = torch.arange(n, device=device)  # original index of each sentence still searching
    ys = torch.full((n * K, 1), SOS_ID, dtype=torch.long, device=device)
    # Summed log-probabilities; all beams but one start at -inf so the first step expands
    # only one copy of [SOS] (K identical beams would fill the beam with duplicates).
    scores = torch.full((n, K), -math.inf, dtype=torch.float64, device=device)
    scores[:, 0] = 0.0
    cache = model.new_cache()
    step = make_step(model)
    offsets = torch.arange(K, device=device)
    for t in range(steps):
        logits = step(memory, src_mask, ys[:, -1], cache, t)  # [n*K, V]
        top_scores, top_beam, top_tok = _candidates(logits, scores, K)  # [n, 2K] each
        is_eos = top_tok == EOS_ID
        at_cap = limits[active] == t + 1  # [n]: this step's token is their last
        # Only candidates among the K best may finish (fairseq's rule): an [EOS] ranked below
        # K live continuations is not part of the beam. At the cap all K best finish as they
        # are, with or without [EOS].
        final = torch.zeros_like(is_eos)
        final[:, :K] = (is_eos[:, :K] | at_cap.unsqueeze(1)) & top_scores[:, :K].isfinite()
        if bool(final.any()):
            _finish(finished, kth_best, K, length_penalty, t + 1, active, ys, final, top_scores,
                    top_beam, top_tok)
        # The live beam: the K best candidates that do not end in [EOS], in rank order.
        live = ~is_eos & ((~is_eos).cumsum(dim=1) <= K)
        new_scores = top_scores[live].view(-1, K)  # [n, K], best first
        new_beam = top_beam[live].view(-1, K)
        new_tok = top_tok[live].view(-1, K)
        # No live hypothesis can end better than its score over the largest penalty it can
        # still get (log-probabilities only fall as it grows). Lengths t+2 .. cap remain and
        # the penalty is monotone in length, so the largest is at one of the two ends.
        lp_max = lp_limit[active].clamp(min=float(length_norm(t + 2, length_penalty)))  # [n]
        bound = new_scores[:, 0] / lp_max
        done = at_cap | (kth_best[active] >= bound)
        if bool(done.all()):
            break
        keep = (~done).nonzero(as_tuple=True)[0]  # [n'] sentences (positions in `active`)
        rows = (keep.unsqueeze(1) * K + new_beam[keep]).view(-1)  # [n'*K] parent rows
        ys = torch.cat([ys[rows], new_tok[keep].view(-1, 1)], dim=1)
        scores = new_scores[keep]
        cache = reorder_cache(cache, rows)
        if keep.numel() < active.numel():
            # Memory and mask are the same for all beams of a sentence: only drop sentences.
            sent_rows = (keep.unsqueeze(1) * K + offsets).view(-1)
            memory = memory[sent_rows]
            src_mask = None if src_mask is None else src_mask[sent_rows]
            active = active[keep]
    return [sorted(f, key=lambda h: -h.score)[:n_best] for f in finished]


def _check_beam(beam_size: int, n_best: int) -> None:
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    if not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best must be in 1..beam_size ({beam_size}), got {n_best}")


def _candidates(logits: Tensor, scores: Tensor, K: int) -> tuple[Tensor, Tensor, Tensor]:
    """The 2K best continuations of each sentence's beams, best first: their summed
    log-probabilities [n, 2K] (float64), the beam each extends and its new token.

    `logits` [n*K, V] are the beams' next-token logits, `scores` [n, K] their summed
    log-probabilities so far."""
    logits = logits.to(torch.promote_types(logits.dtype, torch.float32))  # fp16/bf16 up
    # The 2K best candidates of a sentence hold at most 2K of any one beam, so each beam's
    # 2K best tokens are all that can compete: log-probabilities of those only, in float64
    # so that adding a beam's score cannot round two candidates into a tie (keeps beam 1 ==
    # greedy exact).
    k2 = min(2 * K, logits.size(-1))
    row_logits, row_tok = logits.topk(k2, dim=-1)  # [n*K, k2]
    logp = row_logits.double() - logits.logsumexp(dim=-1, keepdim=True).double()
    cand = (scores.view(-1, 1) + logp).view(-1, K * k2)  # [n, K*k2]
    # 2K candidates always hold K that do not end in [EOS]: each beam has one [EOS].
    top_scores, top_idx = cand.topk(2 * K, dim=1)  # [n, 2K], best first
    return top_scores, top_idx // k2, row_tok.view(-1, K * k2).gather(1, top_idx)


def _finish(finished: list[list[Hypothesis]], kth_best: Tensor, K: int, length_penalty: float,
            length: int, active: Tensor, ys: Tensor, final: Tensor, top_scores: Tensor,
            top_beam: Tensor, top_tok: Tensor) -> None:
    """Record the candidates marked in `final` [n, 2K] as finished hypotheses of `length`
    generated tokens, and update each touched sentence's K-th best finished score."""
    pos, _ = final.nonzero(as_tuple=True)
    parents = pos * K + top_beam[final]
    prefixes = ys[parents, 1:].tolist()
    touched = set()
    lp = float(length_norm(length, length_penalty))
    for p, prefix, tok, lprob in zip(pos.tolist(), prefixes, top_tok[final].tolist(),
                                     top_scores[final].tolist(), strict=True):
        sent = int(active[p])
        tokens = prefix if tok == EOS_ID else prefix + [tok]
        finished[sent].append(Hypothesis(tokens, lprob / lp, lprob, length))
        touched.add(sent)
    for sent in touched:
        hyps = finished[sent]
        if len(hyps) >= K:
            kth_best[sent] = sorted((h.score for h in hyps), reverse=True)[K - 1]


# -- running a search over many sentences: length-sorted batches, input order kept ---------


def pack_sources(rows: Sequence[Sequence[int]], device: torch.device) -> Tensor:
    """Encoder inputs `[SOS] x [EOS]`, right-padded: [len(rows), longest + 2]."""
    width = max(len(ids) for ids in rows) + 2
    src = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for r, ids in enumerate(rows):
        src[r, 0] = SOS_ID
        src[r, 1:len(ids) + 1] = torch.tensor(list(ids), dtype=torch.long)
        src[r, len(ids) + 1] = EOS_ID
    return src.to(device)


def in_batches(src_ids: Sequence[Sequence[int]], batch_size: int,
               run: Callable[[list[Sequence[int]]], list[T]],
               progress: Callable[[int], None] | None = None,
               mapper: Callable[..., Any] = map) -> list[T]:
    """Run `run` over length-sorted batches of `src_ids` (so that a batch pads little) and
    return its per-sentence results in input order. `progress(n)` is told after each batch.
    Every engine batches with this; `mapper` (e.g. a thread pool's `map`, for an engine that
    runs batches side by side) applies `run` to the batches, in order."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    results: list[T | None] = [None] * len(src_ids)
    groups = [order[start:start + batch_size] for start in range(0, len(order), batch_size)]
    for rows, outs in zip(groups, mapper(run, [[src_ids[i] for i in g] for g in groups]),
                          strict=True):
        for i, out in zip(rows, outs, strict=True):
            results[i] = out
        if progress is not None:
            progress(len(rows))
    return results  # type: ignore[return-value]  # every slot was filled


def translate_ids(model: Transformer, src_ids: Sequence[Sequence[int]], device: torch.device,
                  decoding: DecodingConfig, *, batch_size: int = 64,
                  progress: Callable[[int], None] | None = None,
                  make_step: Callable[[Transformer], Step] = cached_step) -> list[list[int]]:
    """Translate id sequences (no specials) in length-sorted batches; input order kept.

    `decoding.beam_size` 1 is greedy decoding (no length penalty); larger runs beam search and
    keeps each sentence's best hypothesis. `make_step` as in `greedy_decode`.
    """
    if decoding.beam_size == 1:
        return in_batches(src_ids, batch_size, lambda rows: greedy_decode(
            model, pack_sources(rows, device), max_len_a=decoding.max_len_a,
            max_len_b=decoding.max_len_b, make_step=make_step), progress)
    return [h[0].tokens for h in nbest_ids(model, src_ids, device, decoding, batch_size=batch_size,
                                           progress=progress, make_step=make_step)]


def nbest_ids(model: Transformer, src_ids: Sequence[Sequence[int]], device: torch.device,
              decoding: DecodingConfig, n_best: int = 1, *, batch_size: int = 64,
              progress: Callable[[int], None] | None = None,
              make_step: Callable[[Transformer], Step] = cached_step) -> list[list[Hypothesis]]:
    """Beam search (of `decoding.beam_size`, even 1) over id sequences in length-sorted
    batches: per sentence its `n_best` hypotheses with scores, best first; input order kept."""
    return in_batches(src_ids, batch_size, lambda rows: beam_search(
        model, pack_sources(rows, device), beam_size=decoding.beam_size,
        length_penalty=decoding.length_penalty, max_len_a=decoding.max_len_a,
        max_len_b=decoding.max_len_b, n_best=n_best, make_step=make_step), progress)
