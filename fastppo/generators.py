"""Seeded generators of benchmark MDPs.

- :func:`garnet`: random sparse MDPs (``branching`` successors per pair), optionally
  *local* (successors within ``locality`` states of ``s``, a slow-mixing family);
  builds 10^6 states × 10 actions × 10 successors in well under 2 GiB.
- :func:`gridworld`: a slippery grid with walls, goals and traps (FrozenLake-style
  ``layout`` maps accepted).
- :func:`chain`: RiverSwim, the classic hard-exploration chain.
- :func:`token_tree`: a toy of LLM generation — states are token prefixes, the reward
  arrives when a sequence is complete.

Every generator returns a rectangular :class:`~fastppo.MDP`. Random generators take
``seed`` (an int, None or a ``numpy.random.Generator``) and are deterministic for a
given int seed.
"""
import numbers

import numpy as np
import scipy.sparse as sp

from . import _validation as V
from .mdp import MDP

__all__ = ["garnet", "gridworld", "chain", "token_tree"]

_MAX_STATES = np.iinfo(np.int32).max  # next-state indices are int32


def _real(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return float(x)


def _rectangular(P, R, gamma, rho):
    """MDP from a (S*A, S) sparse P and (S, A) R, rows in (state, action) order."""
    S, A = R.shape
    return MDP.from_sa_pairs(np.repeat(np.arange(S), A), np.tile(np.arange(A), S),
                             P, R.reshape(-1), gamma, rho, n_states=S)


# ---------------------------------------------------------------------------- garnet
def garnet(n_states, n_actions, branching, gamma=0.99, seed=None, locality=None):
    """A random sparse MDP (Garnet) with ``branching`` successors per state-action pair.

    Parameters
    ----------
    n_states : int
        Number of states S (at most 2**31 - 1).
    n_actions : int
        Number of actions A in every state.
    branching : int
        Number b of distinct successors of each pair, ``1 <= b <= n_states``.
    gamma : float in [0, 1), default 0.99
    seed : int, None or numpy.random.Generator
    locality : int, optional
        None: successors are uniform over all states. An int ``k >= 1``: the
        successors of ``(s, a)`` are drawn from the window ``s-k, ..., s+k``
        (indices modulo S, so the chain wraps around), which mixes slowly for small
        ``k``; needs ``b <= 2k + 1``. If ``2k + 1 >= S`` the window is every state.

    Returns
    -------
    MDP
        Rectangular, ``n_pairs = S*A``, ``nnz = S*A*b``; ``rho`` uniform.

    Notes
    -----
    Each pair's successor set is a uniformly random b-subset of its window, drawn
    exactly with Floyd's algorithm vectorised over pairs (b passes over an int32
    array of shape (S*A, b); no rejection loop, no dense array). The probabilities
    are normalised standard exponentials, i.e. uniform on the simplex
    (Dirichlet(1, ..., 1)); rewards are uniform on [0, 1). Memory: the final arrays
    (12 bytes per non-zero plus 24 bytes per pair) plus O(S*A*b) bytes of int32/bool
    temporaries; 10^6 × 10 × 10 peaks well under 2 GiB.

    References
    ----------
    T. W. Archibald, K. I. M. McKinnon, L. C. Thomas, "On the generation of Markov
    decision processes", J. Oper. Res. Soc. 46 (1995). S. Bhatnagar, R. S. Sutton,
    M. Ghavamzadeh, M. Lee, "Natural actor-critic algorithms", Automatica 45 (2009).
    """
    S = V.check_int(n_states, "n_states")
    A = V.check_int(n_actions, "n_actions")
    b = V.check_int(branching, "branching")
    gamma = V.check_gamma(gamma)
    if S > _MAX_STATES:
        raise ValueError(f"n_states must be <= {_MAX_STATES} (int32 indices), got {S}")
    if b > S:
        raise ValueError(f"branching must be <= n_states = {S}, got {b}")
    if locality is not None:
        k = V.check_int(locality, "locality")
        if b > 2 * k + 1:
            raise ValueError(f"branching must be <= 2*locality + 1 = {2 * k + 1}, got {b}")
        if 2 * k + 1 >= S:
            locality = None
    rng = V.check_seed(seed)
    L = S * A
    window = S if locality is None else 2 * k + 1

    # Floyd: for j = W-b..W-1 draw t in [0, j]; keep t unless already chosen, else j.
    succ = np.empty((L, b), dtype=np.int32)
    for i, j in enumerate(range(window - b, window)):
        t = rng.integers(0, j + 1, size=L, dtype=np.int32)
        if i:
            t[(succ[:, :i] == t[:, None]).any(axis=1)] = j
        succ[:, i] = t
    del t
    if locality is not None:  # offsets 0..2k → states s-k..s+k (mod S)
        succ += (np.arange(S, dtype=np.int32) - k).repeat(A)[:, None]
        np.remainder(succ, S, out=succ)
    succ.sort(axis=1)

    p = rng.standard_exponential(L * b)
    p2 = p.reshape(L, b)
    p2 /= p2.sum(axis=1, keepdims=True)
    r = rng.random(L)
    return MDP(np.arange(0, L + 1, A, dtype=np.int64), np.tile(np.arange(A, dtype=np.int64), S),
               np.arange(0, L * b + 1, b, dtype=np.int64), succ.reshape(-1), p, r, gamma,
               _copy=False)


# ------------------------------------------------------------------------- gridworld
_MOVES = np.array([(-1, 0), (0, 1), (1, 0), (0, -1)])  # up, right, down, left
_LAYOUT = {"S": "start", "F": "free", ".": "free", "#": "wall", "G": "goal", "T": "trap", "H": "trap"}


def _cell(rc):
    return f"({int(rc[0])}, {int(rc[1])})"


def _cells(cells, name, height, width):
    arr = np.asarray(list(cells), dtype=object)
    if arr.size == 0:
        return np.zeros((0, 2), dtype=np.int64)
    if arr.ndim != 2 or arr.shape[1] != 2 or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in arr.ravel()):
        raise ValueError(f"{name} must be a sequence of (row, col) integer pairs, got {cells!r}")
    arr = arr.astype(np.int64)
    bad = (arr < 0).any(axis=1) | (arr[:, 0] >= height) | (arr[:, 1] >= width)
    if bad.any():
        raise ValueError(f"{name}: cell {_cell(arr[np.argmax(bad)])} is outside the "
                         f"{height}x{width} grid")
    return arr


def _parse_layout(layout):
    if isinstance(layout, str) or not all(isinstance(row, str) for row in layout) or not layout:
        raise TypeError("layout must be a non-empty list of strings, e.g. ['SF#', 'FFG']")
    width = len(layout[0])
    cells = {"start": [], "wall": [], "goal": [], "trap": []}
    for i, row in enumerate(layout):
        if len(row) != width or width == 0:
            raise ValueError(f"layout rows must be non-empty and of equal length: row {i} has "
                             f"{len(row)} characters, row 0 has {width}")
        for j, ch in enumerate(row):
            if ch not in _LAYOUT:
                raise ValueError(f"layout[{i}][{j}] = {ch!r}: use S (start), F or . (free), "
                                 "# (wall), G (goal), T or H (trap)")
            cells.setdefault(_LAYOUT[ch], []).append((i, j))
    if len(cells["start"]) > 1:
        raise ValueError(f"layout has {len(cells['start'])} start cells 'S', at most one allowed")
    start = cells["start"][0] if cells["start"] else None
    return len(layout), width, cells["wall"], cells["goal"], cells["trap"], start


def gridworld(height=None, width=None, walls=(), goals=None, traps=(), slip=0.1,
              step_reward=0.0, goal_reward=1.0, trap_reward=-1.0, gamma=0.99, start=None,
              layout=None):
    """A slippery gridworld with walls, absorbing goals and traps.

    Parameters
    ----------
    height, width : int
        Grid size; cells are ``(row, col)`` with row 0 at the top.
    walls, traps : sequence of (row, col)
        Wall cells (not states) and trap cells (absorbing).
    goals : sequence of (row, col), optional
        Absorbing goal cells; default the bottom-right corner. ``()`` for none.
    slip : float in [0, 1], default 0.1
        Probability that a move slips to one of the two directions *perpendicular*
        to the intended one (``slip/2`` each, as in Russell & Norvig's 4x3 world with
        ``slip=0.2``); the intended move happens with probability ``1 - slip``.
    step_reward, goal_reward, trap_reward : float
        The reward of a move from a non-terminal cell is ``goal_reward`` if it lands
        in a goal, ``trap_reward`` if it lands in a trap, ``step_reward`` otherwise.
    gamma : float in [0, 1), default 0.99
    start : (row, col), optional
        Start cell: ``rho`` is a point mass there. Default: ``rho`` uniform over the
        non-terminal cells.
    layout : list of str, optional
        A map instead of the arguments above (FrozenLake style), one string per row:
        ``S`` start, ``F`` or ``.`` free, ``#`` wall, ``G`` goal, ``T`` or ``H`` trap.
        Goals are exactly the ``G`` cells.

    Returns
    -------
    MDP
        Rectangular with 4 actions ``0=up, 1=right, 2=down, 3=left``. States are the
        non-wall cells numbered in row-major order. A move into a wall or the border
        stays put. In goals and traps every action is a self-loop with reward 0.

    Examples
    --------
    >>> m = gridworld(layout=["SF#", "FTG"], slip=0.0)
    >>> m.n_states, m.n_actions
    (5, 4)
    """
    if layout is not None:
        if (height, width, goals, start) != (None,) * 4 or len(walls) or len(traps):
            raise ValueError("give either layout or height/width/walls/goals/traps/start, not both")
        height, width, walls, goals, traps, start = _parse_layout(layout)
    elif height is None or width is None:
        raise ValueError("height and width are required unless layout is given")
    H = V.check_int(height, "height")
    W = V.check_int(width, "width")
    slip = _real(slip, "slip")
    if not 0.0 <= slip <= 1.0:
        raise ValueError(f"slip must be in [0, 1], got {slip}")
    rewards = [_real(x, n) for x, n in ((step_reward, "step_reward"), (goal_reward, "goal_reward"),
                                        (trap_reward, "trap_reward"))]
    gamma = V.check_gamma(gamma)
    if goals is None:
        goals = [(H - 1, W - 1)]
    kind = np.zeros((H, W), dtype=np.int8)  # 0 free, 1 wall, 2 goal, 3 trap
    for code, (name, cells) in enumerate((("walls", walls), ("goals", goals), ("traps", traps)), 1):
        cells = _cells(cells, name, H, W)
        taken = kind[cells[:, 0], cells[:, 1]]
        if taken.any():
            i = int(np.argmax(taken))
            raise ValueError(f"{name}: cell {_cell(cells[i])} is already a "
                             f"{['', 'wall', 'goal', 'trap'][taken[i]]}")
        kind[cells[:, 0], cells[:, 1]] = code
    if (kind == 1).all():
        raise ValueError("every cell is a wall: the gridworld has no states")

    index = np.full((H, W), -1, dtype=np.int64)
    rows, cols = np.nonzero(kind != 1)
    S = rows.size
    index[rows, cols] = np.arange(S)
    terminal = kind[rows, cols] >= 2
    nr, nc = rows[:, None] + _MOVES[:, 0], cols[:, None] + _MOVES[:, 1]  # (S, 4)
    inside = (nr >= 0) & (nr < H) & (nc >= 0) & (nc < W)
    target = index[nr.clip(0, H - 1), nc.clip(0, W - 1)]
    target = np.where(inside & (target >= 0), target, np.arange(S)[:, None])

    # outcome o of pair (s, a): direction (a + [0, 1, 3][o]) % 4 with prob [1-slip, slip/2, slip/2]
    dirs = (np.arange(4)[:, None] + [0, 1, 3]) % 4  # (4 actions, 3 outcomes)
    col = target[:, dirs]  # (S, 4, 3)
    prob = np.broadcast_to(np.array([1.0 - slip, slip / 2, slip / 2]), col.shape).copy()
    col[terminal] = np.arange(S)[terminal, None, None]
    prob[terminal] = [1.0, 0.0, 0.0]
    keep = prob.reshape(-1) > 0
    row = np.repeat(np.arange(4 * S), 3)[keep]
    P = sp.csr_array((prob.reshape(-1)[keep], (row, col.reshape(-1)[keep])), shape=(4 * S, S))
    cell_reward = np.array([rewards[0], 0.0, rewards[1], rewards[2]])[kind[rows, cols]]
    R = (P @ cell_reward).reshape(S, 4)
    R[terminal] = 0.0

    if start is not None:
        s0 = _cells([start], "start", H, W)[0]
        if kind[s0[0], s0[1]] == 1:
            raise ValueError(f"start: cell {_cell(s0)} is a wall")
        rho = np.zeros(S)
        rho[index[s0[0], s0[1]]] = 1.0
    elif terminal.all():
        raise ValueError("every non-wall cell is a goal or trap: give start to place rho")
    else:
        rho = np.where(terminal, 0.0, 1.0 / (~terminal).sum())
    return _rectangular(P, R, gamma, rho)


# ----------------------------------------------------------------------------- chain
def chain(n_states=6, gamma=0.95, small_reward=0.005, large_reward=1.0):
    """RiverSwim: a chain where exploring to the far right end pays off.

    Parameters
    ----------
    n_states : int >= 2, default 6
    gamma : float in [0, 1), default 0.95
    small_reward : float, default 5/1000
        Reward of ``left`` in the leftmost state 0.
    large_reward : float, default 1
        Reward of ``right`` in the rightmost state ``n_states - 1``.

    Returns
    -------
    MDP
        2 actions. ``0 = left``: moves to ``s - 1`` with probability 1 (stays at 0).
        ``1 = right`` (swimming against the current):

        ========================  ======  ======  =======
        state                     left    stay    right
        ========================  ======  ======  =======
        0 (left end)              --      0.4     0.6
        1 .. n_states-2           0.05    0.6     0.35
        n_states-1 (right end)    0.4     0.6     --
        ========================  ======  ======  =======

        ``r(0, left) = small_reward``, ``r(n_states-1, right) = large_reward``, all
        other rewards 0. ``rho`` is a point mass at state 0 (the standard start).

    References
    ----------
    A. L. Strehl, M. L. Littman, "An analysis of model-based interval estimation for
    Markov decision processes", J. Comput. Syst. Sci. 74(8) (2008) — RiverSwim.
    I. Osband, D. Russo, B. Van Roy, "(More) efficient reinforcement learning via
    posterior sampling", NeurIPS 2013 — the probabilities and rewards used here.
    """
    N = V.check_int(n_states, "n_states", minimum=2)
    gamma = V.check_gamma(gamma)
    small_reward = _real(small_reward, "small_reward")
    large_reward = _real(large_reward, "large_reward")
    s = np.arange(N)
    # right: (s-1, s, s+1) with (0.05, 0.6, 0.35); the ends fold the missing side away
    prob = np.tile([0.05, 0.6, 0.35], (N, 1))
    prob[0] = [0.0, 0.4, 0.6]
    prob[-1] = [0.4, 0.6, 0.0]
    keep = prob.reshape(-1) > 0
    rows = np.concatenate([2 * s, np.repeat(2 * s + 1, 3)[keep]])
    cols = np.concatenate([np.maximum(s - 1, 0), (s[:, None] + [-1, 0, 1]).reshape(-1)[keep]])
    data = np.concatenate([np.ones(N), prob.reshape(-1)[keep]])
    P = sp.csr_array((data, (rows, cols)), shape=(2 * N, N))
    R = np.zeros((N, 2))
    R[0, 0], R[-1, 1] = small_reward, large_reward
    rho = np.zeros(N)
    rho[0] = 1.0
    return _rectangular(P, R, gamma, rho)


# ------------------------------------------------------------------------ token_tree
def token_tree(vocab, depth, gamma=0.99, seed=None):
    """A toy of LLM generation: states are token prefixes, actions append a token.

    Parameters
    ----------
    vocab : int
        Number of tokens V (= number of actions).
    depth : int
        Sequence length D.
    gamma : float in [0, 1), default 0.99
    seed : int, None or numpy.random.Generator
        Seeds the "reward model": a table of shape (V**D,) uniform on [0, 1), one
        score per complete sequence.

    Returns
    -------
    MDP
        ``(V**(D+1) - 1) / (V - 1)`` states (``D + 1`` if V = 1): every prefix of
        length 0..D, numbered breadth-first: the root (empty prefix) is state 0 and
        prefix ``p`` followed by token ``t`` is state ``V*p + 1 + t``. Transitions
        are deterministic. Appending the last token of a sequence earns its score
        (complete sequence ``c``, in breadth-first order among the leaves, earns
        ``table[c]``); every other reward is 0. Complete sequences (leaves) are
        absorbing: each action is a self-loop with reward 0. ``rho`` is a point mass
        at the root.

    Examples
    --------
    >>> token_tree(4, 8, seed=0).n_states
    87381
    """
    Vb = V.check_int(vocab, "vocab")
    D = V.check_int(depth, "depth")
    gamma = V.check_gamma(gamma)
    n_prefix = [D, D + 1] if Vb == 1 else [(Vb ** d - 1) // (Vb - 1) for d in (D, D + 1)]
    n_inner, N = n_prefix  # prefixes shorter than D; all prefixes
    if N > _MAX_STATES:
        raise ValueError(f"token_tree({vocab}, {depth}) would have {N} states, more than "
                         f"{_MAX_STATES} (int32 indices)")
    rng = V.check_seed(seed)
    L = N * Vb
    succ = np.arange(1, L + 1, dtype=np.int32)  # pair k = V*s + t of an inner s → V*s + 1 + t
    succ[n_inner * Vb:] = np.arange(n_inner, N, dtype=np.int32).repeat(Vb)
    r = np.zeros(L)
    r[(n_inner - Vb ** (D - 1)) * Vb: n_inner * Vb] = rng.random(Vb ** D)  # depth D-1 → leaf
    rho = np.zeros(N)
    rho[0] = 1.0
    return MDP(np.arange(0, L + 1, Vb, dtype=np.int64), np.tile(np.arange(Vb, dtype=np.int64), N),
               np.arange(L + 1, dtype=np.int64), succ, np.ones(L), r, gamma, rho, _copy=False)
