"""Exact evaluation, visitation, softmax and gradient against the dense brute-force
references in ``naive.py``, on many small random MDPs, for every regularizer, every
backend and 1 and 2 threads."""
import functools
import math

import numpy as np
import pytest

import fastppo
import naive
from conftest import random_mdp, random_policy

REL = 1e-10  # v, q, adv, d, gradient vs the dense references (relative, ∞-norm)
FD_REL = 1e-6  # gradient vs central finite differences of J
TAU = 0.4

REGS = {
    "none": lambda ref: None,
    "reverse_kl": lambda ref: fastppo.ReverseKL(TAU, ref),
    "forward_kl": lambda ref: fastppo.ForwardKL(TAU, ref),
    "chi2": lambda ref: fastppo.ChiSquare(TAU, ref),
    "hellinger": lambda ref: fastppo.Hellinger(TAU, ref),
    "js": lambda ref: fastppo.JensenShannon(TAU, ref),
    "alpha0.5": lambda ref: fastppo.AlphaDivergence(TAU, 0.5, ref),
    "alpha2": lambda ref: fastppo.AlphaDivergence(TAU, 2.0, ref),
    "alpha-1": lambda ref: fastppo.AlphaDivergence(TAU, -1.0, ref),
}
SIX = [name for name in REGS if name != "none"]
# (regularizer, reference): every regularizer with the uniform and a random reference
REG_REF = [(name, "uniform") for name in REGS] + [(name, "random") for name in SIX]
# (seed, rectangular, gamma): rectangular and ragged MDPs (1..3 actions, sparse labels)
CASES = [(0, True, 0.9), (1, False, 0.9), (2, True, 0.95), (3, False, 0.8), (4, False, 0.95)]


@pytest.fixture(autouse=True)
def _serial_by_default():
    """Calls that do not pass n_threads run serially (explicit n_threads still wins)."""
    with fastppo.backend(n_threads=1):
        yield


def cases(n_threads):
    """All cases serially; two (one rectangular, one ragged) with threads, whose parallel
    regions are slow to start on a loaded 2-core machine (every call wakes a thread team)."""
    return CASES if n_threads == 1 else CASES[:2]


@functools.lru_cache(maxsize=None)
def case(seed, rect, gamma, ref_kind="uniform"):
    """(mdp, pi, logits, ref) for a case; ``ref`` is None (uniform) or a random full-support
    policy, in (S, A) table form for rectangular MDPs."""
    mdp = random_mdp(seed, n_states=10, n_actions=3, gamma=gamma, rectangular=rect)
    pi, logits = random_policy(mdp, 1000 + seed, sharp=1.5)
    ref = None
    if ref_kind == "random":
        ref = mdp.to_table(random_policy(mdp, 2000 + seed)[0])
    return mdp, pi, logits, ref


@functools.lru_cache(maxsize=None)
def naive_eval(c, reg_name, ref_kind):
    mdp, pi, _, ref = case(*c, ref_kind)
    return naive.evaluate(mdp, pi, REGS[reg_name](ref))


@functools.lru_cache(maxsize=None)
def naive_grad(c, reg_name, ref_kind, mu_kind="rho"):
    mdp, _, logits, ref = case(*c, ref_kind)
    mu = _mu(mdp, mu_kind)
    reg = REGS[reg_name](ref)
    return naive.gradient(mdp, logits, reg, mu), naive.fd_gradient(mdp, logits, reg, mu)


def _mu(mdp, kind):
    if kind == "rho":
        return None
    if kind == "point":
        mu = np.zeros(mdp.n_states)
        mu[mdp.n_states // 2] = 1.0
        return mu
    rng = np.random.default_rng(mdp.n_pairs)
    mu = rng.random(mdp.n_states)
    return mu / mu.sum()


# ------------------------------------------------------------------ evaluation
@pytest.mark.parametrize("reg_name, ref_kind", REG_REF)
def test_evaluate_matches_naive(backend, n_threads, reg_name, ref_kind):
    for c in cases(n_threads):
        mdp, pi, _, ref = case(*c, ref_kind)
        ev = fastppo.evaluate(mdp, pi, REGS[reg_name](ref), backend=backend, n_threads=n_threads)
        v, q, adv = naive_eval(c, reg_name, ref_kind)
        assert ev.backend == backend
        assert naive.rel_err(ev.v, v) <= REL, c
        assert naive.rel_err(mdp.to_pairs(ev.q), q) <= REL, c
        # Ã = Q̃ − mean: a difference of Q̃ values, so relative to the size of Q̃
        assert naive.rel_err(mdp.to_pairs(ev.adv), adv, scale=np.abs(q).max()) <= REL, c
        assert abs(ev.J - mdp.rho @ v) <= REL * np.abs(v).max()
        assert ev.residual <= 1e-12
        assert 1 <= ev.n_matvec <= 5000


def test_regularizer_changes_values():
    """Guards the reference: a regularizer must actually move v (else the tests above
    would pass with the τ term ignored on both sides)."""
    c = CASES[0]
    v0 = naive_eval(c, "none", "uniform")[0]
    for name in SIX:
        v = naive_eval(c, name, "uniform")[0]
        assert naive.rel_err(v, v0) > 1e-3, name
        assert (v <= v0 + 1e-12).all(), name  # D_f ≥ 0 lowers every value


def test_zero_tau_is_plain_mdp(backend):
    mdp, pi, _, _ = case(*CASES[1])
    plain = fastppo.evaluate(mdp, pi, backend=backend)
    for make in REGS.values():
        reg = make(None)
        if reg is None:
            continue
        reg.tau = 0.0
        ev = fastppo.evaluate(mdp, pi, reg, backend=backend)
        np.testing.assert_array_equal(ev.v, plain.v)


# ------------------------------------------------------------------ visitation
@pytest.mark.parametrize("mu_kind", ["rho", "random", "point"])
def test_visitation_matches_naive(backend, n_threads, mu_kind):
    for c in cases(n_threads):
        mdp, pi, _, _ = case(*c)
        mu = _mu(mdp, mu_kind)
        d = fastppo.visitation(mdp, pi, mu, backend=backend, n_threads=n_threads)
        expect = naive.visitation(mdp, pi, mu)
        assert naive.rel_err(d, expect) <= REL, c
        assert abs(expect.sum() - 1.0) < 1e-12  # the reference itself is a distribution


def test_visitation_full_output(backend, n_threads):
    mdp, pi, _, _ = case(*CASES[2])
    res = fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads, full_output=True)
    assert set(res) == {"d", "n_matvec", "n_passes", "residual", "method", "fill", "backend"}
    assert res.backend == backend
    assert res.residual <= 1e-12
    assert res.n_matvec >= 1
    np.testing.assert_array_equal(res.d, fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads))
    assert naive.rel_err(res.d, naive.visitation(mdp, pi)) <= REL
    assert "n_matvec" in repr(res)


# ------------------------------------------------------------------ softmax
def test_softmax_matches_naive(backend, n_threads):
    for c in CASES:
        mdp, _, logits, _ = case(*c)
        for scale in (1.0, 30.0):
            pi = fastppo.softmax(mdp, scale * logits, backend=backend, n_threads=n_threads)
            expect = naive.softmax(mdp, scale * logits)
            np.testing.assert_allclose(pi, expect, rtol=1e-14, atol=1e-300)


def test_softmax_extreme_logits(backend, n_threads):
    mdp = random_mdp(5, n_states=4, n_actions=3)
    logits = np.array([[1e4, -1e4, 0.0],
                       [-1e4, -1e4, -1e4],
                       [1e4, 1e4, -1e4],
                       [-1e4, 0.0, 1e4]])
    pi = fastppo.softmax(mdp, logits, backend=backend, n_threads=n_threads)
    expect = np.array([[1.0, 0.0, 0.0],
                       [1 / 3, 1 / 3, 1 / 3],
                       [0.5, 0.5, 0.0],
                       [0.0, 0.0, 1.0]])
    assert not np.isnan(pi).any()
    np.testing.assert_array_equal(pi, expect)


def test_softmax_shift_invariant(backend):
    mdp, _, logits, _ = case(*CASES[1])
    shift = np.repeat(np.arange(mdp.n_states) * 1e3, np.diff(mdp.a_indptr))
    a = fastppo.softmax(mdp, logits, backend=backend)
    b = fastppo.softmax(mdp, logits + shift, backend=backend)
    np.testing.assert_allclose(a, b, rtol=1e-9)


# ------------------------------------------------------------------ gradient
@pytest.mark.parametrize("reg_name, ref_kind", REG_REF)
def test_gradient_matches_naive_formula(backend, n_threads, reg_name, ref_kind):
    for c in cases(n_threads)[:3]:
        mdp, _, logits, ref = case(*c, ref_kind)
        g = fastppo.gradient(mdp, logits, REGS[reg_name](ref), backend=backend, n_threads=n_threads)
        expect, _ = naive_grad(c, reg_name, ref_kind)
        assert naive.rel_err(mdp.to_pairs(g), expect) <= REL, c


@pytest.mark.parametrize("reg_name, ref_kind", REG_REF)
def test_gradient_matches_finite_differences(backend, reg_name, ref_kind):
    """The exact gradient equals central finite differences of J(θ) = Σ μ Ṽ^{π_θ} computed
    by dense solves — independent of the formula, so this checks the formula itself."""
    for c, mu_kind in ((CASES[0], "rho"), (CASES[1], "random")):
        mdp, _, logits, ref = case(*c, ref_kind)
        mu = _mu(mdp, mu_kind)
        g = fastppo.gradient(mdp, logits, REGS[reg_name](ref), mu, backend=backend)
        formula, fd = naive_grad(c, reg_name, ref_kind, mu_kind)
        assert naive.rel_err(mdp.to_pairs(g), fd) <= FD_REL, c
        assert naive.rel_err(formula, fd) <= FD_REL, c  # the reference formula too


def test_finite_differences_detect_a_wrong_gradient():
    """Guards the FD test's power: dropping the τ term (or the d weighting) is caught."""
    c = CASES[0]
    mdp, _, logits, _ = case(*c)
    _, fd = naive_grad(c, "reverse_kl", "uniform")
    no_tau = fastppo.gradient(mdp, logits, None)
    assert naive.rel_err(mdp.to_pairs(no_tau), fd) > 100 * FD_REL
    g = mdp.to_pairs(fastppo.gradient(mdp, logits, fastppo.ReverseKL(TAU)))
    d = fastppo.visitation(mdp, fastppo.softmax(mdp, logits))
    unweighted = g / np.repeat(d, np.diff(mdp.a_indptr)) * mdp.rho.mean()
    assert naive.rel_err(unweighted, fd) > 100 * FD_REL


def test_gradient_sharp_policy_finite_differences(backend):
    """Near-deterministic policies (π down to ~1e-9) with a non-uniform reference."""
    mdp = random_mdp(7, n_states=8, n_actions=3, gamma=0.9)
    _, logits = random_policy(mdp, 70, sharp=6.0)
    ref = random_policy(mdp, 71)[0]
    for reg in (fastppo.ReverseKL(0.2, ref), fastppo.ForwardKL(0.2, ref),
                fastppo.AlphaDivergence(0.2, 2.0, ref), fastppo.JensenShannon(0.2, ref)):
        g = fastppo.gradient(mdp, logits, reg, backend=backend)
        fd = naive.fd_gradient(mdp, logits, reg)
        assert naive.rel_err(mdp.to_pairs(g), fd) <= FD_REL, reg


def test_gradient_is_zero_at_single_action_states(backend):
    mdp, _, logits, _ = case(*CASES[1])
    counts = np.diff(mdp.a_indptr)
    assert (counts == 1).any()
    g = fastppo.gradient(mdp, logits, fastppo.ReverseKL(TAU), backend=backend)
    assert (g[np.repeat(counts == 1, counts)] == 0.0).all()


# ------------------------------------------------------------------ discount edge cases
@pytest.mark.parametrize("reg_name", list(REGS))
def test_gamma_zero_gives_regularized_reward(backend, n_threads, reg_name):
    mdp = random_mdp(11, n_states=9, n_actions=3, gamma=0.0, rectangular=False)
    pi, _ = random_policy(mdp, 12)
    reg = REGS[reg_name](None)
    ev = fastppo.evaluate(mdp, pi, reg, backend=backend, n_threads=n_threads)
    expect = naive.r_pi(mdp, pi) - (reg.tau if reg else 0.0) * naive.divergence(mdp, pi, reg)
    assert naive.rel_err(ev.v, expect) <= 1e-14
    np.testing.assert_array_equal(ev.q, mdp.r)
    d = fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads)
    np.testing.assert_allclose(d, mdp.rho, rtol=1e-14)


@pytest.mark.parametrize("reg_name", ["none", "reverse_kl", "forward_kl"])
def test_gamma_0999(backend, n_threads, reg_name):
    """Near-undiscounted: cond(I − γP_π) ≤ (1+γ)/(1−γ) ≈ 2000, yet the default tol=1e-12
    still matches the dense reference to 1e-10 (typically ~1e-13)."""
    mdp = random_mdp(13, n_states=15, n_actions=3, gamma=0.999, rectangular=False)
    pi, logits = random_policy(mdp, 14)
    reg = REGS[reg_name](None)
    ev = fastppo.evaluate(mdp, pi, reg, backend=backend, n_threads=n_threads)
    v, q, adv = naive.evaluate(mdp, pi, reg)
    assert naive.rel_err(ev.v, v) <= REL
    assert naive.rel_err(ev.adv, adv, scale=np.abs(q).max()) <= REL
    d = fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads)
    assert naive.rel_err(d, naive.visitation(mdp, pi)) <= REL
    g = fastppo.gradient(mdp, logits, reg, backend=backend, n_threads=n_threads)
    assert naive.rel_err(g, naive.gradient(mdp, logits, reg)) <= REL


# ------------------------------------------------------------------ zero probabilities
def _underflowing(mdp):
    """Logits whose softmax has exact zeros (and one state that is deterministic)."""
    rng = np.random.default_rng(3)
    logits = rng.normal(size=mdp.n_pairs)
    logits[::3] = -1e4
    logits[mdp.a_indptr[0]:mdp.a_indptr[1]] = [5e3, -5e3, 0.0][: mdp.a_indptr[1] - mdp.a_indptr[0]]
    return logits


def test_reverse_kl_with_zero_probabilities(backend, n_threads):
    mdp = random_mdp(21, n_states=9, n_actions=3, gamma=0.9)
    logits = _underflowing(mdp)
    pi = fastppo.softmax(mdp, logits, backend=backend)
    assert (pi == 0).sum() >= mdp.n_states // 2
    reg = fastppo.ReverseKL(0.5)
    ev = fastppo.evaluate(mdp, pi, reg, backend=backend, n_threads=n_threads)
    for x in (ev.v, ev.q, ev.adv):
        assert np.isfinite(x).all()
    v, q, adv = naive.evaluate(mdp, pi, reg)  # 0 log 0 = 0
    assert naive.rel_err(ev.v, v) <= REL
    g = fastppo.gradient(mdp, logits, reg, backend=backend, n_threads=n_threads)
    assert np.isfinite(g).all()
    assert (g[pi == 0] == 0.0).all()  # ∂/∂θ of a pair with π = 0 is exactly 0
    expect = naive.gradient(mdp, logits, reg)
    assert naive.rel_err(mdp.to_pairs(g), expect) <= REL


@pytest.mark.parametrize("reg_name", ["chi2", "hellinger", "js", "alpha0.5", "alpha-1"])
def test_finite_divergences_with_zero_probabilities(backend, reg_name):
    """Generators with f(0) finite: evaluate/gradient stay finite and match the
    reference's limits q·f(0) and p·f'(p/q) → 0."""
    mdp = random_mdp(22, n_states=9, n_actions=3, gamma=0.9)
    logits = _underflowing(mdp)
    pi = mdp.to_pairs(fastppo.softmax(mdp, logits, backend=backend))
    reg = REGS[reg_name](None)
    ev = fastppo.evaluate(mdp, pi, reg, backend=backend)
    assert naive.rel_err(ev.v, naive.evaluate(mdp, pi, reg)[0]) <= REL
    g = mdp.to_pairs(fastppo.gradient(mdp, logits, reg, backend=backend))
    assert np.isfinite(g).all()
    assert (g[pi == 0] == 0.0).all()
    assert naive.rel_err(g, naive.gradient(mdp, logits, reg)) <= REL


@pytest.mark.parametrize("reg_name", ["forward_kl", "alpha2"])
def test_infinite_divergence_is_reported(backend, reg_name):
    """f(0) = ∞ (forward KL, α ≥ 1): a policy with a zero where π_ref > 0 has infinite
    divergence; evaluate says so instead of returning inf/NaN values."""
    mdp = random_mdp(23, n_states=6, n_actions=3, gamma=0.9)
    pi = mdp.uniform_policy().reshape(6, 3)
    pi[4] = [0.5, 0.0, 0.5]
    with pytest.raises(ValueError, match=r"must be finite.*\[4\]"):
        fastppo.evaluate(mdp, pi, REGS[reg_name](None), backend=backend)


# ------------------------------------------------------------------ shapes
def test_shapes_in_equal_shapes_out(backend):
    mdp, pi, logits, _ = case(*CASES[0])
    S, A = mdp.n_states, mdp.n_actions
    table, tlogits = mdp.to_table(pi), mdp.to_table(logits)
    assert table.shape == (S, A)
    reg = fastppo.ForwardKL(TAU)
    for p, th, shape in ((pi, logits, (mdp.n_pairs,)), (table, tlogits, (S, A))):
        ev = fastppo.evaluate(mdp, p, reg, backend=backend)
        assert ev.v.shape == (S,)
        assert ev.q.shape == shape and ev.adv.shape == shape
        assert fastppo.visitation(mdp, p, backend=backend).shape == (S,)
        assert fastppo.softmax(mdp, th, backend=backend).shape == shape
        assert fastppo.gradient(mdp, th, reg, backend=backend).shape == shape
    flat_ev = fastppo.evaluate(mdp, pi, reg, backend=backend)
    tab_ev = fastppo.evaluate(mdp, table, reg, backend=backend)
    np.testing.assert_array_equal(tab_ev.q.reshape(-1), flat_ev.q)
    np.testing.assert_array_equal(
        fastppo.gradient(mdp, tlogits, reg, backend=backend).reshape(-1),
        fastppo.gradient(mdp, logits, reg, backend=backend))


def test_ragged_mdp_is_flat(backend):
    mdp, pi, logits, _ = case(*CASES[1])
    assert not mdp.is_rectangular
    ev = fastppo.evaluate(mdp, pi, backend=backend)
    assert ev.q.shape == ev.adv.shape == (mdp.n_pairs,)
    assert fastppo.gradient(mdp, logits, backend=backend).shape == (mdp.n_pairs,)
    assert fastppo.softmax(mdp, logits, backend=backend).shape == (mdp.n_pairs,)


def test_inputs_not_modified(backend):
    mdp, pi, logits, ref = case(*CASES[0], "random")
    arrays = [pi.copy(), logits.copy(), ref.copy(), mdp.rho.copy()]
    pi_w, logits_w, ref_w = pi.copy(), logits.copy(), ref.copy()
    reg = fastppo.ReverseKL(TAU, ref_w)
    fastppo.evaluate(mdp, pi_w, reg, backend=backend)
    fastppo.gradient(mdp, logits_w, reg, backend=backend)
    fastppo.visitation(mdp, pi_w, backend=backend)
    for before, after in zip(arrays, [pi_w, logits_w, ref_w, mdp.rho]):
        np.testing.assert_array_equal(before, after)


# ------------------------------------------------------------------ solver options
def test_warm_start_evaluate(backend, n_threads):
    mdp = random_mdp(31, n_states=40, n_actions=4, gamma=0.99, density=0.1)
    pi, logits = random_policy(mdp, 32)
    reg = fastppo.ReverseKL(0.1)
    pi2 = fastppo.softmax(mdp, logits + 0.01 * np.random.default_rng(0).normal(size=mdp.n_pairs))
    prev = fastppo.evaluate(mdp, pi, reg, backend=backend, n_threads=n_threads)
    cold = fastppo.evaluate(mdp, pi2, reg, backend=backend, n_threads=n_threads)
    warm = fastppo.evaluate(mdp, pi2, reg, v0=prev.v, backend=backend, n_threads=n_threads)
    assert warm.n_matvec < cold.n_matvec
    v = naive.evaluate(mdp, pi2, reg)[0]
    assert naive.rel_err(warm.v, v) <= REL and naive.rel_err(cold.v, v) <= REL
    # at the solution itself: one product (the residual check) and x0 returned
    exact = fastppo.evaluate(mdp, pi2, reg, v0=cold.v, tol=1e-6, backend=backend, n_threads=n_threads)
    assert exact.n_matvec == 1
    np.testing.assert_array_equal(exact.v, cold.v)


def test_warm_start_visitation(backend, n_threads):
    mdp = random_mdp(33, n_states=40, n_actions=4, gamma=0.99, density=0.1)
    pi, logits = random_policy(mdp, 34)
    pi2 = fastppo.softmax(mdp, logits + 0.01 * np.random.default_rng(1).normal(size=mdp.n_pairs))
    opts = dict(backend=backend, n_threads=n_threads, full_output=True)
    prev = fastppo.visitation(mdp, pi, **opts)
    cold = fastppo.visitation(mdp, pi2, **opts)
    warm = fastppo.visitation(mdp, pi2, d0=prev.d, **opts)
    assert warm.n_matvec < cold.n_matvec
    d = naive.visitation(mdp, pi2)
    assert naive.rel_err(warm.d, d) <= REL and naive.rel_err(cold.d, d) <= REL


def test_looser_tol_fewer_products(backend):
    mdp = random_mdp(35, n_states=60, n_actions=3, gamma=0.99, density=0.05)
    pi, _ = random_policy(mdp, 36)
    # the iterative path ("auto" factorises a matrix this small: one product either way)
    tight = fastppo.evaluate(mdp, pi, backend=backend, method="richardson")
    loose = fastppo.evaluate(mdp, pi, tol=1e-4, backend=backend, method="richardson")
    assert loose.n_matvec < tight.n_matvec
    assert loose.residual <= 1e-4
    v = naive.evaluate(mdp, pi)[0]
    assert naive.rel_err(loose.v, v) <= 200 * 1e-4  # cond(I − γP_π) ≤ 199


@pytest.mark.parametrize("restart", [1, 3, 100])
def test_restart_lengths_agree(backend, restart):
    mdp = random_mdp(37, n_states=30, n_actions=3, gamma=0.9, density=0.1)
    pi, _ = random_policy(mdp, 38)
    ev = fastppo.evaluate(mdp, pi, fastppo.Hellinger(0.3), restart=restart, method="gmres",
                          backend=backend)
    assert naive.rel_err(ev.v, naive.evaluate(mdp, pi, fastppo.Hellinger(0.3))[0]) <= REL
    d = fastppo.visitation(mdp, pi, restart=restart, method="gmres", backend=backend)
    assert naive.rel_err(d, naive.visitation(mdp, pi)) <= REL


@pytest.mark.parametrize("method", ["auto", "gmres"])
def test_methods_match_naive(backend, method):
    for seed, rect, gamma in CASES:
        mdp, pi, _, ref = case(seed, rect, gamma, "random")
        reg, mu = fastppo.JensenShannon(0.4, ref), _mu(mdp, "random")
        ev = fastppo.evaluate(mdp, pi, reg, method=method, backend=backend)
        assert naive.rel_err(ev.v, naive.evaluate(mdp, pi, reg)[0]) <= REL
        d = fastppo.visitation(mdp, pi, mu, method=method, backend=backend, full_output=True)
        assert naive.rel_err(d.d, naive.visitation(mdp, pi, mu)) <= REL
        assert ev.residual <= 1e-12 and d.residual <= 1e-12
        assert (method == "gmres") == (ev.method == "gmres" == d.method)


def test_method_selection_follows_mixing(backend):
    """Richardson alone on a fast-mixing garnet; handed over to the LU on a slow, banded
    chain and on a small gridworld (cheap to factorise), to SGS-preconditioned BiCGSTAB on
    a gridworld whose band (60 states) holds more than 20× the matrix's entries."""
    fast = fastppo.garnet(300, 4, 5, gamma=0.99, seed=0)
    slow = fastppo.garnet(300, 4, 3, gamma=0.99, seed=0, locality=2)
    small_grid = fastppo.gridworld(30, 30, gamma=0.99)
    grid = fastppo.gridworld(60, 60, gamma=0.99)
    for mdp, expect in ((fast, "richardson"), (grid, "richardson+sgs"), (slow, "richardson+lu"),
                        (small_grid, "richardson+lu")):
        pi = random_policy(mdp, 7)[0]
        reg = fastppo.ForwardKL(0.2)
        ev = fastppo.evaluate(mdp, pi, reg, backend=backend)
        d = fastppo.visitation(mdp, pi, backend=backend, full_output=True)
        assert ev.method == expect == d.method
        ev_g = fastppo.evaluate(mdp, pi, reg, method="gmres", backend=backend)
        d_g = fastppo.visitation(mdp, pi, method="gmres", backend=backend)
        # both stop at relative residual 1e-12; cond(I − γP_π) ≤ (1+γ)/(1−γ) = 199
        assert naive.rel_err(ev.v, ev_g.v) <= 2 * 199e-12 and naive.rel_err(d.d, d_g) <= 2 * 199e-12
    # on the fast chain the sweeps need no more products than GMRES
    assert ev.n_matvec > 0
    fast_ev = fastppo.evaluate(fast, random_policy(fast, 7)[0], backend=backend)
    assert fast_ev.n_matvec <= fastppo.evaluate(fast, random_policy(fast, 7)[0], method="gmres",
                                                backend=backend).n_matvec


@pytest.mark.parametrize("rect", [True, False])
def test_policies_with_unused_pairs(backend, rect):
    """Deterministic and sparse policies (their products read only the used rows)."""
    mdp = random_mdp(45, n_states=15, n_actions=4, gamma=0.95, rectangular=rect)
    rng = np.random.default_rng(0)
    for keep in (0.0, 0.3, 0.7):  # 0.0: deterministic
        logits = rng.normal(size=mdp.n_pairs)
        logits[rng.random(mdp.n_pairs) < 1 - keep] = -np.inf
        first = mdp.a_indptr[:-1] + rng.integers(0, np.diff(mdp.a_indptr))
        logits[first] = 0.0  # every state keeps an action
        pi = np.where(np.isinf(logits), 0.0, np.exp(np.where(np.isinf(logits), 0.0, logits)))
        pi /= np.add.reduceat(pi, mdp.a_indptr[:-1])[mdp.s_indices]
        assert (pi == 0).any()
        ev = fastppo.evaluate(mdp, pi, backend=backend)
        assert naive.rel_err(ev.v, naive.evaluate(mdp, pi)[0]) <= REL
        assert naive.rel_err(ev.q, naive.evaluate(mdp, pi)[1]) <= REL
        d = fastppo.visitation(mdp, pi, backend=backend)
        assert naive.rel_err(d, naive.visitation(mdp, pi)) <= REL


def test_bicgstab_solves_nonsymmetric_systems():
    from fastppo._krylov import StoppingRule, System, bicgstab

    rng = np.random.default_rng(0)
    stop = StoppingRule(1e-13)
    for n in (1, 7, 60):
        A = np.eye(n) + 0.3 * rng.normal(size=(n, n)) / np.sqrt(n)
        b = rng.normal(size=n)
        x, n_matvec, residual, ok = _unpack(bicgstab(
            System(lambda x, out: np.matmul(A, x, out=out), b), None, stop, 2000))
        assert ok and residual <= 1e-13 and n_matvec > 0
        assert np.linalg.norm(A @ x - b) <= 1e-13 * np.linalg.norm(b) * 1.0001
        np.testing.assert_allclose(x, np.linalg.solve(A, b), rtol=1e-10, atol=1e-12)
    x, n_matvec, residual, ok = _unpack(bicgstab(
        System(lambda x, out: np.matmul(A, x, out=out), np.zeros(60)), None, stop, 2000))
    assert ok and n_matvec == 0 and not x.any()
    _, n_matvec, _, ok = _unpack(bicgstab(
        System(lambda x, out: np.matmul(A, x, out=out), b), None, stop, 4))
    assert not ok and n_matvec <= 5


def _unpack(res):
    return res.x, res.n_matvec, res.residual, res.converged


def test_gmres_finishes_when_bicgstab_fails(monkeypatch):
    import fastppo._krylov as K

    def failing(name):
        return lambda system, x0, stop, max_iter, **kw: K.LinearResult(x0, 3, 1.0, False, name)

    for name in ("bicgstab", "sgs"):
        monkeypatch.setitem(K.SOLVERS, name, failing(name))
    monkeypatch.setattr(K, "lu", failing("lu"))
    mdp = fastppo.garnet(300, 4, 3, gamma=0.99, seed=0, locality=2)
    pi = random_policy(mdp, 7)[0]
    ev = fastppo.evaluate(mdp, pi)
    assert ev.method == "richardson+lu+sgs+gmres" and ev.residual <= 1e-12
    assert naive.rel_err(ev.v, naive.evaluate(mdp, pi)[0]) <= REL


def test_convergence_error(backend):
    mdp = random_mdp(39, n_states=50, n_actions=3, gamma=0.99, density=0.05)
    pi, logits = random_policy(mdp, 40)
    with pytest.raises(fastppo.ConvergenceError,
                       match=r"evaluation system.*did not reach tol=1e-12 within max_iter=3"):
        fastppo.evaluate(mdp, pi, max_iter=3, backend=backend)
    with pytest.raises(fastppo.ConvergenceError,
                       match=r"visitation system.*did not reach tol=1e-12 within max_iter=3"):
        fastppo.visitation(mdp, pi, max_iter=3, backend=backend)
    with pytest.raises(fastppo.ConvergenceError, match=r"max_iter=2 products \(relative residual"):
        fastppo.gradient(mdp, logits, max_iter=2, backend=backend)
    assert issubclass(fastppo.ConvergenceError, RuntimeError)
    # and enough products succeed
    ev = fastppo.evaluate(mdp, pi, backend=backend)
    fastppo.evaluate(mdp, pi, max_iter=ev.n_matvec, backend=backend)


def test_zero_right_hand_side(backend):
    """r_π − τD = 0 everywhere: v = 0 without any product."""
    mdp = random_mdp(41, n_states=6, n_actions=2)
    zero = fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data,
                       np.zeros(mdp.n_pairs), mdp.gamma)
    ev = fastppo.evaluate(zero, zero.uniform_policy(), fastppo.ReverseKL(1.0), backend=backend)
    np.testing.assert_array_equal(ev.v, 0.0)
    assert ev.n_matvec == 0 and ev.residual == 0.0


def test_puterman_two_state_analytic(backend):
    """Puterman (1994) §3.1: two states; v by hand for the policy (a11, a21)."""
    # state 0: a0 stays w.p. .5 (r=5), a1 moves to 1 (r=10); state 1: one action, stays (r=-1)
    mdp = fastppo.MDP.from_sa_pairs([0, 0, 1], [0, 1, 0], [[0.5, 0.5], [0.0, 1.0], [0.0, 1.0]],
                                    [5.0, 10.0, -1.0], 0.95)
    for pi, v0 in (([1.0, 0.0, 1.0], None), ([0.0, 1.0, 1.0], None)):
        ev = fastppo.evaluate(mdp, pi, backend=backend, tol=1e-15)  # to round-off
        v1 = -1.0 / (1 - 0.95)
        v0 = ((5.0 + 0.95 * 0.5 * v1) / (1 - 0.95 * 0.5)) if pi[0] == 1.0 else 10.0 + 0.95 * v1
        # tol below the round-off floor 10·eps·(1+γ)/(1−γ) stops at the floor: the error
        # bound is cond(A) · floor, cond(A) ≤ (1+γ)/(1−γ) = 39
        floor = 10 * np.finfo(float).eps * 1.95 / 0.05
        assert ev.residual <= floor
        np.testing.assert_allclose(ev.v, [v0, v1], rtol=39 * floor)
        assert math.isclose(ev.adv[2], 0.0, abs_tol=1e-13)


# ------------------------------------------------------------------ rejection paths
@pytest.fixture
def rect():
    mdp = random_mdp(60, n_states=5, n_actions=3)
    return mdp, mdp.uniform_policy(), np.zeros(mdp.n_pairs)


def _all_calls(mdp, pi, logits, **kw):
    """evaluate, visitation and gradient with the same options."""
    return [lambda: fastppo.evaluate(mdp, pi, **kw), lambda: fastppo.visitation(mdp, pi, **kw),
            lambda: fastppo.gradient(mdp, logits, **kw)]


def test_reject_policy_not_summing_to_one(rect):
    mdp, pi, _ = rect
    bad = pi.reshape(5, 3).copy()
    bad[3, 1] += 0.01
    for call in (fastppo.evaluate, fastppo.visitation):
        with pytest.raises(ValueError, match=r"pi must sum to 1 in every state: state 3 sums to 1\.01"):
            call(mdp, bad)
    bad = pi.copy()
    bad[3 * 3 + 1] = 0.0  # flat (n_pairs,) form: state 3
    with pytest.raises(ValueError, match="state 3 sums to 0.66"):
        fastppo.evaluate(mdp, bad)


def test_reject_negative_or_nonfinite_policy(rect):
    mdp, pi, _ = rect
    bad = pi.reshape(5, 3).copy()
    bad[2] = [0.6, -0.2, 0.6]
    for call in (fastppo.evaluate, fastppo.visitation):
        with pytest.raises(ValueError, match=r"pi must be finite and non-negative: pair \(s=2, a=1\) has -0\.2"):
            call(mdp, bad)
    bad = pi.copy()
    bad[4] = np.nan
    with pytest.raises(ValueError, match=r"pi must be finite and non-negative: pair \(s=1, a=1\) has nan"):
        fastppo.evaluate(mdp, bad)


def test_reject_wrong_shapes(rect):
    mdp, pi, logits = rect
    for bad in (pi[:-1], pi.reshape(3, 5), pi[None, :], np.float64(1.0)):
        for call in (fastppo.evaluate, fastppo.visitation):
            with pytest.raises(ValueError, match=r"pi must have shape \(15,\) or \(5, 3\), got"):
                call(mdp, bad)
        with pytest.raises(ValueError, match=r"logits must have shape \(15,\) or \(5, 3\), got"):
            fastppo.gradient(mdp, np.zeros_like(bad))
        with pytest.raises(ValueError, match=r"logits must have shape"):
            fastppo.softmax(mdp, np.zeros_like(bad))
    ragged = random_mdp(61, n_states=5, n_actions=3, rectangular=False)
    with pytest.raises(ValueError, match=rf"pi must have shape \({ragged.n_pairs},\), got \(5, 3\)"):
        fastppo.evaluate(ragged, np.full((5, 3), 1 / 3))
    with pytest.raises(TypeError, match="pi must be a numeric array"):
        fastppo.evaluate(mdp, ["a"] * 15)


def test_reject_bad_logits(rect):
    mdp, _, logits = rect
    bad = logits.copy()
    bad[7] = np.inf
    with pytest.raises(ValueError, match=r"logits must be finite: pair \(s=2, a=1\) has inf"):
        fastppo.gradient(mdp, bad)
    with pytest.raises(ValueError, match=r"logits must be finite: pair \(s=2, a=1\)"):
        fastppo.softmax(mdp, bad)


def test_reject_bad_mu(rect):
    mdp, pi, logits = rect
    cases_ = [
        (np.full(4, 0.25), r"mu must have shape \(5,\), got \(4,\)"),
        (np.array([0.5, 0.5, 0.5, -0.5, 0.0]), r"mu must be non-negative: mu\[3\] = -0\.5"),
        (np.full(5, 0.3), r"mu must sum to 1, sums to 1\.5"),
        (np.array([np.nan, 1, 0, 0, 0]), r"mu must be finite: mu\[0\] = nan"),
    ]
    for mu, msg in cases_:
        with pytest.raises(ValueError, match=msg):
            fastppo.visitation(mdp, pi, mu)
        with pytest.raises(ValueError, match=msg):
            fastppo.gradient(mdp, logits, None, mu)


@pytest.mark.parametrize("name, bad, exc, msg", [
    ("tol", 0.0, ValueError, r"tol must be > 0 and finite, got 0\.0"),
    ("tol", -1e-3, ValueError, r"tol must be > 0 and finite, got -0\.001"),
    ("tol", float("nan"), ValueError, r"tol must be > 0 and finite, got nan"),
    ("tol", "1e-8", TypeError, r"tol must be a real number, got str"),
    ("max_iter", 0, ValueError, r"max_iter must be >= 1, got 0"),
    ("max_iter", 10.0, TypeError, r"max_iter must be an integer, got float"),
    ("max_iter", True, TypeError, r"max_iter must be an integer, got bool"),
    ("restart", 0, ValueError, r"restart must be >= 1, got 0"),
    ("restart", "40", TypeError, r"restart must be an integer, got str"),
    ("backend", "torch", ValueError, r"backend must be one of 'numba', 'cython', 'numpy'; got 'torch'"),
    ("backend", "Numba", ValueError, r"backend must be one of .*; got 'Numba'"),
    ("n_threads", 0, ValueError, r"n_threads must be a positive integer, got 0"),
    ("n_threads", -2, ValueError, r"n_threads must be a positive integer, got -2"),
    ("n_threads", 2.0, ValueError, r"n_threads must be a positive integer, got 2\.0"),
    ("n_threads", True, ValueError, r"n_threads must be a positive integer, got True"),
])
def test_reject_bad_solver_options(rect, name, bad, exc, msg):
    mdp, pi, logits = rect
    for call in _all_calls(mdp, pi, logits, **{name: bad}):
        with pytest.raises(exc, match=msg):
            call()
    if name in ("backend", "n_threads"):
        with pytest.raises(exc, match=msg):
            fastppo.softmax(mdp, logits, **{name: bad})


@pytest.mark.parametrize("bad", [0.1, "reverse_kl", fastppo.ReverseKL, np.float64(0.5), {"tau": 0.1}])
def test_reject_reg_of_the_wrong_type(rect, bad):
    mdp, pi, logits = rect
    for call in (lambda: fastppo.evaluate(mdp, pi, bad), lambda: fastppo.gradient(mdp, logits, bad)):
        with pytest.raises(TypeError, match=r"reg must be a fastppo regularizer \(e\.g\. fastppo\.ForwardKL\(0\.1\)\) or None, got"):
            call()


def test_reject_bad_method(rect):
    mdp, pi, _ = rect
    for call in (fastppo.evaluate, fastppo.visitation):
        with pytest.raises(ValueError, match=r"method must be one of 'auto', 'richardson', "
                           r"'bicgstab', 'sgs', 'lu', 'gmres'; got 'cholesky'"):
            call(mdp, pi, method="cholesky")


def test_reject_bad_warm_starts(rect):
    mdp, pi, _ = rect
    with pytest.raises(ValueError, match=r"v0 must have shape \(5,\), got \(4,\)"):
        fastppo.evaluate(mdp, pi, v0=np.zeros(4))
    with pytest.raises(ValueError, match=r"v0 must be finite: v0\[2\] = inf"):
        fastppo.evaluate(mdp, pi, v0=np.array([0, 0, np.inf, 0, 0]))
    with pytest.raises(ValueError, match=r"d0 must have shape \(5,\), got \(5, 1\)"):
        fastppo.visitation(mdp, pi, d0=np.zeros((5, 1)))
    with pytest.raises(ValueError, match=r"d0 must be finite: d0\[0\] = nan"):
        fastppo.visitation(mdp, pi, d0=np.array([np.nan, 0, 0, 0, 0]))
