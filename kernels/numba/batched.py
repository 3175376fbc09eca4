"""Sparse products for K members at once, on (S, K)-interleaved vectors.

``bellman_matvec_batch``:  out[:, m] = x[:, m] − γ P_{π_m} x[:, m]
``bellman_rmatvec_batch``: out[:, m] = x[:, m] − γ P_{π_m}ᵀ x[:, m], scattered into
                           per-chunk buffers ``buf`` (n_chunks, n_states, K) reduced in a
                           fixed order (no atomics)
``q_values_batch``:        out[:, m] = r[:, m] + γ P v[:, m]   (per pair)

Vectors are (n_states, K) C-contiguous: member m of state s is ``x[s, m]``, so the K
members' entries of one successor share a cache line and each product reads the
transition rows (``p_indptr``, ``p_indices``, ``p_data``: the bulk of the bytes) once
for all K members. ``pi`` is (n_pairs, K), or (n_pairs, 1) for one policy shared by
all members; ``r`` likewise (n_pairs, K) or (n_pairs, 1).

Each member's sums are those of the single-member kernels of ``linear.py``, term by
term and in the same order (a pair with π_m = 0 is skipped for that member), so
member m's product is bit for bit that of ``bellman_matvec`` / ``bellman_rmatvec`` /
``q_values`` on it alone (for ``bellman_rmatvec_batch``: with as many chunks).
Mirrors kernels/cython/batched.pyx.
"""
import numpy as np
from numba import prange

from ._jit import twins


def bellman_matvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out):
    n_states, n_members = out.shape
    shared = 0 if pi.shape[1] == 1 else 1  # column stride of pi: one policy for all
    for s in prange(n_states):
        for m in range(n_members):
            acc = 0.0
            for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                w = pi[k, m * shared]
                if w == 0.0:
                    continue
                row = 0.0
                for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                    row += p_data[j] * x[np.uint32(p_indices[j]), m]
                acc += w * row
            out[s, m] = x[s, m] - gamma * acc


def bellman_rmatvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, buf):
    n_states, n_members = out.shape
    n_chunks = buf.shape[0]
    shared = 0 if pi.shape[1] == 1 else 1
    for c in prange(n_chunks):
        y = buf[c]
        y[:, :] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                for m in range(n_members):
                    p = pi[k, m * shared]
                    if p == 0.0:
                        continue
                    w = p * x[s, m]
                    for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                        y[np.uint32(p_indices[j]), m] += w * p_data[j]
    for s in prange(n_states):
        for m in range(n_members):
            acc = 0.0
            for c in range(n_chunks):
                acc += buf[c, s, m]
            out[s, m] = x[s, m] - gamma * acc


def q_values_batch(p_indptr, p_indices, p_data, r, gamma, v, out):
    n_pairs, n_members = out.shape
    shared = 0 if r.shape[1] == 1 else 1
    for k in prange(n_pairs):
        for m in range(n_members):
            row = 0.0
            for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                row += p_data[j] * v[np.uint32(p_indices[j]), m]
            out[k, m] = r[k, m * shared] + gamma * row


KERNELS = twins(bellman_matvec_batch, bellman_rmatvec_batch, q_values_batch)
