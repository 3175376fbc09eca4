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


# -------------------------------------------------------------- policy update
def greedy_policy(a_indptr, q, ref, code, alpha, tau, pi_out, value_out, n_threads=1):
    """p(s) = argmax_p Σ p Q − τ D_f(p ‖ π_ref) and its value, per state.

    τ = 0: first argmax. Reverse KL: p ∝ π_ref exp(Q/τ). Other f: the stationarity
    condition Q_a − τ f'(p_a/π_ref,a) = ν, solved for ν by vectorised bisection on
    Σ_a π_ref,a (f')^{-1}((Q_a − ν)/τ) = 1 (200 halvings of [min Q − τf'(1), max Q − τf'(1)]).
    """
    s = _states(a_indptr)
    qmax = np.maximum.reduceat(q, a_indptr[:-1])
    if tau == 0.0 or code == 0:
        first = np.zeros(q.shape[0], dtype=bool)
        is_max = q == qmax[s]
        idx = np.flatnonzero(is_max)
        first_idx = idx[np.r_[True, s[idx][1:] != s[idx][:-1]]]
        first[first_idx] = True
        pi_out[:] = first
        value_out[:] = qmax
        return
    reg = from_code(code, alpha)
    if code == 1:
        e = ref * np.exp((q - qmax[s]) / tau)
        z = _segment_sum(a_indptr, e)
        pi_out[:] = e / z[s]
        value_out[:] = qmax + tau * np.log(z)
        return
    shift = tau * float(reg.fprime(np.array(1.0)))
    lo = np.minimum.reduceat(q, a_indptr[:-1]) - shift
    hi = qmax - shift

    def mass(nu):
        with np.errstate(all="ignore"):
            return ref * reg.fprime_inv((q - nu[s]) / tau)

    for _ in range(200):
        mid = 0.5 * (lo + hi)
        big = _segment_sum(a_indptr, mass(mid)) > 1.0
        lo = np.where(big, mid, lo)
        hi = np.where(big, hi, mid)
    p = mass(hi)
    p /= _segment_sum(a_indptr, p)[s]
    pi_out[:] = p
    value_out[:] = _segment_sum(a_indptr, p * q - tau * reg.ref_f(p, ref))


def ppo_update(a_indptr, pi_old, adv, weight, ref, code, alpha, tau, eps_low, eps_high,
               beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out, n_threads=1):
    """``n_steps`` ascent steps on the clipped surrogate (+ β KL(π_old ‖ π_θ) penalty)."""
    s = _states(a_indptr)
    reg = from_code(code, alpha)
    for step in range(n_steps):
        segment_softmax(a_indptr, theta, pi_out)
        ratio = pi_out / pi_old
        active = ((adv > 0) & (ratio < 1 + eps_high)) | ((adv < 0) & (ratio > 1 - eps_low))
        b = np.where(active, adv, 0.0)
        g = pi_out * (b - _segment_sum(a_indptr, pi_out * b)[s])
        if tau != 0.0 and reg is not None:
            pf = reg.p_fprime(pi_out, ref)
            g -= tau * (pf - pi_out * _segment_sum(a_indptr, pf)[s])
        g += beta * (pi_old - pi_out)
        g *= weight[s]
        if step == 0:
            gsq_out[:] = _segment_sum(a_indptr, g * g)
        clipped_out[:] = _segment_sum(a_indptr, (~active & (adv != 0)).astype(np.int64))
        theta += lr * g
    segment_softmax(a_indptr, theta, pi_out)
    kl_out[:] = _segment_sum(a_indptr, np.where(pi_out > 0, pi_out * np.log(np.where(pi_out > 0, pi_out, 1.0) / pi_old), 0.0))
