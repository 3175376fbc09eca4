"""Per-state segment kernels over the pairs of each state (``a_indptr`` blocks).

``segment_softmax``:    out = softmax of logits within each state (_softmax.softmax_states)
``regularized_reward``: out[s] = Σ_a π r − τ Σ_a π_ref f(π/π_ref)
``advantages``:         out = q − Σ_a π q  (per state)
``q_advantages``:       q = r + scale·rows and adv = q − Σ_a π q in one pass
``policy_gradient``:    out[k] = w(s) π_k [(b_k − Σ_a π b) − τ(f'_k − Σ_a π f')]
``compact_indptr``:     the pair and row pointers of the pairs with π > 0 (serial prefix sums)
``compact_rows``:       their rows of P and their π, gathered by those pointers
Mirrors kernels/cython/tables.pyx.
"""
import numpy as np
from numba import njit, prange

from ._divergence import p_fprime, ref_f
from ._jit import twins
from ._softmax import LANES, max_actions, softmax_states

TASK_BLOCKS = 32  # blocks of LANES states per parallel task


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
    for s in prange(a_indptr.shape[0] - 1):
        acc = 0.0
        div = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            acc += pi[k] * r[k]
            if tau != 0.0:
                div += ref_f(code, alpha, pi[k], ref[k])
        out[s] = acc - tau * div if tau != 0.0 else acc


def advantages(a_indptr, pi, q, out):
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        mean = 0.0
        for k in range(lo, hi):
            mean += pi[k] * q[k]
        for k in range(lo, hi):
            out[k] = q[k] - mean


def q_advantages(a_indptr, pi, rows, r, scale, q, adv):
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


def compact_indptr(a_indptr, p_indptr, pi, out_a_indptr, out_p_indptr):
    out_a_indptr[0] = 0
    out_p_indptr[0] = 0
    j = 0
    for s in range(a_indptr.shape[0] - 1):  # prefix sums: serial
        for k in range(a_indptr[s], a_indptr[s + 1]):
            if pi[k] != 0.0:
                out_p_indptr[j + 1] = out_p_indptr[j] + (p_indptr[k + 1] - p_indptr[k])
                j += 1
        out_a_indptr[s + 1] = j


def compact_rows(a_indptr, p_indptr, p_indices, p_data, pi, out_a_indptr, out_p_indptr,
                 out_indices, out_data, out_pi):
    for s in prange(a_indptr.shape[0] - 1):
        j = out_a_indptr[s]
        for k in range(a_indptr[s], a_indptr[s + 1]):
            if pi[k] != 0.0:
                out_pi[j] = pi[k]
                i = out_p_indptr[j]
                for e in range(p_indptr[k], p_indptr[k + 1]):
                    out_indices[i] = p_indices[e]
                    out_data[i] = p_data[e]
                    i += 1
                j += 1


KERNELS = twins(segment_softmax, regularized_reward, advantages, q_advantages, policy_gradient,
                compact_indptr, compact_rows)
