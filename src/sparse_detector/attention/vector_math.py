"""exp and log in float64 as plain arithmetic, so that numba's loops over them compile to SIMD code.

Written by hand because numba vectorises ``math.exp``/``math.log`` only with Intel's SVML, and the llvmlite wheels
on PyPI are built without it (``llvmlite.binding.targets.has_svml()`` is False): each call is then a scalar libm
call (~25 ns here), while the same formulas as arithmetic on bits, inlined in a loop, run 8 lanes at a time
(AVX-512) at a few ns per entry. Both are accurate to a few ulp of float64 over their whole range (tested against
numpy), so the kernels that use them stay exact to float64 rounding:

* exp: x = k·ln 2 + r with |r| ≤ ln 2 / 2 (ln 2 split in two parts, Cody–Waite), e^r by its Taylor series to
  degree 13, and 2^k by writing k into the exponent bits;
* log: x = 2^e·m with m in [√½, √2) read from the bits, log m = 2 atanh(f / (2 + f)), f = m − 1, by its series.

The helpers take their own fast-math flags (contraction only: reassociation would undo the split of ln 2, and a
numba function without flags inherits its caller's); the loops calling them may reassociate. numba's on-disk cache
of a kernel does not see edits to this file: after changing it, delete the ``__pycache__`` ``*.nbi``/``*.nbc``
files of :mod:`.entmax_cpu`.
"""

from __future__ import annotations

import math

import numba
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

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


@intrinsic
def float_bits(typingctx, x):  # noqa: ANN001, ANN201 (numba's intrinsic signature)
    """The bits of a float64 as an int64 (a bit cast, which numba has no scalar operation for)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], ir.IntType(64))

    return types.int64(types.float64), codegen


@intrinsic
def bits_float(typingctx, x):  # noqa: ANN001, ANN201 (numba's intrinsic signature)
    """The float64 with the bits of an int64 (inverse of :func:`float_bits`)."""
    if x != types.int64:
        return None

    def codegen(context, builder, signature, args):  # noqa: ANN001, ANN202
        return builder.bitcast(args[0], ir.DoubleType())

    return types.float64(types.int64), codegen


@numba.njit(nogil=True, fastmath={"contract"}, error_model="numpy")
def exp(x: float) -> float:
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
    result = poly * bits_float((numba.int64(k) + EXPONENT_BIAS) << MANTISSA_BITS)  # · 2^k, −1021 ≤ k ≤ 1023
    result = 0.0 if x < EXP_LOW else result
    return math.inf if x > EXP_HIGH else (x if x != x else result)


@numba.njit(nogil=True, fastmath={"contract"}, error_model="numpy")
def log(x: float) -> float:
    """ln x for float64 x > 0, a few ulp; arguments below LOG_LOW (including 0 and subnormals) give ln LOG_LOW.

    +inf and NaN are not handled (the kernels never pass them).
    """
    bits = float_bits(max(x, LOG_LOW))
    exponent = (bits >> MANTISSA_BITS) - EXPONENT_BIAS
    mantissa = bits_float((bits & MANTISSA_MASK) | ONE_BITS)  # in [1, 2)
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
