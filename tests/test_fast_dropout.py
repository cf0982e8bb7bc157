"""Byte-mask dropout: its rate (p rounded to 1/256 on the CPU), the scaling of what survives,
its gradient, and eval mode."""

from __future__ import annotations

import pytest
import torch

from translator.model.fast_dropout import Dropout

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("p", [0.1, 0.3, 0.5])
def test_rate_is_p_rounded_to_a_256th(p: float) -> None:
    torch.manual_seed(0)
    n = 4_000_000
    out = Dropout(p).train()(torch.ones(n))
    rate = float((out == 0).float().mean())
    expected = round(p * 256) / 256
    # The binomial standard deviation at n = 4M is <= 0.00025; 0.001 is 4 sigma, and it is
    # narrower than p = 0.1's rounding (26/256 = 0.1016), so a rate of plain p would fail.
    assert rate == pytest.approx(expected, abs=0.001)
    if p == 0.1:
        assert abs(expected - p) > 0.0015
        assert abs(rate - p) > 0.0005


@pytest.mark.parametrize("p", [0.1, 0.3])
def test_survivors_are_scaled_by_the_inverse_keep_probability(p: float) -> None:
    torch.manual_seed(1)
    x = torch.randn(10_000).abs() + 0.5  # no zeros of its own
    out = Dropout(p).train()(x)
    kept = out != 0
    scale = 256 / (256 - round(p * 256))
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
    scale = 256 / (256 - round(0.2 * 256))
    torch.testing.assert_close(x.grad, g * keep * scale)


def test_eval_mode_and_p_zero_are_identity() -> None:
    x = torch.randn(8, 16)
    assert Dropout(0.3).eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert "p=0.3" in repr(Dropout(0.3))
