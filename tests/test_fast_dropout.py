"""Mask-word dropout: its rate (p to within 1/65536 on the CPU), the scaling of what
survives, its gradient, and eval mode."""

from __future__ import annotations

import pytest
import torch

from translator.model.fast_dropout import LEVELS, Dropout

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_rate_is_p(p: float) -> None:
    torch.manual_seed(0)
    n = 4_000_000
    out = Dropout(p).train()(torch.ones(n))
    rate = float((out == 0).float().mean())
    # The binomial standard deviation at n = 4M is <= 0.00025; 0.001 is 4 sigma, and it is
    # narrower than the byte mask's rounding this replaced (0.1 -> 26/256 = 0.1016), so that
    # rounding coming back would fail here.
    assert rate == pytest.approx(p, abs=0.001)
    assert abs(round(p * LEVELS) / LEVELS - p) < 1e-5


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_survivors_are_scaled_by_the_inverse_keep_probability(p: float) -> None:
    torch.manual_seed(1)
    x = torch.randn(10_000).abs() + 0.5  # no zeros of its own
    out = Dropout(p).train()(x)
    kept = out != 0
    scale = LEVELS / (LEVELS - round(p * LEVELS))
    torch.testing.assert_close(out[kept], x[kept] * scale)
    assert 0 < int(kept.sum()) < x.numel()


def test_gradient_is_the_mask_times_the_scale() -> None:
    torch.manual_seed(2)
    drop = Dropout(0.2).train()
    x = torch.randn(64, 32, requires_grad=True)
    out = drop(x)
    g = torch.randn(64, 32)
    out.backward(g)
    keep = (out != 0).float()
    scale = LEVELS / (LEVELS - round(0.2 * LEVELS))
    torch.testing.assert_close(x.grad, g * keep * scale)


def test_eval_mode_p_zero_and_p_one() -> None:
    x = torch.randn(8, 16)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert torch.count_nonzero(Dropout(1.0).train()(x)) == 0
    assert "p=0.3" in repr(Dropout(0.3))


def test_the_model_uses_it() -> None:
    from translator.model.transformer import build_transformer

    model = build_transformer(10, 10, 8, 8, d_model=16, N=1, h=2, d_ff=32, dropout=0.1)
    assert any(isinstance(m, Dropout) for m in model.modules())
