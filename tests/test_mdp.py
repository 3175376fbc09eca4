"""The MDP container: constructors, canonical form, gymnasium import, persistence, shapes."""
import io
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from fastppo import MDP

CANONICAL = {"a_indptr": np.int64, "a_indices": np.int64, "p_indptr": np.int64,
             "p_indices": np.int32, "p_data": np.float64, "r": np.float64}


def random_dyadic_mdp(seed, S=4, A=3):
    """Dense (P, R, rho) with dyadic probabilities and half-integer rewards, so every
    constructor's arithmetic (sums of duplicates, expected rewards) is exact."""
    rng = np.random.default_rng(seed)
    patterns = [[1.0], [0.5, 0.5], [0.25, 0.75], [0.25, 0.25, 0.5]]
    P = np.zeros((S, A, S))
    for s in range(S):
        for a in range(A):
            p = patterns[rng.integers(len(patterns))]
            P[s, a, rng.choice(S, size=len(p), replace=False)] = p
    R = rng.integers(-3, 4, size=(S, A)) / 2.0
    rho = rng.integers(1, 4, size=S).astype(float)
    return P, R, rho / rho.sum()


def assert_same(m1, m2):
    for name, dtype in CANONICAL.items():
        x, y = getattr(m1, name), getattr(m2, name)
        assert x.dtype == y.dtype == dtype, name
        np.testing.assert_array_equal(x, y, err_msg=name)
    assert m1.gamma == m2.gamma
    np.testing.assert_array_equal(m1.rho, m2.rho)
    assert (m1.n_states, m1.n_actions, m1.n_pairs, m1.is_rectangular) == (
        m2.n_states, m2.n_actions, m2.n_pairs, m2.is_rectangular)


def dense_P(mdp):
    return mdp.P.toarray()


P0, R0, RHO0 = random_dyadic_mdp(0)
S0, A0 = R0.shape
GAMMA = 0.9


def _pairs(shuffle_seed, sparse):
    s, a = np.divmod(np.arange(S0 * A0), A0)
    perm = np.random.default_rng(shuffle_seed).permutation(S0 * A0)
    P2 = P0.reshape(S0 * A0, S0)[perm]
    return MDP.from_sa_pairs(s[perm], a[perm], sp.csr_array(P2) if sparse else P2,
                             R0.reshape(-1)[perm], GAMMA, RHO0)


def _sparse_with_explicit_zeros():
    rows, cols = np.divmod(np.arange(S0 * A0 * S0), S0)  # every entry, zeros included
    return sp.coo_array((P0.reshape(-1), (rows, cols)), shape=(S0 * A0, S0))


def _gym_dict(action_container):
    d = {}
    for s in range(S0):
        acts = []
        for a in range(A0):
            succ = np.flatnonzero(P0[s, a])
            trans = [(P0[s, a, t], int(t), R0[s, a], False) for t in succ]
            p, t, r, done = trans[0]  # split one entry into two duplicates
            acts.append([(p / 2, t, r, done), (p / 2, t, r, done)] + trans[1:])
        d[s] = dict(enumerate(acts)) if action_container is dict else acts
    return d


BUILDERS = {
    "sparse_csr_array": lambda: MDP.from_sparse(sp.csr_array(P0.reshape(-1, S0)), R0, GAMMA, RHO0),
    "sparse_csr_matrix": lambda: MDP.from_sparse(sp.csr_matrix(P0.reshape(-1, S0)), R0, GAMMA, RHO0),
    "sparse_csc": lambda: MDP.from_sparse(sp.csc_array(P0.reshape(-1, S0)), R0, GAMMA, RHO0),
    "sparse_lil": lambda: MDP.from_sparse(sp.lil_array(P0.reshape(-1, S0)), R0, GAMMA, RHO0),
    "sparse_coo_explicit_zeros": lambda: MDP.from_sparse(_sparse_with_explicit_zeros(), R0, GAMMA, RHO0),
    "pairs_dense_shuffled": lambda: _pairs(1, sparse=False),
    "pairs_sparse_shuffled": lambda: _pairs(2, sparse=True),
    "mdptoolbox_dense": lambda: MDP.from_mdptoolbox(P0.transpose(1, 0, 2), R0, GAMMA, RHO0),
    "mdptoolbox_sparse_list": lambda: MDP.from_mdptoolbox(
        [sp.csr_matrix(P0[:, a, :]) for a in range(A0)], R0, GAMMA, RHO0),
    "gymnasium_dict_of_dicts": lambda: MDP.from_gymnasium(_gym_dict(dict), GAMMA, RHO0),
    "gymnasium_dict_of_lists": lambda: MDP.from_gymnasium(_gym_dict(list), GAMMA, RHO0),
}


@pytest.fixture
def ref():
    return MDP.from_dense(P0, R0, GAMMA, RHO0)


@pytest.mark.parametrize("how", list(BUILDERS))
def test_every_constructor_gives_the_same_canonical_form(ref, how):
    m = BUILDERS[how]()
    assert_same(m, ref)
    assert m == ref


def test_canonical_form_of_dense_mdp(ref):
    S, A = S0, A0
    assert (ref.n_states, ref.n_actions, ref.n_pairs) == (S, A, S * A)
    assert ref.is_rectangular
    np.testing.assert_array_equal(ref.a_indptr, np.arange(0, S * A + 1, A))
    np.testing.assert_array_equal(ref.a_indices, np.tile(np.arange(A), S))
    np.testing.assert_array_equal(ref.s_indices, np.repeat(np.arange(S), A))
    np.testing.assert_array_equal(dense_P(ref), P0.reshape(S * A, S))
    assert ref.p_data.size == np.count_nonzero(P0)  # zeros are not stored
    for k in range(ref.n_pairs):  # indices sorted and distinct within every row
        assert np.all(np.diff(ref.p_indices[ref.p_indptr[k]:ref.p_indptr[k + 1]]) > 0)
    np.testing.assert_array_equal(ref.r, R0.reshape(-1))
    np.testing.assert_array_equal(ref.R, R0)
    assert ref.gamma == GAMMA and isinstance(ref.gamma, float)
    np.testing.assert_array_equal(ref.rho, RHO0)
    for name in list(CANONICAL) + ["rho"]:
        with pytest.raises(ValueError, match="read-only"):
            getattr(ref, name)[0] = 0
    assert repr(ref) == f"MDP(n_states={S}, {A} actions, n_pairs={S * A}, nnz={ref.p_data.size}, gamma=0.9)"


def test_rho_defaults_to_uniform():
    m = MDP.from_dense(P0, R0, 0.0)
    np.testing.assert_array_equal(m.rho, np.full(S0, 1 / S0))
    assert m.gamma == 0.0


@pytest.mark.parametrize("R_kind", ["S", "ASS"])
@pytest.mark.parametrize("P_kind", ["dense", "sparse_list", "object_array"])
def test_mdptoolbox_reward_layouts(R_kind, P_kind):
    Pt = P0.transpose(1, 0, 2)
    if P_kind == "sparse_list":
        Pt = [sp.csr_array(m) for m in Pt]
    elif P_kind == "object_array":
        obj = np.empty(A0, dtype=object)
        obj[:] = [sp.csr_matrix(m) for m in Pt]
        Pt = obj
    if R_kind == "S":
        c = np.arange(S0) - 1.5
        m, expected_R = MDP.from_mdptoolbox(Pt, c, GAMMA), np.repeat(c[:, None], A0, axis=1)
    else:  # reward per transition (a, s, s'); the expected reward is used
        c = np.array([2.0, -1.0, 0.5, 3.0])
        Rfull = np.broadcast_to(c, (A0, S0, S0))
        m, expected_R = MDP.from_mdptoolbox(Pt, Rfull, GAMMA), P0 @ c
    assert_same(m, MDP.from_dense(P0, expected_R, GAMMA))


def _small():
    """pymdptoolbox's example.small(): S == A == 2, P (A, S, S), R (S, A)."""
    P = np.array([[[0.5, 0.5], [0.8, 0.2]], [[0.0, 1.0], [0.1, 0.9]]])
    return P, np.array([[5, 10], [-1, 2]])


def _obj(entries):
    out = np.empty(len(entries), dtype=object)
    out[:] = entries
    return out


SMALL_P, SMALL_R = _small()
with warnings.catch_warnings():
    warnings.simplefilter("ignore", PendingDeprecationWarning)  # np.matrix is discouraged
    _MATRIX = np.asmatrix(SMALL_R)
SMALL_REWARDS = {  # every way pymdptoolbox's documentation allows to give the same rewards
    "ndarray (S, A)": (SMALL_R, None),
    "float ndarray (S, A)": (SMALL_R.astype(float), None),
    "np.matrix (S, A)": (_MATRIX, None),
    "sparse (S, A)": (sp.csr_matrix(SMALL_R), None),
    "list of per-action (S,) arrays": ([SMALL_R[:, 0], SMALL_R[:, 1]], None),
    "list of lists": ([list(SMALL_R[:, 0]), list(SMALL_R[:, 1])], None),
    "tuple of per-action arrays": ((SMALL_R[:, 0], SMALL_R[:, 1]), None),
    "object array of (S,)": (_obj([SMALL_R[:, 0], SMALL_R[:, 1]]), None),
    "list of (S, 1)": ([SMALL_R[:, [0]], SMALL_R[:, [1]]], None),
    "list of (1, S)": ([SMALL_R[None, :, 0], SMALL_R[None, :, 1]], None),
    "list of sparse (S, 1)": ([sp.csr_matrix(SMALL_R[:, [a]]) for a in range(2)], None),
    "ndarray (A, S) with layout": (SMALL_R.T, "action-state"),
    "nested list (S, A) with layout": (SMALL_R.tolist(), "state-action"),
}


@pytest.mark.parametrize("how", list(SMALL_REWARDS))
def test_mdptoolbox_reward_dispatch_on_small(how):
    """small() has S == A: no layout may be guessed from the sizes (a list of per-action
    vectors read as an (S, A) table gave 67.7 instead of 42.4)."""
    R, layout = SMALL_REWARDS[how]
    m = MDP.from_mdptoolbox(SMALL_P, R, 0.9, **({} if layout is None else {"reward_layout": layout}))
    assert_same(m, MDP.from_dense(SMALL_P.transpose(1, 0, 2), SMALL_R, 0.9))
    P_sas = SMALL_P.transpose(1, 0, 2)  # policy (1, 0) is optimal: its values, by np.linalg.solve
    v = np.linalg.solve(np.eye(2) - 0.9 * P_sas[[0, 1], [1, 0]], SMALL_R[[0, 1], [1, 0]])
    np.testing.assert_allclose(v, [42.44186046511628, 36.04651162790698], rtol=1e-14)


@pytest.mark.parametrize("P_kind", ["dense", "sparse_list"])
@pytest.mark.parametrize("R_kind", ["ndarray", "list_dense", "list_sparse", "object_dense", "object_sparse",
                                    "tuple_mixed"])
def test_mdptoolbox_transition_rewards(R_kind, P_kind):
    rng = np.random.default_rng(7)
    Rfull = rng.integers(-4, 5, size=(A0, S0, S0)) / 2.0  # reward of (a, s, s'); exact sums
    Pt = P0.transpose(1, 0, 2)
    if P_kind == "sparse_list":
        Pt = [sp.csr_matrix(m) for m in Pt]
    R = {"ndarray": Rfull,
         "list_dense": list(Rfull),
         "list_sparse": [sp.csr_matrix(x) for x in Rfull],
         "object_dense": _obj(list(Rfull)),
         "object_sparse": _obj([sp.csr_array(x) for x in Rfull]),
         "tuple_mixed": tuple(sp.csr_matrix(x) if a % 2 else x for a, x in enumerate(Rfull))}[R_kind]
    expected = np.zeros((S0, A0))
    for s in range(S0):
        for a in range(A0):
            for t in range(S0):
                expected[s, a] += P0[s, a, t] * Rfull[a, s, t]
    assert_same(MDP.from_mdptoolbox(Pt, R, GAMMA), MDP.from_dense(P0, expected, GAMMA))
    assert_same(MDP.from_mdptoolbox(Pt, R, GAMMA, reward_layout="action-state-state"),
                MDP.from_dense(P0, expected, GAMMA))


def test_mdptoolbox_state_rewards_as_a_list_of_numbers():
    c = [1.0, -2.0, 0.5, 3.0]  # length S (4) != A (3)
    expected = np.repeat(np.array(c)[:, None], A0, axis=1)
    Pt = P0.transpose(1, 0, 2)
    assert_same(MDP.from_mdptoolbox(Pt, c, GAMMA), MDP.from_dense(P0, expected, GAMMA))
    assert_same(MDP.from_mdptoolbox(Pt, np.array(c), GAMMA, reward_layout="state"),
                MDP.from_dense(P0, expected, GAMMA))


@pytest.mark.parametrize("R, layout, msg", [
    ([SMALL_R[:, 0]], None, r"R in the 'action-state' layout must hold one entry per action: expected 2, "
                            r"got 1 entries \(a list is read per action"),
    ([np.zeros(3), np.zeros(3)], None, r"R\[0\] must be a reward vector of shape \(2,\), \(2, 1\) or \(1, 2\); got \(3,\)"),
    ([np.eye(2), np.zeros(2)], None, r"R\[1\] must be a transition reward of shape \(2, 2\), got \(2,\)"),
    ([np.eye(2), np.eye(2)], "action-state", r"R\[0\] must be a reward vector of shape \(2,\), \(2, 1\) or \(1, 2\); got \(2, 2\)"),
    (SMALL_R, "action-state-state", r"R\[0\] must be a transition reward of shape \(2, 2\), got \(2,\)"),
    (np.zeros((2, 2, 2, 2)), None, r"R must have shape \(S, A\), \(S,\) or \(A, S, S\) = \(2, 2\), \(2,\) or \(2, 2, 2\); got \(2, 2, 2, 2\)"),
    (np.zeros((3, 2)), None, r"R must have shape .*; got \(3, 2\)"),
    (np.zeros((2, 3, 3)), None, r"R\[0\] must be a transition reward of shape \(2, 2\), got \(3, 3\)"),
    (5.0, None, r"R must have shape .*; got \(\)"),
    (SMALL_R, "SA", r"reward_layout must be one of 'state', 'state-action', 'action-state', 'action-state-state'; got 'SA'"),
    ([["a", "b"], ["c", "d"]], None, r"R\[0\] must be an array of real numbers"),
])
def test_mdptoolbox_reward_rejections(R, layout, msg):
    with pytest.raises((ValueError, TypeError), match=msg):
        MDP.from_mdptoolbox(SMALL_P, R, 0.9, reward_layout=layout)


def test_mdptoolbox_nested_list_of_an_s_by_a_table_is_not_misread():
    """A nested list is read per action (pymdptoolbox's rule): an (S, A) table as a nested list
    with S != A is an error with a hint, never silently transposed."""
    with pytest.raises(ValueError, match=r"expected 3, got 4 entries \(a list is read per action.*"
                                         r"reward_layout='state-action'"):
        MDP.from_mdptoolbox(P0.transpose(1, 0, 2), R0.tolist(), GAMMA)
    assert_same(MDP.from_mdptoolbox(P0.transpose(1, 0, 2), R0.tolist(), GAMMA, reward_layout="state-action"),
                MDP.from_dense(P0, R0, GAMMA))


def test_from_sa_pairs_accepts_float_labels_and_explicit_n_states():
    s, a = np.divmod(np.arange(S0 * A0), A0)
    m = MDP.from_sa_pairs(s.astype(float), a.astype(float), P0.reshape(-1, S0), R0.reshape(-1), GAMMA,
                          n_states=S0)
    assert_same(m, MDP.from_dense(P0, R0, GAMMA))


# ------------------------------------------------------------ non-rectangular
def nonrect():
    """State 0: actions {0, 2}; state 1: {1}; state 2: {0, 1, 2}. Given out of order."""
    s = np.array([2, 0, 1, 2, 0, 2])
    a = np.array([1, 2, 1, 0, 0, 2])
    P = np.zeros((6, 3))
    for k, (ss, aa) in enumerate(zip(s, a)):
        P[k, (ss + aa) % 3] = 0.5
        P[k, (ss + aa + 1) % 3] += 0.5
    R = 10.0 * s + a
    return s, a, P, R


def test_non_rectangular_mdp():
    s, a, P, R = nonrect()
    m = MDP.from_sa_pairs(s, a, P, R, 0.5)
    assert (m.n_states, m.n_actions, m.n_pairs, m.is_rectangular) == (3, 3, 6, False)
    np.testing.assert_array_equal(m.a_indptr, [0, 2, 3, 6])
    np.testing.assert_array_equal(m.a_indices, [0, 2, 1, 0, 1, 2])
    np.testing.assert_array_equal(m.s_indices, [0, 0, 1, 2, 2, 2])
    np.testing.assert_array_equal(m.r, [0, 2, 11, 20, 21, 22])
    order = np.lexsort((a, s))
    np.testing.assert_array_equal(dense_P(m), P[order])
    np.testing.assert_array_equal(m.R, m.r)  # stays flat
    pi = m.uniform_policy()
    np.testing.assert_allclose(pi, [1 / 2, 1 / 2, 1, 1 / 3, 1 / 3, 1 / 3])
    assert m.pair_name(1) == "pair (s=0, a=2)" and m.pair_name(5) == "pair (s=2, a=2)"
    assert "up to 3 actions" in repr(m)


@pytest.mark.parametrize("labels, rect", [
    ([0, 1, 0, 1], True),
    ([1, 0, 0, 1], True),     # any order within a state
    ([0, 2, 0, 2], False),    # equal counts but labels not 0..A-1
    ([0, 1, 1, 2], False),
])
def test_is_rectangular(labels, rect):
    s = np.array([0, 0, 1, 1])
    P = np.full((4, 2), 0.5)
    m = MDP.from_sa_pairs(s, labels, P, np.zeros(4), 0.5)
    assert m.is_rectangular is rect
    assert m.n_actions == 2


# -------------------------------------------------------------- table shapes
def test_to_pairs_to_table_round_trip_rectangular(ref):
    table = np.arange(S0 * A0, dtype=float).reshape(S0, A0) ** 2
    flat = ref.to_pairs(table)
    assert flat.shape == (ref.n_pairs,) and flat.dtype == np.float64
    np.testing.assert_array_equal(flat, table.reshape(-1))
    back = ref.to_table(flat)
    assert back.shape == (S0, A0)
    np.testing.assert_array_equal(back, table)
    # whatever shape goes in comes back out
    assert ref.to_table(flat, like=table).shape == (S0, A0)
    assert ref.to_table(flat, like=flat).shape == (ref.n_pairs,)
    again = ref.to_pairs(flat)
    np.testing.assert_array_equal(again, flat)
    again[0] = -1.0  # to_pairs returns a copy
    assert flat[0] == 0.0
    np.testing.assert_array_equal(ref.to_pairs(table.astype(int)), flat)


def test_to_pairs_to_table_non_rectangular():
    s, a, P, R = nonrect()
    m = MDP.from_sa_pairs(s, a, P, R, 0.5)
    flat = np.linspace(0, 1, 6)
    np.testing.assert_array_equal(m.to_pairs(flat), flat)
    assert m.to_table(flat).shape == (6,)
    with pytest.raises(ValueError, match=r"table must have shape \(6,\), got \(3, 3\)"):
        m.to_pairs(np.zeros((3, 3)))


# ----------------------------------------------------------------- gymnasium
def reference_from_gym_P(P, S):
    """An independent dense reading of a gymnasium P dict (absorbing state S)."""
    A = len(P[0])
    Pd, Rd = np.zeros((S + 1, A, S + 1)), np.zeros((S + 1, A))
    Pd[S, :, S] = 1.0
    for s in range(S):
        for a in range(A):
            for prob, nxt, rew, done in P[s][a]:
                Pd[s, a, S if done else nxt] += prob
                Rd[s, a] += prob * rew
    return Pd, Rd


def gym_env(*names, **kw):
    gym = pytest.importorskip("gymnasium")
    for name in names:
        if name in gym.registry:
            return gym.make(name, **kw)
    pytest.skip(f"none of {names} registered")


@pytest.mark.parametrize("slippery", [False, True])
@pytest.mark.parametrize("map_name, side", [("4x4", 4), ("8x8", 8)])
def test_frozenlake(map_name, side, slippery):
    env = gym_env("FrozenLake-v1", map_name=map_name, is_slippery=slippery)
    m = MDP.from_gymnasium(env, 0.95)
    S = side * side
    assert (m.n_states, m.n_actions, m.n_pairs, m.is_rectangular) == (S + 1, 4, 4 * (S + 1), True)
    Pd, Rd = reference_from_gym_P(env.unwrapped.P, S)
    np.testing.assert_allclose(dense_P(m), Pd.reshape(-1, S + 1), rtol=0, atol=1e-15)
    np.testing.assert_allclose(m.R, Rd, rtol=0, atol=1e-15)
    expected_rho = np.zeros(S + 1)
    expected_rho[0] = 1.0  # FrozenLake starts at the top-left corner
    np.testing.assert_array_equal(m.rho, expected_rho)
    goal = S - 1
    # moving right into the goal terminates with reward 1: the absorbing state follows
    row = m.p_indices[m.p_indptr[(goal - 1) * 4 + 2]:m.p_indptr[(goal - 1) * 4 + 3]]
    assert S in row
    # the goal state itself is terminal: every action moves to the absorbing state
    for a in range(4):
        k = goal * 4 + a
        np.testing.assert_array_equal(m.p_indices[m.p_indptr[k]:m.p_indptr[k + 1]], [S])
    if slippery:
        # P[0][0] lists next state 0 twice (slide left or up into the wall): summed
        k0 = m.p_indptr[0]
        np.testing.assert_array_equal(m.p_indices[k0:m.p_indptr[1]], [0, side])
        np.testing.assert_allclose(m.p_data[k0:m.p_indptr[1]], [2 / 3, 1 / 3], atol=1e-15)


def test_frozenlake_env_unwrapped_and_dict_agree():
    env = gym_env("FrozenLake-v1", is_slippery=True)
    a = MDP.from_gymnasium(env, 0.9)
    b = MDP.from_gymnasium(env.unwrapped, 0.9)
    c = MDP.from_gymnasium(env.unwrapped.P, 0.9, rho=a.rho)
    assert_same(a, b)
    assert_same(a, c)


def test_taxi():
    env = gym_env("Taxi-v3", "Taxi-v4")
    m = MDP.from_gymnasium(env, 0.99)
    S = 500
    assert (m.n_states, m.n_actions, m.n_pairs, m.is_rectangular) == (S + 1, 6, 6 * (S + 1), True)
    Pd, Rd = reference_from_gym_P(env.unwrapped.P, S)
    np.testing.assert_array_equal(dense_P(m), Pd.reshape(-1, S + 1))
    np.testing.assert_array_equal(m.R, Rd)
    isd = env.unwrapped.initial_state_distrib
    np.testing.assert_array_equal(m.rho[:S], isd / isd.sum())
    assert m.rho[S] == 0.0
    # every successful drop-off (reward 20) ends the episode in the absorbing state
    drop = np.flatnonzero(m.r == 20)
    assert drop.size > 0
    for k in drop:
        np.testing.assert_array_equal(m.p_indices[m.p_indptr[k]:m.p_indptr[k + 1]], [S])


def test_cliffwalking():
    env = gym_env("CliffWalking-v1", "CliffWalking-v0")
    m = MDP.from_gymnasium(env, 0.9)
    S = 48
    Pd, Rd = reference_from_gym_P(env.unwrapped.P, S)
    assert (m.n_states, m.n_actions, m.is_rectangular) == (S + 1, 4, True)
    np.testing.assert_array_equal(dense_P(m), Pd.reshape(-1, S + 1))
    np.testing.assert_array_equal(m.R, Rd)
    assert m.rho[36] == 1.0  # the start state, bottom-left
    assert Pd[35, 2, S] == 1.0  # stepping down into the goal terminates


def test_terminated_goes_to_absorbing_state_with_value_zero():
    # 0 --(r=1)--> 1 --(r=5, terminated)--> end
    P = {0: {0: [(1.0, 1, 1.0, False)]}, 1: {0: [(1.0, 0, 5.0, True)]}}
    gamma = 0.9
    m = MDP.from_gymnasium(P, gamma)
    assert m.n_states == 3
    np.testing.assert_array_equal(dense_P(m), [[0, 1, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(m.r, [1, 5, 0])
    np.testing.assert_array_equal(m.rho, [0.5, 0.5, 0.0])  # uniform over the real states
    v = np.linalg.solve(np.eye(3) - gamma * dense_P(m), m.r)
    np.testing.assert_allclose(v, [1 + gamma * 5, 5, 0])


def test_gymnasium_duplicates_summed_and_absorbing_gets_every_action():
    P = {0: [[(0.25, 1, 4.0, False), (0.25, 1, 0.0, False), (0.5, 1, 2.0, True)],
             [(1.0, 0, 0.0, False)]],
         1: [[(0.5, 0, 1.0, False), (0.5, 0, 1.0, False)]]}
    m = MDP.from_gymnasium(P, 0.5)
    assert (m.n_states, m.n_actions, m.n_pairs, m.is_rectangular) == (3, 2, 5, False)
    np.testing.assert_array_equal(m.a_indptr, [0, 2, 3, 5])
    np.testing.assert_array_equal(dense_P(m), [[0, .5, .5], [1, 0, 0], [1, 0, 0], [0, 0, 1], [0, 0, 1]])
    np.testing.assert_array_equal(m.p_indptr, [0, 2, 3, 4, 5, 6])  # one entry per distinct target
    np.testing.assert_array_equal(m.r, [2.0, 0.0, 1.0, 0.0, 0.0])


def test_gymnasium_without_termination_adds_no_state():
    P = {0: {0: [(1.0, 1, 1.0, False)]}, 1: {0: [(1.0, 0, 0.0, False)]}}
    m = MDP.from_gymnasium(P, 0.5)
    assert m.n_states == 2
    np.testing.assert_array_equal(m.rho, [0.5, 0.5])


# --------------------------------------------------------------- persistence
@pytest.mark.parametrize("kind", ["npz_str", "bare_str", "pathlib", "fileobj"])
@pytest.mark.parametrize("which", ["rect", "nonrect"])
def test_save_load_round_trip(tmp_path, kind, which):
    if which == "rect":
        m = MDP.from_dense(P0, R0 + 0.1, 0.987654321, rho=[0.1, 0.2, 0.3, 0.4])
    else:
        s, a, P, R = nonrect()
        m = MDP.from_sa_pairs(s, a, P, R / 7, 0.3, rho=[1 / 3, 1 / 3, 1 / 3])
    if kind == "fileobj":
        buf = io.BytesIO()
        m.save(buf)
        buf.seek(0)
        m2 = MDP.load(buf)
    else:
        path = {"npz_str": str(tmp_path / "m.npz"), "bare_str": str(tmp_path / "m"),
                "pathlib": tmp_path / "m.npz"}[kind]
        m.save(path)
        m2 = MDP.load(path)
    assert_same(m2, m)
    assert m2.rho.tobytes() == m.rho.tobytes() and m2.gamma == m.gamma
    assert not m2.r.flags.writeable


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), S=st.integers(1, 6), A=st.integers(1, 4))
def test_property_shuffle_invariance_and_round_trip(tmp_path_factory, seed, S, A):
    P, R, rho = random_dyadic_mdp(seed, S, A) if S >= 3 else _small(seed, S, A)
    ref = MDP.from_dense(P, R, 0.5, rho)
    s, a = np.divmod(np.arange(S * A), A)
    perm = np.random.default_rng(seed).permutation(S * A)
    m = MDP.from_sa_pairs(s[perm], a[perm], sp.coo_array(P.reshape(-1, S)[perm]), R.reshape(-1)[perm], 0.5, rho)
    assert_same(m, ref)
    path = tmp_path_factory.mktemp("p") / "m.npz"
    m.save(path)
    assert_same(MDP.load(path), ref)


_FIELDS = ("a_indptr", "a_indices", "p_indptr", "p_indices", "p_data", "r", "gamma", "rho")
_DTYPES = ("int8", "uint8", "int32", "uint32", "int64", "uint64", "float32", "float64", "complex128", "bool")


@settings(max_examples=80, deadline=None)
@given(data=st.data())
def test_property_load_never_crashes_or_wraps(data):
    """MDP.load on a file with one field replaced (dtype, shape, values: the valid ones
    recast with one entry changed, or random ones) or cut short: a valid MDP whose arrays
    are exactly the file's values, or one ValueError/TypeError naming the file; never
    another exception, a wrapped index or a dropped imaginary part."""
    m = MDP.from_dense(*random_dyadic_mdp(3, S=4, A=2)[:2], 0.5)
    fields = {k: getattr(m, k) for k in _FIELDS[:6]} | dict(gamma=np.float64(0.5), rho=m.rho,
                                                            format=np.array("fastppo-mdp-1"))
    name = data.draw(st.sampled_from(_FIELDS), label="field")
    dtype = np.dtype(data.draw(st.sampled_from(_DTYPES), label="dtype"))
    info = np.iinfo(dtype) if dtype.kind in "iu" else None

    def value():
        if info:
            return st.integers(int(info.min), int(info.max))
        if dtype == bool:
            return st.booleans()
        return st.floats(width=32 if dtype == np.float32 else 64)

    valid = np.asarray(fields[name])
    if valid.ndim and data.draw(st.booleans(), label="recast the valid values"):
        with np.errstate(all="ignore"):
            x = valid.astype(dtype)  # may itself wrap or round: the file holds what it holds
        i = data.draw(st.integers(0, x.size - 1), label="entry")
        x[i] = data.draw(value(), label="new value")
    else:
        shape = valid.shape if not valid.ndim or data.draw(st.booleans(), label="same shape") else (
            data.draw(st.integers(0, 2 * valid.shape[0] + 2), label="length"),)
        x = np.array(data.draw(st.lists(value(), min_size=int(np.prod(shape)), max_size=int(np.prod(shape))),
                               label="values"), dtype=dtype).reshape(shape)
    fields[name] = x
    buf = io.BytesIO()
    np.savez(buf, **fields)
    raw = buf.getvalue()
    cut = data.draw(st.sampled_from([len(raw), len(raw) // 2, 10, 0]), label="bytes kept")
    try:
        loaded = MDP.load(io.BytesIO(raw[:cut]))
    except (ValueError, TypeError) as err:
        assert "MDP file" in str(err) and "\n" not in str(err), err  # one line naming the file
        return
    # accepted: every value is exactly the file's (nothing wrapped, truncated or dropped)
    for key in (*_FIELDS[:6], "rho"):
        assert np.array_equal(getattr(loaded, key), np.asarray(fields[key])), key
    assert loaded.gamma == fields["gamma"]
    assert (loaded.p_indices >= 0).all() and (loaded.p_indices < loaded.n_states).all()


def _small(seed, S, A):
    rng = np.random.default_rng(seed)
    P = np.zeros((S, A, S))
    P[np.arange(S)[:, None], np.arange(A)[None, :], rng.integers(S, size=(S, A))] = 1.0
    return P, rng.integers(-3, 4, size=(S, A)) / 2.0, np.full(S, 1 / S)


# ------------------------------------------------- callers' arrays untouched
def test_caller_csr_arrays_with_unsorted_indices_not_mutated():
    # the scipy trap: a CSR built from (data, indices, indptr) views those arrays,
    # and sort_indices() / sum_duplicates() would reorder them in place
    data = np.array([0.75, 0.25, 0.25, 0.25, 0.5, 1.0])
    indices = np.array([2, 0, 1, 1, 0, 1], dtype=np.int32)  # row 0 unsorted, row 1 duplicate col 1
    indptr = np.array([0, 2, 5, 6], dtype=np.int32)
    P = sp.csr_array((data, indices, indptr), shape=(3, 3))
    assert np.shares_memory(P.indices, indices) and np.shares_memory(P.data, data)
    assert not P.has_sorted_indices
    saved = [x.copy() for x in (data, indices, indptr)]
    s, a, R = np.array([2, 0, 1]), np.array([0, 0, 0]), np.array([1.0, 2.0, 3.0])
    s0, a0, R0_ = s.copy(), a.copy(), R.copy()
    m = MDP.from_sa_pairs(s, a, P, R, 0.9)
    for x, y in zip((data, indices, indptr), saved):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(P.indices, saved[1])
    assert not P.has_sorted_indices
    for x, y in ((s, s0), (a, a0), (R, R0_)):
        np.testing.assert_array_equal(x, y)
    # pairs sorted by state (state 0 is input row 1, its duplicate column 1 summed)
    np.testing.assert_array_equal(dense_P(m), [[.5, .5, 0], [0, 1, 0], [.25, 0, .75]])
    np.testing.assert_array_equal(m.r, [2.0, 3.0, 1.0])


def test_caller_coo_and_dense_not_mutated():
    row, col, val = np.array([1, 0, 0]), np.array([0, 1, 1]), np.array([1.0, 0.5, 0.5])
    coo = sp.coo_array((val, (row, col)), shape=(2, 2))
    saved = [x.copy() for x in (row, col, val)]
    Pd = np.array([[0.0, 1.0], [1.0, 0.0]])
    Pd0 = Pd.copy()
    MDP.from_sa_pairs([0, 1], [0, 0], coo, [0.0, 0.0], 0.5)
    MDP.from_sa_pairs([1, 0], [0, 0], Pd, [0.0, 0.0], 0.5)
    for x, y in zip((coo.row, coo.col, coo.data), saved):
        np.testing.assert_array_equal(x, y)
    assert coo.nnz == 3
    np.testing.assert_array_equal(Pd, Pd0)


def test_direct_constructor_neither_aliases_nor_freezes_caller_arrays(ref):
    arrays = {name: np.array(getattr(ref, name)) for name in CANONICAL}  # writeable copies
    rho = np.array(ref.rho)
    m = MDP(**arrays, gamma=ref.gamma, rho=rho)
    assert_same(m, ref)
    for name, x in arrays.items():
        assert x.flags.writeable, name
        assert not np.shares_memory(x, getattr(m, name)), name
    assert rho.flags.writeable and not np.shares_memory(rho, m.rho)
    arrays["r"][0] = 123.0
    assert m.r[0] == ref.r[0]


def test_P_property_is_a_copy(ref):
    P = ref.P
    P.data[:] = 0.0
    assert ref.p_data.sum() == ref.n_pairs
