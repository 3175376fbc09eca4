"""Sparse products for K members at once, on (S, K)-interleaved vectors.

``bellman_matvec_batch``:  out[:, i] = x[:, i] − γ P_{π_m} x[:, i],  m = members[i]
``bellman_rmatvec_batch``: out[:, i] = x[:, i] − γ P_{π_m}ᵀ x[:, i], scattered into
                           per-chunk buffers ``buf`` (n_chunks, n_states, K) reduced in a
                           fixed order
``q_values_batch``:        out[i, :] = r_m + γ P v[:, i],  m = members[i]
``shared_weights``:        weights[j] = π(k) p_j for each entry j of pair k's row: the
                           entries of P_π of one policy shared by all members
``bellman_matvec_shared``: out[:, i] = x[:, i] − γ P_π x[:, i] for every column, P_π given
                           by those weights on the state rows ``row_indptr``

Vectors are (n_states, K) C-contiguous: the K entries of one successor share a cache
line (64 bytes at K = 8), so a product reads P's rows once and gathers one line per
successor for all K members. ``pi`` and ``r`` are (L, n_pairs), one row per policy or
reward vector, as the caller holds them (no transposed copy); member i uses row
``members[i]`` (all 0: one policy or reward for all members).

Members go in blocks of eight and four SIMD lanes (GCC vector extensions; each multiply-add
one AVX2 FMA where the host has FMA, else a multiply then an add), the remainder one at a
time; a pair is skipped when π is 0 for every member of the block. ``bellman_matvec_batch``
gathers the rows of a state's used pairs two at a time, their sums advancing side by side
(two independent chains: a lone row's sum waits on each add). Each member's terms are those
of kernels/cython/linear.pyx in the same order; with FMA they round once instead of twice,
so member i's product equals the single-member kernel's (and the Numba twin's, which does
not fuse) to round-off, not bit for bit (tests/test_backend_parity.py: 1e-13). Gathers and
scatters prefetch the successor ``AHEAD`` entries on, as linear.pyx does.

``sweep_residual_batch``, ``sweep_update_batch``: the vector passes of a Richardson sweep on
the (S, K) arrays; ``regularized_reward_batch``: r_π − τ D_f(π) of K members (below).
Mirrors kernels/numba/batched.py.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t

include "_codes.pxi"
include "_divergence.pxi"
include "_softmax.pxi"


cdef extern from *:
    """
    typedef double fp_v4 __attribute__((vector_size(32)));
    typedef double fp_v4u __attribute__((vector_size(32), aligned(8)));
    #define FP_AHEAD 32  /* entries of P ahead (kernels/cython/linear.pyx: the same) */
    #if defined(__FMA__)
    #include <immintrin.h>
    /* a * b + c per lane, rounded once (AVX2 FMA) */
    #define FP_FMA(a, b, c) ((fp_v4)_mm256_fmadd_pd((a), (b), (c)))
    #else
    #define FP_FMA(a, b, c) ((a) * (b) + (c))
    #endif

    /* acc[u] += data[j] * x[idx[j] * K + u] for j in [lo, hi) in order, u < width (8,
       4 or 1); x points at the block's first member. */
    static inline void fp_gather_more(int width, int64_t lo, int64_t hi, int64_t last,
                                      const int32_t *idx, const double *data, const double *x,
                                      Py_ssize_t K, double *acc)
    {
        int64_t j;
        if (width == 8) {
            fp_v4 r0 = *(const fp_v4u *)acc, r1 = *(const fp_v4u *)(acc + 4);
            for (j = lo; j < hi; j++) {
                const double *xt = x + (Py_ssize_t)idx[j] * K;
                fp_v4 p = {data[j], data[j], data[j], data[j]};
                __builtin_prefetch(x + (Py_ssize_t)idx[j + FP_AHEAD < last ? j + FP_AHEAD : last] * K, 0, 3);
                r0 = FP_FMA(p, *(const fp_v4u *)xt, r0);
                r1 = FP_FMA(p, *(const fp_v4u *)(xt + 4), r1);
            }
            *(fp_v4u *)acc = r0;
            *(fp_v4u *)(acc + 4) = r1;
        } else if (width == 4) {
            fp_v4 r0 = *(const fp_v4u *)acc;
            for (j = lo; j < hi; j++) {
                fp_v4 p = {data[j], data[j], data[j], data[j]};
                __builtin_prefetch(x + (Py_ssize_t)idx[j + FP_AHEAD < last ? j + FP_AHEAD : last] * K, 0, 3);
                r0 = FP_FMA(p, *(const fp_v4u *)(x + (Py_ssize_t)idx[j] * K), r0);
            }
            *(fp_v4u *)acc = r0;
        } else {
            double r0 = acc[0];
            for (j = lo; j < hi; j++) {
                __builtin_prefetch(x + (Py_ssize_t)idx[j + FP_AHEAD < last ? j + FP_AHEAD : last] * K, 0, 3);
                r0 = r0 + data[j] * x[(Py_ssize_t)idx[j] * K];
            }
            acc[0] = r0;
        }
    }

    /* acc[u] = sum over j in [lo, hi) of data[j] * x[idx[j] * K + u], u < width (8, 4
       or 1), summed in order of j from 0; x points at the block's first member. */
    static inline void fp_gather(int width, int64_t lo, int64_t hi, int64_t last,
                                 const int32_t *idx, const double *data, const double *x,
                                 Py_ssize_t K, double *acc)
    {
        int u;
        for (u = 0; u < width; u++) acc[u] = 0.0;
        fp_gather_more(width, lo, hi, last, idx, data, x, K, acc);
    }

    /* One block of 4·nv members (nv = 2 or 1) of state s: out[u] = x_s[u] − γ Σ_k w_k[u]
       row_k[u], u < 4·nv, the used pairs' rows gathered two at a time (two chains of
       adds side by side), each member's sums in order of j within a row and of k across
       rows, as bellman_matvec. ``w[u]`` points at member u's policy row, ``x`` at the
       block's first member of state 0, ``out`` at out[s, block's first member]. */
    static inline __attribute__((always_inline)) void fp_matvec_block_nv(
        const int nv, const int64_t *a_indptr, const int64_t *p_indptr, const int32_t *idx,
        const double *data, const double *const *w, double gamma, const double *x,
        Py_ssize_t K, Py_ssize_t s, int64_t last, double *out)
    {
        fp_v4 acc[2], held_w[2], wk[2], ra[2], rb[2];
        const fp_v4 zero = {0.0, 0.0, 0.0, 0.0};
        int64_t k, held = -1, i, n, ja, jb;
        int v;
        for (v = 0; v < nv; v++) acc[v] = zero;
        for (k = a_indptr[s]; k < a_indptr[s + 1]; k++) {
            int used = 0;
            for (v = 0; v < nv; v++) {
                fp_v4 t = {w[4 * v][k], w[4 * v + 1][k], w[4 * v + 2][k], w[4 * v + 3][k]};
                wk[v] = t;
                used |= (t[0] != 0.0) | (t[1] != 0.0) | (t[2] != 0.0) | (t[3] != 0.0);
            }
            if (!used) continue;
            if (held < 0) {
                held = k;
                for (v = 0; v < nv; v++) held_w[v] = wk[v];
                continue;
            }
            for (v = 0; v < nv; v++) { ra[v] = zero; rb[v] = zero; }
            n = p_indptr[held + 1] - p_indptr[held];
            if (p_indptr[k + 1] - p_indptr[k] < n) n = p_indptr[k + 1] - p_indptr[k];
            if (p_indptr[held] + n + FP_AHEAD <= last && p_indptr[k] + n + FP_AHEAD <= last) {
                /* the prefetched entries stay inside P: no clamp (the common case) */
                const int32_t *ia = idx + p_indptr[held], *ib = idx + p_indptr[k];
                const double *da = data + p_indptr[held], *db = data + p_indptr[k];
                for (i = 0; i < n; i++) {
                    const double *xa = x + (Py_ssize_t)ia[i] * K, *xb = x + (Py_ssize_t)ib[i] * K;
                    fp_v4 pa = {da[i], da[i], da[i], da[i]};
                    fp_v4 pb = {db[i], db[i], db[i], db[i]};
                    __builtin_prefetch(x + (Py_ssize_t)ia[i + FP_AHEAD] * K, 0, 3);
                    __builtin_prefetch(x + (Py_ssize_t)ib[i + FP_AHEAD] * K, 0, 3);
                    for (v = 0; v < nv; v++) {
                        ra[v] = FP_FMA(pa, *(const fp_v4u *)(xa + 4 * v), ra[v]);
                        rb[v] = FP_FMA(pb, *(const fp_v4u *)(xb + 4 * v), rb[v]);
                    }
                }
            } else {
                for (i = 0; i < n; i++) {
                    ja = p_indptr[held] + i;
                    jb = p_indptr[k] + i;
                    const double *xa = x + (Py_ssize_t)idx[ja] * K, *xb = x + (Py_ssize_t)idx[jb] * K;
                    fp_v4 pa = {data[ja], data[ja], data[ja], data[ja]};
                    fp_v4 pb = {data[jb], data[jb], data[jb], data[jb]};
                    __builtin_prefetch(x + (Py_ssize_t)idx[ja + FP_AHEAD < last ? ja + FP_AHEAD : last] * K, 0, 3);
                    __builtin_prefetch(x + (Py_ssize_t)idx[jb + FP_AHEAD < last ? jb + FP_AHEAD : last] * K, 0, 3);
                    for (v = 0; v < nv; v++) {
                        ra[v] = FP_FMA(pa, *(const fp_v4u *)(xa + 4 * v), ra[v]);
                        rb[v] = FP_FMA(pb, *(const fp_v4u *)(xb + 4 * v), rb[v]);
                    }
                }
            }
            for (ja = p_indptr[held] + n; ja < p_indptr[held + 1]; ja++) {
                const double *xa = x + (Py_ssize_t)idx[ja] * K;
                fp_v4 pa = {data[ja], data[ja], data[ja], data[ja]};
                for (v = 0; v < nv; v++) ra[v] = FP_FMA(pa, *(const fp_v4u *)(xa + 4 * v), ra[v]);
            }
            for (jb = p_indptr[k] + n; jb < p_indptr[k + 1]; jb++) {
                const double *xb = x + (Py_ssize_t)idx[jb] * K;
                fp_v4 pb = {data[jb], data[jb], data[jb], data[jb]};
                for (v = 0; v < nv; v++) rb[v] = FP_FMA(pb, *(const fp_v4u *)(xb + 4 * v), rb[v]);
            }
            for (v = 0; v < nv; v++) {
                acc[v] = FP_FMA(held_w[v], ra[v], acc[v]);
                acc[v] = FP_FMA(wk[v], rb[v], acc[v]);
            }
            held = -1;
        }
        if (held >= 0) {
            for (v = 0; v < nv; v++) ra[v] = zero;
            for (ja = p_indptr[held]; ja < p_indptr[held + 1]; ja++) {
                const double *xa = x + (Py_ssize_t)idx[ja] * K;
                fp_v4 pa = {data[ja], data[ja], data[ja], data[ja]};
                __builtin_prefetch(x + (Py_ssize_t)idx[ja + FP_AHEAD < last ? ja + FP_AHEAD : last] * K, 0, 3);
                for (v = 0; v < nv; v++) ra[v] = FP_FMA(pa, *(const fp_v4u *)(xa + 4 * v), ra[v]);
            }
            for (v = 0; v < nv; v++) acc[v] = FP_FMA(held_w[v], ra[v], acc[v]);
        }
        {
            const fp_v4 g = {gamma, gamma, gamma, gamma};
            const double *xs = x + s * K;
            for (v = 0; v < nv; v++)
                *(fp_v4u *)(out + 4 * v) = *(const fp_v4u *)(xs + 4 * v) - g * acc[v];
        }
    }

    /* fp_matvec_block_nv with nv a constant at each call: its loops over nv unrolled, the
       block's sums in registers */
    static inline void fp_matvec_block(const int nv, const int64_t *a_indptr,
                                       const int64_t *p_indptr, const int32_t *idx,
                                       const double *data, const double *const *w,
                                       double gamma, const double *x, Py_ssize_t K,
                                       Py_ssize_t s, int64_t last, double *out)
    {
        if (nv == 2)
            fp_matvec_block_nv(2, a_indptr, p_indptr, idx, data, w, gamma, x, K, s, last, out);
        else
            fp_matvec_block_nv(1, a_indptr, p_indptr, idx, data, w, gamma, x, K, s, last, out);
    }

    /* buf[idx[j] * K + u] += w[u] * data[j] for j in [lo, hi), u < width (8, 4 or 1);
       buf points at the block's first member. */
    static inline void fp_scatter(int width, int64_t lo, int64_t hi, int64_t last,
                                  const int32_t *idx, const double *data, const double *w,
                                  double *buf, Py_ssize_t K)
    {
        int64_t j;
        if (width == 8) {
            fp_v4 w0 = *(const fp_v4u *)w, w1 = *(const fp_v4u *)(w + 4);
            for (j = lo; j < hi; j++) {
                double *bt = buf + (Py_ssize_t)idx[j] * K;
                fp_v4 p = {data[j], data[j], data[j], data[j]};
                __builtin_prefetch(buf + (Py_ssize_t)idx[j + FP_AHEAD < last ? j + FP_AHEAD : last] * K, 1, 3);
                *(fp_v4u *)bt = FP_FMA(w0, p, *(fp_v4u *)bt);
                *(fp_v4u *)(bt + 4) = FP_FMA(w1, p, *(fp_v4u *)(bt + 4));
            }
        } else if (width == 4) {
            fp_v4 w0 = *(const fp_v4u *)w;
            for (j = lo; j < hi; j++) {
                double *bt = buf + (Py_ssize_t)idx[j] * K;
                fp_v4 p = {data[j], data[j], data[j], data[j]};
                __builtin_prefetch(buf + (Py_ssize_t)idx[j + FP_AHEAD < last ? j + FP_AHEAD : last] * K, 1, 3);
                *(fp_v4u *)bt = FP_FMA(w0, p, *(fp_v4u *)bt);
            }
        } else {
            for (j = lo; j < hi; j++) {
                __builtin_prefetch(buf + (Py_ssize_t)idx[j + FP_AHEAD < last ? j + FP_AHEAD : last] * K, 1, 3);
                buf[(Py_ssize_t)idx[j] * K] += w[0] * data[j];
            }
        }
    }

    /* acc[u] = Σ_j w[j] x[idx[j] * K + u] over j in [lo, hi), u < width (8, 4 or 1), in two
       chains (even and odd j) added at the end; x points at the block's first member.
       ``clamp``: the prefetch index is clamped to ``last`` (rows near P's end). */
    static inline __attribute__((always_inline)) void fp_shared_row_c(
        const int clamp, int width, int64_t lo, int64_t hi, int64_t last, const int32_t *idx,
        const double *w, const double *x, Py_ssize_t K, double *acc)
    {
        int64_t j = lo;
        #define FP_PF(j) __builtin_prefetch(x + (Py_ssize_t)idx[clamp && (j) + FP_AHEAD > last ? last : (j) + FP_AHEAD] * K, 0, 3)
        if (width == 8) {
            fp_v4 a0 = {0.0, 0.0, 0.0, 0.0}, a1 = a0, b0 = a0, b1 = a0;
            for (; j + 1 < hi; j += 2) {
                const double *xa = x + (Py_ssize_t)idx[j] * K, *xb = x + (Py_ssize_t)idx[j + 1] * K;
                fp_v4 pa = {w[j], w[j], w[j], w[j]}, pb = {w[j + 1], w[j + 1], w[j + 1], w[j + 1]};
                FP_PF(j);
                FP_PF(j + 1);
                a0 = FP_FMA(pa, *(const fp_v4u *)xa, a0);
                a1 = FP_FMA(pa, *(const fp_v4u *)(xa + 4), a1);
                b0 = FP_FMA(pb, *(const fp_v4u *)xb, b0);
                b1 = FP_FMA(pb, *(const fp_v4u *)(xb + 4), b1);
            }
            if (j < hi) {
                const double *xa = x + (Py_ssize_t)idx[j] * K;
                fp_v4 pa = {w[j], w[j], w[j], w[j]};
                a0 = FP_FMA(pa, *(const fp_v4u *)xa, a0);
                a1 = FP_FMA(pa, *(const fp_v4u *)(xa + 4), a1);
            }
            *(fp_v4u *)acc = a0 + b0;
            *(fp_v4u *)(acc + 4) = a1 + b1;
        } else if (width == 4) {
            fp_v4 a0 = {0.0, 0.0, 0.0, 0.0}, b0 = a0;
            for (; j + 1 < hi; j += 2) {
                fp_v4 pa = {w[j], w[j], w[j], w[j]}, pb = {w[j + 1], w[j + 1], w[j + 1], w[j + 1]};
                FP_PF(j);
                FP_PF(j + 1);
                a0 = FP_FMA(pa, *(const fp_v4u *)(x + (Py_ssize_t)idx[j] * K), a0);
                b0 = FP_FMA(pb, *(const fp_v4u *)(x + (Py_ssize_t)idx[j + 1] * K), b0);
            }
            if (j < hi) {
                fp_v4 pa = {w[j], w[j], w[j], w[j]};
                a0 = FP_FMA(pa, *(const fp_v4u *)(x + (Py_ssize_t)idx[j] * K), a0);
            }
            *(fp_v4u *)acc = a0 + b0;
        } else {
            double a0 = 0.0, b0 = 0.0;
            for (; j + 1 < hi; j += 2) {
                FP_PF(j);
                FP_PF(j + 1);
                a0 = a0 + w[j] * x[(Py_ssize_t)idx[j] * K];
                b0 = b0 + w[j + 1] * x[(Py_ssize_t)idx[j + 1] * K];
            }
            if (j < hi)
                a0 = a0 + w[j] * x[(Py_ssize_t)idx[j] * K];
            acc[0] = a0 + b0;
        }
        #undef FP_PF
    }

    /* fp_shared_row_c, the prefetch clamped only for rows that end near P's end */
    static inline void fp_shared_row(int width, int64_t lo, int64_t hi, int64_t last,
                                     const int32_t *idx, const double *w, const double *x,
                                     Py_ssize_t K, double *acc)
    {
        if (hi + FP_AHEAD <= last)
            fp_shared_row_c(0, width, lo, hi, last, idx, w, x, K, acc);
        else
            fp_shared_row_c(1, width, lo, hi, last, idx, w, x, K, acc);
    }
    """
    void fp_matvec_block(int nv, const int64_t *a_indptr, const int64_t *p_indptr,
                         const int32_t *idx, const double *data, const double *const *w,
                         double gamma, const double *x, Py_ssize_t K, Py_ssize_t s,
                         int64_t last, double *out) nogil
    void fp_shared_row(int width, int64_t lo, int64_t hi, int64_t last, const int32_t *idx,
                       const double *w, const double *x, Py_ssize_t K, double *acc) nogil
    void fp_gather(int width, int64_t lo, int64_t hi, int64_t last, const int32_t *idx,
                   const double *data, const double *x, Py_ssize_t K, double *acc) nogil
    void fp_scatter(int width, int64_t lo, int64_t hi, int64_t last, const int32_t *idx,
                    const double *data, const double *w, double *buf, Py_ssize_t K) nogil


cdef inline Py_ssize_t _width(Py_ssize_t left) noexcept nogil:
    """Lanes of the next block of members: 8, 4 or 1."""
    return 8 if left >= 8 else (4 if left >= 4 else 1)


cdef inline bint _weights(const double[:, ::1] pi, const int64_t[::1] members, Py_ssize_t m,
                          Py_ssize_t width, int64_t k, double *w) noexcept nogil:
    """w[u] = π_{members[m + u]}(k) for the block's lanes; whether any is nonzero."""
    cdef Py_ssize_t u
    cdef bint used = False
    for u in range(width):
        w[u] = pi[members[m + u], k]
        used = used or w[u] != 0.0
    return used


cdef inline void _matvec_state(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                               const int32_t[::1] p_indices, const double[::1] p_data,
                               const double[:, ::1] pi, const int64_t[::1] members, double gamma,
                               const double[:, ::1] x, double[:, ::1] out, Py_ssize_t s,
                               int64_t last) noexcept nogil:
    """out[s, :]: blocks of eight and four members (``fp_matvec_block``), then the
    members left one at a time; each member's sum over the pairs in order of k."""
    cdef Py_ssize_t K = x.shape[1], m = 0, u, width
    cdef int64_t k
    cdef double acc, row
    cdef const double* rows[8]
    while m < K:
        width = _width(K - m)
        if width > 1:
            for u in range(width):
                rows[u] = &pi[members[m + u], 0]
            fp_matvec_block(width // 4, &a_indptr[0], &p_indptr[0], &p_indices[0], &p_data[0],
                            rows, gamma, &x[0, m], K, s, last, &out[s, m])
        else:
            acc = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                if pi[members[m], k] == 0.0:
                    continue
                fp_gather(1, p_indptr[k], p_indptr[k + 1], last, &p_indices[0], &p_data[0],
                          &x[0, m], K, &row)
                acc = acc + pi[members[m], k] * row
            out[s, m] = x[s, m] - gamma * acc
        m += width


def bellman_matvec_batch(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                         const int32_t[::1] p_indices, const double[::1] p_data,
                         const double[:, ::1] pi, const int64_t[::1] members, double gamma,
                         const double[:, ::1] x,                                  # IN
                         double[:, ::1] out, int n_threads):                      # OUT
    """bellman_matvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], s
    cdef int64_t last = max(p_indices.shape[0], 1) - 1
    if out.shape[1] == 0:
        return
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        _matvec_state(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out, s, last)


def shared_weights(const int64_t[::1] p_indptr, const double[::1] p_data,
                   const double[::1] pi,                                          # IN
                   double[::1] weights, int n_threads):                           # OUT
    """shared_weights(p_indptr, p_data, pi, weights, n_threads)

    weights[j] = π(k) · p_data[j] for every entry j of pair k's row: the entries of P_π,
    in P's order (a state's rows one after another: state s's entries of P_π are
    [p_indptr[a_indptr[s]], p_indptr[a_indptr[s + 1]]) ). Computed once per policy, they
    serve every product of ``bellman_matvec_shared``.
    Mirrors kernels/numba/batched.py.
    """
    cdef Py_ssize_t n_pairs = pi.shape[0], k
    cdef int64_t j
    for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
        for j in range(p_indptr[k], p_indptr[k + 1]):
            weights[j] = pi[k] * p_data[j]


cdef inline void _shared_state(const int64_t[::1] row_indptr, const int32_t[::1] p_indices,
                               const double[::1] weights, double gamma, const double[:, ::1] x,
                               double[:, ::1] out, Py_ssize_t s, int64_t last) noexcept nogil:
    cdef Py_ssize_t K = x.shape[1], m = 0, u, width
    cdef double acc[8]
    while m < K:
        width = _width(K - m)
        fp_shared_row(width, row_indptr[s], row_indptr[s + 1], last, &p_indices[0], &weights[0],
                      &x[0, m], K, acc)
        for u in range(width):
            out[s, m + u] = x[s, m + u] - gamma * acc[u]
        m += width


def bellman_matvec_shared(const int64_t[::1] row_indptr, const int32_t[::1] p_indices,
                          const double[::1] weights, double gamma,
                          const double[:, ::1] x,                                 # IN
                          double[:, ::1] out, int n_threads):                     # OUT
    """bellman_matvec_shared(row_indptr, p_indices, weights, gamma, x, out, n_threads)

    out[s, i] = x[s, i] − γ Σ_j weights[j] x[p_indices[j], i] over state s's entries
    j ∈ [row_indptr[s], row_indptr[s + 1]), for every column i: the product of one policy
    (``shared_weights``) with K vectors, each entry read once for all K. Each row's sum in
    two chains (even and odd entries) added at the end, the lanes fused (FMA): equal to
    ``bellman_matvec`` to round-off, not bit for bit.
    Mirrors kernels/numba/batched.py.
    """
    cdef Py_ssize_t n_states = out.shape[0], s
    cdef int64_t last = max(p_indices.shape[0], 1) - 1
    if out.shape[1] == 0:
        return
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        _shared_state(row_indptr, p_indices, weights, gamma, x, out, s, last)


cdef inline void _rmatvec_state(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                                const int32_t[::1] p_indices, const double[::1] p_data,
                                const double[:, ::1] pi, const int64_t[::1] members,
                                const double[:, ::1] x, double[:, :, ::1] buf, Py_ssize_t c,
                                Py_ssize_t s, int64_t last) noexcept nogil:
    cdef Py_ssize_t K = x.shape[1], m, u, width
    cdef int64_t k
    cdef double w[8]
    for k in range(a_indptr[s], a_indptr[s + 1]):
        m = 0
        while m < K:
            width = _width(K - m)
            if _weights(pi, members, m, width, k, w):
                for u in range(width):
                    w[u] = w[u] * x[s, m + u]
                fp_scatter(width, p_indptr[k], p_indptr[k + 1], last, &p_indices[0], &p_data[0],
                           w, &buf[c, 0, m], K)
            m += width


def bellman_rmatvec_batch(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                          const int32_t[::1] p_indices, const double[::1] p_data,
                          const double[:, ::1] pi, const int64_t[::1] members, double gamma,
                          const double[:, ::1] x,                                  # IN
                          double[:, ::1] out, double[:, :, ::1] buf, int n_threads):  # OUT
    """bellman_rmatvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out, buf, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], K = out.shape[1], n_chunks = buf.shape[0]
    cdef Py_ssize_t c, s, lo, hi, u, m
    cdef int64_t last = max(p_indices.shape[0], 1) - 1
    cdef double acc
    if K == 0:
        return
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        for u in range(n_states):
            for m in range(K):
                buf[c, u, m] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            _rmatvec_state(a_indptr, p_indptr, p_indices, p_data, pi, members, x, buf, c, s, last)
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        for m in range(K):
            acc = 0.0
            for c in range(n_chunks):
                acc = acc + buf[c, s, m]
            out[s, m] = x[s, m] - gamma * acc


cdef inline void _q_pair(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                         const double[::1] p_data, const double[:, ::1] r,
                         const int64_t[::1] members, double gamma, const double[:, ::1] v,
                         double[:, ::1] out, Py_ssize_t k, int64_t last) noexcept nogil:
    cdef Py_ssize_t K = v.shape[1], m = 0, u, width
    cdef double row[8]
    while m < K:
        width = _width(K - m)
        fp_gather(width, p_indptr[k], p_indptr[k + 1], last, &p_indices[0], &p_data[0],
                  &v[0, m], K, row)
        for u in range(width):
            out[m + u, k] = r[members[m + u], k] + gamma * row[u]
        m += width


def q_values_batch(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                   const double[::1] p_data, const double[:, ::1] r, const int64_t[::1] members,
                   double gamma, const double[:, ::1] v,                           # IN
                   double[:, ::1] out, int n_threads):                             # OUT
    """q_values_batch(p_indptr, p_indices, p_data, r, members, gamma, v, out, n_threads)"""
    cdef Py_ssize_t n_pairs = out.shape[1], k
    cdef int64_t last = max(p_indices.shape[0], 1) - 1
    if v.shape[1] == 0:
        return
    for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
        _q_pair(p_indptr, p_indices, p_data, r, members, gamma, v, out, k, last)


def sweep_residual_batch(const double[:, ::1] b,                                  # IN
                         double[:, ::1] r, double[:, ::1] stats, int n_threads):  # IN/OUT
    """sweep_residual_batch(b, r, stats, n_threads)

    r ← b − r in place (r holds A x on entry), and per member i: stats[0, i] = Σ_s r[s, i]²,
    stats[1, i] = min_s r[s, i], stats[2, i] = max_s r[s, i], stats[3, i] = Σ_s r[s, i]
    (sums in order of s). One
    serial pass at any ``n_threads`` (the (S, K) arrays stay in cache).
    Mirrors kernels/numba/batched.py.
    """
    cdef Py_ssize_t n_states = r.shape[0], K = r.shape[1], s, i
    cdef double t
    if n_states == 0:
        return
    for i in range(K):
        stats[0, i] = 0.0
        stats[1, i] = b[0, i] - r[0, i]
        stats[2, i] = stats[1, i]
        stats[3, i] = 0.0
    for s in range(n_states):
        for i in range(K):
            t = b[s, i] - r[s, i]
            r[s, i] = t
            stats[0, i] = stats[0, i] + t * t
            stats[1, i] = t if t < stats[1, i] else stats[1, i]
            stats[2, i] = t if t > stats[2, i] else stats[2, i]
            stats[3, i] = stats[3, i] + t


def sweep_update_batch(double[:, ::1] x,                                          # IN/OUT
                       const double[:, ::1] r, const double[::1] offset, int n_threads):  # IN
    """sweep_update_batch(x, r, offset, n_threads)

    x[s, i] ← (x[s, i] + r[s, i]) + offset[i] (a Richardson sweep with the extrapolation
    along 1: ``_krylov._Sweeps`` rounds the same way). Serial at any ``n_threads``.
    Mirrors kernels/numba/batched.py.
    """
    cdef Py_ssize_t n_states = x.shape[0], K = x.shape[1], s, i
    for s in range(n_states):
        for i in range(K):
            x[s, i] = (x[s, i] + r[s, i]) + offset[i]


def regularized_reward_batch(const int64_t[::1] a_indptr, const double[:, ::1] r,
                             const int64_t[::1] r_of, const double[:, ::1] pi,
                             const int64_t[::1] pi_of, const double[::1] ref, int code,
                             double alpha, double tau,                            # IN
                             double[:, ::1] out, double[::1] terms, int n_threads):  # OUT
    """regularized_reward_batch(a_indptr, r, r_of, pi, pi_of, ref, code, alpha, tau, out, terms, n_threads)

    out[i, s] = Σ_a π_m r_n − τ Σ_a π_ref f(π_m/π_ref), m = pi_of[i], n = r_of[i]: the
    ``regularized_reward`` kernel of each member. The terms π_ref f(π/π_ref) of a policy
    are computed once into ``terms`` (n_pairs) in a pass over its pairs, and kept for the
    next member when it has the same policy row. Reverse KL's terms are p·log(p/q) by the
    branch-free polynomial log (vectorised; ``flog``, p = 0 giving 0), the few that are
    not finite (p/q under- or overflows) then recomputed as ``ref_f``: equal to
    ``regularized_reward`` to a few ulps of each term, not bit for bit.
    Mirrors kernels/numba/batched.py.
    """
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, n_pairs = terms.shape[0]
    cdef Py_ssize_t K = out.shape[0], i, s
    cdef int64_t k, m
    cdef double acc, div, t, p
    for i in range(K):
        m = pi_of[i]
        if tau != 0.0 and (i == 0 or m != pi_of[i - 1]):
            if code == REVERSE_KL:
                for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
                    p = pi[m, k]
                    t = p * flog(p / ref[k])
                    terms[k] = t if p > 0.0 else 0.0
            else:
                for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
                    terms[k] = ref_f(code, alpha, pi[m, k], ref[k])
        for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
            acc = 0.0
            div = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                acc = acc + pi[m, k] * r[r_of[i], k]
                if tau != 0.0:
                    t = terms[k]
                    if not isfinite(t):
                        t = ref_f(code, alpha, pi[m, k], ref[k])
                    div = div + t
            if tau != 0.0:
                out[i, s] = acc - tau * div
            else:
                out[i, s] = acc
