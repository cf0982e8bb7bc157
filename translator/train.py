"""The training loop: data -> tokenizers -> batches -> model -> loss -> optimizer, with
validation (loss, greedy BLEU/chrF), TensorBoard logging, atomic checkpoints and exact resume.

Resume is exact because an epoch's batches are a pure function of (seed, epoch): a checkpoint
records the epoch and how many of its batches were done, plus every RNG state, and resuming
replays the same batch list from that position.
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import shlex
import signal
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor
from tqdm import tqdm

from translator.checkpoint import (
    FORMAT_VERSION,
    RunLayout,
    atomic_link,
    atomic_save,
    load_checkpoint,
    prune_checkpoints,
)
from translator.config import (
    Config,
    config_diff,
    init_changes,
    load_config,
    parse_override,
    save_run_config,
    unsafe_resume_changes,
)
from translator.corpus import (
    check_data_files,
    check_split_record,
    iter_texts,
    load_corpus,
    to_pairs,
    tokenizer_sample,
)
from translator.dataset import BilingualDataset, BucketBatchSampler, collate, padding_fraction
from translator.errors import TranslatorError
from translator.evaluate import score
from translator.inference import build_model, resolve_device, translate_ids
from translator.model import count_parameters
from translator.tokenizer import PAD_ID, TextTokenizer, build_tokenizers

log = logging.getLogger("translator")


class TrainingInterrupted(TranslatorError):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was written."""

    exit_code = 130
    calm = True  # the user asked for this stop: the CLI prints it without "error:"


def _say(text: str) -> None:
    """A line for the user on stderr, printed above a progress bar if one is drawn (the bar
    stays whole); stdout stays free for results."""
    tqdm.write(text, file=sys.stderr)


def _stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: only there does a redrawn tqdm bar read well; a file or
    pipe gets plain log lines instead (a bar there is a stream of carriage returns)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def _clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    return str(timedelta(seconds=max(0, round(seconds))))


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_score: float | None = None
    """Best validation value of `training.best_metric` so far."""
    bad_validations: int = 0
    """Validations in a row without improvement (early stopping counts these)."""
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What `train` returns: the run folder, the final state and the last validation."""

    run_dir: Path
    state: TrainState
    last_valid: dict[str, Any]
    seconds: float
    parameters: int
    tokens: int = 0
    """Non-pad source + target tokens trained on in this call (all processes)."""

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


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


@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 when not distributed)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = "gloo"

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def collective_device(self) -> torch.device:
        """Where a tensor handed to a collective must live: nccl takes only this rank's GPU,
        gloo only the CPU. Every collective goes through `tensor`, so none gets it wrong."""
        return torch.device("cuda", self.local_rank) if self.backend == "nccl" else \
            torch.device("cpu")

    def tensor(self, values: list[float]) -> Tensor:
        """A float tensor on `collective_device`, ready for a collective."""
        return torch.tensor(values, dtype=torch.float32, device=self.collective_device)

    @property
    def main(self) -> bool:
        """Only the main process logs, validates and writes files."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool) -> bool:
        """True on every rank if `flag` is true on any rank (stops are taken together)."""
        if not self.enabled:
            return flag
        t = self.tensor([1.0 if flag else 0.0])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return bool(t.item())


def init_distributed(timeout_s: float) -> Dist:
    """Join the process group torchrun describes in the environment (RANK, WORLD_SIZE,
    LOCAL_RANK, MASTER_ADDR/PORT): nccl on GPUs, gloo on CPU, with a setup timeout."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local)
        try:
            dist.init_process_group(backend, rank=rank, world_size=world,
                                    timeout=timedelta(seconds=timeout_s))
        except Exception as exc:  # a timeout or refused rendezvous: say so in one line
            raise TranslatorError(f"distributed setup failed on rank {rank}: {exc}") from None
    return Dist(rank, world, local, dist.get_backend())


def _rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"python": list(_tuple_to_list(random.getstate())),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _tuple_to_list(x: Any) -> Any:
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x: Any) -> Any:
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, list) else x


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(_list_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


@contextmanager
def _stop_signals() -> Iterator[dict[str, Any]]:
    """Turn Ctrl-C / SIGTERM into a flag the loop checks after each step, so the step finishes
    and a checkpoint is written before exiting. A second Ctrl-C aborts at once."""
    flag: dict[str, Any] = {"stop": False, "signal": None}
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"], flag["signal"] = True, signum
        # On a terminal the shell has just echoed ^C: start on a fresh line.
        fresh_line = "\n" if _stderr_is_terminal() else ""
        _say(f"{fresh_line}{signal.Signals(signum).name} received: finishing this step, then "
             "saving a checkpoint (press Ctrl-C again to abort without saving)")

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not the main thread: leave signals alone
            pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)


def training_config(config: Path | None, run: Path | None, overrides: list[str],
                    resume: bool) -> Config:
    """The config `translator train` trains with: `--config FILE` (a run folder's own
    config.yaml always means that folder, wherever it now is) or `--run DIR --resume` (the
    folder's saved config; `overrides` may change only `RESUME_SAFE_KEYS` and decoding)."""
    if (config is None) == (run is None):
        raise TranslatorError("give --config FILE to train a run, or --run DIR --resume to "
                              "continue one" if config is None else
                              "give either --config or --run, not both")
    if run is not None:
        if not resume:
            raise TranslatorError(f"--run continues a run: add --resume (to start a new run "
                                  f"in {run}, use --config with --overwrite)")
        if any(parse_override(o)[0] == "output" for o in overrides):
            raise TranslatorError(f"--set output.*: the run folder is {run} itself")
        layout = RunLayout(run)
        saved, cfg = layout.load_config(), layout.load_config(overrides)
        unsafe = unsafe_resume_changes(saved, cfg)
        if unsafe:
            raise TranslatorError(
                f"--resume: cannot change {', '.join(unsafe)} of a run (it changes what a "
                "step computes); safe to change: training.epochs, max_steps, max_minutes, "
                "patience, valid_every, save_every, keep_last, log_every and decoding.*")
        return cfg
    cfg = load_config(config, overrides)
    owner = RunLayout.of_file(config) if config.name == "config.yaml" else None
    if owner is not None:
        cfg.output.dir, cfg.name = str(owner.root), owner.root.name
    return cfg


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool) -> RunLayout:
    """Create the run folder, refusing to mix two different runs in one folder."""
    layout = RunLayout(cfg.run_dir)
    has_run = layout.latest.is_file() or layout.config.is_file()
    if resume:
        if not layout.latest.is_file():
            raise TranslatorError(f"--resume: no checkpoint to resume in {layout.checkpoints}")
    elif has_run and not overwrite:
        raise TranslatorError(f"{layout.root} already holds a run; use --resume to continue it "
                              "or --overwrite to start again")
    elif has_run and overwrite:
        import shutil

        for sub in (layout.checkpoints, layout.tensorboard, layout.eval):
            shutil.rmtree(sub, ignore_errors=True)
    layout.root.mkdir(parents=True, exist_ok=True)
    if resume:
        saved = load_config(layout.config)
        differ = [k for k in config_diff(saved, cfg)
                  if k.split(".")[0] in ("data", "tokenizer", "model")]
        if differ:
            raise TranslatorError(f"--resume: the config differs from the run's saved "
                                  f"{layout.config} in {', '.join(differ)}")
    save_run_config(cfg, layout.config)
    return layout


def init_source(path: Path, cfg: Config) -> tuple[Path, RunLayout]:
    """The checkpoint and base run that `train --init-from PATH` starts from: PATH a run
    folder (its best.pt, else latest.pt) or a checkpoint file inside one (the run's
    tokenizers are needed too). Refuses a config whose tokenizer or model section or language
    pair differs from the base run's, and a new run folder that is the base's own."""
    path = Path(path)
    if path.is_dir():
        base = RunLayout(path)
        if not base.config.is_file():
            raise TranslatorError(f"--init-from: {path} is not a run folder (no config.yaml)")
        checkpoint = base.default_checkpoint()
        if not checkpoint.is_file():
            raise TranslatorError(f"--init-from: no best.pt or latest.pt in {base.checkpoints}")
    elif path.is_file():
        owner = RunLayout.of_file(path)
        if owner is None:
            raise TranslatorError(f"--init-from: {path} is not inside a run folder (its "
                                  "tokenizers are needed): give the run folder")
        base, checkpoint = owner, path
    else:
        raise TranslatorError(f"--init-from: no run folder or checkpoint file at {path}")
    if base.root.resolve() == cfg.run_dir.resolve():
        raise TranslatorError(f"--init-from: {base.root} is this run's own folder; give the "
                              "new run another output.dir (or config name)")
    differ = init_changes(base.load_config(), cfg)
    if differ:
        raise TranslatorError(f"--init-from: the config differs from the base run's "
                              f"{base.config} in {', '.join(differ)} (fine-tuning keeps its "
                              "vocabulary and model shape)")
    for lang in (cfg.data.src_lang, cfg.data.tgt_lang):
        if not base.tokenizer(lang).is_file():
            raise TranslatorError(f"--init-from: {base.tokenizer(lang)} not found")
    return checkpoint, base


def _tokenizers(cfg: Config, layout: RunLayout, train: Any, reuse: bool,
                base: RunLayout | None = None) -> tuple[TextTokenizer, TextTokenizer]:
    """The run's tokenizers: reloaded when resuming, copied from `base` when fine-tuning (its
    vocabulary is what the weights know), else trained on the train split (an Arrow dataset,
    streamed in batches) and saved; a shared one is saved under both names."""
    src_path = layout.tokenizer(cfg.data.src_lang)
    tgt_path = layout.tokenizer(cfg.data.tgt_lang)
    if reuse and src_path.is_file() and tgt_path.is_file():
        return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)
    if base is not None:
        import shutil

        for lang, path in ((cfg.data.src_lang, src_path), (cfg.data.tgt_lang, tgt_path)):
            shutil.copyfile(base.tokenizer(lang), path)
        return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)
    train = tokenizer_sample(train, cfg.tokenizer.train_sample, cfg.data.split_seed)
    src_tok, tgt_tok = build_tokenizers(iter_texts(train, "src"), iter_texts(train, "tgt"),
                                        cfg.tokenizer)
    src_tok.save(src_path)
    tgt_tok.save(tgt_path)
    # Use what was saved: a JSON round trip may move Unigram scores by a float ulp, and
    # translate, evaluate and --resume all load these files.
    return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)


class Trainer:
    """Holds everything of one training run. `train(cfg)` is the usual entry point."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False,
                 device: str | None = None, quiet: bool = False,
                 init_from: Path | None = None) -> None:
        self.cfg = cfg
        tc = cfg.training
        if init_from is not None and resume:
            raise TranslatorError("--init-from starts a new run from another run's weights; "
                                  "--resume continues a run from its own: give one of them")
        # Checked before the run folder exists, as the data files below: a typo leaves nothing.
        init = init_source(init_from, cfg) if init_from is not None else None
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.dist = init_distributed(tc.dist_timeout)
        # quiet: no progress output (bar or progress lines); validation results and the
        # start-up summary still print, on the main process only.
        self.quiet = quiet or not self.dist.main
        self.device = resolve_device(device or tc.device)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
        check_data_files(cfg.data)  # before the run folder exists: a typo leaves nothing
        if self.dist.main:
            self.layout = prepare_run_dir(cfg, resume, overwrite)
        else:
            self.layout = RunLayout(cfg.run_dir)
        self.dist.barrier()
        random.seed(tc.seed)
        torch.manual_seed(tc.seed)

        corpus = load_corpus(cfg.data)
        if self.dist.main:
            check_split_record(self.layout.splits, corpus, resume)
            self.src_tok, self.tgt_tok = _tokenizers(cfg, self.layout, corpus["train"],
                                                     reuse=resume, base=init[1] if init else None)
        self.dist.barrier()
        if not self.dist.main:
            self.src_tok, self.tgt_tok = _tokenizers(cfg, self.layout, corpus["train"], True)
        self.train_data = BilingualDataset.from_dataset(
            corpus["train"], self.src_tok, self.tgt_tok, cfg.data.max_len, "train",
            cfg.data.max_ratio, cfg.data.num_proc)
        self.train_data.mix = corpus.mix(self.train_data)  # several corpora: each epoch's draw
        corpus.filtered.update(ratio=self.train_data.dropped_ratio,
                               too_long=self.train_data.dropped)
        self.cleaning = corpus.cleaning_summary()
        if self.dist.main:  # again, now with the token-level counts
            check_split_record(self.layout.splits, corpus, resume)
        if len(self.train_data) == 0:
            raise TranslatorError("no training pair fits data.max_len and data.max_ratio")
        valid = corpus["valid"]
        if 0 < tc.valid_max_sentences < len(valid):
            # A seeded sample, kept in corpus order; the first N of a corpus sorted by length
            # (phrasebooks, Anki exports) would be only its shortest sentences.
            rng = random.Random(f"valid:{cfg.data.split_seed}")
            valid = valid.select(sorted(rng.sample(range(len(valid)), tc.valid_max_sentences)))
        valid = to_pairs(valid)
        self.valid_pairs = valid
        self.valid_data = BilingualDataset.from_pairs(
            valid, self.src_tok, self.tgt_tok, cfg.data.max_len, "valid") if valid else None
        self.sampler = BucketBatchSampler(self.train_data, tc.max_tokens, tc.batch_size,
                                          shuffle=True, seed=tc.seed)

        self.model = build_model(cfg, self.src_tok.vocab_size, self.tgt_tok.vocab_size)
        self.model.to(self.device)
        self._setup_precision()
        cuda = self.device.type == "cuda"
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
            eps=1e-9, weight_decay=tc.weight_decay, fused=cuda or None)
        steps_per_epoch = math.ceil(
            len(self.sampler.batches()) // self.dist.world / tc.accum_steps)
        self.total_steps = tc.max_steps or tc.epochs * steps_per_epoch
        # Where training is expected to end, for the progress ETA: epochs or max_steps,
        # whichever comes first.
        self.planned_steps = min(self.total_steps, tc.epochs * steps_per_epoch)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer,
            lambda s: lr_factor(s + 1, tc.warmup_steps, tc.schedule, self.total_steps))
        self.state = TrainState()
        if resume:
            self._load(self.layout.latest)
        elif self.dist.main:
            self.layout.init.unlink(missing_ok=True)  # an --overwrite'n run's record is stale
        if init is not None:
            self._init_weights(*init)
        # What runs the training forward pass: DDP keeps gradients in sync across ranks,
        # torch.compile fuses the elementwise work; validation and checkpoints use self.model.
        self.train_model: torch.nn.Module = self.model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            # broadcast_buffers=False: the only buffers are the positional tables, a pure
            # function of their length, grown on demand; rank 0's validation can grow its own
            # past the other ranks', and broadcasting buffers of different sizes breaks the
            # collective (seen as a gloo size mismatch once validation saw longer sentences).
            self.train_model = DistributedDataParallel(
                self.model, device_ids=[self.device.index] if cuda else None,
                broadcast_buffers=False)
        if tc.compile:
            self.train_model = torch.compile(self.train_model, dynamic=True)
        self.writer: Any = None
        if self.dist.main:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only when training

            self.writer = SummaryWriter(str(self.layout.tensorboard))
        self.last_valid: dict[str, Any] = {}

    def _setup_precision(self) -> None:
        """Autocast dtype and gradient scaler from `training.precision` and the device."""
        p, dev = self.cfg.training.precision, self.device.type
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
        self.precision = p
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(p)
        self.autocast = (lambda: torch.autocast(dev, dtype=dtype)) if dtype else nullcontext
        self.scaler = torch.amp.GradScaler("cuda", enabled=p == "fp16")

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "step": s.step, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch,
            "best_score": s.best_score, "best_metric": self.cfg.training.best_metric,
            "bad_validations": s.bad_validations, "history": s.history,
            "config": self._portable_config(),
            "vocab": {"src": self.src_tok.vocab_size, "tgt": self.tgt_tok.vocab_size},
            "rng": _rng_state(),
        }

    def _portable_config(self) -> dict[str, Any]:
        """The config as saved in checkpoints: without the run folder's own path, which the
        folder gives wherever it is."""
        d = self.cfg.to_dict()
        d["output"]["dir"] = None
        return d

    def save(self, is_best: bool = False) -> Path | None:
        """Write a numbered checkpoint atomically and point latest.pt (and best.pt) at it.
        Only the main process writes; a failed write leaves the previous checkpoints intact
        and stops training with a clear message."""
        if not self.dist.main:
            return None
        path = self.layout.numbered(self.state.epoch, self.state.step)
        try:
            atomic_save(self._checkpoint(), path)
            atomic_link(path, self.layout.latest)
            if is_best:
                atomic_link(path, self.layout.best)
        except OSError as exc:
            raise TranslatorError(f"could not write checkpoint {path} ({exc}); the previous "
                                  f"checkpoints in {self.layout.checkpoints} are intact") from None
        prune_checkpoints(self.layout, self.cfg.training.keep_last)
        return path

    def _init_weights(self, path: Path, base: RunLayout) -> None:
        """Start from the weights in `path` (optimizer, schedule and step stay fresh) and
        record where they came from in the run's init.json."""
        ckpt = load_checkpoint(path, map_location=self.device)
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:  # a foreign checkpoint: its shapes are not this config's
            first = str(exc).strip().splitlines()
            raise TranslatorError(f"--init-from: {path} does not fit this model: "
                                  f"{first[1].strip() if len(first) > 1 else first[0]}") from None
        record = {"run": str(base.root.resolve()), "checkpoint": str(path.resolve()),
                  "step": ckpt.get("step"), "epoch": ckpt.get("epoch")}
        if self.dist.main:
            self.layout.init.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
        log.info("initialised from %s (step %s of run %s); fresh optimizer and schedule",
                 path, ckpt.get("step"), base.root)

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        if ckpt.get("scaler"):
            self.scaler.load_state_dict(ckpt["scaler"])
        self.state = TrainState(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"],
                                ckpt.get("best_score"), ckpt.get("bad_validations", 0),
                                list(ckpt.get("history", [])))
        _set_rng_state(ckpt["rng"])
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, self.state.step,
                 self.state.epoch + 1, self.state.batch_in_epoch)

    # -- validation --------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, Any]:
        """Validation loss (no label smoothing) and greedy-decoding BLEU/chrF on the validation
        split; logs to TensorBoard and prints a few examples."""
        if self.valid_data is None or len(self.valid_data) == 0:
            return {}
        tc = self.cfg.training
        self.model.eval()
        loss = validation_loss(self.model, self.valid_data, self.device, tc.max_tokens,
                               tc.batch_size)
        src_ids = [self.valid_data[i][0].tolist() for i in range(len(self.valid_data))]
        outs = translate_ids(self.model, src_ids, self.device, tc.decode_batch_size)
        hyps = [self.tgt_tok.decode(o) for o in outs]
        refs = [self.valid_pairs[i][1] for i in self.valid_data.kept_index]
        result = score(hyps, refs)
        result["loss"] = loss
        step = self.state.step
        self.writer.add_scalar("valid/loss", result["loss"], step)
        self.writer.add_scalar("valid/bleu", result["bleu"], step)
        self.writer.add_scalar("valid/chrf", result["chrf"], step)
        self.writer.add_scalar("valid/length_ratio", result["length_ratio"], step)
        examples = [f"| {self.valid_pairs[self.valid_data.kept_index[i]][0]} | {refs[i]} | "
                    f"{hyps[i]} |" for i in range(min(max(tc.examples, 3), len(hyps)))]
        self.writer.add_text("valid/examples", "| source | reference | prediction |\n"
                             "|---|---|---|\n" + "\n".join(examples), step)
        # The first validation sentence at every validation, so the images show how its
        # attention forms over training (one small figure, ~0.3 s).
        from translator.visualize import log_attention  # matplotlib: imported when needed

        log_attention(self.writer, self.model, src_ids[0], self.src_tok, self.tgt_tok, step,
                      self.device)
        lines = [f"validation at step {step}: loss {result['loss']:.3f}  "
                 f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  "
                 f"length ratio {result['length_ratio']:.2f}"]
        for i in range(min(tc.examples, len(hyps))):
            src = self.valid_pairs[self.valid_data.kept_index[i]][0]
            lines += [f"  SOURCE     {src}", f"  REFERENCE  {refs[i]}",
                      f"  PREDICTED  {hyps[i]}"]
        _say("\n".join(lines))
        self.model.train()
        return result

    def _validate_and_save(self) -> bool:
        """Validate and checkpoint (main process); True on every rank when early stopping
        says to stop."""
        stop = False
        if self.dist.main:
            tc, st = self.cfg.training, self.state
            result = self.validate()
            is_best = False
            if result:
                self.last_valid = result
                st.history.append({"step": st.step, "loss": result["loss"],
                                   "bleu": result["bleu"], "chrf": result["chrf"]})
                value = result[tc.best_metric]
                lower_is_better = tc.best_metric == "loss"
                if st.best_score is None or (value < st.best_score if lower_is_better
                                             else value > st.best_score):
                    st.best_score, st.bad_validations, is_best = value, 0, True
                else:
                    st.bad_validations += 1
                    stop = bool(tc.patience) and st.bad_validations >= tc.patience
                    if stop:
                        _say(f"early stopping: validation {tc.best_metric} has not improved "
                             f"for {st.bad_validations} validations (best {st.best_score:.2f})")
            else:
                is_best = True  # no validation data: the newest model is the one to use
            self.save(is_best=is_best)
            self.writer.flush()
        return self.dist.any(stop)

    def _epoch_batches(self) -> list[list[int]]:
        """This rank's batches of the current epoch: every world-th batch of the shuffled
        list, cut so that all ranks take the same number of steps."""
        batches = self.sampler.batches()
        world = self.dist.world
        return batches[self.dist.rank:len(batches) // world * world:world]

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until epochs, max_steps or max_minutes run out, early stopping, or a stop
        signal comes; validate and checkpoint on the way."""
        tc, st = self.cfg.training, self.state
        n_params = count_parameters(self.model)
        if self.dist.main:
            log.info("run folder %s | device %s | %s | %d parameters | vocab %d/%d | "
                     "%d train pairs (cleaning: %s)%s", self.layout.root, self.device,
                     self.precision, n_params, self.src_tok.vocab_size, self.tgt_tok.vocab_size,
                     len(self.train_data), self.cleaning,
                     f" | {self.dist.world} processes" if self.dist.enabled else "")
        start = time.perf_counter()
        self.model.train()
        self.bad_steps = 0
        tokens_seen = 0
        stop_reason = ""
        window_tokens, window_start = 0, time.perf_counter()
        # Loss means: over the epoch so far for the bar (moves every step), over the last
        # log_every steps for log lines and TensorBoard (one step's loss is noisy).
        window_loss, window_steps, logged_step = 0.0, 0, -1
        first_step, tps = st.step, 0.0
        # A redrawn bar on a terminal; plain progress lines in a file or pipe; neither quiet.
        bar_mode = not self.quiet and _stderr_is_terminal()
        lines_mode = not self.quiet and not bar_mode
        with _stop_signals() as signal_flag:
            while st.epoch < tc.epochs and not stop_reason:
                self.sampler.set_epoch(st.epoch)
                batches = self._epoch_batches()
                if st.batch_in_epoch == 0 and self.writer is not None:
                    self.writer.add_scalar("train/padding_fraction",
                                           padding_fraction(self.train_data, batches), st.step)
                groups = [batches[i:i + tc.accum_steps]
                          for i in range(0, len(batches), tc.accum_steps)]
                done = st.batch_in_epoch // tc.accum_steps
                bar = tqdm(total=len(groups), initial=done, disable=not bar_mode,
                           desc=f"epoch {st.epoch + 1}/{tc.epochs}", dynamic_ncols=True,
                           file=sys.stderr)
                epoch_loss, epoch_steps = 0.0, 0
                for group in groups[done:]:
                    loss, tokens, grad_norm = self._step(group)
                    st.batch_in_epoch += len(group)
                    window_tokens += tokens
                    tokens_seen += tokens * self.dist.world
                    lr = self.scheduler.get_last_lr()[0]
                    if math.isfinite(loss):  # a skipped step's NaN would poison the means
                        epoch_loss, epoch_steps = epoch_loss + loss, epoch_steps + 1
                        window_loss, window_steps = window_loss + loss, window_steps + 1
                    if bar_mode:
                        bar.set_postfix(loss=f"{epoch_loss / max(epoch_steps, 1):.3f}",
                                        lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}", refresh=False)
                    bar.update(1)
                    if (st.step % tc.log_every == 0 or st.step == 1) and st.step != logged_step:
                        logged_step = st.step
                        now = time.perf_counter()
                        tps = window_tokens * self.dist.world / max(now - window_start, 1e-9)
                        mean_loss = window_loss / window_steps if window_steps else loss
                        window_tokens, window_start = 0, now
                        window_loss, window_steps = 0.0, 0
                        if lines_mode:
                            elapsed = now - start
                            left = (self.planned_steps - st.step) * elapsed / max(
                                st.step - first_step, 1)
                            if tc.max_minutes:
                                left = min(left, 60 * tc.max_minutes - elapsed)
                            _say(f"step {st.step}/{self.planned_steps} | epoch {st.epoch + 1}/"
                                 f"{tc.epochs} | loss {mean_loss:.3f} | lr {lr:.2e} | "
                                 f"{tps:,.0f} tok/s | elapsed {_clock(elapsed)} | "
                                 f"ETA {_clock(left)}")
                        if self.writer is not None:
                            self.writer.add_scalar("train/loss", mean_loss, st.step)
                            self.writer.add_scalar("train/lr", lr, st.step)
                            self.writer.add_scalar("train/tokens_per_s", tps, st.step)
                            if grad_norm is not None:
                                self.writer.add_scalar("train/grad_norm", grad_norm, st.step)
                    if self.dist.any(signal_flag["stop"]):
                        stop_reason = "signal"
                    elif tc.max_steps and st.step >= tc.max_steps:
                        stop_reason = "max_steps"
                    elif tc.max_minutes and self.dist.any(
                            time.perf_counter() - start >= 60 * tc.max_minutes):
                        stop_reason = "max_minutes"
                    elif tc.valid_every and st.step % tc.valid_every == 0:
                        if self._validate_and_save():
                            stop_reason = "early_stopping"
                    elif tc.save_every and st.step % tc.save_every == 0:
                        self.save()
                    if stop_reason:
                        break
                bar.close()
                if stop_reason == "signal":
                    path = self.save()
                    sig = signal_flag["signal"]  # None: another process got the signal
                    how = ("Ctrl-C" if sig == signal.SIGINT else
                           signal.Signals(sig).name if sig else "a stop signal")
                    raise TrainingInterrupted(
                        f"stopped by {how} at step {st.step} (epoch {st.epoch + 1}, batch "
                        f"{st.batch_in_epoch}); checkpoint {path}; continue with: translator "
                        f"train --run {shlex.quote(str(self.layout.root))} --resume")
                if stop_reason == "early_stopping":
                    break
                if not stop_reason:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                # With step-based validation, an epoch end only needs a checkpoint, except the
                # last one, which must also score the final model.
                if tc.valid_every and not stop_reason and st.epoch < tc.epochs:
                    self.save()
                elif self._validate_and_save():
                    stop_reason = "early_stopping"
        if self.writer is not None:
            self._log_hparams()
            self.writer.close()
        if self.dist.enabled:
            dist.barrier()
            dist.destroy_process_group()
        return TrainResult(self.layout.root, st, self.last_valid,
                           time.perf_counter() - start, n_params, tokens_seen)

    def _log_hparams(self) -> None:
        flat = {f"{section}.{k}": v for section, values in self.cfg.to_dict().items()
                for k, v in values.items() if isinstance(v, (int, float, str, bool))}
        metrics = {f"hparam/valid_{k}": float(self.last_valid[k])
                   for k in ("bleu", "chrf", "loss") if k in self.last_valid}
        if metrics:
            self.writer.add_hparams(flat, metrics, run_name="hparams")

    def _step(self, group: list[list[int]]) -> tuple[float, int, float | None]:
        """One optimizer step over the micro-batches `group` (gradient accumulation).

        Returns (mean loss, non-pad source+target tokens, gradient norm or None). A step whose
        gradients are not finite is skipped and counted; `training.max_bad_steps` of them in a
        row stop training (the last good checkpoint stays the latest)."""
        tc = self.cfg.training
        cuda = self.device.type == "cuda"
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        tokens = 0
        for i, idx in enumerate(group):
            batch = collate([self.train_data[j] for j in idx])
            tokens += int((batch.src != PAD_ID).sum()) + int((batch.tgt_out != PAD_ID).sum())
            if cuda:
                batch = type(batch)(*(t.pin_memory() for t in (
                    batch.src, batch.tgt_in, batch.tgt_out, batch.src_mask)))
            batch = batch.to(self.device, non_blocking=True)
            # DDP all-reduces gradients on the last micro-batch only.
            last = i == len(group) - 1
            sync = (self.train_model.no_sync() if self.dist.enabled and not last
                    and hasattr(self.train_model, "no_sync") else nullcontext())
            with sync, self.autocast():
                loss = self.train_model(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_out,
                                        PAD_ID, tc.label_smoothing)
            self.scaler.scale(loss / len(group)).backward()
            total += loss.detach()
        self.scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              tc.clip_grad_norm or float("inf"))
        grad_norm = float(norm)
        loss_value = float(total) / len(group)
        if self.precision != "fp16" and not (math.isfinite(grad_norm)
                                             and math.isfinite(loss_value)):
            self.optimizer.zero_grad(set_to_none=True)
            self.bad_steps += 1
            log.warning("step %d: non-finite loss or gradients (loss %s, grad norm %s); "
                        "step skipped (%d in a row)", self.state.step + 1, loss_value,
                        grad_norm, self.bad_steps)
            if self.bad_steps >= tc.max_bad_steps:
                raise TranslatorError(
                    f"training stopped: {self.bad_steps} steps in a row had a non-finite loss "
                    f"or gradients (try a lower training.lr); the last good checkpoint is "
                    f"{self.layout.latest}")
            return loss_value, tokens, None
        self.bad_steps = 0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.state.step += 1
        return loss_value, tokens, grad_norm


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: BilingualDataset, device: torch.device,
                    max_tokens: int, batch_size: int) -> float:
    """Mean cross-entropy per target token (no label smoothing) of `model` on `data`, in
    length-bucketed batches; the model is left in eval mode."""
    model.eval()
    total, tokens = 0.0, 0
    for idx in BucketBatchSampler(data, max_tokens, batch_size, shuffle=False):
        batch = collate([data[i] for i in idx]).to(device)
        logits = model(batch.src, batch.tgt_in, batch.src_mask)
        total += float(F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(),
                                       ignore_index=PAD_ID, reduction="sum"))
        tokens += batch.n_tokens
    return total / max(tokens, 1)


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          device: str | None = None, quiet: bool = False,
          init_from: Path | None = None) -> TrainResult:
    """Train the model a config describes (from the weights of another run with
    `init_from`); returns where the run went and how it ended."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, device=device, quiet=quiet,
                   init_from=init_from).run()

