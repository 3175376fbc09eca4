"""Sparse products with the policy's transition operator.

``bellman_matvec``:  out = x − γ P_π x
``bellman_rmatvec``: out = x − γ P_πᵀ x, scattered into per-chunk buffers
                     ``buf`` (n_chunks, n_states) reduced in a fixed order
``q_values``:        out = r + γ P v
Mirrors kernels/numba/linear.py.
"""
from cython.parallel cimport prange
from libc.stdint cimport int32_t, int64_t


def bellman_matvec(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                   const int32_t[::1] p_indices, const double[::1] p_data,
                   const double[::1] pi, double gamma, const double[::1] x,   # IN
                   double[::1] out, int n_threads):                             # OUT
    """bellman_matvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], s
    cdef int64_t k, j
    cdef double acc, row
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            if pi[k] == 0.0:  # deterministic policies: one row per state
                continue
            row = 0.0
            for j in range(p_indptr[k], p_indptr[k + 1]):
                row = row + p_data[j] * x[p_indices[j]]
            acc = acc + pi[k] * row
        out[s] = x[s] - gamma * acc


def bellman_rmatvec(const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                    const int32_t[::1] p_indices, const double[::1] p_data,
                    const double[::1] pi, double gamma, const double[::1] x,  # IN
                    double[::1] out, double[:, ::1] buf, int n_threads):        # OUT
    """bellman_rmatvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, buf, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], n_chunks = buf.shape[0], c, s, lo, hi, t
    cdef int64_t k, j
    cdef double xs, w, acc
    for c in prange(n_chunks, nogil=True, schedule="static", num_threads=n_threads):
        for t in range(n_states):
            buf[c, t] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            xs = x[s]
            for k in range(a_indptr[s], a_indptr[s + 1]):
                if pi[k] == 0.0:
                    continue
                w = pi[k] * xs
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    buf[c, p_indices[j]] += w * p_data[j]
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        acc = 0.0
        for c in range(n_chunks):
            acc = acc + buf[c, s]
        out[s] = x[s] - gamma * acc


def q_values(const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
             const double[::1] p_data, const double[::1] r, double gamma,
             const double[::1] v,                                               # IN
             double[::1] out, int n_threads):                                   # OUT
    """q_values(p_indptr, p_indices, p_data, r, gamma, v, out, n_threads)"""
    cdef Py_ssize_t n_pairs = out.shape[0], k
    cdef int64_t j
    cdef double row
    for k in prange(n_pairs, nogil=True, schedule="static", num_threads=n_threads):
        row = 0.0
        for j in range(p_indptr[k], p_indptr[k + 1]):
            row = row + p_data[j] * v[p_indices[j]]
        out[k] = r[k] + gamma * row
