"""Sampling kernels: vectorised rollouts, GAE and returns, and PPO minibatch epochs.

``rollout``:            one episode per environment from pre-drawn uniforms (no RNG here)
``gae``:                GAE(γ, λ) along each row, respecting episode ends and truncation
``discounted_returns``: discounted returns along each row, bootstrapped at truncation
``ppo_minibatches``:    epochs × minibatches of PPO-Clip on tabular logits and critic (serial),
                        with an entropy bonus and per-state or per-sample averaging

The NumPy reference (fastppo/_reference.py) states each one's arithmetic.
Mirrors kernels/numba/sampling.py.
"""
from cython.parallel cimport prange
from libc.math cimport copysign, exp, fabs, log
from libc.stdint cimport int32_t, int64_t, uint8_t

include "_probability.pxi"

include "_codes.pxi"
include "_softmax.pxi"


def rollout(const int64_t[::1] a_indptr, const double[::1] pi, const double[::1] log_pi,
            const double[::1] r, const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
            const probability[::1] p_data, const uint8_t[::1] terminal, const int64_t[::1] start,
            const double[:, ::1] u_action, const double[:, ::1] u_next,           # IN
            int64_t[:, ::1] states, int64_t[:, ::1] actions, int64_t[:, ::1] pairs,
            int64_t[:, ::1] next_states, double[:, ::1] rewards, double[:, ::1] logp,
            uint8_t[:, ::1] terminated, uint8_t[:, ::1] truncated, int n_threads):  # OUT
    """rollout(a_indptr, pi, log_pi, r, p_indptr, p_indices, p_data, terminal, start, u_action,
    u_next, states, actions, pairs, next_states, rewards, logp, terminated, truncated,
    n_threads)"""
    cdef Py_ssize_t e, n_envs = u_action.shape[0]
    for e in prange(n_envs, nogil=True, schedule="static", num_threads=n_threads):
        _episode(e, a_indptr, pi, log_pi, r, p_indptr, p_indices, p_data, terminal, start[e],
                 u_action, u_next, states, actions, pairs, next_states, rewards, logp,
                 terminated, truncated)


ctypedef fused weight:  # pi (float64) or p_data (float64 or float32): its own fused type
    float
    double


cdef inline int64_t _first_below(const weight[::1] weights, int64_t lo, int64_t hi,
                                double u) noexcept nogil:
    """First i in [lo, hi) with u < weights[lo] + ... + weights[i] (hi − 1 if none)."""
    cdef int64_t i
    cdef double acc = 0.0
    for i in range(lo, hi):
        acc = acc + weights[i]
        if u < acc:
            return i
    return hi - 1


cdef void _episode(Py_ssize_t e, const int64_t[::1] a_indptr, const double[::1] pi,
                   const double[::1] log_pi, const double[::1] r,
                   const int64_t[::1] p_indptr, const int32_t[::1] p_indices,
                   const probability[::1] p_data, const uint8_t[::1] terminal, int64_t s,
                   const double[:, ::1] u_action, const double[:, ::1] u_next,
                   int64_t[:, ::1] states, int64_t[:, ::1] actions, int64_t[:, ::1] pairs,
                   int64_t[:, ::1] next_states, double[:, ::1] rewards, double[:, ::1] logp,
                   uint8_t[:, ::1] terminated, uint8_t[:, ::1] truncated) noexcept nogil:
    cdef Py_ssize_t t, horizon = u_action.shape[1]
    cdef int64_t k, j, nxt
    cdef bint ends
    for t in range(horizon):
        if s < 0 or terminal[s] != 0:
            states[e, t] = -1
            actions[e, t] = -1
            pairs[e, t] = -1
            next_states[e, t] = -1
            rewards[e, t] = 0.0
            logp[e, t] = 0.0
            terminated[e, t] = 0
            truncated[e, t] = 0
            s = -1
            continue
        k = _first_below(pi, a_indptr[s], a_indptr[s + 1], u_action[e, t])
        j = _first_below(p_data, p_indptr[k], p_indptr[k + 1], u_next[e, t] * row_total(&p_data[0], p_indptr[k], p_indptr[k + 1]))
        nxt = p_indices[j]
        states[e, t] = s
        actions[e, t] = k - a_indptr[s]
        pairs[e, t] = k
        next_states[e, t] = nxt
        rewards[e, t] = r[k]
        logp[e, t] = log_pi[k]
        ends = terminal[nxt] != 0
        terminated[e, t] = 1 if ends else 0
        truncated[e, t] = 1 if (t == horizon - 1 and not ends) else 0
        s = nxt


def gae(const double[:, ::1] rewards, const double[:, ::1] values,
        const double[:, ::1] next_values, const uint8_t[:, ::1] terminated,
        const uint8_t[:, ::1] done, double gamma, double lam,       # IN
        double[:, ::1] out, int n_threads):                         # OUT
    """gae(rewards, values, next_values, terminated, done, gamma, lam, out, n_threads)"""
    cdef Py_ssize_t e, t, n_rows = rewards.shape[0], n_cols = rewards.shape[1]
    cdef double a, nv, delta
    for e in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        a = 0.0
        for t in range(n_cols - 1, -1, -1):
            nv = 0.0 if terminated[e, t] != 0 else next_values[e, t]
            delta = rewards[e, t] + gamma * nv - values[e, t]
            a = delta + gamma * lam * (0.0 if done[e, t] != 0 else a)
            out[e, t] = a


def discounted_returns(const double[:, ::1] rewards, const double[:, ::1] next_values,
                       const uint8_t[:, ::1] terminated, const uint8_t[:, ::1] done,
                       double gamma,                                 # IN
                       double[:, ::1] out, int n_threads):           # OUT
    """discounted_returns(rewards, next_values, terminated, done, gamma, out, n_threads)"""
    cdef Py_ssize_t e, t, n_rows = rewards.shape[0], n_cols = rewards.shape[1]
    cdef double g, follow
    for e in prange(n_rows, nogil=True, schedule="static", num_threads=n_threads):
        g = 0.0
        for t in range(n_cols - 1, -1, -1):
            follow = next_values[e, t] if done[e, t] != 0 else g
            g = rewards[e, t] + gamma * (0.0 if terminated[e, t] != 0 else follow)
            out[e, t] = g


def ppo_minibatches(const int64_t[::1] a_indptr, const int64_t[::1] sample_states,
                    const int64_t[::1] sample_pairs, const double[::1] logp_old,
                    const double[::1] adv, const double[::1] logp_ref, const double[::1] returns,
                    const double[::1] v_old, const int64_t[:, ::1] order,
                    const int64_t[::1] bounds, double eps_low, double eps_high, double dual_clip,
                    double kl_coef, int kl_kind, double value_clip, double lr,
                    double critic_lr, double ent_coef, bint sample_mean,             # IN
                    double[::1] logits, double[::1] values, double[::1] g, double[::1] csum,
                    double[::1] vsum, int64_t[::1] counts, double[::1] lse,
                    int64_t[::1] clipped, int n_threads):                             # OUT
    """ppo_minibatches(a_indptr, sample_states, sample_pairs, logp_old, adv, logp_ref, returns,
    v_old, order, bounds, eps_low, eps_high, dual_clip, kl_coef, kl_kind, value_clip, lr,
    critic_lr, ent_coef, sample_mean, logits, values, g, csum, vsum, counts, lse, clipped,
    n_threads)"""
    cdef Py_ssize_t ep, m, j
    cdef int64_t i, s, k, b, n
    cdef double logp, ratio, A, coef, diff, dv, dc, cs, p, size, den, ew, h, lp
    cdef bint active
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1
    cdef double* scratch = <double*> malloc(
        (2 * max_actions(&a_indptr[0], 0, n_states) + 3) * LANES * sizeof(double))
    if scratch == NULL:
        raise MemoryError("ppo_minibatches: could not allocate a block of states")
    with nogil:
        for ep in range(order.shape[0]):
            for m in range(bounds.shape[0] - 1):
                size = <double>(bounds[m + 1] - bounds[m])
                for j in range(bounds[m], bounds[m + 1]):
                    i = order[ep, j]
                    s = sample_states[i]
                    k = sample_pairs[i]
                    if counts[s] == 0:  # first sample of s in this minibatch: log Σ exp θ(s,·)
                        softmax_states(&a_indptr[0], s, s + 1, &logits[0], NULL, &lse[0], scratch)
                    logp = logits[k] - lse[s]
                    ratio = exp(logp - logp_old[i])
                    A = adv[i]
                    active = ((A > 0.0 and ratio < 1.0 + eps_high)
                              or (A < 0.0 and ratio > 1.0 - eps_low and ratio < dual_clip))
                    if not active and A != 0.0:
                        clipped[ep] += 1
                    coef = ratio * A if active else 0.0
                    if kl_kind == KL_K1:
                        coef = coef - kl_coef * 1.0
                    elif kl_kind == KL_K2:
                        coef = coef - kl_coef * (logp - logp_ref[i])
                    elif kl_kind == KL_K3:
                        coef = coef - kl_coef * (1.0 - exp(logp_ref[i] - logp))
                    diff = values[s] - returns[i]
                    dv = values[s] - v_old[i]
                    if fabs(dv) > value_clip:  # the clipped loss wins: no gradient
                        dc = v_old[i] + copysign(value_clip, dv) - returns[i]
                        if dc * dc > diff * diff:
                            diff = 0.0
                    g[k] += coef
                    csum[s] += coef
                    vsum[s] += diff
                    counts[s] += 1
                for j in range(bounds[m], bounds[m + 1]):
                    s = sample_states[order[ep, j]]
                    n = counts[s]
                    if n == 0:
                        continue
                    den = size if sample_mean else <double>n  # per-sample or per-state mean
                    cs = csum[s]
                    if ent_coef != 0.0:  # ∂H/∂θ_b = −p_b (log p_b + H), once per sample of s
                        ew = ent_coef * (n / den)
                        h = 0.0
                        for b in range(a_indptr[s], a_indptr[s + 1]):
                            lp = logits[b] - lse[s]
                            h -= fexp(lp) * lp
                        for b in range(a_indptr[s], a_indptr[s + 1]):
                            lp = logits[b] - lse[s]
                            p = fexp(lp)
                            logits[b] += lr * ((g[b] - cs * p) / den - ew * (p * (lp + h)))
                            g[b] = 0.0
                    else:
                        for b in range(a_indptr[s], a_indptr[s + 1]):
                            p = fexp(logits[b] - lse[s])
                            logits[b] += lr * ((g[b] - cs * p) / den)
                            g[b] = 0.0
                    values[s] -= critic_lr * vsum[s] / den
                    csum[s] = 0.0
                    vsum[s] = 0.0
                    counts[s] = 0
    free(scratch)
