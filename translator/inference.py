"""Using a trained run: pick the device, rebuild the model, translate text in batches."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

import torch

from translator.checkpoint import CheckpointError, RunLayout, load_checkpoint
from translator.config import Config, ConfigError, config_from_dict, load_config
from translator.decoding import greedy_decode
from translator.errors import TranslatorError
from translator.model import Transformer, build_transformer
from translator.tokenizer import EOS_ID, PAD_ID, SOS_ID, TextTokenizer

log = logging.getLogger("translator")


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


def build_model(cfg: Config, src_vocab: int, tgt_vocab: int) -> Transformer:
    """The Transformer a config describes."""
    m = cfg.model
    return build_transformer(
        src_vocab, tgt_vocab, cfg.data.max_len, cfg.data.max_len,
        d_model=m.d_model, N=m.layers, h=m.heads, dropout=m.dropout, d_ff=m.d_ff,
        decoder_layers=m.decoder_layers or None, norm=m.norm, tie_embeddings=m.tie_embeddings,
    )


def translate_ids(model: Transformer, src_ids: Sequence[Sequence[int]], device: torch.device,
                  batch_size: int = 64, max_len_a: float = 1.5,
                  max_len_b: int = 10) -> list[list[int]]:
    """Greedy-decode id sequences (no specials) in length-sorted batches; input order kept."""
    order = sorted(range(len(src_ids)), key=lambda i: len(src_ids[i]))
    results: list[list[int]] = [[] for _ in src_ids]
    for start in range(0, len(order), batch_size):
        rows = order[start:start + batch_size]
        width = max(len(src_ids[i]) for i in rows) + 2
        src = torch.full((len(rows), width), PAD_ID, dtype=torch.long)
        for r, i in enumerate(rows):
            ids = src_ids[i]
            src[r, 0] = SOS_ID
            src[r, 1:len(ids) + 1] = torch.tensor(ids, dtype=torch.long)
            src[r, len(ids) + 1] = EOS_ID
        outs = greedy_decode(model, src.to(device), max_len_a=max_len_a, max_len_b=max_len_b)
        for i, out in zip(rows, outs, strict=True):
            results[i] = out
    return results


class Translator:
    """A trained run loaded for translation: config, tokenizers and model on a device."""

    def __init__(self, cfg: Config, src_tok: TextTokenizer, tgt_tok: TextTokenizer,
                 model: Transformer, device: torch.device, checkpoint: Path | None = None) -> None:
        self.cfg, self.src_tok, self.tgt_tok = cfg, src_tok, tgt_tok
        self.model, self.device, self.checkpoint = model.to(device).eval(), device, checkpoint

    @classmethod
    def from_run(cls, run_dir: str | Path, checkpoint: str | Path | None = None,
                 device: str = "auto") -> Translator:
        """Load a run folder's config, tokenizers and checkpoint (best.pt, else latest.pt)."""
        layout = RunLayout(Path(run_dir))
        if not layout.root.is_dir():
            raise TranslatorError(f"run folder not found: {layout.root}")
        if not layout.config.is_file():
            raise TranslatorError(f"{layout.root} is not a run folder (no config.yaml)")
        cfg = load_config(layout.config)
        cfg.output.dir = str(layout.root)
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
                cfg = config_from_dict(ckpt["config"], name=cfg.name)
            except ConfigError:
                pass  # the run's config.yaml is the reference; keep it
            cfg.output.dir = str(layout.root)
        vocab = ckpt.get("vocab", {})
        if vocab and (vocab.get("src") != src_tok.vocab_size
                      or vocab.get("tgt") != tgt_tok.vocab_size):
            raise CheckpointError(
                f"{path} was trained with vocabularies of {vocab.get('src')}/{vocab.get('tgt')} "
                f"tokens but the run's tokenizers have {src_tok.vocab_size}/{tgt_tok.vocab_size}")
        model = build_model(cfg, src_tok.vocab_size, tgt_tok.vocab_size)
        try:
            model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(f"{path} does not fit this run's model: {first}") from None
        return cls(cfg, src_tok, tgt_tok, model, dev, path)

    def translate(self, sentences: Sequence[str], batch_size: int = 64) -> list[str]:
        """Translate sentences (greedy). Empty or whitespace-only ones give ""."""
        max_src = self.cfg.data.max_len - 2
        ids = []
        for n, ids_n in enumerate(self.src_tok.encode_batch(list(sentences))):
            if len(ids_n) > max_src:
                log.warning("sentence %d has %d tokens; translating its first %d "
                            "(data.max_len)", n + 1, len(ids_n), max_src)
                ids_n = ids_n[:max_src]
            ids.append(ids_n)
        keep = [i for i, x in enumerate(ids) if x]
        outs = translate_ids(self.model, [ids[i] for i in keep], self.device, batch_size)
        texts = [""] * len(sentences)
        for i, out in zip(keep, outs, strict=True):
            texts[i] = self.tgt_tok.decode(out)
        return texts


def latest_run(runs_root: str | Path = "runs") -> Path | None:
    """The run folder under `runs_root` whose latest checkpoint is newest, if any."""
    root = Path(runs_root)
    if not root.is_dir():
        return None
    candidates = [p for p in root.iterdir() if RunLayout(p).latest.is_file()]
    if not candidates:
        return None
    return max(candidates, key=lambda p: os.path.getmtime(RunLayout(p).latest))
