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
    tag), call `step` until it is empty; each step returns the sentences that ended.

    A sentence that ends leaves its row free, masked, for the next one to join: copying
    every cached tensor to remove a row costs more than decoding an idle one for a few steps.
    The free rows are removed together once they are a quarter of the batch."""

    def __init__(self, model: Transformer, device: torch.device, *, max_len_a: float = 1.5,
                 max_len_b: int = 10) -> None:
        if model.training:
            model.eval()
        self.model, self.device = model, device
        self.max_len_a, self.max_len_b = max_len_a, max_len_b
        self._step = FastStep.of(model)
        self._reset()

    def _reset(self) -> None:
        self.tags: list[Tag | None] = []  # per batch row; None: a free row
        self.out: list[list[int]] = []
        self.limits: list[int] = []
        self.positions: list[int] = []  # per row: the position of its next input token
        self.starts: list[int] = []  # per row: its sentence's first self-attention column
        self.ys = torch.empty(0, dtype=torch.long, device=self.device)  # newest token per row
        self.pos = torch.empty(0, dtype=torch.long, device=self.device)
        self.cache: list[LayerCache] = self.model.new_cache()
        self.src_keep = torch.empty(0, 0, dtype=torch.bool, device=self.device)  # [B, S]
        self.self_keep = torch.empty(0, 0, dtype=torch.bool, device=self.device)  # [B, T]
        self.running = 0

    def __len__(self) -> int:
        """Sentences decoding now."""
        return self.running

    @torch.inference_mode()
    def admit(self, sources: Sequence[Sequence[int]], tags: Sequence[Tag]) -> None:
        """Start decoding `sources` (ids without specials, none empty) at the next step: in
        free rows first, then in new ones."""
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
        free = [i for i, tag in enumerate(self.tags) if tag is None][:n]
        if not self.running and not self.tags:  # idle: start over
            self.cache = [{"cross_k": k, "cross_v": v} for k, v in kv]
            self.src_keep = keep
            self.self_keep = torch.zeros(n, 0, dtype=torch.bool, device=self.device)
            rows = list(range(n))
            self._grow_lists(n)
        else:
            self._widen(width)
            s = self.src_keep.size(1)
            kv = [(_pad_to(k, s), _pad_to(v, s)) for k, v in kv]
            keep = F.pad(keep, (0, s - width))
            extra = n - len(free)
            if free:  # free rows take the first sentences, in place
                index = torch.tensor(free, dtype=torch.long, device=self.device)
                for layer, (k, v) in zip(self.cache, kv, strict=True):
                    layer["cross_k"][index] = k[:len(free)]
                    layer["cross_v"][index] = v[:len(free)]
                self.src_keep[index] = keep[:len(free)]
                self.self_keep[index] = False  # the columns of the row's last sentence
            if extra:  # the others in new rows; their earlier columns are masked zeros
                for layer, (k, v) in zip(self.cache, kv, strict=True):
                    layer["cross_k"] = torch.cat([layer["cross_k"], k[len(free):]])
                    layer["cross_v"] = torch.cat([layer["cross_v"], v[len(free):]])
                    if "self_k" in layer:
                        _, h, t, d = layer["self_k"].shape
                        blank = layer["self_k"].new_zeros(extra, h, t, d)
                        layer["self_k"] = torch.cat([layer["self_k"], blank])
                        layer["self_v"] = torch.cat([layer["self_v"], blank])
                self.src_keep = torch.cat([self.src_keep, keep[len(free):]])
                self.self_keep = torch.cat([self.self_keep, self.self_keep.new_zeros(
                    extra, self.self_keep.size(1))])
                self._grow_lists(extra)
            rows = free + list(range(len(self.tags) - extra, len(self.tags)))
        caps = output_caps([len(ids) for ids in sources], self.max_len_a, self.max_len_b)
        column = self.self_keep.size(1)  # the column the next step appends
        for row, tag, cap in zip(rows, tags, caps, strict=True):
            self.tags[row], self.out[row], self.limits[row] = tag, [], cap
            self.positions[row], self.starts[row] = 0, column
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        self.ys[index] = SOS_ID
        self.pos[index] = 0
        self.running += n

    def _grow_lists(self, n: int) -> None:
        """`n` more rows in the per-row lists and tensors (filled in by `admit`)."""
        self.tags.extend([None] * n)
        self.out.extend([] for _ in range(n))
        self.limits.extend([0] * n)
        self.positions.extend([0] * n)
        self.starts.extend([0] * n)
        self.ys = torch.cat([self.ys, self.ys.new_full((n,), SOS_ID)])
        self.pos = torch.cat([self.pos, self.pos.new_zeros(n)])

    def _widen(self, width: int) -> None:
        """Pad the source side to `width` positions when a longer source joins."""
        old = self.src_keep.size(1)
        if width <= old:
            return
        for layer in self.cache:
            layer["cross_k"] = _pad_to(layer["cross_k"], width)
            layer["cross_v"] = _pad_to(layer["cross_v"], width)
        self.src_keep = F.pad(self.src_keep, (0, width - old))

    @torch.inference_mode()
    def step(self) -> list[tuple[Tag, list[int]]]:
        """Decode one token of every running sentence; return (tag, output ids without
        [SOS]/[EOS]) of those that ended ([EOS], or their length cap), whose rows are freed."""
        if not self.running:
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
        ended: list[tuple[Tag, list[int]]] = []
        for i, tok in enumerate(next_tok.tolist()):
            tag = self.tags[i]
            if tag is None:
                continue  # a free row: its token means nothing
            if tok != EOS_ID:
                self.out[i].append(tok)
            if tok == EOS_ID or len(self.out[i]) >= self.limits[i]:
                ended.append((tag, self.out[i]))
                self._free(i)
        self.ys = next_tok
        self.pos = self.pos + 1
        self.positions = [p + 1 for p in self.positions]
        self._tidy()
        return ended

    @torch.inference_mode()
    def drop(self, withdrawn: Callable[[Tag], bool]) -> list[Tag]:
        """Stop decoding the sentences whose tag `withdrawn` accepts (their client went away);
        returns their tags."""
        gone = [(i, tag) for i, tag in enumerate(self.tags)
                if tag is not None and withdrawn(tag)]
        for i, _ in gone:
            self._free(i)
        self._tidy()
        return [tag for _, tag in gone]

    def _free(self, row: int) -> None:
        self.tags[row] = None
        self.out[row] = []
        self.running -= 1

    def _tidy(self) -> None:
        """Remove the free rows once they are a quarter of the batch (all of them: reset), and
        cut the self-attention columns before the oldest running sentence's first."""
        free = len(self.tags) - self.running
        if not self.running:
            self._reset()
        elif free and free >= _FREE_SHARE * len(self.tags):
            self._keep([i for i, tag in enumerate(self.tags) if tag is not None])
        else:
            first = min(start for start, tag in zip(self.starts, self.tags, strict=True)
                        if tag is not None)
            if first:  # views, no copy: the next step's append copies anyway
                self.starts = [max(0, start - first) for start in self.starts]
                self.self_keep = self.self_keep[:, first:]
                for layer in self.cache:
                    layer["self_k"] = layer["self_k"][:, :, first:]
                    layer["self_v"] = layer["self_v"][:, :, first:]

    def _keep(self, rows: list[int]) -> None:
        """Keep only batch rows `rows`, and cut the cache columns none of them uses."""
        self.tags = [self.tags[i] for i in rows]
        self.out = [self.out[i] for i in rows]
        self.limits = [self.limits[i] for i in rows]
        self.positions = [self.positions[i] for i in rows]
        first = min(self.starts[i] for i in rows)
        self.starts = [self.starts[i] - first for i in rows]
        index = torch.tensor(rows, dtype=torch.long, device=self.device)
        src_keep = self.src_keep.index_select(0, index)
        # The widest running source's last position: what is left of the source side.
        width = int(src_keep.any(dim=0).nonzero().max()) + 1
        self.self_keep = self.self_keep.index_select(0, index)[:, first:]
        self.src_keep = src_keep[:, :width]
        self.ys, self.pos = self.ys.index_select(0, index), self.pos.index_select(0, index)
        for layer in self.cache:
            for name, tensor in layer.items():
                kept = tensor.index_select(0, index)  # [B', H, T|S, K]
                layer[name] = kept[:, :, first:] if name.startswith("self") else \
                    kept[:, :, :width]


# Free rows are removed together once they are this share of the batch.
_FREE_SHARE = 0.25


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
