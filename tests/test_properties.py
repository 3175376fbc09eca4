"""Properties of the exact solver on small random MDPs drawn by Hypothesis."""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import conftest
import fastppo
import naive

SETTINGS = settings(max_examples=int(os.environ.get("FASTPPO_HYPOTHESIS_EXAMPLES", 25)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow])

REGS = [
    lambda tau, ref: None,
    lambda tau, ref: fastppo.ReverseKL(tau, ref),
    lambda tau, ref: fastppo.ForwardKL(tau, ref),
    lambda tau, ref: fastppo.ChiSquare(tau, ref),
    lambda tau, ref: fastppo.Hellinger(tau, ref),
    lambda tau, ref: fastppo.JensenShannon(tau, ref),
    lambda tau, ref: fastppo.AlphaDivergence(tau, 0.5, ref),
    lambda tau, ref: fastppo.AlphaDivergence(tau, 2.0, ref),
    lambda tau, ref: fastppo.AlphaDivergence(tau, -1.0, ref),
]


def raw_mdp(seed, n_states, n_actions, rectangular, density):
    """(s_indices, a_indices, P dense (n_pairs, S), R) in generation order."""
    return conftest.raw_mdp(seed, n_states, n_actions, rectangular, density, boost=0.05,
                            reward_scales=[0.01, 1.0, 100.0])[:4]


@st.composite
def problems(draw, tau_zero=False):
    """(mdp, pi, logits, reg, mu, backend) for a small random MDP."""
    seed = draw(st.integers(0, 2**32 - 1))
    S = draw(st.integers(1, 9))
    A = draw(st.integers(1, 4))
    rect = draw(st.booleans())
    density = draw(st.sampled_from([0.0, 0.2, 0.6, 1.0]))
    gamma = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    s, a, P, R = raw_mdp(seed, S, A, rect, density)
    rng = np.random.default_rng(seed + 1)
    rho = rng.random(S) + 0.01
    mdp = fastppo.MDP.from_sa_pairs(s, a, P, R, gamma, rho / rho.sum())
    sharp = draw(st.sampled_from([0.0, 1.0, 4.0]))
    logits = sharp * rng.normal(size=mdp.n_pairs)
    pi = naive.softmax(mdp, logits)
    ref = None
    if draw(st.booleans()):
        ref = naive.softmax(mdp, rng.normal(size=mdp.n_pairs))
    tau = 0.0 if tau_zero else draw(st.sampled_from([0.0, 0.1, 1.0]))
    reg = draw(st.sampled_from(REGS))(tau, ref)
    mu = rng.random(S) * (rng.random(S) < 0.7)
    mu[rng.integers(S)] += 0.1
    mu /= mu.sum()
    backend = draw(st.sampled_from(["numba", "cython", "numpy"]))
    return mdp, pi, logits, reg, mu, backend


def _tau(reg):
    return 0.0 if reg is None else reg.tau


def _c(mdp, pi, reg):
    return naive.r_pi(mdp, pi) - _tau(reg) * naive.divergence(mdp, pi, reg) if _tau(reg) else naive.r_pi(mdp, pi)


def grad_scale(mdp, pi, q, d, reg):
    """Size of the terms the gradient is made of: d/(1−γ) · π (|Q̃| + τ |f'|) per pair
    (round-off in the gradient is relative to this, not to the gradient itself)."""
    w = np.repeat(d, np.diff(mdp.a_indptr)) / (1 - mdp.gamma)
    pf = 0.0
    if _tau(reg):
        ref = naive.ref_policy(mdp, reg)
        pf = np.abs(reg.p_fprime(pi, ref))
    return float((w * (np.abs(q) + _tau(reg) * pf)).max()) + 1e-300


@SETTINGS
@given(problems())
def test_advantages_have_zero_mean_under_pi(problem):
    mdp, pi, _, reg, _, backend = problem
    ev = fastppo.evaluate(mdp, pi, reg, backend=backend, n_threads=1)
    scale = np.abs(ev.q).max() + 1e-300
    c_scale = max(scale, np.abs(ev.v).max(), np.abs(_c(mdp, pi, reg)).max())
    for s in range(mdp.n_states):
        ks = slice(mdp.a_indptr[s], mdp.a_indptr[s + 1])
        assert abs(np.dot(pi[ks], ev.adv[ks])) <= 1e-12 * scale
    # Σ_a π Q̃ = Ṽ + τ D_f: the state's own divergence is not in Q̃
    mean_q = np.add.reduceat(pi * ev.q, mdp.a_indptr[:-1])
    expect = ev.v + _tau(reg) * naive.divergence(mdp, pi, reg)
    assert naive.rel_err(mean_q, expect, scale=c_scale) <= 1e-11


@SETTINGS
@given(problems())
def test_visitation_is_a_distribution_above_its_start(problem):
    mdp, pi, _, _, mu, backend = problem
    for m in (mu, None):
        d = fastppo.visitation(mdp, pi, m, backend=backend, n_threads=1)
        start = mdp.rho if m is None else m
        assert (d >= (1 - mdp.gamma) * start - 1e-12).all()
        assert abs(d.sum() - 1.0) <= 1e-12
        # stationarity of the discounted chain: d = (1−γ)μ + γ P_πᵀ d
        resid = d - (1 - mdp.gamma) * start - mdp.gamma * naive.P_pi(mdp, pi).T @ d
        assert np.abs(resid).max() <= 1e-10


@SETTINGS
@given(problems())
def test_bellman_residual(problem):
    mdp, pi, _, reg, _, backend = problem
    ev = fastppo.evaluate(mdp, pi, reg, backend=backend, n_threads=1)
    c = _c(mdp, pi, reg)
    scale = np.abs(c).max() / (1 - mdp.gamma) + 1e-300  # bound on |v|
    resid = ev.v - (c + mdp.gamma * naive.P_pi(mdp, pi) @ ev.v)
    assert np.abs(resid).max() <= 1e-9 * scale
    assert np.abs(ev.v).max() <= scale * (1 + 1e-12)


@SETTINGS
@given(problems(), st.integers(0, 2**32 - 1))
def test_values_monotone_in_rewards(problem, seed):
    """Raising rewards never lowers v (P_π ≥ 0), and raises it at least by min δ_π."""
    mdp, pi, _, reg, _, backend = problem
    rng = np.random.default_rng(seed)
    delta = rng.exponential(size=mdp.n_pairs) * (rng.random(mdp.n_pairs) < 0.5)
    higher = fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data,
                         mdp.r + delta, mdp.gamma, mdp.rho)
    for r in (None, reg):
        v = fastppo.evaluate(mdp, pi, r, backend=backend, n_threads=1).v
        v2 = fastppo.evaluate(higher, pi, r, backend=backend, n_threads=1).v
        scale = (np.abs(v).max() + np.abs(v2).max()) * 1e-11 + 1e-300
        delta_pi = np.zeros(mdp.n_states)
        np.add.at(delta_pi, mdp.s_indices, pi * delta)
        assert (v2 - v >= delta_pi.min() - scale).all()
        assert (v2 - v <= delta_pi.max() / (1 - mdp.gamma) + scale).all()


@SETTINGS
@given(problems(), st.integers(0, 2**32 - 1))
def test_pair_order_does_not_matter(problem, seed):
    """Shuffling the pairs before from_sa_pairs gives the same MDP and bit-identical results."""
    mdp, pi, logits, reg, mu, backend = problem
    P = mdp.P.toarray()
    perm = np.random.default_rng(seed).permutation(mdp.n_pairs)
    shuffled = fastppo.MDP.from_sa_pairs(mdp.s_indices[perm], mdp.a_indices[perm], P[perm],
                                         mdp.r[perm], mdp.gamma, mdp.rho)
    assert shuffled == mdp
    opts = dict(backend=backend, n_threads=1)
    a, b = fastppo.evaluate(mdp, pi, reg, **opts), fastppo.evaluate(shuffled, pi, reg, **opts)
    np.testing.assert_array_equal(a.v, b.v)
    np.testing.assert_array_equal(a.adv, b.adv)
    np.testing.assert_array_equal(fastppo.visitation(mdp, pi, mu, **opts),
                                  fastppo.visitation(shuffled, pi, mu, **opts))
    np.testing.assert_array_equal(fastppo.gradient(mdp, logits, reg, mu, **opts),
                                  fastppo.gradient(shuffled, logits, reg, mu, **opts))


@SETTINGS
@given(problems(), st.integers(0, 2**32 - 1))
def test_relabelling_states_permutes_results(problem, seed):
    mdp, pi, logits, reg, mu, backend = problem
    S = mdp.n_states
    perm = np.random.default_rng(seed).permutation(S)  # old state s is new state perm[s]
    P = mdp.P.toarray()
    P_new = np.zeros_like(P)
    P_new[:, perm] = P
    rho_new = np.empty(S)
    rho_new[perm] = mdp.rho
    mu_new = np.empty(S)
    mu_new[perm] = mu
    new = fastppo.MDP.from_sa_pairs(perm[mdp.s_indices], mdp.a_indices, P_new, mdp.r, mdp.gamma, rho_new)
    # pair k of the old MDP is pair order[k] of the new one
    order = np.empty(mdp.n_pairs, dtype=np.int64)
    order[np.lexsort((mdp.a_indices, perm[mdp.s_indices]))] = np.arange(mdp.n_pairs)
    pi_new, logits_new = np.empty_like(pi), np.empty_like(logits)
    pi_new[order], logits_new[order] = pi, logits
    reg_new = reg
    if reg is not None and reg.ref is not None:
        ref_new = np.empty(mdp.n_pairs)
        ref_new[order] = reg.ref
        reg_new = (type(reg)(reg.tau, reg.alpha, ref_new) if isinstance(reg, fastppo.AlphaDivergence)
                   else type(reg)(reg.tau, ref_new))
    opts = dict(backend=backend, n_threads=1)
    a, b = fastppo.evaluate(mdp, pi, reg, **opts), fastppo.evaluate(new, pi_new, reg_new, **opts)
    assert naive.rel_err(b.v[perm], a.v) <= 1e-10
    assert naive.rel_err(b.q[order], a.q) <= 1e-10
    d, d_new = fastppo.visitation(mdp, pi, mu, **opts), fastppo.visitation(new, pi_new, mu_new, **opts)
    assert naive.rel_err(d_new[perm], d) <= 1e-10
    g = fastppo.gradient(mdp, logits, reg, mu, **opts)
    g_new = fastppo.gradient(new, logits_new, reg_new, mu_new, **opts)
    assert naive.rel_err(g_new[order], g, scale=grad_scale(mdp, pi, a.q, d, reg)) <= 1e-10


@SETTINGS
@given(problems(), st.integers(0, 2**32 - 1))
def test_gradient_structure(problem, seed):
    """Per state the gradient (i) sums to 0 over actions (softmax is shift-invariant) and
    (ii) is d_μ(s) times a μ-independent vector — so it is exactly 0 where d_μ(s) = 0
    and linear in μ."""
    mdp, pi, logits, reg, mu, backend = problem
    opts = dict(backend=backend, n_threads=1)
    rng = np.random.default_rng(seed)
    mu2 = rng.random(mdp.n_states)
    mu2 /= mu2.sum()
    pi = mdp.to_pairs(fastppo.softmax(mdp, logits, **opts))
    q = fastppo.evaluate(mdp, pi, reg, **opts).q
    g1 = fastppo.gradient(mdp, logits, reg, mu, **opts)
    g2 = fastppo.gradient(mdp, logits, reg, mu2, **opts)
    d1 = fastppo.visitation(mdp, pi, mu, **opts)
    d2 = fastppo.visitation(mdp, pi, mu2, **opts)
    s1, s2 = grad_scale(mdp, pi, q, d1, reg), grad_scale(mdp, pi, q, d2, reg)
    assert np.abs(np.add.reduceat(g1, mdp.a_indptr[:-1])).max() <= 1e-13 * s1
    assert np.abs(np.add.reduceat(g2, mdp.a_indptr[:-1])).max() <= 1e-13 * s2
    w1, w2 = np.repeat(d1, np.diff(mdp.a_indptr)), np.repeat(d2, np.diff(mdp.a_indptr))
    assert naive.rel_err(g1 * w2, g2 * w1, scale=max(s1 * d2.max(), s2 * d1.max())) <= 1e-10
    assert (g1[w1 == 0] == 0).all()
    lam = 0.3
    g_mix = fastppo.gradient(mdp, logits, reg, lam * mu + (1 - lam) * mu2, **opts)
    assert naive.rel_err(g_mix, lam * g1 + (1 - lam) * g2, scale=max(s1, s2)) <= 1e-10


def test_unreachable_states_get_exactly_zero_gradient():
    """Two closed classes; μ on the first: d = 0 and the gradient is exactly 0 on the second."""
    rng = np.random.default_rng(0)
    S, A = 8, 3
    P = np.zeros((S, A, S))
    for s in range(S):
        block = slice(0, 4) if s < 4 else slice(4, 8)
        for a in range(A):
            P[s, a, block] = rng.random(4)
            P[s, a] /= P[s, a].sum()
    mdp = fastppo.MDP.from_dense(P, rng.normal(size=(S, A)), 0.9)
    mu = np.r_[np.full(4, 0.25), np.zeros(4)]
    logits = rng.normal(size=(S, A))
    for backend in ("numba", "cython", "numpy"):
        for reg in (None, fastppo.ReverseKL(0.3), fastppo.ForwardKL(0.3)):
            d = fastppo.visitation(mdp, naive.softmax(mdp, logits), mu, backend=backend, n_threads=1)
            assert (d[4:] == 0).all()
            g = fastppo.gradient(mdp, logits, reg, mu, backend=backend, n_threads=1)
            assert (g[4:] == 0).all() and (np.abs(g[:4]) > 0).any()


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_value_of_constant_reward(backend):
    """r ≡ c: v ≡ c/(1−γ) − τ (I − γP_π)^{-1} D whatever the transitions (τ = 0: exactly)."""
    s, a, P, _ = raw_mdp(3, 7, 3, False, 0.4)
    mdp = fastppo.MDP.from_sa_pairs(s, a, P, np.full(len(s), 2.0), 0.95)
    pi = naive.softmax(mdp, np.random.default_rng(0).normal(size=mdp.n_pairs))
    v = fastppo.evaluate(mdp, pi, backend=backend, n_threads=1).v
    np.testing.assert_allclose(v, 2.0 / 0.05, rtol=1e-12)
