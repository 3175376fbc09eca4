"""Per-state segment kernels over the pairs of each state (``a_indptr`` blocks).

``segment_softmax``:    out = softmax of logits within each state (_softmax.softmax_states)
``regularized_reward``: out[s] = Σ_a π r − τ Σ_a π_ref f(π/π_ref)
``advantages``:         out = q − Σ_a π q  (per state)
``q_advantages``:       q = r + scale·rows and adv = q − Σ_a π q in one pass
``policy_gradient``:    out[k] = w(s) π_k [(b_k − Σ_a π b) − τ(f'_k − Σ_a π f')]
``compact_indptr``:     the pairs with π > 0 and their pair and row pointers (serial prefix sums)
``compact_rows``:       their rows of P and their π, gathered pair by pair
Mirrors kernels/cython/tables.pyx.
"""
import math

import numpy as np
from numba import njit, prange

from ._codes import FORWARD_KL, REVERSE_KL
from ._divergence import DBL_MIN, SQRT_HALF, p_fprime, ref_f
from ._jit import serial, twins
from ._prefetch import prefetch_read
from ._softmax import LANES, flog_or_log1p, max_actions, softmax_states

TASK_BLOCKS = 32  # blocks of LANES states per parallel task
TERM_CHUNK = 512  # pairs per chunk of divergence terms (4 KB)
ROWS_AHEAD = 8  # compact_rows: the pair whose rows are prefetched


def segment_softmax(a_indptr, logits, out):
    n_states = a_indptr.shape[0] - 1
    per_task = TASK_BLOCKS * LANES
    for c in prange((n_states + per_task - 1) // per_task):
        _softmax_task(a_indptr, c * per_task, min((c + 1) * per_task, n_states), logits, out)


@njit(cache=True, nogil=True, error_model="numpy")
def _softmax_task(a_indptr, s0, s1, logits, out):
    """segment_softmax for the states s0 ≤ s < s1 (the scratch of one parallel task)."""
    block = np.empty((2, max_actions(a_indptr, s0, s1), LANES))
    softmax_states(a_indptr, s0, s1, logits, out, np.empty(0), block, np.empty((3, LANES)))


def regularized_reward(a_indptr, r, pi, ref, code, alpha, tau, out):
    n_states = a_indptr.shape[0] - 1
    if (code == REVERSE_KL or code == FORWARD_KL) and tau != 0.0:  # vectorised terms
        per_task = TASK_BLOCKS * LANES
        for c in prange((n_states + per_task - 1) // per_task):
            _kl_rewards(a_indptr, c * per_task, min((c + 1) * per_task, n_states), r, pi, ref,
                        code == REVERSE_KL, tau, out, np.empty(TERM_CHUNK))
    else:
        for s in prange(n_states):
            acc = 0.0
            div = 0.0
            for k in range(a_indptr[s], a_indptr[s + 1]):
                acc += pi[k] * r[k]
                if tau != 0.0:
                    div += ref_f(code, alpha, pi[k], ref[k])
            out[s] = acc - tau * div if tau != 0.0 else acc


@njit(cache=True, nogil=True, error_model="numpy")
def _kl_rewards(a_indptr, s0, s1, r, pi, ref, reverse, tau, out, terms):
    """regularized_reward of the states s0 ≤ s < s1 for reverse or forward KL: the terms
    ``ref_f`` in chunks of ``terms.size`` pairs (:func:`_kl_terms`), then the sums per state
    in pair order (the generic loop's operations, so the same bits)."""
    code = REVERSE_KL if reverse else FORWARD_KL
    end = a_indptr[s1]
    s = s0
    acc = 0.0
    div = 0.0
    c0 = a_indptr[s0]
    while c0 < end:
        c1 = min(c0 + terms.size, end)
        if reverse:
            _kl_terms(pi[c0:c1], ref[c0:c1], terms, True)
        else:
            _kl_terms(pi[c0:c1], ref[c0:c1], terms, False)
        for k in range(c0, c1):
            while k == a_indptr[s + 1]:  # state s ends before pair k
                out[s] = acc - tau * div
                acc = 0.0
                div = 0.0
                s += 1
            acc += pi[k] * r[k]
            t = terms[k - c0]
            if not math.isfinite(t):
                t = ref_f(code, 0.0, pi[k], ref[k])
            div += t
        c0 = c1
    while s < s1:
        out[s] = acc - tau * div
        acc = 0.0
        div = 0.0
        s += 1


@njit(cache=True, inline="always", error_model="numpy")
def _kl_terms(p, q, out, reverse):
    """out[:p.size] = ref_f(REVERSE_KL or FORWARD_KL, p, q) without branches (LLVM
    vectorises the loop), bit for bit; NaN where ``ref_f`` leaves the two polynomial logs of
    ``_log_ratio`` (small/big below DBL_MIN: p = 0, a tiny ratio; NaN), which the caller then
    computes by ``ref_f`` itself."""
    for i in range(p.size):
        pi = p[i]
        qi = q[i]
        le = pi <= qi
        small = pi if le else qi
        big = qi if le else pi
        ratio = small / big
        L = flog_or_log1p(ratio, (small - big) / big, ratio >= SQRT_HALF)  # _log_ratio
        L = L if ratio >= DBL_MIN else math.nan
        if reverse:  # p log(p/q)
            out[i] = pi * L if le else -pi * L
        else:  # q log(q/p)
            out[i] = -qi * L if le else qi * L


def advantages(a_indptr, pi, q, out):
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        mean = 0.0
        for k in range(lo, hi):
            mean += pi[k] * q[k]
        for k in range(lo, hi):
            out[k] = q[k] - mean


def q_advantages(a_indptr, pi, rows, r, scale, q, adv):
    """q and adv may alias rows (and each other): each pair is read before it is written."""
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        mean = 0.0
        for k in range(lo, hi):
            qk = rows[k] * scale + r[k]
            q[k] = qk
            mean += pi[k] * qk
        for k in range(lo, hi):
            adv[k] = q[k] - mean


def policy_gradient(a_indptr, pi, b, weight, ref, code, alpha, tau, out):
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        mean_b = 0.0
        mean_f = 0.0
        for k in range(lo, hi):
            mean_b += pi[k] * b[k]
            if tau != 0.0:
                mean_f += p_fprime(code, alpha, pi[k], ref[k])
        for k in range(lo, hi):
            g = pi[k] * (b[k] - mean_b)
            if tau != 0.0:
                g -= tau * (p_fprime(code, alpha, pi[k], ref[k]) - pi[k] * mean_f)
            out[k] = weight[s] * g


def compact_indptr(a_indptr, p_indptr, pi, out_a_indptr, out_p_indptr, out_pairs):
    out_a_indptr[0] = 0
    out_p_indptr[0] = 0
    j = 0
    for s in range(a_indptr.shape[0] - 1):  # prefix sums: serial
        for k in range(a_indptr[s], a_indptr[s + 1]):
            if pi[k] != 0.0:
                out_pairs[j] = k
                out_p_indptr[j + 1] = out_p_indptr[j] + (p_indptr[k + 1] - p_indptr[k])
                j += 1
        out_a_indptr[s + 1] = j


def compact_rows(p_indptr, p_indices, p_data, pi, pairs, out_p_indptr, out_indices, out_data,
                 out_pi):
    n_used = pairs.shape[0]
    for j in prange(n_used):
        if j + ROWS_AHEAD < n_used:  # the rows ROWS_AHEAD pairs on (kernels/cython/tables.pyx)
            ahead = pairs[j + ROWS_AHEAD]
            lo, hi = p_indptr[ahead], p_indptr[ahead + 1]
            if hi > lo:
                prefetch_read(p_indices, lo)
                prefetch_read(p_indices, hi - 1)
                prefetch_read(p_data, lo)
                prefetch_read(p_data, hi - 1)
        k = pairs[j]
        out_pi[j] = pi[k]
        i = out_p_indptr[j]
        for e in range(p_indptr[k], p_indptr[k + 1]):
            out_indices[i] = p_indices[e]
            out_data[i] = p_data[e]
            i += 1


KERNELS = {**twins(segment_softmax, regularized_reward, advantages, q_advantages, policy_gradient,
                   compact_rows),
           **serial(compact_indptr)}
