"""Training bookkeeping: where training stands (`TrainState`), checkpoints with every RNG
state (`Checkpointer`), the best score and early stopping (`BestTracker`), and why training
stops (`StopRules`, with Ctrl-C / SIGTERM turned into a flag by `stop_signals`); and how
many epochs the budget allows, with the dropout that suits it (`planned_epochs`,
`dropout_advice`).

None of these computes anything a step needs; they decide what to write and when to stop, so
the loop in `translator.train.loop` only asks them.
"""

from __future__ import annotations

import enum
import logging
import random
import signal
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from translator.checkpoint import (
    FORMAT_VERSION,
    CheckpointError,
    atomic_link,
    atomic_save,
    load_checkpoint,
    prune_checkpoints,
)
from translator.config import TrainingConfig
from translator.errors import TranslatorError
from translator.run import RunLayout
from translator.train.distributed import Dist
from translator.train.log import say, stderr_is_terminal

log = logging.getLogger("translator")


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


# -- RNG states: a checkpoint carries all of them, so that dropout continues exactly ----------


def rng_state() -> dict[str, Any]:
    """The Python, torch and CUDA RNG states, in a form `torch.save` keeps."""
    state: dict[str, Any] = {"python": list(_tuple_to_list(random.getstate())),
                             "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _tuple_to_list(x: Any) -> Any:
    return [_tuple_to_list(v) for v in x] if isinstance(x, (tuple, list)) else x


def _list_to_tuple(x: Any) -> Any:
    return tuple(_list_to_tuple(v) for v in x) if isinstance(x, list) else x


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(_list_to_tuple(state["python"]))
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda"]])


class Checkpointer:
    """Writes and reads a run's checkpoints: model, optimizer, schedule, gradient scaler,
    `TrainState` and RNG states. Only the main process writes."""

    def __init__(self, layout: RunLayout, dist_info: Dist, tc: TrainingConfig,
                 parts: Callable[[], dict[str, Any]]) -> None:
        # `parts` gives the objects whose state_dict goes in (model, optimizer, scheduler,
        # scaler) plus the fixed fields (config, vocab): asked at each save, so nothing here
        # holds on to a stale object.
        self.layout, self.dist, self.tc, self.parts = layout, dist_info, tc, parts

    def contents(self, state: TrainState) -> dict[str, Any]:
        """The checkpoint dictionary of `state`."""
        p = self.parts()
        stateful = {k: p[k].state_dict() for k in ("model", "optimizer", "scheduler", "scaler")}
        return {"format_version": FORMAT_VERSION, **stateful,
                "step": state.step, "epoch": state.epoch, "batch_in_epoch": state.batch_in_epoch,
                "best_score": state.best_score, "best_metric": self.tc.best_metric,
                "bad_validations": state.bad_validations, "history": state.history,
                "config": p["config"], "vocab": p["vocab"], "rng": rng_state()}

    def save(self, state: TrainState, is_best: bool = False) -> Path | None:
        """Write a numbered checkpoint atomically and point latest.pt (and best.pt) at it. A
        failed write leaves the previous checkpoints intact and stops training with a clear
        message."""
        if not self.dist.main:
            return None
        path = self.layout.numbered(state.epoch, state.step)
        try:
            atomic_save(self.contents(state), path)
            atomic_link(path, self.layout.latest)
            if is_best:
                atomic_link(path, self.layout.best)
        except OSError as exc:
            what = (str(exc).removeprefix("cannot write ") if isinstance(exc, TranslatorError)
                    else f"{path} ({exc})")
            raise TranslatorError(f"could not write checkpoint {what}; the previous "
                                  f"checkpoints in {self.layout.checkpoints} are intact") from None
        prune_checkpoints(self.layout.numbered_checkpoints(), self.tc.keep_last)
        return path

    def restore(self, path: Path, device: torch.device) -> TrainState:
        """Load `path` into the parts and the RNGs (exact resume); returns its state."""
        ckpt = load_checkpoint(path, map_location=device)
        lacking = [k for k in ("optimizer", "scheduler", "step", "epoch", "batch_in_epoch",
                               "rng") if k not in ckpt]
        if lacking:
            made = (" (made by `translator average`: weights only, for translation)"
                    if "averaged_from" in ckpt else "")
            raise CheckpointError(f"--resume: {path} holds no training state ({lacking[0]} "
                                  f"missing){made}; resume from a checkpoint that training "
                                  "wrote, or fine-tune from it with --init-from")
        p = self.parts()
        try:
            for key in ("model", "optimizer", "scheduler"):
                p[key].load_state_dict(ckpt[key])
            if ckpt.get("scaler"):
                p["scaler"].load_state_dict(ckpt["scaler"])
            state = TrainState(ckpt["step"], ckpt["epoch"], ckpt["batch_in_epoch"],
                               ckpt.get("best_score"), ckpt.get("bad_validations", 0),
                               list(ckpt.get("history", [])))
            set_rng_state(ckpt["rng"])
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as exc:
            # A foreign or hand-edited file: its tensors or states do not fit this run.
            raise CheckpointError(f"--resume: {path} does not fit this run: "
                                  f"{str(exc).strip().splitlines()[0][:200]}") from exc
        log.info("resumed from %s at step %d (epoch %d, batch %d)", path, state.step,
                 state.epoch + 1, state.batch_in_epoch)
        return state


class BestTracker:
    """Best score and early stopping on `training.best_metric`."""

    def __init__(self, tc: TrainingConfig) -> None:
        self.metric, self.patience = tc.best_metric, tc.patience

    def update(self, state: TrainState, result: dict[str, Any]) -> tuple[bool, bool]:
        """Record a validation `result` in `state`; returns (is it the best so far, should
        training stop early). No validation data: the newest model is the best one."""
        if not result:
            return True, False
        state.history.append({"step": state.step, "loss": result["loss"],
                              "bleu": result["bleu"], "chrf": result["chrf"]})
        value = result[self.metric]
        lower_is_better = self.metric == "loss"
        best = state.best_score
        if best is None or (value < best if lower_is_better else value > best):
            state.best_score, state.bad_validations = value, 0
            return True, False
        state.bad_validations += 1
        stop = bool(self.patience) and state.bad_validations >= self.patience
        if stop:
            say(f"early stopping: validation {self.metric} has not improved for "
                f"{state.bad_validations} validations (best {best:.2f})")
        return False, stop


# -- why training stops --------------------------------------------------------------------

class StopReason(enum.Enum):
    """Why training stops before its last epoch ends."""

    SIGNAL = "signal"
    """Ctrl-C or SIGTERM: the step finishes, a checkpoint is written, the run can resume."""
    MAX_STEPS = "max_steps"
    MAX_MINUTES = "max_minutes"
    EARLY_STOPPING = "early_stopping"
    """`training.patience` validations in a row without a better `best_metric`."""


class StopRules:
    """After each step: stop for a signal, max_steps or max_minutes (checked on every rank,
    taken together), in that order of precedence."""

    def __init__(self, tc: TrainingConfig, dist_info: Dist, flag: dict[str, Any]) -> None:
        self.tc, self.dist, self.flag = tc, dist_info, flag
        self.start = time.perf_counter()

    def reason(self, step: int) -> StopReason | None:
        """The stop reason after optimizer step `step`, or None to go on."""
        tc = self.tc
        if self.dist.any(self.flag["stop"]):
            return StopReason.SIGNAL
        if tc.max_steps and step >= tc.max_steps:
            return StopReason.MAX_STEPS
        if tc.max_minutes and self.dist.any(
                time.perf_counter() - self.start >= 60 * tc.max_minutes):
            return StopReason.MAX_MINUTES
        return None

    def minutes_used(self) -> float:
        """Wall time since this call's training loop began, the clock `max_minutes` reads."""
        return (time.perf_counter() - self.start) / 60

    def signal_name(self) -> str:
        """How the user stopped training, for the message."""
        sig = self.flag["signal"]  # None: another process got the signal
        return ("Ctrl-C" if sig == signal.SIGINT else
                signal.Signals(sig).name if sig else "a stop signal")


def planned_epochs(tc: TrainingConfig, epochs_done: int, steps_per_epoch: int,
                   seconds_per_epoch: float, minutes_used: float) -> float:
    """Epochs over the training data this run will have made when it stops: the least of
    `epochs`, what `max_steps` allows and what is left of `max_minutes` at the pace of the
    epoch just finished (`minutes_used` of it spent so far in this call)."""
    planned = float(tc.epochs)
    if tc.max_steps and steps_per_epoch:
        planned = min(planned, tc.max_steps / steps_per_epoch)
    if tc.max_minutes and seconds_per_epoch > 0:
        left = max(0.0, 60 * (tc.max_minutes - minutes_used))
        planned = min(planned, epochs_done + left / seconds_per_epoch)
    return planned


# Measured on Multi30k (29,000 pairs; docs/benchmarks.md, issue 19): dropout 0.1 wins while a
# run is short of about 10 epochs (12 minutes, 3-5 epochs: 34.1 against 30.5 test sacreBLEU
# with 0.3), the two are even near 10, and 0.3 wins from about 15 on (60 minutes, 20 epochs:
# 38.0 against 35.8), where 0.1 overfits. The count of passes, not the corpus, sets the rule.
FEW_EPOCHS, MANY_EPOCHS = 6.0, 15.0


def dropout_advice(epochs: float, dropout: float) -> str:
    """A one-line hint when `model.dropout` does not suit a run of `epochs` passes over the
    data, else "". Only advice: the run goes on with the dropout it was given."""
    if epochs >= MANY_EPOCHS and dropout < 0.2:
        return (f"this run will make about {epochs:.0f} epochs; with more than about 10, "
                f"model.dropout=0.3 usually scores higher than {dropout:g}, which overfits "
                f"(Multi30k, 20 epochs: 38.0 against 35.8 BLEU; docs/benchmarks.md)")
    if epochs <= FEW_EPOCHS and dropout >= 0.25:
        return (f"this run will make about {epochs:.0f} epochs; with fewer than about 10, "
                f"model.dropout=0.1 usually learns faster than {dropout:g} (Multi30k, 12 "
                f"minutes: 34.1 against 30.5 BLEU; docs/benchmarks.md)")
    return ""


@contextmanager
def stop_signals() -> Iterator[dict[str, Any]]:
    """Turn Ctrl-C / SIGTERM into a flag the loop checks after each step, so the step finishes
    and a checkpoint is written before exiting. A second Ctrl-C aborts at once."""
    flag: dict[str, Any] = {"stop": False, "signal": None}
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag["stop"]:
            raise KeyboardInterrupt
        flag["stop"], flag["signal"] = True, signum
        # On a terminal the shell has just echoed ^C: start on a fresh line.
        fresh_line = "\n" if stderr_is_terminal() else ""
        say(f"{fresh_line}{signal.Signals(signum).name} received: finishing this step, then "
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
