"""Per-state segment kernels over the pairs of each state (``a_indptr`` blocks).

``segment_softmax``:    out = softmax of logits within each state (log-sum-exp)
``regularized_reward``: out[s] = Σ_a π r − τ Σ_a π_ref f(π/π_ref)
``advantages``:         out = q − Σ_a π q  (per state)
``policy_gradient``:    out[k] = w(s) π_k [(b_k − Σ_a π b) − τ(f'_k − Σ_a π f')]
Mirrors kernels/cython/tables.pyx.
"""
import math

from numba import prange

from ._jit import twins

from ._divergence import p_fprime, ref_f


def segment_softmax(a_indptr, logits, out):
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        m = logits[lo]
        for k in range(lo + 1, hi):
            m = max(m, logits[k])
        z = 0.0
        for k in range(lo, hi):
            e = math.exp(logits[k] - m)
            out[k] = e
            z += e
        for k in range(lo, hi):
            out[k] /= z


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


KERNELS = twins(segment_softmax, regularized_reward, advantages, policy_gradient)
