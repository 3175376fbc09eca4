"""One topological pass over an MDP whose non-terminal states form a DAG.

``episodic_values``: out = (I − γ P_π)⁻¹ c on the non-terminal states (reverse
                     topological order), 0 on terminal states
``episodic_visits``: out = (I − γ P_πᵀ)⁻¹ μ on the non-terminal states (topological
                     order), 0 on terminal states
``order``: the non-terminal states, every transition between them going forward
(``MDP.topological_order``). Serial (``n_threads`` is accepted and ignored).
Mirrors kernels/numba/episodic.py.
"""
from libc.stdint cimport int32_t, int64_t, uint8_t

include "_probability.pxi"


def episodic_values(const int32_t[::1] order, const uint8_t[::1] terminal,
                    const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                    const int32_t[::1] p_indices, const probability[::1] p_data,
                    const double[::1] pi, double gamma, const double[::1] c,   # IN
                    double[::1] out, int n_threads):                             # OUT
    """episodic_values(order, terminal, a_indptr, p_indptr, p_indices, p_data, pi, gamma, c,
    out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], n = order.shape[0], s, i
    cdef int64_t k, j
    cdef double acc, row
    with nogil:
        for s in range(n_states):
            if terminal[s]:
                out[s] = 0.0
        for i in range(n - 1, -1, -1):
            s = order[i]
            acc = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                if pi[k] == 0.0:
                    continue
                row = 0.0
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    row = row + p_data[j] * out[p_indices[j]]
                acc = acc + pi[k] * (row / row_total(&p_data[0], p_indptr[k], p_indptr[k + 1]))
            out[s] = c[s] + gamma * acc


def episodic_visits(const int32_t[::1] order, const uint8_t[::1] terminal,
                    const int64_t[::1] a_indptr, const int64_t[::1] p_indptr,
                    const int32_t[::1] p_indices, const probability[::1] p_data,
                    const double[::1] pi, double gamma, const double[::1] mu,  # IN
                    double[::1] out, int n_threads):                             # OUT
    """episodic_visits(order, terminal, a_indptr, p_indptr, p_indices, p_data, pi, gamma, mu,
    out, n_threads)"""
    cdef Py_ssize_t n_states = out.shape[0], n = order.shape[0], s, i
    cdef int64_t k, j
    cdef int32_t t
    cdef double ns, w
    with nogil:
        for s in range(n_states):
            out[s] = 0.0 if terminal[s] else mu[s]
        for i in range(n):
            s = order[i]
            ns = out[s]
            if ns == 0.0:
                continue
            for k in range(a_indptr[s], a_indptr[s + 1]):
                if pi[k] == 0.0:
                    continue
                w = gamma * pi[k] * ns / row_total(&p_data[0], p_indptr[k], p_indptr[k + 1])
                for j in range(p_indptr[k], p_indptr[k + 1]):
                    t = p_indices[j]
                    if not terminal[t]:
                        out[t] += w * p_data[j]
