"""The visitation's gather on P's entries in the transposed order (issue 17, target 1).

``Transitions.transposed_pattern`` orders P's entries by successor (P's order within one);
``transposed_weights`` makes P_πᵀ's entries π(pair) P[e] in that order once per policy and
``transposed_rmatvec`` sums each state's entries in eight partial sums (the lanes of an
AVX-512 gather where the CPU has one): against the dense P_πᵀ, the scatter on the pairs'
rows, a loop in the eight sums' order (bit for bit), twins and thread counts alike.
``visitation`` on it (``_evaluator.TRANSPOSED_STATES``) is certified and agrees with the
scatter's solve and with np.linalg.solve.
"""
import numpy as np
import pytest

import fastppo
import fastppo._evaluator as evaluator
import naive
from conftest import gather_rows_cases, random_mdp, random_policy
from fastppo._backend import get_kernel
from fastppo._evaluator import Evaluator

COMPILED = ["numba", "cython"]


def eight_sums(t_indptr, sources, weights, y, gamma):
    """y − γ P_πᵀ y with each state's entries in the kernels' eight partial sums: entry e
    into sum (e − start) mod 8 while eight remain, the rest into the first, combined as
    ((a0 + a1) + (a2 + a3)) + ((a4 + a5) + (a6 + a7))."""
    out = np.empty(y.shape[0])
    for c in range(y.shape[0]):
        start, stop = t_indptr[c], t_indptr[c + 1]
        full = start + (stop - start) // 8 * 8
        a = [0.0] * 8
        for e in range(start, stop):
            lane = (e - start) % 8 if e < full else 0
            a[lane] = a[lane] + weights[e] * y[sources[e]]
        out[c] = y[c] - gamma * (((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7])))
    return out


def test_the_pattern_is_p_by_successor():
    mdp = random_mdp(51, n_states=17, n_actions=3, gamma=0.9, rectangular=False, density=0.4)
    t_indptr, pairs, sources, data = mdp._transitions.transposed_pattern(mdp.n_states, mdp.s_indices)
    states = np.repeat(np.arange(mdp.n_states), np.diff(mdp.a_indptr))
    seen = []
    for c in range(mdp.n_states):
        for e in range(t_indptr[c], t_indptr[c + 1]):
            k = pairs[e]
            j = mdp.p_indptr[k] + np.flatnonzero(mdp.p_indices[mdp.p_indptr[k]:mdp.p_indptr[k + 1]] == c)
            assert sources[e] == states[k] and data[e] in mdp.p_data[j]
            seen.append((c, k))
    assert seen == sorted(seen)  # by successor, then in P's order
    assert len(seen) == mdp.p_indices.shape[0]
    for a in (t_indptr, pairs, sources, data):
        assert not a.flags.writeable
    assert sources.dtype == np.uint16 and pairs.dtype == np.int32
    assert mdp._transitions.transposed_pattern(2 ** 16 + 1, mdp.s_indices) is None


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
def test_transposed_rmatvec_matches_the_scatter_and_its_eight_sums(n_threads):
    for mdp in (random_mdp(41, n_states=23, n_actions=3, gamma=0.9, density=0.3),
                random_mdp(42, n_states=19, n_actions=4, gamma=0.9, rectangular=False, density=0.6),
                fastppo.garnet(500, 3, 7, gamma=0.95, seed=3)):
        S = mdp.n_states
        y = np.random.default_rng(4).normal(size=S)
        pi = random_policy(mdp, 5, sharp=2.0)[0]
        pi[mdp.a_indptr[:-1][::2]] = 0.0  # pairs with π = 0: weight 0
        t_indptr, pairs, sources, data = mdp._transitions.transposed_pattern(mdp.n_states, mdp.s_indices)
        assert (np.diff(t_indptr) > 8).any()  # full groups of eight and the rest
        want = y - mdp.gamma * (naive.P_pi(mdp, pi).T @ y)
        weights = pi[pairs] * data
        lanes = eight_sums(t_indptr, sources, weights, y, mdp.gamma)
        for which in [*COMPILED, "numpy"]:
            w = np.full(data.shape, np.nan)
            get_kernel("transposed_weights", which)(pairs, data, pi, w, n_threads)
            np.testing.assert_array_equal(w, weights)
            got = np.full(S, np.nan)
            get_kernel("transposed_rmatvec", which)(t_indptr, sources, w, mdp.gamma, y, got,
                                                    n_threads)
            np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
            scatter = np.empty(S)
            get_kernel("bellman_rmatvec", which)(mdp.a_indptr, mdp.p_indptr, mdp.p_indices,
                                                 mdp.p_data, pi, mdp.gamma, y, scatter,
                                                 np.empty((2, S)), n_threads)
            np.testing.assert_allclose(got, scatter, rtol=1e-14, atol=1e-14)
            if which != "numpy":  # the eight sums' bits, on both twins and thread counts
                np.testing.assert_array_equal(got, lanes)


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_visitation_on_the_gather_is_certified_and_agrees(which, n_threads, monkeypatch):
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", 1)
    mdp = fastppo.garnet(400, 4, 6, gamma=0.99, seed=9)
    pi = random_policy(mdp, 10)[0]
    mu = np.random.default_rng(11).dirichlet(np.ones(mdp.n_states))
    A = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    E = Evaluator(mdp, None, which, n_threads)
    E.load(pi)
    vis = E.visitation(mu)
    assert vis.method == "richardson" and vis.n_passes == vis.n_matvec + 1  # + the weights
    assert E._transposed_rows() is not None  # made in that solve, kept for the policy
    assert E.visitation(mu).n_passes == vis.n_matvec
    y = vis.d / (1.0 - mdp.gamma)
    assert np.linalg.norm(mu - A.T @ y) / np.linalg.norm(mu) <= 1e-12 * (1 + 1e-3)
    assert naive.rel_err(vis.d, naive.visitation(mdp, pi, mu)) <= 1e-10
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", None)
    scatter = fastppo.visitation(mdp, pi, mu, backend=which, n_threads=n_threads, full_output=True)
    np.testing.assert_allclose(vis.d, scatter.d, rtol=1e-12, atol=1e-15)
    assert abs(vis.n_matvec - scatter.n_matvec) <= 1


def test_the_gather_gives_the_same_bits_on_both_twins_and_thread_counts(monkeypatch):
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", 1)
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=12)
    pi = random_policy(mdp, 13)[0]
    out = {(b, n): fastppo.visitation(mdp, pi, backend=b, n_threads=n)
           for b in COMPILED for n in (1, 2)}
    for d in out.values():
        np.testing.assert_array_equal(d, out["cython", 1])


def test_where_the_gather_applies(monkeypatch):
    mdp, pi, cases = gather_rows_cases()
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", 1)
    for m, which, policy, applies in cases:
        E = Evaluator(m, None, which, 1)
        E.load(policy)
        assert (E._transposed_rows() is not None) == applies, (which, m.p_data.dtype)
    for threshold in (None, mdp.n_states + 1):
        monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", threshold)
        E = Evaluator(mdp, None, "cython", 1)
        E.load(pi)
        assert E._transposed_rows() is None
