"""P's column indices as uint16 for the products (issue 17): an MDP of at most 2¹⁶ states
has its products on all pairs read ``Transitions.narrow_indices`` (2 bytes per entry instead
of 4). The same sums in the same order: every compiled product with uint16 indices equals
its int32 product bit for bit (both twins, 1 and 2 threads, plain and prefetching fused
passes, float32 corrections), the evaluator's solves are the same bits with and without
them, and agree with the dense reference and the NumPy reference (which keeps int32).
"""
import numpy as np
import pytest

import fastppo
import fastppo._evaluator as evaluator
import naive
from conftest import random_mdp, random_policy
from fastppo._backend import get_kernel
from fastppo._evaluator import Evaluator
from fastppo.mdp import NARROW_STATES

COMPILED = ["numba", "cython"]
REL = 1e-10  # solved to a relative residual of 1e-12 (test_evaluator.py: 1e-9)
EMPTY = np.empty(0)


def mdps():
    """Rectangular and ragged small MDPs, and a garnet whose fused passes prefetch
    (FUSED_PREFETCH_STATES ≤ S ≤ NARROW_STATES)."""
    return [random_mdp(31, n_states=23, n_actions=3, gamma=0.9, rectangular=True, density=0.3),
            random_mdp(32, n_states=19, n_actions=4, gamma=0.9, rectangular=False, density=0.3),
            fastppo.garnet(40_000, 2, 3, gamma=0.9, seed=2)]


def all_products(k, rows, x, y, x32, n_threads):
    """Every product of ``rows``: matvec, rmatvec, q_values, the fused pass (each side,
    both, with rows) and float32 corrections (both sides)."""
    a, pp, pj, pd, pi, g = rows
    S, L = a.shape[0] - 1, pp.shape[0] - 1
    out = [np.empty(S), np.empty(S), np.empty(L)]
    k["bellman_matvec"](*rows, x, out[0], n_threads)
    k["bellman_rmatvec"](*rows, y, out[1], np.empty((2, 2 * S)), n_threads)
    k["q_values"](pp, pj, pd, np.zeros(L), 1.0, x, out[2], n_threads)
    for sides in ("x", "y", "xy"):
        ox, oy = np.full(S, np.nan), np.full(S, np.nan)
        q = np.full(L, np.nan) if "x" in sides else EMPTY
        k["bellman_products"](*rows, x if "x" in sides else EMPTY, y if "y" in sides else EMPTY,
                              ox if "x" in sides else EMPTY, oy if "y" in sides else EMPTY, q,
                              np.empty((2, 2 * S)), n_threads)
        out += [ox, oy, q]
    ox, oy = np.empty(S), np.empty(S)
    k["bellman_products"](*rows, x32, y, ox, oy, EMPTY, np.empty((2, 2 * S), dtype=np.float32),
                          n_threads)
    return out + [ox, oy]


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
def test_uint16_products_equal_int32_products_bit_for_bit(n_threads):
    names = ("bellman_matvec", "bellman_rmatvec", "q_values", "bellman_products")
    for mdp in mdps():
        S = mdp.n_states
        narrow = mdp._transitions.narrow_indices(S)
        assert narrow.dtype == np.uint16 and not narrow.flags.writeable
        np.testing.assert_array_equal(narrow, mdp.p_indices)
        rng = np.random.default_rng(3)
        x, y = rng.normal(size=S), rng.normal(size=S)
        x32 = x.astype(np.float32)
        pi = random_policy(mdp, 4, sharp=2.0)[0]
        pi[mdp.a_indptr[:-1][::2]] = 0.0  # pairs skipped (π = 0)
        wide = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma)
        got = {}
        for which in COMPILED:
            k = {name: get_kernel(name, which) for name in names}
            got[which] = all_products(k, wide, x, y, x32, n_threads)
            for a, b in zip(got[which], all_products(k, (*wide[:2], narrow, *wide[3:]), x, y,
                                                     x32, n_threads)):
                np.testing.assert_array_equal(a, b)
        for a, b in zip(got["numba"], got["cython"]):  # the twins
            np.testing.assert_array_equal(a, b)


def test_which_rows_are_narrowed(monkeypatch):
    mdp = random_mdp(33, n_states=15, n_actions=3, gamma=0.9)
    T = mdp._transitions
    assert T.narrow_indices(NARROW_STATES + 1) is None
    assert T.narrow_indices(NARROW_STATES) is T.narrow_indices(mdp.n_states)  # made once
    pi = random_policy(mdp, 5)[0]
    det = np.zeros(mdp.n_pairs)
    det[mdp.a_indptr[:-1]] = 1.0
    for which, policy, dtype in (("numba", pi, np.uint16), ("cython", pi, np.uint16),
                                 ("numpy", pi, np.int32), ("cython", det, np.int32)):
        E = Evaluator(mdp, None, which, 1)
        E.load(policy)
        assert E._product_rows[2].dtype == dtype
        assert E._rows[2] is mdp.p_indices or policy is det  # the other kernels' rows
    monkeypatch.setattr(evaluator, "NARROW_INDICES", False)
    E = Evaluator(mdp, None, "cython", 1)
    E.load(pi)
    assert E._product_rows[2] is mdp.p_indices


@pytest.mark.parametrize("which", COMPILED)
def test_solves_are_the_same_bits_and_match_the_references(which, monkeypatch):
    mdp = fastppo.garnet(300, 4, 5, gamma=0.95, seed=6)
    pi = random_policy(mdp, 7)[0]
    mu = np.random.default_rng(8).dirichlet(np.ones(mdp.n_states))
    out = {}
    for narrow in (True, False):
        monkeypatch.setattr(evaluator, "NARROW_INDICES", narrow)
        E = Evaluator(mdp, fastppo.ForwardKL(0.1), which, 1)
        E.load(pi)
        ev, vis = E.evaluation_and_visitation(mu)
        ev1 = fastppo.evaluate(mdp, pi, backend=which, n_threads=1)
        vis1 = fastppo.visitation(mdp, pi, mu, backend=which, n_threads=1, full_output=True)
        out[narrow] = (ev.v, ev.q, vis.d, ev1.v, ev1.q, ev1.adv, vis1.d, ev1.n_matvec, vis1.n_matvec)
    for a, b in zip(out[True], out[False]):
        np.testing.assert_array_equal(a, b)
    v, q, adv = naive.evaluate(mdp, pi)
    ref = fastppo.evaluate(mdp, pi, backend="numpy")
    for got, want in ((out[True][3], v), (out[True][4], q), (out[True][5], adv),
                      (out[True][3], ref.v)):
        assert naive.rel_err(got, want) <= REL
    d = naive.visitation(mdp, pi, mu)
    assert naive.rel_err(out[True][6], d) <= REL
