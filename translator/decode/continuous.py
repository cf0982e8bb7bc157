"""Greedy decoding in which sentences join and leave a running batch at every step
(continuous, or in-flight, batching: the iteration-level scheduling of Orca, Yu et al., OSDI
2022, which vLLM and TGI use for language models).

Why: a server's sentences arrive one by one from many clients. Decoded batch by batch, a
sentence that arrives while a batch runs waits for all of it, and a batch runs until its
longest sentence ends while its finished rows wait with it. So under load the batches are
about half the clients (the other half waits), and a short sentence is answered only when the
longest of its batch is. Here a sentence joins the running batch at the next step and leaves
it, answered, at the step it ends: every waiting sentence is decoded, in batches as large as
the load.

Rows are at different positions. Each row has its own position (for the positional
encoding), its own source (cross-attention keys/values padded to the longest source in the
batch, the padding masked), and self-attention keys/values from the step it joined on (the
earlier columns of the cache belong to other sentences and are masked). Columns no running row
needs any more are cut off, so the cache is as long as the oldest running sentence's output.
Each row computes what `translator.decode.search.greedy_decode` computes for that sentence
alone (tests check the tokens); only the rounding of batched arithmetic differs.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Generic, TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor

from translator.data.tokenizer import EOS_ID, PAD_ID, SOS_ID
from translator.decode.search import output_caps, pack_sources
from translator.model.fast_step import FastStep
from translator.model.transformer import LayerCache, Transformer, padding_mask

Tag = TypeVar("Tag", bound=Hashable)


class GreedyStream(Generic[Tag]):
    """A running greedy batch of one model: `admit` sentences (source ids, each with a caller's
    tag), call `step` until it is empty; each step returns the sentences that ended."""

    def __init__(self, model: Transformer, device: torch.device, *, max_len_a: float = 1.5,
                 max_len_b: int = 10) -> None:
        if model.training:
            model.eval()
        self.model, self.device = model, device
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self._step = FastStep.of(model)
        self._reset()

    def _reset(self) -> None:
        self.tags: list[Tag] = []
        self.out: list[list[int]] = []
        self.limits: list[int] = []
        self.positions: list[int] = []  # per row: the position of its next input token
        self.ys = torch.empty(0, dtype=torch.long, device=self.device)  # newest token per row
        self.pos = torch.empty(0, dtype=torch.long, device=self.device)
        self.cache: list[LayerCache] = self.model.new_cache()
        self.src_keep = torch.empty(0, 0, dtype=torch.bool, device=self.device)  # [B, S]
        self.self_keep = torch.empty(0, 0, dtype=torch.bool, device=self.device)  # [B, T]

    def __len__(self) -> int:
        """Sentences decoding now."""
        return len(self.tags)

    @torch.inference_mode()
    def admit(self, sources: Sequence[Sequence[int]], tags: Sequence[Tag]) -> None:
        """Start decoding `sources` (ids without specials, none empty) at the next step."""
        if not sources:
            return
        if any(not ids for ids in sources):
            raise ValueError("an empty source has nothing to decode")
        src = pack_sources(sources, self.device)  # [n, S]
        keep = padding_mask(src, PAD_ID)  # [n, 1, 1, S]
        memory = self.model.encode(src, None if bool(keep.all()) else keep)
        kv = self._step.source_kv(memory)
        n, width = src.shape
        keep = keep.view(n, width)
        if not self.tags:  # an idle stream starts over: no columns of old sentences to keep
            self.cache = [{"cross_k": k, "cross_v": v} for k, v in kv]
            self.src_keep = keep
            self.self_keep = torch.zeros(n, 0, dtype=torch.bool, device=self.device)
        else:
            old = self.src_keep.size(1)
            s = max(old, width)
            for layer, (k, v) in zip(self.cache, kv, strict=True):
                layer["cross_k"] = torch.cat([_pad_to(layer["cross_k"], s), _pad_to(k, s)])
                layer["cross_v"] = torch.cat([_pad_to(layer["cross_v"], s), _pad_to(v, s)])
                if "self_k" in layer:  # the new rows' earlier columns: masked zeros
                    b, h, t, d = layer["self_k"].shape
                    blank = layer["self_k"].new_zeros(n, h, t, d)
                    layer["self_k"] = torch.cat([layer["self_k"], blank])
                    layer["self_v"] = torch.cat([layer["self_v"], blank])
            self.src_keep = torch.cat([F.pad(self.src_keep, (0, s - old)),
                                       F.pad(keep, (0, s - width))])
            self.self_keep = torch.cat([self.self_keep, self.self_keep.new_zeros(
                n, self.self_keep.size(1))])
        self.tags.extend(tags)
        self.out.extend([] for _ in sources)
        self.limits.extend(output_caps([len(ids) for ids in sources], self.max_len_a,
                                       self.max_len_b))
        self.positions.extend([0] * n)
        start = torch.full((n,), SOS_ID, dtype=torch.long, device=self.device)
        self.ys = torch.cat([self.ys, start])
        self.pos = torch.cat([self.pos, torch.zeros(n, dtype=torch.long, device=self.device)])

    @torch.inference_mode()
    def step(self) -> list[tuple[Tag, list[int]]]:
        """Decode one token of every running sentence; return (tag, output ids without
        [SOS]/[EOS]) of those that ended ([EOS], or their length cap), which leave."""
        if not self.tags:
            return []
        rows = len(self.tags)
        self.self_keep = torch.cat([self.self_keep, self.self_keep.new_ones(rows, 1)], dim=1)
        # Without masks when nothing is hidden: attention then takes a faster path.
        self_mask = None if bool(self.self_keep.all()) else self.self_keep.view(rows, 1, 1, -1)
        src_mask = None if bool(self.src_keep.all()) else self.src_keep.view(rows, 1, 1, -1)
        logits = self._step(None, src_mask, self.ys, self.cache, self.pos, self_mask,
                            last=max(self.positions))
        # max().indices: the first maximum, like argmax, and several times faster on CPU.
        next_tok = logits.max(dim=-1).indices  # [rows]
        done: list[int] = []
        for i, tok in enumerate(next_tok.tolist()):
            if tok == EOS_ID:
                done.append(i)
                continue
            self.out[i].append(tok)
            if len(self.out[i]) >= self.limits[i]:
                done.append(i)
        self.ys = next_tok
        self.pos = self.pos + 1
        self.positions = [p + 1 for p in self.positions]
        ended = [(self.tags[i], self.out[i]) for i in done]
        if done:
            gone = set(done)
            self._keep([i for i in range(rows) if i not in gone])
        return ended

    def drop(self, withdrawn: Callable[[Tag], bool]) -> list[Tag]:
        """Stop decoding the sentences whose tag `withdrawn` accepts (their client went away);
        returns their tags."""
        gone = [i for i, tag in enumerate(self.tags) if withdrawn(tag)]
        if gone:
            tags = [self.tags[i] for i in gone]
            out = set(gone)
            self._keep([i for i in range(len(self.tags)) if i not in out])
            return tags
        return []

    def _keep(self, rows: list[int]) -> None:
        """Keep only batch rows `rows`, and cut the cache columns none of them uses."""
        if not rows:
            self._reset()
            return
        self.tags = [self.tags[i] for i in rows]
        self.out = [self.out[i] for i in rows]
        self.limits = [self.limits[i] for i in rows]
        self.positions = [self.positions[i] for i in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self_keep = self.self_keep.index_select(0, index)
        src_keep = self.src_keep.index_select(0, index)
        # The oldest row's first column, the widest row's last source position: what is left.
        first = int(self_keep.any(dim=0).int().argmax()) if self_keep.size(1) else 0
        width = int(src_keep.any(dim=0).nonzero().max()) + 1
        self.self_keep, self.src_keep = self_keep[:, first:], src_keep[:, :width]
        self.ys, self.pos = self.ys.index_select(0, index), self.pos.index_select(0, index)
        for layer in self.cache:
            for name, tensor in layer.items():
                kept = tensor.index_select(0, index)  # [B', H, T|S, K]
                layer[name] = kept[:, :, first:] if name.startswith("self") else \
                    kept[:, :, :width]


def _pad_to(x: Tensor, width: int) -> Tensor:
    """Right-pad dimension 2 of [B, H, S, K] with zeros to `width`."""
    return x if x.size(2) == width else F.pad(x, (0, 0, 0, width - x.size(2)))


class SentenceStream:
    """A `GreedyStream` over text: sentences in, their translations out, each as
    `Engine.translate` gives it ("" for a sentence with nothing to translate). What the
    server's batcher runs (`translator.serve.batcher.Stream`)."""

    def __init__(self, stream: GreedyStream[Hashable],
                 encode: Callable[[Sequence[str]], list[list[int]]],
                 decode: Callable[[list[int]], str]) -> None:
        self.stream, self.encode, self.decode = stream, encode, decode

    def __len__(self) -> int:
        return len(self.stream)

    def admit(self, sentences: list[str], tags: list[Hashable]) -> list[tuple[Hashable, str]]:
        """Start translating `sentences`; the empty ones are answered now."""
        ids = self.encode(sentences)
        pairs = list(zip(tags, ids, strict=True))
        self.stream.admit([x for _, x in pairs if x], [tag for tag, x in pairs if x])
        return [(tag, "") for tag, x in pairs if not x]

    def step(self) -> list[tuple[Hashable, str]]:
        """One step; the translations of the sentences that ended."""
        return [(tag, self.decode(out)) for tag, out in self.stream.step()]

    def drop(self, withdrawn: Callable[[Hashable], bool]) -> list[Hashable]:
        """Stop translating the sentences whose tag `withdrawn` accepts."""
        return self.stream.drop(withdrawn)
