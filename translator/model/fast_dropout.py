"""Byte-mask dropout: `nn.Dropout` semantics at a fraction of its mask cost on the CPU.

What it is for: on the CPU, `F.dropout` draws one Bernoulli sample per element, and at this
toolkit's model sizes those draws dominate a training step (`bernoulli_` took 24% of a d256
step on the development VM). Here one 64-bit random draw gives 8 mask bytes, so generating
the mask costs about a quarter of that. A byte is kept when it is >= round(p * 256), so on
the CPU the drop rate is p rounded to a multiple of 1/256 (0.1 becomes 26/256 = 0.1016);
kept values are scaled by the exact inverse keep probability 256 / (256 - round(256 p)), so
the expected output still equals the input. On accelerators it is plain `F.dropout`.

Measured gain (issue 13's A/B, `--suite train --train-plain-dropout`, Multi30k model, one
process, the same batches): 1.02x training tokens/s against `nn.Dropout` (2,839 against
2,773), small but not noise-free on this VM; it stays because it costs nothing to read past
(one module) and its semantics are tested. See docs/benchmarks.md.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class _ByteMaskDropout(torch.autograd.Function):
    """x * keep * scale, where keep = (random byte >= threshold); the backward pass reuses
    the saved mask: grad_in = grad_out * keep * scale."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, threshold: int, scale: float) -> Tensor:
        n = x.numel()
        words = torch.randint(-(2**63), 2**63 - 1, ((n + 7) // 8,), dtype=torch.int64,
                              device=x.device)
        keep = words.view(torch.uint8)[:n].view(x.shape) >= threshold
        ctx.save_for_backward(keep)
        ctx.scale = scale
        return torch.where(keep, x * scale, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None]:
        (keep,) = ctx.saved_tensors
        return torch.where(keep, grad * ctx.scale, 0.0), None, None


class Dropout(nn.Module):
    """Dropout with probability `p` (identity in eval mode): `F.dropout` on accelerators, the
    byte-mask variant on the CPU (rate rounded to a multiple of 1/256)."""

    def __init__(self, p: float) -> None:
        super().__init__()
        self.p = p
        self.threshold = round(p * 256)

    def forward(self, x: Tensor) -> Tensor:  # any shape -> same shape
        if not self.training or self.p == 0.0:
            return x
        if x.device.type != "cpu":
            return F.dropout(x, self.p, True)
        return _ByteMaskDropout.apply(x, self.threshold, 256 / (256 - self.threshold))

    def extra_repr(self) -> str:
        return f"p={self.p}"
