"""What the server does, without HTTP: check a request against the limits, split its texts
into lines and sentences, send the sentences through the shared batcher, and rejoin each
request's translations.

Sentences are split here, before queueing, so that the sentences of different requests fill
one batch together. Splitting and rejoining follow `Translator.translate(...,
split_sentences=True)`: `split_into_sentences` cuts a line, the sentence translations are
joined with one space and empty ones are left out. Line breaks inside a text are kept (each
line is translated on its own), as `translator translate` keeps the lines of a file.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Hashable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from translator.decode.translator import Translator, split_into_sentences, split_lines
from translator.errors import TranslatorError
from translator.serve.batcher import Batcher, BatcherClosed

log = logging.getLogger("translator")

# English names of common language codes, for GET /languages (LibreTranslate lists names).
LANGUAGE_NAMES = {
    "ar": "Arabic", "bg": "Bulgarian", "ca": "Catalan", "cs": "Czech", "da": "Danish",
    "de": "German", "el": "Greek", "en": "English", "es": "Spanish", "et": "Estonian",
    "eu": "Basque", "fa": "Persian", "fi": "Finnish", "fr": "French", "ga": "Irish",
    "he": "Hebrew", "hi": "Hindi", "hr": "Croatian", "hu": "Hungarian", "id": "Indonesian",
    "is": "Icelandic", "it": "Italian", "ja": "Japanese", "ko": "Korean", "lt": "Lithuanian",
    "lv": "Latvian", "nb": "Norwegian Bokmål", "nl": "Dutch", "no": "Norwegian",
    "pl": "Polish", "pt": "Portuguese", "ro": "Romanian", "ru": "Russian", "sk": "Slovak",
    "sl": "Slovenian", "sr": "Serbian", "sv": "Swedish", "th": "Thai", "tr": "Turkish",
    "uk": "Ukrainian", "vi": "Vietnamese", "zh": "Chinese",
}


class RequestError(TranslatorError):
    """A request the server refuses, with the HTTP status to answer it with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_chars: int = 5000
    """Characters in all of a request's texts together."""
    max_lines: int = 100
    """Lines in all of a request's texts together (each text is at least one line)."""
    max_beam: int = 16
    """Largest beam size (and n-best) a request may ask for: the cost grows with it."""
    timeout: float = 30.0
    """Seconds a request may wait for its translation before it is answered 503."""


@dataclass(frozen=True)
class _Key:
    """The decoding settings shared by one batch: only requests that agree are batched."""

    kind: str  # "translate" or "attention"
    beam_size: int
    n_best: int = 1


class TranslationService:
    """A loaded translator behind one batching queue.

    `attention_translator` gives the native Translator that /attention uses: the served one,
    or for another engine a loader called on first use (CTranslate2 does not expose every
    head's cross-attention)."""

    def __init__(self, translator: Translator, *, max_batch: int = 64, wait_ms: float = 5.0,
                 limits: Limits | None = None,
                 attention_translator: Callable[[], Translator] | None = None,
                 run_dir: str | None = None) -> None:
        self.translator = translator
        self.limits = limits or Limits()
        self.max_batch = max_batch
        self.run_dir = run_dir
        self.src_lang = translator.cfg.data.src_lang
        self.tgt_lang = translator.cfg.data.tgt_lang
        self._attention_loader = attention_translator
        self._attention_model: Translator | None = (
            translator if getattr(translator, "model", None) is not None else None)
        self.started = time.time()
        self.batcher: Batcher[str, Any] = Batcher(self._decode, max_batch=max_batch,
                                                  wait_ms=wait_ms, name="translator-batcher")

    # -- checks ---------------------------------------------------------------------------

    def check_pair(self, source: str | None, target: str | None) -> None:
        """Refuse a language pair other than the run's ("auto" is taken as its source)."""
        src = self.src_lang if source in (None, "auto") else source
        tgt = self.tgt_lang if target is None else target
        if (src, tgt) != (self.src_lang, self.tgt_lang):
            raise RequestError(f"unsupported language pair {_short(src)}->{_short(tgt)}: "
                               f"this server translates {self.src_lang}->{self.tgt_lang}")

    def check_texts(self, texts: Sequence[str]) -> None:
        """Refuse an empty request, or one over the character or line limit."""
        if not texts or not any(t.strip() for t in texts):
            raise RequestError("nothing to translate: q is empty")
        chars = sum(len(t) for t in texts)
        if chars > self.limits.max_chars:
            raise RequestError(f"q holds {chars} characters, more than the limit of "
                               f"{self.limits.max_chars}")
        lines = sum(max(1, len(split_lines(t))) for t in texts)
        if lines > self.limits.max_lines:
            raise RequestError(f"q holds {lines} lines, more than the limit of "
                               f"{self.limits.max_lines}")

    def check_beam(self, beam: int | None, n_best: int) -> int:
        """The beam size to use (the run's default unless given), checked against the limit."""
        size = beam if beam is not None else self.translator.cfg.decoding.beam_size
        size = max(size, n_best)
        if size > self.limits.max_beam:
            raise RequestError(f"beam size {size} is over the limit of {self.limits.max_beam}")
        return size

    # -- translation ----------------------------------------------------------------------

    async def translate(self, texts: Sequence[str], beam: int | None = None,
                        n_best: int = 1) -> list[list[str]]:
        """For each text, its `n_best` translations (best first; fewer when the search found
        fewer distinct ones). Sentences of all concurrent requests are batched together."""
        self.check_texts(texts)
        beam_size = self.check_beam(beam, n_best)
        layout, sentences = _plan(texts)
        results = iter(await self._run(sentences, _Key("translate", beam_size, n_best)))
        return [_rejoin(lines, results, n_best) for lines in layout]

    async def attention(self, text: str, beam: int | None = None) -> dict[str, Any]:
        """Per sentence of `text`: source tokens, generated tokens and the last decoder
        layer's cross-attention averaged over heads ([generated][source])."""
        self.check_texts([text])
        beam_size = self.check_beam(beam, 1)
        layout, sentences = _plan([text])
        maps = await self._run(sentences, _Key("attention", beam_size))
        translated = _rejoin(layout[0], iter([[m["translation"]] for m in maps]), 1)[0]
        return {"translatedText": translated, "sentences": maps}

    async def _run(self, sentences: list[str], key: _Key) -> list[Any]:
        try:
            return await self.batcher.run(sentences, key, timeout=self.limits.timeout)
        except TimeoutError:
            raise RequestError(f"the translation took longer than {self.limits.timeout:g} s "
                               "(the server is busy); try again", 503) from None
        except BatcherClosed:
            raise RequestError("the server is shutting down", 503) from None

    def _decode(self, key: Hashable, sentences: list[str]) -> list[Any]:
        """One batch, on the batcher's worker thread."""
        assert isinstance(key, _Key)
        tr = self.translator
        if key.kind == "attention":
            return [self._attention_of(s, key.beam_size) for s in sentences]
        if key.n_best == 1:
            # Sentences are already split; batch_size lets one call take the whole batch.
            texts = tr.translate(sentences, max(self.max_batch, 1), beam_size=key.beam_size)
            return [[t] for t in texts]
        nbest = tr.translate_nbest(sentences, key.n_best, max(self.max_batch, 1),
                                   beam_size=key.beam_size)
        return [[text for text, _ in hyps] for hyps in nbest]

    def _attention_of(self, sentence: str, beam_size: int) -> dict[str, Any]:
        from translator.visualize import attention_maps

        if self._attention_model is None:
            if self._attention_loader is None:
                raise RequestError("attention maps need the native model of a run")
            log.info("loading the native model for attention maps")
            self._attention_model = self._attention_loader()
        tr = self._attention_model
        if not tr.encode([sentence])[0]:  # nothing the tokenizer keeps (e.g. only controls)
            return {"source": sentence, "translation": "", "source_tokens": [],
                    "target_tokens": [], "attention": []}
        maps = attention_maps(tr, sentence, beam_size=beam_size)
        cross = maps.weights["cross"][-1].mean(dim=0)  # [generated, source]
        return {
            "source": sentence,
            "translation": maps.translation,
            "source_tokens": maps.src_tokens,
            "target_tokens": maps.tgt_out_tokens,
            "attention": [[round(float(v), 4) for v in row] for row in cross.tolist()],
        }

    # -- info -----------------------------------------------------------------------------

    def languages(self) -> list[dict[str, Any]]:
        """The run's pair in LibreTranslate's shape."""
        return [
            {"code": self.src_lang, "name": LANGUAGE_NAMES.get(self.src_lang, self.src_lang),
             "targets": [self.tgt_lang]},
            {"code": self.tgt_lang, "name": LANGUAGE_NAMES.get(self.tgt_lang, self.tgt_lang),
             "targets": []},
        ]

    def health(self) -> dict[str, Any]:
        """Model and queue state; cheap, answered on the event loop."""
        tr = self.translator
        b = self.batcher
        return {
            "status": "ok",
            "model_loaded": True,
            "engine": tr.engine_name,
            "device": str(tr.device),
            "run": self.run_dir,
            "checkpoint": str(tr.checkpoint) if tr.checkpoint else None,
            "source": self.src_lang,
            "target": self.tgt_lang,
            "beam_size": tr.cfg.decoding.beam_size,
            "decoding": b.busy,
            "queued_sentences": b.queued,
            "batches": b.batches,
            "sentences_translated": b.items_decoded,
            "largest_batch": b.largest_batch,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def close(self) -> None:
        self.batcher.close()


def _short(code: str, limit: int = 24) -> str:
    """A client's language code as an error message may quote it: not a megabyte of it."""
    return code if len(code) <= limit else code[:limit] + "..."


def _plan(texts: Sequence[str]) -> tuple[list[list[int]], list[str]]:
    """Per text, the number of sentences of each of its lines; and all sentences in order."""
    layout: list[list[int]] = []
    sentences: list[str] = []
    for text in texts:
        counts = []
        for line in split_lines(text) or [""]:
            parts = split_into_sentences(line)
            counts.append(len(parts))
            sentences.extend(parts)
        layout.append(counts)
    return layout, sentences


def _rejoin(line_counts: list[int], results: Iterator[list[str]], n_best: int) -> list[str]:
    """Rebuild one text from its sentences' results, taken in order from `results` (one
    iterator shared by the texts of a request): variant k joins each sentence's k-th
    translation (its best when it has fewer), sentences with a space and lines with \\n."""
    variants: list[list[str]] = [[] for _ in range(n_best)]
    for count in line_counts:
        mine = [next(results) for _ in range(count)]
        for k in range(n_best):
            parts = [r[min(k, len(r) - 1)] for r in mine if r]
            variants[k].append(" ".join(p for p in parts if p))
    return ["\n".join(lines) for lines in variants]
