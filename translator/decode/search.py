"""Search over the model's `encode` / `decode` / `project` API: batched greedy and beam search.

Both run the encoder once per batch. With the cache (the default) each step feeds only the
newest token: decoder self-attention keys/values of earlier positions and the cross-attention
keys/values of the source come from the cache. Sentences that are finished leave the batch, so
the remaining ones run on smaller tensors.

Output lengths are capped per sentence at `a * source length + b` tokens ([EOS] included; the
source length counts its [SOS] and [EOS]); a hypothesis that reaches the cap without [EOS] ends
there, as it is.

Beam search keeps `beam_size` hypotheses per sentence, all sentences of a batch at once
(B * beam rows). Hypotheses are ranked by their summed log-probability divided by the GNMT
length penalty ((5 + length) / 6) ** alpha (Wu et al., 2016), length counting the generated
tokens, [EOS] included. A sentence is done once it has `beam_size` finished hypotheses that no
live one can still beat, or at its length cap.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import torch
from torch import Tensor

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.decode.fast_step import FastStep
from translator.model.transformer import Transformer, padding_mask, reorder_cache

T = TypeVar("T")


@dataclass(frozen=True)
class Hypothesis:
    """One finished beam-search output."""

    tokens: list[int]
    """Generated ids without [SOS] and [EOS]."""
    score: float
    """`log_prob / length_penalty(length, alpha)`: what the search ranks by."""
    log_prob: float
    """Sum of the token log-probabilities, the final [EOS] included when it was generated."""
    length: int
    """Generated tokens counted by the length penalty: `len(tokens)`, plus 1 for [EOS]."""


def max_output_lengths(src: Tensor, a: float, b: int) -> Tensor:
    """Per-sentence cap on generated tokens ([EOS] included): a * source length + b, where the
    source length counts real tokens (specials included) of `src` [B, S]."""
    src_len = (src != PAD_ID).sum(dim=1)
    return (a * src_len.float() + b).floor().long().clamp(min=1)


def length_penalty(length: int | float | Tensor, alpha: float) -> float | Tensor:
    """GNMT length penalty ((5 + length) / 6) ** alpha; 1 for alpha 0 (no normalisation)."""
    return ((5.0 + length) / 6.0) ** alpha


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


def _fast_step(model: Transformer, fast: bool, use_cache: bool) -> FastStep | None:
    """The `fast_decode` step for cached decoding when asked for; only for our own
    Transformer: a stand-in with the same methods (tests) runs its own."""
    return FastStep(model) if fast and use_cache and isinstance(model, Transformer) else None


def _next_logits(model: Transformer, memory: Tensor, src_mask: Tensor | None, ys: Tensor,
                 cache: list | None, t: int, step: FastStep | None = None) -> Tensor:
    """Logits [rows, V] of the token after position t: with a cache, `ys` is the newest token
    of each row ([rows]); without, the whole prefix ([rows, t + 1]), re-decoded. `step`, when
    given, computes the cached step instead of the model's modules (the same numbers)."""
    if step is not None:
        return step(memory, src_mask, ys, cache, t)
    if cache is not None:
        h = model.decode(memory, src_mask, ys.view(-1, 1), cache, offset=t)  # [rows, 1, D]
    else:
        h = model.decode(memory, src_mask, ys)  # [rows, t + 1, D]
    return model.project(h[:, -1])


@torch.inference_mode()
def greedy_decode(model: Transformer, src: Tensor, *, max_len_a: float = 1.5,
                  max_len_b: int = 10, use_cache: bool = True,
                  fast: bool = True) -> list[list[int]]:
    """Greedy translations of a batch of encoder inputs `src` [B, S] (`[SOS] x [EOS]`, padded).

    Returns one id list per sentence, without [SOS] and [EOS]. `use_cache=False` re-runs the
    decoder over the whole prefix at every step (the tutorial way); it exists to prove the
    cached path gives the same tokens, and as the benchmark's baseline. `fast` (default) computes
    the cached steps with `translator.decode.fast_step.FastStep`: the same tokens, 1.12x to 1.22x
    the sentences/s of the textbook step (docs/benchmarks.md); `fast=False` runs the textbook
    modules.
    """
    _eval(model)
    src_mask = _source_mask(src)
    memory = model.encode(src, src_mask)  # [B, S, D]
    limits = max_output_lengths(src, max_len_a, max_len_b).tolist()
    out: list[list[int]] = [[] for _ in range(src.size(0))]
    rows = list(range(src.size(0)))  # the original sentence of each batch row
    running = [True] * len(rows)  # per batch row: still decoding
    # With the cache the decoder input is only the newest token ([B]); without it, the whole
    # prefix ([B, t]).
    ys = torch.full((src.size(0), 1), SOS_ID, dtype=torch.long, device=src.device)
    cache = model.new_cache() if use_cache else None
    step = _fast_step(model, fast, use_cache)
    if cache is not None:
        ys = ys.view(-1)
    for t in range(max(limits)):
        logits = _next_logits(model, memory, src_mask, ys, cache, t, step)  # [rows, V]
        # max().indices: the first maximum, like argmax, and several times faster on CPU.
        next_tok = logits.max(dim=-1).indices  # [rows]
        n_running = _take_tokens(next_tok.tolist(), rows, running, out, limits)
        if n_running == 0:
            break
        ys = next_tok if cache is not None else torch.cat([ys, next_tok.unsqueeze(1)], dim=1)
        # Finished rows leave the batch, but only in groups: removing rows copies every cached
        # tensor, which costs more than decoding a few idle rows for some steps.
        if len(rows) - n_running >= _COMPACT_FRACTION * len(rows):
            keep = [i for i, r in enumerate(running) if r]
            index = torch.tensor(keep, device=src.device)
            rows, running = [rows[i] for i in keep], [True] * len(keep)
            ys, memory = ys[index], memory[index]
            src_mask = None if src_mask is None else src_mask[index]
            if cache is not None:
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
def beam_search(model: Transformer, src: Tensor, *, beam_size: int = 4, alpha: float = 0.6,
                max_len_a: float = 1.5, max_len_b: int = 10, n_best: int = 1,
                use_cache: bool = True, fast: bool = True) -> list[list[Hypothesis]]:
    """Beam search over a batch of encoder inputs `src` [B, S] (`[SOS] x [EOS]`, padded).

    Returns, per sentence, its `n_best` (<= `beam_size`) best finished hypotheses, best first.
    With `beam_size=1` and `alpha=0` the result is exactly greedy decoding's. `fast` as in
    `greedy_decode`.
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
    lp_limit = length_penalty(limits.double(), alpha)  # [B]
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
    cache = model.new_cache() if use_cache else None
    step = _fast_step(model, fast, use_cache)
    offsets = torch.arange(K, device=device)
    for t in range(steps):
        newest = ys[:, -1] if cache is not None else ys
        logits = _next_logits(model, memory, src_mask, newest, cache, t, step)  # [n*K, V]
        top_scores, top_beam, top_tok = _candidates(logits, scores, K)  # [n, 2K] each
        is_eos = top_tok == EOS_ID
        at_cap = limits[active] == t + 1  # [n]: this step's token is their last
        # Only candidates among the K best may finish (fairseq's rule): an [EOS] ranked below
        # K live continuations is not part of the beam. At the cap all K best finish as they
        # are, with or without [EOS].
        final = torch.zeros_like(is_eos)
        final[:, :K] = (is_eos[:, :K] | at_cap.unsqueeze(1)) & top_scores[:, :K].isfinite()
        if bool(final.any()):
            _finish(finished, kth_best, K, alpha, t + 1, active, ys, final, top_scores,
                    top_beam, top_tok)
        # The live beam: the K best candidates that do not end in [EOS], in rank order.
        live = ~is_eos & ((~is_eos).cumsum(dim=1) <= K)
        new_scores = top_scores[live].view(-1, K)  # [n, K], best first
        new_beam = top_beam[live].view(-1, K)
        new_tok = top_tok[live].view(-1, K)
        # No live hypothesis can end better than its score over the largest penalty it can
        # still get (log-probabilities only fall as it grows). Lengths t+2 .. cap remain and
        # the penalty is monotone in length, so the largest is at one of the two ends.
        lp_max = lp_limit[active].clamp(min=float(length_penalty(t + 2, alpha)))  # [n]
        bound = new_scores[:, 0] / lp_max
        done = at_cap | (kth_best[active] >= bound)
        if bool(done.all()):
            break
        keep = (~done).nonzero(as_tuple=True)[0]  # [n'] sentences (positions in `active`)
        rows = (keep.unsqueeze(1) * K + new_beam[keep]).view(-1)  # [n'*K] parent rows
        ys = torch.cat([ys[rows], new_tok[keep].view(-1, 1)], dim=1)
        scores = new_scores[keep]
        if cache is not None:
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


def _finish(finished: list[list[Hypothesis]], kth_best: Tensor, K: int, alpha: float,
            length: int, active: Tensor, ys: Tensor, final: Tensor, top_scores: Tensor,
            top_beam: Tensor, top_tok: Tensor) -> None:
    """Record the candidates marked in `final` [n, 2K] as finished hypotheses of `length`
    generated tokens, and update each touched sentence's K-th best finished score."""
    pos, _ = final.nonzero(as_tuple=True)
    parents = pos * K + top_beam[final]
    prefixes = ys[parents, 1:].tolist()
    touched = set()
    lp = float(length_penalty(length, alpha))
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


def _in_batches(src_ids: Sequence[Sequence[int]], batch_size: int, device: torch.device,
                search: Callable[[Tensor], list[T]],
                progress: Callable[[int], None] | None = None) -> list[T]:
    """Run `search` over length-sorted batches of `src_ids` (so that a batch pads little) and
    return its per-sentence results in input order. `progress(n)` is told after each batch."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    results: list[T | None] = [None] * len(src_ids)
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        outs = search(pack_sources([src_ids[i] for i in rows], device))
        for i, out in zip(rows, outs, strict=True):
            results[i] = out
        if progress is not None:
            progress(len(rows))
    return results  # type: ignore[return-value]  # every slot was filled


def translate_ids(model: Transformer, src_ids: Sequence[Sequence[int]], device: torch.device,
                  batch_size: int = 64, max_len_a: float = 1.5, max_len_b: int = 10, *,
                  beam_size: int = 1, alpha: float = 0.6,
                  progress: Callable[[int], None] | None = None,
                  fast: bool = True) -> list[list[int]]:
    """Translate id sequences (no specials) in length-sorted batches; input order kept.

    `beam_size` 1 is greedy decoding (no length penalty); larger runs beam search and keeps
    each sentence's best hypothesis. `fast` picks the searches' `fast_decode` step.
    """
    if beam_size == 1:
        return _in_batches(src_ids, batch_size, device, lambda src: greedy_decode(
            model, src, max_len_a=max_len_a, max_len_b=max_len_b, fast=fast), progress)
    return [h[0].tokens for h in nbest_ids(model, src_ids, device, batch_size, max_len_a,
                                           max_len_b, beam_size=beam_size, alpha=alpha,
                                           progress=progress, fast=fast)]


def nbest_ids(model: Transformer, src_ids: Sequence[Sequence[int]], device: torch.device,
              batch_size: int = 64, max_len_a: float = 1.5, max_len_b: int = 10, *,
              beam_size: int = 4, alpha: float = 0.6, n_best: int = 1,
              progress: Callable[[int], None] | None = None,
              fast: bool = True) -> list[list[Hypothesis]]:
    """Beam search over id sequences in length-sorted batches: per sentence its `n_best`
    hypotheses with scores, best first; input order kept."""
    return _in_batches(src_ids, batch_size, device, lambda src: beam_search(
        model, src, beam_size=beam_size, alpha=alpha, max_len_a=max_len_a,
        max_len_b=max_len_b, n_best=n_best, fast=fast), progress)
