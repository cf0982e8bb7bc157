"""Everything a training run is made of, built from its config in one place: the run folder,
the processes (`Dist`), the device, tokenizers, data, model, optimizer, learning-rate
schedule, precision, and, when resuming, the state of all of these (`build_training`).

The loop (`translator.train.loop`) gets a `TrainingSetup` and only trains with it.
"""

from __future__ import annotations

import json
import logging
import math
import random
from contextlib import nullcontext
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch

from translator.checkpoint import load_checkpoint
from translator.config import Config, save_run_config
from translator.data.corpus import iter_texts, load_corpus, to_pairs, tokenizer_sample
from translator.data.dataset import BilingualDataset, BucketBatchSampler
from translator.data.sources import check_data_files
from translator.data.split_record import check_split_record
from translator.data.tokenizer import TextTokenizer, build_tokenizers
from translator.device import cpu_bf16_is_native, resolve_device
from translator.errors import TranslatorError
from translator.files import atomic_write
from translator.model.transformer import Transformer
from translator.modeling import build_model
from translator.run import RunLayout, init_source, prepare_run_dir
from translator.train.book import Checkpointer, TrainState
from translator.train.distributed import Dist, init_distributed
from translator.train.step import Precision

log = logging.getLogger("translator")


# -- the pieces -----------------------------------------------------------------------------


def lr_factor(step: int, warmup: int, schedule: str, total: int = 0) -> float:
    """Multiplier of the peak lr at optimizer step `step` (1-based): linear warmup to 1, then
    `inverse_sqrt`: sqrt(warmup / step), the paper's (Noam) schedule normalised to peak 1;
    `cosine`: half a cosine from 1 to 0 over the remaining `total - warmup` steps;
    `constant`: 1."""
    step = max(step, 1)
    if warmup and step < warmup:
        return step / warmup
    if schedule == "inverse_sqrt" and warmup:
        return math.sqrt(warmup / step)
    if schedule == "cosine" and total > warmup:
        progress = min(1.0, (step - warmup) / (total - warmup))
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


def load_tokenizers(cfg: Config, layout: RunLayout, train: Any, reuse: bool,
                    base: RunLayout | None = None) -> tuple[TextTokenizer, TextTokenizer]:
    """The run's tokenizers: reloaded when resuming, copied from `base` when fine-tuning (its
    vocabulary is what the weights know), else trained on the train split (an Arrow dataset,
    streamed in batches) and saved; a shared one is saved under both names."""
    src_path = layout.tokenizer(cfg.data.src_lang)
    tgt_path = layout.tokenizer(cfg.data.tgt_lang)
    if reuse and src_path.is_file() and tgt_path.is_file():
        return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)
    if base is not None:
        for lang, path in ((cfg.data.src_lang, src_path), (cfg.data.tgt_lang, tgt_path)):
            # Through load and save, so that a sentencepiece model travels with its JSON.
            TextTokenizer.load(base.tokenizer(lang)).save(path)
        return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)
    train = tokenizer_sample(train, cfg.tokenizer.train_sample, cfg.data.split_seed)
    src_tok, tgt_tok = build_tokenizers(iter_texts(train, "src"), iter_texts(train, "tgt"),
                                        cfg.tokenizer)
    src_tok.save(src_path)
    tgt_tok.save(tgt_path)
    # Use what was saved: a JSON round trip may move Unigram scores by a float ulp, and
    # translate, evaluate and --resume all load these files.
    return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)


def _warn_if_emulated(precision: str, device_type: str) -> None:
    """bf16 on a CPU that only emulates it trains many times slower than fp32: say so."""
    if precision == "bf16" and device_type == "cpu" and cpu_bf16_is_native() is False:
        log.warning("training.precision=bf16 on a CPU without AMX or AVX512-BF16: torch "
                    "emulates bf16 here, so training runs many times slower than in fp32; "
                    "use --set training.precision=fp32")


def make_precision(requested: str, device: torch.device) -> Precision:
    """Autocast dtype and gradient scaler from `training.precision` and the device."""
    p, dev = requested, device.type
    if dev == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 on Ampere and newer
        torch.backends.cudnn.allow_tf32 = True
    if p == "auto":
        p = "bf16" if dev == "cuda" and torch.cuda.is_bf16_supported() else (
            "fp16" if dev == "cuda" else "fp32")
    if p == "fp16" and dev != "cuda":
        raise TranslatorError("training.precision: fp16 needs a CUDA device; use bf16 or "
                              "fp32 here")
    if p == "bf16" and dev == "mps":
        raise TranslatorError("training.precision: bf16 autocast is not supported on MPS")
    _warn_if_emulated(p, dev)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p)
    autocast = (lambda: torch.autocast(dev, dtype=dtype)) if dtype else nullcontext
    return Precision(p, autocast, torch.amp.GradScaler("cuda", enabled=p == "fp16"))


def init_weights(model: Transformer, path: Path, base: RunLayout, layout: RunLayout,
                 main: bool, device: torch.device) -> None:
    """Start from the weights in `path` (optimizer, schedule and step stay fresh) and record
    where they came from in the run's init.json."""
    ckpt = load_checkpoint(path, map_location=device)
    try:
        model.load_state_dict(ckpt["model"])
    except RuntimeError as exc:  # a foreign checkpoint: its shapes are not this config's
        first = str(exc).strip().splitlines()
        raise TranslatorError(f"--init-from: {path} does not fit this model: "
                              f"{first[1].strip() if len(first) > 1 else first[0]}") from None
    record = {"run": str(base.root.resolve()), "checkpoint": str(path.resolve()),
              "step": ckpt.get("step"), "epoch": ckpt.get("epoch")}
    if main:
        atomic_write(layout.init, json.dumps(record, indent=2) + "\n")
    log.info("initialised from %s (step %s of run %s); fresh optimizer and schedule",
             path, ckpt.get("step"), base.root)


@dataclass
class TrainingData:
    """Tokenizers and the data they made: the training set and its batch sampler, the
    validation pairs and their tokenized form (None without validation data)."""

    src_tok: TextTokenizer
    tgt_tok: TextTokenizer
    train: BilingualDataset
    sampler: BucketBatchSampler
    valid_pairs: list[tuple[str, str]]
    valid: BilingualDataset | None
    cleaning: str
    """What the cleaning filters dropped, in words (the start-up line)."""


@dataclass
class TrainingSetup:
    """The pieces of one training run, as `build_training` made them."""

    cfg: Config
    dist: Dist
    device: torch.device
    quiet: bool
    layout: RunLayout
    data: TrainingData
    model: Transformer
    train_model: torch.nn.Module
    """What runs the training forward pass: the model, wrapped in DDP and/or torch.compile;
    validation and checkpoints use `model`."""
    precision: Precision
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    total_steps: int
    """Steps the learning-rate schedule spans (max_steps, else epochs)."""
    planned_steps: int
    """Where training is expected to end, for the progress ETA: epochs or max_steps,
    whichever comes first."""
    state: TrainState = field(default_factory=TrainState)

    @cached_property
    def checkpointer(self) -> Checkpointer:
        """Writes and restores this run's checkpoints."""
        return Checkpointer(self.layout, self.dist, self.cfg.training, self.checkpoint_parts)

    def checkpoint_parts(self) -> dict[str, Any]:
        """What `Checkpointer` saves: the stateful objects, the portable config (without the
        run folder's own path, which the folder gives wherever it is) and the vocab sizes."""
        config = self.cfg.to_dict()
        config["output"]["dir"] = None
        return {"model": self.model, "optimizer": self.optimizer,
                "scheduler": self.scheduler, "scaler": self.precision.scaler,
                "config": config, "vocab": {"src": self.data.src_tok.vocab_size,
                                            "tgt": self.data.tgt_tok.vocab_size}}


def _start(cfg: Config, resume: bool, overwrite: bool,
           device: str | None) -> tuple[Dist, torch.device, RunLayout, list[str]]:
    """Processes, device, run folder and seeds."""
    tc = cfg.training
    if tc.threads:
        torch.set_num_threads(tc.threads)
    dist_info = init_distributed(tc.dist_timeout)
    dev = resolve_device(device or tc.device)
    if dist_info.enabled and dev.type == "cuda":
        dev = torch.device("cuda", dist_info.local_rank)
    check_data_files(cfg.data)  # before the run folder exists: a typo leaves nothing
    layout, moved = (prepare_run_dir(cfg, resume, overwrite) if dist_info.main
                     else (RunLayout(cfg.run_dir), []))
    dist_info.barrier()
    random.seed(tc.seed)
    torch.manual_seed(tc.seed)
    return dist_info, dev, layout, moved


def _valid_pairs(cfg: Config, valid: Any) -> list[tuple[str, str]]:
    """The validation pairs: all, or `valid_max_sentences` of them drawn at random."""
    n = cfg.training.valid_max_sentences
    if 0 < n < len(valid):
        # A seeded sample, kept in corpus order; the first N of a corpus sorted by length
        # (phrasebooks, Anki exports) would be only its shortest sentences.
        rng = random.Random(f"valid:{cfg.data.split_seed}")
        valid = valid.select(sorted(rng.sample(range(len(valid)), n)))
    return to_pairs(valid)


def _data(cfg: Config, dist_info: Dist, layout: RunLayout, resume: bool,
          base: RunLayout | None, moved: list[str]) -> TrainingData:
    """Corpus, tokenizers (made on the main process, read by the others) and datasets. A
    resumed run's corpus is checked against its split record before anything is tokenized;
    the record is written once, when the token-level filters have counted."""
    corpus = load_corpus(cfg.data)
    if dist_info.main:
        check_split_record(layout.splits, corpus, resume, moved=bool(moved), write=False)
        if moved:
            save_run_config(cfg, layout.config)
            log.info("the corpus moved (%s): same split record, so the run now reads it "
                     "from there", ", ".join(moved))
        src_tok, tgt_tok = load_tokenizers(cfg, layout, corpus["train"], resume, base)
    dist_info.barrier()
    if not dist_info.main:
        src_tok, tgt_tok = load_tokenizers(cfg, layout, corpus["train"], True)
    train = BilingualDataset.from_dataset(corpus["train"], src_tok, tgt_tok, cfg.data.max_len,
                                          "train", cfg.data.max_ratio, cfg.data.num_proc,
                                          mix=corpus.mix)
    if train.mix is not None:
        log.info("corpora, per epoch: %s", train.mix.summary())
    corpus.filtered.update(ratio=train.dropped_ratio, too_long=train.dropped)
    if dist_info.main:  # the record, once: now with the token-level counts and shares
        check_split_record(layout.splits, corpus, resume, moved=bool(moved), mix=train.mix)
    if len(train) == 0:
        raise TranslatorError("no training pair fits data.max_len and data.max_ratio")
    pairs = _valid_pairs(cfg, corpus["valid"])
    valid = BilingualDataset.from_pairs(pairs, src_tok, tgt_tok, cfg.data.max_len,
                                        "valid") if pairs else None
    tc = cfg.training
    sampler = BucketBatchSampler(train, tc.max_tokens, tc.batch_size, shuffle=True,
                                 seed=tc.seed)
    return TrainingData(src_tok, tgt_tok, train, sampler, pairs, valid,
                        corpus.cleaning_summary())


def _wrap(model: Transformer, cfg: Config, dist_info: Dist,
          device: torch.device) -> torch.nn.Module:
    """DDP keeps gradients in sync across ranks, torch.compile fuses the elementwise work."""
    train_model: torch.nn.Module = model
    if dist_info.enabled:
        from torch.nn.parallel import DistributedDataParallel

        # broadcast_buffers=False: the only buffers are the positional tables, a pure
        # function of their length, grown on demand; rank 0's validation can grow its own
        # past the other ranks', and broadcasting buffers of different sizes breaks the
        # collective (seen as a gloo size mismatch once validation saw longer sentences).
        train_model = DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            broadcast_buffers=False)
    if cfg.training.compile:
        train_model = torch.compile(train_model, dynamic=True)
    return train_model


def _setup(cfg: Config, dist_info: Dist, device: torch.device, quiet: bool,
           layout: RunLayout, data: TrainingData) -> TrainingSetup:
    """Model, precision, optimizer and learning-rate schedule around `data`."""
    tc = cfg.training
    model = build_model(cfg, data.src_tok.vocab_size, data.tgt_tok.vocab_size).to(device)
    precision = make_precision(tc.precision, device)
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2), eps=1e-9,
        weight_decay=tc.weight_decay, fused=device.type == "cuda" or None)
    steps_per_epoch = math.ceil(len(data.sampler.batches()) // dist_info.world / tc.accum_steps)
    total = tc.max_steps or tc.epochs * steps_per_epoch
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_factor(step + 1, tc.warmup_steps, tc.schedule, total))
    # quiet: no progress output (bar or progress lines); validation results and the
    # start-up summary still print, on the main process only.
    return TrainingSetup(cfg, dist_info, device, quiet or not dist_info.main, layout, data,
                         model, model, precision, optimizer, scheduler, total,
                         min(total, tc.epochs * steps_per_epoch))


def build_training(cfg: Config, resume: bool = False, overwrite: bool = False,
                   device: str | None = None, quiet: bool = False,
                   init_from: Path | None = None) -> TrainingSetup:
    """Every piece of a training run from its config; with `resume`, restored from the run's
    latest checkpoint (exactly: RNG states too); with `init_from`, starting from another
    run's weights with a fresh optimizer and schedule."""
    if init_from is not None and resume:
        raise TranslatorError("--init-from starts a new run from another run's weights; "
                              "--resume continues a run from its own: give one of them")
    # Checked before the run folder exists, as the data files are: a typo leaves nothing.
    init = init_source(init_from, cfg) if init_from is not None else None
    dist_info, dev, layout, moved = _start(cfg, resume, overwrite, device)
    data = _data(cfg, dist_info, layout, resume, init[1] if init else None, moved)
    s = _setup(cfg, dist_info, dev, quiet, layout, data)
    if resume:
        s.state = s.checkpointer.restore(layout.latest, dev)
    elif dist_info.main:
        layout.init.unlink(missing_ok=True)  # an --overwrite'n run's record is stale
    if init is not None:
        init_weights(s.model, *init, layout, dist_info.main, dev)
    s.train_model = _wrap(s.model, cfg, dist_info, dev)
    return s
