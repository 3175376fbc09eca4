"""The polynomial exp / log behind every softmax (kernels/numba/_softmax.py,
kernels/cython/_softmax.pxi): their error bounds against 80-bit references over the whole
double range (overflow, underflow, subnormals, ±inf, NaN), the two backends bit for bit,
the softmax kernels against the NumPy reference to 1e-12, and subnormals left alone by
importing fastppo and running its kernels."""
import subprocess
import sys

import numpy as np
import pytest

import fastppo
import naive
from conftest import random_mdp
from fastppo import _codes
from fastppo._backend import get_kernel
from fastppo._evaluator import ppo_log_ref

EXP_REL = 2.5e-16  # fexp, normal results (module docstring of _softmax)
EXPM1_REL = 5e-16  # fexpm1 on [-40, 1]
TINY = 4.9406564584124654e-324  # one subnormal step
DBL_MIN = 2.2250738585072014e-308


def _elementary(which, x):
    outs = [np.full(x.shape, -7.0) for _ in range(4)]
    if which == "numba":
        from fastppo._kernels.numba._softmax import elementary
    else:
        from fastppo._kernels.cython._info import elementary
    elementary(x, *outs)
    return dict(zip(("exp", "exp_neg", "expm1", "log"), outs))


def _exp_inputs():
    rng = np.random.default_rng(0)
    specials = [0.0, -0.0, 1.0, -1.0, 709.78, 709.782712893384, 709.7827128933841, 710.0, 711.0,
                1e300, np.inf, -np.inf, np.nan, -708.39641853226408, -708.4, -744.44, -745.0,
                -745.1332191019411, -745.1332191019412, -745.2, -746.0, -1e300,
                1e-300, -1e-300, 5e-324, -5e-324, np.log(2) / 2, -np.log(2) / 2]
    return np.concatenate([specials, np.linspace(-760.0, 720.0, 200_001),
                           rng.uniform(-1.0, 1.0, 20_000), rng.uniform(-750.0, 712.0, 50_000),
                           rng.uniform(-745.2, -708.0, 20_000), -np.logspace(-320, 2, 2_000),
                           np.logspace(-320, 2, 2_000)])


def _log_inputs():
    rng = np.random.default_rng(1)
    specials = [0.0, -0.0, 1.0, -1.0, np.inf, -np.inf, np.nan, TINY, 2 * TINY, DBL_MIN,
                DBL_MIN * (1 - 2**-52), np.nextafter(1.0, 0.0), np.nextafter(1.0, 2.0),
                np.sqrt(0.5), np.sqrt(2.0), 1.7976931348623157e308]
    return np.concatenate([specials, np.exp(rng.uniform(-744.0, 709.0, 50_000)),
                           rng.uniform(0.5, 2.0, 20_000), rng.uniform(0.0, 1e-310, 2_000),
                           -rng.random(100)])


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_exp_error_bound(which):
    x = _exp_inputs()
    got = _elementary(which, x)
    with np.errstate(over="ignore"):
        true = np.exp(x.astype(np.longdouble))  # 64-bit mantissa: exact enough for 2^-52
        as_double = true.astype(np.float64)  # the correctly rounded result (overflow: inf)
    normal = np.abs(as_double) >= DBL_MIN
    finite = normal & np.isfinite(as_double)
    err = np.abs((got["exp"][finite] - true[finite]) / true[finite]).max()
    assert err <= EXP_REL, f"fexp relative error {err:.3g}"
    sub = ~normal & ~np.isnan(x)  # subnormal or zero: within one subnormal step of e^x
    assert np.abs(got["exp"][sub] - true[sub]).max() <= TINY
    assert got["exp"][x == -np.inf].tolist() == [0.0]
    assert np.all(got["exp"][x < -745.14] == 0.0)
    assert np.all(got["exp"][x > 709.79] == np.inf)
    assert np.all(np.isinf(got["exp"][np.isinf(as_double)]))
    assert np.isnan(got["exp"][np.isnan(x)]).all()
    assert np.all(got["exp"][~np.isnan(x)] >= 0.0)
    # fexp_neg: the same function for x ≤ 0 (and NaN), bit for bit
    neg = ~(x > 0.0)
    np.testing.assert_array_equal(got["exp_neg"][neg], got["exp"][neg])


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_expm1_error_bound(which):
    x = _exp_inputs()
    got = _elementary(which, x)["expm1"]
    inside = (x >= -40.0) & (x <= 1.0)
    true = np.expm1(x[inside].astype(np.longdouble))
    scale = np.abs(true)
    nonzero = scale > 0
    err = np.abs((got[inside][nonzero] - true[nonzero]) / scale[nonzero]).max()
    assert err <= EXPM1_REL, f"fexpm1 relative error {err:.3g}"
    assert np.all(got[inside][~nonzero] == 0.0)
    assert np.all(got[x < -40.0] == -1.0)
    assert np.isnan(got[np.isnan(x)]).all()


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_log_error_bound(which):
    x = _log_inputs()
    got = _elementary(which, x)["log"]
    pos = (x > 0) & np.isfinite(x)
    true = np.log(x[pos].astype(np.longdouble))
    ulp = np.spacing(np.abs(true.astype(np.float64)))
    err = (np.abs(got[pos] - true) / ulp).max()
    assert err < 1.0, f"flog error {err:.3g} ulp"
    assert got[x == 0.0].tolist() == [-np.inf, -np.inf]
    assert got[x == np.inf].tolist() == [np.inf]
    assert np.isnan(got[(x < 0) | np.isnan(x)]).all()
    assert got[x == 1.0].tolist() == [0.0]


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_exp_log_against_numpy(which):
    """Against np.exp / np.log (libm, itself within 1 ulp): the stated bounds plus libm's
    own ulp, over the whole range; underflow to exactly 0 and subnormal results (within
    one subnormal step of libm's, as libm's are of e^x)."""
    x = _exp_inputs()
    got = _elementary(which, x)
    with np.errstate(over="ignore"):
        lib = np.exp(x)
    normal = np.isfinite(lib) & (lib >= DBL_MIN)
    rel = np.abs(got["exp"][normal] - lib[normal]) / lib[normal]
    assert rel.max() <= EXP_REL + 2.0**-52, f"fexp vs np.exp {rel.max():.3g}"
    sub = (lib < DBL_MIN) & ~np.isnan(x)
    assert np.abs(got["exp"][sub] - lib[sub]).max() <= 2 * TINY
    assert np.any((got["exp"][sub] > 0.0) & (got["exp"][sub] < DBL_MIN))  # subnormals kept
    assert np.all(got["exp"][(lib == 0.0) & (x < -745.14)] == 0.0)  # underflow to 0
    neg = x <= 0.0
    np.testing.assert_array_equal(got["exp_neg"][neg], got["exp"][neg])
    y = _log_inputs()
    pos = (y > 0) & np.isfinite(y)
    log = _elementary(which, y)["log"][pos]
    ref = np.log(y[pos])
    assert (np.abs(log - ref) / np.spacing(np.abs(ref))).max() <= 2.0  # < 1 ulp each


def test_backends_bit_identical():
    """Same operations in the same order, explicit fma, no fast-math: equal bits."""
    for x in (_exp_inputs(), _log_inputs()):
        nb, cy = _elementary("numba", x), _elementary("cython", x)
        for name in nb:
            np.testing.assert_array_equal(nb[name].view(np.uint64), cy[name].view(np.uint64),
                                          err_msg=name)


def test_numba_without_fast_math():
    """The bit-identity above rests on Numba's default fastmath=False: the LLVM IR of the
    exp/log carries no fast-math flag (no contraction into fma, no reassociation), and
    its fused multiply-adds are the explicit llvm.fma calls."""
    import re

    from numba import njit

    from fastppo._kernels.numba import _softmax

    fresh = njit(error_model="numpy")(_softmax.elementary.py_func)  # not from the cache
    x = np.linspace(-5.0, 5.0, 11)
    fresh(x, *(np.empty(11) for _ in range(4)))
    ir = next(iter(fresh.inspect_llvm().values()))
    assert len(re.findall(r"= f(add|sub|mul|div) double", ir)) > 20
    flags = r"= f(add|sub|mul|div) (fast|contract|reassoc|nnan|ninf|nsz|arcp|afn)"
    assert re.findall(flags, ir) == []
    assert "llvm.fma.f64" in ir


# ------------------------------------------------------------------ softmax kernels
REL = 1e-12
CODES = [(_codes.NONE, 0.0, 0.0), (_codes.REVERSE_KL, 0.0, 0.3), (_codes.FORWARD_KL, 0.0, 0.3),
         (_codes.CHI_SQUARE, 0.0, 0.3), (_codes.HELLINGER, 0.0, 0.3),
         (_codes.JENSEN_SHANNON, 0.0, 0.3), (_codes.ALPHA, 0.5, 0.3), (_codes.ALPHA, 2.0, 0.3),
         (_codes.ALPHA, -1.0, 0.3)]


@pytest.fixture(scope="module")
def mdps():
    # more than one block of states (64 lanes) per task, ragged action counts
    return [random_mdp(60, n_states=150, n_actions=5, gamma=0.95, density=0.05),
            random_mdp(61, n_states=140, n_actions=6, gamma=0.9, rectangular=False, density=0.05)]


def _ppo(which, mdp, code, alpha, tau, beta, n_threads=1):
    rng = np.random.default_rng(3)
    n, S = mdp.n_pairs, mdp.n_states
    theta = rng.normal(size=n)
    pi_old = fastppo.softmax(mdp, 0.8 * theta, backend="numpy")
    adv = rng.normal(size=n)
    weight = rng.random(S) * 3
    ref = fastppo.softmax(mdp, rng.normal(size=n) / 2, backend="numpy")
    outs = [np.full(n, np.nan), np.full(S, -1, np.int64), np.full(S, np.nan), np.full(S, np.nan)]
    get_kernel("ppo_update", which)(mdp.a_indptr, pi_old, adv, weight, ref,
                                    ppo_log_ref(code, tau, ref), code, alpha, tau, 0.2, 0.25,
                                    beta, 0.7, 10, theta, *outs, n_threads)
    return [theta, *outs]


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("code,alpha,tau", CODES)
def test_ppo_update_matches_numpy_and_twins(mdps, code, alpha, tau, beta):
    """ppo_update (10 inner steps): numba and cython agree bit for bit (1 and 2 threads),
    and with the NumPy reference (np.exp, np.log) to 1e-12."""
    for mdp in mdps:
        expect = _ppo("numpy", mdp, code, alpha, tau, beta)
        nb = _ppo("numba", mdp, code, alpha, tau, beta)
        _check_ppo_outputs(expect, nb, (
            ("numba", nb), ("cython", _ppo("cython", mdp, code, alpha, tau, beta)),
            ("numba-2", _ppo("numba", mdp, code, alpha, tau, beta, 2)),
            ("cython-2", _ppo("cython", mdp, code, alpha, tau, beta, 2))))


def _check_ppo_outputs(expect, nb, runs):
    """Each (name, outputs) of ``runs`` against the NumPy reference's (to REL; the
    clipped-pair counts exactly) and bit for bit against numba's ``nb``."""
    for name, got in runs:
        for i, (g, e) in enumerate(zip(got, expect)):
            if i == 2:  # clipped-pair counts
                np.testing.assert_array_equal(g, e)
            else:
                err = naive.rel_err(g, e)
                assert err <= REL, f"{name} output {i}: {err:.3g}"
        for g, b in zip(got, nb):
            np.testing.assert_array_equal(g, b, err_msg=name)


def _ppo_edges(which, mdp, code, alpha, ref_from):
    """ppo_update (5 steps, τ = 0.3) from logits 3·N(0, 1), some at -800 (π underflows to
    0) and some at -700 (π subnormal or tiny), with π_ref = π_old (ref_from "pi":
    log(π/π_ref) near 0 for every pair) or a softmax of logits 20 times wider (ratios
    π/π_ref up to e^±100). For α ≥ 1, π f' ~ −π_ref^α/π^(α−1) → −inf as π → 0 (and the
    steps blow up, in the reference too): logits N(0, 1), π_ref 5 times wider, no tiny π."""
    rng = np.random.default_rng(8)
    n, S = mdp.n_pairs, mdp.n_states
    steep = code == _codes.ALPHA and alpha >= 1.0
    theta = (1.0 if steep else 3.0) * rng.normal(size=n)
    if not steep:
        theta[::11] = -800.0
        theta[5::13] = -700.0
    pi_old = fastppo.softmax(mdp, theta, backend="numpy")
    if ref_from == "pi":
        ref = pi_old.copy()
        ref[ref == 0.0] = 1e-300  # π_ref > 0 on every pair
    else:
        ref = fastppo.softmax(mdp, (5.0 if steep else 20.0) * rng.normal(size=n),
                              backend="numpy")
        ref = np.maximum(ref, 1e-200)
    adv = rng.normal(size=n)
    weight = rng.random(S) * 3
    outs = [np.full(n, np.nan), np.full(S, -1, np.int64), np.full(S, np.nan), np.full(S, np.nan)]
    get_kernel("ppo_update", which)(mdp.a_indptr, pi_old, adv, weight, ref,
                                    ppo_log_ref(code, 0.3, ref), code, alpha, 0.3, 0.2, 0.25,
                                    0.0, 0.1, 5, theta, *outs, 1)
    return [theta, *outs]


@pytest.mark.parametrize("ref_from", ["pi", "wide"])
@pytest.mark.parametrize("code,alpha", [(_codes.ALPHA, 0.5), (_codes.ALPHA, 2.0),
                                        (_codes.ALPHA, -1.0), (_codes.ALPHA, 1e-3),
                                        (_codes.ALPHA, 0.01), (_codes.ALPHA, 0.999),
                                        (_codes.REVERSE_KL, 0.0),
                                        (_codes.JENSEN_SHANNON, 0.0),
                                        (_codes.CHI_SQUARE, 0.0), (_codes.HELLINGER, 0.0)])
def test_ppo_update_divergence_edges(mdps, code, alpha, ref_from):
    """π f' from the block's log π at its edges: α-divergence with y = −α log(π/π_ref)
    near 0 (π_ref = π) and beyond 1 (wide π_ref: the e^(log π + y) branch, for α of both
    signs; for 0.01 ≤ α < 1 the power π^(1−α) π_ref^α from the exp pass instead, 0.01 its
    worst cancellation near π = π_ref), π tiny or 0 (underflowed logits, padding rows);
    reverse KL, Jensen–Shannon and χ² (f' folded into b up to a per-state constant) and
    Hellinger likewise. Twins bit for bit, and the NumPy reference to 1e-12 (θ, π, ‖g‖²,
    KL)."""
    for mdp in mdps:
        expect = _ppo_edges("numpy", mdp, code, alpha, ref_from)
        nb = _ppo_edges("numba", mdp, code, alpha, ref_from)
        cy = _ppo_edges("cython", mdp, code, alpha, ref_from)
        for i, (g, e) in enumerate(zip(nb, expect)):
            if i == 2:
                np.testing.assert_array_equal(g, e)
            else:
                assert np.all(np.isfinite(g)), i
                err = naive.rel_err(g, e)
                assert err <= REL, f"output {i}: {err:.3g}"
        for g, b in zip(cy, nb):
            np.testing.assert_array_equal(g, b)


def _ppo_stepwise(which, mdp, code, alpha, tau, n_threads):
    """ppo_update, 40 steps at lr 0.3 with Ã in [−4, 4]: weights 0.1 in the even blocks of
    32 states, so that every logit step stays within fexpm1_step's |δ| ≤ 1/4 (the next e
    as π e^δ, 39 times in a row), and 3 in the odd ones (steps beyond 1/4: full softmaxes)."""
    rng = np.random.default_rng(5)
    n, S = mdp.n_pairs, mdp.n_states
    theta = rng.normal(size=n)
    pi_old = fastppo.softmax(mdp, 0.8 * theta, backend="numpy")
    adv = np.clip(rng.normal(size=n), -4.0, 4.0)
    weight = np.where(np.arange(S) // 32 % 2 == 0, 0.1, 3.0)
    ref = fastppo.softmax(mdp, rng.normal(size=n) / 2, backend="numpy")
    outs = [np.full(n, np.nan), np.full(S, -1, np.int64), np.full(S, np.nan), np.full(S, np.nan)]
    get_kernel("ppo_update", which)(mdp.a_indptr, pi_old, adv, weight, ref,
                                    ppo_log_ref(code, tau, ref), code, alpha, tau, 0.2, 0.25,
                                    0.0, 0.3, 40, theta, *outs, n_threads)
    return [theta, *outs]


@pytest.mark.parametrize("code,alpha,tau", CODES)
def test_ppo_update_steps_by_exp_of_the_step(mdps, code, alpha, tau):
    """Between inner steps ppo_update forms the next softmax as π e^δ (fexpm1_step; for
    0 < α < 1 the power π^(1−α) π_ref^α too) where every |δ| ≤ 1/4 in a block, and by a full
    softmax elsewhere: over 40 steps, with blocks of each kind, θ, π, ‖g‖² and the KL agree
    with the NumPy reference (a softmax of θ at every step) to 1e-12, and the twins bit
    for bit (1 and 2 threads)."""
    for mdp in mdps:
        expect = _ppo_stepwise("numpy", mdp, code, alpha, tau, 1)
        nb = _ppo_stepwise("numba", mdp, code, alpha, tau, 1)
        _check_ppo_outputs(expect, nb, (
            ("numba", nb), ("cython", _ppo_stepwise("cython", mdp, code, alpha, tau, 1)),
            ("cython-2", _ppo_stepwise("cython", mdp, code, alpha, tau, 2))))


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_exp_of_the_step_error_bound(which):
    """π e^δ = fma(π, fexpm1_step(δ, δ²), π) for |δ| ≤ 1/4 within 2e-16 relative of the 80-bit
    value (module docstring of _softmax), the twins bit for bit."""
    if which == "numba":
        from fastppo._kernels.numba._softmax import stepped
    else:
        from fastppo._kernels.cython._info import stepped
    rng = np.random.default_rng(4)
    d = np.concatenate([np.linspace(-0.25, 0.25, 200_001), rng.uniform(-0.25, 0.25, 100_000),
                        [0.0, -0.0, 1e-300, -1e-300, 1e-10, -1e-10]])
    pi = rng.uniform(0.0, 1.0, d.size)
    pi[::7] = 1.0
    pi[::11] = np.exp(rng.uniform(-700.0, 0.0, pi[::11].size))
    got = np.full(d.size, np.nan)
    stepped(pi, d, got)
    true = pi.astype(np.longdouble) * np.exp(d.astype(np.longdouble))
    err = float(np.max(np.abs((got - true) / true)))
    assert err <= 2e-16, f"π e^δ relative error {err:.3g}"
    other = np.full(d.size, np.nan)
    from fastppo._kernels.cython._info import stepped as cy
    cy(pi, d, other)
    np.testing.assert_array_equal(got.view(np.uint64), other.view(np.uint64))


def test_fexpm1_or_exp_is_fexpm1_and_fexp():
    """One reduction for both: e^x − 1 bit for bit as fexpm1 where x ≤ 1, e^x as fexp
    everywhere (the cython twin is covered by the ppo_update tests' bit-identity)."""
    from numba import njit

    from fastppo._kernels.numba import _softmax

    @njit
    def both(x, minus_one, out):
        for i in range(x.shape[0]):
            out[i] = _softmax.fexpm1_or_exp(x[i], minus_one[i])

    x = _exp_inputs()
    got = _elementary("numba", x)
    out = np.empty_like(x)
    small = x <= 1.0
    both(x, small, out)
    np.testing.assert_array_equal(out[small].view(np.uint64), got["expm1"][small].view(np.uint64))
    both(x, np.zeros(x.shape, dtype=np.bool_), out)
    np.testing.assert_array_equal(out.view(np.uint64), got["exp"].view(np.uint64))


def test_flog_positive_is_flog():
    """flog_positive (Jensen–Shannon's log in ppo_update) is flog bit for bit on
    0 < x < inf, subnormals included (the cython twin is covered by the ppo_update tests'
    bit-identity)."""
    from numba import njit

    from fastppo._kernels.numba import _softmax

    @njit
    def logs(x, out):
        for i in range(x.shape[0]):
            out[i] = _softmax.flog_positive(x[i])

    x = _log_inputs()
    x = x[(x > 0.0) & (x < np.inf)]
    out = np.empty_like(x)
    logs(x, out)
    expect = _elementary("numba", x)["log"]
    np.testing.assert_array_equal(out.view(np.uint64), expect.view(np.uint64))


def test_flog_or_log1p_is_flog_and_log1p():
    """One polynomial for both: log x bit for bit as flog on 0 < x < inf, log(1 + f) bit for
    bit as flog1p_reduced on √½ − 1 ≤ f ≤ √2 − 1 (the cython twin is covered by
    regularized_reward's KL tests against the kernel's own ref_f)."""
    from numba import njit

    from fastppo._kernels.numba import _softmax

    @njit
    def logs(x, f, near, out):
        for i in range(x.shape[0]):
            out[i] = _softmax.flog_or_log1p(x[i], f[i], near[i])

    @njit
    def log1ps(f, out):
        for i in range(f.shape[0]):
            out[i] = _softmax.flog1p_reduced(f[i])

    x = _log_inputs()
    x = x[(x > 0.0) & (x < np.inf)]
    f = np.concatenate([[0.0, np.sqrt(0.5) - 1, np.sqrt(2.0) - 1, -1e-300, 1e-17],
                        np.random.default_rng(2).uniform(np.sqrt(0.5) - 1, np.sqrt(2.0) - 1, x.size - 5)])
    out, expect = np.empty_like(x), np.empty_like(x)
    logs(x, f, np.zeros(x.size, dtype=np.bool_), out)
    np.testing.assert_array_equal(out.view(np.uint64), _elementary("numba", x)["log"].view(np.uint64))
    logs(x, f, np.ones(x.size, dtype=np.bool_), out)
    log1ps(f, expect)
    np.testing.assert_array_equal(out.view(np.uint64), expect.view(np.uint64))
    np.testing.assert_allclose(out, np.log1p(f), rtol=4.5e-16, atol=0)  # < 1 ulp each


@pytest.mark.parametrize("scale", [1.0, 30.0, 1e3])
def test_segment_softmax_matches_numpy_and_twins(mdps, scale):
    for mdp in mdps:
        logits = scale * np.random.default_rng(4).normal(size=mdp.n_pairs)
        logits[::7] = -800.0 * scale  # e^{θ - max} below the double range: exactly 0
        out = {}
        for which in ("numpy", "numba", "cython"):
            out[which] = np.full(mdp.n_pairs, np.nan)
            get_kernel("segment_softmax", which)(mdp.a_indptr, logits, out[which], 2)
        for which in ("numba", "cython"):
            assert naive.rel_err(out[which], out["numpy"]) <= REL
        np.testing.assert_array_equal(out["numba"], out["cython"])
        zero = out["numpy"] == 0.0
        assert zero.sum() > mdp.n_pairs // 10 and np.all(out["numba"][zero] == 0.0)


# ------------------------------------------------------------------ subnormals
SUBNORMAL_CHECK = """
import numpy as np
import fastppo
from fastppo._backend import get_kernel

mdp = fastppo.garnet(300, 4, 3, gamma=0.9, seed=0)
logits = np.random.default_rng(0).normal(size=mdp.n_pairs)
logits[0] = -740.0  # e^{θ - max} is subnormal
for which in ("numba", "cython"):
    for n_threads in (1, 2):
        out = np.empty(mdp.n_pairs)
        get_kernel("segment_softmax", which)(mdp.a_indptr, logits, out, n_threads)
        assert out[0] > 0.0 and out[0] < 2.2250738585072014e-308, (which, out[0])
    fastppo.solve(mdp, fastppo.ReverseKL(0.1), backend=which, n_threads=2)
assert np.nextafter(0.0, 1.0) > 0.0
x = np.array([1e-310])
assert x[0] * 1.0 != 0.0 and (x * 1.0)[0] != 0.0 and 1e-310 * float(x[0] / x[0]) != 0.0
print("subnormals ok")
"""


def test_subnormals_left_alone():
    """No flush-to-zero anywhere: not at import (GCC's -ffast-math links crtfastmath.o,
    which sets it process-wide), not inside the kernels' threads, not after them."""
    out = subprocess.run([sys.executable, "-c", SUBNORMAL_CHECK], capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "subnormals ok" in out.stdout
