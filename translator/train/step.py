"""One loss, one optimizer step, one validation.

`batch_loss` is the only place a loss is computed: the model's own loss path
(`Transformer.forward` with targets), used by the training step (with label smoothing) and by
`validation_loss` (without). `validate` scores greedy translations with
`translator.evaluate.evaluate_pairs`, the function `translator evaluate` uses.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from translator.config import Config
from translator.data.dataset import Batch, BilingualDataset, BucketBatchSampler, collate
from translator.data.tokenizer import PAD_ID, TextTokenizer
from translator.decode.translator import Translator
from translator.errors import TranslatorError
from translator.evaluate import evaluate_pairs
from translator.train.batches import StepBatch
from translator.train.distributed import Dist

log = logging.getLogger("translator")


def batch_loss(model: torch.nn.Module, batch: Batch, label_smoothing: float = 0.0) -> Tensor:
    """Mean cross-entropy per non-pad label token of `batch`: the model's own loss path."""
    return model(batch.src, batch.tgt_in, batch.src_mask, batch.tgt_out, PAD_ID,
                 label_smoothing)


@torch.no_grad()
def validation_loss(model: torch.nn.Module, data: BilingualDataset, device: torch.device,
                    max_tokens: int, batch_size: int) -> float:
    """Mean cross-entropy per target token (no label smoothing) of `model` on `data`, in
    length-bucketed batches; the model is left in eval mode. Summed on the device and read
    back once."""
    model.eval()
    total = torch.zeros((), device=device)
    tokens = 0
    for idx in BucketBatchSampler(data, max_tokens, batch_size, shuffle=False):
        batch = collate([data[i] for i in idx]).to(device)
        n = sum(len(data[i][1]) + 1 for i in idx)  # labels: y [EOS]
        total += batch_loss(model, batch) * n
        tokens += n
    return float(total) / max(tokens, 1)


@dataclass
class Precision:
    """How a step computes: `name` (fp32, bf16, fp16), the autocast context, the scaler."""

    name: str
    autocast: Callable[[], AbstractContextManager[Any]]
    scaler: torch.amp.GradScaler


@dataclass
class StepResult:
    """A finished optimizer step: its mean loss and gradient norm, still on the device
    (read back only when logged); both None for a skipped (non-finite) step."""

    loss: Tensor | None
    grad_norm: Tensor | None

    @property
    def skipped(self) -> bool:
        """Whether the step was skipped (not finite): it does not count."""
        return self.loss is None


class Stepper:
    """Runs optimizer steps: forward and backward over a step's micro-batches (gradient
    accumulation, DDP syncing on the last only), clipping, the non-finite check, the
    optimizer and the schedule."""

    def __init__(self, train_model: torch.nn.Module, model: torch.nn.Module,
                 optimizer: torch.optim.Optimizer, scheduler: Any, precision: Precision,
                 cfg: Config, device: torch.device, dist_info: Dist, latest: Path) -> None:
        self.train_model, self.model, self.optimizer = train_model, model, optimizer
        self.scheduler, self.precision, self.device = scheduler, precision, device
        self.tc, self.dist, self.latest = cfg.training, dist_info, latest
        self.bad_steps = 0

    def _sync(self, last: bool) -> AbstractContextManager[Any]:
        """DDP all-reduces gradients on the last micro-batch only."""
        if self.dist.enabled and not last and hasattr(self.train_model, "no_sync"):
            return self.train_model.no_sync()
        return nullcontext()

    def step(self, group: StepBatch) -> StepResult:
        """One optimizer step over `group`. A step whose loss or gradients are not finite is
        skipped and counted; `training.max_bad_steps` of them in a row stop training (the
        last good checkpoint stays the latest)."""
        tc, scaler = self.tc, self.precision.scaler
        self.optimizer.zero_grad(set_to_none=True)
        total = torch.zeros((), device=self.device)
        n = len(group.micro)
        for i, batch in enumerate(group.micro):
            batch = batch.to(self.device, non_blocking=True)
            with self._sync(i == n - 1), self.precision.autocast():
                loss = batch_loss(self.train_model, batch, tc.label_smoothing)
            scaler.scale(loss / n).backward()
            total += loss.detach()
        scaler.unscale_(self.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(),
                                              tc.clip_grad_norm or float("inf"))
        loss = total / n
        # fp16: the scaler skips steps with inf gradients itself (and lowers its scale).
        # Otherwise one host read of one flag per step: a skipped step must not count nor
        # move the schedule. The loss and norm values themselves stay on the device.
        if self.precision.name != "fp16" and not bool(
                torch.isfinite(torch.stack([loss, norm.float()])).all()):
            self._skip(loss, norm)
            return StepResult(None, None)
        self.bad_steps = 0
        scaler.step(self.optimizer)
        scaler.update()
        self.scheduler.step()
        return StepResult(loss, norm)

    def _skip(self, loss: Tensor, norm: Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        self.bad_steps += 1
        log.warning("step %d: non-finite loss or gradients (loss %s, grad norm %s); step "
                    "skipped (%d in a row)", self.scheduler.last_epoch + 1, float(loss),
                    float(norm), self.bad_steps)
        if self.bad_steps >= self.tc.max_bad_steps:
            raise TranslatorError(
                f"training stopped: {self.bad_steps} steps in a row had a non-finite loss or "
                f"gradients (try a lower training.lr); the last good checkpoint is "
                f"{self.latest}")


@torch.no_grad()
def validate(model: torch.nn.Module, cfg: Config, src_tok: TextTokenizer,
             tgt_tok: TextTokenizer, data: BilingualDataset,
             pairs: list[tuple[str, str]], device: torch.device
             ) -> tuple[dict[str, Any], list[tuple[str, str, str]]]:
    """Validation loss (no label smoothing) and greedy-decoding scores of `model` on the
    validation `pairs` that fit `data` (their tokenized form); returns the report of
    `evaluate_pairs` with `loss`, and (source, reference, prediction) rows. The model is left
    in train mode."""
    tc = cfg.training
    loss = validation_loss(model, data, device, tc.max_tokens, tc.batch_size)
    kept = [pairs[i] for i in data.kept_index]
    report, hyps = evaluate_pairs(Translator(cfg, src_tok, tgt_tok, model, device), kept,
                                  tc.decode_batch_size, beam_size=1)
    report["loss"] = loss
    model.train()
    return report, [(s, r, h) for (s, r), h in zip(kept, hyps, strict=True)]
