"""Brute-force dense references for the exact kernels (stumpy's ``naive.py`` idea).

Everything here is written differently from the library on purpose: the MDP is
expanded into dense arrays with explicit Python loops over its pairs, linear
systems are solved by dense LU (``np.linalg.solve``) or an explicit inverse,
per-pair quantities are built with loops, and the f-divergence generators are
written out again from the table in SPEC §1 (this module does not import
``fastppo.regularizers``). Only small MDPs (tens of states) are meant to go in.
"""
import math

import numpy as np

# ----------------------------------------------------------------- generators f
# name → (f, f'), scalar functions of the ratio x = π/π_ref (x > 0)


def _js_f(x):
    return x * math.log(x) - (x + 1.0) * math.log((x + 1.0) / 2.0)


GENERATORS = {
    "ReverseKL": (lambda x, a: x * math.log(x), lambda x, a: math.log(x) + 1.0),
    "ForwardKL": (lambda x, a: -math.log(x), lambda x, a: -1.0 / x),
    "ChiSquare": (lambda x, a: (x - 1.0) ** 2, lambda x, a: 2.0 * (x - 1.0)),
    "Hellinger": (lambda x, a: (math.sqrt(x) - 1.0) ** 2, lambda x, a: 1.0 - 1.0 / math.sqrt(x)),
    "JensenShannon": (lambda x, a: _js_f(x), lambda x, a: math.log(2.0 * x / (x + 1.0))),
    "AlphaDivergence": (
        lambda x, a: (x ** (1.0 - a) - (1.0 - a) * x - a) / (a * (a - 1.0)),
        lambda x, a: (1.0 - x ** (-a)) / a,
    ),
}


def _alpha_inv(y, a):
    t = 1.0 - a * y  # f'(x) = (1 − x^{−a})/a  ⇒  x = (1 − a y)^{−1/a}
    if t > 0.0:
        return t ** (-1.0 / a)
    return math.inf if a > 0 else 0.0


def _js_inv(y, a):
    if y >= math.log(2.0):  # f'(x) = log(2x/(x+1)) < log 2
        return math.inf
    e = math.exp(y)
    return e / (2.0 - e)


# name → (f')^{-1}(y) (reverse KL has a closed-form greedy step instead), 0 below the
# range of f' and inf above it
FPRIME_INV = {
    "ForwardKL": lambda y, a: -1.0 / y if y < 0.0 else math.inf,
    "ChiSquare": lambda y, a: max(0.0, 1.0 + 0.5 * y),
    "Hellinger": lambda y, a: 1.0 / (1.0 - y) ** 2 if y < 1.0 else math.inf,
    "JensenShannon": _js_inv,
    "AlphaDivergence": _alpha_inv,
}


def f_at_zero(name, alpha=0.0):
    """lim_{x→0+} f(x) (math.inf where the divergence is infinite)."""
    return {
        "ReverseKL": 0.0,
        "ForwardKL": math.inf,
        "ChiSquare": 1.0,
        "Hellinger": 1.0,
        "JensenShannon": math.log(2.0),
        "AlphaDivergence": (1.0 / (1.0 - alpha)) if alpha < 1.0 else math.inf,
    }[name]


def x_fprime_at_zero(name, alpha=0.0):
    """lim_{x→0+} x·f'(x) (so that lim_{p→0} p·f'(p/q) = q · this)."""
    return {
        "ReverseKL": 0.0,
        "ForwardKL": -1.0,
        "ChiSquare": 0.0,
        "Hellinger": 0.0,
        "JensenShannon": 0.0,
        "AlphaDivergence": 0.0 if alpha < 1.0 else -math.inf,
    }[name]


def p_fprime(name, p, q, alpha=0.0):
    """p·f'(p/q) for arrays, from the table above (q · lim x f'(x) where p = 0)."""
    fp = GENERATORS[name][1]
    return np.array([pi * fp(pi / qi, alpha) if pi > 0 else qi * x_fprime_at_zero(name, alpha)
                     for pi, qi in zip(np.asarray(p, dtype=float), np.asarray(q, dtype=float))])


# ------------------------------------------- α-divergence terms in 250-digit arithmetic
# The defining formulas, evaluated with mpmath at 250 significant digits: they cancel
# as α → 0 or 1 and as p → q (α = 1e-20 with p/q = 1 ± 1e-15 loses about 50 digits),
# which leaves every value below correct to at least 50 digits. α is the double given.
MP_DIGITS = 250


def alpha_ref_f_mp(p, q, alpha):
    """q f_α(p/q) = (p^{1−α} q^α − (1−α) p − α q) / (α(α−1)) as an mpmath number."""
    import mpmath as mp

    if p == q:
        return mp.mpf(0)
    with mp.workdps(MP_DIGITS):
        p, q, a = mp.mpf(p), mp.mpf(q), mp.mpf(alpha)
        if p == 0:
            return q / (1 - a) if a < 1 else mp.inf
        return +((p ** (1 - a) * q ** a - (1 - a) * p - a * q) / (a * (a - 1)))


def alpha_p_fprime_mp(p, q, alpha):
    """p f'_α(p/q) = (p − p^{1−α} q^α) / α as an mpmath number."""
    import mpmath as mp

    if p == q:
        return mp.mpf(0)
    with mp.workdps(MP_DIGITS):
        p, q, a = mp.mpf(p), mp.mpf(q), mp.mpf(alpha)
        if p == 0:
            return mp.mpf(0) if a < 1 else -mp.inf
        return +((p - p ** (1 - a) * q ** a) / a)


def alpha_fprime_inv_mp(y, alpha):
    """(h, h') with h = (f'_α)^{-1}(y) = (1 − αy)^{−1/α} (0 / +∞ outside the range of f')."""
    import mpmath as mp

    with mp.workdps(MP_DIGITS):
        t = 1 - mp.mpf(alpha) * mp.mpf(y)
        if t <= 0:
            return (mp.inf, mp.inf) if alpha > 0 else (mp.mpf(0), mp.mpf(0))
        h = t ** (-1 / mp.mpf(alpha))
        return +h, +(h / t)


def spec(reg):
    """(name, alpha, tau) of a fastppo regularizer object, read off its attributes."""
    if reg is None:
        return None, 0.0, 0.0
    return type(reg).__name__, float(getattr(reg, "alpha", 0.0)), float(reg.tau)


# ------------------------------------------------------------------ dense MDP
def dense(mdp):
    """(states, P, r): state of every pair, dense P[k, s'] and r[k], by loops over pairs."""
    n_pairs, S = mdp.n_pairs, mdp.n_states
    states = np.empty(n_pairs, dtype=np.int64)
    for s in range(S):
        for k in range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])):
            states[k] = s
    P = np.zeros((n_pairs, S))
    for k in range(n_pairs):
        for j in range(int(mdp.p_indptr[k]), int(mdp.p_indptr[k + 1])):
            P[k, int(mdp.p_indices[j])] += float(mdp.p_data[j])
    r = np.array([float(x) for x in mdp.r])
    return states, P, r


def dense_sas(mdp):
    """Rectangular MDPs: P[s, a, s'] and R[s, a] by loops."""
    assert mdp.is_rectangular
    states, P, r = dense(mdp)
    S, A = mdp.n_states, mdp.n_actions
    P3 = np.zeros((S, A, S))
    R2 = np.zeros((S, A))
    for k in range(mdp.n_pairs):
        s, a = int(states[k]), int(mdp.a_indices[k])
        P3[s, a, :] = P[k]
        R2[s, a] = r[k]
    return P3, R2


def flat(mdp, table):
    """A policy-like table ((n_pairs,) or (S, A)) as a flat float array, by loops."""
    table = np.asarray(table, dtype=np.float64)
    if table.ndim == 1:
        return table.copy()
    out = np.empty(mdp.n_pairs)
    for s in range(mdp.n_states):
        for k in range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])):
            out[k] = table[s, int(mdp.a_indices[k])]
    return out


def ref_policy(mdp, reg):
    """π_ref flat (uniform when reg.ref is None)."""
    if reg is None or reg.ref is None:
        out = np.empty(mdp.n_pairs)
        for s in range(mdp.n_states):
            lo, hi = int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])
            for k in range(lo, hi):
                out[k] = 1.0 / (hi - lo)
        return out
    return flat(mdp, reg.ref)


def P_pi(mdp, pi):
    """Dense S×S matrix P_π(s, s') = Σ_a π(a|s) P(s'|s, a), accumulated pair by pair."""
    states, P, _ = dense(mdp)
    pi = flat(mdp, pi)
    M = np.zeros((mdp.n_states, mdp.n_states))
    for k in range(mdp.n_pairs):
        M[states[k]] += pi[k] * P[k]
    return M


def r_pi(mdp, pi):
    states, _, r = dense(mdp)
    pi = flat(mdp, pi)
    out = np.zeros(mdp.n_states)
    for k in range(mdp.n_pairs):
        out[states[k]] += pi[k] * r[k]
    return out


def divergence(mdp, pi, reg):
    """D_f(π(·|s) ‖ π_ref(·|s)) per state, by loops (limits at π = 0)."""
    name, alpha, _ = spec(reg)
    out = np.zeros(mdp.n_states)
    if name is None:
        return out
    f = GENERATORS[name][0]
    pi, ref = flat(mdp, pi), ref_policy(mdp, reg)
    for s in range(mdp.n_states):
        total = 0.0
        for k in range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])):
            p, q = float(pi[k]), float(ref[k])
            total += q * (f(p / q, alpha) if p > 0 else f_at_zero(name, alpha))
        out[s] = total
    return out


def evaluate(mdp, pi, reg=None):
    """(v, q, adv) flat, with v = solve(I − γP_π, r_π − τD)."""
    states, P, r = dense(mdp)
    _, _, tau = spec(reg)
    pi = flat(mdp, pi)
    S, g = mdp.n_states, mdp.gamma
    c = r_pi(mdp, pi) - tau * divergence(mdp, pi, reg) if tau else r_pi(mdp, pi)
    v = np.linalg.solve(np.eye(S) - g * P_pi(mdp, pi), c)
    q = np.empty(mdp.n_pairs)
    for k in range(mdp.n_pairs):
        acc = 0.0
        for t in range(S):
            acc += P[k, t] * v[t]
        q[k] = r[k] + g * acc
    adv = np.empty(mdp.n_pairs)
    for s in range(S):
        ks = range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1]))
        mean = sum(pi[k] * q[k] for k in ks)
        for k in ks:
            adv[k] = q[k] - mean
    return v, q, adv


def visitation(mdp, pi, mu=None):
    """d = (1 − γ) μᵀ (I − γP_π)^{-1} by an explicit inverse."""
    S, g = mdp.n_states, mdp.gamma
    mu = np.asarray(mdp.rho if mu is None else mu, dtype=np.float64)
    return (1.0 - g) * (mu @ np.linalg.inv(np.eye(S) - g * P_pi(mdp, pi)))


def softmax(mdp, logits):
    logits = flat(mdp, logits)
    out = np.empty(mdp.n_pairs)
    for s in range(mdp.n_states):
        lo, hi = int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])
        m = max(logits[lo:hi])
        e = [math.exp(x - m) for x in logits[lo:hi]]
        z = math.fsum(e)
        for i, k in enumerate(range(lo, hi)):
            out[k] = e[i] / z
    return out


def gradient(mdp, logits, reg=None, mu=None):
    """∂Ṽ(μ)/∂θ from the SPEC formula, by loops over states and pairs (flat)."""
    name, alpha, tau = spec(reg)
    pi = softmax(mdp, logits)
    _, _, adv = evaluate(mdp, pi, reg)
    d = visitation(mdp, pi, mu)
    ref = ref_policy(mdp, reg)
    g = np.zeros(mdp.n_pairs)
    for s in range(mdp.n_states):
        ks = range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1]))
        weight = d[s] / (1.0 - mdp.gamma)
        if not tau or name is None:
            for k in ks:
                g[k] = weight * pi[k] * adv[k]
            continue
        fp = GENERATORS[name][1]
        # π(a|s) f'(w_a), with its limit q · lim_{x→0} x f'(x) where π(a|s) = 0
        pf = {k: pi[k] * fp(pi[k] / ref[k], alpha) if pi[k] > 0
              else ref[k] * x_fprime_at_zero(name, alpha) for k in ks}
        mean = sum(pf.values())  # Σ_b π(b|s) f'(w_b)
        for k in ks:
            g[k] = weight * (pi[k] * adv[k] - tau * (pf[k] - pi[k] * mean))
    return g


def J(mdp, logits, reg=None, mu=None):
    """J(θ) = Σ_s μ(s) Ṽ^{π_θ}(s) (μ = ρ by default)."""
    mu = np.asarray(mdp.rho if mu is None else mu, dtype=np.float64)
    v, _, _ = evaluate(mdp, softmax(mdp, logits), reg)
    return float(mu @ v)


def fd_gradient(mdp, logits, reg=None, mu=None, h=1e-5):
    """Central finite differences of :func:`J` in every logit (flat)."""
    theta = flat(mdp, logits)
    g = np.empty(mdp.n_pairs)
    for k in range(mdp.n_pairs):
        up, dn = theta.copy(), theta.copy()
        up[k] += h
        dn[k] -= h
        g[k] = (J(mdp, up, reg, mu) - J(mdp, dn, reg, mu)) / (2.0 * h)
    return g


def fd_gradient_richardson(mdp, logits, reg=None, mu=None, h=1e-3):
    """Fourth-order central differences (Richardson): error O(h⁴)."""
    theta = flat(mdp, logits)
    g = np.empty(mdp.n_pairs)
    for k in range(mdp.n_pairs):
        vals = []
        for step in (2 * h, h, -h, -2 * h):
            t = theta.copy()
            t[k] += step
            vals.append(J(mdp, t, reg, mu))
        g[k] = (-vals[0] + 8 * vals[1] - 8 * vals[2] + vals[3]) / (12.0 * h)
    return g


# -------------------------------------------------------------------- helpers
def rel_err(x, ref, scale=None):
    """max |x − ref| / scale, scale = max |ref| by default (a relative error in the ∞-norm)."""
    x, ref = np.asarray(x, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert x.shape == ref.shape, (x.shape, ref.shape)
    if scale is None:
        scale = np.abs(ref).max()
    if scale == 0:
        return float(np.abs(x - ref).max())
    return float(np.abs(x - ref).max() / scale)


# ------------------------------------------------------------------- episodic
def terminal_states(mdp):
    """Boolean (S,): every action of s returns to s with probability 1 and reward 0 (loops)."""
    states, P, r = dense(mdp)
    out = np.ones(mdp.n_states, dtype=bool)
    for k in range(mdp.n_pairs):
        s = int(states[k])
        if not (P[k, s] == 1.0 and r[k] == 0.0):
            out[s] = False
    return out


def episodic(mdp, pi, reg=None, mu=None, gamma=None):
    """(v, n) on an MDP whose non-terminal states N form a DAG, by dense solves on N:
    v_N = (I − γ P_NN)^{-1} (r_π − τD)_N and n_N = (I − γ P_NNᵀ)^{-1} μ_N; 0 on terminal
    states. ``gamma`` defaults to ``mdp.gamma``."""
    g = mdp.gamma if gamma is None else gamma
    _, _, tau = spec(reg)
    live = np.flatnonzero(~terminal_states(mdp))
    M = P_pi(mdp, pi)[np.ix_(live, live)]
    c = r_pi(mdp, pi) - tau * divergence(mdp, pi, reg) if tau else r_pi(mdp, pi)
    mu = np.asarray(mdp.rho if mu is None else mu, dtype=np.float64)
    v, n = np.zeros(mdp.n_states), np.zeros(mdp.n_states)
    A = np.eye(live.size) - g * M
    v[live] = np.linalg.solve(A, c[live])
    n[live] = np.linalg.solve(A.T, mu[live])
    return v, n
