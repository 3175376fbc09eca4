"""The f-divergence regularizers: generators, derivatives, limits at π = 0, the
agreement of their NumPy forms with the compiled kernels, the α-divergence near its
limits against 250-digit mpmath values, and input checking."""
import functools
import math

import numpy as np
import pytest

import fastppo
import naive
from conftest import BACKENDS, random_mdp, random_policy
from fastppo._backend import get_kernel
from fastppo._kernels.cython import _info as cython_info
from fastppo._kernels.numba import _divergence as numba_divergence

ALL = [
    fastppo.ReverseKL(1.0), fastppo.ForwardKL(1.0), fastppo.ChiSquare(1.0), fastppo.Hellinger(1.0),
    fastppo.JensenShannon(1.0), fastppo.AlphaDivergence(1.0, 0.5), fastppo.AlphaDivergence(1.0, 2.0),
    fastppo.AlphaDivergence(1.0, -1.0),
]
IDS = [repr(r) for r in ALL]
X = np.concatenate([np.logspace(-8, 3, 200), [1.0, 0.5, 2.0, 1 - 1e-9, 1 + 1e-9]])


def _naive_f(reg):
    name, alpha, _ = naive.spec(reg)
    f, fp = naive.GENERATORS[name]
    return (np.vectorize(lambda x: f(x, alpha)), np.vectorize(lambda x: fp(x, alpha)), name, alpha)


def _infinite_at_zero(reg):
    return isinstance(reg, fastppo.ForwardKL) or (isinstance(reg, fastppo.AlphaDivergence) and reg.alpha > 1)


# ------------------------------------------------------------------ the generators
@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_f_of_one_is_zero(reg):
    assert reg.f(np.array(1.0)) == 0.0
    assert reg.f(np.ones(3)).tolist() == [0.0, 0.0, 0.0]


@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_f_and_fprime_match_the_spec_table(reg):
    """The library's f and f' against the SPEC §1 table written out in naive.py."""
    f, fp, _, _ = _naive_f(reg)
    np.testing.assert_allclose(reg.f(X), f(X), rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(reg.fprime(X), fp(X), rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_f_convex(reg):
    rng = np.random.default_rng(0)
    x = np.exp(rng.uniform(-12, 6, 4000))
    y = np.exp(rng.uniform(-12, 6, 4000))
    t = rng.random(4000)
    lhs = reg.f(t * x + (1 - t) * y)
    rhs = t * reg.f(x) + (1 - t) * reg.f(y)
    scale = np.abs(reg.f(x)) + np.abs(reg.f(y)) + 1.0
    assert (lhs <= rhs + 1e-12 * scale).all()
    # f' non-decreasing
    grid = np.logspace(-10, 5, 2000)
    assert (np.diff(reg.fprime(grid)) >= 0).all()
    # and f ≥ 0 = f(1) is the minimum of q f(p/q) + f'(1)(q - p) terms: f(x) ≥ f'(1)(x − 1)
    assert (reg.f(grid) >= reg.fprime(np.array(1.0)) * (grid - 1) - 1e-12 * (1 + np.abs(reg.f(grid)))).all()


@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_fprime_matches_finite_differences(reg):
    x = np.logspace(-4, 2, 120)
    h = 1e-5 * x
    fd = (reg.f(x + h) - reg.f(x - h)) / (2 * h)
    np.testing.assert_allclose(reg.fprime(x), fd, rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_fprime_inv_inverts_fprime(reg):
    x = np.logspace(-6, 3, 200)
    np.testing.assert_allclose(reg.fprime_inv(reg.fprime(x)), x, rtol=1e-9)


# ------------------------------------------------------------------ per-pair forms
@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_ref_f_and_p_fprime_definitions(reg):
    rng = np.random.default_rng(1)
    p, q = rng.random(500), rng.random(500) + 1e-3
    f, fp, _, _ = _naive_f(reg)
    np.testing.assert_allclose(reg.ref_f(p, q), q * f(p / q), rtol=1e-11, atol=1e-14)
    np.testing.assert_allclose(reg.p_fprime(p, q), p * fp(p / q), rtol=1e-11, atol=1e-14)


@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_limits_at_zero(reg):
    """ref_f(0, q) = q f(0+) and p_fprime(0, q) = q lim x f'(x): finite exactly where the
    math is (reverse KL 0, χ² q, H² q, JS q log 2, α<1: q/(1−α); forward KL and α>1: ∞),
    with no NaN, and continuous from p > 0."""
    _, _, name, alpha = _naive_f(reg)
    q = np.array([0.1, 0.5, 1.0])
    zero = np.zeros(3)
    with np.errstate(all="raise"):  # no warnings from the NumPy forms either
        rf = np.asarray(reg.ref_f(zero, q))
        pf = np.asarray(reg.p_fprime(zero, q))
    assert not np.isnan(rf).any() and not np.isnan(pf).any()
    expect_rf = q * naive.f_at_zero(name, alpha)
    expect_pf = q * naive.x_fprime_at_zero(name, alpha)
    np.testing.assert_allclose(rf, expect_rf, rtol=1e-15)
    np.testing.assert_allclose(pf, expect_pf, rtol=1e-15)
    assert np.isfinite(rf).all() == (not _infinite_at_zero(reg))
    # continuity: p = 1e-14 is within ~1e-6 of the limit where it is finite
    tiny = np.full(3, 1e-14)
    if np.isfinite(expect_rf).all():
        np.testing.assert_allclose(reg.ref_f(tiny, q), expect_rf, rtol=1e-5, atol=1e-6)
    if np.isfinite(expect_pf).all():
        np.testing.assert_allclose(reg.p_fprime(tiny, q), expect_pf, rtol=1e-5, atol=1e-6)


def test_known_divergences():
    """D_f against the closed forms named in the SPEC table."""
    rng = np.random.default_rng(2)
    p, q = rng.random(6), rng.random(6)
    p, q = p / p.sum(), q / q.sum()
    D = {type(r).__name__ + str(r.alpha): r.ref_f(p, q).sum() for r in ALL}
    m = (p + q) / 2
    kl = lambda a, b: float(np.sum(a * np.log(a / b)))  # noqa: E731
    assert math.isclose(D["ReverseKL0.0"], kl(p, q), rel_tol=1e-13)
    assert math.isclose(D["ForwardKL0.0"], kl(q, p), rel_tol=1e-13)
    assert math.isclose(D["ChiSquare0.0"], float(np.sum((p - q) ** 2 / q)), rel_tol=1e-13)
    assert math.isclose(D["Hellinger0.0"], float(np.sum((np.sqrt(p) - np.sqrt(q)) ** 2)), rel_tol=1e-12)
    assert math.isclose(D["JensenShannon0.0"], kl(p, m) + kl(q, m), rel_tol=1e-12)  # 2·JS
    assert math.isclose(D["AlphaDivergence0.5"], 2 * D["Hellinger0.0"], rel_tol=1e-12)  # f = 2(√x−1)²
    for d in D.values():
        assert d > 0
    # D_f(q ‖ q) = 0
    for r in ALL:
        assert abs(r.ref_f(q, q).sum()) < 1e-15


def test_alpha_limits():
    """With f(x) = (x^{1−α} − (1−α)x − α)/(α(α−1)): α → 0 is reverse KL, α → 1 forward KL."""
    rng = np.random.default_rng(3)
    p, q = rng.random(5), rng.random(5)
    p, q = p / p.sum(), q / q.sum()
    rkl, fkl = fastppo.ReverseKL(1.0).ref_f(p, q).sum(), fastppo.ForwardKL(1.0).ref_f(p, q).sum()
    for eps in (1e-5, -1e-5):
        assert math.isclose(fastppo.AlphaDivergence(1.0, eps).ref_f(p, q).sum(), rkl, rel_tol=1e-4)
        assert math.isclose(fastppo.AlphaDivergence(1.0, 1 + eps).ref_f(p, q).sum(), fkl, rel_tol=1e-4)


# ------------------------------------------------------------------ NumPy forms = kernel forms
def _pairs():
    """(p, q) pairs as singleton 'states': random, extreme and exactly zero p."""
    rng = np.random.default_rng(4)
    p = np.concatenate([rng.random(200), [0.0, 1e-300, 1e-30, 1e-8, 0.5, 1 - 1e-12, 1.0, 0.0, 0.3]])
    q = np.concatenate([rng.random(200) + 1e-6, [0.3, 0.3, 1e-3, 0.9, 0.5, 1.0, 1.0, 1e-6, 0.3]])
    return p, q


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", ["numba", "cython", "numpy"])
@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_numpy_forms_equal_kernel_forms(reg, which, n_threads):
    """regularized_reward and policy_gradient on one-pair 'states' (the kernels do not
    validate, so π need not sum to 1) expose the kernels' ref_f and p_fprime directly."""
    p, q = _pairs()
    if _infinite_at_zero(reg):
        keep = p > 0
        p, q = p[keep], q[keep]
    n = p.size
    a_indptr = np.arange(n + 1, dtype=np.int64)
    out = np.full(n, np.nan)
    get_kernel("regularized_reward", which)(a_indptr, np.zeros(n), p, q, reg.code, reg.alpha, 1.0,
                                            out, n_threads)
    np.testing.assert_allclose(-out, reg.ref_f(p, q), rtol=1e-12, atol=1e-15)
    out = np.full(n, np.nan)
    get_kernel("policy_gradient", which)(a_indptr, p, np.zeros(n), np.ones(n), q, reg.code, reg.alpha,
                                         1.0, out, n_threads)
    pf = reg.p_fprime(p, q)
    np.testing.assert_allclose(out, -(pf - p * pf), rtol=1e-12, atol=1e-15)
    assert np.isfinite(out).all()


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", ["numba", "cython"])
@pytest.mark.parametrize("reg", [fastppo.ReverseKL(0.3), fastppo.ForwardKL(0.3)], ids=repr)
def test_kl_regularized_reward_sums_by_loops(reg, which, n_threads):
    """The KL path of regularized_reward (terms in chunks of pairs, then the sums per
    state) equals, bit for bit, explicit loops over the states adding π r and the kernel's
    own ref_f terms in pair order: states of 0 to 1,500 actions (across chunks and tasks),
    π = 0, subnormal π and π_ref, π = π_ref."""
    rng = np.random.default_rng(11)
    counts = np.concatenate([rng.integers(1, 12, 2_500), [0, 1, 700, 0, 1_500, 3], rng.integers(0, 4, 900)])
    a_indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    n = int(a_indptr[-1])
    p, q, r = rng.random(n), rng.random(n), rng.normal(size=n)
    p[::7] = 0.0
    p[1::11] = 5e-324
    q[2::13] = 1e-310
    p[3::17] = q[3::17]
    p[4::19] = q[4::19] * (1 + 1e-12)
    out = np.full(counts.size, np.nan)
    get_kernel("regularized_reward", which)(a_indptr, r, p, q, reg.code, reg.alpha, reg.tau, out,
                                            n_threads)
    terms = [np.full(n, np.nan) for _ in range(4)]
    module = numba_divergence if which == "numba" else cython_info
    module.divergence_terms(reg.code, reg.alpha, p, q, np.zeros(n), *terms)
    expect = np.empty(counts.size)
    for s in range(counts.size):
        acc = div = 0.0
        for k in range(a_indptr[s], a_indptr[s + 1]):
            acc += p[k] * r[k]
            div += terms[0][k]
        expect[s] = acc - reg.tau * div
    np.testing.assert_array_equal(out, expect)
    assert np.isinf(out).any() == isinstance(reg, fastppo.ForwardKL)  # π = 0 < π_ref


def test_kernel_divergence_infinite_at_zero():
    """Forward KL / α > 1 with π = 0 < π_ref: every backend gives D = +∞ (not NaN)."""
    a_indptr = np.array([0, 2], dtype=np.int64)
    p, q = np.array([0.0, 1.0]), np.array([0.5, 0.5])
    for reg in (fastppo.ForwardKL(1.0), fastppo.AlphaDivergence(1.0, 2.0)):
        for which in ("numba", "cython", "numpy"):
            out = np.full(1, np.nan)
            get_kernel("regularized_reward", which)(a_indptr, np.zeros(2), p, q, reg.code, reg.alpha,
                                                    1.0, out, 1)
            assert out[0] == -np.inf, (reg, which)


def test_regularized_reward_through_evaluate_gamma_zero():
    """End to end with γ = 0: v(s) = Σ π r − τ D_f, for a non-uniform reference."""
    mdp = random_mdp(5, n_states=7, n_actions=3, gamma=0.0)
    pi, _ = random_policy(mdp, 6)
    ref = random_policy(mdp, 7)[0]
    for reg in ALL:
        r = (type(reg)(0.7, reg.alpha, ref) if isinstance(reg, fastppo.AlphaDivergence)
             else type(reg)(0.7, ref))
        for which in ("numba", "cython", "numpy"):
            v = fastppo.evaluate(mdp, pi, r, backend=which, n_threads=1).v
            expect = naive.r_pi(mdp, pi) - 0.7 * naive.divergence(mdp, pi, r)
            assert naive.rel_err(v, expect) <= 1e-14, (r, which)


def _kernel_terms(which, reg, p, q, y):
    """(ref_f, p_fprime, (f')^{-1}, its derivative) of one backend, elementwise."""
    if which == "numpy":
        return reg.ref_f(p, q), reg.p_fprime(p, q), reg.fprime_inv(y), reg.fprime_inv_deriv(y)
    out = [np.full(p.size, np.nan), np.full(p.size, np.nan), np.full(y.size, np.nan), np.full(y.size, np.nan)]
    module = numba_divergence if which == "numba" else cython_info
    module.divergence_terms(reg.code, reg.alpha, p, q, y, *out)
    return out


@pytest.mark.parametrize("which", ["numba", "cython"])
@pytest.mark.parametrize("reg", ALL, ids=IDS)
def test_numpy_fprime_inv_equals_kernel_fprime_inv(reg, which):
    """(f')^{-1} and its derivative (the greedy step's Newton) as the kernels compute them."""
    y = np.concatenate([-np.logspace(-8, 3, 60), [0.0, 0.5, 1 - 1e-9, 1.0, 2.0], np.logspace(-8, 3, 60)])
    p = np.array([0.5])
    _, _, h, dh = _kernel_terms(which, reg, p, p, y)
    np.testing.assert_allclose(h, reg.fprime_inv(y), rtol=1e-13, atol=0)
    np.testing.assert_allclose(dh, reg.fprime_inv_deriv(y), rtol=1e-13, atol=0)
    # h' is the derivative of h (central differences where h is finite, off the kinks at
    # the ends of the range of f': χ² at −2, α = −1 at −1)
    y = np.linspace(-2.95, -0.05, 30)
    step = 1e-6
    fd = (reg.fprime_inv(y + step) - reg.fprime_inv(y - step)) / (2 * step)
    np.testing.assert_allclose(reg.fprime_inv_deriv(y), fd, rtol=1e-6, atol=1e-9)


# ------------------------------------------------------------------ α near its limits
LIMIT_ALPHAS = [1e-20, 1e-16, 1e-8, 1e-4, 0.5, 1 - 1e-14, 2.0, -1.0]
# p from 0 and subnormal to 1, and within 1e-15 .. 1e-1 of q = 0.3; q from 1e-300 to 1
_P = np.concatenate([[0.0, 1e-320, 1e-310], np.logspace(-300, 0, 31), 0.3 * (1 + np.logspace(-15, -1, 8)),
                     0.3 * (1 - np.logspace(-15, -1, 8)), np.linspace(0.05, 1.0, 12)])
_Q = np.array([1e-300, 1e-8, 0.01, 0.3, 0.5, 0.9, 1.0])
P_GRID, Q_GRID = (np.ascontiguousarray(x.ravel()) for x in np.meshgrid(_P, _Q))
Y_GRID = np.concatenate([-np.logspace(-12, 2, 15), [0.0], np.logspace(-12, 2, 15)])
# Relative tolerances (the error bound in AlphaDivergence's docstring): 5e-15 while p/q is
# within [1e-300, 1e300] (a few roundings in forms without cancellation; measured ≤ 1e-15);
# 1e-13 beyond (p = 0, subnormal p, 1e-300 against 1: the rounding of 1 − α, ≤ 2^-54,
# times |log(p/q)| ≤ 745 adds up to 4e-14); values below the normal range to 1e-320
# absolute. (f')^{-1}(y): 4e-16·(4 + |log h|), the conditioning of exp.
RTOL_NORMAL, RTOL_EXTREME, ATOL_SUBNORMAL = 5e-15, 1e-13, 1e-320


@functools.lru_cache(maxsize=None)
def _mp_terms(alpha):
    """mpmath values of the four terms on the grids (computed once per α)."""
    return ([naive.alpha_ref_f_mp(p, q, alpha) for p, q in zip(P_GRID, Q_GRID)],
            [naive.alpha_p_fprime_mp(p, q, alpha) for p, q in zip(P_GRID, Q_GRID)],
            [naive.alpha_fprime_inv_mp(y, alpha)[0] for y in Y_GRID],
            [naive.alpha_fprime_inv_mp(y, alpha)[1] for y in Y_GRID])


def _assert_close_mp(got, expect, rtol, what):
    """got (doubles) against mpmath values: the same infinity where the value is beyond the
    double range, else |got − value| ≤ rtol·|value| + 1e-320."""
    import mpmath as mp

    big = 1.7976931348623157e308
    for i, (g, e) in enumerate(zip(got, expect)):
        r = rtol[i] if np.ndim(rtol) else rtol
        if mp.isinf(e) or abs(e) > big:
            assert np.isinf(g) and (g > 0) == (e > 0), f"{what}[{i}]: {g!r}, expected {mp.nstr(e, 17)}"
            continue
        err = abs(mp.mpf(float(g)) - e)
        assert np.isfinite(g) and err <= r * abs(e) + ATOL_SUBNORMAL, (
            f"{what}[{i}]: {g!r}, expected {mp.nstr(e, 17)} (relative error {float(err / abs(e)):.3g})")


@pytest.mark.parametrize("which", BACKENDS)
@pytest.mark.parametrize("alpha", LIMIT_ALPHAS, ids=lambda a: f"alpha{a!r}")
def test_alpha_terms_against_mpmath(alpha, which):
    """q f(p/q), p f'(p/q), (f')^{-1} and its derivative of the α-divergence on a grid of
    (p, q) from 0 and subnormal p to 1 (and p within 1e-15 of q), against 250-digit
    mpmath values of the defining formulas, for α next to 0 and 1 and ordinary α; per
    backend (NumPy spec, Numba and Cython kernels' shared code)."""
    reg = fastppo.AlphaDivergence(1.0, alpha)
    ref_f, p_fprime, h, dh = _kernel_terms(which, reg, P_GRID, Q_GRID, Y_GRID)
    mp_ref_f, mp_p_fprime, mp_h, mp_dh = _mp_terms(alpha)
    with np.errstate(divide="ignore"):
        ratio = P_GRID / Q_GRID
    rtol = np.where((ratio >= 1e-300) & (ratio <= 1e300), RTOL_NORMAL, RTOL_EXTREME)
    _assert_close_mp(ref_f, mp_ref_f, rtol, "ref_f")
    _assert_close_mp(p_fprime, mp_p_fprime, rtol, "p_fprime")
    with np.errstate(divide="ignore"):
        cond = 4.0 + np.abs(np.log(np.where(h > 0, h, 1.0)))
    _assert_close_mp(h, mp_h, 4e-16 * cond, "fprime_inv")
    _assert_close_mp(dh, mp_dh, 4e-16 * (cond + 1.0), "fprime_inv_deriv")


@pytest.mark.parametrize("which", BACKENDS)
def test_kl_terms_against_mpmath(which):
    """q f(p/q) of the forward and reverse KL (the kernels' polynomial log: log1p form for
    p/q in [√½, 1] and its mirror) against 250-digit mpmath on the grid, p within 1e-15 of q
    included."""
    import mpmath as mp

    mp.mp.dps = 250
    keep = P_GRID > 0
    p, q = np.ascontiguousarray(P_GRID[keep]), np.ascontiguousarray(Q_GRID[keep])
    rtol = np.where((p / q >= 1e-300) & (p / q <= 1e300), RTOL_NORMAL, RTOL_EXTREME)
    for reg, exact in ((fastppo.ForwardKL(1.0), lambda a, b: b * mp.log(b / a)),
                       (fastppo.ReverseKL(1.0), lambda a, b: a * mp.log(a / b))):
        ref_f = _kernel_terms(which, reg, p, q, Y_GRID)[0]
        expect = [exact(mp.mpf(float(a)), mp.mpf(float(b))) for a, b in zip(p, q)]
        _assert_close_mp(ref_f, expect, rtol, f"{type(reg).__name__} ref_f")


@pytest.mark.parametrize("alpha", [1e-300, -1e-20, 1e-12, 0.3, 1 - 1e-9, 1 + 1e-14, 1.5, 3.0, -3.0])
def test_alpha_terms_match_across_backends(alpha):
    """Beyond the mpmath grid: NumPy spec, Numba and Cython give the same four terms."""
    reg = fastppo.AlphaDivergence(1.0, alpha)
    terms = {which: _kernel_terms(which, reg, P_GRID, Q_GRID, Y_GRID) for which in BACKENDS}
    for which in ("numba", "cython"):
        for got, want in zip(terms[which], terms["numpy"]):
            np.testing.assert_allclose(got, want, rtol=1e-14, atol=ATOL_SUBNORMAL, err_msg=which)


@pytest.mark.parametrize("tau", [0.05, 1.0])
def test_alpha_next_to_its_limits_end_to_end(backend, tau):
    """α = 1e-20 and 1e-16 agree with reverse KL, α = 1 − 1e-14 with forward KL, to 1e-10
    relative: evaluate (v and J) and solve (J*, v*, π*, converged)."""
    mdp = random_mdp(21, n_states=15, n_actions=4, gamma=0.9)
    pi = random_policy(mdp, 22, sharp=3.0)[0]
    ref = random_policy(mdp, 23)[0]
    with fastppo.backend(n_threads=1):
        for alpha, limit in ((1e-20, fastppo.ReverseKL), (1e-16, fastppo.ReverseKL),
                             (1 - 1e-14, fastppo.ForwardKL)):
            near, at = fastppo.AlphaDivergence(tau, alpha, ref), limit(tau, ref)
            a, b = (fastppo.evaluate(mdp, pi, r, backend=backend) for r in (near, at))
            assert naive.rel_err(a.v, b.v) <= 1e-10, (alpha, naive.rel_err(a.v, b.v))
            assert abs(a.J - b.J) <= 1e-10 * abs(b.J)
            a, b = (fastppo.solve(mdp, r, backend=backend) for r in (near, at))
            assert a.converged and b.converged
            assert abs(a.J - b.J) <= 1e-10 * abs(b.J), (alpha, a.J, b.J)
            assert naive.rel_err(a.v, b.v) <= 1e-10
            assert np.abs(mdp.to_pairs(a.policy) - mdp.to_pairs(b.policy)).max() <= 1e-9


# ------------------------------------------------------------------ rejection
@pytest.mark.parametrize("cls", [fastppo.ReverseKL, fastppo.ForwardKL, fastppo.ChiSquare,
                                 fastppo.Hellinger, fastppo.JensenShannon])
def test_bad_tau(cls):
    for bad in (-0.1, float("nan"), float("inf"), -np.inf):
        with pytest.raises(ValueError, match="tau must be finite and >= 0"):
            cls(bad)
    for bad in ("0.1", None, True, [0.1], 1j):
        with pytest.raises(TypeError, match="tau must be a real number"):
            cls(bad)
    assert cls(0).tau == 0.0 and cls(np.float32(0.5)).tau == 0.5 and cls(2).tau == 2.0


def test_bad_alpha():
    for bad in (0, 1, 0.0, 1.0, np.float64(1.0)):
        with pytest.raises(ValueError, match="alpha must not be 0 or 1"):
            fastppo.AlphaDivergence(0.1, bad)
    for bad in (float("nan"), float("inf")):
        with pytest.raises(ValueError, match="alpha must be finite"):
            fastppo.AlphaDivergence(0.1, bad)
    for bad in ("2", None, True):
        with pytest.raises(TypeError, match="alpha must be a real number"):
            fastppo.AlphaDivergence(0.1, bad)
    with pytest.raises(ValueError, match="tau must be finite and >= 0"):
        fastppo.AlphaDivergence(-1.0, 2.0)
    assert fastppo.AlphaDivergence(0.1, -1).alpha == -1.0


@pytest.fixture
def rect():
    return random_mdp(8, n_states=5, n_actions=3)


def test_ref_with_a_zero_entry(rect):
    ref = rect.uniform_policy().reshape(5, 3)
    ref[2] = [0.5, 0.5, 0.0]
    for cls in (fastppo.ReverseKL, fastppo.ChiSquare):
        with pytest.raises(ValueError, match=r"ref must have full support: pair \(s=2, a=2\) has probability 0"):
            fastppo.evaluate(rect, rect.uniform_policy(), cls(0.1, ref))
    with pytest.raises(ValueError, match=r"full support: pair \(s=2, a=2\)"):
        fastppo.gradient(rect, np.zeros(rect.n_pairs), fastppo.AlphaDivergence(0.1, 0.5, ref))


def test_ref_not_summing_to_one(rect):
    ref = rect.uniform_policy().reshape(5, 3)
    ref[3] = [0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="ref must sum to 1 in every state: state 3 sums to 1.5"):
        fastppo.evaluate(rect, rect.uniform_policy(), fastppo.ForwardKL(0.1, ref))
    ref = rect.uniform_policy()
    ref[4] = -0.1
    with pytest.raises(ValueError, match=r"ref must be finite and non-negative: pair \(s=1, a=1\)"):
        fastppo.evaluate(rect, rect.uniform_policy(), fastppo.ForwardKL(0.1, ref))
    ref = rect.uniform_policy()
    ref[0] = np.nan
    with pytest.raises(ValueError, match=r"ref must be finite and non-negative: pair \(s=0, a=0\)"):
        fastppo.evaluate(rect, rect.uniform_policy(), fastppo.ForwardKL(0.1, ref))


def test_ref_wrong_shape(rect):
    with pytest.raises(ValueError, match=r"ref must have shape \(15,\) or \(5, 3\), got \(5, 2\)"):
        fastppo.evaluate(rect, rect.uniform_policy(), fastppo.ReverseKL(0.1, np.full((5, 2), 0.5)))
    with pytest.raises(ValueError, match=r"ref must have shape \(15,\) or \(5, 3\), got \(14,\)"):
        fastppo.evaluate(rect, rect.uniform_policy(), fastppo.ReverseKL(0.1, np.full(14, 1 / 3)))
    with pytest.raises(TypeError, match="ref must be a numeric array"):
        fastppo.evaluate(rect, rect.uniform_policy(), fastppo.ReverseKL(0.1, "uniform"))
    ragged = random_mdp(9, n_states=5, n_actions=3, rectangular=False)
    with pytest.raises(ValueError, match=rf"ref must have shape \({ragged.n_pairs},\), got \(5, 3\)"):
        fastppo.evaluate(ragged, ragged.uniform_policy(), fastppo.ReverseKL(0.1, np.full((5, 3), 1 / 3)))


def test_zero_tau_is_the_plain_mdp(rect):
    ref = random_policy(rect, 1)[0]
    plain = fastppo.evaluate(rect, rect.uniform_policy(), None).v
    for reg in (fastppo.ReverseKL(0.0, ref), fastppo.AlphaDivergence(0.0, 2.0, ref)):
        np.testing.assert_array_equal(fastppo.evaluate(rect, rect.uniform_policy(), reg).v, plain)


def test_repr():
    assert repr(fastppo.ForwardKL(0.25)) == "ForwardKL(tau=0.25, ref=uniform)"
    assert repr(fastppo.AlphaDivergence(0.5, 2, ref=np.ones(3))) == "AlphaDivergence(tau=0.5, alpha=2.0, ref=given)"


def test_regularized_reward_is_kept_per_loaded_policy():
    """Evaluator.regularized_reward is made once per loaded policy (the value start needs
    it before the solve): read-only, the same array until the next ``load``, and then that
    policy's (against explicit sums: Σ π r − τ Σ π log(π/π_ref))."""
    from fastppo._evaluator import Evaluator

    mdp = fastppo.garnet(30, 3, 2, gamma=0.9, seed=2)
    reg = fastppo.ReverseKL(0.2)
    E = Evaluator(mdp, reg, "cython", 1)
    rng = np.random.default_rng(3)
    for _ in range(2):
        pi = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
        E.load(pi)
        c = E.regularized_reward()
        assert E.regularized_reward() is c and not c.flags.writeable
        ref = mdp.uniform_policy()
        expect = [sum(pi[k] * (mdp.r[k] - 0.2 * np.log(pi[k] / ref[k]))
                      for k in range(mdp.a_indptr[s], mdp.a_indptr[s + 1]))
                  for s in range(mdp.n_states)]
        np.testing.assert_allclose(c, expect, rtol=1e-12, atol=1e-14)
