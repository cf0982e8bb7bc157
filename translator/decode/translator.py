"""Using a trained run: the Translator loads a run folder (config, tokenizers, checkpoint) onto
a device and translates text in batches.

Its parts live apart: the device and dtype choice in `translator.device`, model building and
checkpoint loading in `translator.modeling`, the batched searches in `translator.decode.search`,
text handling in `translator.data.text` (whose `split_lines` and `split_into_sentences` the
serving code still imports from here).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from pathlib import Path

import torch

from translator.config import Config, DecodingConfig
from translator.data.text import clean_text, sentence_pieces, split_into_sentences, split_lines
from translator.data.tokenizer import TextTokenizer
from translator.decode.search import nbest_ids, translate_ids
from translator.device import DTYPES, resolve_device
from translator.errors import TranslatorError
from translator.model.transformer import Transformer
from translator.modeling import model_from_checkpoint
from translator.run import RunLayout, check_inference_overrides, inference_config

__all__ = ["Translator", "check_inference_overrides", "split_into_sentences", "split_lines"]

log = logging.getLogger("translator")


class Translator:
    """A trained run loaded for translation: config, tokenizers and model on a device."""

    engine_name = "native"

    def __init__(self, cfg: Config, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
                 model: Transformer, device: torch.device, checkpoint: Path | None = None) -> None:
        self.cfg, self.src_tok, self.tgt_tok = cfg, src_tok, tgt_tok
        self.model, self.device, self.checkpoint = model.to(device).eval(), device, checkpoint

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str | Path | None = None,
                 device: str = "auto", dtype: str | None = None,
                 overrides: Sequence[str] = ()) -> Translator:
        """Load a run folder's config, tokenizers and checkpoint (best.pt, else latest.pt).

        `dtype` (fp32, bf16, fp16; default: the run's `decoding.dtype`) is the number format
        the weights are cast to for translation. `overrides` (`--set section.key=value`) may
        change the run's `decoding` and `data` keys (e.g. where its corpus now lives); the
        model's shape is the checkpoint's (`translator.run.inference_config` states the rule)."""
        layout = RunLayout(Path(run_dir))
        dev = resolve_device(device)
        cfg, ckpt, path = inference_config(layout, checkpoint, overrides, map_location=dev)
        src_tok = TextTokenizer.load(layout.tokenizer(cfg.data.src_lang))
        tgt_tok = TextTokenizer.load(layout.tokenizer(cfg.data.tgt_lang))
        model = model_from_checkpoint(cfg, ckpt, path, src_tok.vocab_size, tgt_tok.vocab_size)
        if dtype is not None:
            cfg.decoding = dataclasses.replace(cfg.decoding, dtype=dtype)  # validates it
        return cls(cfg, src_tok, tgt_tok, model.to(DTYPES[cfg.decoding.dtype]), dev, path)

    def decoding(self, **overrides: float | int | None) -> DecodingConfig:
        """The run's decoding settings with the given non-None fields replaced (validated)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        return dataclasses.replace(self.cfg.decoding, **changes)

    def encode(self, sentences: Sequence[str]) -> list[list[int]]:
        """Source ids of each sentence (without specials), cut to what the model was trained
        on; control characters count as spaces."""
        max_src = self.cfg.data.max_len - 2
        ids = []
        texts = [clean_text(s) for s in sentences]
        for text, ids_n in zip(texts, self.src_tok.encode_batch(texts), strict=True):
            if len(ids_n) > max_src:
                log.warning("a sentence of %d tokens is cut to its first %d (data.max_len): "
                            "%.40s...", len(ids_n), max_src, text.strip())
                ids_n = ids_n[:max_src]
            ids.append(ids_n)
        return ids

    def translate(self, sentences: Sequence[str], batch_size: int = 64, *,
                  beam_size: int | None = None, length_penalty: float | None = None,
                  max_len_a: float | None = None, max_len_b: int | None = None,
                  split_sentences: bool = False) -> list[str]:
        """Translate texts; empty or whitespace-only ones give "".

        Decoding settings default to the run's `decoding` config section. With
        `split_sentences`, each text is cut into sentences (`split_into_sentences`), which are
        translated on their own and joined with a space.
        """
        dec = self.decoding(beam_size=beam_size, length_penalty=length_penalty,
                            max_len_a=max_len_a, max_len_b=max_len_b)
        pieces, owner = sentence_pieces(sentences, split_sentences)
        ids = self.encode(pieces)
        keep = [i for i, x in enumerate(ids) if x]
        outs = self._search([ids[i] for i in keep], batch_size, dec)
        texts: list[list[str]] = [[] for _ in sentences]
        done = {i: self.tgt_tok.decode(out) for i, out in zip(keep, outs, strict=True)}
        for i, text_index in enumerate(owner):
            if done.get(i):
                texts[text_index].append(done[i])
        return [" ".join(parts) for parts in texts]

    def translate_nbest(self, sentences: Sequence[str], n_best: int, batch_size: int = 64, *,
                        beam_size: int | None = None, length_penalty: float | None = None,
                        max_len_a: float | None = None, max_len_b: int | None = None,
                        split_sentences: bool = False) -> list[list[tuple[str, float]]]:
        """The `n_best` best beam-search translations of each text with their scores
        (length-normalised log-probabilities), best first; [] for an empty text.

        Without `beam_size` the beam is the run's, widened to `n_best` if narrower; a
        `beam_size` below `n_best` is an error (a beam of k holds only k hypotheses).

        With `split_sentences`, each text is cut into sentences as `translate` does, and its
        k-th alternative joins the k-th hypothesis of each sentence (a sentence with fewer
        hypotheses gives its last); its score is the sum of those hypotheses' scores, so the
        alternatives stay sorted and a one-sentence text keeps its sentence's score."""
        if beam_size is not None and beam_size < n_best:
            raise TranslatorError(f"--n-best {n_best} needs a beam of at least {n_best} "
                                  f"hypotheses, got --beam {beam_size}")
        dec = self.decoding(beam_size=beam_size or max(self.cfg.decoding.beam_size, n_best),
                            length_penalty=length_penalty, max_len_a=max_len_a,
                            max_len_b=max_len_b)
        pieces, owner = sentence_pieces(sentences, split_sentences)
        ids = self.encode(pieces)
        keep = [i for i, x in enumerate(ids) if x]
        outs = self._nbest([ids[i] for i in keep], batch_size, dec, n_best)
        per_text: list[list[list[tuple[str, float]]]] = [[] for _ in sentences]
        found = dict(zip(keep, outs, strict=True))
        for i, text_index in enumerate(owner):
            if found.get(i):
                per_text[text_index].append([(self.tgt_tok.decode(tokens), score)
                                             for tokens, score in found[i]])
        result: list[list[tuple[str, float]]] = []
        for parts in per_text:
            width = max((len(hyps) for hyps in parts), default=0)
            result.append([
                (" ".join(t for t in (hyps[min(k, len(hyps) - 1)][0] for hyps in parts) if t),
                 sum(hyps[min(k, len(hyps) - 1)][1] for hyps in parts))
                for k in range(width)])
        return result

    def _search(self, src_ids: Sequence[Sequence[int]], batch_size: int,
                dec: DecodingConfig) -> list[list[int]]:
        """The best output ids of each (non-empty) source; engines override this."""
        return translate_ids(self.model, src_ids, self.device, batch_size, dec.max_len_a,
                             dec.max_len_b, beam_size=dec.beam_size, alpha=dec.length_penalty)

    def _nbest(self, src_ids: Sequence[Sequence[int]], batch_size: int, dec: DecodingConfig,
               n_best: int) -> list[list[tuple[list[int], float]]]:
        """The n_best (ids, score) pairs of each (non-empty) source, best first."""
        outs = nbest_ids(self.model, src_ids, self.device, batch_size, dec.max_len_a,
                         dec.max_len_b, beam_size=dec.beam_size, alpha=dec.length_penalty,
                         n_best=n_best)
        return [[(h.tokens, h.score) for h in hyps] for hyps in outs]

