"""What training shows: TensorBoard scalars, text and the attention image; the progress bar
on a terminal or plain progress lines in a file or pipe; validation results on stderr.

`TrainLogger` keeps the running loss sums on the device and reads them back only when
something is shown (a log step, or a redraw of the bar), so logging never forces a
host-device synchronisation at every step.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from collections.abc import Callable, Sequence
from datetime import timedelta
from pathlib import Path
from typing import Any

from torch import Tensor
from tqdm import tqdm

from translator.config import Config
from translator.errors import first_line
from translator.run import RunLayout

log = logging.getLogger("translator")

BAR_REFRESH_S = 0.5
"""How often the bar's loss is read back and redrawn: often enough to watch, rarely enough
that reading a device tensor costs nothing."""


def say(text: str) -> None:
    """A line for the user on stderr, printed above a progress bar if one is drawn (the bar
    stays whole); stdout stays free for results."""
    tqdm.write(text, file=sys.stderr)


def stderr_is_terminal() -> bool:
    """Whether stderr is a terminal: only there does a redrawn tqdm bar read well; a file or
    pipe gets plain log lines instead (a bar there is a stream of carriage returns)."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    return str(timedelta(seconds=max(0, round(seconds))))


class _Window:
    """Loss and token sums since the last log step (loss as a device tensor)."""

    def __init__(self) -> None:
        self.loss: Tensor | float = 0.0
        self.steps, self.tokens, self.start = 0, 0, time.perf_counter()


class _SafeWriter:
    """A TensorBoard `SummaryWriter` whose write errors (a full disk, a file-size limit) become
    one warning, after which the curves stop and training goes on: the checkpoints, not the
    curves, are the run. Its background writer thread's error is reported the same way
    instead of as a thread traceback."""

    def __init__(self, writer: Any, folder: Path) -> None:
        self._writer, self._folder, self._failed = writer, folder, False
        previous = threading.excepthook

        def hook(args: threading.ExceptHookArgs) -> None:
            if isinstance(args.exc_value, OSError) and "tensorboard" in getattr(
                    args.thread, "__module__", "") + type(args.thread).__module__:
                self._fail(args.exc_value)
            else:
                previous(args)

        threading.excepthook = hook

    def _fail(self, exc: BaseException) -> None:
        if not self._failed:
            self._failed = True
            log.warning("TensorBoard: cannot write events in %s (%s); training goes on "
                        "without curves", self._folder, first_line(exc, 200))

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._writer, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            if self._failed:
                return None
            try:
                return method(*args, **kwargs)
            except (OSError, RuntimeError) as exc:
                self._fail(exc)
                return None

        return call


class TrainLogger:
    """Progress output and TensorBoard for one run; only the main process writes anything
    (`quiet` drops the bar and progress lines, not validation results)."""

    def __init__(self, cfg: Config, layout: RunLayout, main: bool, quiet: bool, world: int,
                 planned_steps: int) -> None:
        self.cfg, self.world, self.planned_steps = cfg, world, planned_steps
        self.writer: Any = None
        if main:
            from torch.utils.tensorboard import SummaryWriter  # slow import; only when training

            self.writer = _SafeWriter(SummaryWriter(str(layout.tensorboard)),
                                      layout.tensorboard)
        # A redrawn bar on a terminal; plain progress lines in a file or pipe; neither quiet.
        self.bar_mode = not quiet and stderr_is_terminal()
        self.lines_mode = not quiet and not self.bar_mode
        self.start, self.first_step = time.perf_counter(), 0
        self.window, self.logged_step, self.tps = _Window(), -1, 0.0
        self.bar: Any = None
        self.epoch_loss: Tensor | float = 0.0
        self.epoch_steps, self.shown_at = 0, 0.0

    def begin(self, first_step: int) -> None:
        """Training starts (or resumes) at optimizer step `first_step`."""
        self.start, self.first_step = time.perf_counter(), first_step
        self.window = _Window()

    def epoch_start(self, epoch: int, groups: int, done: int,
                    padding: Callable[[], float] | None, step: int) -> None:
        """A bar for epoch `epoch` (`done` of `groups` steps already done); the padding
        fraction to TensorBoard when the epoch starts from its beginning."""
        if padding is not None and self.writer is not None:
            self.writer.add_scalar("train/padding_fraction", padding(), step)
        tc = self.cfg.training
        self.bar = tqdm(total=groups, initial=done, disable=not self.bar_mode,
                        desc=f"epoch {epoch + 1}/{tc.epochs}", dynamic_ncols=True,
                        file=sys.stderr)
        self.epoch_loss, self.epoch_steps, self.shown_at = 0.0, 0, 0.0

    def epoch_end(self) -> None:
        """The epoch's bar is done."""
        if self.bar is not None:
            self.bar.close()

    def step(self, step: int, epoch: int, loss: Tensor | None, tokens: int, lr: float,
             grad_norm: Tensor | None) -> None:
        """After an optimizer step; `loss` None: a skipped (non-finite) step, left out of
        the means."""
        w = self.window
        w.tokens += tokens
        if loss is not None:
            self.epoch_loss, self.epoch_steps = self.epoch_loss + loss, self.epoch_steps + 1
            w.loss, w.steps = w.loss + loss, w.steps + 1
        if self.bar_mode and (time.perf_counter() - self.shown_at >= BAR_REFRESH_S):
            self.shown_at = time.perf_counter()
            self.bar.set_postfix(loss=f"{float(self.epoch_loss) / max(self.epoch_steps, 1):.3f}",
                                 lr=f"{lr:.2e}", tok_s=f"{self.tps:,.0f}", refresh=False)
        self.bar.update(1)
        tc = self.cfg.training
        if (step % tc.log_every == 0 or step == 1) and step != self.logged_step:
            self._log_step(step, epoch, loss, lr, grad_norm)

    def _log_step(self, step: int, epoch: int, loss: Tensor | None, lr: float,
                  grad_norm: Tensor | None) -> None:
        """A log step: the window's mean loss and tokens/s to the lines and TensorBoard."""
        self.logged_step, w, tc = step, self.window, self.cfg.training
        now = time.perf_counter()
        self.tps = w.tokens * self.world / max(now - w.start, 1e-9)
        mean_loss = float(w.loss) / w.steps if w.steps else float("nan")
        self.window = _Window()
        if self.lines_mode:
            elapsed = now - self.start
            left = (self.planned_steps - step) * elapsed / max(step - self.first_step, 1)
            if tc.max_minutes:
                left = min(left, 60 * tc.max_minutes - elapsed)
            say(f"step {step}/{self.planned_steps} | epoch {epoch + 1}/{tc.epochs} | loss "
                f"{mean_loss:.3f} | lr {lr:.2e} | {self.tps:,.0f} tok/s | elapsed "
                f"{clock(elapsed)} | ETA {clock(left)}")
        if self.writer is not None:
            self.writer.add_scalar("train/loss", mean_loss, step)
            self.writer.add_scalar("train/lr", lr, step)
            self.writer.add_scalar("train/tokens_per_s", self.tps, step)
            if grad_norm is not None:
                self.writer.add_scalar("train/grad_norm", float(grad_norm), step)

    def validation(self, step: int, result: dict[str, Any],
                   rows: Sequence[tuple[str, str, str]],
                   attention: Callable[[Any, int], None] | None = None) -> None:
        """A validation's scores to TensorBoard and stderr, with (source, reference,
        prediction) examples and the attention image `attention(writer, step)` draws."""
        tc = self.cfg.training
        if self.writer is not None:
            for key in ("loss", "bleu", "chrf", "length_ratio"):
                self.writer.add_scalar(f"valid/{key}", result[key], step)
            table = [f"| {s} | {r} | {h} |" for s, r, h in rows[:max(tc.examples, 3)]]
            self.writer.add_text("valid/examples", "| source | reference | prediction |\n"
                                 "|---|---|---|\n" + "\n".join(table), step)
            if attention is not None:
                attention(self.writer, step)
        lines = [f"validation at step {step}: loss {result['loss']:.3f}  "
                 f"BLEU {result['bleu']:.2f}  chrF {result['chrf']:.2f}  "
                 f"length ratio {result['length_ratio']:.2f}"]
        for src, ref, hyp in rows[:tc.examples]:
            lines += [f"  SOURCE     {src}", f"  REFERENCE  {ref}", f"  PREDICTED  {hyp}"]
        say("\n".join(lines))

    def flush(self) -> None:
        """Write TensorBoard's events to disk now (after each checkpoint)."""
        if self.writer is not None:
            self.writer.flush()

    def close(self, last_valid: dict[str, Any]) -> None:
        """The hyperparameters with the last validation's scores, then close TensorBoard."""
        if self.writer is None:
            return
        flat = {f"{section}.{k}": v for section, values in self.cfg.to_dict().items()
                for k, v in values.items() if isinstance(v, (int, float, str, bool))}
        metrics = {f"hparam/valid_{k}": float(last_valid[k])
                   for k in ("bleu", "chrf", "loss") if k in last_valid}
        if metrics:
            self.writer.add_hparams(flat, metrics, run_name="hparams")
        self.writer.close()
