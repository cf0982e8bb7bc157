"""Mask-word dropout: `nn.Dropout` semantics at a fraction of its mask cost on the CPU.

What it is for: on the CPU, `F.dropout` draws one Bernoulli sample per element, and at this
toolkit's model sizes those draws are a large part of a training step. Here one 64-bit random
draw gives four 16-bit mask words, so generating the mask costs a fraction of that. A word is
kept when it is >= round(p * 65536) (as an unsigned number), so the drop rate is p rounded to
a multiple of 1/65536 (within 0.000008 of p: the byte mask this replaces rounded to 1/256,
0.1 becoming 0.1016); kept values are scaled by the exact inverse keep probability
65536 / (65536 - round(65536 p)), so the expected output equals the input. On accelerators it
is plain `F.dropout`.

Measured gain (session 13, 2-core Intel VM, d_model 256 3+3 layers, 25 training steps of
64 x 30 tokens, three alternating rounds): the byte mask gave 8,397 / 8,587 / 8,744 tokens/s
against `nn.Dropout`'s 8,067 / 8,078 / 7,978 (1.07x); docs/benchmarks.md has this module's
own figures.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

LEVELS = 65536
"""Mask words take 2**16 values: the drop rate's resolution is 1/65536."""


class _WordMaskDropout(torch.autograd.Function):
    """x * keep * scale, where keep = (random 16-bit word >= threshold); the backward pass
    reuses the saved mask: grad_in = grad_out * keep * scale."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, threshold: int, scale: float) -> Tensor:
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 3) // 4,), dtype=torch.int64,
                              device=x.device)
        # int16 holds -32768..32767: "unsigned word >= threshold" is "signed >= threshold -
        # 32768" (uint16 comparisons are not implemented on every torch build).
        keep = words.view(torch.int16)[:n].view(x.shape) >= threshold - LEVELS // 2
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


class Dropout(nn.Module):
    """Dropout with probability `p` (identity in eval mode): `F.dropout` on accelerators, the
    mask-word variant on the CPU (rate rounded to a multiple of 1/65536)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * LEVELS)

    def forward(self, x: Tensor) -> Tensor:  # any shape -> same shape
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu" or self.threshold >= LEVELS:
            return F.dropout(x, self.p, True)
        return _WordMaskDropout.apply(x, self.threshold, LEVELS / (LEVELS - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"
