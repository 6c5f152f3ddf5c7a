"""The attention maps and a training step on a CUDA device (skipped without one): the tensor-operation path on the
shapes and score distributions of DETR's attention, against the ``entmax`` library and the exact TV prox in float64
on the CPU, and a tiny DETR step under bf16 autocast with a sparse map at every site."""

from __future__ import annotations

import importlib

import entmax
import numpy as np
import pytest
import torch
from torch import Tensor

from sparse_detector import build_criterion, build_model, load_config
from sparse_detector.attention import entmax15, entmax_alpha, sparsemax, tvmax, tvmax_cpu

from .test_tvmax import _exact_prox

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")

tvmax_module = importlib.import_module("sparse_detector.attention.tvmax")  # the package's `tvmax` is the function

F64 = torch.float64
DECODER_SHAPE = (2, 8, 100, 850)  # batch × heads × queries × keys of DETR-R50's decoder cross-attention
SCALES = [0.1, 1.0, 3.0]  # near-uniform (untrained), normal and peaked (trained) scores
ALPHAS = [1.01, 1.05, 1.1, 1.3, 1.5, 1.7, 2.0]


def _scores(scale: float, seed: int) -> Tensor:
    return torch.randn(DECODER_SHAPE, generator=torch.Generator().manual_seed(seed)) * scale


def _check(ours: Tensor, x: Tensor, reference: Tensor, x_ref: Tensor, dtype: torch.dtype) -> None:
    """The map within 1e-6 (float64) or 2e-6 (float32: the rounding of the scores) of the float64 reference, rows
    summing to 1, and in float64 the scores' gradient within 1e-8 (float32 gradients carry float32 rounding)."""
    assert (ours.detach().cpu().double() - reference.detach()).abs().max() <= (1e-6 if dtype == F64 else 2e-6)
    assert (ours.detach().double().sum(-1) - 1).abs().max() <= (1e-12 if dtype == F64 else 1e-6)
    if dtype == F64:
        assert (x.grad.cpu() - x_ref.grad).abs().max() <= 1e-8


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("name", ["sparsemax", "entmax15"])
def test_fixed_maps_match_the_library(name: str, scale: float, dtype: torch.dtype) -> None:
    """sparsemax and 1.5-entmax on the GPU against the library in float64 on the CPU (see :func:`_check`)."""
    ours_map, library_map = {"sparsemax": (sparsemax, entmax.sparsemax), "entmax15": (entmax15, entmax.entmax15)}[name]
    x = _scores(scale, seed=0).double()
    upstream = torch.randn(DECODER_SHAPE, dtype=F64, generator=torch.Generator().manual_seed(1))
    x_ref = x.clone().requires_grad_()
    library_map(x_ref, dim=-1).backward(upstream)
    x_gpu = x.to("cuda", dtype).requires_grad_()
    ours = ours_map(x_gpu)
    ours.backward(upstream.to("cuda", dtype))
    _check(ours, x_gpu, library_map(x, dim=-1), x_ref, dtype)


@pytest.mark.parametrize("dtype", [F64, torch.float32])
@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("alpha", ALPHAS)
def test_learnable_alpha_entmax_matches_the_library(alpha: float, scale: float, dtype: torch.dtype) -> None:
    """α-entmax with one learnable α per head on the GPU against the library's bisection in float64 on the CPU
    (see :func:`_check`; in float64 also ∂/∂α within 1e-8 relative to max(1, |∂/∂α|))."""
    x = _scores(scale, seed=2).double()
    upstream = torch.randn(DECODER_SHAPE, dtype=F64, generator=torch.Generator().manual_seed(3))
    heads = DECODER_SHAPE[1]
    x_ref = x.clone().requires_grad_()
    alpha_ref = torch.full((1, heads, 1, 1), alpha, dtype=F64, requires_grad=True)
    reference = entmax.entmax_bisect(x_ref, alpha_ref.expand(*x.shape[:-1], 1), dim=-1, n_iter=100)
    reference.backward(upstream)
    x_gpu = x.to("cuda", dtype).requires_grad_()
    alpha_gpu = torch.full((1, heads, 1, 1), alpha, device="cuda", dtype=dtype, requires_grad=True)
    ours = entmax_alpha(x_gpu, alpha_gpu)
    ours.backward(upstream.to("cuda", dtype))
    _check(ours, x_gpu, reference, x_ref, dtype)
    if dtype == F64:
        alpha_error = (alpha_gpu.grad.cpu() - alpha_ref.grad) / alpha_ref.grad.abs().clamp(min=1)
        assert alpha_error.abs().max() <= 1e-8


@pytest.mark.parametrize("scale", SCALES)
def test_tvmax_matches_the_exact_prox(scale: float) -> None:
    """TVMax on DETR's 25 × 34 grid in float64 on the GPU within 1e-6 of sparsemax of the certified exact prox,
    and in float32 within the stated tolerance of the prox (√(2·eps32)·(1 + max|z|), measured on the map)."""
    z, exact = _exact_prox(25, 34, 0.1, scale, seed=25 * 34)
    expected = entmax.sparsemax(torch.from_numpy(exact), dim=-1)
    scores = torch.from_numpy(z).cuda()
    assert (tvmax(scores, (25, 34), 0.1).cpu() - expected).abs().max() <= 1e-6
    bound = (2 * torch.finfo(torch.float32).eps) ** 0.5 * (1 + np.abs(z).max())
    assert (tvmax(scores.float(), (25, 34), 0.1).cpu().double() - expected).norm() <= bound


@pytest.mark.parametrize(("height", "width"), [(25, 34), (50, 67)])  # DETR's grid and DETR-DC5's
def test_tvmax_kernel_iterates_equal_the_tensor_operations(height: int, width: int) -> None:
    """The compiled Triton kernel (FISTA's iterations between gap checks) gives the tensor operations' iterates in
    float64, on full and on masked grids, from a cold and a warm start: no race between its store and load rounds."""
    tvmax_triton = pytest.importorskip("sparse_detector.attention.tvmax_triton", reason="Triton is not installed")
    generator = torch.Generator().manual_seed(height)
    z = torch.randn(64, height * width, dtype=F64, generator=generator).cuda()
    for valid in (torch.ones(1, height * width, dtype=torch.bool), torch.rand(64, height * width) > 0.2):
        bounds = tvmax_module._edge_bounds(valid.cuda(), width, 0.3, F64)
        cold = (tuple(z.new_zeros(64, b.shape[1]) for b in bounds),) * 2 + (z.new_ones(64, 1),)
        warm = tvmax_module._fista_steps(z, *cold, bounds, width, tvmax_cpu.STEP, 25)
        for state in (cold, warm):
            ours = tvmax_triton.fista_steps(z, *state, bounds, width, tvmax_cpu.STEP, 10)
            reference = tvmax_module._fista_steps(z, *state, bounds, width, tvmax_cpu.STEP, 10)
            for a, b in zip((*ours[0], *ours[1], ours[2]), (*reference[0], *reference[1], reference[2]), strict=True):
                assert (a - b).abs().max() <= 1e-12


def test_nonfinite_scores_give_nan_rows() -> None:
    """As on the CPU: a NaN or +inf score makes its row NaN, for every map."""
    x = torch.randn(6, 850, device="cuda")
    x[1, 5] = float("nan")
    x[3, 7] = float("inf")
    alpha = torch.full((6, 1), 1.3, device="cuda")
    for out in (sparsemax(x), entmax15(x), entmax_alpha(x, alpha), tvmax(x, (25, 34), 0.1)):
        assert out[[1, 3]].isnan().all()
        assert not out[[0, 2, 4, 5]].isnan().any()


@pytest.mark.parametrize(
    "maps",
    [
        {"encoder_self": "alpha_entmax", "decoder_self": "sparsemax", "decoder_cross": "tvmax"},
        {"encoder_self": "sparsemax", "decoder_self": "alpha_entmax", "decoder_cross": "entmax15"},
    ],
)
def test_training_step_under_bf16_autocast(maps: dict[str, str]) -> None:
    """A tiny DETR with a sparse map at every site takes a training step on the GPU under bf16 autocast: finite
    losses and gradients everywhere, learnable α included."""
    overrides = [f"model.attention.{site}.activation={name}" for site, name in maps.items()]
    config = load_config("shapes_tiny", overrides=[*overrides, "model.num_classes=3"])
    model, criterion = build_model(config).cuda().train(), build_criterion(config).cuda()
    generator = torch.Generator().manual_seed(0)
    images = [torch.rand(3, 96, 128, generator=generator).cuda(), torch.rand(3, 128, 96, generator=generator).cuda()]
    targets = [
        {
            "labels": torch.tensor([0, 2]).cuda(),
            "boxes": torch.tensor([[0.3, 0.4, 0.2, 0.3], [0.7, 0.6, 0.3, 0.2]]).cuda(),
        },
        {"labels": torch.tensor([1]).cuda(), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]).cuda()},
    ]
    with torch.autocast("cuda", dtype=torch.bfloat16):
        outputs = model(images)
        losses = criterion(outputs, targets)
    total = criterion.total_loss(losses)
    total.backward()
    assert torch.isfinite(total)
    for name, parameter in model.named_parameters():
        if parameter.requires_grad:
            assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
