"""The one engine interface (after eole's `InferenceEngine`): what the CLI, evaluation and the
server call to translate text, whichever engine runs the model.

An engine holds a config (languages, `data.max_len`, the decoding defaults), the two
tokenizers, a device and where its weights came from. What differs between engines is only
`search`: source ids in, each sentence's hypotheses (target ids, score) out. The rest is here
once: `decoding` resolves the settings into one `DecodingConfig`, `encode` turns text into
source ids, and `translate` / `translate_nbest` share one body (`hypotheses`), which cuts texts
into sentences and joins them back through `translator.decode.pieces`.

Implementations: `translator.decode.translator.Translator` (native, PyTorch) and
`translator.decode.ct2.CT2Translator` (CTranslate2). Code that needs the PyTorch model itself
(attention maps, exports) asks for a `Translator`, not for an engine.
"""

from __future__ import annotations

import dataclasses
import logging
from abc import ABC, abstractmethod
from collections.abc import Sequence
from pathlib import Path
from typing import Any, ClassVar

from translator.config import Config, DecodingConfig
from translator.data.text import clean_text
from translator.data.tokenizer import TextTokenizer
from translator.decode.pieces import cut
from translator.errors import TranslatorError

log = logging.getLogger("translator")

Scored = list[tuple[list[int], float]]
"""One sentence's hypotheses: (target ids without specials, score), best first."""


class Engine(ABC):
    """A model loaded for translation; see the module's docstring."""

    engine_name: ClassVar[str]
    inter_threads: int = 1
    """How many batches the engine runs side by side (a server runs as many workers)."""
    """What reports and /health call the engine: "native" or "ctranslate2"."""

    def __init__(self, cfg: Config, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
                 device: Any, checkpoint: Path | None) -> None:
        self.cfg, self.src_tok, self.tgt_tok = cfg, src_tok, tgt_tok
        self.device, self.checkpoint = device, checkpoint

    @property
    def src_lang(self) -> str:
        return self.cfg.data.src_lang

    @property
    def tgt_lang(self) -> str:
        return self.cfg.data.tgt_lang

    @abstractmethod
    def search(self, src_ids: Sequence[Sequence[int]], decoding: DecodingConfig,
               n_best: int | None, batch_size: int) -> list[Scored]:
        """Per (non-empty) source, its hypotheses, best first, in input order: the best one
        when `n_best` is None (its score may be NaN: greedy search keeps none), else the
        `n_best` best of a beam search of `decoding.beam_size` (even 1)."""

    def decoding(self, n_best: int = 1, **overrides: float | int | None) -> DecodingConfig:
        """The engine's decoding settings (the run's `decoding` section) with the given
        non-None fields replaced, validated. For `n_best` > 1 without a `beam_size`, the beam
        is widened to `n_best`; a `beam_size` below `n_best` is an error (a beam of k holds
        only k hypotheses)."""
        changes = {k: v for k, v in overrides.items() if v is not None}
        beam = changes.get("beam_size")
        if n_best > 1 and beam is not None and int(beam) < n_best:
            raise TranslatorError(f"--n-best {n_best} needs a beam of at least {n_best} "
                                  f"hypotheses, got --beam {beam}")
        if beam is None and n_best > self.cfg.decoding.beam_size:
            changes["beam_size"] = n_best
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

    def hypotheses(self, texts: Sequence[str], decoding: DecodingConfig,
                   n_best: int | None = None, *, batch_size: int = 64,
                   split_sentences: bool = False) -> list[list[tuple[str, float]]]:
        """The one body of `translate` and `translate_nbest`: per text its variants (text,
        score), best first; [] for a text with nothing to translate. `n_best` as in `search`.
        With `split_sentences` each text is cut into sentences, translated on their own and
        joined back (`translator.decode.pieces`)."""
        pieces = cut(texts, split_sentences)
        ids = self.encode(pieces.units)
        keep = [i for i, x in enumerate(ids) if x]
        found = self.search([ids[i] for i in keep], decoding, n_best, max(batch_size, 1))
        results: list[list[tuple[str, float]]] = [[] for _ in ids]
        for i, hyps in zip(keep, found, strict=True):
            results[i] = [(self.tgt_tok.decode(tokens), score) for tokens, score in hyps]
        return pieces.rejoin(results)

    def translate(self, texts: Sequence[str], batch_size: int = 64, *,
                  decoding: DecodingConfig | None = None, split_sentences: bool = False,
                  **overrides: float | int | None) -> list[str]:
        """Translate texts; empty or whitespace-only ones give "". Decoding settings:
        `decoding`, else the engine's with `overrides` (`beam_size`, `length_penalty`,
        `max_len_a`, `max_len_b`) applied. With `split_sentences`, each text is cut into
        sentences, translated on their own and joined with a space."""
        dec = decoding if decoding is not None else self.decoding(**overrides)
        return [v[0][0] if v else "" for v in self.hypotheses(
            texts, dec, None, batch_size=batch_size, split_sentences=split_sentences)]

    def translate_nbest(self, texts: Sequence[str], n_best: int, batch_size: int = 64, *,
                        decoding: DecodingConfig | None = None, split_sentences: bool = False,
                        **overrides: float | int | None) -> list[list[tuple[str, float]]]:
        """The `n_best` best beam-search translations of each text with their scores
        (length-normalised log-probabilities), best first; [] for an empty text. Settings as
        in `translate`; without a beam size the beam is widened to `n_best` (`decoding`).

        With `split_sentences`, the k-th alternative of a text joins the k-th hypothesis of
        each sentence (see `translator.decode.pieces`)."""
        dec = decoding if decoding is not None else self.decoding(n_best, **overrides)
        if dec.beam_size < n_best:
            raise TranslatorError(f"--n-best {n_best} needs a beam of at least {n_best} "
                                  f"hypotheses, got --beam {dec.beam_size}")
        return self.hypotheses(texts, dec, n_best, batch_size=batch_size,
                               split_sentences=split_sentences)
