"""The assembled matrix A = I − γP_π of one policy, and Gauss–Seidel sweeps on it.

``merge_pattern``:    per row i the distinct off-diagonal successors, j < i in
                      [indptr[i], mid[i]), j > i after; ``pos``: the slot of each entry of
                      P (``nnz + s`` for the diagonal of state s); returns nnz
``assemble_values``:  ``data`` (nnz + n_states,) = −γ Σ π P per slot, ``diag`` = 1 − γ (P_π)_ss
``assemble_deterministic``: both at once for a deterministic policy (state s's pair
                      ``pairs[s]``), straight from P, bit for bit the same; returns nnz
``patch_deterministic``: the same from another deterministic policy's matrix (``old_*``)
                      differing in the sorted states ``changed``: their rows anew, the
                      others copied in blocks; bit for bit ``assemble_deterministic``
``distinct_pairs_bound``: a lower bound on the undirected edges of the pattern (``indptr``,
                      ``indices``): entries i < j, plus j < i whose mirror is surely absent
                      from a one-hash Bloom filter ``bits`` (2^(64 − ``shift``) bits, scratch)
``sgs_bicgstab``:     BiCGSTAB steps on the ``sgs_operator`` system (state [ρ, α, ω, rel,
                      best rel, ‖b̂‖, status] in and out; see kernels/numba/assembled.py)
``split_matvec``:     out = B_part x (``diag`` = E)
``triangular_solve``: out = B_part⁻¹ x (part 1 or 2; ``out`` may be ``x``; ``dinv`` = 1/E)
``sgs_operator``:     out = E (E + L_B)⁻¹ B (E + U_B)⁻¹ x (Eisenstat's trick; ``diag`` = E,
                      ``dinv`` = 1/E, ``kdiag`` = D − 2E; ``t`` scratch)
``sgs_start``:        b_hat = E (E + L_B)⁻¹ b, y = (E + U_B) x and out = Â y = E (x + (E +
                      L_B)⁻¹ (y + K x)) (the warm start of ``fastppo._krylov.sgs``; one pass
                      for B = A; see kernels/numba/assembled.py)

B = A (``transpose`` 0) or Aᵀ (1) = D + L_B + U_B; ``part`` 0: B, 1: E + L_B, 2: E + U_B
for a diagonal E (E = D/ω in the SSOR sweeps). ``near`` (the sweeps: triangular_solve,
and those in sgs_operator, sgs_start, sgs_bicgstab): bits NEAR_LOWER / NEAR_UPPER where
most rows' lower part ends with column i − 1 / upper part starts with i + 1
(``fastppo._assembled.near_parts``: gridworlds, queues). Such a sweep takes the row it
solved just before from a register instead of through the store just made, which sits
on the serial path from row to row; the same sums in the same order. Without the bit, a
sweep is the plain loop (on the pendulum grid, where 3 % of rows have the neighbour
there, the check cost its SGS operator 10–45 %).
Serial (``n_threads`` is ignored). Mirrors kernels/numba/assembled.py (whose sweeps
ignore ``near``).
"""
from libc.math cimport sqrt
from libc.stdint cimport int32_t, int64_t, uint64_t

include "_probability.pxi"


cdef enum:
    # ``near`` bits of the sweeps (fastppo._assembled.near_parts)
    NEAR_LOWER = 1  # row i's lower part may end with column i − 1
    NEAR_UPPER = 2  # its upper part may start with i + 1


cdef inline int64_t _merge_row(const int32_t[::1] p_indices, int64_t first, int64_t last,
                               Py_ssize_t s, int64_t nnz, int64_t[::1] mid,
                               int32_t[::1] indices, int64_t[::1] mark) noexcept nogil:
    """Row s of the pattern from the entries first <= j < last of P: its distinct
    off-diagonal columns appended at indices[nnz:], those < s first (mid[s] the split),
    mark[c] = the slot of column c; returns the new nnz."""
    cdef int64_t start = nnz, j, c, lo, hi, t
    cdef int32_t ci
    for j in range(first, last):
        c = p_indices[j]
        if c != s and mark[c] < start:  # first time in this row (positions only grow)
            mark[c] = nnz
            indices[nnz] = <int32_t>c
            nnz = nnz + 1
    lo = start  # partition: columns < s first (two pointers)
    hi = nnz - 1
    while True:
        while lo <= hi and indices[lo] < s:
            lo = lo + 1
        while lo <= hi and indices[hi] > s:
            hi = hi - 1
        if lo >= hi:
            break
        ci = indices[lo]
        indices[lo] = indices[hi]
        indices[hi] = ci
    mid[s] = lo
    for t in range(start, nnz):
        mark[indices[t]] = t
    return nnz


def merge_pattern(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                  const int32_t[::1] p_indices,                                    # IN
                  int64_t[::1] indptr, int64_t[::1] mid, int32_t[::1] indices,
                  int64_t[::1] pos, int64_t[::1] mark, int n_threads):             # OUT
    """merge_pattern(a_indptr, p_indptr, p_indices, indptr, mid, indices, pos, mark,
    n_threads) -> nnz"""
    cdef Py_ssize_t n_states = mark.shape[0], s
    cdef int64_t nnz = 0, j, c
    with nogil:
        for s in range(n_states):
            mark[s] = -1
        indptr[0] = 0
        for s in range(n_states):
            nnz = _merge_row(p_indices, p_indptr[a_indptr[s]], p_indptr[a_indptr[s + 1]], s,
                             nnz, mid, indices, mark)
            indptr[s + 1] = nnz
            for j in range(p_indptr[a_indptr[s]], p_indptr[a_indptr[s + 1]]):
                c = p_indices[j]
                pos[j] = -1 - s if c == s else mark[c]
        for j in range(pos.shape[0]):  # the diagonal of state s: slot nnz + s
            if pos[j] < 0:
                pos[j] = nnz - 1 - pos[j]
    return nnz


def assemble_values(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                    const probability[::1] p_data, const int64_t[::1] pos, const double[::1] pi,
                    double gamma,                                                  # IN
                    double[::1] data, double[::1] diag, int n_threads):            # OUT
    """assemble_values(a_indptr, p_indptr, p_data, pos, pi, gamma, data, diag, n_threads)"""
    cdef Py_ssize_t n_states = diag.shape[0], s
    cdef Py_ssize_t nnz = data.shape[0] - n_states
    cdef int64_t k, j
    cdef double w
    with nogil:
        for j in range(data.shape[0]):
            data[j] = 0.0
        for s in range(n_states):
            for k in range(a_indptr[s], a_indptr[s + 1]):
                w = pi[k] / row_total(&p_data[0], p_indptr[k], p_indptr[k + 1])
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    data[pos[j]] += w * p_data[j]
        for j in range(nnz):
            data[j] = -gamma * data[j]
        for s in range(n_states):
            diag[s] = 1.0 - gamma * data[nnz + s]


cdef inline int64_t _sorted_row(const int32_t *p_indices, const probability *p_data,
                                int64_t first, int64_t last, Py_ssize_t s, int64_t start,
                                double w, double gamma, int64_t *mid, int32_t *indices,
                                double *data, double *diag) noexcept nogil:
    """Row s of A from the entries first <= j < last of P when their columns increase:
    appended at indices[start:] and data[start:] (−γ w P), mid[s] and diag[s] set;
    returns the new nnz, or −1 (nothing valid written) when a column does not increase."""
    cdef int64_t nnz = start, lower = start, prev = -1, j, c
    cdef double self_loop = 0.0
    for j in range(first, last):
        c = p_indices[j]
        if c <= prev:
            return -1
        prev = c
        if c == s:
            self_loop = self_loop + w * p_data[j]
        else:
            indices[nnz] = <int32_t>c
            data[nnz] = (w * p_data[j]) * -gamma
            nnz = nnz + 1
            if c < s:
                lower = nnz
    mid[s] = lower
    diag[s] = 1.0 - gamma * self_loop
    return nnz


cdef inline int64_t _deterministic_row(const int64_t[::1] p_indptr,
                                       const int32_t[::1] p_indices,
                                       const probability[::1] p_data, int64_t k,
                                       const double[::1] pi, double gamma, Py_ssize_t s,
                                       int64_t nnz, int64_t[::1] mid, int32_t[::1] indices,
                                       double[::1] data, double[::1] diag,
                                       int64_t[::1] mark) noexcept nogil:
    """Row s of A = I − γP_π from pair k appended at slot ``nnz``; returns the new nnz."""
    cdef int64_t first = p_indptr[k], last = p_indptr[k + 1], start = nnz, j, c, t
    cdef double w = pi[k] / row_total(&p_data[0], first, last), self_loop = 0.0
    # a row of increasing columns (distinct, sorted) is its own merged row: copied
    # with the self-loop apart, the same layout and bits as the merge below
    nnz = _sorted_row(&p_indices[0], &p_data[0], first, last, s, start, w, gamma,
                      &mid[0], &indices[0], &data[0], &diag[0])
    if nnz >= start:
        return nnz
    nnz = _merge_row(p_indices, first, last, s, start, mid, indices, mark)
    for t in range(start, nnz):
        data[t] = 0.0
    for j in range(first, last):
        c = p_indices[j]
        if c == s:
            self_loop = self_loop + w * p_data[j]
        else:
            data[mark[c]] += w * p_data[j]
    for t in range(start, nnz):
        data[t] = -gamma * data[t]
    diag[s] = 1.0 - gamma * self_loop
    return nnz


def assemble_deterministic(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                           const probability[::1] p_data, const int64_t[::1] pairs,
                           const double[::1] pi, double gamma,                     # IN
                           int64_t[::1] indptr, int64_t[::1] mid, int32_t[::1] indices,
                           double[::1] data, double[::1] diag, int64_t[::1] mark,
                           int n_threads):                                         # OUT
    """assemble_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, indptr, mid,
    indices, data, diag, mark, n_threads) -> nnz"""
    cdef Py_ssize_t n_states = mark.shape[0], s
    cdef int64_t nnz = 0
    with nogil:
        for s in range(n_states):
            mark[s] = -1
        indptr[0] = 0
        for s in range(n_states):
            nnz = _deterministic_row(p_indptr, p_indices, p_data, pairs[s], pi, gamma, s, nnz,
                                     mid, indices, data, diag, mark)
            indptr[s + 1] = nnz
    return nnz


def patch_deterministic(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                        const probability[::1] p_data, const int64_t[::1] pairs,
                        const double[::1] pi, double gamma, const int64_t[::1] changed,
                        const int64_t[::1] old_indptr, const int64_t[::1] old_mid,
                        const int32_t[::1] old_indices, const double[::1] old_data,
                        const double[::1] old_diag,                                # IN
                        int64_t[::1] indptr, int64_t[::1] mid, int32_t[::1] indices,
                        double[::1] data, double[::1] diag, int64_t[::1] mark,
                        int n_threads):                                            # OUT
    """patch_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, changed,
    old_indptr, old_mid, old_indices, old_data, old_diag, indptr, mid, indices, data, diag,
    mark, n_threads) -> nnz"""
    cdef Py_ssize_t n_states = mark.shape[0], n_changed = changed.shape[0], s = 0, i, u
    cdef Py_ssize_t stop
    cdef int64_t nnz = 0, lo, hi, shift, t
    with nogil:
        for u in range(n_states):
            mark[u] = -1
        indptr[0] = 0
        for i in range(n_changed + 1):
            stop = changed[i] if i < n_changed else n_states
            # the unchanged rows s .. stop − 1: one block of the old arrays, shifted
            lo = old_indptr[s]
            hi = old_indptr[stop]
            shift = nnz - lo
            for t in range(lo, hi):
                indices[t + shift] = old_indices[t]
                data[t + shift] = old_data[t]
            for u in range(s, stop):
                indptr[u + 1] = old_indptr[u + 1] + shift
                mid[u] = old_mid[u] + shift
                diag[u] = old_diag[u]
            nnz = hi + shift
            if stop == n_states:
                break
            nnz = _deterministic_row(p_indptr, p_indices, p_data, pairs[stop], pi, gamma, stop,
                                     nnz, mid, indices, data, diag, mark)
            indptr[stop + 1] = nnz
            s = stop + 1
    return nnz


cdef uint64_t GOLDEN = 0x9E3779B97F4A7C15ULL  # Fibonacci hashing


def distinct_pairs_bound(const int64_t[::1] indptr, const int32_t[::1] indices,   # IN
                         uint64_t[::1] bits, int shift, int n_threads):             # OUT
    """distinct_pairs_bound(indptr, indices, bits, shift, n_threads) -> count"""
    cdef Py_ssize_t n = indptr.shape[0] - 1, i, w
    cdef int64_t j, c, count = 0
    cdef uint64_t h
    with nogil:
        for w in range(bits.shape[0]):
            bits[w] = 0
        for i in range(n):
            for j in range(indptr[i], indptr[i + 1]):
                c = indices[j]
                if i < c:
                    h = (((<uint64_t>i) * (<uint64_t>n) + <uint64_t>c) * GOLDEN) >> shift
                    bits[h >> 6] |= (<uint64_t>1) << (h & 63)
                    count = count + 1
        for i in range(n):
            for j in range(indptr[i], indptr[i + 1]):
                c = indices[j]
                if c < i:
                    h = (((<uint64_t>c) * (<uint64_t>n) + <uint64_t>i) * GOLDEN) >> shift
                    if (bits[h >> 6] >> (h & 63)) & 1 == 0:
                        count = count + 1  # (c, i) is not in G: {c, i} is a pair of its own
    return count


cdef void _matvec(const int64_t[::1] indptr, const int64_t[::1] mid,
                  const int32_t[::1] indices, const double[::1] data,
                  const double[::1] diag, const double[::1] x, double[::1] out,
                  int part, int transpose) noexcept nogil:
    cdef Py_ssize_t n = diag.shape[0], i
    cdef int64_t j, a, b
    cdef double acc, xi
    cdef bint use_lower = part == 0 or ((part == 1) != (transpose == 1))
    cdef bint use_upper = part == 0 or ((part == 2) != (transpose == 1))
    if transpose == 0:
        for i in range(n):
            acc = diag[i] * x[i]
            a = indptr[i] if use_lower else mid[i]
            b = indptr[i + 1] if use_upper else mid[i]
            for j in range(a, b):
                acc = acc + data[j] * x[indices[j]]
            out[i] = acc
    else:
        for i in range(n):
            out[i] = diag[i] * x[i]
        for i in range(n):
            xi = x[i]
            a = indptr[i] if use_lower else mid[i]
            b = indptr[i + 1] if use_upper else mid[i]
            for j in range(a, b):
                out[indices[j]] += data[j] * xi


cdef void _forward(const int64_t *indptr, const int64_t *mid, const int32_t *indices,
                   const double *data, const double *dinv, const double *x, double *out,
                   Py_ssize_t n) noexcept nogil:
    """out = (D + L)⁻¹ x over the rows' lower parts, in order, out[i − 1] from a register
    where it is row i's last lower entry. ``out`` may be ``x``."""
    cdef Py_ssize_t i
    cdef int64_t j, a, b
    cdef double acc, prev = 0.0
    for i in range(n):
        a = indptr[i]
        b = mid[i]
        acc = x[i]
        if b > a and indices[b - 1] == i - 1:
            for j in range(a, b - 1):  # (a loop each: no select on prev)
                acc = acc - data[j] * out[indices[j]]
            acc = acc - data[b - 1] * prev
        else:
            for j in range(a, b):
                acc = acc - data[j] * out[indices[j]]
        prev = acc * dinv[i]
        out[i] = prev


cdef void _backward(const int64_t *indptr, const int64_t *mid, const int32_t *indices,
                    const double *data, const double *dinv, const double *x, double *out,
                    Py_ssize_t n) noexcept nogil:
    """out = (D + U)⁻¹ x over the rows' upper parts, from the last row, out[i + 1] from a
    register where it is row i's first upper entry. ``out`` may be ``x``."""
    cdef Py_ssize_t i
    cdef int64_t j, a, b
    cdef double acc, prev = 0.0
    for i in range(n - 1, -1, -1):
        a = mid[i]
        b = indptr[i + 1]
        acc = x[i]
        if b > a and indices[a] == i + 1:
            acc = acc - data[a] * prev
            for j in range(a + 1, b):
                acc = acc - data[j] * out[indices[j]]
        else:
            for j in range(a, b):
                acc = acc - data[j] * out[indices[j]]
        prev = acc * dinv[i]
        out[i] = prev


cdef void _scattered(const int64_t *indptr, const int64_t *mid, const int32_t *indices,
                     const double *data, const double *dinv, double *out, Py_ssize_t n,
                     bint forward) noexcept nogil:
    """In place, the sweeps of Aᵀ's parts by A's rows: forward (D + Uᵀ), row i scattering
    its upper entries, or backward (D + Lᵀ), its lower ones. Row k (the next) is loaded
    once row i has scattered, row i's term of it kept in a register where it is the
    part's entry next to the diagonal (each target once per row: any order, the same
    sums)."""
    cdef Py_ssize_t t, i, k
    cdef int64_t j, a, b
    cdef double oi, w, cur
    cur = out[0] if forward else out[n - 1]
    for t in range(n):
        i = t if forward else n - 1 - t
        oi = cur * dinv[i]
        out[i] = oi
        w = 0.0
        if forward:
            k = i + 1
            a = mid[i]
            b = indptr[i + 1]
            if b > a and indices[a] == k:
                w = data[a] * oi
                a = a + 1
        else:
            k = i - 1
            a = indptr[i]
            b = mid[i]
            if b > a and indices[b - 1] == k:
                w = data[b - 1] * oi
                b = b - 1
        for j in range(a, b):
            out[indices[j]] -= data[j] * oi
        if 0 <= k < n:
            cur = out[k] - w  # (w = 0 elsewhere: x − 0 = x)


cdef inline void _solve(const int64_t[::1] indptr, const int64_t[::1] mid,
                        const int32_t[::1] indices, const double[::1] data,
                        const double[::1] dinv, const double[::1] x, double[::1] out,
                        int part, int transpose) noexcept nogil:
    """The plain sweep of part 1 or 2 (where the neighbour's check costs more than it
    saves: :func:`_sweep`)."""
    cdef Py_ssize_t n = dinv.shape[0], t, i
    cdef int64_t j, a, b
    cdef double acc, oi
    cdef bint lower
    if transpose == 0:
        lower = part == 1  # (D + L): forward over rows; (D + U): backward
        for t in range(n):
            i = t if lower else n - 1 - t
            a = indptr[i] if lower else mid[i]
            b = mid[i] if lower else indptr[i + 1]
            acc = x[i]
            for j in range(a, b):
                acc = acc - data[j] * out[indices[j]]
            out[i] = acc * dinv[i]
    else:
        # (D + Uᵀ) (part 1): forward, scattering row i's upper entries; (D + Lᵀ): backward
        lower = part == 1  # forward
        for i in range(n):  # (out may be x)
            out[i] = x[i]
        for t in range(n):
            i = t if lower else n - 1 - t
            oi = out[i] * dinv[i]
            out[i] = oi
            a = mid[i] if lower else indptr[i]
            b = indptr[i + 1] if lower else mid[i]
            for j in range(a, b):
                out[indices[j]] -= data[j] * oi


cdef void _near_solve(const int64_t[::1] indptr, const int64_t[::1] mid,
                      const int32_t[::1] indices, const double[::1] data,
                      const double[::1] dinv, const double[::1] x, double[::1] out,
                      int part, int transpose) noexcept nogil:
    """The sweep of part 1 or 2 with the neighbour from a register (:func:`_forward`,
    :func:`_backward`, :func:`_scattered`); A has off-diagonal entries."""
    cdef Py_ssize_t n = dinv.shape[0], i
    if transpose == 0:
        if part == 1:
            _forward(&indptr[0], &mid[0], &indices[0], &data[0], &dinv[0], &x[0], &out[0], n)
        else:
            _backward(&indptr[0], &mid[0], &indices[0], &data[0], &dinv[0], &x[0], &out[0], n)
    else:
        for i in range(n):  # (out may be x)
            out[i] = x[i]
        _scattered(&indptr[0], &mid[0], &indices[0], &data[0], &dinv[0], &out[0], n, part == 1)


cdef inline void _sweep(const int64_t[::1] indptr, const int64_t[::1] mid,
                        const int32_t[::1] indices, const double[::1] data,
                        const double[::1] dinv, const double[::1] x, double[::1] out,
                        int part, int transpose, int near) noexcept nogil:
    """out = (E + L_B)⁻¹ x (part 1) or (E + U_B)⁻¹ x (part 2): :func:`_near_solve` where
    ``near`` has the bit of the part of A's rows the sweep reads (the lower one for
    (D + L) and (D + Lᵀ)), else :func:`_solve`."""
    cdef int bit = NEAR_LOWER if (part == 1) == (transpose == 0) else NEAR_UPPER
    if dinv.shape[0] > 0 and near & bit:
        _near_solve(indptr, mid, indices, data, dinv, x, out, part, transpose)
    else:
        _solve(indptr, mid, indices, data, dinv, x, out, part, transpose)


def split_matvec(const int64_t[::1] indptr, const int64_t[::1] mid, const int32_t[::1] indices,
                 const double[::1] data, const double[::1] diag, const double[::1] x,  # IN
                 double[::1] out, int part, int transpose, int n_threads):            # OUT
    """split_matvec(indptr, mid, indices, data, diag, x, out, part, transpose, n_threads)"""
    _matvec(indptr, mid, indices, data, diag, x, out, part, transpose)


def triangular_solve(const int64_t[::1] indptr, const int64_t[::1] mid,
                     const int32_t[::1] indices, const double[::1] data,
                     const double[::1] dinv, const double[::1] x,                      # IN
                     double[::1] out, int part, int transpose, int near,               # OUT
                     int n_threads):
    """triangular_solve(indptr, mid, indices, data, dinv, x, out, part, transpose, near,
    n_threads)"""
    _sweep(indptr, mid, indices, data, dinv, x, out, part, transpose, near)


cdef void _sgs(const int64_t[::1] indptr, const int64_t[::1] mid, const int32_t[::1] indices,
               const double[::1] data, const double[::1] diag, const double[::1] dinv,
               const double[::1] kdiag, const double[::1] x, double[::1] t, double[::1] out,
               int transpose, int near) noexcept nogil:
    cdef Py_ssize_t n = dinv.shape[0], i
    _sweep(indptr, mid, indices, data, dinv, x, t, 2, transpose, near)
    for i in range(n):
        out[i] = x[i] + kdiag[i] * t[i]
    _sweep(indptr, mid, indices, data, dinv, out, out, 1, transpose, near)
    for i in range(n):
        out[i] = diag[i] * (t[i] + out[i])


def sgs_operator(const int64_t[::1] indptr, const int64_t[::1] mid, const int32_t[::1] indices,
                 const double[::1] data, const double[::1] diag, const double[::1] dinv,
                 const double[::1] kdiag, const double[::1] x,                         # IN
                 double[::1] t, double[::1] out, int transpose, int near,              # OUT
                 int n_threads):
    """sgs_operator(indptr, mid, indices, data, diag, dinv, kdiag, x, t, out, transpose,
    near, n_threads)"""
    with nogil:
        _sgs(indptr, mid, indices, data, diag, dinv, kdiag, x, t, out, transpose, near)


def sgs_start(const int64_t[::1] indptr, const int64_t[::1] mid, const int32_t[::1] indices,
              const double[::1] data, const double[::1] diag, const double[::1] dinv,
              const double[::1] kdiag, const double[::1] b, const double[::1] x,   # IN
              double[::1] b_hat, double[::1] y, double[::1] out, int transpose, int near,
              int n_threads):                                                       # OUT
    """sgs_start(indptr, mid, indices, data, diag, dinv, kdiag, b, x, b_hat, y, out,
    transpose, near, n_threads)"""
    cdef Py_ssize_t n = dinv.shape[0], i
    cdef int64_t j, c
    cdef double acc, au, aw
    with nogil:
        if transpose != 0:  # the three sweeps in turn (Aᵀ's rows are columns here)
            _sweep(indptr, mid, indices, data, dinv, b, b_hat, 1, transpose, near)
            for i in range(n):
                b_hat[i] = b_hat[i] * diag[i]
            _matvec(indptr, mid, indices, data, diag, x, y, 2, transpose)
            for i in range(n):
                out[i] = kdiag[i] * x[i] + y[i]
            _sweep(indptr, mid, indices, data, dinv, out, out, 1, transpose, near)
        else:  # one forward pass: row i's upper part makes y[i], its lower part both sweeps
            for i in range(n):
                acc = diag[i] * x[i]
                for j in range(mid[i], indptr[i + 1]):
                    acc = acc + data[j] * x[indices[j]]
                y[i] = acc
                au = b[i]
                aw = kdiag[i] * x[i] + acc
                for j in range(indptr[i], mid[i]):
                    c = indices[j]
                    au = au - data[j] * b_hat[c]
                    aw = aw - data[j] * out[c]
                b_hat[i] = au * dinv[i]
                out[i] = aw * dinv[i]
            for i in range(n):
                b_hat[i] = b_hat[i] * diag[i]
        for i in range(n):
            out[i] = (out[i] + x[i]) * diag[i]


cdef inline double _dot(const double[::1] a, const double[::1] b) noexcept nogil:
    cdef double acc = 0.0
    cdef Py_ssize_t i
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


def sgs_bicgstab(const int64_t[::1] indptr, const int64_t[::1] mid, const int32_t[::1] indices,
                 const double[::1] data, const double[::1] diag, const double[::1] dinv,
                 const double[::1] kdiag, int transpose, int near,                     # IN
                 double[::1] y, double[::1] r, const double[::1] r_hat, double[::1] p,
                 double[::1] v, double[::1] s, double[::1] t, double[::1] w,
                 double[::1] snap, double[::1] state, double threshold, double blowup,
                 int64_t max_products, int n_threads):                                 # IN/OUT
    """sgs_bicgstab(indptr, mid, indices, data, diag, dinv, kdiag, transpose, near, y, r,
    r_hat, p, v, s, t, w, snap, state, threshold, blowup, max_products, n_threads) -> products"""
    cdef Py_ssize_t n = y.shape[0], i
    cdef double rho = state[0], alpha = state[1], omega = state[2], rel = state[3]
    cdef double snap_rel = state[4], bnorm = state[5]
    cdef double rho_new, beta, denom, tt, rr
    cdef int64_t used = 0
    cdef int status = 1
    with nogil:
        while used + 2 <= max_products:
            if rel <= threshold:
                status = 0
                break
            rho_new = _dot(r_hat, r)
            if rho_new == 0.0 or omega == 0.0:
                status = 2
                break
            beta = (rho_new / rho) * (alpha / omega)
            for i in range(n):
                p[i] = r[i] + beta * (p[i] - omega * v[i])
            _sgs(indptr, mid, indices, data, diag, dinv, kdiag, p, w, v, transpose, near)
            used = used + 1
            denom = _dot(r_hat, v)
            if denom == 0.0:
                status = 2
                break
            alpha = rho_new / denom
            for i in range(n):
                s[i] = r[i] - alpha * v[i]
            _sgs(indptr, mid, indices, data, diag, dinv, kdiag, s, w, t, transpose, near)
            used = used + 1
            tt = _dot(t, t)
            omega = _dot(t, s) / tt if tt > 0.0 else 0.0
            rr = 0.0
            for i in range(n):
                y[i] += alpha * p[i] + omega * s[i]
                r[i] = s[i] - omega * t[i]
                rr += r[i] * r[i]
            rho = rho_new
            rel = sqrt(rr) / bnorm
            if not rel <= blowup * snap_rel:  # NaN, inf or blow-up: back to the best iterate
                for i in range(n):
                    y[i] = snap[i]
                rel = snap_rel
                status = 3
                break
            if rel < 0.5 * snap_rel:
                for i in range(n):
                    snap[i] = y[i]
                snap_rel = rel
        if status == 1 and rel <= threshold:
            status = 0
    state[0] = rho
    state[1] = alpha
    state[2] = omega
    state[3] = rel
    state[4] = snap_rel
    state[6] = status
    return used
