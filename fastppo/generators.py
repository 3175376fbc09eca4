"""Seeded generators of benchmark MDPs.

- :func:`garnet`: random sparse MDPs (``branching`` successors per pair), optionally
  *local* (successors within ``locality`` states of ``s``, a slow-mixing family);
  builds 10^6 states × 10 actions × 10 successors in well under 2 GiB.
- :func:`gridworld`: a slippery grid with walls, goals and traps (FrozenLake-style
  ``layout`` maps accepted).
- :func:`chain`: RiverSwim, the classic hard-exploration chain.
- :func:`queue2d`: two queues sharing one server whose speed is controlled (a 2-D birth–death
  chain, uniformized).
- :func:`pendulum`: swing-up of a torque-limited pendulum on a (θ, ω) grid (a control-grid
  discretisation with bilinear interpolation).
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

__all__ = ["garnet", "gridworld", "chain", "queue2d", "pendulum", "token_tree"]

_MAX_STATES = np.iinfo(np.int32).max  # next-state indices are int32


def _real(x, name):
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return float(x)


def _rectangular(P, R, gamma, rho, dtype):
    """MDP from a (S*A, S) sparse P and (S, A) R, rows in (state, action) order."""
    S, A = R.shape
    return MDP.from_sa_pairs(np.repeat(np.arange(S), A), np.tile(np.arange(A), S),
                             P, R.reshape(-1), gamma, rho, n_states=S, dtype=dtype)


# ---------------------------------------------------------------------------- garnet
GARNET_CHUNK = 1 << 20  # pairs per chunk of garnet's duplicate checks and probabilities


def garnet(n_states, n_actions, branching, gamma=0.99, seed=None, locality=None, *,
           dtype=np.float64):
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
    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the probabilities (see :class:`fastppo.MDP`). The same seed gives the
        same MDP in either dtype: the float32 one holds the float64 one's probabilities
        rounded to float32.

    Returns
    -------
    MDP
        Rectangular, ``n_pairs = S*A``, ``nnz = S*A*b``; ``rho`` uniform.

    Notes
    -----
    Each pair's successor set is a uniformly random b-subset of its window, drawn
    exactly with Floyd's algorithm vectorised over pairs (b passes over an int32
    array of shape (S*A, b), which becomes ``p_indices``; no rejection loop, no dense
    array). The probabilities are normalised standard exponentials, i.e. uniform on the
    simplex (Dirichlet(1, ..., 1)), drawn and normalised in float64 by chunks of
    ``GARNET_CHUNK`` pairs (the same draws as one call: the stream does not depend on
    the chunking) and stored in ``dtype``; rewards are uniform on [0, 1). Memory: the
    final arrays (8 + the dtype's bytes per non-zero plus 24 bytes per pair) plus one
    int32 per pair and O(GARNET_CHUNK · b) bytes of temporaries; 10^6 × 10 × 10 peaks
    well under 2 GiB, 10^7 × 10 × 10 in float32 at 12 GiB (benchmarks/RESULTS.md).

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
    dtype = V.check_transition_dtype(dtype)
    rng = V.check_seed(seed)
    L = S * A
    window = S if locality is None else 2 * k + 1

    # Floyd: for j = W-b..W-1 draw t in [0, j]; keep t unless already chosen, else j.
    succ = np.empty((L, b), dtype=np.int32)
    chunks = [(lo, min(L, lo + GARNET_CHUNK)) for lo in range(0, L, GARNET_CHUNK)]
    for i, j in enumerate(range(window - b, window)):
        t = rng.integers(0, j + 1, size=L, dtype=np.int32)
        for lo, hi in chunks if i else ():
            tc = t[lo:hi]
            tc[(succ[lo:hi, :i] == tc[:, None]).any(axis=1)] = j
        succ[:, i] = t
    del t
    for lo, hi in chunks:
        block = succ[lo:hi]
        if locality is not None:  # offsets 0..2k → states s-k..s+k (mod S)
            block += (np.arange(lo // A, (hi - 1) // A + 1, dtype=np.int32) - k
                      ).repeat(A)[lo % A:lo % A + hi - lo, None]
            np.remainder(block, S, out=block)
        block.sort(axis=1)

    p = np.empty(L * b, dtype=dtype)
    p2 = p.reshape(L, b)
    for lo, hi in chunks:  # draws in order: the same stream as one call
        x = rng.standard_exponential((hi - lo) * b).reshape(hi - lo, b)
        x /= x.sum(axis=1, keepdims=True)
        p2[lo:hi] = x
    del x
    r = rng.random(L)
    return MDP(np.arange(0, L + 1, A, dtype=np.int64), np.tile(np.arange(A, dtype=np.int64), S),
               np.arange(0, L * b + 1, b, dtype=np.int64), succ.reshape(-1), p, r, gamma,
               dtype=dtype, _copy=False)


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
              layout=None, *, dtype=np.float64):
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

    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the transition probabilities (see :class:`fastppo.MDP`).

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
    return _rectangular(P, R, gamma, rho, dtype)


# ----------------------------------------------------------------------------- chain
def chain(n_states=6, gamma=0.95, small_reward=0.005, large_reward=1.0, *, dtype=np.float64):
    """RiverSwim: a chain where exploring to the far right end pays off.

    Parameters
    ----------
    n_states : int >= 2, default 6
    gamma : float in [0, 1), default 0.95
    small_reward : float, default 5/1000
        Reward of ``left`` in the leftmost state 0.
    large_reward : float, default 1
        Reward of ``right`` in the rightmost state ``n_states - 1``.

    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the transition probabilities (see :class:`fastppo.MDP`).

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
    return _rectangular(P, R, gamma, rho, dtype)


# ---------------------------------------------------------------------------- queue2d
def queue2d(capacity=(99, 99), arrival=(0.3, 0.25), service=(0.2, 0.4), holding_cost=(1.0, 1.5),
            fast_cost=2.0, loss_cost=20.0, gamma=0.99, *, dtype=np.float64):
    """Two finite queues sharing one server whose speed is controlled.

    A discrete-time (uniformized) birth–death process on (q₁, q₂), 0 ≤ qᵢ ≤ capacityᵢ. At
    each step exactly one event happens: a job arrives at queue i with probability
    ``arrival[i]`` (it is lost if the queue is full), or the job in service leaves the
    queue the server works on with probability ``service[speed]`` (if that queue is not
    empty), or nothing changes.

    Parameters
    ----------
    capacity : (int, int), default (99, 99)
        Buffer sizes N₁, N₂ ≥ 1: ``(N₁ + 1) (N₂ + 1)`` states (10,000 by default).
    arrival : (float, float), default (0.3, 0.25)
        Arrival probabilities per step λ₁, λ₂ ≥ 0.
    service : (float, float), default (0.2, 0.4)
        Completion probabilities per step at the normal and the fast speed, with
        λ₁ + λ₂ + max(service) ≤ 1.
    holding_cost : (float, float), default (1.0, 1.5)
        Cost per waiting job per step in each queue.
    fast_cost : float, default 2.0
        Cost of a step at the fast speed.
    loss_cost : float, default 20.0
        Cost of a lost arrival (charged in expectation: λᵢ when queue i is full).
    gamma : float in [0, 1), default 0.99

    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the transition probabilities (see :class:`fastppo.MDP`).

    Returns
    -------
    MDP
        Rectangular, 4 actions: ``0`` serve queue 1, ``1`` serve queue 1 fast, ``2`` serve
        queue 2, ``3`` serve queue 2 fast; at most 4 successors per pair. State
        ``q₁ (N₂ + 1) + q₂``. ``r(s, a)`` = −(h₁q₁ + h₂q₂) − fast_cost·[fast] − loss_cost·Σᵢ
        λᵢ[qᵢ = Nᵢ]. ``rho`` uniform.

    Examples
    --------
    >>> m = queue2d(capacity=(3, 4))
    >>> m.n_states, m.n_actions
    (20, 4)
    """
    N1, N2 = (V.check_int(c, f"capacity[{i}]") for i, c in enumerate(_pair(capacity, "capacity")))
    lam = np.array([_real(x, f"arrival[{i}]") for i, x in enumerate(_pair(arrival, "arrival"))])
    mu = np.array([_real(x, f"service[{i}]") for i, x in enumerate(_pair(service, "service"))])
    h = np.array([_real(x, f"holding_cost[{i}]")
                  for i, x in enumerate(_pair(holding_cost, "holding_cost"))])
    fast_cost, loss_cost = _real(fast_cost, "fast_cost"), _real(loss_cost, "loss_cost")
    gamma = V.check_gamma(gamma)
    if (lam < 0).any() or (mu < 0).any() or lam.sum() + mu.max() > 1.0:
        raise ValueError(f"probabilities must be >= 0 with arrival[0] + arrival[1] + "
                         f"max(service) <= 1, got arrival={tuple(lam)}, service={tuple(mu)}")
    S = (N1 + 1) * (N2 + 1)
    q1, q2 = np.divmod(np.arange(S), N2 + 1)
    full1, full2 = q1 == N1, q2 == N2
    rows, cols, probs = [], [], []
    R = np.empty((S, 4))
    for a in range(4):
        served = q1 if a < 2 else q2  # the queue the server works on
        rate = mu[a % 2] * (served > 0)
        up1 = np.where(full1, 0.0, lam[0])
        up2 = np.where(full2, 0.0, lam[1])
        down = np.arange(S) - np.where(a < 2, N2 + 1, 1)  # one job fewer in the served queue
        succ = np.stack([np.arange(S) + N2 + 1, np.arange(S) + 1, down, np.arange(S)], axis=1)
        p = np.stack([up1, up2, rate, 1.0 - up1 - up2 - rate], axis=1)
        keep = p > 0
        rows.append(np.repeat(4 * np.arange(S) + a, 4)[keep.ravel()])
        cols.append(succ[keep])
        probs.append(p[keep])
        R[:, a] = (-(h[0] * q1 + h[1] * q2) - fast_cost * (a % 2)
                   - loss_cost * (lam[0] * full1 + lam[1] * full2))
    P = sp.csr_array((np.concatenate(probs), (np.concatenate(rows), np.concatenate(cols))),
                     shape=(4 * S, S))
    return _rectangular(P, R, gamma, np.full(S, 1.0 / S), dtype)


def _pair(x, name):
    if isinstance(x, (str, bytes)) or np.ndim(x) != 1 or len(x) != 2:
        raise ValueError(f"{name} must be a pair of numbers, got {x!r}")
    return tuple(x)


# --------------------------------------------------------------------------- pendulum
def pendulum(n_theta=100, n_omega=100, n_actions=5, max_torque=2.0, max_speed=8.0, dt=0.05,
             gamma=0.99, *, dtype=np.float64):
    """Swing-up of a torque-limited pendulum, discretised on a (θ, ω) grid.

    The dynamics and cost of Gymnasium's ``Pendulum-v1`` (g = 10, m = 1, l = 1; θ = 0
    upright): ω' = clip(ω + (3g/2 sin θ + 3u) dt, ±max_speed), θ' = θ + ω' dt. The grid is
    θ_i = −π + 2πi/n_theta (periodic) and ω_j evenly spaced on [−max_speed, max_speed];
    the next state is spread over the 4 grid points around (θ', ω') with bilinear
    interpolation weights (Munos & Moore's discretisation: a control grid whose
    transitions are deterministic up to interpolation).

    Parameters
    ----------
    n_theta, n_omega : int, default 100, 100
        Grid points in angle (≥ 2) and angular velocity (≥ 2):
        ``n_theta * n_omega`` states.
    n_actions : int, default 5
        Torques evenly spaced on [−max_torque, max_torque] (≥ 1; one action is u = 0).
    max_torque, max_speed, dt : float
    gamma : float in [0, 1), default 0.99

    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the transition probabilities (see :class:`fastppo.MDP`).

    Returns
    -------
    MDP
        Rectangular; state ``i n_omega + j`` is (θ_i, ω_j); at most 4 successors per pair;
        ``r = −(θ² + 0.1 ω² + 0.001 u²)`` (θ in [−π, π)); ``rho`` uniform.

    Examples
    --------
    >>> m = pendulum(20, 15, 3)
    >>> m.n_states, m.n_actions, int(m.p_indptr[1] - m.p_indptr[0]) <= 4
    (300, 3, True)
    """
    nt = V.check_int(n_theta, "n_theta", minimum=2)
    nw = V.check_int(n_omega, "n_omega", minimum=2)
    A = V.check_int(n_actions, "n_actions")
    max_torque = V.check_positive(max_torque, "max_torque", strict=False)
    max_speed = V.check_positive(max_speed, "max_speed")
    dt = V.check_positive(dt, "dt")
    gamma = V.check_gamma(gamma)
    if nt * nw > _MAX_STATES:
        raise ValueError(f"n_theta * n_omega must be <= {_MAX_STATES}, got {nt * nw}")
    theta = -np.pi + 2 * np.pi * np.arange(nt) / nt
    omega = np.linspace(-max_speed, max_speed, nw)
    torque = np.linspace(-max_torque, max_torque, A) if A > 1 else np.zeros(1)
    th, om, u = np.meshgrid(theta, omega, torque, indexing="ij")  # (nt, nw, A)
    new_om = np.clip(om + (3 * 10.0 / 2 * np.sin(th) + 3.0 * u) * dt, -max_speed, max_speed)
    new_th = th + new_om * dt
    R = -(th ** 2 + 0.1 * om ** 2 + 0.001 * u ** 2)
    # fractional grid coordinates of (θ', ω'): θ periodic, ω clipped to the grid
    ft = np.mod((new_th + np.pi) * nt / (2 * np.pi), nt)
    i0 = np.minimum(np.floor(ft).astype(np.int64), nt - 1)
    wt = ft - i0
    fw = (new_om + max_speed) * (nw - 1) / (2 * max_speed)
    j0 = np.clip(np.floor(fw).astype(np.int64), 0, nw - 2)
    ww = np.clip(fw - j0, 0.0, 1.0)
    i1 = (i0 + 1) % nt
    cols = np.stack([i0 * nw + j0, i0 * nw + j0 + 1, i1 * nw + j0, i1 * nw + j0 + 1], axis=-1)
    probs = np.stack([(1 - wt) * (1 - ww), (1 - wt) * ww, wt * (1 - ww), wt * ww], axis=-1)
    S, L = nt * nw, nt * nw * A
    rows = np.repeat(np.arange(L), 4)
    keep = probs.reshape(-1) > 0
    P = sp.csr_array((probs.reshape(-1)[keep], (rows[keep], cols.reshape(-1)[keep])), shape=(L, S))
    P.sum_duplicates()
    P.data /= np.add.reduceat(P.data, P.indptr[:-1])[np.repeat(np.arange(L), np.diff(P.indptr))]
    return _rectangular(P, R.reshape(S, A), gamma, np.full(S, 1.0 / S), dtype)


# ------------------------------------------------------------------------ token_tree
def token_tree(vocab, depth, gamma=0.99, seed=None, *, dtype=np.float64):
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

    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the transition probabilities (see :class:`fastppo.MDP`).

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
               np.arange(L + 1, dtype=np.int64), succ, np.ones(L, dtype=dtype), r, gamma, rho,
               dtype=dtype, _copy=False)
