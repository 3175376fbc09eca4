"""Policy iteration's paths (τ = 0) against a dense policy iteration: the first policy
from one value-iteration sweep, evaluations that skip Richardson's sweeps once they
stalled (and fall back to "auto" when the solver they skip to fails), the exact
evaluation of a near-stable step, and ``sigma`` from a deterministic policy."""
import numpy as np
import pytest

import fastppo
import fastppo._krylov as K
import fastppo.solvers as S
import naive


def dense_policy_iteration(mdp):
    """(v*, optimal pairs) by policy iteration on dense arrays (np.linalg.solve), from the
    policy greedy in r, to a stable policy."""
    states, P, r = naive.dense(mdp)
    n, gamma = mdp.n_states, mdp.gamma
    starts = [int(k) for k in mdp.a_indptr[:-1]]
    ends = [int(k) for k in mdp.a_indptr[1:]]
    choice = [lo + int(np.argmax(r[lo:hi])) for lo, hi in zip(starts, ends)]
    for _ in range(10 * n + 10):
        v = np.linalg.solve(np.eye(n) - gamma * P[choice], r[choice])
        q = r + gamma * P @ v
        new = [lo + int(np.argmax(q[lo:hi])) for lo, hi in zip(starts, ends)]
        # keep the current action on ties within round-off (no cycling between equals)
        new = [c if q[c] >= q[m] - 1e-12 * max(1.0, abs(q[m])) else m
               for c, m in zip(choice, new)]
        if new == choice:
            return v, choice
        choice = new
    raise AssertionError("dense policy iteration did not stabilise")


def slow_mixing_mdps():
    return {
        "queue2d": fastppo.queue2d(capacity=(11, 9), gamma=0.999),
        "pendulum": fastppo.pendulum(15, 13, gamma=0.995),
        "gridworld": fastppo.gridworld(9, 11, gamma=0.999),
        "local": fastppo.garnet(300, 4, 3, gamma=0.999, seed=2, locality=3),
        "garnet": fastppo.garnet(300, 4, 3, gamma=0.99, seed=2),
    }


def record_methods(monkeypatch):
    methods = []
    evaluation = S.Evaluator.evaluation

    def spy(self, v0=None, tol=None, **options):
        ev = evaluation(self, v0, tol=tol, **options)
        methods.append(ev.method)
        return ev

    monkeypatch.setattr(S.Evaluator, "evaluation", spy)
    return methods


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
@pytest.mark.parametrize("name", list(slow_mixing_mdps()))
def test_solve_matches_dense_policy_iteration(backend, name, monkeypatch):
    mdp = slow_mixing_mdps()[name]
    v_star, _ = dense_policy_iteration(mdp)
    methods = record_methods(monkeypatch)
    res = fastppo.solve(mdp, backend=backend, n_threads=1)
    assert res.converged
    scale = max(1.0, np.abs(v_star).max())
    assert np.abs(res.v - v_star).max() <= 1e-9 * scale
    # the returned values are those of the returned (deterministic) policy
    pi = mdp.to_pairs(res.policy)
    assert set(np.unique(pi)) <= {0.0, 1.0}
    np.testing.assert_allclose(res.v, naive.evaluate(mdp, pi)[0], rtol=0, atol=1e-9 * scale)
    assert res.bellman_residual <= 1e-9 * scale
    np.testing.assert_array_equal(res.sigma, mdp.to_sigma(res.policy))
    # plain sweeps until they first stall; from then on the solver that finished that one
    stalled = [i for i, m in enumerate(methods) if m in ("richardson+sgs", "richardson+lu")]
    first = stalled[0] if stalled else len(methods)
    assert all(m == "richardson" for m in methods[:first]), methods
    assert all(m == methods[first].split("+")[1] for m in methods[first + 1:]), methods
    if name in ("queue2d", "gridworld", "local"):
        assert first < len(methods) - 1  # slow mixing: the skipping path is exercised


def test_the_skipped_to_solver_failing_falls_back_to_auto(monkeypatch):
    """After the first evaluation, the forced LU and SGS-BiCGSTAB fail (always): the
    evaluations that start with the one the first evaluation ended with run "auto" again
    from the same start; the result is unchanged."""
    mdp = fastppo.queue2d(capacity=(11, 9), gamma=0.999)
    v_star, _ = dense_policy_iteration(mdp)
    failures = []

    def failing(name):
        real = K.SOLVERS[name]

        def solver(system, x0, stop, max_iter, **kwargs):
            if len(methods) == 0:  # the first evaluation: the real solver
                return real(system, x0, stop, max_iter, **kwargs)
            failures.append(name)
            x = np.zeros(system.b.shape[0]) if x0 is None else x0.copy()
            return K.LinearResult(x, 1, np.inf, False, name, stalled=True)

        return solver

    methods = record_methods(monkeypatch)
    for name in ("sgs", "lu"):
        monkeypatch.setitem(K.SOLVERS, name, failing(name))
    res = fastppo.solve(mdp, n_threads=1)
    assert res.converged and failures
    assert methods[0] in ("richardson+sgs", "richardson+lu")  # then skipped to: it failed
    assert np.abs(res.v - v_star).max() <= 1e-9 * max(1.0, np.abs(v_star).max())
    # every later evaluation ran "auto" again after its forced solver failed ("auto"'s
    # cheap LU is bound to the real function: it still finishes the chain here)
    assert len(failures) >= len(methods) - 1
    assert all(m.startswith("richardson") for m in methods[1:]), methods


def test_first_policy_is_greedy_after_one_value_iteration_sweep():
    mdp = fastppo.garnet(50, 3, 4, gamma=0.9, seed=5)
    _, P, r = naive.dense(mdp)
    E = S.Evaluator(mdp, None, "numpy", 1)
    pi = S._first_policy(E, None, None)
    v1 = np.maximum.reduceat(r, mdp.a_indptr[:-1])  # T 0
    q = r + mdp.gamma * P @ v1
    best = np.maximum.reduceat(q, mdp.a_indptr[:-1])
    assert np.array_equal(np.add.reduceat(pi, mdp.a_indptr[:-1]), np.ones(mdp.n_states))
    assert np.allclose(q[pi == 1.0], best, rtol=0, atol=1e-12)


def test_sigma_of_a_stochastic_policy_is_its_argmax():
    mdp = fastppo.garnet(40, 3, 4, gamma=0.9, seed=6)
    pi = fastppo.softmax(mdp, np.random.default_rng(0).standard_normal(mdp.n_pairs))
    np.testing.assert_array_equal(S._sigma(mdp, pi), mdp.to_sigma(pi))
    det = (np.arange(mdp.n_pairs) == mdp.a_indptr[:-1][mdp.s_indices] + 1).astype(float)
    np.testing.assert_array_equal(S._sigma(mdp, det), mdp.to_sigma(det))
    assert S._sigma(mdp, det).dtype == np.int64


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
@pytest.mark.parametrize("name", ["pendulum", "garnet", "gridworld"])
def test_fused_greedy_step_gives_the_same_solve(backend, name, monkeypatch):
    """τ = 0: Q̃ and the greedy step in one pass (``Evaluator.q_greedy``, which names the
    pairs the load then takes) give the same iterates as ``q_values`` + ``greedy`` + a
    load that finds the pairs itself, bit for bit, with the fused step run every step."""
    mdp = slow_mixing_mdps()[name]
    calls = []
    q_greedy = S.Evaluator.q_greedy

    def spy(self, v, q_out, pi_out, value_out):
        pairs = q_greedy(self, v, q_out, pi_out, value_out)
        assert np.array_equal(pairs, np.flatnonzero(pi_out))  # one pair per state, π's
        calls.append(pairs.shape[0])
        return pairs

    monkeypatch.setattr(S.Evaluator, "q_greedy", spy)
    fused = fastppo.solve(mdp, backend=backend, n_threads=1)
    monkeypatch.setattr(S, "FUSED_GREEDY", False)
    plain = fastppo.solve(mdp, backend=backend, n_threads=1)
    assert len(calls) == fused.n_iter and set(calls) == {mdp.n_states}
    for field in ("v", "q", "adv", "policy", "sigma"):
        np.testing.assert_array_equal(getattr(fused, field), getattr(plain, field), err_msg=field)
    assert (fused.n_iter, fused.n_matvec, fused.n_passes) == (plain.n_iter, plain.n_matvec,
                                                                plain.n_passes)


def test_solve_pair_gives_each_solution_one_sweep_ahead():
    """``ahead``: each result also holds x + r, r = b − A x the residual of the exact
    product that certified x (not certified itself, no shift along 1). For A = I − γM its
    residual is γ M r: at most γ times x's in ∞-norm for the value system (M = P_π,
    row-stochastic) and in 1-norm for the visitation (M = P_πᵀ). The solutions are those
    of a solve without it, bit for bit."""
    mdp = fastppo.garnet(60, 3, 4, gamma=0.9, seed=4)
    pi = naive.softmax(mdp, np.random.default_rng(1).normal(size=mdp.n_pairs))
    M = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    c, mu = naive.r_pi(mdp, pi), np.full(mdp.n_states, 1.0 / mdp.n_states)

    def products(xv, xd, ov, od, exact=True):
        if xv is not None:
            ov[:] = M @ xv
        if xd is not None:
            od[:] = M.T @ xd
        return True

    def solve(ahead):
        value = K.System(lambda x, out: np.copyto(out, M @ x), c, "value",
                         shift=mdp.gamma / (1 - mdp.gamma))
        visit = K.System(lambda x, out: np.copyto(out, M.T @ x), mu, "visitation")
        # the visitation from its solution's mass, as the evaluator starts it
        return K.solve_pair(value, visit, products, None, mu / (1 - mdp.gamma),
                            stop=K.StoppingRule(1e-9, mdp.gamma), max_iter=200, ahead=ahead)

    (v0, d0), (v1, d1) = solve(False), solve(True)
    assert v1.method == d1.method == "richardson", (v1.method, d1.method)
    assert v0.ahead is None and d0.ahead is None
    np.testing.assert_array_equal(v1.x, v0.x)
    np.testing.assert_array_equal(d1.x, d0.x)
    for res, A, b, order in ((v1, M, c, np.inf), (d1, M.T, mu, 1)):
        r = b - A @ res.x
        np.testing.assert_allclose(res.ahead, res.x + r, rtol=1e-14, atol=0)
        behind, ahead = (np.linalg.norm(b - A @ y, order) for y in (res.x, res.ahead))
        assert 0 < ahead <= mdp.gamma * behind * (1 + 1e-9), order
