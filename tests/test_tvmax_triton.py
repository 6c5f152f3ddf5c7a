"""TVMax's Triton kernel (the GPU's FISTA iterations), run by Triton's interpreter on the CPU: the same iterates as the
tensor operations, and a prox through it within 1e-6 of the certified exact prox. (On a GPU, tests/test_cuda.py
runs it compiled.) The interpreter is chosen when Triton is imported, so each check runs in a fresh process."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="Triton is not installed")

ROOT = Path(__file__).resolve().parent.parent

ITERATES = """
import importlib, json, torch
from sparse_detector.attention.tvmax_triton import fista_steps
tv = importlib.import_module("sparse_detector.attention.tvmax")
errors = []
for height, width, masked in [(1, 6, False), (5, 7, False), (4, 9, True), (25, 34, False)]:
    generator = torch.Generator().manual_seed(height * width)
    z = torch.randn(3, height * width, dtype=torch.float64, generator=generator)
    valid = torch.rand(3 if masked else 1, height * width, generator=generator) > (0.3 if masked else -1)
    bounds = tv._edge_bounds(valid, width, 0.4, z.dtype)
    start = (tuple(z.new_zeros(3, b.shape[1]) for b in bounds),) * 2 + (z.new_ones(3, 1),)
    warm = tv._fista_steps(z, *start, bounds, width, tv.tvmax_cpu.STEP, 7)  # momentum and restarts under way
    for state in (start, warm):
        ours = fista_steps(z, *state, bounds, width, tv.tvmax_cpu.STEP, 12)
        reference = tv._fista_steps(z, *state, bounds, width, tv.tvmax_cpu.STEP, 12)
        flat = lambda s: torch.cat([*s[0], *s[1], s[2]], 1)
        errors.append((flat(ours) - flat(reference)).abs().max().item())
print(json.dumps(errors))
"""

PROX = """
import importlib, json, numpy as np, torch
from tests.test_tvmax import _exact_prox, _full_grid_bounds
tv = importlib.import_module("sparse_detector.attention.tvmax")
tv._uses_triton = lambda z: True
errors = []
for height, width, scale in [(3, 4, 1.0), (9, 13, 3.0)]:
    z, exact = _exact_prox(height, width, 0.1, scale, seed=height * width)
    prox = tv._tv_prox(torch.from_numpy(z)[None], _full_grid_bounds(height, width, 0.1), width)[0].numpy()
    errors.append(float(np.abs(prox - exact).max()))
print(json.dumps(errors))
"""


def _interpreted(script: str) -> list[float]:
    """The JSON list the script prints, run under Triton's interpreter in a fresh process."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_kernel_iterates_equal_the_tensor_operations() -> None:
    """12 iterations from a cold and a warm start (momentum, restarts), on full and masked grids (per-map bounds),
    float64: the kernel's duals, momentum point and t equal the tensor operations' to rounding."""
    assert max(_interpreted(ITERATES)) <= 1e-13


def test_prox_through_the_kernel_matches_the_exact_prox() -> None:
    """The whole prox with the kernel's iterations between the tensor path's gap checks, float64."""
    assert max(_interpreted(PROX)) <= 1e-6
