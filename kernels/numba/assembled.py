"""The assembled matrix A = I − γP_π of one policy, and Gauss–Seidel sweeps on it.

Storage: the diagonal ``diag`` (n_states,) apart, and the off-diagonal entries of each
row i in CSR (``indptr``, ``indices``, ``data``) with the entries left of the diagonal
(j < i) first: [indptr[i], mid[i]) is the strictly lower part L, [mid[i], indptr[i+1])
the strictly upper part U (unsorted within each part). Duplicate successors of a state
(the same s' reached by several of its pairs) are merged: a row holds each distinct
successor once. Assembly is two kernels:

``merge_pattern``:    the structure (``indptr``, ``mid``, ``indices``) of the union of
                      the successors of each state's pairs, and ``pos``: for each entry
                      j of P the slot it adds into (``nnz + s`` for the diagonal of state
                      s); returns nnz; ``mark`` (n_states,) int64 is scratch. Depends on
                      the transitions alone (cached per MDP for all pairs).
``assemble_values``:  ``data`` (nnz + n_states,) = −γ Σ π P per slot, ``diag`` = 1 − γ (P_π)_ss:
                      one branch-free pass over the policy's entries.
``assemble_deterministic``: both at once for a deterministic policy, straight from P:
                      state s's only pair is ``pairs[s]`` (π of it in ``pi``); the same
                      layout and the same sums as ``merge_pattern`` + ``assemble_values``
                      on that policy's rows (bit for bit), without gathering them first.
                      ``indices``, ``data`` hold at least the rows' entries; returns nnz.
``patch_deterministic``: the same matrix from that of another deterministic policy
                      (``old_*``, in the same layout) which differs from it in the states
                      ``changed`` (sorted): their rows made anew, the others' copied in
                      blocks (one sequential pass instead of reads of P's rows); the same
                      bits as ``assemble_deterministic``.
``distinct_pairs_bound``: a lower bound on the edges of the undirected graph of an
                      off-diagonal pattern (``indptr``, ``indices``; each row's columns
                      distinct): the entries (i, j), i < j, plus those j < i whose mirror
                      (j, i) is surely absent, tested in a one-hash Bloom filter ``bits``
                      (uint64 words, 2^(64 − ``shift``) bits, scratch): a filter has no false
                      negatives, so the count never exceeds the true one. Two sequential
                      passes; the filter (a byte per entry) stays in the caches.

The other kernels act on B = A (``transpose`` = 0) or B = Aᵀ (1), B = D + L_B + U_B
(for Aᵀ: L_B = Uᵀ, U_B = Lᵀ), with ``part`` selecting 0: B, 1: E + L_B, 2: E + U_B for
a diagonal E given as ``diag`` (E = D: the parts of B) or ``dinv`` = 1/E:

``split_matvec``:     out = B_part x (``diag`` = E)
``triangular_solve``: out = B_part⁻¹ x (part 1 or 2: a forward or backward (S)SOR sweep
                      with E = D/ω; ``out`` may be ``x``; ``dinv`` = ω/D, a multiplication
                      in the sweep's dependency chain instead of a division)
``sgs_operator``:     out = E (E + L_B)⁻¹ B (E + U_B)⁻¹ x, the symmetric SOR
                      split-preconditioned operator, in one pass over the off-diagonal
                      entries (Eisenstat's trick: with B = (E + L_B) + (E + U_B) + K,
                      K = D − 2E given as ``kdiag``, t = (E + U_B)⁻¹ x and
                      out = E [t + (E + L_B)⁻¹ (x + K t)]); ``diag`` = E, ``dinv`` = 1/E,
                      ``t`` is scratch
``sgs_start``:        the warm start of SGS-BiCGSTAB from x (``fastppo._krylov.sgs``):
                      b_hat = E (E + L_B)⁻¹ b, y = (E + U_B) x and out = Â y, the first
                      product, as E (x + (E + L_B)⁻¹ (y + K x)) from the known x (no
                      backward sweep); for B = A in one forward pass over the rows (row i's
                      upper part gives y[i], its lower part both forward sweeps), the same
                      bits as ``triangular_solve``, ``split_matvec`` and the sweep done
                      one after another; for Aᵀ those three in turn

``sgs_bicgstab``:     BiCGSTAB steps on the ``sgs_operator`` system Â y = b̂ (the loop of
                      ``fastppo._krylov._bicgstab``, compiled): from the iterate ``y`` and
                      recursive residual ``r`` with shadow ``r_hat`` and directions ``p``,
                      ``v`` (``s``, ``t``, ``w`` scratch), ``state`` = [ρ, α, ω, ‖r‖/‖b̂‖,
                      its best so far, ‖b̂‖, status] in and out, until the relative
                      recursive residual is ≤ ``threshold`` (status 0), the next step would
                      exceed ``max_products`` (1), a breakdown (2), or a non-finite residual
                      or one above ``blowup`` × the best (3: ``y`` restored from ``snap``,
                      the iterate saved whenever the residual halved); returns the products
                      with Â.

``near`` (the sweeps: ``triangular_solve``, ``sgs_operator``, ``sgs_start``,
``sgs_bicgstab``): the pattern's hint (``fastppo._assembled.near_parts``) on which the
Cython twin takes the row a sweep solved just before from a register instead of through
the store just made (gridworld at 50k: ~0.6× the time of its SGS operator). Here it is
unused: the same sums either way, and LLVM's code for that path measured no gain (grid
0.91–0.98×, queue2d 1.06–1.10× the plain sweeps' time at 10k).

The sweeps are sequential by nature: every kernel here is serial (``n_threads`` is
ignored). Mirrors kernels/cython/assembled.pyx.
"""
import numpy as np
from numba import njit

from ._jit import serial
from ._probability import row_total


@njit(cache=True, nogil=True)
def merge_row(p_indices, first, last, s, nnz, mid, indices, mark):
    """Row s of the pattern from the entries first <= j < last of P: its distinct
    off-diagonal columns appended at indices[nnz:], those < s first (mid[s] the split),
    mark[c] = the slot of column c; returns the new nnz."""
    start = nnz
    for j in range(first, last):
        c = np.int64(p_indices[j])
        if c != s and mark[c] < start:  # first time in this row (positions only grow)
            mark[c] = nnz
            indices[nnz] = c
            nnz += 1
    lo, hi = start, nnz - 1  # partition: columns < s first (two pointers)
    while True:
        while lo <= hi and indices[lo] < s:
            lo += 1
        while lo <= hi and indices[hi] > s:
            hi -= 1
        if lo >= hi:
            break
        indices[lo], indices[hi] = indices[hi], indices[lo]
    mid[s] = lo
    for t in range(start, nnz):
        mark[indices[t]] = t
    return nnz


def merge_pattern(a_indptr, p_indptr, p_indices, indptr, mid, indices, pos, mark):
    n_states = mark.shape[0]
    mark[:] = -1
    nnz = 0
    indptr[0] = 0
    for s in range(n_states):
        nnz = merge_row(p_indices, np.uint64(p_indptr[a_indptr[s]]),
                        np.uint64(p_indptr[a_indptr[s + 1]]), s, nnz, mid, indices, mark)
        indptr[s + 1] = nnz
        for j in range(np.uint64(p_indptr[a_indptr[s]]), np.uint64(p_indptr[a_indptr[s + 1]])):
            c = np.int64(p_indices[j])
            pos[j] = -1 - s if c == s else mark[c]
    for j in range(pos.shape[0]):  # the diagonal of state s: slot nnz + s
        if pos[j] < 0:
            pos[j] = nnz - 1 - pos[j]
    return nnz


def assemble_values(a_indptr, p_indptr, p_data, pos, pi, gamma, data, diag):
    n_states = diag.shape[0]
    nnz = data.shape[0] - n_states
    data[:] = 0.0
    for s in range(n_states):
        for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
            w = pi[k] / row_total(p_data, np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1]))
            for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                data[pos[j]] += w * p_data[j]
    for j in range(nnz):
        data[j] *= -gamma
    for s in range(n_states):
        diag[s] = 1.0 - gamma * data[nnz + s]


@njit(cache=True, nogil=True, inline="always")
def sorted_row(p_indices, p_data, first, last, s, start, w, gamma, mid, indices, data, diag):
    """Row s of A from the entries first <= j < last of P when their columns increase:
    appended at indices[start:] and data[start:] (−γ w P), mid[s] and diag[s] set;
    returns the new nnz, or −1 (nothing valid written) when a column does not increase."""
    nnz, lower, prev = start, start, np.int64(-1)
    self_loop = 0.0
    for j in range(first, last):
        c = np.int64(p_indices[j])
        if c <= prev:
            return -1
        prev = c
        if c == s:
            self_loop += w * p_data[j]
        else:
            indices[nnz] = c
            data[nnz] = (w * p_data[j]) * -gamma
            nnz += 1
            if c < s:
                lower = nnz
    mid[s] = lower
    diag[s] = 1.0 - gamma * self_loop
    return nnz


@njit(cache=True, nogil=True, inline="always")
def deterministic_row(p_indptr, p_indices, p_data, k, pi, gamma, s, nnz, mid, indices, data,
                      diag, mark):
    """Row s of A = I − γP_π from pair k (π of it in ``pi``) appended at slot ``nnz``;
    returns the new nnz (``mark``: see ``merge_row``)."""
    first, last = np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])
    start = nnz
    w = pi[k] / row_total(p_data, first, last)
    # a row of increasing columns (distinct, sorted) is its own merged row: copied
    # with the self-loop apart, the same layout and bits as the merge below
    nnz = sorted_row(p_indices, p_data, first, last, s, start, w, gamma, mid, indices,
                     data, diag)
    if nnz >= start:
        return nnz
    nnz = merge_row(p_indices, first, last, s, start, mid, indices, mark)
    for t in range(start, nnz):
        data[t] = 0.0
    self_loop = 0.0
    for j in range(first, last):
        c = np.int64(p_indices[j])
        if c == s:
            self_loop += w * p_data[j]
        else:
            data[mark[c]] += w * p_data[j]
    for t in range(start, nnz):
        data[t] *= -gamma
    diag[s] = 1.0 - gamma * self_loop
    return nnz


def assemble_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, indptr, mid,
                           indices, data, diag, mark):
    n_states = mark.shape[0]
    mark[:] = -1
    nnz = 0
    indptr[0] = 0
    for s in range(n_states):
        nnz = deterministic_row(p_indptr, p_indices, p_data, pairs[s], pi, gamma, s, nnz, mid,
                                indices, data, diag, mark)
        indptr[s + 1] = nnz
    return nnz


def patch_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, changed, old_indptr,
                        old_mid, old_indices, old_data, old_diag, indptr, mid, indices, data,
                        diag, mark):
    n_states = mark.shape[0]
    mark[:] = -1
    nnz = 0
    indptr[0] = 0
    s = 0
    for i in range(changed.shape[0] + 1):
        stop = changed[i] if i < changed.shape[0] else n_states
        # the unchanged rows s .. stop − 1: one block of the old arrays, shifted
        lo, hi = old_indptr[s], old_indptr[stop]
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
        nnz = deterministic_row(p_indptr, p_indices, p_data, pairs[stop], pi, gamma, stop,
                                nnz, mid, indices, data, diag, mark)
        indptr[stop + 1] = nnz
        s = stop + 1
    return nnz


GOLDEN = np.uint64(0x9E3779B97F4A7C15)  # Fibonacci hashing: the top bits of key × GOLDEN


def distinct_pairs_bound(indptr, indices, bits, shift):
    n = indptr.shape[0] - 1
    bits[:] = 0
    shift, six, low = np.uint64(shift), np.uint64(6), np.uint64(63)
    one, size = np.uint64(1), np.uint64(n)
    count = 0
    for i in range(n):
        for j in range(np.uint64(indptr[i]), np.uint64(indptr[i + 1])):
            c = np.int64(indices[j])
            if i < c:
                h = ((np.uint64(i) * size + np.uint64(c)) * GOLDEN) >> shift
                bits[h >> six] |= one << (h & low)
                count += 1
    for i in range(n):
        for j in range(np.uint64(indptr[i]), np.uint64(indptr[i + 1])):
            c = np.int64(indices[j])
            if c < i:
                h = ((np.uint64(c) * size + np.uint64(i)) * GOLDEN) >> shift
                if (bits[h >> six] >> (h & low)) & one == np.uint64(0):
                    count += 1  # (c, i) is not in G: {c, i} is a pair of its own
    return count


@njit(cache=True, inline="always")
def _bounds(indptr, mid, i, lower):
    """Row i's lower (j < i) or upper (j > i) off-diagonal range."""
    if lower:
        return indptr[i], mid[i]
    return mid[i], indptr[i + 1]


@njit(cache=True)
def _matvec(indptr, mid, indices, data, diag, x, out, part, transpose):
    n = diag.shape[0]
    # the stored parts of A that B_part uses: L (rows' lower ranges) and/or U
    use_lower = part == 0 or (part == 1) != (transpose == 1)
    use_upper = part == 0 or (part == 2) != (transpose == 1)
    lo_of = indptr if use_lower else mid  # range [lo_of[i], hi_of[i + (0 or 1)])
    if transpose == 0:
        for i in range(n):
            acc = diag[i] * x[i]
            a = lo_of[i]
            b = indptr[i + 1] if use_upper else mid[i]
            for j in range(np.uint64(a), np.uint64(b)):
                acc += data[j] * x[np.uint32(indices[j])]
            out[i] = acc
    else:
        for i in range(n):
            out[i] = diag[i] * x[i]
        for i in range(n):
            xi = x[i]
            a = lo_of[i]
            b = indptr[i + 1] if use_upper else mid[i]
            for j in range(np.uint64(a), np.uint64(b)):
                out[np.uint32(indices[j])] += data[j] * xi


@njit(cache=True)
def _solve(indptr, mid, indices, data, dinv, x, out, part, transpose):
    n = dinv.shape[0]
    if transpose == 0:
        lower = part == 1  # (D + L): forward over rows; (D + U): backward
        for t in range(n):
            i = t if lower else n - 1 - t
            a, b = _bounds(indptr, mid, i, lower)
            acc = x[i]
            for j in range(np.uint64(a), np.uint64(b)):
                acc -= data[j] * out[np.uint32(indices[j])]
            out[i] = acc * dinv[i]
    else:
        # (D + Uᵀ) (part 1): forward, scattering row i's upper entries; (D + Lᵀ): backward
        forward = part == 1
        for i in range(n):  # (out may be x)
            out[i] = x[i]
        for t in range(n):
            i = t if forward else n - 1 - t
            oi = out[i] * dinv[i]
            out[i] = oi
            a, b = _bounds(indptr, mid, i, not forward)
            for j in range(np.uint64(a), np.uint64(b)):
                out[np.uint32(indices[j])] -= data[j] * oi


def split_matvec(indptr, mid, indices, data, diag, x, out, part, transpose):
    _matvec(indptr, mid, indices, data, diag, x, out, part, transpose)


def triangular_solve(indptr, mid, indices, data, dinv, x, out, part, transpose, near):
    _solve(indptr, mid, indices, data, dinv, x, out, part, transpose)


@njit(cache=True)
def _sgs(indptr, mid, indices, data, diag, dinv, kdiag, x, t, out, transpose):
    _solve(indptr, mid, indices, data, dinv, x, t, 2, transpose)
    n = dinv.shape[0]
    for i in range(n):
        out[i] = x[i] + kdiag[i] * t[i]
    _solve(indptr, mid, indices, data, dinv, out, out, 1, transpose)
    for i in range(n):
        out[i] = diag[i] * (t[i] + out[i])


def sgs_operator(indptr, mid, indices, data, diag, dinv, kdiag, x, t, out, transpose, near):
    _sgs(indptr, mid, indices, data, diag, dinv, kdiag, x, t, out, transpose)


def sgs_start(indptr, mid, indices, data, diag, dinv, kdiag, b, x, b_hat, y, out, transpose,
              near):
    n = dinv.shape[0]
    if transpose != 0:  # the three sweeps in turn (Aᵀ's rows are columns here)
        _solve(indptr, mid, indices, data, dinv, b, b_hat, 1, transpose)
        for i in range(n):
            b_hat[i] = b_hat[i] * diag[i]
        _matvec(indptr, mid, indices, data, diag, x, y, 2, transpose)
        for i in range(n):
            out[i] = kdiag[i] * x[i] + y[i]
        _solve(indptr, mid, indices, data, dinv, out, out, 1, transpose)
    else:  # one forward pass: row i's upper part makes y[i], its lower part both sweeps
        for i in range(n):
            acc = diag[i] * x[i]
            for j in range(np.uint64(mid[i]), np.uint64(indptr[i + 1])):
                acc += data[j] * x[np.uint32(indices[j])]
            y[i] = acc
            au = b[i]
            aw = kdiag[i] * x[i] + acc
            for j in range(np.uint64(indptr[i]), np.uint64(mid[i])):
                c = np.uint32(indices[j])
                au -= data[j] * b_hat[c]
                aw -= data[j] * out[c]
            b_hat[i] = au * dinv[i]
            out[i] = aw * dinv[i]
        for i in range(n):
            b_hat[i] = b_hat[i] * diag[i]
    for i in range(n):
        out[i] = (out[i] + x[i]) * diag[i]


@njit(cache=True, inline="always")
def _dot(a, b):
    acc = 0.0
    for i in range(a.shape[0]):
        acc += a[i] * b[i]
    return acc


def sgs_bicgstab(indptr, mid, indices, data, diag, dinv, kdiag, transpose, near, y, r, r_hat, p,
                 v, s, t, w, snap, state, threshold, blowup, max_products):
    n = y.shape[0]
    rho, alpha, omega, rel, snap_rel, bnorm = state[0], state[1], state[2], state[3], state[4], state[5]
    used, status = 0, 1
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
        _sgs(indptr, mid, indices, data, diag, dinv, kdiag, p, w, v, transpose)
        used += 1
        denom = _dot(r_hat, v)
        if denom == 0.0:
            status = 2
            break
        alpha = rho_new / denom
        for i in range(n):
            s[i] = r[i] - alpha * v[i]
        _sgs(indptr, mid, indices, data, diag, dinv, kdiag, s, w, t, transpose)
        used += 1
        tt = _dot(t, t)
        omega = _dot(t, s) / tt if tt > 0.0 else 0.0
        rr = 0.0
        for i in range(n):
            y[i] += alpha * p[i] + omega * s[i]
            r[i] = s[i] - omega * t[i]
            rr += r[i] * r[i]
        rho = rho_new
        rel = np.sqrt(rr) / bnorm
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
    state[0], state[1], state[2], state[3], state[4], state[6] = rho, alpha, omega, rel, snap_rel, status
    return used


KERNELS = serial(merge_pattern, assemble_values, assemble_deterministic, patch_deterministic,
                 distinct_pairs_bound,
                 split_matvec, triangular_solve, sgs_operator, sgs_start, sgs_bicgstab)
