"""The row sums by which the kernels normalise float32 transition rows.

``row_total(p_data, lo, hi)``: Σ_{lo ≤ j < hi} p_data[j] summed in float64 for float32
storage (``MDP(..., dtype=np.float32)``), and the constant 1.0 for float64 storage,
chosen when Numba types the call (``numba.extending.overload``), so the float64 kernels
compute what they computed before, bit for bit (x / 1.0 = x). A gather that reads the row
anyway sums it in the same loop instead (``t += p_data[j]``, in order: the same total)
and takes ``folded_total(p_data, t)``: t for float32, 1.0 for float64 (t is then unused
and compiled away).

Float32 rows sum to 1 only to float32 rounding (~6e-8). The MDP the kernels solve has
each stored row divided by its float64 sum: exactly stochastic to float64 round-off, as
the solvers assume (Richardson's mass and MacQueen invariants need P 1 = 1).
Mirrors kernels/cython/_probability.pxi.
"""
import numpy as np
from numba import types
from numba.extending import overload


def row_total(p_data, lo, hi):
    """Σ p_data[lo:hi] in float64 for float32 ``p_data``; 1.0 for float64 (jitted only)."""
    raise NotImplementedError("row_total is only callable from Numba-jitted code")


@overload(row_total, jit_options={"cache": True})
def _row_total(p_data, lo, hi):
    if isinstance(p_data, types.Array) and p_data.dtype == types.float64:
        return lambda p_data, lo, hi: 1.0

    def total(p_data, lo, hi):
        t = 0.0
        for j in range(lo, hi):
            t += np.float64(p_data[j])
        return t

    return total


def folded_total(p_data, t):
    """t (the row's sum, accumulated by the gather) for float32 ``p_data``; 1.0 for float64."""
    raise NotImplementedError("folded_total is only callable from Numba-jitted code")


@overload(folded_total, jit_options={"cache": True})
def _folded_total(p_data, t):
    if isinstance(p_data, types.Array) and p_data.dtype == types.float64:
        return lambda p_data, t: 1.0
    return lambda p_data, t: t
