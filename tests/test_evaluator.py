"""The private evaluator, the one linear-solve interface, and reward scale.

- ``fastppo._evaluator.Evaluator`` against the dense references of ``naive.py`` on every
  backend (values, Q̃, Ã, J, visitation, gradient, greedy step, softmax);
- ``fastppo._krylov``: each solver through the one signature and result, the one
  stopping rule, the driver's chain and its errors, and the lockstep entry point
  against separate solves;
- reward scale (issue 13): rewards × c (τ × c) give the same policy and values × c for
  c from 1e-300 to 1e300, with no warnings;
- the methods' inner loops go through the evaluator, not the validating public functions.
"""
import warnings

import numpy as np
import pytest

import fastppo
import fastppo._krylov as K
import naive
from conftest import random_mdp, random_policy
from fastppo._evaluator import Evaluator, _patched_rows, policy_rows

REL = 1e-9


def make_reg(name, mdp, seed=0):
    rng = np.random.default_rng(seed)
    ref = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs), backend="numpy")
    return {"none": None, "forward_kl": fastppo.ForwardKL(0.3),
            "js": fastppo.JensenShannon(0.4, ref), "reverse_kl": fastppo.ReverseKL(0.2, ref),
            "hellinger": fastppo.Hellinger(0.3)}[name]


# --------------------------------------------------------------- the evaluator
@pytest.mark.parametrize("rect", [True, False])
@pytest.mark.parametrize("reg_name", ["none", "forward_kl", "js"])
def test_evaluator_matches_dense_references(backend, n_threads, rect, reg_name):
    mdp = random_mdp(3, n_states=14, n_actions=3, gamma=0.95, rectangular=rect)
    reg = make_reg(reg_name, mdp)
    pi, logits = random_policy(mdp, 4)
    mu = np.random.default_rng(5).random(mdp.n_states)
    mu /= mu.sum()
    E = Evaluator(mdp, reg, backend, n_threads)
    E.load(pi)
    ev = E.evaluation()
    v, q, adv = naive.evaluate(mdp, pi, reg)
    assert naive.rel_err(ev.v, v) <= REL and naive.rel_err(ev.q, q) <= REL
    assert naive.rel_err(ev.adv, adv) <= REL
    assert ev.J == pytest.approx(float(mdp.rho @ v), rel=REL)
    assert ev.residual <= 1e-12 and ev.backend == backend and ev.method == "richardson"
    vis = E.visitation(mu)
    assert naive.rel_err(vis.d, naive.visitation(mdp, pi, mu)) <= REL and vis.residual <= 1e-12
    # the gradient of the softmax policy at θ (π = softmax(θ))
    E.load(E.softmax(logits))
    np.testing.assert_allclose(E.pi, naive.softmax(mdp, logits), rtol=1e-13, atol=0)
    assert naive.rel_err(E.gradient(mu), naive.gradient(mdp, logits, reg, mu)) <= REL


@pytest.mark.parametrize("reg_name", ["none", "reverse_kl", "forward_kl", "hellinger"])
def test_greedy_step_is_the_regularized_bellman_operator(backend, reg_name):
    """value_out = max_p Σ p q − τ D_f(p ‖ π_ref) per state; pi_out attains it (checked
    against the dense per-state objective at pi_out and at random policies)."""
    mdp = random_mdp(6, n_states=10, n_actions=4)
    reg = make_reg(reg_name, mdp)
    q = np.random.default_rng(7).normal(size=mdp.n_pairs)
    E = Evaluator(mdp, reg, backend, 1)
    pi, value = np.empty(mdp.n_pairs), np.empty(mdp.n_states)
    E.greedy(q, pi, value)
    tau = 0.0 if reg is None else reg.tau

    def objective(p):
        return naive.r_pi(mdp_with(mdp, q), p) - tau * naive.divergence(mdp, p, reg)

    np.testing.assert_allclose(objective(pi), value, rtol=1e-12, atol=1e-12)
    for seed in range(5):
        other, _ = random_policy(mdp, 100 + seed, sharp=3.0)
        assert (objective(other) <= value + 1e-12).all()


def mdp_with(mdp, r, gamma=None):
    """The same transitions with other rewards (and γ)."""
    return fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data,
                       r, mdp.gamma if gamma is None else gamma, mdp.rho)


def test_compact_rows_of_sparse_policies(backend):
    """A deterministic policy's products read compact rows, gathered with the cached row
    lengths of the MDP's transitions; the results are those of the dense reference."""
    mdp = random_mdp(8, n_states=15, n_actions=4, gamma=0.9, rectangular=False)
    T = mdp._transitions
    assert T is mdp._transitions  # one holder, computed once
    np.testing.assert_array_equal(T.row_lengths, np.diff(mdp.p_indptr))
    assert not T.row_lengths.flags.writeable and T.row_lengths is T.row_lengths
    pi = np.zeros(mdp.n_pairs)
    pi[mdp.a_indptr[:-1]] = 1.0  # first action everywhere
    a_indptr, p_indptr, p_indices, p_data, pi_used = policy_rows(mdp, pi)
    assert pi_used.shape == (mdp.n_states,) and p_indptr[-1] < mdp.p_indptr[-1]
    E = Evaluator(mdp, None, backend, 1)
    E.load(pi)
    ev = E.evaluation()
    assert naive.rel_err(ev.v, naive.evaluate(mdp, pi)[0]) <= REL
    assert naive.rel_err(E.visitation(mdp.rho).d, naive.visitation(mdp, pi)) <= REL


@pytest.mark.parametrize("kind", ["stochastic", "deterministic"])
def test_evaluate_and_visitation_leave_the_callers_policy_alone(backend, kind):
    """They check π without copying it (``as_policy(copy=False)``): nothing writes into it
    (a read-only array would raise), and the results are the copy's. 6,000 states: the
    row sweeps run on the compiled backends."""
    mdp = fastppo.garnet(6000, 4, 10, gamma=0.9, seed=3)
    pi = random_policy(mdp, 5)[0] if kind == "stochastic" else np.zeros(mdp.n_pairs)
    if kind == "deterministic":
        pi[mdp.a_indptr[:-1]] = 1.0
    frozen = pi.copy()
    frozen.flags.writeable = False
    ev = fastppo.evaluate(mdp, frozen, backend=backend)
    d = fastppo.visitation(mdp, frozen, backend=backend)
    np.testing.assert_array_equal(frozen, pi)
    np.testing.assert_array_equal(ev.v, fastppo.evaluate(mdp, pi.copy(), backend=backend).v)
    np.testing.assert_array_equal(d, fastppo.visitation(mdp, pi.copy(), backend=backend))


def _loop_compact_rows(mdp, pi):
    """The compact rows of the pairs with π > 0, by plain loops (reference)."""
    a_indptr, p_indptr, indices, data, weights = [0], [0], [], [], []
    for s in range(mdp.n_states):
        for k in range(mdp.a_indptr[s], mdp.a_indptr[s + 1]):
            if pi[k] != 0.0:
                lo, hi = mdp.p_indptr[k], mdp.p_indptr[k + 1]
                indices += list(mdp.p_indices[lo:hi])
                data += list(mdp.p_data[lo:hi])
                weights.append(pi[k])
                p_indptr.append(len(indices))
        a_indptr.append(len(weights))
    return a_indptr, p_indptr, indices, data, weights


@pytest.mark.parametrize("kind", ["deterministic", "sparse", "stochastic"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_compact_row_kernels_match_a_loop_reference(backend, n_threads, kind, seed):
    """``compact_indptr`` + ``compact_rows`` (through ``policy_rows``) of every backend
    equal plain loops over the pairs and the NumPy reference, on random sparse MDPs with
    rows of different lengths (and empty states' blocks never: every state has a pair)."""
    mdp = random_mdp(20 + seed, n_states=17, n_actions=4, gamma=0.9, rectangular=False,
                     density=0.3)
    rng = np.random.default_rng(seed)
    pi = random_policy(mdp, seed)[0]
    if kind != "stochastic":  # one pair per state, or some states with two
        keep = np.zeros(mdp.n_pairs, dtype=bool)
        keep[mdp.a_indptr[:-1] + rng.integers(0, np.diff(mdp.a_indptr))] = True
        if kind == "sparse":
            two = np.flatnonzero(np.diff(mdp.a_indptr) > 1)[:mdp.n_pairs // 2 - mdp.n_states]
            keep[mdp.a_indptr[two] + np.diff(mdp.a_indptr)[two] - 1] = True
        pi = np.where(keep, pi, 0.0)
        assert mdp.n_states < np.count_nonzero(pi) <= mdp.n_pairs // 2 or kind == "deterministic"
    rows = policy_rows(mdp, pi, backend=backend, n_threads=n_threads)
    if kind == "stochastic":  # more than half the pairs: the MDP's own arrays
        assert rows[0] is mdp.a_indptr and rows[4] is pi
        return
    expected = _loop_compact_rows(mdp, pi)
    reference = policy_rows(mdp, pi, backend="numpy")
    for got, want, ref in zip(rows, expected, reference):
        np.testing.assert_array_equal(got, np.asarray(want, dtype=got.dtype))
        np.testing.assert_array_equal(got, ref)
    assert rows[2].dtype == mdp.p_indices.dtype and rows[1].dtype == np.int64


def test_evaluator_resolves_the_regularizer_once():
    mdp = random_mdp(9, n_states=6, n_actions=3)
    reg = make_reg("js", mdp)
    E = Evaluator(mdp, reg, "numpy", 1)
    assert (E.code, E.alpha, E.tau) == (reg.code, reg.alpha, reg.tau)
    np.testing.assert_array_equal(E.ref, mdp.to_pairs(reg.ref))
    plain = Evaluator(mdp, None, "numpy", 1)
    assert (plain.code, plain.tau) == (0, 0.0)
    np.testing.assert_array_equal(plain.ref, mdp.uniform_policy())
    zero = Evaluator(mdp, fastppo.ForwardKL(0.0, reg.ref), "numpy", 1)
    assert (zero.code, zero.tau) == (0, 0.0)  # τ = 0: the plain MDP, π_ref still checked
    bad = mdp.uniform_policy().reshape(6, 3)
    bad[1] = [0.0, 0.5, 0.5]
    with pytest.raises(ValueError, match=r"ref must have full support: pair \(s=1, a=0\)"):
        Evaluator(mdp, fastppo.ForwardKL(0.0, bad), "numpy", 1)


def test_lockstep_evaluation_equals_separate_solves(backend, n_threads):
    """Value and visitation systems advanced together give bit for bit the results of
    two separate solves (same iterates, products and solvers), also when one system's
    sweeps stall and it continues with the assembled solvers."""
    fast = fastppo.garnet(300, 4, 5, gamma=0.99, seed=0)
    slow = fastppo.garnet(300, 4, 3, gamma=0.99, seed=0, locality=2)
    for mdp in (fast, slow):
        pi, _ = random_policy(mdp, 7)
        reg = fastppo.ForwardKL(0.2)
        mu = mdp.rho
        E = Evaluator(mdp, reg, backend, n_threads)
        E.load(pi)
        ev, vis = E.evaluation_and_visitation(mu)
        ev1, vis1 = E.evaluation(), E.visitation(mu)
        np.testing.assert_array_equal(ev.v, ev1.v)
        np.testing.assert_array_equal(ev.adv, ev1.adv)
        np.testing.assert_array_equal(vis.d, vis1.d)
        assert (ev.n_matvec, ev.method, vis.n_matvec, vis.method) == \
            (ev1.n_matvec, ev1.method, vis1.n_matvec, vis1.method)
        # warm starts too
        pi2 = fastppo.softmax(mdp, np.log(pi) + 0.05)
        E.load(pi2)
        ev, vis = E.evaluation_and_visitation(mu, ev1.v, vis1.d)
        ev2, vis2 = E.evaluation(ev1.v), E.visitation(mu, vis1.d)
        np.testing.assert_array_equal(ev.v, ev2.v)
        np.testing.assert_array_equal(vis.d, vis2.d)
        assert (ev.n_matvec, vis.n_matvec) == (ev2.n_matvec, vis2.n_matvec)
    assert ev1.method == "richardson+lu"  # the slow (banded) chain went on to the LU


# ----------------------------------------------------- the linear-solve interface
def markov_system(n, gamma, seed, slow=False, assembled=False):
    """(I − γP) x = b for a random stochastic P (slow: a near-cyclic shift, which mixes
    slowly), the Bellman structure Richardson needs; ``assembled``: with the assembled
    form the ``sgs`` and ``lu`` solvers need (P as a one-action MDP's, through the
    evaluator), the product staying the dense one."""
    rng = np.random.default_rng(seed)
    if slow:
        P = 0.95 * np.roll(np.eye(n), 1, axis=1) + 0.05 * rng.random((n, n)) / n
    else:
        P = rng.random((n, n))
    P /= P.sum(axis=1, keepdims=True)
    A = np.eye(n) - gamma * P
    b = rng.normal(size=n)
    form = None
    if assembled:
        mdp = fastppo.MDP.from_sa_pairs(np.arange(n), np.zeros(n, dtype=np.int64), P,
                                        np.zeros(n), gamma)
        E = Evaluator(mdp, None, "numba", 1)
        E.load(np.ones(n))
        form = E.assembled
    return A, K.System(lambda x, out: np.matmul(A, x, out=out), b, "markov system",
                       shift=gamma / (1 - gamma), assembled=form)


@pytest.mark.parametrize("name", ["richardson", "bicgstab", "sgs", "lu", "gmres"])
def test_each_solver_through_the_one_interface(name):
    A, sysm = markov_system(40, 0.9, 0, assembled=True)
    stop = K.StoppingRule(1e-12)
    for x0 in (None, np.ones(40)):
        res = K.SOLVERS[name](sysm, x0, stop, 2000)
        assert isinstance(res, K.LinearResult)
        assert res.converged and not res.stalled and res.method == name and res.n_matvec > 0
        true = np.linalg.norm(sysm.b - A @ res.x) / np.linalg.norm(sysm.b)
        # sgs and lu measure it with the assembled A (the same matrix, summed in another
        # order): equal up to round-off
        atol = 1e-15 if name in ("sgs", "lu") else 1e-16
        assert res.residual == pytest.approx(true, rel=1e-6, abs=atol) and res.residual <= 1e-12
        np.testing.assert_allclose(res.x, np.linalg.solve(A, sysm.b), rtol=1e-9)
    # b = 0: x = 0 without a product
    zero = K.System(sysm.matvec, np.zeros(40), "zero")
    res = K.SOLVERS[name](zero, np.ones(40), stop, 2000)
    assert res.converged and res.n_matvec == 0 and not res.x.any() and res.residual == 0.0
    # a budget too small: not converged, not stalled, within the budget (+ a final check);
    # the LU needs one product
    res = K.SOLVERS[name](sysm, None, stop, 0 if name == "lu" else 3)
    assert not res.converged and not res.stalled and res.n_matvec <= 4


@pytest.mark.parametrize("mean", [True, False], ids=["mean", "midrange"])
def test_extrapolation_along_one_by_mean_or_mid_range(mean, monkeypatch):
    """The value sweeps' part along 1: the residual's mean (``MEAN_EXTRAPOLATION``, from
    zero starts; from warm starts from ``WARM_MEAN_STATES`` on) or its mid-range; either way
    the sweeps reach tol with the dense
    solution, alone and batched (the same estimate per member), and on a garnet the mean's
    sweeps take no more products."""
    monkeypatch.setattr(K, "MEAN_EXTRAPOLATION", mean)
    monkeypatch.setattr(K, "MEAN_STATES", 1)
    assert K.mean_extrapolation(10) == mean
    r = np.array([3.0, -1.0, 0.5, 0.25])
    assert K.extrapolation(r) == (np.mean(r) if mean else 1.0)
    assert not K.mean_extrapolation(10, cold=False)  # warm starts: the mid-range ...
    assert K.extrapolation(r, cold=False) == 1.0
    monkeypatch.setattr(K, "WARM_MEAN_STATES", 4)  # ... below WARM_MEAN_STATES
    assert K.mean_extrapolation(4, cold=False) == mean
    assert not K.mean_extrapolation(3, cold=False)
    assert K.extrapolation(r, cold=False) == (np.mean(r) if mean else 1.0)
    monkeypatch.setattr(K, "WARM_MEAN_STATES", 1 << 19)
    mdp = fastppo.garnet(600, 4, 5, gamma=0.99, seed=21)
    pis = np.stack([random_policy(mdp, 22 + i)[0] for i in range(2)])
    ev = fastppo.evaluate(mdp, pis[0], backend="cython", n_threads=1, method="richardson")
    batch = fastppo.evaluate_batch(mdp, pis, backend="cython", n_threads=1)
    for got, pi in ((ev.v, pis[0]), (batch.v[0], pis[0]), (batch.v[1], pis[1])):
        assert naive.rel_err(got, naive.evaluate(mdp, pi)[0]) <= 1e-10
    assert batch.n_matvec[0] == ev.n_matvec
    if mean:
        monkeypatch.setattr(K, "MEAN_EXTRAPOLATION", False)
        mid = fastppo.evaluate(mdp, pis[0], backend="cython", n_threads=1, method="richardson")
        assert ev.n_matvec <= mid.n_matvec
        monkeypatch.setattr(K, "MEAN_EXTRAPOLATION", True)
    # a gridworld: the sweeps give up and hand over (with the mean, from zero: zero)
    grid = fastppo.gridworld(15, 15, gamma=0.99)
    pis = np.stack([random_policy(grid, 30 + i)[0] for i in range(2)])
    batch = fastppo.evaluate_batch(grid, pis, backend="cython", n_threads=1)
    for m in range(2):
        one = fastppo.evaluate(grid, pis[m], backend="cython", n_threads=1)
        assert one.method.startswith("richardson+") and batch.method[m] == one.method
        assert batch.n_matvec[m] == one.n_matvec
        assert naive.rel_err(one.v, naive.evaluate(grid, pis[m])[0]) <= 1e-10
        assert naive.rel_err(batch.v[m], one.v) <= 1e-10


def test_solvers_use_the_one_stopping_rule():
    """A rule accepting 1e-4 makes every solver stop there: the decision is the rule's."""

    class Loose(K.StoppingRule):
        seen = 0

        def met(self, residual):
            Loose.seen += 1
            return residual <= 1e-4

    A, sysm = markov_system(60, 0.95, 1, assembled=True)
    for name, solver in K.SOLVERS.items():
        Loose.seen = 0
        tight = solver(sysm, None, K.StoppingRule(1e-12), 2000)
        loose = solver(sysm, None, Loose(1e-12), 2000)
        assert Loose.seen > 0 and loose.converged, name
        if name == "lu":  # a direct solve: one refinement step reaches round-off
            assert loose.residual <= 1e-4 and loose.n_matvec <= tight.n_matvec
            continue
        assert 1e-12 < loose.residual <= 1e-4 and loose.n_matvec < tight.n_matvec, name
    rule = K.StoppingRule(1e-8)
    assert rule.met(1e-8) and not rule.met(1.0000001e-8)
    assert rule.relative(np.array([3.0, 4.0]), 10.0) == 0.5


@pytest.mark.parametrize("gamma", [0.0, 0.9, 0.999, 0.99999])
def test_stopping_rule_floor(gamma):
    """floor = 10·eps·(1+γ)/(1−γ); max(tol, floor) is met; a stall within 10× floor (or
    tol) is accepted, above it is not."""
    floor = 10 * np.finfo(float).eps * (1 + gamma) / (1 - gamma)
    rule = K.StoppingRule(1e-20, gamma, "lin_tol")
    assert rule.floor == pytest.approx(floor, rel=1e-15) and rule.name == "lin_tol"
    assert rule.met(floor) and not rule.met(1.01 * floor)
    assert rule.accepts_stall(10 * floor) and not rule.accepts_stall(10.1 * floor)
    loose = K.StoppingRule(1e-3, gamma)
    assert loose.met(1e-3) and not loose.met(1.01e-3) and loose.accepts_stall(1e-3)


@pytest.mark.parametrize("method", ["auto", "richardson", "bicgstab", "gmres"])
def test_driver_forces_each_method_and_reports_what_ran(method):
    A, fast = markov_system(50, 0.99, 2)
    _, slow = markov_system(50, 0.99, 3, slow=True)
    for sysm, auto in ((fast, "richardson"), (slow, "richardson+bicgstab")):
        res = K.solve(sysm, stop=K.StoppingRule(1e-12), max_iter=5000, method=method)
        assert res.converged and res.method == (auto if method == "auto" else method)
        Asys = sysm.matvec
        out = np.empty(50)
        Asys(res.x, out)
        assert np.linalg.norm(sysm.b - out) <= 1e-12 * np.linalg.norm(sysm.b) * 1.01


def test_driver_chain_continues_from_the_last_iterate(monkeypatch):
    """auto: a failing BiCGSTAB hands its iterate to GMRES; products are summed."""
    _, slow = markov_system(50, 0.99, 3, slow=True)
    seen = {}

    def gmres(system, x0, stop, max_iter, restart=40):
        seen["x0"] = x0
        return K.gmres(system, x0, stop, max_iter, restart=restart)

    def failing(system, x0, stop, max_iter):
        return K.LinearResult(x0 + 1.0, 7, 0.5, False, "bicgstab", stalled=True)

    monkeypatch.setitem(K.SOLVERS, "bicgstab", failing)
    monkeypatch.setitem(K.SOLVERS, "gmres", gmres)
    res = K.solve(slow, stop=K.StoppingRule(1e-12), max_iter=5000)
    assert res.method == "richardson+bicgstab+gmres" and res.converged
    assert seen["x0"] is not None


def test_driver_raises_in_one_place():
    _, slow = markov_system(50, 0.99, 3, slow=True)
    with pytest.raises(K.ConvergenceError, match=r"richardson\+bicgstab on the markov system did "
                       r"not reach tol=1e-12 within max_iter=12 products \(relative residual"):
        K.solve(slow, stop=K.StoppingRule(1e-12), max_iter=12)
    with pytest.raises(K.ConvergenceError, match=r"^gmres on the markov system did not reach"):
        K.solve(slow, stop=K.StoppingRule(1e-12), max_iter=5, method="gmres")
    # below round-off: with the floor switched off, GMRES stalls, and the error says so,
    # naming the caller's tolerance
    rule = K.StoppingRule(1e-30, 0.99, "lin_tol")
    rule.floor, rule.target = 0.0, 1e-30
    with pytest.raises(K.ConvergenceError, match=r"gmres on the markov system stalled at relative "
                       r"residual .* above lin_tol=1e-30 and above 10x the round-off floor .*"
                       r"raise lin_tol"):
        K.solve(slow, stop=rule, max_iter=5000, method="gmres")
    # with the floor (γ = 0.99): the stall at round-off is convergence
    res = K.solve(slow, stop=K.StoppingRule(1e-30, 0.99), max_iter=5000, method="gmres")
    assert res.converged and res.residual <= 10 * K.StoppingRule(1e-30, 0.99).floor


def test_lockstep_entry_point_equals_separate_solves():
    """solve_pair: one products() call per lockstep sweep; each system leaves when done,
    sweeps on alone through products() (None for the finished side), or continues alone
    with the Krylov chain; results equal separate solves bit for bit."""
    A, fast = markov_system(40, 0.9, 4)
    B, slow = markov_system(40, 0.99, 5, slow=True)
    calls = []

    def products(xa, xb, oa, ob, exact):
        calls.append((xa is not None, xb is not None))
        if xa is not None:
            fast.matvec(xa, oa)
        if xb is not None:
            slow.matvec(xb, ob)
        return True

    for first, second in ((fast, slow), (slow, fast)):
        calls.clear()
        pf = products if first is fast else (lambda xa, xb, oa, ob, e: products(xb, xa, ob, oa, e))
        ra, rb = K.solve_pair(first, second, pf, stop=K.StoppingRule(1e-12), max_iter=5000)
        sa = K.solve(first, stop=K.StoppingRule(1e-12), max_iter=5000)
        sb = K.solve(second, stop=K.StoppingRule(1e-12), max_iter=5000)
        for r, s in ((ra, sa), (rb, sb)):
            np.testing.assert_array_equal(r.x, s.x)
            assert (r.n_matvec, r.method, r.residual) == (s.n_matvec, s.method, s.residual)
        # the lockstep lasted as long as both systems were sweeping
        richardson_fast = K.richardson(fast, None, K.StoppingRule(1e-12), 5000).n_matvec
        richardson_slow = K.richardson(slow, None, K.StoppingRule(1e-12), 5000).n_matvec
        assert calls.count((True, True)) == min(richardson_fast, richardson_slow)
        # then the system still sweeping went on alone through products()
        assert len(calls) == max(richardson_fast, richardson_slow)
    assert (ra.method, rb.method) == ("richardson+bicgstab", "richardson")
    with pytest.raises(K.ConvergenceError, match="markov system did not reach"):
        K.solve_pair(fast, slow, products, stop=K.StoppingRule(1e-12), max_iter=8)


@pytest.mark.parametrize("predict_last", [True, False])
def test_lockstep_near_tol_asks_exact_products_where_tol_is_predicted(monkeypatch, predict_last):
    """solve_pair near tol (starts within REFINE⁻¹ tol) with approximate products allowed:
    with ``PREDICT_LAST`` the sweeps ask for an exact product only where the last sweep's
    rate predicts tol, else every product is exact. Either way each result is accepted on
    an exact product at its iterate; the products here are in fact exact, so the iterates
    are those of the exact sweeps, with at most one certifying product more per system."""
    monkeypatch.setattr(K, "PREDICT_LAST", predict_last)
    A, first = markov_system(60, 0.9, 4)
    B, second = markov_system(60, 0.9, 7)
    rng = np.random.default_rng(3)
    starts = [np.linalg.solve(M, s.b) * (1 + 1e-9 * rng.normal(size=60))
              for M, s in ((A, first), (B, second))]
    stop = K.StoppingRule(1e-12, 0.9)
    calls = []

    def products(xa, xb, oa, ob, exact, inexact_allowed=True):
        if xa is not None:
            first.matvec(xa, oa)
        if xb is not None:
            second.matvec(xb, ob)
        exact = exact or not inexact_allowed
        calls.append((xa is not None, xb is not None, exact))
        return exact

    ra, rb = K.solve_pair(first, second, products, *starts, stop=stop, max_iter=100)
    mixed_calls = list(calls)
    calls.clear()
    ea, eb = K.solve_pair(first, second, lambda *a: products(*a, inexact_allowed=False),
                          *starts, stop=stop, max_iter=100)
    for r, e, side in ((ra, ea, 0), (rb, eb, 1)):
        np.testing.assert_array_equal(r.x, e.x)
        assert r.converged and r.residual == e.residual and r.method == "richardson"
        assert e.n_matvec <= r.n_matvec <= e.n_matvec + 1
        assert [c[2] for c in mixed_calls if c[side]][-1]  # accepted on an exact product
    approximate = [c for c in mixed_calls if not c[2]]
    assert bool(approximate) == predict_last


# ------------------------------------------------------------------ reward scale
SCALES = [1e-300, 2.0 ** -900, 1e-154, 1e-12, 0.37, 1e154, 1e160, 2.0 ** 900, 1e300]


def scaled_problem(mdp, reg, c):
    regc = None if reg is None else type(reg)(reg.tau * c, reg.ref)
    return mdp_with(mdp, c * mdp.r), regc


@pytest.mark.parametrize("reg", [None, fastppo.ForwardKL(0.1), fastppo.ReverseKL(0.2),
                                 fastppo.Hellinger(0.3)], ids=lambda r: type(r).__name__)
def test_solve_is_reward_scale_free(backend, reg):
    """solve(c·r) (τ → c·τ): the same policy and c·J, for c from 1e-300 to 1e300."""
    mdp = fastppo.garnet(120, 4, 3, gamma=0.99, seed=0)
    ref = fastppo.solve(mdp, reg, backend=backend)
    for c in SCALES:
        m, r = scaled_problem(mdp, reg, c)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            res = fastppo.solve(m, r, backend=backend)
        assert res.converged
        if reg is None:
            np.testing.assert_array_equal(res.policy, ref.policy)
        else:
            np.testing.assert_allclose(res.policy, ref.policy, rtol=0, atol=1e-10)
        assert abs(res.J / c - ref.J) <= 1e-11 * abs(ref.J), c
        assert naive.rel_err(res.v / c, ref.v) <= 1e-11, c


@pytest.mark.parametrize("method", ["auto", "bicgstab", "gmres"])
def test_evaluate_and_visitation_are_reward_scale_free(backend, method):
    mdp = fastppo.garnet(150, 4, 3, gamma=0.99, seed=1, locality=3)
    pi, _ = random_policy(mdp, 2)
    reg = fastppo.JensenShannon(0.3)
    ev = fastppo.evaluate(mdp, pi, reg, method=method, backend=backend)
    for c in SCALES:
        m, r = scaled_problem(mdp, reg, c)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            evc = fastppo.evaluate(m, pi, r, method=method, backend=backend)
            g = fastppo.gradient(m, np.log(pi), r, backend=backend)
        assert evc.residual <= 1e-12 and np.isfinite(evc.v).all()
        assert naive.rel_err(evc.v / c, ev.v) <= 1e-10, c
        assert naive.rel_err(mdp.to_pairs(evc.adv) / c, mdp.to_pairs(ev.adv)) <= 1e-9, c
        assert abs(evc.J / c - ev.J) <= 1e-10 * abs(ev.J)
        g1 = fastppo.gradient(mdp, np.log(pi), reg, backend=backend)
        assert naive.rel_err(g / c, g1) <= 1e-9, c
        if np.log2(c) == round(np.log2(c)):  # powers of two scale exactly: bit for bit
            np.testing.assert_array_equal(evc.v, c * ev.v)
            assert evc.n_matvec == ev.n_matvec and evc.method == ev.method


def test_solve_at_tiny_rewards_finds_the_optimum():
    """The reproduction of issue 13: rewards × 1e-12 gave J*/true = 0.96 with converged=True."""
    mdp = fastppo.garnet(200, 4, 3, gamma=0.99, seed=3)
    ref = fastppo.solve(mdp)
    for c in (1e-11, 1e-12, 1e-13):
        res = fastppo.solve(mdp_with(mdp, c * mdp.r))
        np.testing.assert_array_equal(res.policy, ref.policy)
        assert res.J / c == pytest.approx(ref.J, rel=1e-12)


# ------------------------------------------------- the methods use the evaluator
@pytest.mark.parametrize("cls", [fastppo.PPOClip, fastppo.NPG, fastppo.KLPenaltyPPO,
                                 fastppo.SoftmaxPG])
def test_inner_loops_do_not_revalidate(monkeypatch, cls):
    """After construction, iterations call neither the public evaluate/visitation/softmax
    nor the policy checks: the evaluator holds what they would recompute."""
    mdp = random_mdp(11, n_states=20, n_actions=3, gamma=0.9)
    reg = make_reg("js", mdp)
    method = cls(mdp, reg)
    import fastppo._validation as V
    import fastppo.evaluation as public

    def forbidden(*args, **kwargs):
        raise AssertionError("validating call inside the inner loop")

    for mod, name in ((V, "check_policy"), (V, "check_logits"), (V, "pair_table"),
                      (public, "evaluate"), (public, "visitation"), (public, "softmax")):
        monkeypatch.setattr(mod, name, forbidden)
    res = method.run(3)
    assert res.n_iter == 3 and np.isfinite(res.history["J"]).all()


def test_ppoclip_iteration_uses_the_lockstep_solve(monkeypatch):
    """PPOClip's outer iteration solves v and d of π_old together, and the products of
    both count in the history."""
    mdp = fastppo.garnet(200, 4, 3, gamma=0.95, seed=2)
    seen = []
    real = K.solve_pair

    def spy(*args, **kwargs):
        out = real(*args, **kwargs)
        seen.append(out[0].n_matvec + out[1].n_matvec)
        return out

    monkeypatch.setattr(K, "solve_pair", spy)
    h = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1)).run(3).history
    assert list(h["n_matvec"]) == seen


def test_policy_rows_patched_from_a_nearby_policy_equal_fresh_ones():
    """Policy iteration's consecutive deterministic policies: the rows patched from the
    previous policy's equal the rows gathered afresh, array for array; a change of shape
    (a state using two pairs, on a gridworld with rows of different lengths) gathers afresh."""
    rng = np.random.default_rng(5)
    for mdp in (fastppo.garnet(300, 4, 3, gamma=0.9, seed=2), fastppo.gridworld(9, 7, gamma=0.9),
                fastppo.queue2d(capacity=(6, 5), gamma=0.9)):
        S, a = mdp.n_states, mdp.a_indptr
        sigma = rng.integers(0, np.diff(a))
        old = np.zeros(mdp.n_pairs)
        old[a[:-1] + sigma] = 1.0
        previous = (old.copy(), policy_rows(mdp, old))
        for changed in (0, 1, S // 10, S // 2):
            pi = old.copy()
            for s in rng.choice(S, changed, replace=False):
                pi[a[s]:a[s + 1]] = 0.0
                pi[a[s] + rng.integers(0, a[s + 1] - a[s])] = 1.0
            s = int(rng.integers(S))
            if changed == S // 10 and a[s + 1] - a[s] > 1:  # a stochastic state: new layout
                pi[a[s]:a[s + 1]] = 1.0 / (a[s + 1] - a[s])
            if changed <= 1 and mdp.n_states == 300:  # garnet rows: one shape, patched
                assert _patched_rows(mdp, pi, *previous) is not None
            patched, fresh = policy_rows(mdp, pi, previous), policy_rows(mdp, pi)
            for x, y in zip(patched, fresh):
                np.testing.assert_array_equal(x, y)
            for x, y in zip(previous[1], policy_rows(mdp, old)):  # the old rows untouched
                np.testing.assert_array_equal(x, y)


def test_deterministic_patch_path_equals_the_general_one():
    """The shortcut of ``_patched_rows`` for two deterministic policies (one pair per state:
    a changed state's new pair is its only slot) gives what the general path gives: the
    same arrays, or None when a changed state's row has another length (the pendulum's
    rows differ between actions); either way ``policy_rows`` equals the fresh gather."""
    rng = np.random.default_rng(11)
    declined = 0
    for mdp in (fastppo.garnet(300, 4, 3, gamma=0.9, seed=2), fastppo.gridworld(9, 7, gamma=0.9),
                fastppo.queue2d(capacity=(6, 5), gamma=0.9), fastppo.pendulum(12, 9, 3)):
        S, a = mdp.n_states, mdp.a_indptr
        old = np.zeros(mdp.n_pairs)
        old[a[:-1] + rng.integers(0, np.diff(a))] = 1.0
        rows = policy_rows(mdp, old)
        for changed in (0, 1, 3, S // 10, S // 3):
            pi = old.copy()
            for s in rng.choice(S, changed, replace=False):
                pi[a[s]:a[s + 1]] = 0.0
                pi[a[s] + rng.integers(0, a[s + 1] - a[s])] = 1.0
            fast = _patched_rows(mdp, pi, old, rows, deterministic=True)
            general = _patched_rows(mdp, pi, old, rows)
            assert (fast is None) == (general is None)
            declined += fast is None
            fresh = policy_rows(mdp, pi)
            for x, y, z in zip(fast or fresh, general or fresh, fresh):
                np.testing.assert_array_equal(x, z)
                np.testing.assert_array_equal(y, z)
            for x, y in zip(policy_rows(mdp, pi, (old, rows)), fresh):
                np.testing.assert_array_equal(x, y)
            # in place (the evaluator's own rows): into the old arrays, or nothing written
            mine = tuple(x.copy() for x in rows)
            patched = _patched_rows(mdp, pi, old, mine, deterministic=True, in_place=True)
            if patched is None:
                for x, y in zip(mine, rows):
                    np.testing.assert_array_equal(x, y)
            else:
                assert all(x is y for x, y in zip(patched[2:], mine[2:]))
                for x, y in zip(patched, fresh):
                    np.testing.assert_array_equal(x, y)
    assert declined > 0  # some changes moved the layout (and some did not)


def test_power_of_two_scaling_is_ldexp_bit_for_bit():
    """``_krylov.pow2_scaled`` (a product by 2^e) gives np.ldexp's bits, including results
    that round into the subnormal range, overflow, signed zeros and non-finite entries."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.standard_normal(1000) * 10.0 ** rng.integers(-300, 300, 1000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 5e-324, 2.2250738585072014e-308,
                         1.7976931348623157e308, 3.0 * 2.0 ** -1070]])
    for e in (-1100, -1074, -1030, -1022, -600, -5, -1, 0, 1, 7, 600, 1023, 1030):
        with np.errstate(over="ignore", under="ignore"):
            got, want = K.pow2_scaled(x, e), np.ldexp(x, e)
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


@pytest.mark.parametrize("method", ["auto", "sgs"])
def test_evaluation_writes_q_into_the_given_buffer(backend, method):
    """``q_out``: Q̃ written into the caller's buffer (policy iteration's two buffers),
    the same numbers as into a new array, for the sweeps' rows and for a q_values pass."""
    mdp = fastppo.pendulum(12, 10, 3, gamma=0.99)
    pi, _ = random_policy(mdp, 4)
    E = Evaluator(mdp, None, backend, 1, method=method)
    E.load(pi)
    fresh = E.evaluation(tol=1e-12, advantages=False)
    buf = np.full(mdp.n_pairs, np.nan)
    E.load(pi)
    given = E.evaluation(tol=1e-12, advantages=False, q_out=buf)
    assert given.q is buf
    np.testing.assert_array_equal(buf, fresh.q)
    np.testing.assert_array_equal(given.v, fresh.v)


def test_slow_sweeps_near_tol_go_on():
    """Sweeps slower than MAX_RATE hand over to the Krylov methods unless REACH_SWEEPS
    more at their mean rate meet tol: A = I − diag(0.65), a sweep multiplies the error by
    0.65 exactly. From a start 2e-11 off, giving up after MIN_SWEEPS products would
    assemble a matrix where three more sweeps finish; from zero the sweeps give up."""
    n, rate = 50, 0.65
    A = np.eye(n) * (1.0 - rate)
    b = np.random.default_rng(3).normal(size=n)
    x = b / (1.0 - rate)
    system = K.System(lambda v, out: np.matmul(A, v, out=out), b, "diagonal system")
    stop = K.StoppingRule(1e-12)
    near = x + 2e-11 * np.linalg.norm(b) / (1.0 - rate) * np.ones(n) / np.sqrt(n)
    res = K.solve(system, near, stop=stop, max_iter=200)
    assert res.method == "richardson" and res.residual <= 1e-12
    # the residual falls by exactly 0.65 per sweep: 2e-11 · 0.65^7 < 1e-12 < 2e-11 · 0.65^6
    assert res.n_matvec == 8
    # A is a multiple of I: the relative error is the relative residual
    assert np.linalg.norm(res.x - x) <= 1.0000001 * res.residual * np.linalg.norm(x)
    far = K.solve(system, None, stop=stop, max_iter=200)
    assert far.method.startswith("richardson+") and far.residual <= 1e-12
    # the rule itself: 4.3e-12 after four products from 1.7e-11 (rate 0.63) is in reach
    assert K.within_reach(4.28e-12, 1.72e-11, 4, 1e-12)
    assert not K.within_reach(4.28e-12, 1.72e-11, 4, 1e-13)
    assert not K.within_reach(0.5, 1.0, 4, 1e-12)
    assert not K.within_reach(2e-11, 1.72e-11, 4, 1e-12)  # rising: no rate
    assert not K.within_reach(1e-12, 1.72e-11, 1, 1e-12)


@pytest.mark.parametrize("backend_name", ["cython", "numba", "numpy"])
def test_ppoclip_on_blocked_entries_is_bit_for_bit_the_same(backend_name, monkeypatch):
    """From BLOCKED_STATES states on, the exact fused passes run on P's entries in column
    blocks (``blocked_products``) once BLOCKED_AFTER of them ran: the same iterates, passes
    and products as on P's own rows, bit for bit, on 1 and 2 threads."""
    import fastppo._evaluator as Ev
    mdp = fastppo.garnet(700, 4, 6, seed=2)
    monkeypatch.setattr(Ev, "BLOCKED_AFTER", 3)
    monkeypatch.setattr(Ev, "BLOCK_BYTES", 16 * 700 * 2 // 5)  # five blocks of columns
    for n_threads in (1, 2):
        runs = []
        for states in (None, 1):
            monkeypatch.setattr(Ev, "BLOCKED_STATES", states)
            ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend=backend_name,
                                  n_threads=n_threads)
            ppo.run(5)
            runs.append((ppo, ppo._evaluator._blocked))
        (plain, none), (blocked, layout) = runs
        assert none is None and layout is not None and layout[1].shape == (5, 2)
        np.testing.assert_array_equal(blocked.logits, plain.logits)
        np.testing.assert_array_equal(blocked._v, plain._v)
        np.testing.assert_array_equal(blocked._d, plain._d)
        for key in ("J", "n_passes", "n_matvec"):
            np.testing.assert_array_equal(blocked.history[key], plain.history[key], err_msg=key)


def test_the_blocked_copy_ends_the_float32_corrections(monkeypatch):
    """Mixed precision sweeps stop once the copy in column blocks is made (an exact pass
    on it costs less than a pass of corrections): the evaluator's products are exact from
    then on, and the run agrees with one on exact products throughout."""
    import fastppo._evaluator as Ev
    mdp = fastppo.garnet(700, 4, 6, seed=2)
    monkeypatch.setattr(Ev, "MIXED_STATES", 1)
    monkeypatch.setattr(Ev, "BLOCKED_AFTER", 3)
    monkeypatch.setattr(Ev, "BLOCK_BYTES", 16 * 700 * 2 // 5)
    runs = {}
    for states in (None, 1):
        monkeypatch.setattr(Ev, "BLOCKED_STATES", states)
        runs[states] = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend="cython",
                                       n_threads=2)
        runs[states].run(6)
    still, ended = runs[None]._evaluator, runs[1]._evaluator
    assert still.mixed and still._blocked is None
    assert not ended.mixed and ended._blocked is not None
    x = np.ones(mdp.n_states)
    assert ended.products(x, x, np.empty_like(x), np.empty_like(x), exact=False)
    monkeypatch.setattr(Ev, "MIXED_STATES", 1 << 40)
    monkeypatch.setattr(Ev, "BLOCKED_STATES", None)
    exact = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend="cython", n_threads=2)
    exact.run(6)
    assert not exact._evaluator.mixed
    np.testing.assert_allclose(runs[1].logits, exact.logits, rtol=0, atol=1e-9)
    np.testing.assert_allclose(runs[1].history["J"], exact.history["J"], rtol=1e-11)


def test_no_column_blocks_for_float32_rows_or_below_the_size(monkeypatch):
    """The blocked layout is for float64 P from BLOCKED_STATES states on: float32 rows
    (read with their row sums) and smaller MDPs keep the products on P's own rows."""
    import fastppo._evaluator as Ev
    monkeypatch.setattr(Ev, "BLOCKED_AFTER", 0)
    for dtype, states in ((np.float32, 1), (np.float64, 701)):
        monkeypatch.setattr(Ev, "BLOCKED_STATES", states)
        ppo = fastppo.PPOClip(fastppo.garnet(700, 4, 6, seed=2, dtype=dtype),
                              fastppo.ForwardKL(0.1), backend="cython", n_threads=1)
        ppo.run(2)
        assert ppo._evaluator._blocked is None
        assert ppo._evaluator._fused_passes > 0
