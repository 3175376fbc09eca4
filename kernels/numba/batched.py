"""Sparse products for K members at once, on (S, K)-interleaved vectors.

``bellman_matvec_batch``:  out[:, i] = x[:, i] − γ P_{π_m} x[:, i],  m = members[i]
``bellman_rmatvec_batch``: out[:, i] = x[:, i] − γ P_{π_m}ᵀ x[:, i], scattered into
                           per-chunk buffers ``buf`` (n_chunks, n_states, K) reduced in a
                           fixed order (no atomics)
``q_values_batch``:        out[i, :] = r_m + γ P v[:, i]   (per pair),  m = members[i]
``shared_weights``:        weights[j] = π(k) p_j for each entry j of pair k's row (P_π's
                           entries, of one policy shared by all members)
``bellman_matvec_shared``: out[:, i] = x[:, i] − γ P_π x[:, i] for every column, P_π given
                           by those weights on the state rows ``row_indptr``

Vectors are (n_states, K) C-contiguous: member i of state s is ``x[s, i]``, so the K
members' entries of one successor share a cache line and each product reads the
transition rows (``p_indptr``, ``p_indices``, ``p_data``: the bulk of the bytes) once
for all K members. ``pi`` and ``r`` are (L, n_pairs), one row per policy or reward
vector as the caller holds them; member i uses row ``members[i]`` (all 0: one policy
or reward shared by all members).

Members go in blocks of four with four scalar accumulators (the remainder K mod 4 one
at a time); a pair is skipped when π is 0 for every member of the block. Each member's
sums are those of the single-member kernels of ``linear.py``, term by term and in the
same order (a pair with π_m = 0 adds an exact 0 for member m), so member i's product is
bit for bit that of ``bellman_matvec`` / ``bellman_rmatvec`` / ``q_values`` on it alone
(for ``bellman_rmatvec_batch``: with as many chunks); the Cython twin's blocks fuse each
multiply-add (FMA), so the twins agree to round-off (1e-13), not bit for bit.
``sweep_residual_batch`` / ``sweep_update_batch``: the vector passes of a Richardson sweep
on (S, K) arrays (serial); ``regularized_reward_batch``: r_π − τ D_f(π) of K members, the
divergence terms of a policy computed once per run of members sharing it (reverse KL by
the polynomial log, a few ulps from ``regularized_reward``). Gathers and scatters prefetch
the successor ``AHEAD`` entries on.
Mirrors kernels/cython/batched.pyx.
"""
import numpy as np
from numba import prange

from ._codes import REVERSE_KL
from ._divergence import ref_f
from ._jit import serial, twins
from ._softmax import flog
from ._prefetch import AHEAD, prefetch_read, prefetch_write

_4 = np.uint64(4)
_1, _2, _3 = np.uint64(1), np.uint64(2), np.uint64(3)


def bellman_matvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out):
    n_states, n_members = out.shape
    K = np.uint64(n_members)
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    xf, of = x.reshape(x.size), out.reshape(out.size)
    n_four = K // _4 * _4
    for s in prange(n_states):
        so = np.uint64(s) * K
        lo, hi = np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])
        for m in range(np.uint64(0), n_four, _4):
            p0, p1, p2, p3 = pi[members[m]], pi[members[m + _1]], pi[members[m + _2]], pi[members[m + _3]]
            a0 = a1 = a2 = a3 = 0.0
            for k in range(lo, hi):
                w0, w1, w2, w3 = p0[k], p1[k], p2[k], p3[k]
                if w0 == 0.0 and w1 == 0.0 and w2 == 0.0 and w3 == 0.0:
                    continue
                r0 = r1 = r2 = r3 = 0.0
                for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                    prefetch_read(xf, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                    pj = p_data[j]
                    base = np.uint64(p_indices[j]) * K + m
                    r0 += pj * xf[base]
                    r1 += pj * xf[base + _1]
                    r2 += pj * xf[base + _2]
                    r3 += pj * xf[base + _3]
                a0 += w0 * r0
                a1 += w1 * r1
                a2 += w2 * r2
                a3 += w3 * r3
            of[so + m] = xf[so + m] - gamma * a0
            of[so + m + _1] = xf[so + m + _1] - gamma * a1
            of[so + m + _2] = xf[so + m + _2] - gamma * a2
            of[so + m + _3] = xf[so + m + _3] - gamma * a3
        for m in range(n_four, K):
            p0 = pi[members[m]]
            acc = 0.0
            for k in range(lo, hi):
                w = p0[k]
                if w == 0.0:
                    continue
                row = 0.0
                for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                    prefetch_read(xf, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                    row += p_data[j] * xf[np.uint64(p_indices[j]) * K + m]
                acc += w * row
            of[so + m] = xf[so + m] - gamma * acc


def shared_weights(p_indptr, p_data, pi, weights):
    for k in prange(pi.shape[0]):
        w = pi[k]
        for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
            weights[j] = w * p_data[j]


def bellman_matvec_shared(row_indptr, p_indices, weights, gamma, x, out):
    n_states, n_members = out.shape
    K = np.uint64(n_members)
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    xf, of = x.reshape(x.size), out.reshape(out.size)
    n_four = K // _4 * _4
    for s in prange(n_states):
        so = np.uint64(s) * K
        lo, hi = np.uint64(row_indptr[s]), np.uint64(row_indptr[s + 1])
        for m in range(np.uint64(0), n_four, _4):
            a0 = a1 = a2 = a3 = 0.0
            for j in range(lo, hi):
                prefetch_read(xf, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                wj = weights[j]
                base = np.uint64(p_indices[j]) * K + m
                a0 += wj * xf[base]
                a1 += wj * xf[base + _1]
                a2 += wj * xf[base + _2]
                a3 += wj * xf[base + _3]
            of[so + m] = xf[so + m] - gamma * a0
            of[so + m + _1] = xf[so + m + _1] - gamma * a1
            of[so + m + _2] = xf[so + m + _2] - gamma * a2
            of[so + m + _3] = xf[so + m + _3] - gamma * a3
        for m in range(n_four, K):
            acc = 0.0
            for j in range(lo, hi):
                prefetch_read(xf, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                acc += weights[j] * xf[np.uint64(p_indices[j]) * K + m]
            of[so + m] = xf[so + m] - gamma * acc


def bellman_rmatvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out, buf):
    n_states, n_members = out.shape
    n_chunks = buf.shape[0]
    K = np.uint64(n_members)
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    xf, of = x.reshape(x.size), out.reshape(out.size)
    n_four = K // _4 * _4
    for c in prange(n_chunks):
        y = buf[c].reshape(n_states * n_members)
        y[:] = 0.0
        lo = c * n_states // n_chunks
        hi = (c + 1) * n_states // n_chunks
        for s in range(lo, hi):
            so = np.uint64(s) * K
            for k in range(np.uint64(a_indptr[s]), np.uint64(a_indptr[s + 1])):
                for m in range(np.uint64(0), n_four, _4):
                    p0, p1 = pi[members[m], k], pi[members[m + _1], k]
                    p2, p3 = pi[members[m + _2], k], pi[members[m + _3], k]
                    if p0 == 0.0 and p1 == 0.0 and p2 == 0.0 and p3 == 0.0:
                        continue
                    w0, w1 = p0 * xf[so + m], p1 * xf[so + m + _1]
                    w2, w3 = p2 * xf[so + m + _2], p3 * xf[so + m + _3]
                    for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                        prefetch_write(y, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                        pj = p_data[j]
                        base = np.uint64(p_indices[j]) * K + m
                        y[base] += w0 * pj
                        y[base + _1] += w1 * pj
                        y[base + _2] += w2 * pj
                        y[base + _3] += w3 * pj
                for m in range(n_four, K):
                    p = pi[members[m], k]
                    if p == 0.0:
                        continue
                    w = p * xf[so + m]
                    for j in range(np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])):
                        prefetch_write(y, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                        y[np.uint64(p_indices[j]) * K + m] += w * p_data[j]
    for s in prange(n_states):
        so = np.uint64(s) * K
        for m in range(K):
            acc = 0.0
            for c in range(n_chunks):
                acc += buf[c, s, m]
            of[so + m] = xf[so + m] - gamma * acc


def q_values_batch(p_indptr, p_indices, p_data, r, members, gamma, v, out):
    n_members, n_pairs = out.shape
    K = np.uint64(n_members)
    ahead, last = np.uint64(AHEAD), np.uint64(max(p_indices.shape[0], 1) - 1)
    vf = v.reshape(v.size)
    n_four = K // _4 * _4
    for k in prange(n_pairs):
        lo, hi = np.uint64(p_indptr[k]), np.uint64(p_indptr[k + 1])
        for m in range(np.uint64(0), n_four, _4):
            r0 = r1 = r2 = r3 = 0.0
            for j in range(lo, hi):
                prefetch_read(vf, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                pj = p_data[j]
                base = np.uint64(p_indices[j]) * K + m
                r0 += pj * vf[base]
                r1 += pj * vf[base + _1]
                r2 += pj * vf[base + _2]
                r3 += pj * vf[base + _3]
            out[m, k] = r[members[m], k] + gamma * r0
            out[m + _1, k] = r[members[m + _1], k] + gamma * r1
            out[m + _2, k] = r[members[m + _2], k] + gamma * r2
            out[m + _3, k] = r[members[m + _3], k] + gamma * r3
        for m in range(n_four, K):
            row = 0.0
            for j in range(lo, hi):
                prefetch_read(vf, np.uint64(p_indices[min(j + ahead, last)]) * K + m)
                row += p_data[j] * vf[np.uint64(p_indices[j]) * K + m]
            out[m, k] = r[members[m], k] + gamma * row


def sweep_residual_batch(b, r, stats):
    n_states, K = r.shape
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


def sweep_update_batch(x, r, offset):
    n_states, K = x.shape
    for s in range(n_states):
        for i in range(K):
            x[s, i] = (x[s, i] + r[s, i]) + offset[i]


def regularized_reward_batch(a_indptr, r, r_of, pi, pi_of, ref, code, alpha, tau, out, terms):
    n_states, n_pairs, K = a_indptr.shape[0] - 1, terms.shape[0], out.shape[0]
    for i in range(K):
        m = pi_of[i]
        if tau != 0.0 and (i == 0 or m != pi_of[i - 1]):
            if code == REVERSE_KL:
                for k in prange(n_pairs):
                    p = pi[m, k]
                    t = p * flog(p / ref[k])
                    terms[k] = t if p > 0.0 else 0.0
            else:
                for k in prange(n_pairs):
                    terms[k] = ref_f(code, alpha, pi[m, k], ref[k])
        n = r_of[i]
        for s in prange(n_states):
            acc = 0.0
            div = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                acc += pi[m, k] * r[n, k]
                if tau != 0.0:
                    t = terms[k]
                    if not np.isfinite(t):
                        t = ref_f(code, alpha, pi[m, k], ref[k])
                    div += t
            out[i, s] = acc - tau * div if tau != 0.0 else acc


KERNELS = {**twins(bellman_matvec_batch, bellman_rmatvec_batch, q_values_batch,
                 regularized_reward_batch, shared_weights, bellman_matvec_shared),
           **serial(sweep_residual_batch, sweep_update_batch)}
