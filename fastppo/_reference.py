"""Backend "numpy": every kernel written with vectorised NumPy / scipy.sparse.

This is the readable spec of what the compiled kernels compute. Same names and
positional signatures as ``kernels/numba`` and ``kernels/cython``; outputs are
written into the preallocated ``out`` (and ``buf``) arguments. ``n_threads`` is
accepted and ignored.
"""
import numpy as np
import scipy.sparse as sp

from .regularizers import from_code


def _states(a_indptr):
    return np.repeat(np.arange(a_indptr.shape[0] - 1), np.diff(a_indptr))


def _segment_sum(a_indptr, x):
    return np.add.reduceat(x, a_indptr[:-1])


def _P(p_indptr, p_indices, p_data, n_states):
    return sp.csr_array((p_data, p_indices, p_indptr), shape=(p_indptr.shape[0] - 1, n_states))


# --------------------------------------------------------------------- linear
def bellman_matvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, n_threads=1):
    """out = x − γ P_π x."""
    Px = _P(p_indptr, p_indices, p_data, x.shape[0]) @ x
    out[:] = x - gamma * _segment_sum(a_indptr, pi * Px)


def bellman_rmatvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, out, buf, n_threads=1):
    """out = x − γ P_πᵀ x."""
    w = pi * x[_states(a_indptr)]
    out[:] = x - gamma * (_P(p_indptr, p_indices, p_data, x.shape[0]).T @ w)


def q_values(p_indptr, p_indices, p_data, r, gamma, v, out, n_threads=1):
    """out = r + γ P v."""
    out[:] = r + gamma * (_P(p_indptr, p_indices, p_data, v.shape[0]) @ v)


# --------------------------------------------------------------------- tables
def segment_softmax(a_indptr, logits, out, n_threads=1):
    """out = exp(θ − max_s θ) / Σ_a exp(θ − max_s θ) within each state."""
    s = _states(a_indptr)
    z = logits - np.maximum.reduceat(logits, a_indptr[:-1])[s]
    e = np.exp(z)
    out[:] = e / _segment_sum(a_indptr, e)[s]


def regularized_reward(a_indptr, r, pi, ref, code, alpha, tau, out, n_threads=1):
    """out[s] = Σ_a π r − τ Σ_a π_ref f(π/π_ref)."""
    out[:] = _segment_sum(a_indptr, pi * r)
    if tau != 0.0 and code != 0:
        out -= tau * _segment_sum(a_indptr, from_code(code, alpha).ref_f(pi, ref))


def advantages(a_indptr, pi, q, out, n_threads=1):
    """out = q − Σ_a π q."""
    out[:] = q - _segment_sum(a_indptr, pi * q)[_states(a_indptr)]


def policy_gradient(a_indptr, pi, b, weight, ref, code, alpha, tau, out, n_threads=1):
    """out = w(s) π [(b − Σ π b) − τ (f'(π/π_ref) − Σ π f')] per pair."""
    s = _states(a_indptr)
    g = pi * (b - _segment_sum(a_indptr, pi * b)[s])
    if tau != 0.0 and code != 0:
        pf = from_code(code, alpha).p_fprime(pi, ref)
        g -= tau * (pf - pi * _segment_sum(a_indptr, pf)[s])
    out[:] = weight[s] * g
