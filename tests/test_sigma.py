"""Policies as action labels (QuantEcon's sigma): evaluate / visitation / rollout accept them,
solve returns them, and the int-vs-float rule is unambiguous; from_sa_pairs(infeasible="drop")."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastppo
from fastppo import MDP
from conftest import random_mdp


def dense_value(mdp, k):
    """v of the deterministic policy using pairs k (one per state), by np.linalg.solve."""
    P = mdp.P.toarray()[k]
    return np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P, mdp.r[k])


def random_sigma(mdp, seed):
    """(labels, pair indices) of a random deterministic policy, drawn per state."""
    rng = np.random.default_rng(seed)
    k = np.array([rng.integers(mdp.a_indptr[s], mdp.a_indptr[s + 1]) for s in range(mdp.n_states)])
    return mdp.a_indices[k].copy(), k


@pytest.mark.parametrize("rectangular", [True, False])
def test_evaluate_with_sigma_equals_the_one_hot_table_and_the_dense_reference(rectangular):
    mdp = random_mdp(3, n_states=15, rectangular=rectangular)
    for seed in range(3):
        sigma, k = random_sigma(mdp, seed)
        one_hot = np.zeros(mdp.n_pairs)
        one_hot[k] = 1.0
        ev, ev_table = fastppo.evaluate(mdp, sigma), fastppo.evaluate(mdp, one_hot)
        np.testing.assert_allclose(ev.v, dense_value(mdp, k), rtol=0, atol=1e-10)
        np.testing.assert_array_equal(ev.v, ev_table.v)
        assert ev.q.shape == mdp.R.shape  # the MDP's table shape for sigma
        np.testing.assert_array_equal(mdp.to_pairs(ev.q), ev_table.q)
        for dtype in (np.int32, np.int64, np.uint8, np.int16):
            np.testing.assert_array_equal(fastppo.evaluate(mdp, sigma.astype(dtype)).v, ev.v)
        np.testing.assert_array_equal(fastppo.evaluate(mdp, sigma.tolist()).v, ev.v)  # a list of ints
        d, d_table = fastppo.visitation(mdp, sigma), fastppo.visitation(mdp, one_hot)
        np.testing.assert_array_equal(d, d_table)
        P = mdp.P.toarray()[k]
        d_ref = (1 - mdp.gamma) * np.linalg.solve(np.eye(mdp.n_states) - mdp.gamma * P.T, mdp.rho)
        np.testing.assert_allclose(d, d_ref, rtol=0, atol=1e-10)


def test_rollout_with_sigma_equals_the_one_hot_table():
    mdp = random_mdp(4, rectangular=False)
    sigma, k = random_sigma(mdp, 0)
    one_hot = np.zeros(mdp.n_pairs)
    one_hot[k] = 1.0
    a, b = fastppo.rollout(mdp, sigma, 8, 20, seed=1), fastppo.rollout(mdp, one_hot, 8, 20, seed=1)
    for key in ("states", "pairs", "rewards", "logp"):
        np.testing.assert_array_equal(a[key], b[key])
    assert np.isin(a.pairs[a.mask], k).all()


@pytest.mark.parametrize("backend", ["numba", "cython", "numpy"])
def test_rollout_actions_are_labels(backend):
    """Rollout.actions hold action labels (values of a_indices, as sigma does), and
    action_index the position within the state; they differ on this MDP's labels."""
    mdp = random_mdp(4, rectangular=False)
    sigma, k = random_sigma(mdp, 0)
    tr = fastppo.rollout(mdp, sigma, 8, 20, seed=1, backend=backend)
    m = tr.mask
    np.testing.assert_array_equal(tr.actions[m], sigma[tr.states[m]])  # sigma's own labels back
    np.testing.assert_array_equal(tr.actions[m], mdp.a_indices[tr.pairs[m]])
    np.testing.assert_array_equal(tr.action_index[m], tr.pairs[m] - mdp.a_indptr[tr.states[m]])
    assert (tr.actions[m] != tr.action_index[m]).any()
    assert (tr.actions[~m] == -1).all() and (tr.action_index[~m] == -1).all()
    tr = fastppo.rollout(mdp, mdp.uniform_policy(), 64, 10, seed=2, backend=backend)
    np.testing.assert_array_equal(tr.actions[tr.mask], mdp.a_indices[tr.pairs[tr.mask]])


@pytest.mark.parametrize("rectangular", [True, False])
def test_solve_sigma_is_the_optimal_action_label(rectangular):
    mdp = random_mdp(5, n_states=15, rectangular=rectangular)
    opt = fastppo.solve(mdp)
    assert opt.sigma.shape == (mdp.n_states,) and opt.sigma.dtype == np.int64
    k = np.flatnonzero(mdp.to_pairs(opt.policy))
    np.testing.assert_array_equal(opt.sigma, mdp.a_indices[k])
    np.testing.assert_allclose(fastppo.evaluate(mdp, opt.sigma).v, opt.v, rtol=0, atol=1e-10)
    # optimal against the dense reference: no single-state deviation improves Q
    q = mdp.r + mdp.gamma * mdp.P.toarray() @ dense_value(mdp, k)
    assert np.all(np.maximum.reduceat(q, mdp.a_indptr[:-1]) <= q[k] + 1e-10)


def test_solve_sigma_with_tau_is_the_argmax_ties_to_the_lowest_label():
    # state 0: actions 1 and 4 are identical (equal probability at the optimum); state 1: one action
    s = [0, 0, 0, 1]
    a = [4, 1, 2, 7]
    P = np.array([[0.5, 0.5], [0.5, 0.5], [1.0, 0.0], [0.0, 1.0]])
    mdp = MDP.from_sa_pairs(s, a, P, [1.0, 1.0, 0.0, 0.5], 0.9)
    opt = fastppo.solve(mdp, fastppo.ReverseKL(0.5))
    pi = mdp.to_pairs(opt.policy)
    assert pi[0] == pi[2] and pi[0] > pi[1]  # pairs (labels 1, 2, 4): 1 and 4 tie, 2 is worse
    np.testing.assert_array_equal(opt.sigma, [1, 7])


def test_to_sigma_of_rectangular_tables_by_state():
    # rectangular MDPs take argmax over an (S, A) view: first maximum, as state by state
    mdp = fastppo.garnet(50, 4, 2, seed=1)
    assert mdp.is_rectangular
    table = np.random.default_rng(2).integers(0, 3, size=mdp.n_pairs).astype(float)
    table[:4] = -np.inf
    want = [int(np.argmax(table[4 * s:4 * s + 4])) for s in range(mdp.n_states)]
    np.testing.assert_array_equal(mdp.to_sigma(table), want)
    np.testing.assert_array_equal(mdp.to_sigma(table.reshape(50, 4)), want)
    table[7] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        mdp.to_sigma(table)


def test_to_sigma_ties_and_errors():
    mdp = MDP.from_sa_pairs([0, 0, 0, 1, 1], [3, 5, 9, 0, 2], np.full((5, 2), 0.5), np.zeros(5), 0.5)
    np.testing.assert_array_equal(mdp.to_sigma([1.0, 2.0, 2.0, -np.inf, -np.inf]), [5, 0])
    np.testing.assert_array_equal(mdp.to_sigma([3.0, 2.0, 1.0, 0.0, 1.0]), [3, 2])
    with pytest.raises(ValueError, match=r"table must not hold NaN: pair \(s=0, a=5\) is NaN"):
        mdp.to_sigma([0.0, np.nan, 0.0, 0.0, 0.0])
    with pytest.raises(ValueError, match=r"table must have shape \(5,\)"):
        mdp.to_sigma([0.0, 1.0])


# ------------------------------------------------------------ the int-vs-float rule
def one_action_mdp(label):
    """S == n_pairs: every state has exactly one action, labelled ``label``."""
    return MDP.from_sa_pairs([0, 1, 2], [label] * 3, np.full((3, 3), 1 / 3), [1.0, 2.0, 3.0], 0.5)


def test_sigma_when_n_states_equals_n_pairs():
    mdp = one_action_mdp(0)
    v_ref = dense_value(mdp, np.arange(3))
    for pi in (np.zeros(3, dtype=int), np.ones(3), [1.0, 1.0, 1.0]):  # sigma, table, table
        np.testing.assert_allclose(fastppo.evaluate(mdp, pi).v, v_ref, rtol=0, atol=1e-12)
    # integer ones meant as a probability table are read as sigma: label 1 is not an action
    with pytest.raises(ValueError, match=r"pi\[0\] = 1 is not an action of state 0 \(its actions: 0\)"):
        fastppo.evaluate(mdp, np.ones(3, dtype=int))
    # where the label is 1, the integer ones are both readings at once: same answer
    mdp1 = one_action_mdp(1)
    np.testing.assert_array_equal(fastppo.evaluate(mdp1, np.ones(3, dtype=int)).v,
                                  fastppo.evaluate(mdp1, np.ones(3)).v)


def test_rectangular_single_action():
    mdp = MDP.from_dense(np.full((3, 1, 3), 1 / 3), [[1.0], [2.0], [3.0]], 0.5)
    assert mdp.is_rectangular and mdp.n_actions == 1
    ev_sigma = fastppo.evaluate(mdp, np.zeros(3, dtype=int))      # (S,) int: sigma
    ev_table = fastppo.evaluate(mdp, np.ones((3, 1), dtype=int))  # (S, 1) int: a table
    np.testing.assert_array_equal(ev_sigma.v, ev_table.v)
    assert ev_sigma.q.shape == ev_table.q.shape == (3, 1)


def test_integer_tables_stay_tables():
    mdp = random_mdp(6, n_states=4, n_actions=3)
    sigma, k = random_sigma(mdp, 0)
    one_hot = np.zeros((4, 3), dtype=int)
    one_hot.reshape(-1)[k] = 1
    v = fastppo.evaluate(mdp, sigma).v
    np.testing.assert_array_equal(fastppo.evaluate(mdp, one_hot).v, v)              # (S, A) int
    np.testing.assert_array_equal(fastppo.evaluate(mdp, one_hot.reshape(-1)).v, v)  # (n_pairs,) int
    assert fastppo.evaluate(mdp, one_hot).q.shape == (4, 3)
    assert fastppo.evaluate(mdp, one_hot.reshape(-1)).q.shape == (12,)


@pytest.mark.parametrize("pi, exc, msg", [
    (np.array([0.0, 1.0, 2.0, 0.0]), TypeError,
     r"pi has shape \(4,\) and dtype float64: a policy given as action labels \(sigma\) must have an "
     r"integer dtype; a probability table has shape \(12,\) or \(4, 3\)"),
    (np.array([True, False, True, False]), TypeError, r"pi has shape \(4,\) and dtype bool"),
    (np.array([0, 3, 0, 0]), ValueError, r"pi\[1\] = 3 is not an action of state 1 \(its actions: 0, 1, 2\)"),
    (np.array([0, 0, -1, 0]), ValueError, r"pi\[2\] = -1 is not an action of state 2"),
    (np.array([0, 0, 0, 2**40]), ValueError, r"pi\[3\] = 1099511627776 is not an action of state 3"),
    (np.array([0, 0, 0, 2**64 - 1], dtype=np.uint64), ValueError, r"pi\[3\] = 18446744073709551615 is not an action"),
    (np.array([0, 0, 0, 0, 0]), ValueError, r"pi must have shape \(12,\) or \(4, 3\), got \(5,\)"),
])
def test_sigma_rejections(pi, exc, msg):
    mdp = random_mdp(6, n_states=4, n_actions=3)
    with pytest.raises(exc, match=msg):
        fastppo.evaluate(mdp, pi)


def test_sigma_error_lists_a_long_action_set_briefly():
    n = 12
    mdp = MDP.from_sa_pairs(np.zeros(n, int), 2 * np.arange(n), np.ones((n, 1)), np.zeros(n), 0.5)
    with pytest.raises(ValueError, match=r"pi\[0\] = 1 is not an action of state 0 \(its actions: "
                                         r"0, 2, 4, 6, 8, 10, 12, 14, 16, 18, \.\.\.\)"):
        fastppo.evaluate(mdp, np.array([1]))
    np.testing.assert_allclose(fastppo.evaluate(mdp, np.array([22])).v, [0.0])


# ------------------------------------------------------------ infeasible pairs
def growth_pairs():
    """QuantEcon's growth model in product form flattened to pairs, -inf where infeasible and
    zero rows of P there (as QuantEcon users often leave them)."""
    n, m = 6, 3
    R, Q = np.empty((n, m)), np.zeros((n, m, n))
    for a in range(m):
        Q[:, a, a:a + 3] = 1 / 3
    for s in range(n):
        for a in range(m):
            R[s, a] = np.sqrt(s - a) if a <= s else -np.inf
    Q[R == -np.inf] = 0.0
    s, a = np.divmod(np.arange(n * m), m)
    return s, a, Q.reshape(n * m, n), R.reshape(-1)


@pytest.mark.parametrize("sparse", [False, True])
def test_from_sa_pairs_drops_infeasible_pairs(sparse):
    s, a, P, R = growth_pairs()
    keep = np.isfinite(R)
    P_in = sp.csr_array(P) if sparse else P
    perm = np.random.default_rng(0).permutation(R.size)
    m = MDP.from_sa_pairs(s[perm], a[perm], (P_in[perm] if sparse else P[perm]), R[perm], 0.9,
                          infeasible="drop")
    ref = MDP.from_sa_pairs(s[keep], a[keep], P[keep], R[keep], 0.9)
    assert m == ref
    assert m.n_pairs == keep.sum() and not m.is_rectangular
    np.testing.assert_array_equal(m.a_indices[m.a_indptr[0]:m.a_indptr[1]], [0])


def test_from_sa_pairs_infeasible_errors():
    s, a, P, R = growth_pairs()
    with pytest.raises(ValueError, match=r"R must be finite: pair \(s=0, a=1\) has -inf \(an infeasible "
                                         r"action\? infeasible='drop' removes such pairs\)"):
        MDP.from_sa_pairs(s, a, P, R, 0.9)
    R2 = R.copy()
    R2[s == 4] = -np.inf
    with pytest.raises(ValueError, match=r"state 4 has no feasible action: every reward of it is -inf"):
        MDP.from_sa_pairs(s, a, P, R2, 0.9, infeasible="drop")
    with pytest.raises(ValueError, match=r"infeasible must be one of 'reject', 'drop'; got 'keep'"):
        MDP.from_sa_pairs(s, a, P, R, 0.9, infeasible="keep")
    R3 = R.copy()
    R3[0] = np.nan  # NaN is not infeasibility: still rejected
    with pytest.raises(ValueError, match=r"R must be finite: pair \(s=0, a=0\) has nan"):
        MDP.from_sa_pairs(s, a, P, R3, 0.9, infeasible="drop")
    R4 = R.copy()
    R4[0] = np.inf
    with pytest.raises(ValueError, match=r"R must be finite: pair \(s=0, a=0\) has inf$"):
        MDP.from_sa_pairs(s, a, P, R4, 0.9, infeasible="drop")
    # shapes are still checked by the usual path
    with pytest.raises(ValueError, match=r"R must have shape \(18,\), got \(17,\)"):
        MDP.from_sa_pairs(s, a, P, R[:-1], 0.9, infeasible="drop")
