"""Using a trained run: pick the device, rebuild the model, translate text in batches."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import torch

from translator.checkpoint import CheckpointError, RunLayout, load_checkpoint
from translator.config import (
    Config,
    ConfigError,
    DecodingConfig,
    config_from_dict,
    parse_override,
)
from translator.decoding import Hypothesis, beam_search, greedy_decode
from translator.errors import TranslatorError
from translator.model import Transformer, build_transformer
from translator.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer

log = logging.getLogger("translator")
T = TypeVar("T")


def resolve_device(name: str = "auto") -> torch.device:
    """`auto` picks CUDA, then Apple MPS, then CPU; anything else must be usable here."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise TranslatorError(f"unknown device '{name}' (use auto, cpu, cuda, cuda:N or mps)")\
            from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TranslatorError(f"device '{name}' requested but CUDA is not available here")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise TranslatorError(f"device '{name}' requested but MPS is not available here")
    return device


def build_model(cfg: Config, src_vocab: int, tgt_vocab: int,
                share_embeddings: bool | None = None) -> Transformer:
    """The Transformer a config describes. Source and target embeddings are one matrix when
    the tokenizer is shared, unless `share_embeddings` says otherwise."""
    m = cfg.model
    if share_embeddings is None:
        share_embeddings = cfg.tokenizer.shared
    share_embeddings = share_embeddings and src_vocab == tgt_vocab
    return build_transformer(
        src_vocab, tgt_vocab, cfg.data.max_len, cfg.data.max_len,
        d_model=m.d_model, N=m.layers, h=m.heads, dropout=m.dropout, d_ff=m.d_ff,
        decoder_layers=m.decoder_layers or None, norm=m.norm, tie_embeddings=m.tie_embeddings,
        attention_dropout=m.attention_dropout,
        share_src_tgt_embeddings=share_embeddings,
    )


# The torch type of each `decoding.dtype` name.
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def pack_sources(rows: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    """Encoder inputs `[SOS] x [EOS]`, right-padded: [len(rows), longest + 2]."""
    width = max(len(ids) for ids in rows) + 2
    src = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
    for r, ids in enumerate(rows):
        src[r, 0] = SOS_ID
        src[r, 1:len(ids) + 1] = torch.tensor(list(ids), dtype=torch.long)
        src[r, len(ids) + 1] = EOS_ID
    return src.to(device)


def _in_batches(src_ids: Sequence[Sequence[int]], batch_size: int, device: torch.device,
                search: Callable[[torch.Tensor], list[T]],
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
        model's shape is the checkpoint's."""
        check_inference_overrides(overrides)
        layout = RunLayout(Path(run_dir))
        cfg = layout.load_config(list(overrides))
        path = Path(checkpoint) if checkpoint else layout.default_checkpoint()
        if not path.is_file():
            raise CheckpointError(f"checkpoint not found: {path}" + (
                "" if checkpoint else " (has this run been trained?)"))
        dev = resolve_device(device)
        ckpt = load_checkpoint(path, map_location=dev)
        src_tok = TextTokenizer.load(layout.tokenizer(cfg.data.src_lang))
        tgt_tok = TextTokenizer.load(layout.tokenizer(cfg.data.tgt_lang))
        if ckpt.get("config"):
            try:
                cfg = config_from_dict(ckpt["config"], name=cfg.name, overrides=overrides)
            except ConfigError:
                pass  # the run's config.yaml is the reference; keep it
            cfg.output.dir = str(layout.root)
        vocab = ckpt.get("vocab", {})
        if vocab and (vocab.get("src") != src_tok.vocab_size
                      or vocab.get("tgt") != tgt_tok.vocab_size):
            raise CheckpointError(
                f"{path} was trained with vocabularies of {vocab.get('src')}/{vocab.get('tgt')} "
                f"tokens but the run's tokenizers have {src_tok.vocab_size}/{tgt_tok.vocab_size}")
        # Checkpoints from before source/target embedding sharing hold two different
        # matrices; tying them on load would silently keep only one.
        weights = ckpt["model"]
        src_w, tgt_w = (weights.get(f"{side}_embed.embedding.weight") for side in ("src", "tgt"))
        shared = (src_w is not None and tgt_w is not None and src_w.shape == tgt_w.shape
                  and torch.equal(src_w, tgt_w))
        model = build_model(cfg, src_tok.vocab_size, tgt_tok.vocab_size, shared)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{path} does not fit this run's model: {first}") from None
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
        pieces, owner = _pieces(sentences, split_sentences)
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
        pieces, owner = _pieces(sentences, split_sentences)
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


# C0 and C1 control characters except the tab; they carry no words.
_CONTROL = {c: " " for c in [*range(0x00, 0x20), *range(0x7F, 0xA0)] if c != 0x09}


def check_inference_overrides(overrides: Sequence[str]) -> None:
    """`--set` on a trained run may change how it decodes and where its corpus is, not what
    the checkpoint holds: anything else is a one-line error naming the key."""
    for text in overrides:
        section, key, _ = parse_override(text)
        if section not in ("decoding", "data"):
            raise ConfigError(f"config error: --set {section}.{key}: a trained run's "
                              f"{section} section is fixed; only decoding.* and data.* can "
                              "change here")


def clean_text(text: str) -> str:
    """`text` with control characters (NUL, escape, bell, line breaks, ...) turned into spaces:
    they carry no words and would only reach the model as [UNK]s."""
    return text.translate(_CONTROL)


# A candidate sentence end: . ! ? ? (Arabic) or an ellipsis, then closing quotes or brackets,
# then white space. It is a real end unless the next word starts in lower case or the word
# before is an abbreviation or an initial.
_SENTENCE_END = re.compile(r"""(?<=[.!?؟…])(["'”’»)\]]*)\s+""")
_OPENERS = "\"'“‘«([¿¡"
_ABBREVIATIONS = frozenset(
    "mr mrs ms dr prof st sr jr vs etc e.g i.e no fig approx ca cf dept est inc ltd co corp "
    "mt ft jan feb mar apr jun jul aug sep sept oct nov dec u.s u.k z.b bzw usw ggf vgl "
    "nr str".split())


def split_into_sentences(text: str) -> list[str]:
    """Cut a paragraph into sentences at . ! ? followed by white space and a word that does
    not start in lower case, except after common abbreviations ("Dr. Smith") and single
    initials ("J. Smith"). Text without such a boundary comes back whole (stripped)."""
    parts, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        following = text[m.end():].lstrip(_OPENERS)
        if not following or following[0].islower():
            continue
        words = text[start:m.start()].split()
        word = words[-1].lstrip(_OPENERS).rstrip(".").lower() if words else ""
        if word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha()):
            continue
        parts.append(text[start:m.end(1)].strip())  # closing quotes stay with the sentence
        start = m.end()
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def _pieces(texts: Sequence[str], split: bool) -> tuple[list[str], list[int]]:
    """The units to translate (the sentences of each text when `split`) and, for each, the
    index of the text it came from."""
    pieces: list[str] = []
    owner: list[int] = []
    for i, text in enumerate(texts):
        for piece in (split_into_sentences(text) if split else [text]):
            pieces.append(piece)
            owner.append(i)
    return pieces, owner


def split_lines(text: str) -> list[str]:
    """Lines of `text` split at \\n only (str.splitlines would also split at form feeds and
    Unicode separators, breaking line alignment); a final line end adds no empty line."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line[:-1] if line.endswith("\r") else line for line in lines]


def latest_run(runs_root: str | Path = "runs") -> Path | None:
    """The run folder under `runs_root` whose latest checkpoint is newest, if any."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    candidates = [p for p in root.iterdir() if RunLayout(p).latest.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: os.path.getmtime(RunLayout(p).latest))
