"""Backend "numpy": every kernel written with vectorised NumPy / scipy.sparse.

This is the readable spec of what the compiled kernels compute. Same names and
positional signatures as ``kernels/numba`` and ``kernels/cython``; outputs are
written into the preallocated ``out`` (and ``buf``) arguments. ``n_threads`` is
accepted and ignored.
"""
import numpy as np
import scipy.sparse as sp
from scipy.special import rel_entr

from ._codes import KL_K1, KL_K2, KL_K3, NONE, REVERSE_KL
from .regularizers import from_code


def _states(a_indptr):
    return np.repeat(np.arange(a_indptr.shape[0] - 1), np.diff(a_indptr))


def _segment_sum(a_indptr, x):
    return np.add.reduceat(x, a_indptr[:-1])


def _probabilities(p_indptr, p_data):
    """``p_data`` as the kernels read it: float64 as stored; float32 rows (compact storage)
    in float64, each divided by its float64 sum, so that P 1 = 1 (a copy: this backend is
    the spec, not built for scale). Mirrors kernels/numba/_probability.py."""
    if p_data.dtype == np.float64:
        return p_data
    data = p_data.astype(np.float64)
    data /= np.repeat(np.add.reduceat(data, p_indptr[:-1]), np.diff(p_indptr))
    return data


def _P(p_indptr, p_indices, p_data, n_states):
    return sp.csr_array((_probabilities(p_indptr, p_data), p_indices, p_indptr),
                        shape=(p_indptr.shape[0] - 1, n_states))


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


def q_greedy(a_indptr, p_indptr, p_indices, p_data, r, gamma, v, q_out, pi_out, pairs_out,
             value_out, n_threads=1):
    """:func:`q_values`, then :func:`greedy_policy` at τ = 0; pairs_out[s] the pair π takes."""
    q_values(p_indptr, p_indices, p_data, r, gamma, v, q_out)
    greedy_policy(a_indptr, q_out, q_out, NONE, 0.0, 0.0, pi_out, value_out)
    pairs_out[:] = np.flatnonzero(pi_out)


def bellman_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, y, out_x, out_y,
                     rows, buf, n_threads=1):
    """out_x = x − γ P_π x with rows = P x per pair, and out_y = y − γ P_πᵀ y, in one call;
    a side whose input has length 0 is skipped (rows too when ``rows`` has length 0)."""
    n_states = a_indptr.shape[0] - 1
    if x.shape[0]:
        Px = _P(p_indptr, p_indices, p_data, n_states) @ x
        out_x[:] = x - gamma * _segment_sum(a_indptr, pi * Px)
        if rows.shape[0]:
            rows[:] = Px
    if y.shape[0]:
        bellman_rmatvec(a_indptr, p_indptr, p_indices, p_data, pi, gamma, y, out_y, buf)



def q_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, r, scale, out_x, q, adv,
               n_threads=1):
    """:func:`bellman_products`' value side with its rows P x, then :func:`q_advantages` of
    them: out_x = x − γ P_π x, q = r + scale·P x, adv = q − Σ_a π q."""
    rows = np.empty(q.shape[0])
    bellman_products(a_indptr, p_indptr, p_indices, p_data, pi, gamma, x, np.empty(0), out_x,
                     np.empty(0), rows, None)
    q_advantages(a_indptr, pi, rows, r, scale, q, adv)


def blocked_entries(p_indptr, p_indices, p_data, chunk_pairs, width, cursor, last, out_steps,
                    out_columns, out_data, n_threads=1):
    """Entry j of pair k in chunk c to position cursor[b, c] (then advanced), b its block
    of columns, with its column within the block (p_indices[j] − b·width), its probability
    and its pair as a step from the region's pair before (chunk_pairs[c] for the first), a
    step over 255 preceded by fillers (step 255, probability 0, the same column). ``last``:
    scratch (the region's last pair). Outputs of length 0: only ``cursor`` advances."""
    write = out_steps.shape[0] > 0
    for c in range(chunk_pairs.shape[0] - 1):
        last[:, c] = chunk_pairs[c]
        for k in range(chunk_pairs[c], chunk_pairs[c + 1]):
            for j in range(p_indptr[k], p_indptr[k + 1]):
                b = p_indices[j] // width
                step = k - last[b, c]
                while True:
                    e = cursor[b, c]
                    if write:
                        out_steps[e], out_columns[e] = min(step, 255), p_indices[j] - b * width
                        out_data[e] = p_data[j] if step <= 255 else 0.0
                    cursor[b, c] += 1
                    if step <= 255:
                        break
                    step -= 255
                last[b, c] = k


def blocked_products(a_indptr, chunk_pairs, begins, ends, steps, columns, data, pi, gamma, x,
                     y, out_x, out_y, rows, weights, buf, n_threads=1):
    """bellman_products (both sides and rows, or the visitation side when ``x`` has length
    0) from P's entries in (block, chunk) regions: each entry's pair is the region's first
    pair plus its steps so far (fillers add probability 0), each entry's column its block's
    first column plus its offset."""
    width = -(-y.shape[0] // begins.shape[0])
    pairs, used, cols = [], [], []
    for (b, c), start in np.ndenumerate(begins):
        used.append(np.arange(start, ends[b, c]))
        pairs.append(chunk_pairs[c] + np.cumsum(steps[start:ends[b, c]].astype(np.int64)))
        cols.append(b * width + columns[start:ends[b, c]].astype(np.int64))
    used, pairs, cols = np.concatenate(used), np.concatenate(pairs), np.concatenate(cols)
    P = sp.csr_array((data[used], (pairs, cols)), shape=(pi.shape[0], y.shape[0]))
    if x.shape[0]:
        rows[:] = P @ x
        out_x[:] = x - gamma * _segment_sum(a_indptr, pi * rows)
    out_y[:] = y - gamma * (P.T @ (pi * y[_states(a_indptr)]))

def transposed_weights(t_pairs, t_data, pi, weights, n_threads=1):
    """weights[e] = π(t_pairs[e]) P[e], P's entries in the transposed order."""
    weights[:] = pi[t_pairs] * t_data.astype(np.float64)


def transposed_rmatvec(t_indptr, t_sources, weights, gamma, y, out, n_threads=1):
    """out = y − γ P_πᵀ y, P_πᵀ's entries ``weights`` by state (t_indptr) from t_sources."""
    n_states = t_indptr.shape[0] - 1
    PT = sp.csr_array((weights, t_sources, t_indptr), shape=(n_states, n_states))
    out[:] = y - gamma * (PT @ y)


def pair_sweep(row_indptr, a_indptr, codes, indices, p_data, pi, gamma, b, x, shift, out,
               stats, n_threads=1):
    """``row_sweep`` on P_π's state rows, entry j of state s weighted by
    π(a_indptr[s] + codes[j]) (state s's at row_indptr[s] = p_indptr[a_indptr[s]])."""
    states = np.repeat(np.arange(b.shape[0]), np.diff(row_indptr))
    weights = pi[a_indptr[states] + codes[:row_indptr[-1]]] * p_data[:row_indptr[-1]]
    return row_sweep(row_indptr, indices, weights, gamma, b, x, shift, out, stats)


def transposed_sweep(t_indptr, t_pairs, t_sources, t_data, pi, gamma, b, x, shift, out,
                     weights, stats, n_threads=1):
    """P_πᵀ's entries into ``weights`` (``transposed_weights``), then ``row_sweep`` on them."""
    transposed_weights(t_pairs, t_data, pi, weights)
    return row_sweep(t_indptr, t_sources, weights, gamma, b, x, shift, out, stats)


def row_sweep(indptr, sources, weights, gamma, b, x, shift, out, stats, prefetch=False,
              n_threads=1):
    """x += shift, then out = x + r, r = b − (x − γ W x), W the CSR (weights, sources,
    indptr); stats[c] = (Σ r, Σ r², min r, max r) over the c-th of stats.shape[0] equal
    chunks of rows; returns them over all rows. ``prefetch``: the compiled kernels' hint."""
    n = b.shape[0]
    W = sp.csr_array((weights, sources, indptr), shape=(n, n))
    x += shift
    r = b - (x - gamma * (W @ x))
    out[:] = x + r
    for c in range(stats.shape[0]):
        part = r[c * n // stats.shape[0]:(c + 1) * n // stats.shape[0]]
        stats[c] = (part.sum(), (part * part).sum(), np.min(part, initial=np.inf),
                    np.max(part, initial=-np.inf))
    return (float(stats[:, 0].sum()), float(stats[:, 1].sum()), float(stats[:, 2].min()),
            float(stats[:, 3].max()))


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
    if tau != 0.0 and code != NONE:
        out -= tau * _segment_sum(a_indptr, from_code(code, alpha).ref_f(pi, ref))


def advantages(a_indptr, pi, q, out, n_threads=1):
    """out = q − Σ_a π q."""
    out[:] = q - _segment_sum(a_indptr, pi * q)[_states(a_indptr)]


def q_advantages(a_indptr, pi, rows, r, scale, q, adv, n_threads=1):
    """q = r + scale·rows (Q̃ from the rows P x of a sweep), adv = q − Σ_a π q."""
    q[:] = rows * scale + r
    advantages(a_indptr, pi, q, adv)


def policy_gradient(a_indptr, pi, b, weight, ref, code, alpha, tau, out, n_threads=1):
    """out = w(s) π [(b − Σ π b) − τ (f'(π/π_ref) − Σ π f')] per pair."""
    s = _states(a_indptr)
    g = pi * (b - _segment_sum(a_indptr, pi * b)[s])
    if tau != 0.0 and code != NONE:
        pf = from_code(code, alpha).p_fprime(pi, ref)
        g -= tau * (pf - pi * _segment_sum(a_indptr, pf)[s])
    out[:] = weight[s] * g


def compact_indptr(a_indptr, p_indptr, pi, out_a_indptr, out_p_indptr, out_pairs, n_threads=1):
    """The pairs with π > 0, in order, into out_pairs (n_used,), and their pointers:
    out_a_indptr (n_states + 1,) to them per state, out_p_indptr (n_used + 1,) to their
    rows of P, packed in pair order."""
    used = np.flatnonzero(pi)
    out_pairs[:] = used
    out_a_indptr[0] = 0
    np.cumsum(np.bincount(_states(a_indptr)[used], minlength=a_indptr.shape[0] - 1),
              out=out_a_indptr[1:])
    out_p_indptr[0] = 0
    np.cumsum(np.diff(p_indptr)[used], out=out_p_indptr[1:])


def compact_rows(p_indptr, p_indices, p_data, pi, pairs, out_p_indptr, out_indices, out_data,
                 out_pi, n_threads=1):
    """The rows of P and π of ``pairs`` (in that order) at the pointers of
    :func:`compact_indptr`."""
    lengths = np.diff(p_indptr)[pairs]
    gather = np.repeat(p_indptr[pairs] - out_p_indptr[:-1], lengths) + np.arange(out_p_indptr[-1])
    out_indices[:] = p_indices[gather]
    out_data[:] = p_data[gather]
    out_pi[:] = pi[pairs]


# -------------------------------------------------------------- policy update
def greedy_policy(a_indptr, q, ref, code, alpha, tau, pi_out, value_out, n_threads=1):
    """p(s) = argmax_p Σ p Q − τ D_f(p ‖ π_ref) and its value, per state.

    τ = 0: first argmax. Reverse KL: p ∝ π_ref exp(Q/τ). Other f: the stationarity
    condition Q_a − τ f'(p_a/π_ref,a) = ν with ν = max Q + τ t, solved for t by
    vectorised bisection on Σ_a π_ref,a (f')^{-1}((Q_a − max Q)/τ − t) = 1 (200 halvings
    of [max(−f'(1/π_ref,b), (min Q − max Q)/τ − f'(1)), −f'(1)], b the first argmax).
    Where (Q_a − max Q)/τ overflows, (f')^{-1} is its asymptote; where f(0) = ∞ a
    probability that underflows is stored as 5e-324 (the optimum has full support).
    """
    s = _states(a_indptr)
    qmax = np.maximum.reduceat(q, a_indptr[:-1])
    idx = np.flatnonzero(q == qmax[s])
    best = idx[np.r_[True, s[idx][1:] != s[idx][:-1]]]  # first argmax of each state
    if tau == 0.0 or code == NONE:
        pi_out[:] = 0.0
        pi_out[best] = 1.0
        value_out[:] = qmax
        return
    reg = from_code(code, alpha)
    with np.errstate(divide="ignore", over="ignore"):
        d = (q - qmax[s]) / tau  # ≤ 0, −inf where τ is below the gap
    if code == REVERSE_KL:
        e = ref * np.exp(d)
        z = _segment_sum(a_indptr, e)
        pi_out[:] = e / z[s]
        value_out[:] = qmax + tau * np.log(z)
        return
    f1 = float(reg.fprime(np.array(1.0)))
    with np.errstate(divide="ignore", over="ignore", invalid="ignore"):
        lo = np.maximum(-reg.fprime(1.0 / ref[best]), np.minimum.reduceat(d, a_indptr[:-1]) - f1)
    hi = np.full(qmax.shape, -f1)

    def mass(t):
        with np.errstate(all="ignore"):
            return ref * reg.fprime_inv(d - t[s])

    for _ in range(200):
        mid = 0.5 * (lo + hi)
        big = _segment_sum(a_indptr, mass(mid)) > 1.0
        lo = np.where(big, mid, lo)
        hi = np.where(big, hi, mid)
    p = mass(hi)
    far = (d - hi[s]) == -np.inf  # |y| beyond the double range: h by its asymptote
    if far.any():
        p[far] = ref[far] * reg.fprime_inv_tail(np.log(qmax[s][far] - q[far]) - np.log(tau))
    p /= _segment_sum(a_indptr, p)[s]
    # where f(0) = ∞ the optimum has full support: underflowed entries become 5e-324
    p[(p == 0) & np.isinf(reg.ref_f(np.zeros_like(ref), ref))] = 5e-324
    pi_out[:] = p
    value_out[:] = _segment_sum(a_indptr, p * q - tau * reg.ref_f(p, ref))


def ppo_update(a_indptr, pi_old, adv, weight, ref, log_ref, code, alpha, tau, eps_low,
               eps_high, beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out,
               n_threads=1):
    """``n_steps`` ascent steps on the clipped surrogate (+ β KL(π_old ‖ π_θ) penalty).
    ``pi_out`` may be ``pi_old`` or ``adv`` (written once, at the end). ``log_ref``
    (log π_ref, which the compiled kernels read for reverse KL) is not read: π f' comes
    from ``ref`` for every f. ``kl_out`` is KL(π_new ‖ softmax(θ on entry)) per state, which
    is KL(π_new ‖ π_old) where π_old is the softmax of the logits it starts from."""
    s = _states(a_indptr)
    reg = from_code(code, alpha)
    pi = np.empty_like(theta)
    pi_start = np.empty_like(theta)
    segment_softmax(a_indptr, theta, pi_start)
    for step in range(n_steps):
        segment_softmax(a_indptr, theta, pi)
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = pi / pi_old  # at π_old = 0: inf, or NaN at π = 0 (never active)
        active = ((adv > 0) & (ratio < 1 + eps_high)) | ((adv < 0) & (ratio > 1 - eps_low))
        b = np.where(active, adv, 0.0)
        g = pi * (b - _segment_sum(a_indptr, pi * b)[s])
        if tau != 0.0 and reg is not None:
            pf = reg.p_fprime(pi, ref)
            g -= tau * (pf - pi * _segment_sum(a_indptr, pf)[s])
        g += beta * (pi_old - pi)
        g *= weight[s]
        if step == 0:
            gsq_out[:] = _segment_sum(a_indptr, g * g)
        clipped_out[:] = _segment_sum(a_indptr, (~active & (adv != 0)).astype(np.int64))
        theta += lr * g
    segment_softmax(a_indptr, theta, pi)
    kl_out[:] = _segment_sum(a_indptr, rel_entr(pi, pi_start))
    pi_out[:] = pi


# ------------------------------------------------------------------- sampling
def rollout(a_indptr, pi, log_pi, r, p_indptr, p_indices, p_data, terminal, start, u_action,
            u_next, states, actions, pairs, next_states, rewards, logp, terminated, truncated,
            n_threads=1):
    """One episode per environment e (row), at most ``horizon`` = u_action.shape[1] steps.

    At step t in state s: the action is the first pair k of s with u_action[e, t] <
    π[lo] + ... + π[k] (summed in order; the last pair if round-off leaves none), the
    next state the first entry j of row k with u_next[e, t] < p[lo_k] + ... + p[j];
    rewards = r[k], logp = log_pi[k], actions = k − lo. The episode ends when the next
    state is terminal (``terminated``) or at the horizon (``truncated``); later slots
    hold −1 (states, actions, pairs, next_states) and 0.
    """
    n_envs, horizon = u_action.shape
    for x in (states, actions, pairs, next_states):
        x.fill(-1)
    for x in (rewards, logp, terminated, truncated):
        x.fill(0)
    s = start.astype(np.int64).copy()
    totals = (np.ones(p_indptr.shape[0] - 1) if p_data.dtype == np.float64  # float32: row sums
              else np.add.reduceat(p_data.astype(np.float64), p_indptr[:-1]))
    alive = terminal[s] == 0
    for t in range(horizon):
        e = np.flatnonzero(alive)
        if e.size == 0:
            break
        st = s[e]
        k = _first_below(a_indptr[st], a_indptr[st + 1], pi, u_action[e, t])
        j = _first_below(p_indptr[k], p_indptr[k + 1], p_data, u_next[e, t] * totals[k])
        nxt = p_indices[j].astype(np.int64)
        states[e, t], actions[e, t], pairs[e, t], next_states[e, t] = st, k - a_indptr[st], k, nxt
        rewards[e, t], logp[e, t] = r[k], log_pi[k]
        ends = terminal[nxt] != 0
        terminated[e, t] = ends
        if t == horizon - 1:
            truncated[e, t] = ~ends
        alive[e[ends]] = False
        s[e] = nxt


def _first_below(lo, hi, weights, u):
    """Per row: first index k in [lo, hi) with u < weights[lo] + ... + weights[k] (else hi − 1)."""
    k = hi - 1
    found = np.zeros(lo.shape[0], dtype=bool)
    acc = np.zeros(lo.shape[0])
    for step in range(int((hi - lo).max())):
        idx = lo + step
        live = idx < hi
        acc[live] = acc[live] + weights[idx[live]]
        hit = live & ~found & (u < acc)
        k[hit] = idx[hit]
        found |= hit
    return k


def gae(rewards, values, next_values, terminated, done, gamma, lam, out, n_threads=1):
    """GAE(γ, λ) along the last axis: δ_t = r_t + γ (1 − term_t) V'_t − V_t,
    A_t = δ_t + γλ (1 − done_t) A_{t+1}."""
    a = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        delta = rewards[:, t] + gamma * np.where(terminated[:, t] != 0, 0.0, next_values[:, t]) - values[:, t]
        a = delta + gamma * lam * np.where(done[:, t] != 0, 0.0, a)
        out[:, t] = a


def discounted_returns(rewards, next_values, terminated, done, gamma, out, n_threads=1):
    """G_t = r_t + γ·(0 if term_t, V'_t if done_t (truncated), else G_{t+1}) along the last axis."""
    g = np.zeros(rewards.shape[0])
    for t in range(rewards.shape[1] - 1, -1, -1):
        follow = np.where(done[:, t] != 0, next_values[:, t], g)
        g = rewards[:, t] + gamma * np.where(terminated[:, t] != 0, 0.0, follow)
        out[:, t] = g


def ppo_minibatches(a_indptr, sample_states, sample_pairs, logp_old, adv, logp_ref, returns,
                    v_old, order, bounds, eps_low, eps_high, dual_clip, kl_coef, kl_kind,
                    value_clip, lr, critic_lr, ent_coef, sample_mean, logits, values, g, csum,
                    vsum, counts, lse, clipped, n_threads=1):
    """Epochs × minibatches of PPO-Clip on tabular logits and a tabular critic (in place).

    Minibatch m of epoch e holds the samples ``order[e, bounds[m]:bounds[m+1]]``. Per
    sample i at state s, pair k, with r = π_θ(k)/π_old(k), the ascent coefficient is
    c_i = r A_i where the clip is inactive (A > 0 and r < 1+ε_high, or A < 0 and
    1−ε_low < r < dual_clip), else 0, minus β ∂k/∂log π (k1: 1, k2: log π/π_ref,
    k3: 1 − π_ref/π). Each sample also carries the entropy bonus ent_coef · H(π_θ(·|s))
    of its state, ∂H/∂θ(s,b) = −π_b (log π_b + H). Each visited state then moves by the
    sum over its n_s samples divided by n_s (``sample_mean`` false: the per-state mean) or
    by the minibatch size m (true: the gradient of the minibatch's sample mean):
    θ(s,·) += lr/den Σ_i [c_i (e_{k_i} − π_θ(·|s)) + ent_coef ∂H/∂θ(s,·)], den = n_s or m,
    and V(s) −= critic_lr/den Σ_i ∂ℓ_i/∂V
    with ℓ = ½ max((V − R)², (V_clip − R)²), V_clip = V_old + clip(V − V_old, ±value_clip)
    (the clipped branch only where |V − V_old| > value_clip, so round-off cannot pick it).
    ``clipped[e]`` counts the samples of epoch e with A ≠ 0 and an active clip.
    ``g, csum, vsum, counts`` are zero scratch arrays (sizes n_pairs, S, S, S), ``lse``
    scratch of size S (log Σ exp θ(s,·), computed once per state and minibatch).
    """
    n_states = a_indptr.shape[0] - 1
    st = _states(a_indptr)
    for ep in range(order.shape[0]):
        for m in range(bounds.shape[0] - 1):
            idx = order[ep, bounds[m]:bounds[m + 1]]
            s, k, A = sample_states[idx], sample_pairs[idx], adv[idx]
            mx = np.maximum.reduceat(logits, a_indptr[:-1])
            lse[:] = mx + np.log(_segment_sum(a_indptr, np.exp(logits - mx[st])))
            pi = np.exp(logits - lse[st])
            logp = logits[k] - lse[s]
            ratio = np.exp(logp - logp_old[idx])
            active = (((A > 0) & (ratio < 1.0 + eps_high))
                      | ((A < 0) & (ratio > 1.0 - eps_low) & (ratio < dual_clip)))
            clipped[ep] += np.count_nonzero(~active & (A != 0))
            coef = np.where(active, ratio * A, 0.0)
            if kl_kind == KL_K1:
                coef = coef - kl_coef * 1.0
            elif kl_kind == KL_K2:
                coef = coef - kl_coef * (logp - logp_ref[idx])
            elif kl_kind == KL_K3:
                coef = coef - kl_coef * (1.0 - np.exp(logp_ref[idx] - logp))
            diff = values[s] - returns[idx]
            dv = values[s] - v_old[idx]
            dc = v_old[idx] + np.copysign(value_clip, dv) - returns[idx]
            vgrad = np.where((np.abs(dv) > value_clip) & (dc * dc > diff * diff), 0.0, diff)
            n = np.bincount(s, minlength=n_states)
            gk = np.bincount(k, coef, minlength=logits.shape[0])
            cs = np.bincount(s, coef, minlength=n_states)
            vs = np.bincount(s, vgrad, minlength=n_states)
            seen = n > 0
            pair_seen = seen[st]
            den = np.full(n_states, float(idx.size)) if sample_mean else np.maximum(n, 1).astype(float)
            step = (gk - cs[st] * pi) / den[st]
            if ent_coef != 0.0:
                logpi = logits - lse[st]
                H = -_segment_sum(a_indptr, pi * logpi)
                step -= (ent_coef * (n / den))[st] * (pi * (logpi + H[st]))
            logits[pair_seen] += lr * step[pair_seen]
            values[seen] -= critic_lr * vs[seen] / den[seen]


# ------------------------------------------------------------------- episodic
def episodic_values(order, terminal, a_indptr, p_indptr, p_indices, p_data, pi, gamma, c, out,
                    n_threads=1):
    """out = c + γ P_π out on the non-terminal states, 0 on terminal ones.

    The non-terminal part of P_π is nilpotent (a DAG), so the sweeps
    v ← c + γ P_π v (v = 0 on terminal states) reach the fixed point exactly within
    ``len(order) + 1`` sweeps (depth + 1 in practice); ``order`` only bounds them.
    """
    T = _P(p_indptr, p_indices, p_data, out.shape[0])
    live = terminal == 0
    v = np.zeros(out.shape[0])
    for _ in range(order.shape[0] + 1):
        new = np.where(live, c + gamma * _segment_sum(a_indptr, pi * (T @ v)), 0.0)
        if np.array_equal(new, v):
            break
        v = new
    out[:] = v


def episodic_visits(order, terminal, a_indptr, p_indptr, p_indices, p_data, pi, gamma, mu, out,
                    n_threads=1):
    """out = μ + γ P_πᵀ out on the non-terminal states, 0 on terminal ones (sweeps to the
    exact fixed point, as :func:`episodic_values`)."""
    T = _P(p_indptr, p_indices, p_data, out.shape[0])
    live = terminal == 0
    s = _states(a_indptr)
    n = np.zeros(out.shape[0])
    for _ in range(order.shape[0] + 1):
        new = np.where(live, mu + gamma * (T.T @ (pi * n[s])), 0.0)
        if np.array_equal(new, n):
            break
        n = new
    out[:] = n


# ------------------------------------------------------------------- assembled
def merge_pattern(a_indptr, p_indptr, p_indices, indptr, mid, indices, pos, mark, n_threads=1):
    """The merged structure of A = I − γP_π for every policy on these pairs: per row i the
    distinct off-diagonal successors of i's pairs, sorted, so j < i first
    ([indptr[i], mid[i])); ``pos[j]`` the slot of P's entry j (``nnz + s`` for the
    diagonal of state s). Returns nnz. ``mark`` is unused."""
    n = mark.shape[0]
    rows = _states(a_indptr)[_states(p_indptr)] if p_indices.shape[0] else np.zeros(0, np.int64)
    cols = p_indices.astype(np.int64)
    key = rows * n + cols
    uniq, inverse = np.unique(key, return_inverse=True)  # row-major, columns sorted
    urow, ucol = uniq // n, uniq % n
    off = urow != ucol
    slot = np.cumsum(off) - 1  # slot of each off-diagonal unique entry
    nnz = int(off.sum())
    pos[:] = np.where(off[inverse], slot[inverse], nnz + rows)
    indptr[:] = np.concatenate([[0], np.cumsum(np.bincount(urow[off], minlength=n))])
    mid[:] = indptr[:-1] + np.bincount(urow[off & (ucol < urow)], minlength=n)
    indices[:nnz] = ucol[off]
    return nnz


def assemble_values(a_indptr, p_indptr, p_data, pos, pi, gamma, data, diag, n_threads=1):
    """data[slot] = −γ Σ π(a|s) P(s'|s, a) over the entries of each slot; diag = 1 − γ (P_π)_ss."""
    n = diag.shape[0]
    nnz = data.shape[0] - n
    w = pi[_states(p_indptr)] * _probabilities(p_indptr, p_data)
    total = np.bincount(pos, w, minlength=nnz + n)
    data[:nnz] = -gamma * total[:nnz]
    data[nnz:] = total[nnz:]
    diag[:] = 1.0 - gamma * total[nnz:]


def assemble_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, indptr, mid, indices,
                           data, diag, mark, n_threads=1):
    """``merge_pattern`` and ``assemble_values`` on the rows of a deterministic policy
    (state s's only pair ``pairs[s]``, π of it in ``pi``), gathered first; off-diagonal
    values in data[:nnz]. Returns nnz."""
    n = mark.shape[0]
    lengths = p_indptr[pairs + 1] - p_indptr[pairs]
    rows_indptr = np.concatenate([[0], np.cumsum(lengths)])
    src = np.repeat(p_indptr[pairs] - rows_indptr[:-1], lengths) + np.arange(rows_indptr[-1])
    states = np.arange(n + 1, dtype=np.int64)
    pos = np.empty(src.shape[0], dtype=np.int64)
    nnz = merge_pattern(states, rows_indptr, p_indices[src], indptr, mid, indices, pos, mark)
    values = np.empty(nnz + n)
    assemble_values(states, rows_indptr, p_data[src], pos, pi[pairs], gamma, values, diag)
    data[:nnz] = values[:nnz]
    return nnz


def patch_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, changed, old_indptr,
                        old_mid, old_indices, old_data, old_diag, indptr, mid, indices, data,
                        diag, mark, n_threads=1):
    """``assemble_deterministic`` of the policy, whose matrix differs from the old one
    (``old_*``) in the states ``changed`` only (the compiled kernels copy the others'
    rows). Returns nnz."""
    return assemble_deterministic(p_indptr, p_indices, p_data, pairs, pi, gamma, indptr, mid,
                                  indices, data, diag, mark)


def distinct_pairs_bound(indptr, indices, bits, shift, n_threads=1):
    """A lower bound on the edges {i, j} of the undirected graph of the off-diagonal
    pattern (``indptr``, ``indices``; columns distinct in each row): the entries with
    i < j, plus the entries j < i whose mirror (j, i) is surely absent from a one-hash
    Bloom filter of the first kind (bit h(i, j) = top 64 − ``shift`` bits of
    (i·n + j) × 0x9E3779B97F4A7C15 mod 2⁶⁴, set in ``bits``, uint64 words)."""
    n = indptr.shape[0] - 1
    rows = _states(indptr)
    cols = indices[:indptr[-1]].astype(np.int64)
    with np.errstate(over="ignore"):
        def h(lo, hi):
            key = lo.astype(np.uint64) * np.uint64(n) + hi.astype(np.uint64)
            return (key * np.uint64(0x9E3779B97F4A7C15)) >> np.uint64(shift)

        upper = rows < cols
        bits[:] = 0
        hu = h(rows[upper], cols[upper])
        np.bitwise_or.at(bits, (hu >> np.uint64(6)).astype(np.int64),
                         np.uint64(1) << (hu & np.uint64(63)))
        lower = rows > cols
        hl = h(cols[lower], rows[lower])
        seen = (bits[(hl >> np.uint64(6)).astype(np.int64)] >> (hl & np.uint64(63))) & np.uint64(1)
    return int(upper.sum() + np.count_nonzero(seen == 0))


def _parts(indptr, mid, indices, data, diag, transpose):
    """(E, L_B, U_B) of B = A (or Aᵀ) as scipy matrices, E = diag(``diag``)."""
    n = diag.shape[0]
    nnz = indptr[-1]
    rows = _states(indptr)
    lower = np.arange(nnz) < mid[rows]
    cols, vals = indices[:nnz], data[:nnz]
    L = sp.csr_array((vals[lower], (rows[lower], cols[lower])), shape=(n, n))
    U = sp.csr_array((vals[~lower], (rows[~lower], cols[~lower])), shape=(n, n))
    E = sp.dia_array((diag[None, :], [0]), shape=(n, n))
    return (E, U.T.tocsr(), L.T.tocsr()) if transpose else (E, L, U)


def split_matvec(indptr, mid, indices, data, diag, x, out, part, transpose, n_threads=1):
    """out = B_part x: B = A (``transpose`` 0) or Aᵀ (1) = D + L_B + U_B with the
    diagonal replaced by E = ``diag``; part 0: E + L_B + U_B, 1: E + L_B, 2: E + U_B."""
    E, L, U = _parts(indptr, mid, indices, data, diag, transpose)
    out[:] = diag * x + (L @ x if part != 2 else 0.0) + (U @ x if part != 1 else 0.0)


def triangular_solve(indptr, mid, indices, data, dinv, x, out, part, transpose, near=0,
                     n_threads=1):
    """out = (E + L_B)⁻¹ x (part 1) or (E + U_B)⁻¹ x (part 2), E = 1 / ``dinv``. ``near``
    (the compiled sweeps' hint, kernels/*/assembled) changes nothing here."""
    from scipy.sparse.linalg import spsolve_triangular

    E, L, U = _parts(indptr, mid, indices, data, 1.0 / dinv, transpose)
    T = (E + L) if part == 1 else (E + U)
    out[:] = spsolve_triangular(T.tocsr(), np.array(x), lower=part == 1)


def sgs_operator(indptr, mid, indices, data, diag, dinv, kdiag, x, t, out, transpose, near=0,
                 n_threads=1):
    """out = E (E + L_B)⁻¹ B (E + U_B)⁻¹ x, E = ``diag`` (= 1 / ``dinv``), B's diagonal
    D = ``kdiag`` + 2E (symmetric SOR, split); ``t`` scratch."""
    y = np.empty_like(x)
    triangular_solve(indptr, mid, indices, data, dinv, x, t, 2, transpose)
    split_matvec(indptr, mid, indices, data, kdiag + 2.0 * diag, t, y, 0, transpose)
    triangular_solve(indptr, mid, indices, data, dinv, y, out, 1, transpose)
    out *= diag


def sgs_start(indptr, mid, indices, data, diag, dinv, kdiag, b, x, b_hat, y, out, transpose,
              near=0, n_threads=1):
    """SGS-BiCGSTAB's warm start from x: b_hat = E (E + L_B)⁻¹ b, y = (E + U_B) x and
    out = Â y = E (x + (E + L_B)⁻¹ (y + K x)), E = ``diag``, K = ``kdiag`` (= D − 2E)."""
    triangular_solve(indptr, mid, indices, data, dinv, b, b_hat, 1, transpose)
    b_hat *= diag
    split_matvec(indptr, mid, indices, data, diag, x, y, 2, transpose)
    triangular_solve(indptr, mid, indices, data, dinv, kdiag * x + y, out, 1, transpose)
    out += x
    out *= diag


def sgs_bicgstab(indptr, mid, indices, data, diag, dinv, kdiag, transpose, near, y, r, r_hat,
                 p, v, s, t, w, snap, state, threshold, blowup, max_products, n_threads=1):
    """BiCGSTAB steps on Â y = b̂, Â = :func:`sgs_operator`: from the iterate ``y``, its
    recursive residual ``r``, shadow ``r_hat`` and directions ``p``, ``v``; ``state`` =
    [ρ, α, ω, ‖r‖/‖b̂‖, the lowest of it so far, ‖b̂‖, status] read and written. Stops when
    ‖r‖/‖b̂‖ ≤ ``threshold`` (status 0), before a step would pass ``max_products`` (1), on
    a breakdown ρ = 0, ω = 0 or r̂ᵀv = 0 (2), or on a residual above ``blowup`` × the lowest
    or not finite (3; ``y`` back to ``snap``, saved whenever the residual halved). Returns
    the products with Â. ``s``, ``t``, ``w`` are scratch."""
    rho, alpha, omega, rel, snap_rel, bnorm = state[:6]

    def A_hat(x, out):
        sgs_operator(indptr, mid, indices, data, diag, dinv, kdiag, x, w, out, transpose)

    used, status = 0, 1
    while used + 2 <= max_products:
        if rel <= threshold:
            status = 0
            break
        rho_new = float(r_hat @ r)
        if rho_new == 0.0 or omega == 0.0:
            status = 2
            break
        p[:] = r + (rho_new / rho) * (alpha / omega) * (p - omega * v)
        A_hat(p, v)
        used += 1
        denom = float(r_hat @ v)
        if denom == 0.0:
            status = 2
            break
        alpha = rho_new / denom
        s[:] = r - alpha * v
        A_hat(s, t)
        used += 1
        tt = float(t @ t)
        omega = float(t @ s) / tt if tt > 0.0 else 0.0
        y += alpha * p + omega * s
        r[:] = s - omega * t
        rho = rho_new
        rel = float(np.sqrt(r @ r)) / bnorm
        if not rel <= blowup * snap_rel:
            y[:] = snap
            rel, status = snap_rel, 3
            break
        if rel < 0.5 * snap_rel:
            snap[:] = y
            snap_rel = rel
    if status == 1 and rel <= threshold:
        status = 0
    state[:5] = rho, alpha, omega, rel, snap_rel
    state[6] = status
    return used


# -------------------------------------------------------------------- batched
# K members at once on (S, K) vectors; ``pi`` and ``r`` are (L, n_pairs), one row per
# policy or reward vector, member i using row ``members[i]``.
def bellman_matvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out,
                         n_threads=1):
    """out[:, i] = x[:, i] − γ P_{π_m} x[:, i], m = members[i]."""
    Px = _P(p_indptr, p_indices, p_data, x.shape[0]) @ x  # (n_pairs, K)
    out[:] = x - gamma * np.add.reduceat(pi[members].T * Px, a_indptr[:-1], axis=0)


def shared_weights(p_indptr, p_data, pi, weights, n_threads=1):
    """weights[j] = π(k) p_data[j] for each entry j of pair k's row (P_π's entries)."""
    weights[:] = np.repeat(pi, np.diff(p_indptr)) * p_data[:p_indptr[-1]]


def bellman_matvec_shared(row_indptr, p_indices, weights, gamma, x, out, n_threads=1):
    """out[:, i] = x[:, i] − γ W x[:, i], W the (S, S) CSR (row_indptr, p_indices, weights)."""
    n = x.shape[0]
    end = row_indptr[-1]
    # copies: scipy may sort a CSR's arrays in place, and p_indices are the MDP's
    W = sp.csr_array((weights[:end].copy(), p_indices[:end].copy(), row_indptr.copy()), shape=(n, n))
    out[:] = x - gamma * (W @ x)


def bellman_rmatvec_batch(a_indptr, p_indptr, p_indices, p_data, pi, members, gamma, x, out,
                          buf, n_threads=1):
    """out[:, i] = x[:, i] − γ P_{π_m}ᵀ x[:, i], m = members[i]."""
    w = pi[members].T * x[_states(a_indptr)]  # (n_pairs, K)
    out[:] = x - gamma * (_P(p_indptr, p_indices, p_data, x.shape[0]).T @ w)


def q_values_batch(p_indptr, p_indices, p_data, r, members, gamma, v, out, n_threads=1):
    """out[i] = r_m + γ P v[:, i], m = members[i]."""
    out[:] = r[members] + gamma * (_P(p_indptr, p_indices, p_data, v.shape[0]) @ v).T


def regularized_reward_batch(a_indptr, r, r_of, pi, pi_of, ref, code, alpha, tau, out, terms,
                             n_threads=1):
    """out[i] = Σ_a π_m r_n − τ Σ_a π_ref f(π_m/π_ref), m = pi_of[i], n = r_of[i]."""
    for i, (m, n) in enumerate(zip(pi_of, r_of)):
        regularized_reward(a_indptr, r[n], pi[m], ref, code, alpha, tau, out[i])


def sweep_residual_batch(b, r, stats, n_threads=1):
    """r ← b − r (r holds A x); per member i (column): Σ r², min r, max r, Σ r in stats[:, i]."""
    np.subtract(b, r, out=r)
    if r.shape[0]:
        stats[0] = np.einsum("si,si->i", r, r)
        stats[1] = r.min(axis=0)
        stats[2] = r.max(axis=0)
        stats[3] = r.sum(axis=0)


def sweep_update_batch(x, r, offset, n_threads=1):
    """x ← (x + r) + offset (one offset per column): a Richardson sweep."""
    x += r
    x += offset
