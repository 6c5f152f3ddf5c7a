"""exp and log in float64 and float32 as plain arithmetic, so that numba's loops over them compile to SIMD code.

Written by hand because numba vectorises ``math.exp``/``math.log`` only with Intel's SVML, and the llvmlite wheels
on PyPI are built without it (``llvmlite.binding.targets.has_svml()`` is False): each call is then a scalar libm
call, while the same formulas as arithmetic on bits, inlined in a loop, run 8 (float64) or 16 (float32) lanes at
a time with AVX-512. Each is accurate to about one ulp of its dtype over its whole range (tested against numpy):

* exp: x = k·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in two parts, Cody–Waite), e^r by its Taylor series (to
  degree 13 in float64, 7 in float32), and 2^k by writing k into the exponent bits;
* log: x = 2^e·m with m in [√½, √2) read from the bits, log m = 2 atanh(f / (2 + f)), f = m − 1, by its series
  (relatively accurate also near x = 1).

:func:`exp` and :func:`log` pick the version of their argument's dtype, :func:`cast_like` converts to a dtype.
The helpers take their own fast-math flags (contraction only: reassociation would undo the split of ln 2, and a
numba function without flags inherits its caller's); the loops calling them may reassociate. numba's on-disk cache
of a kernel does not see edits to this file: after changing it, delete the ``__pycache__`` ``*.nbi``/``*.nbc``
files of :mod:`.entmax_cpu`.
"""

from __future__ import annotations

import functools
import math

import numba
import numpy as np
from numba.core import types
from numba.extending import intrinsic, overload

helper = functools.partial(numba.njit, nogil=True, fastmath={"contract"}, error_model="numpy")

LN2_HIGH = 0.6931471803691238  # ln 2 in 33 bits: k·LN2_HIGH is exact for |k| < 2^20
LN2_LOW = 1.9082149292705877e-10  # ln 2 − LN2_HIGH
# exp's argument range: below it e^x is under float64's smallest normal number (flushed to 0), above it +inf.
EXP_LOW = -708.0
EXP_HIGH = 709.0
# The smallest log argument: normal float64 numbers only (smaller ones are taken as this).
LOG_LOW = 2.2250738585072014e-308
LOG_MIN = math.log(LOG_LOW)  # the smallest log returns
EXPONENT_BIAS = 1023
MANTISSA_BITS = 52
MANTISSA_MASK = (1 << MANTISSA_BITS) - 1
ONE_BITS = EXPONENT_BIAS << MANTISSA_BITS  # the bits of 1.0
SQRT_HALF = 0.7071067811865476

# float32 constants (numba keeps np.float32 globals in float32)
LN2_HIGH_32 = np.float32(0.693359375)  # ln 2 in 9 bits
LN2_LOW_32 = np.float32(-2.12194440e-4)  # ln 2 − LN2_HIGH_32
EXP_LOW_32 = np.float32(-87.0)
EXP_HIGH_32 = np.float32(88.0)
LOG_LOW_32 = np.float32(np.finfo(np.float32).tiny)
SQRT_TWO_32 = np.float32(2 * SQRT_HALF)
LOG2_E_32 = np.float32(1 / math.log(2))
HALF_32 = np.float32(0.5)
ONE_32 = np.float32(1.0)
TWO_32 = np.float32(2.0)
EXP_TAYLOR_32 = tuple(np.float32(1 / math.factorial(i)) for i in range(8))  # 1/i!, i = 0..7
ATANH_SERIES_32 = tuple(np.float32(1 / (2 * i + 1)) for i in range(1, 5))  # 1/3, 1/5, 1/7, 1/9


@intrinsic
def bitcast(typingctx, x):  # noqa: ANN001, ANN201 (numba's intrinsic signature)
    """The bits of x as the other type of its width: float64 ↔ int64, float32 ↔ int32 (numba has no scalar bit
    cast)."""
    target = {
        types.float64: types.int64,
        types.int64: types.float64,
        types.float32: types.int32,
        types.int32: types.float32,
    }.get(x)
    if target is None:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], context.get_value_type(target))

    return target(x), codegen


@helper
def exp64(x: float) -> float:
    """e^x for float64 x, a few ulp; 0 below EXP_LOW (also for −inf), +inf above EXP_HIGH; NaN gives NaN."""
    clamped = min(max(x, EXP_LOW), EXP_HIGH)
    k = math.floor(clamped * 1.4426950408889634 + 0.5)  # round(x / ln 2)
    r = (clamped - k * LN2_HIGH) - k * LN2_LOW
    # e^r, |r| ≤ 0.347: Taylor to degree 13 (remainder < 2e-17), Horner
    poly = 1.0 / 6227020800.0
    poly = poly * r + 1.0 / 479001600.0
    poly = poly * r + 1.0 / 39916800.0
    poly = poly * r + 1.0 / 3628800.0
    poly = poly * r + 1.0 / 362880.0
    poly = poly * r + 1.0 / 40320.0
    poly = poly * r + 1.0 / 5040.0
    poly = poly * r + 1.0 / 720.0
    poly = poly * r + 1.0 / 120.0
    poly = poly * r + 1.0 / 24.0
    poly = poly * r + 1.0 / 6.0
    poly = poly * r + 0.5
    poly = poly * r + 1.0
    poly = poly * r + 1.0
    result = poly * bitcast((numba.int64(k) + EXPONENT_BIAS) << MANTISSA_BITS)  # · 2^k, −1021 ≤ k ≤ 1023
    result = 0.0 if x < EXP_LOW else result
    return math.inf if x > EXP_HIGH else (x if x != x else result)


@helper
def log64(x: float) -> float:
    """ln x for float64 x > 0, a few ulp; arguments below LOG_LOW (including 0 and subnormals) give ln LOG_LOW.

    +inf and NaN are not handled (the kernels never pass them).
    """
    bits = bitcast(max(x, LOG_LOW))
    exponent = (bits >> MANTISSA_BITS) - EXPONENT_BIAS
    mantissa = bitcast((bits & MANTISSA_MASK) | ONE_BITS)  # in [1, 2)
    high = mantissa > 2.0 * SQRT_HALF
    mantissa = mantissa * 0.5 if high else mantissa  # in [√½, √2)
    exponent = exponent + 1 if high else exponent
    f = mantissa - 1.0
    s = f / (2.0 + f)  # |s| ≤ 0.1716
    s2 = s * s
    # 2 atanh(s) = 2s(1 + s²/3 + s⁴/5 + ...), to s²¹ (remainder < 3e-17 relative)
    poly = 1.0 / 21.0
    poly = poly * s2 + 1.0 / 19.0
    poly = poly * s2 + 1.0 / 17.0
    poly = poly * s2 + 1.0 / 15.0
    poly = poly * s2 + 1.0 / 13.0
    poly = poly * s2 + 1.0 / 11.0
    poly = poly * s2 + 1.0 / 9.0
    poly = poly * s2 + 1.0 / 7.0
    poly = poly * s2 + 1.0 / 5.0
    poly = poly * s2 + 1.0 / 3.0
    log_mantissa = f - s * (f - 2.0 * s2 * poly)  # = 2s + 2s³·poly, written so that the leading term stays exact
    e = numba.float64(exponent)
    return e * LN2_HIGH + (log_mantissa + e * LN2_LOW)


@helper
def exp32(x: np.float32) -> np.float32:
    """e^x for float32 x, about one ulp; 0 below EXP_LOW_32 (also −inf), +inf above EXP_HIGH_32; NaN gives NaN."""
    clamped = min(max(x, EXP_LOW_32), EXP_HIGH_32)
    k = np.floor(clamped * LOG2_E_32 + HALF_32)
    r = (clamped - k * LN2_HIGH_32) - k * LN2_LOW_32
    # e^r, |r| ≤ 0.347: Taylor to degree 7 (remainder < 6e-9), Horner
    poly = EXP_TAYLOR_32[7]
    poly = poly * r + EXP_TAYLOR_32[6]
    poly = poly * r + EXP_TAYLOR_32[5]
    poly = poly * r + EXP_TAYLOR_32[4]
    poly = poly * r + EXP_TAYLOR_32[3]
    poly = poly * r + EXP_TAYLOR_32[2]
    poly = poly * r + EXP_TAYLOR_32[1]
    poly = poly * r + EXP_TAYLOR_32[0]
    result = poly * bitcast(np.int32((np.int32(k) + 127) << 23))  # · 2^k, −126 ≤ k ≤ 127
    result = np.float32(0.0) if x < EXP_LOW_32 else result
    return np.float32(math.inf) if x > EXP_HIGH_32 else (x if x != x else result)


@helper
def log32(x: np.float32) -> np.float32:
    """ln x for float32 x > 0, about one ulp; arguments below the smallest normal float32 give its log."""
    bits = bitcast(max(x, LOG_LOW_32))
    exponent = (bits >> 23) - 127
    mantissa = bitcast(np.int32((bits & 0x7FFFFF) | 0x3F800000))  # in [1, 2)
    high = mantissa > SQRT_TWO_32
    mantissa = mantissa * HALF_32 if high else mantissa  # in [√½, √2)
    exponent = exponent + 1 if high else exponent
    f = mantissa - ONE_32
    s = f / (TWO_32 + f)
    s2 = s * s
    # 2 atanh(s) = 2s(1 + s²/3 + ... + s⁸/9) (remainder < 3e-9 relative)
    poly = ATANH_SERIES_32[3]
    poly = poly * s2 + ATANH_SERIES_32[2]
    poly = poly * s2 + ATANH_SERIES_32[1]
    poly = poly * s2 + ATANH_SERIES_32[0]
    log_mantissa = f - s * (f - TWO_32 * s2 * poly)
    e = np.float32(exponent)
    return e * LN2_HIGH_32 + (log_mantissa + e * LN2_LOW_32)


def exp(x: float) -> float:
    """e^x in the precision of x (float32 or float64: :func:`exp32`, :func:`exp64`); for numba code only."""
    raise NotImplementedError("vector_math.exp is for numba-compiled code")


def log(x: float) -> float:
    """ln x in the precision of x (float32 or float64: :func:`log32`, :func:`log64`); for numba code only."""
    raise NotImplementedError("vector_math.log is for numba-compiled code")


def cast_like(x: float, like: float) -> float:
    """``x`` converted to the float type of ``like`` (whose value is not used); for numba code only."""
    raise NotImplementedError("vector_math.cast_like is for numba-compiled code")


def _overload_by_dtype(stub: object, single: object, double: object) -> None:
    """Compile calls of ``stub(x)`` in numba code to ``single(x)`` for a float32 x, ``double(x)`` for a float64."""

    @overload(stub, jit_options={"nogil": True})
    def _typed(x):  # noqa: ANN001, ANN202
        if x == types.float32:
            return lambda x: single(x)
        if x == types.float64:
            return lambda x: double(x)
        return None


_overload_by_dtype(exp, exp32, exp64)
_overload_by_dtype(log, log32, log64)


@overload(cast_like, jit_options={"nogil": True})
def _cast_like(x, like):  # noqa: ANN001, ANN202
    if like == types.float32:
        return lambda x, like: np.float32(x)
    if like == types.float64:
        return lambda x, like: np.float64(x)
    return None
