"""The training loop: data -> tokenizers -> batches -> model -> loss -> optimizer, with
validation (loss, greedy BLEU/chrF), TensorBoard logging, atomic checkpoints and exact resume.

Resume is exact because an epoch's batches are a pure function of (seed, epoch): a checkpoint
records the epoch and how many of its batches were done, plus every RNG state, and resuming
replays the same batch list from that position.
"""

from __future__ import annotations

import logging
import math
import random
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tqdm import tqdm

from translator.checkpoint import (
    FORMAT_VERSION,
    RunLayout,
    atomic_link,
    atomic_save,
    load_checkpoint,
    prune_checkpoints,
)
from translator.config import Config, load_config, save_config
from translator.corpus import load_splits
from translator.dataset import BilingualDataset, BucketBatchSampler, collate, padding_fraction
from translator.errors import TranslatorError
from translator.evaluate import score
from translator.inference import build_model, resolve_device, translate_ids
from translator.model import count_parameters
from translator.tokenizer import PAD_ID, TextTokenizer, build_tokenizer

log = logging.getLogger("translator")


class TrainingInterrupted(TranslatorError):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was written."""

    exit_code = 130


@dataclass
class TrainState:
    """Where training stands; saved in every checkpoint."""

    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    best_bleu: float = -1.0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass
class TrainResult:
    """What `train` returns: the run folder, the final state and the last validation."""

    run_dir: Path
    state: TrainState
    last_valid: dict[str, Any]
    seconds: float
    parameters: int


def lr_factor(step: int, warmup: int, schedule: str) -> float:
    """Multiplier of the peak lr at optimizer step `step` (1-based): linear warmup to 1, then
    for `inverse_sqrt` a decay of sqrt(warmup / step) (the paper's schedule, peak-normalised)."""
    step = max(step, 1)
    if warmup and step < warmup:
        return step / warmup
    if schedule == "inverse_sqrt" and warmup:
        return math.sqrt(warmup / step)
    return 1.0


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
def _stop_signals() -> Iterator[dict[str, bool]]:
    """Turn Ctrl-C / SIGTERM into a flag the loop checks after each step, so the step finishes
    and a checkpoint is written before exiting. A second Ctrl-C aborts at once."""
    flag = {"stop": False}
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"] = True
        tqdm.write(f"\n{signal.Signals(signum).name} received: finishing this step, then saving "
                   "a checkpoint (press Ctrl-C again to abort without saving)")

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
        if saved.model != cfg.model or saved.tokenizer != cfg.tokenizer or saved.data != cfg.data:
            raise TranslatorError(f"--resume: the config differs from the run's saved "
                                  f"{layout.config} in its data/tokenizer/model sections")
    save_config(cfg, layout.config)
    return layout


def _tokenizers(cfg: Config, layout: RunLayout, train_pairs: list[tuple[str, str]],
                reuse: bool) -> tuple[TextTokenizer, TextTokenizer]:
    src_path = layout.tokenizer(cfg.data.src_lang)
    tgt_path = layout.tokenizer(cfg.data.tgt_lang)
    if reuse and src_path.is_file() and tgt_path.is_file():
        return TextTokenizer.load(src_path), TextTokenizer.load(tgt_path)
    src_tok = build_tokenizer((s for s, _ in train_pairs), cfg.tokenizer)
    tgt_tok = build_tokenizer((t for _, t in train_pairs), cfg.tokenizer)
    src_tok.save(src_path)
    tgt_tok.save(tgt_path)
    return src_tok, tgt_tok


class Trainer:
    """Holds everything of one training run. `train(cfg)` is the usual entry point."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False,
                 device: str | None = None, quiet: bool = False) -> None:
        self.cfg, self.quiet = cfg, quiet
        tc = cfg.training
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.device = resolve_device(device or tc.device)
        self.layout = prepare_run_dir(cfg, resume, overwrite)
        random.seed(tc.seed)
        torch.manual_seed(tc.seed)

        splits = load_splits(cfg.data)
        self.src_tok, self.tgt_tok = _tokenizers(cfg, self.layout, splits["train"], reuse=resume)
        self.train_data = BilingualDataset.from_pairs(
            splits["train"], self.src_tok, self.tgt_tok, cfg.data.max_len, "train")
        if len(self.train_data) == 0:
            raise TranslatorError("no training pair fits data.max_len")
        valid = splits["valid"]
        if tc.valid_max_sentences:
            valid = valid[:tc.valid_max_sentences]
        self.valid_pairs = valid
        self.valid_data = BilingualDataset.from_pairs(
            valid, self.src_tok, self.tgt_tok, cfg.data.max_len, "valid") if valid else None
        self.sampler = BucketBatchSampler(self.train_data, tc.max_tokens, tc.batch_size,
                                          shuffle=True, seed=tc.seed)

        self.model = build_model(cfg, self.src_tok.vocab_size, self.tgt_tok.vocab_size)
        self.model.to(self.device)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=tc.lr, betas=(tc.adam_beta1, tc.adam_beta2),
            eps=1e-9, weight_decay=tc.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_factor(s + 1, tc.warmup_steps, tc.schedule))
        self.state = TrainState()
        if resume:
            self._load(self.layout.latest)
        from torch.utils.tensorboard import SummaryWriter  # slow import; only when training

        self.writer = SummaryWriter(str(self.layout.tensorboard))
        self.last_valid: dict[str, Any] = {}

    # -- checkpoints -------------------------------------------------------------------------

    def _checkpoint(self) -> dict[str, Any]:
        s = self.state
        return {
            "format_version": FORMAT_VERSION,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "step": s.step, "epoch": s.epoch, "batch_in_epoch": s.batch_in_epoch,
            "best_bleu": s.best_bleu, "history": s.history,
            "config": self.cfg.to_dict(),
            "vocab": {"src": self.src_tok.vocab_size, "tgt": self.tgt_tok.vocab_size},
            "rng": _rng_state(),
        }

    def save(self, is_best: bool = False) -> Path:
        """Write a numbered checkpoint atomically and point latest.pt (and best.pt) at it."""
        path = self.layout.numbered(self.state.epoch, self.state.step)
        atomic_save(self._checkpoint(), path)
        atomic_link(path, self.layout.latest)
        if is_best:
            atomic_link(path, self.layout.best)
        prune_checkpoints(self.layout, self.cfg.training.keep_last)
        return path

    def _load(self, path: Path) -> None:
        ckpt = load_checkpoint(path, map_location=self.device)
        self.model.load_state_dict(ckpt["model"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.state = TrainState(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"],
                                ckpt["best_bleu"], list(ckpt.get("history", [])))
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
        total, tokens = 0.0, 0
        sampler = BucketBatchSampler(self.valid_data, tc.max_tokens, tc.batch_size, shuffle=False)
        for idx in sampler:
            batch = collate([self.valid_data[i] for i in idx]).to(self.device)
            logits = self.model(batch.src, batch.tgt_in, batch.src_mask)
            total += float(F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(),
                                           ignore_index=PAD_ID, reduction="sum"))
            tokens += batch.n_tokens
        src_ids = [self.valid_data[i][0].tolist() for i in range(len(self.valid_data))]
        outs = translate_ids(self.model, src_ids, self.device, tc.decode_batch_size)
        hyps = [self.tgt_tok.decode(o) for o in outs]
        refs = [self.valid_pairs[i][1] for i in self.valid_data.kept_index]
        result = score(hyps, refs)
        result["loss"] = total / max(tokens, 1)
        step = self.state.step
        self.writer.add_scalar("valid/loss", result["loss"], step)
        self.writer.add_scalar("valid/bleu", result["bleu"], step)
        self.writer.add_scalar("valid/chrf", result["chrf"], step)
        if not self.quiet:
            lines = [f"validation at step {step}: loss {result['loss']:.3f}  "
                     f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}"]
            for i in range(min(tc.examples, len(hyps))):
                src = self.valid_pairs[self.valid_data.kept_index[i]][0]
                lines += [f"  SOURCE     {src}", f"  REFERENCE  {refs[i]}",
                          f"  PREDICTED  {hyps[i]}"]
            tqdm.write("\n".join(lines))
        self.model.train()
        return result

    def _validate_and_save(self) -> None:
        result = self.validate()
        is_best = False
        if result:
            self.last_valid = result
            self.state.history.append({"step": self.state.step, "loss": result["loss"],
                                       "bleu": result["bleu"], "chrf": result["chrf"]})
            if result["bleu"] > self.state.best_bleu:
                self.state.best_bleu, is_best = result["bleu"], True
        else:
            is_best = True  # no validation data: the newest model is the one to use
        self.save(is_best=is_best)
        self.writer.flush()

    # -- the loop ----------------------------------------------------------------------------

    def run(self) -> TrainResult:
        """Train until epochs, max_steps or max_minutes run out, or a stop signal comes."""
        tc, st = self.cfg.training, self.state
        n_params = count_parameters(self.model)
        if not self.quiet:
            log.info("run folder %s | device %s | %d parameters | vocab %d/%d | %d train pairs",
                     self.layout.root, self.device, n_params, self.src_tok.vocab_size,
                     self.tgt_tok.vocab_size, len(self.train_data))
        start = time.perf_counter()
        self.model.train()
        stop_reason = ""
        with _stop_signals() as signal_flag:
            while st.epoch < tc.epochs and not stop_reason:
                self.sampler.set_epoch(st.epoch)
                batches = self.sampler.batches()
                if st.batch_in_epoch == 0:
                    self.writer.add_scalar("train/padding_fraction",
                                           padding_fraction(self.train_data, batches), st.epoch)
                bar = tqdm(total=len(batches), initial=st.batch_in_epoch, disable=self.quiet,
                           desc=f"epoch {st.epoch + 1}/{tc.epochs}", dynamic_ncols=True)
                for idx in batches[st.batch_in_epoch:]:
                    loss = self._step(idx)
                    st.batch_in_epoch += 1
                    bar.update(1)
                    lr = self.scheduler.get_last_lr()[0]
                    if st.step % 10 == 0 or st.step == 1:
                        bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}")
                    if st.step % tc.log_every == 0:
                        self.writer.add_scalar("train/loss", loss, st.step)
                        self.writer.add_scalar("train/lr", lr, st.step)
                    if signal_flag["stop"]:
                        stop_reason = "signal"
                    elif tc.max_steps and st.step >= tc.max_steps:
                        stop_reason = "max_steps"
                    elif tc.max_minutes and time.perf_counter() - start >= 60 * tc.max_minutes:
                        stop_reason = "max_minutes"
                    elif tc.valid_every and st.step % tc.valid_every == 0:
                        self._validate_and_save()
                    if stop_reason:
                        break
                bar.close()
                if stop_reason == "signal":
                    path = self.save()
                    raise TrainingInterrupted(
                        f"training stopped at step {st.step} (epoch {st.epoch + 1}, batch "
                        f"{st.batch_in_epoch}); checkpoint {path}; continue with: translator "
                        f"train --config <config> --resume (run folder {self.layout.root})")
                if not stop_reason:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                # With step-based validation, an epoch end only needs a checkpoint, except the
                # last one, which must also score the final model.
                if tc.valid_every and not stop_reason and st.epoch < tc.epochs:
                    self.save()
                else:
                    self._validate_and_save()
        self.writer.close()
        return TrainResult(self.layout.root, st, self.last_valid,
                           time.perf_counter() - start, n_params)

    def _step(self, idx: list[int]) -> float:
        batch = collate([self.train_data[i] for i in idx]).to(self.device, non_blocking=True)
        logits = self.model(batch.src, batch.tgt_in, batch.src_mask)  # [B, T, V]
        loss = F.cross_entropy(logits.flatten(0, 1), batch.tgt_out.flatten(),
                               ignore_index=PAD_ID,
                               label_smoothing=self.cfg.training.label_smoothing)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if self.cfg.training.clip_grad_norm:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                           self.cfg.training.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.state.step += 1
        return loss.item()


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          device: str | None = None, quiet: bool = False) -> TrainResult:
    """Train the model a config describes; returns where the run went and how it ended."""
    return Trainer(cfg, resume=resume, overwrite=overwrite, device=device, quiet=quiet).run()

