"""Sparse products for K members at once, on (S, K)-interleaved vectors.

``bellman_matvec_batch``:  out[:, m] = x[:, m] − γ P_{π_m} x[:, m]
``bellman_rmatvec_batch``: out[:, m] = x[:, m] − γ P_{π_m}ᵀ x[:, m], scattered into
                           per-chunk buffers ``buf`` (n_chunks, n_states, K) reduced in a
                           fixed order
``q_values_batch``:        out[:, m] = r[:, m] + γ P v[:, m]

``pi`` and ``r`` are (n_pairs, K), or (n_pairs, 1) when shared by all members. Members
go in blocks of four with four scalar accumulators (the remainder K mod 4 one at a
time); a pair is skipped when π is 0 for every member of the block. Each member's sums
are those of kernels/cython/linear.pyx term by term, in the same order.
Mirrors kernels/numba/batched.py.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t


def bellman_matvec_batch(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                         const int32_t[::1] p_indices, const double[::1] p_data,
                         const double[:, ::1] pi, double gamma, const double[:, ::1] x,  # IN
                         double[:, ::1] out, int n_threads):                             # OUT
    """bellman_matvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], K = out.shape[1], s, m, i
    cdef Py_ssize_t shared = 0 if pi.shape[1] == 1 else 1, n_four = K // 4 * 4
    cdef int64_t k, j
    cdef int32_t t
    cdef double a0, a1, a2, a3, r0, r1, r2, r3, w0, w1, w2, w3, pj, acc, row, w
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        for i in range(n_four // 4):
            m = 4 * i
            a0 = 0.0
            a1 = 0.0
            a2 = 0.0
            a3 = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                w0 = pi[k, m * shared]
                w1 = pi[k, (m + 1) * shared]
                w2 = pi[k, (m + 2) * shared]
                w3 = pi[k, (m + 3) * shared]
                if w0 == 0.0 and w1 == 0.0 and w2 == 0.0 and w3 == 0.0:
                    continue
                r0 = 0.0
                r1 = 0.0
                r2 = 0.0
                r3 = 0.0
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    pj = p_data[j]
                    t = p_indices[j]
                    r0 = r0 + pj * x[t, m]
                    r1 = r1 + pj * x[t, m + 1]
                    r2 = r2 + pj * x[t, m + 2]
                    r3 = r3 + pj * x[t, m + 3]
                a0 = a0 + w0 * r0
                a1 = a1 + w1 * r1
                a2 = a2 + w2 * r2
                a3 = a3 + w3 * r3
            out[s, m] = x[s, m] - gamma * a0
            out[s, m + 1] = x[s, m + 1] - gamma * a1
            out[s, m + 2] = x[s, m + 2] - gamma * a2
            out[s, m + 3] = x[s, m + 3] - gamma * a3
        for m in range(n_four, K):
            acc = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                w = pi[k, m * shared]
                if w == 0.0:
                    continue
                row = 0.0
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    row = row + p_data[j] * x[p_indices[j], m]
                acc = acc + w * row
            out[s, m] = x[s, m] - gamma * acc


def bellman_rmatvec_batch(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                          const int32_t[::1] p_indices, const double[::1] p_data,
                          const double[:, ::1] pi, double gamma, const double[:, ::1] x,  # IN
                          double[:, ::1] out, double[:, :, ::1] buf, int n_threads):       # OUT
    """bellman_rmatvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, buf, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], K = out.shape[1], n_chunks = buf.shape[0]
    cdef Py_ssize_t shared = 0 if pi.shape[1] == 1 else 1, n_four = K // 4 * 4
    cdef Py_ssize_t c, s, lo, hi, u, m, i
    cdef int64_t k, j
    cdef int32_t t
    cdef double p0, p1, p2, p3, w0, w1, w2, w3, pj, p, w, acc
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        for u in range(n_states):
            for m in range(K):
                buf[c, u, m] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            for k in range(a_indptr[s], a_indptr[s + 1]):
                for i in range(n_four // 4):
                    m = 4 * i
                    p0 = pi[k, m * shared]
                    p1 = pi[k, (m + 1) * shared]
                    p2 = pi[k, (m + 2) * shared]
                    p3 = pi[k, (m + 3) * shared]
                    if p0 == 0.0 and p1 == 0.0 and p2 == 0.0 and p3 == 0.0:
                        continue
                    w0 = p0 * x[s, m]
                    w1 = p1 * x[s, m + 1]
                    w2 = p2 * x[s, m + 2]
                    w3 = p3 * x[s, m + 3]
                    for j in range(p_indptr[k], p_indptr[k + 1]):
                        pj = p_data[j]
                        t = p_indices[j]
                        buf[c, t, m] += w0 * pj
                        buf[c, t, m + 1] += w1 * pj
                        buf[c, t, m + 2] += w2 * pj
                        buf[c, t, m + 3] += w3 * pj
                for m in range(n_four, K):
                    p = pi[k, m * shared]
                    if p == 0.0:
                        continue
                    w = p * x[s, m]
                    for j in range(p_indptr[k], p_indptr[k + 1]):
                        buf[c, p_indices[j], m] += w * p_data[j]
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        for m in range(K):
            acc = 0.0
            for c in range(n_chunks):
                acc = acc + buf[c, s, m]
            out[s, m] = x[s, m] - gamma * acc


def q_values_batch(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                   const double[::1] p_data, const double[:, ::1] r, double gamma,
                   const double[:, ::1] v,                                         # IN
                   double[:, ::1] out, int n_threads):                             # OUT
    """q_values_batch(p_indptr, p_indices, p_data, r, gamma, v, out, n_threads)"""
    cdef Py_ssize_t n_pairs = out.shape[0], K = out.shape[1], k, m, i
    cdef Py_ssize_t shared = 0 if r.shape[1] == 1 else 1, n_four = K // 4 * 4
    cdef int64_t j
    cdef int32_t t
    cdef double r0, r1, r2, r3, pj, row
    for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
        for i in range(n_four // 4):
            m = 4 * i
            r0 = 0.0
            r1 = 0.0
            r2 = 0.0
            r3 = 0.0
            for j in range(p_indptr[k], p_indptr[k + 1]):
                pj = p_data[j]
                t = p_indices[j]
                r0 = r0 + pj * v[t, m]
                r1 = r1 + pj * v[t, m + 1]
                r2 = r2 + pj * v[t, m + 2]
                r3 = r3 + pj * v[t, m + 3]
            out[k, m] = r[k, m * shared] + gamma * r0
            out[k, m + 1] = r[k, (m + 1) * shared] + gamma * r1
            out[k, m + 2] = r[k, (m + 2) * shared] + gamma * r2
            out[k, m + 3] = r[k, (m + 3) * shared] + gamma * r3
        for m in range(n_four, K):
            row = 0.0
            for j in range(p_indptr[k], p_indptr[k + 1]):
                row = row + p_data[j] * v[p_indices[j], m]
            out[k, m] = r[k, m * shared] + gamma * row
