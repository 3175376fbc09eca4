"""Tests of fastppo.generators: structure, reproducibility, memory, rejections."""

import numpy as np
import pytest

import fastppo
import naive
from fastppo.generators import chain, garnet, gridworld, token_tree


def row_sums(m):
    return np.add.reduceat(m.p_data, m.p_indptr[:-1])


def successors(m):
    """(n_pairs, b) next states of an MDP with b successors per pair."""
    b = m.p_data.size // m.n_pairs
    assert (np.diff(m.p_indptr) == b).all()
    return m.p_indices.reshape(m.n_pairs, b)


SMALL = {
    "garnet": lambda seed: garnet(60, 3, 4, seed=seed),
    "garnet_local": lambda seed: garnet(60, 3, 4, seed=seed, locality=2),
    "token_tree": lambda seed: token_tree(3, 3, seed=seed),
}


# ------------------------------------------------------------------ all generators
@pytest.mark.parametrize("name", SMALL)
def test_reproducible_from_seed(name):
    make = SMALL[name]
    assert make(7) == make(7)
    assert make(7) == make(np.random.default_rng(7))
    assert make(7) != make(8)


@pytest.mark.parametrize("make", [
    lambda: garnet(100, 4, 7, seed=1), lambda: garnet(100, 4, 7, seed=1, locality=3),
    lambda: garnet(5, 2, 5, seed=0),
    lambda: gridworld(4, 5, walls=[(1, 1), (2, 3)], traps=[(3, 0)], slip=0.3),
    lambda: gridworld(layout=["S..#", ".H.G"], slip=1.0), lambda: chain(), lambda: chain(2),
    lambda: token_tree(2, 4, seed=0), lambda: token_tree(1, 3, seed=0),
])
def test_rows_stochastic_and_rectangular(make):
    m = make()
    np.testing.assert_allclose(row_sums(m), 1.0, rtol=0, atol=1e-12)
    assert (m.p_data > 0).all()
    assert m.is_rectangular
    assert abs(m.rho.sum() - 1.0) < 1e-12


# -------------------------------------------------------------------------- garnet
@pytest.mark.parametrize("locality", [None, 1, 4])
def test_garnet_structure(locality):
    S, A, b = 40, 3, 3
    m = garnet(S, A, b, gamma=0.9, seed=2, locality=locality)
    assert (m.n_states, m.n_actions, m.n_pairs, m.p_data.size) == (S, A, S * A, S * A * b)
    assert m.gamma == 0.9
    succ = successors(m)
    assert (np.diff(succ, axis=1) > 0).all()  # sorted and distinct
    assert ((m.r >= 0) & (m.r < 1)).all() and np.unique(m.r).size == m.n_pairs
    np.testing.assert_array_equal(m.rho, np.full(S, 1 / S))
    dist = (succ - m.s_indices[:, None]) % S
    dist = np.minimum(dist, S - dist)
    if locality is None:
        assert dist.max() > 4  # spreads beyond any small window
    else:
        assert dist.max() <= locality
        assert dist.max() == locality  # the whole window is used


@pytest.mark.parametrize("n_states, locality, window", [(5, None, 5), (9, 1, 3), (9, 2, 5)])
def test_garnet_successor_sets_uniform(n_states, locality, window):
    # every 2-subset of the window is equally likely (Floyd's algorithm is exact)
    m = garnet(n_states, 4000, 2, seed=3, locality=locality)
    succ = successors(m)
    if locality is not None:  # position in the window s-k..s+k
        succ = np.sort((succ - m.s_indices[:, None] + locality) % n_states, axis=1)
    assert succ.max() < window
    _, counts = np.unique(succ, axis=0, return_counts=True)
    n_subsets = window * (window - 1) // 2
    assert counts.size == n_subsets
    expected = m.n_pairs / n_subsets
    assert np.abs(counts - expected).max() < 5 * np.sqrt(expected)


def test_garnet_probabilities_spread():
    m = garnet(50, 20, 4, seed=0)
    p = m.p_data.reshape(-1, 4)
    # Dirichlet(1,1,1,1): each coordinate has mean 1/4, and the rows differ
    np.testing.assert_allclose(p.mean(axis=0), 0.25, atol=0.02)
    assert np.unique(p[:, 0]).size == p.shape[0]


def test_garnet_wide_window_is_uniform():
    # 2k + 1 >= S: the window is every state, the same as locality=None
    assert garnet(7, 2, 3, seed=4, locality=3) == garnet(7, 2, 3, seed=4)
    assert garnet(7, 2, 3, seed=4, locality=2) != garnet(7, 2, 3, seed=4)


def test_garnet_full_branching():
    m = garnet(6, 2, 6, seed=0, locality=3)
    np.testing.assert_array_equal(successors(m), np.tile(np.arange(6), (12, 1)))
    m = garnet(7, 2, 5, seed=0, locality=2)  # the whole window s-2..s+2
    want = np.sort((np.arange(7)[:, None] + np.arange(-2, 3)) % 7, axis=1).repeat(2, axis=0)
    np.testing.assert_array_equal(successors(m), want)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_states=10.0), TypeError, "n_states must be an integer"),
    (dict(n_states=0), ValueError, "n_states must be >= 1"),
    (dict(n_states=2**31), ValueError, "n_states must be <= 2147483647"),
    (dict(n_actions=0), ValueError, "n_actions must be >= 1"),
    (dict(n_actions=True), TypeError, "n_actions must be an integer"),
    (dict(branching=0), ValueError, "branching must be >= 1"),
    (dict(branching=11), ValueError, r"branching must be <= n_states = 10, got 11"),
    (dict(branching=4, locality=1), ValueError, r"branching must be <= 2\*locality \+ 1 = 3, got 4"),
    (dict(locality=0), ValueError, "locality must be >= 1"),
    (dict(locality=1.5), TypeError, "locality must be an integer"),
    (dict(gamma=1.0), ValueError, r"gamma must be in \[0, 1\)"),
    (dict(gamma="0.9"), TypeError, "gamma must be a real number"),
    (dict(seed="0"), TypeError, "seed must be an int, None or a numpy.random.Generator"),
    (dict(seed=1.0), TypeError, "seed must be an int, None or a numpy.random.Generator"),
    (dict(seed=-1), ValueError, "seed must be >= 0"),
])
def test_garnet_rejects(kwargs, exc, match):
    args = dict(n_states=10, n_actions=2, branching=3) | kwargs
    with pytest.raises(exc, match=match):
        garnet(**args)


# ----------------------------------------------------------------------- gridworld
def test_gridworld_slip_exact_on_3x3():
    # . . .      state numbering (wall at the centre is not a state):
    # . # .        0 1 2
    # . . G        3 _ 4
    #              5 6 7
    m = gridworld(3, 3, walls=[(1, 1)], slip=0.2, step_reward=-0.04, goal_reward=1.0)
    assert m.n_states == 8 and m.n_actions == 4
    P = m.P.toarray().reshape(8, 4, 8)
    up, right, down, left = range(4)
    expected = {
        (0, right): {1: 0.8, 0: 0.1, 3: 0.1},   # slips up (border: stay) or down
        (0, up): {0: 0.9, 1: 0.1},              # up and left hit the border
        (1, down): {1: 0.8, 2: 0.1, 0: 0.1},    # the wall blocks: stay
        (3, right): {3: 0.8, 0: 0.1, 5: 0.1},   # into the wall: stay
        (4, down): {7: 0.8, 4: 0.2},            # goal below; left is the wall, right the border
        (6, up): {6: 0.8, 7: 0.1, 5: 0.1},
    }
    for (s, a), row in expected.items():
        want = np.zeros(8)
        want[list(row)] = list(row.values())
        np.testing.assert_allclose(P[s, a], want, rtol=0, atol=1e-15, err_msg=f"(s={s}, a={a})")
    np.testing.assert_allclose(m.R[4, down], 0.8 * 1.0 + 0.2 * -0.04)
    np.testing.assert_allclose(m.R[0, right], -0.04)


def test_gridworld_walls_goals_traps():
    m = gridworld(3, 4, walls=[(0, 1), (1, 1)], traps=[(2, 1)], slip=0.1, step_reward=-0.1,
                  goal_reward=2.0, trap_reward=-3.0)
    assert m.n_states == 10  # 12 cells minus 2 walls
    goal, trap = 9, 7        # row-major among non-walls: bottom-right corner, cell (2, 1)
    P = m.P.toarray().reshape(10, 4, 10)
    for s in (goal, trap):   # absorbing, reward 0
        np.testing.assert_array_equal(P[s], np.eye(10)[[s] * 4])
        np.testing.assert_array_equal(m.R[s], 0.0)
    # (0, 0) moving right bumps into the wall (0, 1)
    np.testing.assert_allclose(P[0, 1, 0], 0.9 + 0.05)
    # (2, 0) moving right lands in the trap w.p. 0.9
    np.testing.assert_allclose(m.R[6, 1], 0.9 * -3.0 + 0.1 * -0.1)
    rho = np.full(10, 1 / 8)
    rho[[goal, trap]] = 0
    np.testing.assert_allclose(m.rho, rho)


def test_gridworld_no_slip_is_deterministic_and_start():
    m = gridworld(2, 2, slip=0.0, start=(0, 1))
    assert (np.diff(m.p_indptr) == 1).all()
    np.testing.assert_array_equal(m.p_indices.reshape(4, 4),
                                  [[0, 1, 2, 0], [1, 1, 3, 0], [0, 3, 2, 2], [3, 3, 3, 3]])
    np.testing.assert_array_equal(m.rho, [0, 1, 0, 0])
    np.testing.assert_array_equal(m.R[:, 2], [0, 1, 0, 0])   # down from (0, 1) reaches the goal


def test_gridworld_full_slip_never_moves_as_intended():
    m = gridworld(1, 3, goals=(), slip=1.0)
    P = m.P.toarray().reshape(3, 4, 3)
    np.testing.assert_allclose(P[1, 1], [0, 1, 0])      # right: slips up/down into the border
    np.testing.assert_allclose(P[1, 0], [0.5, 0, 0.5])  # up: slips left or right


def test_gridworld_layout_matches_arguments():
    a = gridworld(layout=["S.#", "FTG"], slip=0.2, gamma=0.9)
    b = gridworld(2, 3, walls=[(0, 2)], goals=[(1, 2)], traps=[(1, 1)], start=(0, 0), slip=0.2,
                  gamma=0.9)
    assert a == b
    assert gridworld(layout=["FH", "FF"]) == gridworld(2, 2, goals=(), traps=[(0, 1)])


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(), ValueError, "height and width are required"),
    (dict(height=2), ValueError, "height and width are required"),
    (dict(height=0, width=2), ValueError, "height must be >= 1"),
    (dict(height=2, width=2.0), TypeError, "width must be an integer"),
    (dict(layout=["SG"], height=1), ValueError, "give either layout or height"),
    (dict(layout=["SG"], walls=[(0, 0)]), ValueError, "give either layout or height"),
    (dict(layout="SFG"), TypeError, "layout must be a non-empty list of strings"),
    (dict(layout=[]), TypeError, "layout must be a non-empty list of strings"),
    (dict(layout=["SF", "F"]), ValueError, "row 1 has 1 characters, row 0 has 2"),
    (dict(layout=["SX"]), ValueError, r"layout\[0\]\[1\] = 'X'"),
    (dict(layout=["SS"]), ValueError, "layout has 2 start cells"),
    (dict(layout=["##"]), ValueError, "every cell is a wall"),
    (dict(height=2, width=2, slip=1.5), ValueError, r"slip must be in \[0, 1\], got 1.5"),
    (dict(height=2, width=2, slip="0"), TypeError, "slip must be a real number"),
    (dict(height=2, width=2, step_reward=np.nan), ValueError, "step_reward must be finite"),
    (dict(height=2, width=2, goal_reward=None), TypeError, "goal_reward must be a real number"),
    (dict(height=2, width=2, trap_reward=np.inf), ValueError, "trap_reward must be finite"),
    (dict(height=2, width=2, gamma=-0.1), ValueError, r"gamma must be in \[0, 1\)"),
    (dict(height=2, width=2, walls=[(2, 0)]), ValueError, r"walls: cell \(2, 0\) is outside the 2x2 grid"),
    (dict(height=2, width=2, traps=[(0, -1)]), ValueError, r"traps: cell \(0, -1\) is outside"),
    (dict(height=2, width=2, walls=[(0, 1, 1)]), ValueError, r"walls must be a sequence of \(row, col\)"),
    (dict(height=2, width=2, walls=[(0.0, 1)]), ValueError, r"walls must be a sequence of \(row, col\)"),
    (dict(height=2, width=2, walls=[(1, 1)]), ValueError, r"goals: cell \(1, 1\) is already a wall"),
    (dict(height=2, width=2, traps=[(1, 1)]), ValueError, r"traps: cell \(1, 1\) is already a goal"),
    (dict(height=1, width=2, walls=[(0, 0)], goals=[(0, 1)]), ValueError, "give start to place rho"),
    (dict(height=2, width=2, start=(0, 2)), ValueError, r"start: cell \(0, 2\) is outside"),
    (dict(height=2, width=2, walls=[(0, 0)], start=(0, 0)), ValueError, r"start: cell \(0, 0\) is a wall"),
])
def test_gridworld_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        gridworld(**kwargs)


# --------------------------------------------------------------------------- chain
def test_chain_riverswim_table():
    m = chain()
    L, R = 0, 1
    expected = np.zeros((6, 2, 6))
    expected[0, L, 0] = 1.0
    expected[0, R, [0, 1]] = [0.4, 0.6]
    for s in range(1, 5):
        expected[s, L, s - 1] = 1.0
        expected[s, R, [s - 1, s, s + 1]] = [0.05, 0.6, 0.35]
    expected[5, L, 4] = 1.0
    expected[5, R, [4, 5]] = [0.4, 0.6]
    np.testing.assert_array_equal(m.P.toarray().reshape(6, 2, 6), expected)
    reward = np.zeros((6, 2))
    reward[0, L], reward[5, R] = 0.005, 1.0
    np.testing.assert_array_equal(m.R, reward)
    np.testing.assert_array_equal(m.rho, [1, 0, 0, 0, 0, 0])
    assert m.gamma == 0.95


def test_chain_options():
    m = chain(2, gamma=0.5, small_reward=0.1, large_reward=10)
    np.testing.assert_array_equal(m.P.toarray(), [[1, 0], [0.4, 0.6], [1, 0], [0.4, 0.6]])
    np.testing.assert_array_equal(m.R, [[0.1, 0], [0, 10]])
    assert chain(50).n_states == 50


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(n_states=1), ValueError, "n_states must be >= 2"),
    (dict(n_states="6"), TypeError, "n_states must be an integer"),
    (dict(gamma=1), ValueError, r"gamma must be in \[0, 1\)"),
    (dict(small_reward=np.nan), ValueError, "small_reward must be finite"),
    (dict(large_reward="1"), TypeError, "large_reward must be a real number"),
])
def test_chain_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        chain(**kwargs)


# ---------------------------------------------------------------------- token_tree
@pytest.mark.parametrize("vocab, depth, n_states", [(4, 8, 87_381), (3, 2, 13), (1, 3, 4), (2, 1, 3)])
def test_token_tree_state_count(vocab, depth, n_states):
    m = token_tree(vocab, depth, seed=0)
    assert (m.n_states, m.n_actions) == (n_states, vocab)
    assert m.rho[0] == 1.0 and m.rho.sum() == 1.0


@pytest.mark.parametrize("vocab, depth", [(3, 3), (1, 4), (4, 2)])
def test_token_tree_structure(vocab, depth):
    m = token_tree(vocab, depth, gamma=0.9, seed=5)
    assert m.gamma == 0.9
    assert (np.diff(m.p_indptr) == 1).all() and (m.p_data == 1).all()  # deterministic
    succ = m.p_indices.reshape(m.n_states, vocab)
    n_leaves = vocab ** depth
    n_inner = m.n_states - n_leaves
    s, t = np.divmod(np.arange(m.n_pairs), vocab)
    inner = s < n_inner
    np.testing.assert_array_equal(succ.reshape(-1)[inner], vocab * s[inner] + 1 + t[inner])
    assert (succ[n_inner:] == np.arange(n_inner, m.n_states)[:, None]).all()  # leaves self-loop
    # the reward is paid exactly when the action completes a sequence
    completes = inner & (succ.reshape(-1) >= n_inner)
    assert completes.sum() == n_leaves
    assert (m.r[~completes] == 0).all()
    table = np.random.default_rng(5).random(n_leaves)
    np.testing.assert_array_equal(m.r[completes], table[succ.reshape(-1)[completes] - n_inner])
    # depth of every state (the first sum_{i<=d} V**i states have depth <= d)
    depth_of = np.searchsorted(np.cumsum(vocab ** np.arange(depth + 1)), np.arange(m.n_states),
                               side="right")
    assert (depth_of[succ.reshape(-1)[inner]] == depth_of[s[inner]] + 1).all()
    assert (depth_of[n_inner:] == depth).all() and (depth_of[:n_inner] < depth).all()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(vocab=0), ValueError, "vocab must be >= 1"),
    (dict(vocab=2.0), TypeError, "vocab must be an integer"),
    (dict(depth=0), ValueError, "depth must be >= 1"),
    (dict(vocab=2, depth=40), ValueError, r"token_tree\(2, 40\) would have 2199023255551 states"),
    (dict(gamma=1.5), ValueError, r"gamma must be in \[0, 1\)"),
    (dict(seed=[1]), TypeError, "seed must be an int, None or a numpy.random.Generator"),
])
def test_token_tree_rejects(kwargs, exc, match):
    args = dict(vocab=3, depth=2) | kwargs
    with pytest.raises(exc, match=match):
        token_tree(**args)


# ------------------------------------------------------- structured families (issue 17)
def test_queue2d_dynamics_by_hand():
    """One event per step: arrivals λᵢ (lost when full), the served queue's completion at
    the chosen speed, otherwise no change; costs as documented."""
    lam, mu, h = (0.3, 0.25), (0.2, 0.4), (1.0, 1.5)
    mdp = fastppo.queue2d(capacity=(3, 4), arrival=lam, service=mu, holding_cost=h,
                          fast_cost=2.0, loss_cost=20.0, gamma=0.9)
    assert (mdp.n_states, mdp.n_actions) == (20, 4)
    P = naive.dense(mdp)[1].reshape(20, 4, 20)
    R = mdp.r.reshape(20, 4)
    np.testing.assert_allclose(P.sum(axis=2), 1.0, rtol=0, atol=1e-15)
    s = 1 * 5 + 2  # (q1, q2) = (1, 2)
    expect = np.zeros(20)
    expect[s + 5], expect[s + 1], expect[s - 5] = 0.3, 0.25, 0.4  # serve queue 1 fast
    expect[s] = 1 - 0.3 - 0.25 - 0.4
    np.testing.assert_allclose(P[s, 1], expect, atol=1e-15)
    assert R[s, 1] == pytest.approx(-(1.0 * 1 + 1.5 * 2) - 2.0)
    full = 3 * 5 + 4  # both queues full: arrivals lost, charged in expectation
    assert P[full, 2, full] == pytest.approx(1 - 0.2)  # serve queue 2, normal speed
    assert R[full, 0] == pytest.approx(-(3 + 1.5 * 4) - 20.0 * (0.3 + 0.25))
    with pytest.raises(ValueError, match="arrival"):
        fastppo.queue2d(arrival=(0.5, 0.4), service=(0.2, 0.4))


def test_pendulum_is_a_bilinear_control_grid():
    mdp = fastppo.pendulum(16, 9, 3, gamma=0.95)
    assert (mdp.n_states, mdp.n_actions) == (144, 3)
    lengths = np.diff(mdp.p_indptr)
    assert lengths.min() >= 1 and lengths.max() <= 4
    sums = np.add.reduceat(mdp.p_data, mdp.p_indptr[:-1])
    np.testing.assert_allclose(sums, 1.0, rtol=0, atol=1e-14)
    # upright and still (θ = 0 at i = n_theta / 2 = 8, ω = 0 at j = 4), u = 0 (action 1):
    # stays put, reward 0
    s = 8 * 9 + 4
    k = mdp.a_indptr[s] + 1
    cols = mdp.p_indices[mdp.p_indptr[k]:mdp.p_indptr[k + 1]]
    probs = mdp.p_data[mdp.p_indptr[k]:mdp.p_indptr[k + 1]]
    assert probs[cols == s].sum() == pytest.approx(1.0) and mdp.r[k] == pytest.approx(0.0)
    with pytest.raises(ValueError, match="n_theta"):
        fastppo.pendulum(1, 9)
