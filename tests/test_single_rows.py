"""Richardson's corrections on P_π's entries in float32 (issue 17, target 1).

``correction_weights`` rounds π(k) P[j] to float32; ``correction_products`` reads them one
row per state as stored (no row re-normalised), with int32 or uint16 column indices, and
sums in double: against a loop reference and the NumPy reference, the Cython and Numba
twins the same bits, 1 and 2 threads. ``evaluate`` and ``visitation`` with the corrections on
(``_evaluator.SINGLE_ROWS``) agree with np.linalg.solve, their residuals are true float64
residuals at most tol (every result certified by an exact product), and corrections did
run.
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


def loop_products(mdp, pi, x, y):
    """(weights, x − γ P̂_π x, y − γ P̂_πᵀ y) by loops over the entries, P̂_π's entries
    π(k) P[j] rounded to float32 (rows as stored), the products in double."""
    S, g = mdp.n_states, mdp.gamma
    weights = np.empty(mdp.p_data.shape[0], dtype=np.float32)
    px, py = np.zeros(S), np.zeros(S)
    for s in range(S):
        for k in range(mdp.a_indptr[s], mdp.a_indptr[s + 1]):
            for j in range(mdp.p_indptr[k], mdp.p_indptr[k + 1]):
                weights[j] = np.float32(pi[k] * mdp.p_data[j])
                t, w = mdp.p_indices[j], float(weights[j])
                px[s] += w * x[t]
                py[t] += w * y[s]
    return weights, x - g * px, y - g * py


def call(k, rows, x, y, n_chunks, n_threads):
    S = rows[0].shape[0] - 1
    ox, oy = np.full(S, np.nan), np.full(S, np.nan)
    k(*rows, x, y, ox if x.shape[0] else EMPTY, oy if y.shape[0] else EMPTY,
      np.full((n_chunks, 2 * S), np.nan), n_threads)
    return ox, oy


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
def test_correction_products_match_a_loop_and_the_twins_agree(n_threads):
    for mdp in (random_mdp(41, n_states=23, n_actions=3, gamma=0.9, density=0.3),
                random_mdp(42, n_states=19, n_actions=4, gamma=0.9, rectangular=False, density=0.3),
                fastppo.garnet(500, 3, 7, gamma=0.95, seed=3)):
        S = mdp.n_states
        rng = np.random.default_rng(4)
        x, y = rng.normal(size=S), rng.normal(size=S)
        pi = random_policy(mdp, 5, sharp=2.0)[0]
        pi[mdp.a_indptr[:-1][::2]] = 0.0  # pairs with π = 0: weight 0
        weights, *want = loop_products(mdp, pi, x, y)
        state_indptr = mdp.p_indptr[mdp.a_indptr]
        narrow = mdp._transitions.narrow_indices(S)
        got = {}
        for which in [*COMPILED, "numpy"]:
            w = np.full(weights.shape, np.nan, dtype=np.float32)
            get_kernel("correction_weights", which)(mdp.a_indptr, mdp.p_indptr, mdp.p_data, pi,
                                                    w, n_threads)
            np.testing.assert_array_equal(w, weights)
            k = get_kernel("correction_products", which)
            for indices in (mdp.p_indices, narrow):
                rows = (state_indptr, indices, w, mdp.gamma)
                for n_chunks in (2, 3):
                    both = call(k, rows, x, y, n_chunks, n_threads)
                    ox = call(k, rows, x, EMPTY, n_chunks, n_threads)[0]
                    oy = call(k, rows, EMPTY, y, n_chunks, n_threads)[1]
                    for a, b in zip(both, want):
                        np.testing.assert_allclose(a, b, rtol=1e-13, atol=1e-13)
                    # one side alone: the same bits as with both
                    np.testing.assert_array_equal(ox, both[0])
                    np.testing.assert_array_equal(oy, both[1])
                    got.setdefault(which, []).append(both)
        for which in COMPILED:  # the gather: the same bits for any chunks and indices
            for a in got[which]:
                np.testing.assert_array_equal(a[0], got[which][0][0])
        for a, b in zip(got["numba"], got["cython"]):  # the twins: identical bits
            np.testing.assert_array_equal(a[0], b[0])
            np.testing.assert_array_equal(a[1], b[1])


def _counted(monkeypatch):
    """Counts the corrections the evaluator's sweeps ran (Evaluator._sweep returning True)."""
    count = [0]
    sweep = Evaluator._sweep

    def counted(self, side, x, out):
        ran = sweep(self, side, x, out)
        count[0] += ran
        return ran

    monkeypatch.setattr(Evaluator, "_sweep", counted)
    return count


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_solves_on_corrections_match_dense_solve_and_are_certified(which, n_threads, monkeypatch):
    monkeypatch.setattr(evaluator, "SINGLE_ROWS", 1)
    count = _counted(monkeypatch)
    mdp = fastppo.garnet(400, 4, 6, gamma=0.99, seed=9)
    pi = random_policy(mdp, 10)[0]
    mu = np.random.default_rng(11).dirichlet(np.ones(mdp.n_states))
    A = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    c = naive.r_pi(mdp, pi)
    tol = 1e-12
    ev = fastppo.evaluate(mdp, pi, backend=which, n_threads=n_threads, tol=tol)
    n_value = count[0]
    assert n_value > 0 and ev.method == "richardson"
    vis = fastppo.visitation(mdp, pi, mu, backend=which, n_threads=n_threads, tol=tol,
                             full_output=True)
    assert count[0] > n_value and vis.method == "richardson"
    # certified: the true float64 residual of each returned solution is at most tol
    assert np.linalg.norm(c - A @ ev.v) / np.linalg.norm(c) <= tol
    y = vis.d / (1.0 - mdp.gamma)
    assert np.linalg.norm(mu - A.T @ y) / np.linalg.norm(mu) <= tol * (1 + 1e-3)
    v, q, adv = naive.evaluate(mdp, pi)
    for got, want in ((ev.v, np.linalg.solve(A, c)), (ev.v, v), (ev.q, q), (ev.adv, adv),
                      (vis.d, naive.visitation(mdp, pi, mu))):
        assert naive.rel_err(got, want) <= REL
    # and the same to these tolerances with the corrections off
    monkeypatch.setattr(evaluator, "SINGLE_ROWS", None)
    off = fastppo.evaluate(mdp, pi, backend=which, n_threads=n_threads, tol=tol)
    assert naive.rel_err(ev.v, off.v) <= REL


@pytest.mark.parametrize("which", COMPILED)
def test_corrections_give_the_same_bits_on_both_twins_and_thread_counts(which, monkeypatch):
    monkeypatch.setattr(evaluator, "SINGLE_ROWS", 1)
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


def test_where_corrections_apply(monkeypatch):
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=14)
    pi = random_policy(mdp, 15)[0]
    det = np.zeros(mdp.n_pairs)
    det[mdp.a_indptr[:-1]] = 1.0
    monkeypatch.setattr(evaluator, "SINGLE_ROWS", 1)
    for which, policy, kw, applies in (("cython", pi, {}, True), ("numba", pi, {}, True),
                                       ("numpy", pi, {}, False), ("cython", det, {}, False),
                                       ("cython", pi, {"mixed": True}, False)):
        E = Evaluator(mdp, None, which, 1, **kw)
        E.load(policy)
        assert E._corrects() == applies, (which, kw)
        if applies:
            rows = E._correction_rows()
            assert rows[1].dtype == np.uint16 and rows[2].dtype == np.float32
    for threshold in (None, mdp.n_states + 1):
        monkeypatch.setattr(evaluator, "SINGLE_ROWS", threshold)
        E = Evaluator(mdp, None, "cython", 1)
        E.load(pi)
        assert not E._corrects()



@pytest.mark.parametrize("which", COMPILED)
def test_slow_sweeps_give_up_after_as_many_products(which, monkeypatch):
    """On a slow-mixing MDP the sweeps with corrections hand over after as many products
    as with exact ones (slowness judged on every residual, giving up on an exact one),
    and the solve that follows is accurate."""
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
        monkeypatch.setattr(evaluator, "SINGLE_ROWS", 1 if key == "on" else None)
        out[key] = (fastppo.evaluate(mdp, pi, backend=which, n_threads=1),
                    fastppo.visitation(mdp, pi, mu, backend=which, n_threads=1, full_output=True))
        if key == "on":
            assert count[0] > 0  # corrections ran
    assert len(sweeps["on"]) == 2 and sweeps["on"] == sweeps["off"]
    assert not any(converged for _, converged in sweeps["on"])  # they handed over
    for a, b in zip(out["on"], out["off"]):
        assert a.method == b.method
    v, _, _ = naive.evaluate(mdp, pi)
    assert naive.rel_err(out["on"][0].v, v) <= REL
    assert naive.rel_err(out["on"][1].d, naive.visitation(mdp, pi, mu)) <= REL
