"""evaluate_batch / visitation_batch: K members at once equal K separate calls (1e-12),
and the dense references (np.linalg.solve, tests/naive.py); every backend, 1 and 2
threads, with and without a regularizer; rejection paths name the parameter."""
import numpy as np
import pytest

import fastppo
import naive
from conftest import random_mdp, random_policy

SAME = 1e-12   # batched vs separate calls: the same iterates, round-off apart
DENSE = 1e-9   # vs np.linalg.solve (as tests/test_evaluator.py)
BACKENDS = ["numba", "cython", "numpy"]
CASES = [(b, t) for b in BACKENDS for t in (1, 2) if not (b == "numpy" and t == 2)]
REGS = {"none": None, "reverse_kl": fastppo.ReverseKL(0.3), "forward_kl": fastppo.ForwardKL(0.2)}


def _policies(mdp, K, seed=0, deterministic=()):
    """K random full-support policies; members listed in ``deterministic`` one-hot."""
    pis = np.stack([random_policy(mdp, seed + m, sharp=2.0)[0] for m in range(K)])
    for m in deterministic:
        pis[m] = 0.0
        pis[m, mdp.a_indptr[:-1] + (np.arange(mdp.n_states) % np.diff(mdp.a_indptr))] = 1.0
    return pis


def _same(a, b, what, tol=SAME):
    err = naive.rel_err(a, b)
    assert err <= tol, f"{what}: relative error {err:.3g}"


@pytest.fixture(scope="module")
def mdps():
    return [random_mdp(70, n_states=20, n_actions=3, gamma=0.9, density=0.3),
            random_mdp(71, n_states=25, n_actions=4, gamma=0.95, rectangular=False, density=0.2)]


# ------------------------------------------------------------- K policies
@pytest.mark.parametrize("reg_name", sorted(REGS))
@pytest.mark.parametrize("which,n_threads", CASES)
def test_policies_equal_separate_calls_and_dense(mdps, which, n_threads, reg_name):
    reg = REGS[reg_name]
    opts = dict(backend=which, n_threads=n_threads)
    for mdp in mdps:
        # forward KL is infinite at π = 0: deterministic members only without it
        pis = _policies(mdp, 4, deterministic=() if reg_name == "forward_kl" else (2,))
        ev = fastppo.evaluate_batch(mdp, pis, reg, **opts)
        assert ev.v.shape == (4, mdp.n_states) and ev.J.shape == (4,)
        assert ev.q.shape == ev.adv.shape == (4, mdp.n_pairs)
        assert ev.backend == which and ev.n_passes >= 1
        for m in range(4):
            one = fastppo.evaluate(mdp, pis[m], reg, **opts)
            _same(ev.v[m], one.v, f"v[{m}]")
            _same(ev.q[m], one.q, f"q[{m}]")
            _same(ev.adv[m], one.adv, f"adv[{m}]")
            assert abs(ev.J[m] - one.J) <= SAME * abs(one.J)
            assert ev.n_matvec[m] == one.n_matvec and ev.method[m] == one.method
            assert ev.residual[m] <= 1e-12
            v, q, adv = naive.evaluate(mdp, pis[m], reg)
            _same(ev.v[m], v, f"dense v[{m}]", DENSE)
            _same(ev.q[m], q, f"dense q[{m}]", DENSE)
            _same(ev.adv[m], adv, f"dense adv[{m}]", DENSE)
        mu = np.random.default_rng(3).random(mdp.n_states)
        mu /= mu.sum()
        d = fastppo.visitation_batch(mdp, pis, mu, **opts)
        assert d.shape == (4, mdp.n_states)
        for m in range(4):
            _same(d[m], fastppo.visitation(mdp, pis[m], mu, **opts), f"d[{m}]")
            _same(d[m], naive.visitation(mdp, pis[m], mu), f"dense d[{m}]", DENSE)
        np.testing.assert_allclose(d.sum(axis=1), 1.0, rtol=1e-14)


@pytest.mark.parametrize("which,n_threads", CASES)
def test_rewards_equal_separate_calls_and_dense(mdps, which, n_threads):
    """One policy under K reward vectors: member m is evaluate(mdp.with_rewards(r[m]), pi)."""
    reg = fastppo.ReverseKL(0.2)
    opts = dict(backend=which, n_threads=n_threads)
    rng = np.random.default_rng(5)
    for mdp in mdps:
        pi = random_policy(mdp, 9, sharp=2.0)[0]
        r = rng.normal(size=(5, mdp.n_pairs)) * np.array([1, 10, 1e-3, 1, 1])[:, None]
        r[3] = mdp.r  # one member equal to the MDP itself
        ev = fastppo.evaluate_batch(mdp, pi, reg, r=r, **opts)
        for m in range(5):
            member = mdp.with_rewards(r[m])
            one = fastppo.evaluate(member, pi, reg, **opts)
            _same(ev.v[m], one.v, f"v[{m}]")
            _same(ev.q[m], one.q, f"q[{m}]")
            _same(ev.adv[m], one.adv, f"adv[{m}]")
            assert abs(ev.J[m] - one.J) <= SAME * abs(one.J)
            assert ev.n_matvec[m] == one.n_matvec
            v, q, adv = naive.evaluate(member, pi, reg)
            _same(ev.v[m], v, f"dense v[{m}]", DENSE)
            _same(ev.q[m], q, f"dense q[{m}]", DENSE)
        # K policies and K rewards, paired member by member
        pis = _policies(mdp, 5, seed=20)
        both = fastppo.evaluate_batch(mdp, pis, reg, r=r, **opts)
        for m in range(5):
            _same(both.v[m], fastppo.evaluate(mdp.with_rewards(r[m]), pis[m], reg, **opts).v,
                  f"paired v[{m}]")


@pytest.mark.parametrize("which", BACKENDS)
def test_one_member(mdps, which):
    """K = 1: the batch of one is the single call."""
    mdp = mdps[0]
    pi = random_policy(mdp, 4)[0]
    ev = fastppo.evaluate_batch(mdp, pi[None], backend=which, n_threads=1)
    one = fastppo.evaluate(mdp, pi, backend=which, n_threads=1)
    assert ev.v.shape == (1, mdp.n_states) and ev.q.shape == (1, mdp.n_pairs)
    _same(ev.v[0], one.v, "v")
    _same(ev.adv[0], one.adv, "adv")
    ev = fastppo.evaluate_batch(mdp, pi, r=mdp.r[None] * 2.0, backend=which, n_threads=1)
    _same(ev.v[0], 2.0 * one.v, "v of 2 r")
    d = fastppo.visitation_batch(mdp, pi[None], backend=which, n_threads=1)
    _same(d[0], fastppo.visitation(mdp, pi, backend=which, n_threads=1), "d")


@pytest.mark.parametrize("method", ["richardson", "bicgstab", "gmres"])
def test_each_method_equals_separate_calls(mdps, method):
    mdp = mdps[1]
    pis = _policies(mdp, 3, seed=30)
    ev = fastppo.evaluate_batch(mdp, pis, method=method, n_threads=1)
    d = fastppo.visitation_batch(mdp, pis, method=method, n_threads=1, full_output=True)
    for m in range(3):
        one = fastppo.evaluate(mdp, pis[m], method=method, n_threads=1)
        _same(ev.v[m], one.v, f"v[{m}]")
        assert ev.method[m] == one.method == method
        vis = fastppo.visitation(mdp, pis[m], method=method, n_threads=1, full_output=True)
        _same(d.d[m], vis.d, f"d[{m}]")
        assert d.n_matvec[m] == vis.n_matvec
    assert (ev.n_passes > 0) == (method != "gmres")  # GMRES runs per member


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_slow_members_continue_with_batched_bicgstab(which):
    """A slow-mixing MDP with method="bicgstab" ("auto" finishes slow systems per member
    on the assembled matrix): the members run BiCGSTAB in lockstep (batched products),
    each exactly as its separate call does, finishing at different steps."""
    mdp = fastppo.gridworld(6, 7, gamma=0.99)
    rng = np.random.default_rng(1)
    pis = np.stack([fastppo.softmax(mdp, s * rng.normal(size=mdp.n_pairs)) for s in (0.0, 3.0, 8.0)])
    ev = fastppo.evaluate_batch(mdp, pis, backend=which, n_threads=1, method="bicgstab")
    d = fastppo.visitation_batch(mdp, pis, backend=which, n_threads=1, method="bicgstab", full_output=True)
    assert any("bicgstab" in m for m in ev.method)
    assert ev.n_passes < ev.n_matvec.sum() and ev.n_passes >= ev.n_matvec.max()
    assert len(set(ev.n_matvec)) > 1  # frozen at different steps
    for m in range(3):
        one = fastppo.evaluate(mdp, pis[m], backend=which, n_threads=1, method="bicgstab")
        _same(ev.v[m], one.v, f"v[{m}]")
        assert ev.method[m] == one.method and ev.n_matvec[m] == one.n_matvec
        _same(ev.v[m], naive.evaluate(mdp, pis[m])[0], f"dense v[{m}]", DENSE)
        vis = fastppo.visitation(mdp, pis[m], backend=which, n_threads=1, method="bicgstab", full_output=True)
        _same(d.d[m], vis.d, f"d[{m}]")
        assert d.method[m] == vis.method


def test_members_freeze_at_their_own_sweep(mdps):
    """Members converging at different sweeps: each keeps its own count and iterate."""
    mdp = mdps[0]
    pi = random_policy(mdp, 2)[0]
    r = np.stack([mdp.r, np.zeros(mdp.n_pairs), np.ones(mdp.n_pairs), mdp.r])
    ev = fastppo.evaluate_batch(mdp, pi, r=r, n_threads=1)
    assert ev.n_matvec[1] == 0 and not ev.v[1].any()  # r = 0: v = 0 at once
    # r = 1: v = 1/(1−γ) is the MacQueen extrapolation's first step
    np.testing.assert_allclose(ev.v[2], 1.0 / (1.0 - mdp.gamma), rtol=1e-12)
    assert ev.n_matvec[2] < ev.n_matvec[0] == ev.n_matvec[3]
    np.testing.assert_array_equal(ev.v[0], ev.v[3])


def test_warm_starts_equal_separate_calls(mdps):
    mdp = mdps[0]
    pis = _policies(mdp, 3, seed=40)
    rng = np.random.default_rng(2)
    v0 = rng.normal(size=(3, mdp.n_states))
    d0 = rng.random((3, mdp.n_states))
    ev = fastppo.evaluate_batch(mdp, pis, v0=v0, n_threads=1)
    d = fastppo.visitation_batch(mdp, pis, d0=d0, n_threads=1, full_output=True)
    for m in range(3):
        one = fastppo.evaluate(mdp, pis[m], v0=v0[m], n_threads=1)
        _same(ev.v[m], one.v, f"v[{m}]")
        assert ev.n_matvec[m] == one.n_matvec
        vis = fastppo.visitation(mdp, pis[m], d0=d0[m], n_threads=1, full_output=True)
        _same(d.d[m], vis.d, f"d[{m}]")
        assert d.n_matvec[m] == vis.n_matvec


def test_shapes_of_tables_and_sigma():
    mdp = random_mdp(72, n_states=10, n_actions=3, gamma=0.9)
    S, A = mdp.n_states, mdp.n_actions
    pis = _policies(mdp, 2, seed=50)
    ev = fastppo.evaluate_batch(mdp, pis.reshape(2, S, A))
    assert ev.q.shape == ev.adv.shape == (2, S, A)
    _same(ev.q.reshape(2, -1), fastppo.evaluate_batch(mdp, pis).q, "table vs flat")
    sigma = np.array([np.arange(S) % A, (np.arange(S) + 1) % A])
    ev = fastppo.evaluate_batch(mdp, sigma)
    assert ev.q.shape == (2, S, A)  # sigma: the MDP's table shape, as evaluate
    for m in range(2):
        _same(ev.v[m], fastppo.evaluate(mdp, sigma[m]).v, f"sigma v[{m}]")
        _same(ev.q[m], fastppo.evaluate(mdp, sigma[m]).q, f"sigma q[{m}]")
    r = np.random.default_rng(0).normal(size=(3, S, A))
    ev = fastppo.evaluate_batch(mdp, pis[0].reshape(S, A), r=r)
    assert ev.v.shape == (3, S) and ev.q.shape == (3, S, A)
    ev = fastppo.evaluate_batch(mdp, pis[0], r=r)
    assert ev.q.shape == (3, mdp.n_pairs)
    mus = np.random.default_rng(1).random((3, S))
    mus /= mus.sum(axis=1, keepdims=True)
    d = fastppo.visitation_batch(mdp, pis[0], mus)
    for m in range(3):
        _same(d[m], fastppo.visitation(mdp, pis[0], mus[m]), f"d[{m}] of mu[{m}]")


def test_bad_input_names_the_parameter():
    mdp = random_mdp(73, n_states=8, n_actions=2, gamma=0.9)
    S, L = mdp.n_states, mdp.n_pairs
    pis = _policies(mdp, 3, seed=60)
    with pytest.raises(ValueError, match=r"pi must hold K policies: shape \(K, 16\).*got shape \(16,\)"):
        fastppo.evaluate_batch(mdp, pis[0])  # one policy and no r
    with pytest.raises(ValueError, match=r"pi must hold K policies.*got shape \(3, 17\)"):
        fastppo.evaluate_batch(mdp, np.ones((3, L + 1)))
    with pytest.raises(ValueError, match=r"pi must hold K policies.*got shape \(0, 16\)"):
        fastppo.evaluate_batch(mdp, np.ones((0, L)))
    with pytest.raises(ValueError, match=r"pi must hold K policies.*got shape \(3, 8\) and dtype float64"):
        fastppo.visitation_batch(mdp, np.full((3, S), 0.5))
    bad = pis.copy()
    bad[1, 0] += 0.5
    with pytest.raises(ValueError, match=r"pi\[1\] must sum to 1 in every state: state 0"):
        fastppo.evaluate_batch(mdp, bad)
    bad[2, 5] = -0.25  # member 1 is the first offender, and its own first offence is reported
    with pytest.raises(ValueError, match=r"pi\[1\] must sum to 1 in every state: state 0"):
        fastppo.evaluate_batch(mdp, bad)
    bad[1, 0] = np.nan
    with pytest.raises(ValueError, match=r"pi\[1\] must be finite and non-negative: pair \(s=0, a=0\) has nan"):
        fastppo.evaluate_batch(mdp, bad)
    with pytest.raises(TypeError, match=r"pi must hold real numbers"):
        fastppo.evaluate_batch(mdp, pis.astype(complex))
    # the batch's messages are the member-wise checks' (fastppo.evaluate's), for each member
    for m, k, value in ((0, 3, -1e-3), (2, 15, np.inf), (1, 6, 2.0)):
        one = pis.copy()
        one[m, k] = value
        with pytest.raises(ValueError) as batch_error:
            fastppo.evaluate_batch(mdp, one)
        with pytest.raises(ValueError) as member_error:
            fastppo.evaluate(mdp, one[m])
        assert str(batch_error.value) == str(member_error.value).replace("pi ", f"pi[{m}] ", 1)
    with pytest.raises(ValueError, match=r"pi\[2\]\[3\] = 7 is not an action of state 3"):
        fastppo.evaluate_batch(mdp, np.array([[0] * S, [1] * S, [0, 0, 0, 7] + [0] * (S - 4)]))
    with pytest.raises(ValueError, match=r"r must hold K reward vectors.*got shape \(16,\)"):
        fastppo.evaluate_batch(mdp, pis[0], r=mdp.r)
    r = np.zeros((2, L))
    r[1, 5] = np.nan
    with pytest.raises(ValueError, match=r"r\[1\] must be finite: pair \(s=2, a=1\) has nan"):
        fastppo.evaluate_batch(mdp, pis[0], r=r)
    with pytest.raises(TypeError, match=r"r must be an array of real numbers"):
        fastppo.evaluate_batch(mdp, pis[0], r=[["a"] * L])
    with pytest.raises(ValueError, match=r"pi holds 3 policies but r holds 2 members"):
        fastppo.evaluate_batch(mdp, pis, r=np.zeros((2, L)))
    with pytest.raises(ValueError, match=r"v0 must have shape \(3, 8\) \(K, n_states\), got \(8,\)"):
        fastppo.evaluate_batch(mdp, pis, v0=np.zeros(S))
    with pytest.raises(ValueError, match=r"v0 must be finite"):
        fastppo.evaluate_batch(mdp, pis, v0=np.full((3, S), np.inf))
    with pytest.raises(ValueError, match=r"mu must have shape \(8,\) or \(3, 8\)"):
        fastppo.visitation_batch(mdp, pis, np.ones(S + 1) / (S + 1))
    mus = np.full((3, S), 1.0 / S)
    mus[2, 0] = 0.5
    with pytest.raises(ValueError, match=r"mu\[2\] must sum to 1"):
        fastppo.visitation_batch(mdp, pis, mus)
    with pytest.raises(ValueError, match=r"d0 must have shape \(3, 8\)"):
        fastppo.visitation_batch(mdp, pis, d0=np.ones((2, S)))
    with pytest.raises(ValueError, match=r"pi holds 3 policies but mu holds 2 members"):
        fastppo.visitation_batch(mdp, pis, np.full((2, S), 1.0 / S))
    with pytest.raises(ValueError, match="tol must be > 0"):
        fastppo.evaluate_batch(mdp, pis, tol=0.0)
    with pytest.raises(fastppo.ConvergenceError, match=r"member 0: .*max_iter=2"):
        fastppo.evaluate_batch(mdp, pis, max_iter=2)
    with pytest.raises(ValueError, match="backend must be one of"):
        fastppo.evaluate_batch(mdp, pis, backend="fortran")


# ------------------------------------------- members as their own calls, to round-off
# Not bit for bit: the batched sweeps sum each member's residual norm in another order,
# and the Cython products fuse multiply-adds (FMA) where the separate call does not; a
# member's stopping decisions are its call's unless a residual is within round-off of a
# threshold (then its product count may differ by one).
def _same_count(a, b, what):
    assert abs(int(a) - int(b)) <= 1, f"{what}: {a} products against {b}"


@pytest.mark.parametrize("which,n_threads", [(b, t) for b in ("numba", "cython") for t in (1, 2)])
def test_members_equal_separate_calls(which, n_threads):
    """K = 13 policies (the Cython products' blocks of eight, four and one; members
    frozen at different sweeps), K = 9 reward vectors of one policy (its divergence
    computed once): every member's values and tables are those of its own call to 1e-12,
    its method the same and its product count within one."""
    mdp = random_mdp(74, n_states=30, n_actions=3, gamma=0.95, density=0.3)
    reg = fastppo.ReverseKL(0.2)
    opts = dict(backend=which, n_threads=n_threads)
    pis = _policies(mdp, 13, seed=80, deterministic=(4,))
    ev = fastppo.evaluate_batch(mdp, pis, reg, **opts)
    d = fastppo.visitation_batch(mdp, pis, full_output=True, **opts)
    assert len(set(ev.n_matvec)) > 1  # members frozen at different sweeps
    for m in range(13):
        one = fastppo.evaluate(mdp, pis[m], reg, **opts)
        for name in ("v", "q", "adv"):
            _same(getattr(ev, name)[m], getattr(one, name), f"{name}[{m}]")
        assert ev.method[m] == one.method and ev.residual[m] <= 1e-12
        _same_count(ev.n_matvec[m], one.n_matvec, f"n_matvec[{m}]")
        vis = fastppo.visitation(mdp, pis[m], full_output=True, **opts)
        _same(d.d[m], vis.d, f"d[{m}]")
        _same_count(d.n_matvec[m], vis.n_matvec, f"visitation n_matvec[{m}]")
    r = mdp.r + np.random.default_rng(6).normal(size=(9, mdp.n_pairs))
    ev = fastppo.evaluate_batch(mdp, pis[0], reg, r=r, **opts)
    for m in range(9):
        one = fastppo.evaluate(mdp.with_rewards(r[m]), pis[0], reg, **opts)
        for name in ("v", "q", "adv"):
            _same(getattr(ev, name)[m], getattr(one, name), f"rewards {name}[{m}]")
        _same_count(ev.n_matvec[m], one.n_matvec, f"rewards n_matvec[{m}]")


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_members_whose_sweeps_end_worse_than_their_start_hand_it_over(which):
    """A gridworld's value system: each member's extrapolated sweeps end above its start's
    residual and hand over the start (zero, or the warm start) to the assembled solvers,
    as ``_krylov._Sweeps`` does for the separate call: every member's values are those of
    its own call to 1e-12 and the dense ones, its method the same, its product count close."""
    from fastppo import _krylov
    from fastppo._evaluator import Evaluator

    mdp = fastppo.gridworld(20, 20, gamma=0.99)
    rng = np.random.default_rng(1)
    pis = np.stack([fastppo.softmax(mdp, s * rng.standard_normal(mdp.n_pairs)) for s in (1.0, 1.0, 3.0)])
    dense = np.stack([naive.evaluate(mdp, pis[m])[0] for m in range(3)])
    stop = _krylov.StoppingRule(1e-12, mdp.gamma)
    opts = dict(backend=which, n_threads=1)
    for v0 in (None, 0.5 * dense):
        handed_over = 0
        for m in range(3):  # the separate call's sweeps: do they return the start?
            E = Evaluator(mdp, None, which, 1)
            E.load(pis[m])
            system = E._value_system()
            start = None if v0 is None else v0[m]
            sweeps = _krylov.richardson(system, start, stop, 5000)
            handed_over += bool(np.array_equal(sweeps.x, np.zeros(mdp.n_states) if start is None
                                               else start))
        assert handed_over >= 2  # the path under test runs for most members
        ev = fastppo.evaluate_batch(mdp, pis, v0=v0, **opts)
        for m in range(3):
            one = fastppo.evaluate(mdp, pis[m], v0=None if v0 is None else v0[m], **opts)
            _same(ev.v[m], one.v, f"v[{m}]")
            assert ev.method[m] == one.method and one.method.startswith("richardson+")
            _same_count(ev.n_matvec[m], one.n_matvec, f"n_matvec[{m}]")
            _same(ev.v[m], dense[m], f"dense v[{m}]", DENSE)


def test_one_member_is_evaluate():
    """K = 1 through every path: the batch of one is ``evaluate`` / ``visitation`` (to
    1e-12, product counts within one)."""
    mdp = random_mdp(75, n_states=25, n_actions=4, gamma=0.9, density=0.3)
    pi = random_policy(mdp, 5)[0]
    for which in ("numba", "cython"):
        ev = fastppo.evaluate_batch(mdp, pi[None], fastppo.ForwardKL(0.1), backend=which, n_threads=1)
        one = fastppo.evaluate(mdp, pi, fastppo.ForwardKL(0.1), backend=which, n_threads=1)
        _same(ev.v[0], one.v, f"{which} v")
        _same(ev.q[0], one.q, f"{which} q")
        _same_count(ev.n_matvec[0], one.n_matvec, f"{which} n_matvec")
        assert ev.n_passes == ev.n_matvec[0]
        d = fastppo.visitation_batch(mdp, pi[None], backend=which, n_threads=1)
        _same(d[0], fastppo.visitation(mdp, pi, backend=which, n_threads=1), f"{which} d")


def test_interleaved_vectors_start_on_a_cache_line():
    from fastppo.batched import interleaved
    for n, k in ((1, 1), (7, 8), (1000, 8), (10, 3)):
        x = interleaved(n, k)
        assert x.shape == (n, k) and x.flags.c_contiguous and x.ctypes.data % 64 == 0
        assert not x.any()
