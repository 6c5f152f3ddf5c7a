"""Sparse attention maps: agreement with the ``entmax`` library (float64 reference), exactness, gradients, padding."""

from __future__ import annotations

from pathlib import Path

import entmax
import pytest
import torch
from torch import Tensor
from torch.autograd import gradcheck

from sparse_detector.attention import (
    AlphaEntmax,
    Entmax15,
    KeyGrid,
    MultiheadAttention,
    Sparsemax,
    TVMax,
    entmax15,
    entmax_alpha,
    functional,
    get_activation,
    softmax,
    sparsemax,
    tvmax,
)

F64 = torch.float64


@pytest.fixture(autouse=True, params=["cpu-kernels", "tensor-ops"])
def implementation(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Every test runs on each implementation: the compiled CPU loops and the tensor operations used on GPUs."""
    monkeypatch.setattr(functional, "CPU_KERNELS", request.param == "cpu-kernels")
    return request.param


SHAPES = [(1,), (3, 1), (4, 7), (2, 3, 33), (2, 5, 850)]


def _reference(name: str, x: Tensor, alpha: float = 1.5) -> Tensor:
    if name == "sparsemax":
        return entmax.sparsemax(x, dim=-1)
    if name == "entmax15":
        return entmax.entmax15(x, dim=-1)
    return entmax.entmax_bisect(x, alpha, dim=-1, n_iter=100)


def _ours(name: str, x: Tensor, alpha: float = 1.5, mask: Tensor | None = None) -> Tensor:
    if name == "sparsemax":
        return sparsemax(x, mask=mask)
    if name == "entmax15":
        return entmax15(x, mask=mask)
    return entmax_alpha(x, alpha, mask=mask)


MAPS = ["sparsemax", "entmax15", "alpha"]


def _inputs(shape: tuple[int, ...], scale: float, ties: bool) -> Tensor:
    x = torch.randn(shape, dtype=F64)
    if ties:  # many exact ties, including at the top of the row
        x = x.mul(2).round()
    return x * scale


@pytest.mark.parametrize("name", MAPS)
@pytest.mark.parametrize("scale", [1.0, 1e3, 1e-3])
@pytest.mark.parametrize("ties", [False, True])
def test_matches_entmax_library(name: str, scale: float, ties: bool) -> None:
    for shape in SHAPES:
        x = _inputs(shape, scale, ties)
        for alpha in (1.25, 1.5, 1.8) if name == "alpha" else (1.5,):
            ours = _ours(name, x, alpha)
            # measured: <= 2e-15 (float64, both implementations)
            assert (ours - _reference(name, x, alpha)).abs().max() <= 1e-13, (shape, alpha)
            assert torch.allclose(ours.sum(-1), torch.ones((), dtype=F64), atol=1e-12)
            assert (ours >= 0).all()


SCORE_SCALES = {"near-uniform": 0.1, "normal": 1.0, "peaked": 3.0}  # N(0, σ²) scores of DETR's attention
ALPHAS = [1.01, 1.05, 1.1, 1.3, 1.5, 1.7, 2.0]


@pytest.mark.parametrize("scores", list(SCORE_SCALES))
@pytest.mark.parametrize("dtype", [F64, torch.float32])
def test_every_alpha_matches_library_on_attention_scores(scores: str, dtype: torch.dtype) -> None:
    """α from the softmax limit to sparsemax, as a float and as a tensor per head (the learnable α's general path),
    on rows of 850 keys as DETR's cross-attention sees them, against the library in float64 (p and its gradients)."""
    x = torch.randn(len(ALPHAS), 6, 850, dtype=F64) * SCORE_SCALES[scores]
    grad = torch.randn_like(x)
    alphas = torch.tensor(ALPHAS, dtype=F64).view(-1, 1, 1)
    ref_x, ref_alpha = x.clone().requires_grad_(), alphas.clone().requires_grad_()
    reference = entmax.entmax_bisect(ref_x, ref_alpha.expand(-1, 6, 1), dim=-1, n_iter=100)
    reference.backward(grad)
    ours_x, ours_alpha = x.to(dtype).requires_grad_(), alphas.to(dtype).requires_grad_()
    ours = entmax_alpha(ours_x, ours_alpha)
    ours.backward(grad.to(dtype))
    # measured: 1.2e-14 (float64), 3.9e-7 (float32 inputs: the rounding of the scores themselves)
    tolerance = 1e-13 if dtype == F64 else 2e-6
    assert (ours.double() - reference).abs().max() <= tolerance
    assert (ours.sum(-1) - 1).abs().max() <= (1e-12 if dtype == F64 else 1e-6)
    if dtype == F64:
        assert (ours_x.grad - ref_x.grad).abs().max() <= 1e-11  # measured: 1.4e-13
        assert ((ours_alpha.grad - ref_alpha.grad) / ref_alpha.grad.abs().clamp(min=1)).abs().max() <= 1e-10  # 1.4e-12
    for row, alpha in enumerate(ALPHAS):  # the float-α solves (closed forms at 1.5 and 2)
        assert (entmax_alpha(x[row].to(dtype), alpha).double() - reference[row]).abs().max() <= tolerance, alpha


def test_learnable_alpha_at_two_is_sparsemax_on_many_near_uniform_rows() -> None:
    """A per-head α tensor of 2 (a learnable α at its upper end), float32, DETR's 1600 decoder rows of near-uniform
    scores: sparsemax within the rounding of float32 scores. (Its threshold steps are Michelot's, which do not
    converge quadratically: a solve stopped on the step's size alone was off by 7e-6 in one row.)"""
    x = torch.randn(2, 8, 100, 850, generator=torch.Generator().manual_seed(2)) * 0.1
    ours = entmax_alpha(x, torch.full((1, 8, 1, 1), 2.0))
    assert (ours.double() - entmax.sparsemax(x.double(), dim=-1)).abs().max() <= 2e-6


def test_entmax15_rows_sum_to_one_on_long_flat_rows() -> None:
    """fp32, n = 5000, near-constant scores: the closed form may be rejected, and the rows still sum to 1."""
    x = torch.randn(64, 5000) * 0.01
    assert (entmax15(x).double().sum(-1) - 1).abs().max() <= 1e-6


def test_alpha_tensor_per_head_matches_library() -> None:
    x = torch.randn(2, 4, 5, 40, dtype=F64)
    alpha = torch.tensor([1.1, 1.4, 1.7, 2.0], dtype=F64).view(1, 4, 1, 1)
    ours = entmax_alpha(x, alpha)
    ref = entmax.entmax_bisect(x, alpha.expand(2, 4, 5, 1), dim=-1, n_iter=100)
    assert (ours - ref).abs().max() <= 1e-13  # measured: 2e-16


@pytest.mark.parametrize("name", MAPS)
def test_masked_rows_match_cropped_rows(name: str) -> None:
    """−inf masking: a masked row equals the map of its valid entries alone; masked entries are exactly 0."""
    x = torch.randn(6, 30, dtype=F64)
    mask = torch.rand(6, 30) < 0.4
    mask[0] = True  # fully padded row
    mask[1] = False
    mask[2, 1:] = True  # a single valid key
    out = _ours(name, x, mask=mask)
    assert not out.isnan().any()
    assert (out[mask] == 0).all()
    assert (out[0] == 0).all()
    assert out[2, 0] == 1
    for row in range(1, 6):
        valid = ~mask[row]
        expected = _reference(name, x[row, valid])
        assert (out[row, valid] - expected).abs().max() <= 1e-6


def test_relations_between_maps() -> None:
    x = _inputs((3, 4, 60), 1.0, ties=False)
    two, three_halves = torch.tensor(2.0, dtype=F64), torch.tensor(1.5, dtype=F64)
    # tensor α takes the general Newton path, float α ∈ {1.5, 2} the closed-form one
    assert (entmax_alpha(x, two) - sparsemax(x)).abs().max() <= 1e-12
    assert (entmax_alpha(x, three_halves) - entmax15(x)).abs().max() <= 1e-12
    assert (entmax_alpha(x, 1.001) - torch.softmax(x, -1)).abs().max() <= 5e-3


def test_exact_zeros_and_sparsity() -> None:
    x = torch.randn(50, 100)
    for out in (sparsemax(x), entmax15(x), entmax_alpha(x, 1.3)):
        assert (out == 0).any(dim=-1).all()  # sparse rows, exact zeros
        assert torch.allclose(out.sum(-1), torch.ones(()), atol=1e-5)


def test_dim_argument() -> None:
    x = torch.randn(3, 9, 4, dtype=F64)
    for f in (softmax, sparsemax, entmax15, lambda v, dim: entmax_alpha(v, 1.3, dim=dim)):
        assert torch.allclose(f(x, dim=1), f(x.transpose(1, 2).contiguous(), dim=-1).transpose(1, 2), atol=1e-12)


def test_input_mistakes_are_clear_errors() -> None:
    """Integer scores were silently truncated to an integer map, a mask larger than the scores silently enlarged the
    output, and float masks or misshaped masks and α tensors failed deep inside with shapes of internal tensors."""
    x = torch.randn(2, 3, 4, 5)
    maps = [
        softmax,
        sparsemax,
        entmax15,
        lambda v, **k: entmax_alpha(v, 1.3, **k),
        lambda v, **k: tvmax(v, (1, 5), 0.1, **k),
    ]
    for f in maps:
        with pytest.raises(TypeError, match="floating-point"):
            f(torch.arange(10).view(2, 5))
        with pytest.raises(TypeError, match="mask must be a bool tensor"):
            f(x, mask=torch.zeros(5))
        for shape in [(3,), (2, 2, 3, 4, 5), (2, 3, 4, 2)]:
            with pytest.raises(ValueError, match=r"mask of shape .* does not broadcast to the scores' shape"):
                f(x, mask=torch.zeros(shape, dtype=torch.bool))
        with pytest.raises(IndexError, match="dim 4 is out of range"):
            f(x, dim=4)
        for shape in [(5,), (1, 3, 1, 1), (2, 3, 4, 5)]:  # every shape that broadcasts is still taken
            assert f(x, mask=torch.zeros(shape, dtype=torch.bool)).shape == x.shape
    for shape in [(3,), (1, 3, 1, 5), (2, 2, 3, 4, 1)]:
        with pytest.raises(ValueError, match=r"alpha of shape .* size 1 along dim -1"):
            entmax_alpha(x, torch.full(shape, 1.5))
    assert entmax_alpha(x, torch.full((3, 1, 1), 1.5)).shape == x.shape
    assert entmax_alpha(x[:0], torch.full((0, 3, 4, 1), 1.5)).shape == (0, 3, 4, 5)  # no rows, no α
    for mask in (torch.zeros(3, 4, dtype=torch.bool), torch.zeros(1, 3, 4)):
        with pytest.raises(ValueError, match=r"from_mask takes a \(B, H, W\) bool padding mask"):
            KeyGrid.from_mask(mask)


def test_empty_inputs() -> None:
    maps = [softmax, sparsemax, entmax15, lambda v: entmax_alpha(v, 1.3)]
    for x in (torch.randn(3, 0, requires_grad=True), torch.randn(0, 12, requires_grad=True)):
        for f in maps if x.shape[-1] == 0 else [*maps, lambda v: tvmax(v, (3, 4), 0.1)]:
            out = f(x)
            assert out.shape == x.shape
            out.sum().backward()


def test_gradcheck() -> None:
    x = torch.randn(2, 3, 7, dtype=F64, requires_grad=True)
    mask = torch.zeros(2, 3, 7, dtype=torch.bool)
    mask[0, 1, :4] = True
    mask[1, 2] = True  # fully padded row: zero gradient
    alpha = (1.1 + 0.8 * torch.rand(1, 3, 1, dtype=F64)).requires_grad_()  # one α per "head"
    assert gradcheck(lambda v: sparsemax(v, mask=mask), (x,))
    assert gradcheck(lambda v: entmax15(v, mask=mask), (x,))
    assert gradcheck(lambda v, a: entmax_alpha(v, a, mask=mask), (x, alpha))
    assert gradcheck(lambda v: entmax_alpha(v, 1.3), (x,))


def test_second_derivative_is_a_clear_error() -> None:
    """A hessian through a sparse map used to come out silently zero (once_differentiable detaches the backward's
    result); now it raises, while first-order gradients under create_graph=True still work."""
    x = torch.randn(3, 6, dtype=F64, requires_grad=True)
    alpha = torch.tensor(1.3, dtype=F64, requires_grad=True)
    maps = [sparsemax, entmax15, lambda v: entmax_alpha(v, alpha), lambda v: tvmax(v, (2, 3), 0.1)]
    for f in maps:
        with pytest.raises(RuntimeError, match="first-order gradients only"):
            torch.autograd.functional.hessian(lambda v: f(v).pow(2).sum(), x)  # noqa: B023
        (grad,) = torch.autograd.grad(f(x).pow(2).sum(), x, create_graph=True)
        with pytest.raises(RuntimeError, match="second derivative"):
            torch.autograd.grad(grad.square().sum(), x)
        assert not grad.isnan().any()


def test_gradients_match_entmax_library() -> None:
    """The closed-form backward, including ∂/∂α, equals the library's EntmaxBisectFunction backward."""
    x = torch.randn(2, 3, 4, 15, dtype=F64)
    grad = torch.randn_like(x)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours_alpha = torch.tensor([1.2, 1.5, 1.8], dtype=F64).view(1, 3, 1, 1).requires_grad_()
    ref_alpha = ours_alpha.detach().clone().requires_grad_()
    entmax_alpha(ours_x, ours_alpha).backward(grad)
    entmax.entmax_bisect(ref_x, ref_alpha.expand(2, 3, 4, 1), dim=-1, n_iter=100).backward(grad)
    assert (ours_x.grad - ref_x.grad).abs().max() <= 1e-9
    assert (ours_alpha.grad - ref_alpha.grad).abs().max() <= 1e-9


def test_alpha_near_one_matches_library() -> None:
    """α near 1 (the support is the whole row, the solve starts from softmax's moments), tightly, in float64."""
    x = torch.randn(2, 3, 3, 60, dtype=F64) * 3
    grad = torch.randn_like(x)
    ours_x, ref_x = x.clone().requires_grad_(), x.clone().requires_grad_()
    ours_alpha = torch.tensor([1.01, 1.05, 1.1], dtype=F64).view(1, 3, 1, 1).requires_grad_()
    ref_alpha = ours_alpha.detach().clone().requires_grad_()
    ours = entmax_alpha(ours_x, ours_alpha)
    ref = entmax.entmax_bisect(ref_x, ref_alpha.expand(2, 3, 3, 1), dim=-1, n_iter=100)
    assert (ours - ref).abs().max() <= 1e-9
    ours.backward(grad)
    ref.backward(grad)
    assert (ours_x.grad - ref_x.grad).abs().max() <= 1e-9
    assert ((ours_alpha.grad - ref_alpha.grad).abs() / ref_alpha.grad.abs()).max() <= 1e-6


def test_fully_padded_rows_have_zero_output_and_gradient() -> None:
    scores = torch.randn(2, 2, 3, 12, requires_grad=True)
    key_padding_mask = torch.zeros(2, 12, dtype=torch.bool)
    key_padding_mask[1] = True
    grid = KeyGrid((3, 4), torch.tensor([[3, 4], [0, 0]]))
    modules = [Sparsemax(), Entmax15(), AlphaEntmax(num_heads=2), TVMax(0.1), get_activation("softmax")]
    for module in modules:
        out = module(scores, key_padding_mask, grid)
        assert not out.isnan().any()
        assert (out[1] == 0).all()
        assert torch.allclose(out[0].sum(-1), torch.ones(()), atol=1e-5)
        out.mul(torch.randn_like(out)).sum().backward()
        assert not scores.grad.isnan().any()
        assert (scores.grad[1] == 0).all()
        scores.grad = None


def test_nan_and_posinf_scores_give_nan_rows() -> None:
    """A NaN or +inf score is not dropped silently: its row comes out NaN, so a non-finite loss is caught."""
    x = torch.randn(5, 40)
    x[1, 5] = float("nan")
    x[3, 7] = float("inf")
    x[4, 2:9] = float("inf")
    for f in (sparsemax, entmax15, lambda v: entmax_alpha(v, 1.3), lambda v: tvmax(v, (5, 8), 0.1), softmax):
        out = f(x)
        assert out[[1, 3, 4]].isnan().all()
        assert not out[[0, 2]].isnan().any()
    # the modules too, with a key padding mask (the softmax module used to turn these rows into zeros)
    scores, key_padding_mask = x.view(1, 1, 5, 40), torch.zeros(1, 40, dtype=torch.bool)
    key_padding_mask[0, 30:] = True
    for name in ("softmax", "sparsemax", "entmax15"):
        out = get_activation(name)(scores, key_padding_mask)[0, 0]
        assert out[[1, 3, 4]][:, :30].isnan().all()
        assert not out[[0, 2]].isnan().any()


def test_low_precision_computes_in_fp32() -> None:
    x = torch.randn(2, 4, 10, 50)
    grid = (5, 10)
    functions = [
        softmax,
        sparsemax,
        entmax15,
        lambda v: entmax_alpha(v, 1.3),
        lambda v: tvmax(v, grid, 0.1),
    ]
    for f in functions:
        low = x.bfloat16()
        out = f(low)
        assert out.dtype == torch.bfloat16
        assert torch.equal(out, f(low.float()).bfloat16())
        with torch.autocast("cpu", dtype=torch.bfloat16):
            auto = f(x)
        assert auto.dtype == torch.float32
        assert torch.equal(auto, f(x))
        assert f(x.double()).dtype == F64


def test_alpha_entmax_module() -> None:
    module = AlphaEntmax(num_heads=3, alpha_init=1.3)
    assert module.pre_alpha.shape == (3,)
    assert torch.allclose(module.alpha, torch.full((3,), 1.3), atol=1e-6)
    assert not module.alpha.requires_grad
    scores = torch.randn(2, 3, 4, 20, dtype=F64)
    expected = entmax_alpha(scores, module.alpha.to(F64).view(1, 3, 1, 1))
    assert torch.allclose(module(scores), expected, atol=1e-6)
    for bad in (1.0, 1.01, 2.0, 2.5):
        with pytest.raises(ValueError, match="alpha_init"):
            AlphaEntmax(num_heads=2, alpha_init=bad)
    with pytest.raises(ValueError, match="heads"):
        module(torch.randn(1, 2, 3, 4))


def test_learnable_alpha_moves() -> None:
    """A toy loss that prefers sparser maps in head 0 and denser maps in head 1 moves α apart."""
    module = get_activation("alpha_entmax", num_heads=2, alpha_init=1.5)
    optimizer = torch.optim.Adam(module.parameters(), lr=0.1)
    scores = torch.randn(4, 2, 8, 30)
    for _ in range(5):
        p = module(scores)
        loss = -(p[:, 0] ** 2).sum() + (p[:, 1] ** 2).sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    alpha = module.alpha
    assert alpha[0] > 1.6 and alpha[1] < 1.4


def test_registry_and_modules() -> None:
    scores = torch.randn(2, 4, 3, 20)
    key_padding_mask = torch.zeros(2, 20, dtype=torch.bool)
    key_padding_mask[1, 15:] = True
    expected = {
        "sparsemax": sparsemax(scores, mask=key_padding_mask[:, None, None]),
        "entmax15": entmax15(scores, mask=key_padding_mask[:, None, None]),
        "alpha_entmax": entmax_alpha(scores, 1.5, mask=key_padding_mask[:, None, None]),
    }
    for name, target in expected.items():
        module = get_activation(name, num_heads=4) if name == "alpha_entmax" else get_activation(name)
        assert not module.is_softmax
        assert torch.allclose(module(scores, key_padding_mask), target, atol=1e-6)
    assert isinstance(get_activation("tvmax", lam=0.2), TVMax)


def test_module_mistakes_are_clear_errors() -> None:
    """Wrong scores layouts, masks, grids and constructor arguments used to fail deep inside (or, for a NaN λ, give
    uniform maps silently, and for a (1, 2) valid_hw, take one image's grid for the whole batch)."""
    scores = torch.randn(2, 3, 4, 6)
    grid = KeyGrid((2, 3), torch.tensor([[2, 3], [1, 3]]))
    modules = [get_activation("softmax"), Sparsemax(), Entmax15(), AlphaEntmax(num_heads=3), TVMax(0.1)]
    for module in modules:
        with pytest.raises(ValueError, match=r"takes \(B, H, Lq, Lk\) scores"):
            module(scores[0], None, grid)
        for mask in (torch.zeros(2, 5, dtype=torch.bool), torch.zeros(2, 6)):
            with pytest.raises(ValueError, match=r"key_padding_mask must be a \(B, Lk\) = \(2, 6\) bool tensor"):
                module(scores, mask, grid)
        assert module(scores, torch.zeros(2, 6, dtype=torch.bool), grid).shape == scores.shape
    for valid_hw in (torch.tensor([[2, 3]]), torch.tensor([2, 3])):
        with pytest.raises(ValueError, match="valid_hw must be"):
            TVMax(0.1)(scores, None, KeyGrid((2, 3), valid_hw))
    for bad in (0, -1, 2.5, True):
        with pytest.raises(ValueError, match="num_heads must be a positive int"):
            AlphaEntmax(num_heads=bad)
    assert "num_heads=3, alpha=[1.5, 1.5, 1.5]" in repr(AlphaEntmax(num_heads=3))
    with pytest.raises(ValueError, match="lam must be >= 0"):
        TVMax(float("nan"))
    with pytest.raises(ValueError, match="lam must be >= 0"):
        tvmax(scores, (2, 3), float("nan"))
    learnable = torch.tensor(0.3, requires_grad=True)  # used to get no gradient, silently
    with pytest.raises(ValueError, match="lam is not differentiable"):
        tvmax(scores, (2, 3), learnable)
    with pytest.raises(ValueError, match="lam is not differentiable"):
        TVMax(learnable)
    with pytest.raises(ValueError, match="grid_hw must be"):
        tvmax(scores, (1, 2, 3), 0.1)
    with pytest.raises(ValueError, match="'alpha_entmax'.*missing.*num_heads.*it takes \\(num_heads"):
        get_activation("alpha_entmax")
    with pytest.raises(ValueError, match="'sparsemax'.*unexpected keyword.*it takes no arguments"):
        get_activation("sparsemax", lam=0.1)


def test_multihead_attention_mistakes_are_clear_errors() -> None:
    """Sequence-first or misshaped inputs, a float key padding mask and an activation given by name failed deep
    inside (a reshape, masked_fill, or ``'str' object has no attribute 'is_softmax'``)."""
    query, memory = torch.randn(2, 5, 16), torch.randn(2, 7, 16)
    with pytest.raises(TypeError, match=r"get_activation\(name\)"):
        MultiheadAttention(16, 4, activation="sparsemax")
    for dropout in (Sparsemax(), 1.0, -0.1):  # the map given third was taken as dropout and ignored in eval mode
        with pytest.raises(ValueError, match="dropout must be a probability in"):
            MultiheadAttention(16, 4, dropout)
    for activation in (None, Sparsemax()):  # the fused softmax path and the maps' path
        attention = MultiheadAttention(16, 4, activation=activation)
        bad_inputs = [
            (query.transpose(0, 1), memory.transpose(0, 1), memory.transpose(0, 1)),
            (torch.randn(2, 5, 8), memory, memory),
            (query[0], memory[0], memory[0]),
        ]
        for inputs in bad_inputs:
            with pytest.raises(ValueError, match=r"must be batch-first \(B, L, embed_dim\)"):
                attention(*inputs)
        with pytest.raises(ValueError, match="key has 7 entries, value 6"):
            attention(query, memory, memory[:, :6])
        for mask in (torch.zeros(2, 7), torch.zeros(2, 5, dtype=torch.bool)):
            with pytest.raises(ValueError, match=r"key_padding_mask must be a \(B, Lk\) = \(2, 7\) bool tensor"):
                attention(query, memory, memory, mask)
        assert attention(query, memory, memory, torch.zeros(2, 7, dtype=torch.bool))[0].shape == query.shape


def test_readme_python_example_runs() -> None:
    """The README's "In your own model" example runs as written with the package's public names."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("### In your own model", 1)[1]
    code = section.split("```python\n", 1)[1].split("```", 1)[0]
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)  # noqa: S102 - the repository's own README
    assert namespace["weights"].shape == (2, 8, 100, 300)
    assert namespace["out"].shape == (2, 100, 256)


def test_register_activation() -> None:
    """A user's map registers and runs; registering over a built-in name used to replace sparsemax silently, and a
    plain function was accepted and failed only when built."""
    from sparse_detector.attention import AttentionActivation, register_activation
    from sparse_detector.attention.registry import _REGISTRY

    class Scaled(AttentionActivation):
        def forward(self, scores: Tensor, key_padding_mask: Tensor | None = None, key_grid: KeyGrid | None = None):
            return sparsemax(2 * scores, mask=None if key_padding_mask is None else key_padding_mask[:, None, None])

    try:
        register_activation("test_scaled")(Scaled)
        register_activation("test_scaled")(Scaled)  # the same class again (a re-run notebook cell) is fine
        scores = torch.randn(2, 4, 3, 6)
        attention = MultiheadAttention(16, 4, activation=get_activation("test_scaled"))
        assert torch.equal(attention.activation(scores), sparsemax(2 * scores))
        with pytest.raises(ValueError, match="'sparsemax' is already registered.*choose another name"):
            register_activation("sparsemax")(Scaled)
        assert isinstance(get_activation("sparsemax"), Sparsemax)
        with pytest.raises(TypeError, match="decorates AttentionActivation subclasses"):
            register_activation("test_function")(lambda scores: scores)
    finally:
        _REGISTRY.pop("test_scaled", None)


def test_invalid_alpha() -> None:
    x = torch.randn(3, 5)
    for bad in (1.0, 0.5, 2.5):
        with pytest.raises(ValueError, match="alpha"):
            entmax_alpha(x, bad)
    with pytest.raises(ValueError, match="alpha"):
        entmax_alpha(x, torch.tensor([1.5, 1.0, 1.2]).view(3, 1))
