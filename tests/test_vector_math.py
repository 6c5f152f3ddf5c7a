"""The hand-written float64 exp and log of the CPU kernels against numpy, over their whole input range."""

from __future__ import annotations

import numba
import numpy as np

from sparse_detector.attention import vector_math


@numba.njit(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")  # as the kernels call them
def _exp(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = vector_math.exp(x[i])
    return out


@numba.njit(fastmath={"reassoc", "contract", "nsz"}, error_model="numpy")
def _log(x: np.ndarray) -> np.ndarray:
    out = np.empty_like(x)
    for i in range(x.shape[0]):
        out[i] = vector_math.log(x[i])
    return out


def _ulps(ours: np.ndarray, reference: np.ndarray) -> float:
    return float((np.abs(ours - reference) / np.spacing(np.abs(reference))).max())


def test_exp_within_two_ulps_over_its_range() -> None:
    rng = np.random.default_rng(0)
    x = np.concatenate(
        [
            rng.uniform(vector_math.EXP_LOW, vector_math.EXP_HIGH, 200_000),
            rng.uniform(-1.0, 1.0, 100_000),
            rng.uniform(-1e-8, 1e-8, 10_000),
            np.arange(-708.0, 709.0),  # integers: k·ln 2 splits at every exponent
            [0.0, -0.0, vector_math.EXP_LOW, vector_math.EXP_HIGH],
        ]
    )
    assert _ulps(_exp(x), np.exp(x)) <= 2.0
    special = np.array([-np.inf, -1e300, -709.0, 710.0, 1e300, np.inf, np.nan])
    out = _exp(special)
    assert (out[:3] == 0.0).all()
    assert (out[3:6] == np.inf).all()
    assert np.isnan(out[6])


def test_log_within_two_ulps_over_its_range() -> None:
    rng = np.random.default_rng(1)
    x = np.concatenate(
        [
            np.exp(rng.uniform(-708.0, 709.0, 200_000)),
            rng.uniform(0.5, 2.0, 100_000),  # around 1, where log is small
            1.0 + rng.uniform(-1e-6, 1e-6, 10_000),
            [vector_math.LOG_LOW, 1.0, np.sqrt(0.5), np.sqrt(2.0), np.finfo(np.float64).max],
        ]
    )
    reference = np.log(x)
    ours = _log(x)
    assert _ulps(ours[reference != 0.0], reference[reference != 0.0]) <= 2.0
    assert ours[reference == 0.0].tolist() == [0.0] * int((reference == 0.0).sum())
    below = _log(np.array([0.0, 5e-324, 1e-310]))  # zero and subnormals give the log of the smallest normal
    assert (below == vector_math.LOG_MIN).all()


def _f32_ulps(ours: np.ndarray, reference: np.ndarray) -> float:
    """Error in float32 ulps of the float64 ``reference``."""
    return float((np.abs(ours - reference) / np.spacing(np.abs(reference).astype(np.float32))).max())


def test_float32_exp_and_log_within_two_ulps() -> None:
    rng = np.random.default_rng(2)
    x = np.concatenate(
        [rng.uniform(-87.0, 88.0, 200_000), rng.uniform(-1.0, 1.0, 100_000), np.arange(-87.0, 89.0)]
    ).astype(np.float32)
    assert _exp(x).dtype == np.float32
    assert _f32_ulps(_exp(x), np.exp(x.astype(np.float64))) <= 2.0
    special = _exp(np.array([-np.inf, -88.0, 89.0, np.inf, np.nan], dtype=np.float32))
    assert special[:2].tolist() == [0.0, 0.0] and special[2:4].tolist() == [np.inf, np.inf] and np.isnan(special[4])
    y = np.concatenate(
        [np.exp(rng.uniform(-87.0, 88.0, 200_000)), rng.uniform(0.5, 2.0, 100_000), 1.0 + rng.uniform(-1e-6, 1e-6, 100)]
    ).astype(np.float32)
    reference = np.log(y.astype(np.float64))
    ours = _log(y)
    assert ours.dtype == np.float32
    nonzero = reference != 0.0
    assert _f32_ulps(ours[nonzero], reference[nonzero]) <= 2.0
    assert (ours[~nonzero] == 0.0).all()
