"""The row sums by which the kernels normalise float32 transition rows.

``row_total(p_data, lo, hi)``: Σ_{lo ≤ j < hi} p_data[j] summed in float64 for float32
storage (``MDP(..., dtype=np.float32)``), and the constant 1.0 for float64 storage,
chosen when Numba types the call (``numba.extending.overload``), so the float64 kernels
compute what they computed before, bit for bit (x / 1.0 = x).

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
