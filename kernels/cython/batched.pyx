"""Sparse products for K members at once, on (S, K)-interleaved vectors.

``bellman_matvec_batch``:  out[:, m] = x[:, m] − γ P_{π_m} x[:, m]
``bellman_rmatvec_batch``: out[:, m] = x[:, m] − γ P_{π_m}ᵀ x[:, m], scattered into
                           per-chunk buffers ``buf`` (n_chunks, n_states, K) reduced in a
                           fixed order
``q_values_batch``:        out[:, m] = r[:, m] + γ P v[:, m]

``pi`` and ``r`` are (n_pairs, K), or (n_pairs, 1) when shared by all members. Each
member's sums are those of kernels/cython/linear.pyx term by term, in the same order.
Mirrors kernels/numba/batched.py.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t


def bellman_matvec_batch(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                         const int32_t[::1] p_indices, const double[::1] p_data,
                         const double[:, ::1] pi, double gamma, const double[:, ::1] x,  # IN
                         double[:, ::1] out, int n_threads):                             # OUT
    """bellman_matvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], n_members = out.shape[1], s, m
    cdef Py_ssize_t shared = 0 if pi.shape[1] == 1 else 1
    cdef int64_t k, j
    cdef double acc, row, w
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        for m in range(n_members):
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
    cdef Py_ssize_t n_states = out.shape[0], n_members = out.shape[1], n_chunks = buf.shape[0]
    cdef Py_ssize_t shared = 0 if pi.shape[1] == 1 else 1
    cdef Py_ssize_t c, s, lo, hi, t, m
    cdef int64_t k, j
    cdef double p, w, acc
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        for t in range(n_states):
            for m in range(n_members):
                buf[c, t, m] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            for k in range(a_indptr[s], a_indptr[s + 1]):
                for m in range(n_members):
                    p = pi[k, m * shared]
                    if p == 0.0:
                        continue
                    w = p * x[s, m]
                    for j in range(p_indptr[k], p_indptr[k + 1]):
                        buf[c, p_indices[j], m] += w * p_data[j]
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        for m in range(n_members):
            acc = 0.0
            for c in range(n_chunks):
                acc = acc + buf[c, s, m]
            out[s, m] = x[s, m] - gamma * acc


def q_values_batch(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                   const double[::1] p_data, const double[:, ::1] r, double gamma,
                   const double[:, ::1] v,                                         # IN
                   double[:, ::1] out, int n_threads):                             # OUT
    """q_values_batch(p_indptr, p_indices, p_data, r, gamma, v, out, n_threads)"""
    cdef Py_ssize_t n_pairs = out.shape[0], n_members = out.shape[1], k, m
    cdef Py_ssize_t shared = 0 if r.shape[1] == 1 else 1
    cdef int64_t j
    cdef double row
    for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
        for m in range(n_members):
            row = 0.0
            for j in range(p_indptr[k], p_indptr[k + 1]):
                row = row + p_data[j] * v[p_indices[j], m]
            out[k, m] = r[k, m * shared] + gamma * row
