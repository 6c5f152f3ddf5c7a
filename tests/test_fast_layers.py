"""The CPU fast paths of ``attention.fast_layers`` against ``F.linear`` and ``nn.Dropout``'s semantics."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sparse_detector.attention.fast_layers import Dropout, Linear, linear


@pytest.mark.parametrize("shape", [(16,), (7, 16), (2, 5, 16), (3, 2, 4, 16), (0, 5, 16)])
def test_linear_equals_f_linear_with_gradients(shape):
    torch.manual_seed(0)
    x = torch.randn(shape, requires_grad=True)
    weight = torch.randn(24, 16, requires_grad=True)
    bias = torch.randn(24, requires_grad=True)
    upstream = torch.randn(*shape[:-1], 24)  # (also no rows at all, which a convolution refuses)
    got = linear(x, weight, bias)
    grads = torch.autograd.grad(got, (x, weight, bias), upstream)
    expected = F.linear(x, weight, bias)
    expected_grads = torch.autograd.grad(expected, (x, weight, bias), upstream)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for have, want in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(have, want, rtol=1e-5, atol=1e-5)


def test_linear_module_non_contiguous_input_and_autocast():
    layer = Linear(16, 8)
    x = torch.randn(16, 5).t()  # a transposed view
    torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert layer(x).dtype == torch.bfloat16  # autocast's own F.linear


def test_dropout_keeps_one_minus_p_scaled_and_backpropagates_through_the_mask():
    torch.manual_seed(0)
    layer = Dropout(0.25)
    x = torch.rand(200, 500) + 1.0
    x.requires_grad_(True)
    out = layer(x)
    kept = out != 0
    assert abs(kept.float().mean().item() - 0.75) < 0.01
    torch.testing.assert_close(out[kept], x[kept] / 0.75)
    out.sum().backward()
    torch.testing.assert_close(x.grad, kept.float() / 0.75)
    assert layer.eval()(x) is x
    assert Dropout(0.0).train()(x) is x
    assert not Dropout(1.0)(x).any()
