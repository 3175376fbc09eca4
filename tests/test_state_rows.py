"""The value sweeps' products on P_π's entries in the states' rows (issue 17, target 1).

``state_weights`` makes π(k) P[j] in double; ``state_matvec`` reads them one row per state
as stored with uint16 column indices, a row in eight partial sums (an AVX-512 register's
lanes where the CPU has them): against a loop in that order (bit for bit), a plain loop
and the NumPy reference, the Cython and Numba twins the same bits, 1 and 2 threads.
``evaluate`` on them (``_evaluator.STATE_ROWS``) agrees with np.linalg.solve, its residual
is a true float64 residual at most tol, and the states' rows did run.
"""
import numpy as np
import pytest

import fastppo
import fastppo._evaluator as evaluator
import naive
from conftest import random_mdp, random_policy
from fastppo._backend import get_kernel
from fastppo._evaluator import Evaluator

COMPILED = ["numba", "cython"]
REL = 1e-10  # solved to a relative residual of 1e-12 (as test_narrow_indices.py)
EMPTY = np.empty(0)


def loop_product(mdp, pi, x):
    """(weights, x − γ P_π x) by loops over the entries in P's order."""
    weights = np.empty(mdp.p_data.shape[0])
    px = np.zeros(mdp.n_states)
    for s in range(mdp.n_states):
        for k in range(mdp.a_indptr[s], mdp.a_indptr[s + 1]):
            for j in range(mdp.p_indptr[k], mdp.p_indptr[k + 1]):
                weights[j] = pi[k] * mdp.p_data[j]
                px[s] += weights[j] * x[mdp.p_indices[j]]
    return weights, x - mdp.gamma * px


def eight_sums(mdp, weights, x):
    """x − γ P_π x with each state's row in the kernels' eight partial sums: entry j into
    sum (j − start) mod 8 while eight remain, the rest into the first, combined as
    ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))."""
    state_indptr = mdp.p_indptr[mdp.a_indptr]
    out = np.empty(mdp.n_states)
    for s in range(mdp.n_states):
        start, stop = state_indptr[s], state_indptr[s + 1]
        full = start + (stop - start) // 8 * 8
        a = [0.0] * 8
        for j in range(start, stop):
            lane = (j - start) % 8 if j < full else 0
            a[lane] = a[lane] + weights[j] * x[mdp.p_indices[j]]
        out[s] = x[s] - mdp.gamma * (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))
    return out


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
def test_state_matvec_matches_loops_and_the_twins_agree(n_threads):
    for mdp in (random_mdp(41, n_states=23, n_actions=3, gamma=0.9, density=0.3),
                random_mdp(42, n_states=19, n_actions=4, gamma=0.9, rectangular=False, density=0.3),
                fastppo.garnet(500, 3, 7, gamma=0.95, seed=3)):
        S = mdp.n_states
        x = np.random.default_rng(4).normal(size=S)
        pi = random_policy(mdp, 5, sharp=2.0)[0]
        pi[mdp.a_indptr[:-1][::2]] = 0.0  # pairs with π = 0: weight 0
        weights, want = loop_product(mdp, pi, x)
        lanes = eight_sums(mdp, weights, x)
        rows_of = np.diff(mdp.p_indptr[mdp.a_indptr])
        assert (rows_of % 8 != 0).any() and (rows_of >= 8).any()  # full groups and the rest
        rows = mdp.p_indptr[mdp.a_indptr], mdp._transitions.narrow_indices(S)
        for which in [*COMPILED, "numpy"]:
            w = np.full(weights.shape, np.nan)
            get_kernel("state_weights", which)(mdp.a_indptr, mdp.p_indptr, mdp.p_data, pi, w,
                                               n_threads)
            np.testing.assert_array_equal(w, weights)
            got = np.full(S, np.nan)
            get_kernel("state_matvec", which)(*rows, w, mdp.gamma, x, got, n_threads)
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
            if which != "numpy":  # the eight sums' bits, on both twins
                np.testing.assert_array_equal(got, lanes)


def _counted(monkeypatch):
    """Counts the products the evaluator's sweeps ran on the states' rows
    (Evaluator._state_matvec returning True)."""
    count = [0]
    product = Evaluator._state_matvec

    def counted(self, *args):
        ran = product(self, *args)
        count[0] += ran
        return ran

    monkeypatch.setattr(Evaluator, "_state_matvec", counted)
    return count


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_solves_on_state_rows_match_dense_solve_and_are_certified(which, n_threads, monkeypatch):
    monkeypatch.setattr(evaluator, "STATE_ROWS", 1)
    count = _counted(monkeypatch)
    mdp = fastppo.garnet(400, 4, 6, gamma=0.99, seed=9)
    pi = random_policy(mdp, 10)[0]
    mu = np.random.default_rng(11).dirichlet(np.ones(mdp.n_states))
    A = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    c = naive.r_pi(mdp, pi)
    tol = 1e-12
    ev = fastppo.evaluate(mdp, pi, backend=which, n_threads=n_threads, tol=tol)
    assert count[0] > 0 and ev.method == "richardson"
    vis = fastppo.visitation(mdp, pi, mu, backend=which, n_threads=n_threads, tol=tol,
                             full_output=True)  # on the pairs' rows, as before
    assert vis.method == "richardson"
    # certified: the true float64 residual of each returned solution is at most tol
    assert np.linalg.norm(c - A @ ev.v) / np.linalg.norm(c) <= tol
    y = vis.d / (1.0 - mdp.gamma)
    assert np.linalg.norm(mu - A.T @ y) / np.linalg.norm(mu) <= tol * (1 + 1e-3)
    v, q, adv = naive.evaluate(mdp, pi)
    for got, want in ((ev.v, np.linalg.solve(A, c)), (ev.v, v), (ev.q, q), (ev.adv, adv),
                      (vis.d, naive.visitation(mdp, pi, mu))):
        assert naive.rel_err(got, want) <= REL
    # and the same to these tolerances on the pairs' rows
    monkeypatch.setattr(evaluator, "STATE_ROWS", None)
    off = fastppo.evaluate(mdp, pi, backend=which, n_threads=n_threads, tol=tol)
    assert naive.rel_err(ev.v, off.v) <= REL


@pytest.mark.parametrize("which", COMPILED)
def test_state_rows_give_the_same_bits_on_both_twins_and_thread_counts(which, monkeypatch):
    monkeypatch.setattr(evaluator, "STATE_ROWS", 1)
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=12)
    pi = random_policy(mdp, 13)[0]
    out = {}
    for backend in COMPILED:
        for n_threads in (1, 2):
            ev = fastppo.evaluate(mdp, pi, backend=backend, n_threads=n_threads)
            d = fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads)
            out[backend, n_threads] = (ev.v, ev.q, d)
    first = out["cython", 1]
    for got in out.values():
        for a, b in zip(got, first):
            np.testing.assert_array_equal(a, b)


def test_where_state_rows_apply(monkeypatch):
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=14)
    pi = random_policy(mdp, 15)[0]
    det = np.zeros(mdp.n_pairs)
    det[mdp.a_indptr[:-1]] = 1.0
    monkeypatch.setattr(evaluator, "STATE_ROWS", 1)
    for which, policy, applies in (("cython", pi, True), ("numba", pi, True),
                                   ("numpy", pi, False), ("cython", det, False)):
        E = Evaluator(mdp, None, which, 1)
        E.load(policy)
        assert E._state_rows_apply() == applies, which
        if applies:
            rows = E._state_rows()
            assert rows[1].dtype == np.uint16 and rows[2].dtype == np.float64
    for threshold in (None, mdp.n_states + 1):
        monkeypatch.setattr(evaluator, "STATE_ROWS", threshold)
        E = Evaluator(mdp, None, "cython", 1)
        E.load(pi)
        assert not E._state_rows_apply()


@pytest.mark.parametrize("which", COMPILED)
def test_slow_sweeps_give_up_after_as_many_products(which, monkeypatch):
    """On a slow-mixing MDP the sweeps on the states' rows hand over after as many
    products as on the pairs' rows (the same decisions on another order of the sums), and
    the solve that follows is accurate."""
    from fastppo import _krylov

    mdp = fastppo.gridworld(20, 20, gamma=0.99)
    pi = random_policy(mdp, 16)[0]
    mu = np.random.default_rng(17).dirichlet(np.ones(mdp.n_states))
    sweeps = {"on": [], "off": []}
    richardson = _krylov.SOLVERS["richardson"]
    key = "on"

    def counted(system, *args, **kwargs):
        res = richardson(system, *args, **kwargs)
        sweeps[key].append((res.n_matvec, res.converged))
        return res

    monkeypatch.setitem(_krylov.SOLVERS, "richardson", counted)
    count = _counted(monkeypatch)
    out = {}
    for key in ("on", "off"):
        monkeypatch.setattr(evaluator, "STATE_ROWS", 1 if key == "on" else None)
        out[key] = (fastppo.evaluate(mdp, pi, backend=which, n_threads=1),
                    fastppo.visitation(mdp, pi, mu, backend=which, n_threads=1, full_output=True))
        if key == "on":
            assert count[0] > 0  # the states' rows ran
    assert len(sweeps["on"]) == 2 and sweeps["on"] == sweeps["off"]
    assert not any(converged for _, converged in sweeps["on"])  # they handed over
    for a, b in zip(out["on"], out["off"]):
        assert a.method == b.method
    v, _, _ = naive.evaluate(mdp, pi)
    assert naive.rel_err(out["on"][0].v, v) <= REL
    assert naive.rel_err(out["on"][1].d, naive.visitation(mdp, pi, mu)) <= REL
