"""What the server does, without HTTP: route a request to the model(s) of its language pair
(through a pivot language when no model goes directly), detect the source language for
`auto`, check the request against the limits, cut its texts (or the text nodes of its HTML)
into lines and sentences, send the sentences through the model's batcher, and rejoin each
request's translations.

Every model has its own batcher (its own queue and worker), so a busy pair never holds up
another. All models are loaded at start-up: a model folder that does not load is an error
when the server starts, not for the first user of that pair, and no request waits seconds
for a load. The cost is memory: each model stays resident (a Multi30k-size model is tens of
MB; serve fewer models at once if that is too much).

Sentences are split here, before queueing (on a worker thread, off the event loop), so that
the sentences of different requests fill one batch together. Splitting and rejoining are the
engines' own (`translator.decode.pieces`); line breaks inside a text are kept.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field
from typing import Any

from translator.data.text import split_lines
from translator.decode.engine import Engine
from translator.decode.pieces import Pieces, cut
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.languages import language_name
from translator.serve.batcher import Batcher, BatcherClosed, QueueFull
from translator.serve.detect import LanguageDetector
from translator.serve.html import split_html
from translator.serve.process import DecodePool, ModelSpec

log = logging.getLogger("translator")



class RequestError(TranslatorError):
    """A request the server refuses, with the HTTP status (and headers) to answer it with."""

    def __init__(self, message: str, status: int = 400,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.headers = headers


@dataclass(frozen=True)
class Limits:
    """What one request may ask for."""

    max_chars: int = 5000
    """Characters in all of a request's texts together."""
    max_lines: int = 100
    """Lines in all of a request's texts together (each text is at least one line)."""
    max_beam: int = 16
    """Largest beam size (and n-best) a request may ask for: the cost grows with it."""
    max_work: int = 1024
    """Sentences x beam size (x 2 through a pivot) of one request: what its decoding costs,
    which characters alone do not bound ("Ab. " * 1250 is 1,250 sentences)."""
    timeout: float = 30.0
    """Seconds a request may wait for its translation before it is answered 503."""
    max_queued: int = 2048
    """Sentences waiting for one model before new requests get 429 (0: no bound)."""
    max_file_chars: int = 100_000
    """Characters of a file sent to /translate_file."""
    file_timeout: float = 600.0
    """Seconds a file may take (its sentences go through the queue in batches, between
    other clients' requests)."""


@dataclass(frozen=True)
class _Key:
    """The decoding settings shared by one batch: only requests that agree are batched."""

    kind: str  # "translate" or "attention"
    beam_size: int
    n_best: int = 1


@dataclass(eq=False)
class ServedModel:
    """One model of the server: a loaded translator, where it came from, and (for /attention
    with an engine other than native) how to load its native model."""

    translator: Engine
    run_dir: str | None = None
    attention_loader: Callable[[], Translator] | None = None
    decode_process: Callable[[], Translator] | None = None
    """How a decoding process loads this native model for its greedy requests
    (`translator.serve.process`, picklable); None: they are decoded in the server's
    process."""
    batcher: Batcher[str, Any] | None = field(default=None, repr=False)
    attention_model: Translator | None = field(default=None, repr=False)

    @property
    def pair(self) -> tuple[str, str]:
        return self.translator.cfg.data.src_lang, self.translator.cfg.data.tgt_lang

    @property
    def name(self) -> str:
        return f"{self.pair[0]}->{self.pair[1]}"


@dataclass
class Translation:
    """A request's answer: per text its variants (best first), the detected language of each
    text for `auto`, and the pivot language when the pair went through one."""

    variants: list[list[str]]
    detected: list[dict[str, Any]] | None = None
    via: str | None = None


@dataclass
class _Doc:
    """One text of a request as the units to translate and how to put them back."""

    units: list[str]
    fill: Callable[[list[str]], str]


class TranslationService:
    """Loaded models, each behind its own batching queue, routed by language pair."""

    def __init__(self, models: Engine | ServedModel | Sequence[Engine | ServedModel],
                 *, max_batch: int = 64, wait_ms: float = 5.0, limits: Limits | None = None,
                 attention_translator: Callable[[], Translator] | None = None,
                 run_dir: str | None = None, workers: int = 1,
                 hide_paths: bool = False, decode_processes: int = 0) -> None:
        if isinstance(models, (Engine, ServedModel)) or not isinstance(models, Sequence):
            models = [models]  # type: ignore[list-item]
        served = [m if isinstance(m, ServedModel) else
                  ServedModel(m, run_dir, attention_translator) for m in models]
        if not served:
            raise TranslatorError("no model to serve")
        self.limits = limits or Limits()
        self.max_batch = max_batch
        self.pool: DecodePool | None = None
        self.hide_paths = hide_paths
        self.models: dict[tuple[str, str], ServedModel] = {}
        for m in served:
            if m.pair in self.models:
                raise TranslatorError(f"two models translate {m.name}: "
                                      f"{self._origin(self.models[m.pair])} and "
                                      f"{self._origin(m)}; serve one of them")
            self.models[m.pair] = m
        try:
            if decode_processes > 0 and workers == 1:
                self.pool = _pool(served, decode_processes)
            for m in served:
                self._start(m, max_batch, wait_ms, workers)
            if self.pool is not None:  # the processes load while the server's models start
                self.pool.wait_ready()
        except BaseException:
            self.close()
            raise
        self.via = _pivots(list(self.models))
        self.detector = LanguageDetector(sorted({s for s, _ in self.models}))
        self.started = time.time()

    def _start(self, m: ServedModel, max_batch: int, wait_ms: float, workers: int) -> None:
        """Give a model its batcher, and a native one its greedy stream."""
        stream = None
        if isinstance(m.translator, Translator):  # the native engine draws attention
            m.attention_model = m.translator
            if workers == 1:
                stream = self._greedy_stream(m)
        m.batcher = Batcher(self._decoder(m), max_batch=max_batch, wait_ms=wait_ms,
                            name=f"batcher-{m.name}", workers=workers,
                            max_queued=self.limits.max_queued,
                            stream=None if stream is None else _greedy_only(stream))

    def _greedy_stream(self, m: ServedModel) -> Any:
        """The stream of a native model's greedy requests (see `_greedy_only`): in the decoding
        pool when it has the model, else on the batcher's thread."""
        assert isinstance(m.translator, Translator)
        if self.pool is not None and m.decode_process is not None:
            return self.pool.stream(m.name)
        return _Answers(m.translator.stream(m.translator.decoding(beam_size=1)))

    @staticmethod
    def _origin(m: ServedModel) -> str:
        return m.run_dir or str(m.translator.checkpoint)

    # -- the first model, for callers that serve one (tests, the single-run log line) ------

    @property
    def first(self) -> ServedModel:
        return next(iter(self.models.values()))

    @property
    def batcher(self) -> Batcher[str, Any]:
        assert self.first.batcher is not None
        return self.first.batcher

    @property
    def src_lang(self) -> str:
        return self.first.pair[0]

    @property
    def tgt_lang(self) -> str:
        return self.first.pair[1]

    @property
    def sources(self) -> list[str]:
        return sorted({s for s, _ in self.models})

    def targets(self, source: str) -> list[str]:
        """Every target reachable from `source`, directly or through one pivot."""
        return sorted({t for s, t in self.models if s == source} | set(self.via.get(source, {})))

    # -- checks ---------------------------------------------------------------------------

    def resolve(self, source: str | None, target: str | None) -> tuple[str, str]:
        """The pair a request names, defaults filled in (the only source or target there is),
        checked: a language no model translates from, or a target it cannot reach, is 400.
        `source` may be "auto" (kept as is)."""
        if source in (None, ""):
            if len(self.sources) > 1:
                raise RequestError("missing source: this server translates from "
                                   f"{', '.join(self.sources)} (or send 'auto')")
            source = self.sources[0]
        if source != "auto" and source not in self.sources:
            raise RequestError(f"unsupported source language {_short(source)}: this server "
                               f"translates from {', '.join(self.sources)}")
        if target in (None, ""):
            reachable = self.targets(source) if source != "auto" else \
                sorted({t for s in self.sources for t in self.targets(s)})
            if len(reachable) != 1:
                raise RequestError("missing target: one of " + ", ".join(reachable))
            target = reachable[0]
        if source != "auto":
            self.route(source, target)
        elif not any(target in self.targets(s) or target == s for s in self.sources):
            raise RequestError(f"unsupported target language {_short(target)}: no model "
                               "translates into it")
        return source, target

    def route(self, source: str, target: str) -> list[ServedModel]:
        """The models a pair goes through: one, or two through a pivot."""
        if (source, target) in self.models:
            return [self.models[source, target]]
        pivot = self.via.get(source, {}).get(target)
        if pivot is None:
            reach = ", ".join(self.targets(source)) or "nothing"
            raise RequestError(f"unsupported language pair {_short(source)}->{_short(target)}:"
                               f" from {_short(source)} this server translates into {reach}")
        return [self.models[source, pivot], self.models[pivot, target]]

    def check_texts(self, texts: Sequence[str], max_chars: int | None = None,
                    max_lines: int | None = None) -> None:
        """Refuse an empty request, or one over the character or line limit."""
        if not texts or not any(t.strip() for t in texts):
            raise RequestError("nothing to translate: q is empty")
        chars = sum(len(t) for t in texts)
        limit = max_chars or self.limits.max_chars
        if chars > limit:
            raise RequestError(f"q holds {chars} characters, more than the limit of {limit}")
        lines = sum(max(1, len(split_lines(t))) for t in texts)
        limit = max_lines or self.limits.max_lines
        if lines > limit:
            raise RequestError(f"q holds {lines} lines, more than the limit of {limit}")

    def check_beam(self, beam: int | None, n_best: int, model: ServedModel | None = None,
                   ) -> int:
        """The beam size to use (the model's default unless given), checked against the
        limit."""
        tr = (model or self.first).translator
        size = beam if beam is not None else tr.cfg.decoding.beam_size
        size = max(size, n_best)
        if size > self.limits.max_beam:
            raise RequestError(f"beam size {size} is over the limit of {self.limits.max_beam}")
        return size

    def check_work(self, sentences: int, beam: int, legs: int) -> None:
        """Refuse (413) a request whose sentences x beam x legs is over the budget."""
        work = sentences * beam * legs
        if work > self.limits.max_work:
            through = " x 2 (through a pivot)" if legs > 1 else ""
            raise RequestError(
                f"the request is too large: {sentences} sentences x beam {beam}{through} = "
                f"{work}, over the limit of {self.limits.max_work}; send fewer sentences per "
                "request or a smaller beam", 413)

    # -- detection ------------------------------------------------------------------------

    async def detect(self, texts: Sequence[str]) -> list[list[dict[str, Any]]]:
        """Per text, LibreTranslate's candidates [{"confidence", "language"}], best first,
        among the languages this server translates from."""
        self.check_texts(texts)
        try:
            return await asyncio.to_thread(lambda: [self.detector.rank(t) for t in texts])
        except TranslatorError as exc:
            raise RequestError(str(exc), 501) from None

    # -- translation ----------------------------------------------------------------------

    async def translate(self, texts: Sequence[str], source: str | None = None,
                        target: str | None = None, beam: int | None = None, n_best: int = 1,
                        fmt: str = "text", file: bool = False) -> Translation:
        """For each text, its `n_best` translations (best first; fewer distinct ones are
        padded with the best). With source "auto" each text's language is detected and each
        group goes to its own model(s). `fmt` "html" translates the text nodes only. `file`
        applies the file limits (characters, timeout) instead of the request's."""
        if file:
            self.check_texts(texts, self.limits.max_file_chars, 1 << 62)
        else:
            self.check_texts(texts)
        source, target = self.resolve(source, target)
        detected = None
        if source == "auto":
            detected = [d[0] for d in await self.detect(texts)]
            groups = _group([d["language"] for d in detected])
        else:
            groups = {source: list(range(len(texts)))}
        docs = await asyncio.to_thread(_docs, texts, fmt)
        routes: dict[str, list[ServedModel]] = {}
        beams: dict[str, int] = {}
        for src in groups:
            if src == target:
                continue  # already in the target language: returned as it is
            routes[src] = self.route(src, target)
            beams[src] = self.check_beam(beam, n_best, routes[src][0])
        units = {src: [u for i in idx for u in docs[i].units] for src, idx in groups.items()}
        plans = await asyncio.to_thread(lambda: {s: _plan(units[s]) for s in routes})
        if not file:
            for src in routes:
                self.check_work(len(plans[src].units), beams[src], len(routes[src]))
        timeout = self.limits.file_timeout if file else self.limits.timeout
        out: list[list[str]] = [[t] * n_best for t in texts]
        for src, idx in groups.items():
            if src not in routes:
                continue
            variants = await self._legs(routes[src], plans[src], beams[src], n_best, timeout)
            it = iter(variants)
            for i in idx:
                mine = [next(it) for _ in docs[i].units]
                out[i] = [docs[i].fill([v[k] for v in mine]) for k in range(n_best)]
        via = {m[0].pair[1] for m in routes.values() if len(m) > 1}
        return Translation(out, detected, via.pop() if len(via) == 1 else None)

    async def _legs(self, models: list[ServedModel], plan: Pieces, beam: int, n_best: int,
                    timeout: float) -> list[list[str]]:
        """Translate planned units through one model, or two (the pivot's best output is the
        second model's input); per unit its n_best variants."""
        for leg, model in enumerate(models):
            last = leg == len(models) - 1
            k = n_best if last else 1
            results = await self._run(model, plan.units, _Key("translate", beam, k), timeout)
            variants = plan.rejoin(results, width=k)
            if not last:
                plan = await asyncio.to_thread(_plan, [v[0][0] for v in variants])
        return [[text for text, _ in v] for v in variants]

    async def attention(self, text: str, source: str | None = None, target: str | None = None,
                        beam: int | None = None) -> dict[str, Any]:
        """Per sentence of `text`: source tokens, generated tokens and the last decoder
        layer's cross-attention averaged over heads ([generated][source])."""
        self.check_texts([text])
        source, target = self.resolve(source, target)
        if source == "auto":
            source = (await self.detect([text]))[0][0]["language"]
        models = self.route(source, target)
        if len(models) > 1:
            raise RequestError(f"attention maps are drawn for one model; {source}->{target} "
                               f"goes through {models[0].pair[1]}")
        beam_size = self.check_beam(beam, 1, models[0])
        plan = await asyncio.to_thread(_plan, [text])
        self.check_work(len(plan.units), beam_size, 1)
        maps = await self._run(models[0], plan.units, _Key("attention", beam_size),
                               self.limits.timeout)
        translated = plan.rejoin([[(m["translation"], 0.0)] for m in maps], width=1)[0][0][0]
        return {"translatedText": translated, "sentences": maps}

    async def _run(self, model: ServedModel, sentences: list[str], key: _Key,
                   timeout: float) -> list[Any]:
        assert model.batcher is not None
        try:
            return await model.batcher.run(sentences, key, timeout=timeout)
        except asyncio.TimeoutError:  # not the builtin TimeoutError on Python 3.10
            raise RequestError(f"the translation took longer than {timeout:g} s (the server "
                               "is busy); try again", 503) from None
        except QueueFull as exc:
            raise RequestError(f"the server is busy ({exc}); try again in "
                               f"{exc.retry_after} s", 429,
                               {"Retry-After": str(exc.retry_after)}) from None
        except BatcherClosed:
            raise RequestError("the server is shutting down", 503) from None

    def _decoder(self, model: ServedModel) -> Callable[[Hashable, list[str]], list[Any]]:
        def decode(key: Hashable, sentences: list[str]) -> list[Any]:
            """One batch, on the model's batcher worker thread."""
            assert isinstance(key, _Key)
            tr = model.translator
            if key.kind == "attention":
                return [self._attention_of(model, s, key.beam_size) for s in sentences]
            dec = tr.decoding(beam_size=key.beam_size)
            # Sentences are already split; batch_size lets one call take the whole batch.
            if key.n_best == 1:
                texts = tr.translate(sentences, max(self.max_batch, 1), decoding=dec)
                return [[(t, 0.0)] for t in texts]  # the best only: no score is kept
            return tr.translate_nbest(sentences, key.n_best, max(self.max_batch, 1),
                                      decoding=dec)
        return decode

    def _attention_of(self, model: ServedModel, sentence: str, beam_size: int,
                      ) -> dict[str, Any]:
        from translator.visualize import attention_maps

        if model.attention_model is None:
            if model.attention_loader is None:
                raise RequestError("attention maps need the native model of a run")
            log.info("loading the native model of %s for attention maps", model.name)
            model.attention_model = model.attention_loader()
        tr = model.attention_model
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
        """LibreTranslate's shape: every language with the targets it reaches; `via` names
        the pivot of the targets reached through another language (an extension: clients
        ignore it)."""
        codes = sorted({c for pair in self.models for c in pair})
        out = []
        for code in codes:
            entry: dict[str, Any] = {"code": code, "name": language_name(code),
                                     "targets": self.targets(code)}
            if self.via.get(code):
                entry["via"] = dict(sorted(self.via[code].items()))
            out.append(entry)
        return out

    def health(self, hide_paths: bool | None = None) -> dict[str, Any]:
        """Models and queue state; cheap, answered on the event loop. No file paths when
        `hide_paths` (default: the service's; a server with an API key tells strangers
        nothing of its disk)."""
        hide = self.hide_paths if hide_paths is None else hide_paths
        models = [self._model_health(m, hide) for m in self.models.values()]
        first = models[0]
        return {
            "status": "ok",
            "model_loaded": True,
            **{k: first[k] for k in ("engine", "device", "source", "target", "beam_size")},
            **({} if hide else {"run": first["run"],
                                            "checkpoint": first["checkpoint"]}),
            "decoding": any(m["decoding"] for m in models),
            "queued_sentences": sum(m["queued_sentences"] for m in models),
            "batches": sum(m["batches"] for m in models),
            "sentences_translated": sum(m["sentences_translated"] for m in models),
            "largest_batch": max(m["largest_batch"] for m in models),
            "models": models,
            "uptime_s": round(time.time() - self.started, 1),
        }

    def _model_health(self, m: ServedModel, hide: bool) -> dict[str, Any]:
        tr, b = m.translator, m.batcher
        assert b is not None
        info: dict[str, Any] = {
            "source": m.pair[0], "target": m.pair[1], "engine": tr.engine_name,
            "device": str(tr.device), "beam_size": tr.cfg.decoding.beam_size,
            "decoding": b.busy, "queued_sentences": b.queued, "batches": b.batches,
            "sentences_translated": b.items_decoded, "largest_batch": b.largest_batch,
            "steps": b.steps, "step_sentences": b.step_items}
        if not hide:
            info["run"] = m.run_dir
            info["checkpoint"] = str(tr.checkpoint) if tr.checkpoint else None
        return info

    def close(self) -> None:
        for m in self.models.values():
            if m.batcher is not None:
                m.batcher.close()
        if self.pool is not None:
            self.pool.close()


def _pool(served: Sequence[ServedModel], processes: int) -> DecodePool | None:
    """Decoding processes for the native models that say how to load them there."""
    specs = [ModelSpec(m.name, m.decode_process, m.translator.decoding(beam_size=1))
             for m in served if isinstance(m.translator, Translator)
             and m.decode_process is not None]
    if not specs:
        return None
    import torch

    return DecodePool(specs, processes, torch.get_num_threads())


def _greedy_only(stream: Any) -> Callable[[Hashable], Any]:
    """The batcher's `stream` of a native model: greedy translation of one best (a request's
    `beam: 1`, or any request to a run whose `decoding.beam_size` is 1) is decoded step by
    step, sentences joining and leaving the running batch (`translator.decode.continuous`);
    beam search and attention maps go batch by batch."""
    def pick(key: Hashable) -> Any:
        assert isinstance(key, _Key)
        greedy = key.kind == "translate" and key.beam_size == 1 and key.n_best == 1
        return stream if greedy else None
    return pick


class _Answers:
    """A SentenceStream whose results are the batcher's answers: [(text, 0.0)] per sentence,
    as `_decoder` gives them (greedy keeps no score)."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream

    def __len__(self) -> int:
        return len(self.stream)

    def admit(self, items: list[str], tags: list[Hashable]) -> list[tuple[Hashable, Any]]:
        return [(tag, [(text, 0.0)]) for tag, text in self.stream.admit(items, tags)]

    def step(self) -> list[tuple[Hashable, Any]]:
        return [(tag, [(text, 0.0)]) for tag, text in self.stream.step()]

    def drop(self, withdrawn: Callable[[Hashable], bool]) -> list[Hashable]:
        return self.stream.drop(withdrawn)


def _pivots(pairs: list[tuple[str, str]]) -> dict[str, dict[str, str]]:
    """For each source, the targets reached only through one pivot, and that pivot (the
    first in alphabetical order when there are several)."""
    direct: dict[str, set[str]] = {}
    for s, t in pairs:
        direct.setdefault(s, set()).add(t)
    via: dict[str, dict[str, str]] = {}
    for s, targets in direct.items():
        for p in sorted(targets):
            for t in sorted(direct.get(p, ())):
                if t != s and t not in targets:
                    via.setdefault(s, {}).setdefault(t, p)
    return via


def _group(languages: list[str]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for i, lang in enumerate(languages):
        groups.setdefault(lang, []).append(i)
    return groups


def _short(code: str, limit: int = 24) -> str:
    """A client's language code as an error message may quote it: not a megabyte of it."""
    return code if len(code) <= limit else code[:limit] + "..."


def _docs(texts: Sequence[str], fmt: str) -> list[_Doc]:
    """Each text as units to translate: itself, or the text nodes of its HTML."""
    if fmt == "html":
        templates = [split_html(t) for t in texts]
        return [_Doc(t.texts, t.fill) for t in templates]
    return [_Doc([t], lambda tr: tr[0]) for t in texts]


def _plan(texts: Sequence[str]) -> Pieces:
    """Each text's lines cut into sentences: the units the batchers translate."""
    return cut(texts, sentences=True, lines=True)
