"""The training loop: it gets its pieces from `translator.train.setup.build_training` and
only trains: steps (`translator.train.step`) over batches the input pipeline collates ahead
(`translator.train.batches`), with validation, logging (`translator.train.log`) and checkpoint /
early-stop / stop-reason bookkeeping (`translator.train.book`) on the way.

Resume is exact because an epoch's batches are a pure function of (seed, epoch): a checkpoint
records the epoch and how many of its batches were done, plus every RNG state, and resuming
collates the same batch list from that position on.

`train(cfg)` is the entry point; `Trainer` holds one run (tests reach into it).
"""

from __future__ import annotations

import logging
import shlex
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from translator.config import Config
from translator.data.dataset import padding_fraction
from translator.errors import TranslatorError
from translator.model.transformer import count_parameters
from translator.train.batches import StepBatch, StepBatches, epoch_groups
from translator.train.book import (
    EARLY_STOPPING,
    SIGNAL,
    BestTracker,
    StopRules,
    TrainState,
    dropout_advice,
    planned_epochs,
    stop_signals,
)
from translator.train.distributed import Dist, init_distributed
from translator.train.log import TrainLogger
from translator.train.setup import build_training, lr_factor
from translator.train.step import Stepper, StepResult, validate, validation_loss

__all__ = ["Dist", "TrainResult", "TrainState", "Trainer", "TrainingInterrupted",
           "init_distributed", "lr_factor", "train", "validation_loss"]

log = logging.getLogger("translator")


class TrainingInterrupted(TranslatorError):
    """Ctrl-C or SIGTERM: the step finished, a checkpoint was written."""

    exit_code = 130
    calm = True  # the user asked for this stop: the CLI prints it without "error:"


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
    step_seconds: float = 0.0
    """Time in the loop's steps: waiting for the next batch, then the optimizer step."""
    data_wait_seconds: float = 0.0
    """The part of `step_seconds` the loop spent blocked on the input pipeline."""

    @property
    def tokens_per_s(self) -> float:
        """Training tokens per second of this call, all processes together."""
        return self.tokens / self.seconds if self.seconds else 0.0

    @property
    def data_wait_fraction(self) -> float:
        """Share of step time spent waiting for data (0: the batches were always ready)."""
        return self.data_wait_seconds / self.step_seconds if self.step_seconds else 0.0


class Trainer:
    """One training run: the pieces `build_training` makes, and the loop over them."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False,
                 device: str | None = None, quiet: bool = False,
                 init_from: Path | None = None) -> None:
        s = build_training(cfg, resume=resume, overwrite=overwrite, device=device,
                           quiet=quiet, init_from=init_from)
        self.setup, self.cfg, self.dist, self.device = s, cfg, s.dist, s.device
        self.layout, self.state = s.layout, s.state
        self.model, self.optimizer, self.scheduler = s.model, s.optimizer, s.scheduler
        d = s.data
        self.src_tok, self.tgt_tok, self.sampler = d.src_tok, d.tgt_tok, d.sampler
        self.train_data, self.valid_data, self.valid_pairs = d.train, d.valid, d.valid_pairs
        self.checkpoints, self.best = s.checkpointer, BestTracker(cfg.training)
        self.stepper = Stepper(s.train_model, s.model, s.optimizer, s.scheduler, s.precision,
                               cfg, s.device, s.dist, s.layout.latest)
        self.logger = TrainLogger(cfg, s.layout, s.dist.main, s.quiet, s.dist.world,
                                  s.planned_steps)
        self.last_valid: dict[str, Any] = {}
        self.tokens_seen = 0
        self.step_s = self.wait_s = 0.0
        self.advised = False
        # (optimizer steps, seconds) of the epoch in progress, when it started at its first
        # batch: the pace `_advise` projects the budget with.
        self.full_epoch: tuple[int, float] | None = None

    # -- validation and checkpoints ----------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """Validation loss and greedy BLEU/chrF on the validation split (`train_step.
        validate`), logged to TensorBoard and stderr; {} without validation data."""
        if self.valid_data is None or len(self.valid_data) == 0:
            return {}
        result, rows = validate(self.model, self.cfg, self.src_tok, self.tgt_tok,
                                self.valid_data, self.valid_pairs, self.device)
        self.logger.validation(self.state.step, result, rows, self._attention_image)
        return result

    def _attention_image(self, writer: Any, step: int) -> None:
        # The first validation sentence at every validation, so the images show how its
        # attention forms over training (one small figure, ~0.3 s).
        from translator.visualize import log_attention  # matplotlib: imported when needed

        assert self.valid_data is not None
        with torch.no_grad():
            log_attention(writer, self.model, self.valid_data[0][0].tolist(), self.src_tok,
                          self.tgt_tok, step, self.device)

    def save(self, is_best: bool = False) -> Path | None:
        """A checkpoint of the current state (main process only)."""
        return self.checkpoints.save(self.state, is_best)

    def _validate_and_save(self) -> bool:
        """Validate and checkpoint (main process); True on every rank when early stopping
        says to stop."""
        stop = False
        if self.dist.main:
            result = self.validate()
            if result:
                self.last_valid = result
            is_best, stop = self.best.update(self.state, result)
            self.save(is_best=is_best)
            self.logger.flush()
        return self.dist.any(stop)

    # -- the loop ----------------------------------------------------------------------------

    def _step(self, group: StepBatch) -> StepResult:
        """One optimizer step; the step count moves unless it was skipped."""
        result = self.stepper.step(group)
        if not result.skipped:
            self.state.step += 1
        return result

    def _after_step(self, rules: StopRules) -> str:
        """Stop, validate or checkpoint after a step; returns the stop reason or ""."""
        tc, step = self.cfg.training, self.state.step
        reason = rules.reason(step)
        if reason:
            return reason
        if tc.valid_every and step % tc.valid_every == 0:
            return EARLY_STOPPING if self._validate_and_save() else ""
        if tc.save_every and step % tc.save_every == 0:
            self.save()
        return ""

    def _epoch(self, rules: StopRules) -> str:
        """Train the rest of the current epoch; returns the stop reason or "" (epoch done).
        Times the wait for each batch against the whole step (`TrainResult.data_wait_*`)."""
        st, tc = self.state, self.cfg.training
        groups = epoch_groups(self.sampler, self.dist, st.epoch, tc.accum_steps)
        done = st.batch_in_epoch // tc.accum_steps
        padding = None if st.batch_in_epoch else (lambda: padding_fraction(
            self.train_data, [b for g in groups for b in g]))
        self.logger.epoch_start(st.epoch, len(groups), done, padding, st.step)
        epoch_t0 = time.perf_counter()
        batches = StepBatches(self.train_data, groups, done,
                              pin=self.device.type == "cuda").prefetch()
        reason = ""
        try:
            while not reason:
                t0 = time.perf_counter()
                group = next(batches, None)
                t1 = time.perf_counter()
                if group is None:
                    break
                result = self._step(group)
                self.wait_s, self.step_s = self.wait_s + t1 - t0, \
                    self.step_s + time.perf_counter() - t0
                st.batch_in_epoch += len(group.micro)
                self.tokens_seen += group.tokens * self.dist.world
                self.logger.step(st.step, st.epoch, result.loss, group.tokens,
                                 self.scheduler.get_last_lr()[0], result.grad_norm)
                reason = self._after_step(rules)
        finally:
            batches.close()
            self.logger.epoch_end()
        self.full_epoch = (len(groups), time.perf_counter() - epoch_t0) if not done else None
        return reason

    def _end_epoch(self, reason: str, rules: StopRules) -> str:
        """After an epoch or a stop: checkpoint and maybe validate; a signal raises
        `TrainingInterrupted`. Returns the stop reason ("" to go on)."""
        st, tc = self.state, self.cfg.training
        if reason == SIGNAL:
            path = self.save()
            raise TrainingInterrupted(
                f"stopped by {rules.signal_name()} at step {st.step} (epoch {st.epoch + 1}, "
                f"batch {st.batch_in_epoch}); checkpoint {path}; continue with: translator "
                f"train --run {shlex.quote(str(self.layout.root))} --resume")
        if reason == EARLY_STOPPING:
            return reason
        if not reason:
            st.epoch, st.batch_in_epoch = st.epoch + 1, 0
            self._advise(rules)
        # With step-based validation, an epoch end only needs a checkpoint, except the last
        # one, which must also score the final model.
        if tc.valid_every and not reason and st.epoch < tc.epochs:
            self.save()
        elif self._validate_and_save():
            return EARLY_STOPPING
        return reason

    def _advise(self, rules: StopRules) -> None:
        """After the first whole epoch of this call, say once whether the dropout suits the
        number of epochs the budget allows (the rule in `translator.train.book`)."""
        if self.advised or self.full_epoch is None or not self.dist.main:
            return
        self.advised = True
        steps, seconds = self.full_epoch
        epochs = planned_epochs(self.cfg.training, self.state.epoch, steps, seconds,
                                rules.minutes_used())
        hint = dropout_advice(epochs, self.cfg.model.dropout)
        if hint:
            log.info(hint)

    def _announce(self, n_params: int) -> None:
        if self.dist.main:
            log.info("run folder %s | device %s | %s | %d parameters | vocab %d/%d | "
                     "%d train pairs (cleaning: %s)%s", self.layout.root, self.device,
                     self.setup.precision.name, n_params, self.src_tok.vocab_size,
                     self.tgt_tok.vocab_size, len(self.train_data), self.setup.data.cleaning,
                     f" | {self.dist.world} processes" if self.dist.enabled else "")

    def run(self) -> TrainResult:
        """Train until epochs, max_steps or max_minutes run out, early stopping, or a stop
        signal comes; validate and checkpoint on the way."""
        n_params = count_parameters(self.model)
        self._announce(n_params)
        start = time.perf_counter()
        self.model.train()
        self.logger.begin(self.state.step)
        reason = ""
        with stop_signals() as flag:
            rules = StopRules(self.cfg.training, self.dist, flag)
            while self.state.epoch < self.cfg.training.epochs and not reason:
                reason = self._end_epoch(self._epoch(rules), rules)
        self.logger.close(self.last_valid)
        self.dist.shutdown()
        return TrainResult(self.layout.root, self.state, self.last_valid,
                           time.perf_counter() - start, n_params, self.tokens_seen,
                           self.step_s, self.wait_s)


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          device: str | None = None, quiet: bool = False,
          init_from: Path | None = None) -> TrainResult:
    """Train the model a config describes (from the weights of another run with
    `init_from`); returns where the run went and how it ended."""
    from translator.run import release_run

    try:
        return Trainer(cfg, resume=resume, overwrite=overwrite, device=device, quiet=quiet,
                       init_from=init_from).run()
    finally:
        release_run(cfg.run_dir)
