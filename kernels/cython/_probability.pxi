# The stored transition probabilities ``p_data``: float64 (the default), or float32 for
# compact storage (``MDP(..., dtype=np.float32)``). Every sum that reads them is a double
# (float * double is computed in double), so only the bytes read change.
# Float32 rows sum to 1 only to float32 rounding (~6e-8): the kernels divide each float32
# row by its double sum (row_total), so the MDP they solve is exactly stochastic to
# double round-off, as the solvers assume (P 1 = 1). For double rows row_total is the
# constant 1.0 (a compile-time branch of the fused type), and x / 1.0 = x: the float64
# kernels compute what they computed before, bit for bit. A gather that reads the row
# anyway sums it in the same loop instead (t = t + data[j], in order: the same total) and
# takes folded_total(data, t): t for float rows, 1.0 for double rows (t then unused).
# Included (not cimported) by every kernel module that reads p_data.
# Mirrors kernels/numba/_probability.py (Numba specialises on the array dtype by itself).

ctypedef fused probability:
    float
    double


cdef inline double row_total(const probability *data, int64_t lo, int64_t hi) noexcept nogil:
    """Σ data[lo:hi] in double for float rows; 1.0 for double rows."""
    cdef double t = 0.0
    cdef int64_t j
    if probability is double:
        return 1.0
    for j in range(lo, hi):
        t = t + data[j]
    return t


cdef inline double folded_total(const probability *data, double t) noexcept nogil:
    """t (the row's sum, accumulated by the gather) for float rows; 1.0 for double rows."""
    if probability is double:
        return 1.0
    return t
