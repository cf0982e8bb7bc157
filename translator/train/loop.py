"""The training loop: `Trainer.fit()` reads top to bottom, epoch -> step -> log ->
validate / save / stop, in one place (nanoGPT's train.py, torchtune's recipes). Everything it
uses is built beforehand by `translator.train.setup.build_training`; a step is
`translator.train.step.Stepper`, batches come from `translator.train.batches`, output goes
through `translator.train.log`, and checkpoints, the best score and stop rules are
`translator.train.book`.

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
from translator.data.dataset import BilingualDataset, padding_fraction
from translator.errors import TranslatorError
from translator.model.transformer import count_parameters
from translator.train.batches import StepBatch, StepBatches, epoch_groups
from translator.train.book import (
    BestTracker,
    StopReason,
    StopRules,
    TrainState,
    dropout_advice,
    planned_epochs,
    stop_signals,
)
from translator.train.log import TrainLogger
from translator.train.setup import TrainingSetup, build_training
from translator.train.step import Stepper, StepResult, validate

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
    """One training run: the `TrainingSetup` that `build_training` made (held, not copied),
    the step, the logger and the best-score tracker around it, and `fit()`, the loop."""

    def __init__(self, cfg: Config, resume: bool = False, overwrite: bool = False,
                 device: str | None = None, quiet: bool = False,
                 init_from: Path | None = None) -> None:
        self.setup: TrainingSetup = build_training(cfg, resume=resume, overwrite=overwrite,
                                                   device=device, quiet=quiet,
                                                   init_from=init_from)
        s = self.setup
        self.stepper = Stepper(s.train_model, s.model, s.optimizer, s.scheduler, s.precision,
                               cfg, s.device, s.dist, s.layout.latest)
        self.logger = TrainLogger(cfg, s.layout, s.dist.main, s.quiet, s.dist.world,
                                  s.planned_steps)
        self.best = BestTracker(cfg.training)
        self.last_valid: dict[str, Any] = {}

    # What tests and callers look at, read from the setup (views, not copies).
    cfg = property(lambda self: self.setup.cfg, doc="The run's config.")
    state = property(lambda self: self.setup.state, doc="Where training stands (TrainState).")
    model = property(lambda self: self.setup.model, doc="The model (unwrapped).")
    dist = property(lambda self: self.setup.dist, doc="This process' place in the job.")
    scheduler = property(lambda self: self.setup.scheduler, doc="The learning-rate schedule.")
    sampler = property(lambda self: self.setup.data.sampler, doc="The train batch sampler.")

    @property
    def train_data(self) -> BilingualDataset:
        """The tokenized training set."""
        return self.setup.data.train

    @property
    def valid_data(self) -> BilingualDataset | None:
        """The tokenized validation set (None without validation data)."""
        return self.setup.data.valid

    @property
    def valid_pairs(self) -> list[tuple[str, str]]:
        """The validation pairs (all, or the `valid_max_sentences` sample)."""
        return self.setup.data.valid_pairs

    # -- the loop ------------------------------------------------------------------------------

    def fit(self) -> TrainResult:
        """Train until epochs, max_steps or max_minutes run out, early stopping, or a stop
        signal comes; validate and checkpoint on the way."""
        # shape: the whole loop in one place, read top to bottom (nanoGPT train.py, torchtune
        # recipes): epoch -> step -> log -> validate/save/stop; split, it crossed five files.
        s, tc, st = self.setup, self.setup.cfg.training, self.setup.state
        n_params = count_parameters(s.model)
        self._announce(n_params)
        start = time.perf_counter()
        tokens, step_s, wait_s, advised = 0, 0.0, 0.0, False
        s.model.train()
        self.logger.begin(st.step)
        reason: StopReason | None = None
        with stop_signals() as flag:
            rules = StopRules(tc, s.dist, flag)
            while st.epoch < tc.epochs and reason is None:
                # An epoch's steps are a pure function of (seed, epoch); a resumed run starts
                # at the step its checkpoint recorded.
                groups = epoch_groups(s.data.sampler, s.dist, st.epoch, tc.accum_steps)
                done = st.batch_in_epoch // tc.accum_steps
                padding = None if st.batch_in_epoch else (lambda g=groups: padding_fraction(
                    s.data.train, [b for step in g for b in step]))
                self.logger.epoch_start(st.epoch, len(groups), done, padding, st.step)
                epoch_t0 = time.perf_counter()
                batches = StepBatches(s.data.train, groups, done,
                                      pin=s.device.type == "cuda").prefetch()
                try:
                    while reason is None:
                        t0 = time.perf_counter()
                        group = next(batches, None)  # collated ahead by a background thread
                        t1 = time.perf_counter()
                        if group is None:
                            break
                        result = self._step(group)
                        wait_s, step_s = wait_s + t1 - t0, step_s + time.perf_counter() - t0
                        st.batch_in_epoch += len(group.micro)
                        tokens += group.tokens * s.dist.world
                        self.logger.step(st.step, st.epoch, result.loss, group.tokens,
                                         s.scheduler.get_last_lr()[0], result.grad_norm)
                        reason = rules.reason(st.step)
                        if reason is None and tc.valid_every and st.step % tc.valid_every == 0:
                            reason = self._validate_and_save()
                        elif reason is None and tc.save_every and st.step % tc.save_every == 0:
                            self.save()
                finally:
                    batches.close()
                    self.logger.epoch_end()
                # The epoch ended, or a stop came.
                if reason is StopReason.SIGNAL:
                    raise self._interrupted(rules)
                if reason is StopReason.EARLY_STOPPING:
                    break
                if reason is None:
                    st.epoch, st.batch_in_epoch = st.epoch + 1, 0
                    if not advised and not done and s.dist.main:
                        advised = True  # once, after the first whole epoch of this call
                        self._advise(rules, len(groups), time.perf_counter() - epoch_t0)
                # With step-based validation an epoch end only needs a checkpoint, except the
                # last one, which must also score the final model.
                if tc.valid_every and reason is None and st.epoch < tc.epochs:
                    self.save()
                else:
                    reason = self._validate_and_save() or reason
        self.logger.close(self.last_valid)
        s.dist.shutdown()
        return TrainResult(s.layout.root, st, self.last_valid, time.perf_counter() - start,
                           n_params, tokens, step_s, wait_s)

    run = fit  # the name before issue 31

    def _step(self, group: StepBatch) -> StepResult:
        """One optimizer step; the step count moves unless it was skipped."""
        result = self.stepper.step(group)
        if not result.skipped:
            self.setup.state.step += 1
        return result

    # -- validation and checkpoints ----------------------------------------------------------

    def validate(self) -> dict[str, Any]:
        """Validation loss and greedy BLEU/chrF on the validation split (`train.step.
        validate`), logged to TensorBoard and stderr; {} without validation data."""
        s = self.setup
        if s.data.valid is None or len(s.data.valid) == 0:
            return {}
        result, rows = validate(s.model, s.cfg, s.data.src_tok, s.data.tgt_tok, s.data.valid,
                                s.data.valid_pairs, s.device)
        self.logger.validation(s.state.step, result, rows, self._attention_image)
        return result

    def _attention_image(self, writer: Any, step: int) -> None:
        # The first validation sentence at every validation, so the images show how its
        # attention forms over training (one small figure, ~0.3 s).
        from translator.visualize import log_attention  # matplotlib: imported when needed

        s = self.setup
        assert s.data.valid is not None
        with torch.no_grad():
            log_attention(writer, s.model, s.data.valid[0][0].tolist(), s.data.src_tok,
                          s.data.tgt_tok, step, s.device)

    def save(self, is_best: bool = False) -> Path | None:
        """A checkpoint of the current state (main process only)."""
        return self.setup.checkpointer.save(self.setup.state, is_best)

    def _validate_and_save(self) -> StopReason | None:
        """Validate and checkpoint (main process); EARLY_STOPPING on every rank when early
        stopping says to stop."""
        stop = False
        if self.setup.dist.main:
            result = self.validate()
            if result:
                self.last_valid = result
            is_best, stop = self.best.update(self.setup.state, result)
            self.save(is_best=is_best)
            self.logger.flush()
        return StopReason.EARLY_STOPPING if self.setup.dist.any(stop) else None

    # -- what the user is told ---------------------------------------------------------------

    def _interrupted(self, rules: StopRules) -> TrainingInterrupted:
        """Checkpoint now; the error that ends training after Ctrl-C or SIGTERM."""
        st, path = self.setup.state, self.save()
        return TrainingInterrupted(
            f"stopped by {rules.signal_name()} at step {st.step} (epoch {st.epoch + 1}, "
            f"batch {st.batch_in_epoch}); checkpoint {path}; continue with: translator "
            f"train --run {shlex.quote(str(self.setup.layout.root))} --resume")

    def _advise(self, rules: StopRules, steps: int, seconds: float) -> None:
        """After the first whole epoch of this call (`steps` optimizer steps in `seconds`),
        say whether the dropout suits the number of epochs the budget allows (the rule in
        `translator.train.book`)."""
        cfg = self.setup.cfg
        epochs = planned_epochs(cfg.training, self.setup.state.epoch, steps, seconds,
                                rules.minutes_used())
        hint = dropout_advice(epochs, cfg.model.dropout)
        if hint:
            log.info(hint)

    def _announce(self, n_params: int) -> None:
        s = self.setup
        if s.dist.main:
            log.info("run folder %s | device %s | %s | %d parameters | vocab %d/%d | "
                     "%d train pairs (cleaning: %s)%s", s.layout.root, s.device,
                     s.precision.name, n_params, s.data.src_tok.vocab_size,
                     s.data.tgt_tok.vocab_size, len(s.data.train), s.data.cleaning,
                     f" | {s.dist.world} processes" if s.dist.enabled else "")


def train(cfg: Config, resume: bool = False, overwrite: bool = False,
          device: str | None = None, quiet: bool = False,
          init_from: Path | None = None) -> TrainResult:
    """Train the model a config describes (from the weights of another run with
    `init_from`); returns where the run went and how it ended."""
    from translator.run import release_run

    try:
        return Trainer(cfg, resume=resume, overwrite=overwrite, device=device, quiet=quiet,
                       init_from=init_from).fit()
    finally:
        release_run(cfg.run_dir)
