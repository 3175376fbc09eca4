"""``fastppo.solve`` (regularized policy iteration) against brute force written here.

τ = 0: every deterministic policy of a tiny MDP is evaluated by a dense solve and the
optimum is the elementwise best value. τ > 0: dense regularized value iteration whose
per-state maximisation over the simplex is done here, independently of fastppo's
greedy kernels: the closed form τ log Σ π_ref e^{Q/τ} for reverse KL, and for every
other f a float bisection on the normaliser ν of p_a = π_ref,a (f')^{-1}((Q_a − ν)/τ),
with f and (f')^{-1} written out again from SPEC §1. That per-state maximiser is itself
checked against scipy's SLSQP on the simplex.
"""
import functools
import itertools
import math
import warnings

import numpy as np
import pytest

import fastppo
import naive
from conftest import random_mdp, random_policy
from fastppo import _codes, _memory
from fastppo._backend import get_kernel

TAU = 0.5
V_TOL = 1e-10  # v against the brute force, relative to max(1, |v|)
P_TOL = 1e-10  # policies (probabilities) against the brute force / the greedy step

REGS = {
    "reverse_kl": lambda tau, ref: fastppo.ReverseKL(tau, ref),
    "forward_kl": lambda tau, ref: fastppo.ForwardKL(tau, ref),
    "chi2": lambda tau, ref: fastppo.ChiSquare(tau, ref),
    "hellinger": lambda tau, ref: fastppo.Hellinger(tau, ref),
    "js": lambda tau, ref: fastppo.JensenShannon(tau, ref),
    "alpha0.5": lambda tau, ref: fastppo.AlphaDivergence(tau, 0.5, ref),
    "alpha2": lambda tau, ref: fastppo.AlphaDivergence(tau, 2.0, ref),
    "alpha-1": lambda tau, ref: fastppo.AlphaDivergence(tau, -1.0, ref),
}
# (seed, rectangular, gamma, ref kind): γ ≤ 0.7 keeps dense value iteration short
CASES = [(3, True, 0.6, "uniform"), (4, False, 0.7, "uniform"), (5, False, 0.6, "random"),
         (6, True, 0.7, "random")]


@pytest.fixture(autouse=True)
def _serial_by_default():
    with fastppo.backend(n_threads=1):
        yield


# --------------------------------------------------------------- the brute force
# name → (f(x), (f')^{-1}(y)) from the SPEC table in naive.py; the inverse is 0 below the
# range of f' and inf above it
GEN = {name: (naive.GENERATORS[name][0], inv) for name, inv in naive.FPRIME_INV.items()}


def kind_of(reg):
    return type(reg).__name__, float(reg.alpha)


def state_max(q, ref, kind, alpha, tau):
    """(max_{p ∈ Δ} Σ p q − τ Σ ref f(p/ref), argmax) for one state (lists of floats)."""
    if kind == "ReverseKL":
        m = max(q)
        e = [r * math.exp((x - m) / tau) for x, r in zip(q, ref)]
        z = math.fsum(e)
        return m + tau * math.log(z), [x / z for x in e]
    return bisect_state(q, ref, *GEN[kind], alpha, tau)


def bisect_state(q, ref, f, inv, alpha, tau):
    """The stationarity condition q_a − τ f'(p_a/ref_a) = ν (p_a = 0 where it cannot
    hold), solved for ν by bisection to adjacent floats on Σ_a p_a(ν) = 1."""

    def mass(nu):  # Σ_a p_a(ν), decreasing in ν
        return math.fsum(r * inv((x - nu) / tau, alpha) for x, r in zip(q, ref))

    width = max(q) - min(q) + tau
    lo, hi = min(q) - width, max(q) + width
    while mass(lo) < 1.0:
        lo, width = lo - width, 2.0 * width
    while mass(hi) > 1.0:
        hi, width = hi + width, 2.0 * width
    while True:
        mid = 0.5 * (lo + hi)
        if not lo < mid < hi:
            break
        if mass(mid) > 1.0:
            lo = mid
        else:
            hi = mid
    p = [r * inv((x - hi) / tau, alpha) for x, r in zip(q, ref)]
    z = math.fsum(p)
    p = [x / z for x in p]
    value = (math.fsum(a * x for a, x in zip(p, q))
             - tau * math.fsum(r * f(a / r, alpha) if a > 0 else r * f(0.0, alpha)
                               for a, r in zip(p, ref)))
    return value, p


def dense(mdp):
    return mdp.P.toarray(), np.array(mdp.r), [(int(a), int(b)) for a, b in
                                               zip(mdp.a_indptr[:-1], mdp.a_indptr[1:])]


def regularized_vi(mdp, reg, ref):
    """Dense regularized value iteration to ‖v_{k+1} − v_k‖∞ ≤ 1e-13: (v*, π*)."""
    P, r, blocks = dense(mdp)
    kind, alpha = kind_of(reg)
    v = np.zeros(mdp.n_states)
    for _ in range(2000):
        q = r + mdp.gamma * (P @ v)
        new = np.array([state_max(list(q[lo:hi]), list(ref[lo:hi]), kind, alpha, reg.tau)[0]
                        for lo, hi in blocks])
        done = np.abs(new - v).max() <= 1e-13
        v = new
        if done:
            break
    else:
        raise AssertionError("reference value iteration did not converge")
    q = r + mdp.gamma * (P @ v)
    pi = np.concatenate([state_max(list(q[lo:hi]), list(ref[lo:hi]), kind, alpha, reg.tau)[1]
                         for lo, hi in blocks])
    return v, pi


def dense_value(mdp, pi, reg=None, ref=None):
    """Ṽ^π by a dense solve, the divergence summed here with the f of GEN."""
    P, r, blocks = dense(mdp)
    S = mdp.n_states
    P_pi, c = np.zeros((S, S)), np.zeros(S)
    for s, (lo, hi) in enumerate(blocks):
        for k in range(lo, hi):
            P_pi[s] += pi[k] * P[k]
            c[s] += pi[k] * r[k]
            if reg is not None:
                kind, alpha = kind_of(reg)
                if kind == "ReverseKL":
                    c[s] -= reg.tau * (pi[k] * math.log(pi[k] / ref[k]) if pi[k] > 0 else 0.0)
                else:
                    c[s] -= reg.tau * ref[k] * GEN[kind][0](pi[k] / ref[k], alpha)
    return np.linalg.solve(np.eye(S) - mdp.gamma * P_pi, c)


@functools.lru_cache(maxsize=None)
def case(seed, rect, gamma, ref_kind):
    mdp = random_mdp(seed, n_states=6, n_actions=3, gamma=gamma, rectangular=rect)
    ref = mdp.uniform_policy() if ref_kind == "uniform" else random_policy(mdp, 100 + seed)[0]
    return mdp, ref


def make_reg(name, c, tau=TAU):
    mdp, ref = case(*c)
    return REGS[name](tau, None if c[3] == "uniform" else mdp.to_table(ref))


@functools.lru_cache(maxsize=None)
def brute(name, c):
    mdp, ref = case(*c)
    return regularized_vi(mdp, make_reg(name, c), ref)


@functools.lru_cache(maxsize=None)
def brute_plain(mdp_key):
    """Best value over all deterministic policies, and the value of each of them."""
    mdp = random_mdp(*mdp_key[:1], n_states=6, n_actions=3, gamma=mdp_key[2],
                     rectangular=mdp_key[1])
    _, _, blocks = dense(mdp)
    values = {}
    for choice in itertools.product(*[range(lo, hi) for lo, hi in blocks]):
        pi = np.zeros(mdp.n_pairs)
        pi[list(choice)] = 1.0
        values[choice] = dense_value(mdp, pi)
    return mdp, np.max(np.array(list(values.values())), axis=0), values


def rel(x, ref):
    return float(np.abs(np.asarray(x) - ref).max() / max(1.0, np.abs(ref).max()))


# ----------------------------------------------------- the reference is a maximum
@pytest.mark.parametrize("name", list(REGS))
def test_reference_state_max_is_the_maximum(name):
    """Guards the brute force: the per-state maximiser beats random points of the simplex
    and agrees with SLSQP on the simplex (and, for reverse KL, with the bisection too)."""
    from scipy.optimize import minimize

    rng = np.random.default_rng(7)
    reg = REGS[name](TAU, None)
    kind, alpha = kind_of(reg)
    for trial in range(4):
        n = 2 + trial % 3
        q = list(rng.normal(scale=1.5, size=n))
        ref = rng.random(n) + 0.2
        ref = list(ref / ref.sum())
        value, p = state_max(q, ref, kind, alpha, TAU)
        assert abs(math.fsum(p) - 1.0) <= 1e-15 and min(p) >= 0.0

        def objective(x):
            x = np.clip(x, 1e-300, None)
            if kind == "ReverseKL":
                div = sum(a * math.log(a / r) for a, r in zip(x, ref))
            else:
                div = sum(r * GEN[kind][0](a / r, alpha) for a, r in zip(x, ref))
            return float(np.dot(x, q) - TAU * div)

        for x in rng.dirichlet(np.ones(n), size=200):
            assert objective(x) <= value + 1e-13
        res = minimize(lambda x: -objective(x), np.array(ref), method="SLSQP",
                       bounds=[(1e-12, 1.0)] * n,
                       constraints=[{"type": "eq", "fun": lambda x: x.sum() - 1.0}],
                       options={"ftol": 1e-15, "maxiter": 500})
        assert abs(-res.fun - value) <= 1e-8, (name, q, -res.fun, value)
        if kind == "ReverseKL":  # the bisection route agrees with the closed form
            value_b, p_b = bisect_state(q, ref, lambda x, a: x * math.log(x),
                                        lambda y, a: math.exp(y - 1.0), alpha, TAU)
            assert abs(value_b - value) <= 1e-14
            np.testing.assert_allclose(p_b, p, rtol=0, atol=1e-14)


def test_reference_detects_a_wrong_regularizer():
    """The regularized brute force must tell regularizers (and τ) apart, else agreement
    with solve would prove little."""
    c = CASES[1]
    base = brute("forward_kl", c)[0]
    for name in REGS:
        if name != "forward_kl":
            assert rel(brute(name, c)[0], base) > 1e-3, name
    mdp, ref = case(*c)
    assert rel(regularized_vi(mdp, make_reg("forward_kl", c, 0.6), ref)[0], base) > 1e-3


# ---------------------------------------------------------------- τ = 0: enumeration
@pytest.mark.parametrize("key", [(0, True, 0.8), (1, False, 0.8), (2, True, 0.5),
                                 (3, False, 0.7)], ids=str)
def test_plain_mdp_matches_enumeration(backend, key):
    mdp, v_star, values = brute_plain(key)
    res = fastppo.solve(mdp, None, backend=backend)
    assert res.converged and res.backend == backend
    assert rel(res.v, v_star) <= V_TOL
    pi = mdp.to_pairs(res.policy)
    assert set(np.unique(pi)) <= {0.0, 1.0}
    assert np.array_equal(np.add.reduceat(pi, mdp.a_indptr[:-1]), np.ones(mdp.n_states))
    # the returned deterministic policy is one of the enumerated optimal ones
    choice = tuple(int(k) for k in np.flatnonzero(pi))
    assert rel(values[choice], v_star) <= V_TOL
    assert abs(res.J - mdp.rho @ v_star) <= V_TOL * max(1.0, np.abs(v_star).max())
    # a regularizer with τ = 0 is the plain MDP
    res0 = fastppo.solve(mdp, fastppo.ForwardKL(0.0), backend=backend)
    np.testing.assert_array_equal(mdp.to_pairs(res0.policy), pi)
    assert rel(res0.v, v_star) <= V_TOL


def test_enumeration_optimum_is_strict():
    """Guards the enumeration: the optimum beats most policies by a visible margin."""
    _, v_star, values = brute_plain((0, True, 0.8))
    worse = sum(np.abs(v - v_star).max() > 1e-3 for v in values.values())
    assert worse >= len(values) - 3


# ------------------------------------------------------------- τ > 0: regularized VI
@pytest.mark.parametrize("name", list(REGS))
def test_solve_matches_regularized_value_iteration(backend, name):
    for c in CASES:
        mdp, ref = case(*c)
        reg = make_reg(name, c)
        v_ref, pi_ref = brute(name, c)
        res = fastppo.solve(mdp, reg, backend=backend)
        assert res.converged, c
        assert rel(res.v, v_ref) <= V_TOL, c
        assert abs(res.J - mdp.rho @ v_ref) <= V_TOL * max(1.0, np.abs(v_ref).max()), c
        pi = mdp.to_pairs(res.policy)
        assert np.abs(pi - pi_ref).max() <= P_TOL, c
        # v is the value of the returned policy; q and adv belong to it
        assert rel(dense_value(mdp, pi, reg, ref), v_ref) <= V_TOL, c
        P, r, _ = dense(mdp)
        q = mdp.to_pairs(res.q)
        assert rel(q, r + mdp.gamma * P @ res.v) <= 1e-13, c
        mean = np.add.reduceat(pi * q, mdp.a_indptr[:-1])
        assert rel(mdp.to_pairs(res.adv), q - mean[mdp.s_indices]) <= 1e-13, c
        assert res.bellman_residual <= 1e-12 * max(1.0, np.abs(res.v).max())
        assert res.n_matvec >= res.n_iter >= 1
        # the reference policy is feasible with D_f = 0, so the optimum is at least its value
        assert (res.v >= dense_value(mdp, ref) - 1e-12).all(), c


def test_solve_threads(backend, n_threads):
    for c in CASES[:2]:
        mdp, _ = case(*c)
        for name in ("forward_kl", "alpha-1", "js"):
            res = fastppo.solve(mdp, make_reg(name, c), backend=backend, n_threads=n_threads)
            assert rel(res.v, brute(name, c)[0]) <= V_TOL, (c, name)


def test_boundary_optimum_is_reached():
    """Chi-square and α = −1 have a finite f'(0): their optimum puts exactly zero mass on
    poor actions, which the brute force and solve must both find."""
    for name in ("chi2", "alpha-1"):
        hits = 0
        for c in CASES:
            mdp, _ = case(*c)
            pi_ref = brute(name, c)[1]
            pi = mdp.to_pairs(fastppo.solve(mdp, make_reg(name, c)).policy)
            hits += int((pi_ref == 0).sum())
            np.testing.assert_array_equal(pi == 0, pi_ref == 0)
        assert hits > 0, name


# ------------------------------------------------------- fixed point / closed form
@pytest.mark.parametrize("name", ["none"] + list(REGS))
def test_policy_is_a_fixed_point_of_the_greedy_step(backend, name):
    greedy = get_kernel("greedy_policy", backend)
    for c in CASES:
        mdp, _ = case(*c)
        reg = None if name == "none" else make_reg(name, c)
        res = fastppo.solve(mdp, reg, backend=backend)
        q, pi = mdp.to_pairs(res.q), mdp.to_pairs(res.policy)
        if reg is None:
            code, alpha, tau, ref = _codes.NONE, 0.0, 0.0, mdp.uniform_policy()
        else:
            code, alpha, tau, ref = reg.code, reg.alpha, reg.tau, reg.reference_policy(mdp)
        out, value = np.empty(mdp.n_pairs), np.empty(mdp.n_states)
        greedy(mdp.a_indptr, q, ref, code, alpha, tau, out, value, 1)
        if reg is None:
            np.testing.assert_array_equal(out, pi)
        else:
            assert np.abs(out - pi).max() <= P_TOL, c
        assert rel(value, res.v) <= 1e-12, c  # T Ṽ = Ṽ


# ------------------------------------------------------- τ tiny against Q (issue 13)
@pytest.mark.parametrize("name", list(REGS))
def test_greedy_step_is_exact_when_tau_is_tiny_against_q(backend, name):
    """Q of size 1e3 with τ = 1e-9 (ν − max Q is ~1e-9, below the spacing of the Q
    values in ν): the greedy step must still meet its stationarity condition
    (Q_a − max Q)/τ − f'(p_a/π_ref,a) = const over the actions with p_a > 0, and match
    the brute-force step written with naive.py's tables."""
    rng = np.random.default_rng(5)
    mdp, ref = case(*CASES[2])
    reg = REGS[name](1e-9, mdp.to_table(ref))
    kind, alpha = kind_of(reg)
    q = 1e3 + rng.normal(size=mdp.n_pairs) * 1e-8  # gaps of a few τ
    out, value = np.empty(mdp.n_pairs), np.empty(mdp.n_states)
    get_kernel("greedy_policy", backend)(mdp.a_indptr, q, ref, reg.code, reg.alpha, reg.tau, out, value, 1)
    fp = naive.GENERATORS[kind][1]
    for s, (lo, hi) in enumerate(dense(mdp)[2]):
        p = out[lo:hi]
        assert np.isfinite(p).all() and abs(p.sum() - 1.0) <= 1e-12, (s, p)
        live = p > 0
        cond = np.array([(q[k] - q[lo:hi].max()) / reg.tau - fp(out[k] / ref[k], alpha)
                         for k in range(lo, hi)])[live]
        assert np.ptp(cond) <= 1e-6 * max(1.0, np.abs(cond).max()), (s, cond)
        if kind != "ReverseKL":  # the brute force in ν loses ν − max Q to the Q spacing
            continue
        _, want = state_max(list((q[lo:hi] - q[lo:hi].max()) / reg.tau), list(ref[lo:hi]), kind, alpha, 1.0)
        np.testing.assert_allclose(p, want, rtol=1e-9, atol=1e-15)


@pytest.mark.parametrize("tau", [1e-15, 1e-20, 1e-300, 5e-324])
@pytest.mark.parametrize("name", list(REGS))
def test_tiny_tau_gives_the_plain_optimum(backend, name, tau):
    """τ far below every Q gap (down to the smallest double): solve converges to the
    optimum of the plain MDP (J*, v*, π* to 1e-12; α = 2 moves mass ~√(τ/gap) off the
    argmax) instead of failing on a NaN policy; where f(0) = ∞ the policy keeps full support."""
    c = CASES[1]
    mdp, _ = case(*c)
    tol = 1e-12 + (10.0 * math.sqrt(tau) if name == "alpha2" else 0.0)
    plain = fastppo.solve(mdp, None, backend=backend)
    res = fastppo.solve(mdp, make_reg(name, c, tau=tau), backend=backend)
    assert res.converged
    pi, pi_plain = mdp.to_pairs(res.policy), mdp.to_pairs(plain.policy)
    assert np.isfinite(pi).all() and np.abs(pi - pi_plain).max() <= tol
    assert rel(res.v, plain.v) <= tol and abs(res.J - plain.J) <= tol * abs(plain.J)
    if name in ("forward_kl", "alpha2"):
        assert (pi > 0).all()


@pytest.mark.parametrize("tau", [0.05, 0.5, 5.0])
def test_reverse_kl_policy_is_the_gibbs_policy(backend, tau):
    """π ∝ π_ref exp(Q̃/τ) at the optimum, with Q̃ the returned q."""
    for c in CASES:
        mdp, ref = case(*c)
        res = fastppo.solve(mdp, make_reg("reverse_kl", c, tau), backend=backend)
        q = mdp.to_pairs(res.q)
        pi = np.empty(mdp.n_pairs)
        for lo, hi in dense(mdp)[2]:
            e = ref[lo:hi] * np.exp((q[lo:hi] - q[lo:hi].max()) / tau)
            pi[lo:hi] = e / e.sum()
        assert np.abs(mdp.to_pairs(res.policy) - pi).max() <= P_TOL, (c, tau)
        # the optimal value is the soft maximum τ log Σ π_ref e^{Q/τ}
        soft = np.array([q[lo:hi].max() + tau * np.log(np.sum(
            ref[lo:hi] * np.exp((q[lo:hi] - q[lo:hi].max()) / tau))) for lo, hi in dense(mdp)[2]])
        assert rel(res.v, soft) <= 1e-12, (c, tau)


def test_gamma_zero_is_the_one_step_problem(backend):
    """γ = 0: v(s) = max_p Σ p r − τ D_f(p ‖ π_ref), a per-state problem."""
    mdp = random_mdp(8, n_states=5, n_actions=3, gamma=0.0, rectangular=False)
    _, r, blocks = dense(mdp)
    ref = mdp.uniform_policy()
    res = fastppo.solve(mdp, None, backend=backend)
    np.testing.assert_array_equal(res.v, [r[lo:hi].max() for lo, hi in blocks])
    for name, make in REGS.items():
        reg = make(TAU, None)
        kind, alpha = kind_of(reg)
        want = [state_max(list(r[lo:hi]), list(ref[lo:hi]), kind, alpha, TAU)[0]
                for lo, hi in blocks]
        assert rel(fastppo.solve(mdp, reg, backend=backend).v, np.array(want)) <= 1e-12, name


def test_result_shapes():
    mdp, _ = case(*CASES[0])
    res = fastppo.solve(mdp, make_reg("forward_kl", CASES[0]))
    assert mdp.is_rectangular
    for key in ("policy", "q", "adv"):
        assert res[key].shape == (mdp.n_states, mdp.n_actions), key
    assert res.v.shape == (mdp.n_states,)
    assert "SolveResult(" in repr(res) and "bellman_residual" in repr(res)
    ragged, _ = case(*CASES[1])
    assert fastppo.solve(ragged, None).policy.shape == (ragged.n_pairs,)


@pytest.mark.parametrize("regularized", [True, False])
def test_solve_holds_few_per_pair_arrays(backend, regularized, monkeypatch):
    # at peak, policy iteration holds π, the next π, two Q̃ buffers, the sweep rows (then
    # Ã, in place) and, regularized, π_ref: 6 per-pair arrays (8.1 before Ã went over the
    # rows and the returned policy stopped being copied; 16.4 → 15 GiB at 10⁷ states).
    # tracemalloc sees NumPy's allocations; n_pairs ≫ n_states
    if backend == "numpy":
        pytest.skip("the NumPy reference computes with per-pair temporaries by design")
    tracemalloc = pytest.importorskip("tracemalloc")
    mdp = fastppo.garnet(400, 120, 3, gamma=0.9, seed=3)
    reg = fastppo.ForwardKL(0.1) if regularized else None
    pair_bytes = 8 * mdp.n_pairs
    fastppo.solve(mdp, reg, backend=backend)  # compiles (numba)
    monkeypatch.setattr(_memory, "_POOL", _memory._Pool())  # scratch buffers made anew, traced
    tracemalloc.start()
    try:
        res = fastppo.solve(mdp, reg, backend=backend)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    arrays = 6 if regularized else 5
    assert arrays * pair_bytes <= peak < (arrays + 1) * pair_bytes, \
        f"{peak / pair_bytes:.2f} per-pair arrays"
    # the returned Ã is that of the returned policy and Q̃ (its buffer was a spent one)
    mean = (res.policy * res.q).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(res.adv, res.q - mean, rtol=0, atol=1e-12 * np.abs(res.q).max())
    np.testing.assert_allclose(res.q, mdp.to_table(mdp.r + mdp.gamma * (mdp.P @ res.v)),
                               rtol=0, atol=1e-10 * np.abs(res.q).max())


# ------------------------------------------------------------------ bad input
def test_bad_parameters():
    mdp, _ = case(*CASES[0])
    for tol in (0, -1e-3, np.nan, np.inf):
        with pytest.raises(ValueError, match="tol must be > 0"):
            fastppo.solve(mdp, None, tol=tol)
    with pytest.raises(TypeError, match="tol must be a real number"):
        fastppo.solve(mdp, None, tol="small")
    with pytest.raises(ValueError, match="max_iter must be >= 1"):
        fastppo.solve(mdp, None, max_iter=0)
    with pytest.raises(TypeError, match="max_iter must be an integer"):
        fastppo.solve(mdp, None, max_iter=2.5)
    with pytest.raises(TypeError, match="reg must be a fastppo regularizer"):
        fastppo.solve(mdp, "forward-kl")
    with pytest.raises(ValueError, match="tau must be finite and >= 0"):
        fastppo.ForwardKL(-0.1)
    with pytest.raises(ValueError, match="backend must be one of"):
        fastppo.solve(mdp, None, backend="fortran")


def test_too_few_iterations_raise():
    mdp, _ = case(*CASES[0])
    with pytest.raises(fastppo.ConvergenceError, match=r"did not reach tol=1e-12 in max_iter=1"):
        fastppo.solve(mdp, make_reg("forward_kl", CASES[0]), max_iter=1)


def test_tolerance_below_round_off_converges_at_the_floor():
    """The one stopping rule (issue 17): tol below the round-off floor 10·eps·(1+γ)/(1−γ)
    is replaced by the floor, and reaching it is convergence, with no warning."""
    c = CASES[1]
    mdp, _ = case(*c)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        res = fastppo.solve(mdp, make_reg("forward_kl", c), tol=1e-20)
    assert res.converged
    floor = 10 * np.finfo(float).eps * (1 + mdp.gamma) / (1 - mdp.gamma)
    assert res.bellman_residual <= 10 * floor * max(np.abs(res.v).max(), np.abs(mdp.r).max())
    v_ref, pi_ref = brute("forward_kl", c)
    assert rel(res.v, v_ref) <= V_TOL
    assert np.abs(mdp.to_pairs(res.policy) - pi_ref).max() <= P_TOL
