"""The sparse finite MDP container.

An MDP has states ``s = 0..S-1``; each state has a non-empty, sorted set of
actions. The pairs ``(s, a)`` are stored in (state, action) order — the
state-action-pair layout of QuantEcon's ``DiscreteDP`` — so per-pair tables
(policies, rewards, Q, advantages) are flat arrays of shape ``(n_pairs,)`` and the
pairs of state ``s`` are ``a_indptr[s]:a_indptr[s+1]``. Transitions
``P(s'|s, a)`` are a CSR matrix of shape ``(n_pairs, n_states)``.

For a rectangular MDP (every state has actions ``0..A-1``) per-pair tables can also
be given and returned with shape ``(n_states, n_actions)``.
"""
import functools

import numpy as np
import scipy.sparse as sp

from . import _validation as V

__all__ = ["MDP"]

_ARRAYS = ("a_indptr", "a_indices", "p_indptr", "p_indices", "p_data", "r")


class MDP:
    """A finite discounted MDP in canonical sparse state-action-pair form.

    Build one with a constructor class method (``from_dense``, ``from_sparse``,
    ``from_sa_pairs``, ``from_mdptoolbox``, ``from_gymnasium``, ``load``) or a
    generator (``fastppo.garnet``, ``gridworld``, ``chain``, ``token_tree``).
    The direct constructor takes the canonical arrays themselves and checks them.

    Parameters
    ----------
    a_indptr : ndarray of shape (n_states + 1,), int64
        The pairs of state ``s`` are ``a_indptr[s]:a_indptr[s + 1]``.
    a_indices : ndarray of shape (n_pairs,), int64
        Action label of each pair, increasing within a state.
    p_indptr, p_indices, p_data : ndarray
        CSR of the transition matrix of shape (n_pairs, n_states); int64, int32,
        float64; indices sorted within rows; rows sum to 1.
    r : ndarray of shape (n_pairs,), float64
        Expected reward of each pair.
    gamma : float
        Discount factor in [0, 1).
    rho : ndarray of shape (n_states,), optional
        Start distribution; uniform by default.

    The arrays are copied (the MDP's own copies are read-only), so the caller's
    arrays are neither aliased nor frozen.

    Attributes
    ----------
    n_states, n_actions, n_pairs : int
        ``n_actions`` is the largest number of actions of any state.
    gamma : float
    rho : ndarray of shape (n_states,)
    is_rectangular : bool
        True when every state has the actions ``0..n_actions-1``.
    """

    def __init__(self, a_indptr, a_indices, p_indptr, p_indices, p_data, r, gamma, rho=None,
                 *, _copy=True):
        # _copy=False: the arrays are fresh (from_sa_pairs, load) and may be taken over
        conv = (lambda x, dt: np.array(x, dtype=dt, order="C")) if _copy else (
            lambda x, dt: np.ascontiguousarray(x, dtype=dt))
        a_indptr = conv(a_indptr, np.int64)
        if a_indptr.ndim != 1 or a_indptr.shape[0] < 2:
            raise ValueError("the MDP must have at least one state (a_indptr of length >= 2)")
        n_states = a_indptr.shape[0] - 1
        arrays = dict(
            a_indptr=a_indptr,
            a_indices=conv(a_indices, np.int64),
            p_indptr=conv(p_indptr, np.int64),
            p_indices=conv(p_indices, np.int32),
            p_data=conv(p_data, np.float64),
            r=conv(r, np.float64),
        )
        V.check_canonical(**arrays, n_states=n_states)
        for name, x in arrays.items():
            x.flags.writeable = False
            setattr(self, name, x)
        self.gamma = V.check_gamma(gamma)
        self.rho = V.check_distribution(rho, n_states, "rho")
        self.rho.flags.writeable = False
        self.n_states = n_states
        self.n_pairs = self.r.shape[0]
        counts = np.diff(a_indptr)
        self.n_actions = int(counts.max())
        self.is_rectangular = bool(
            (counts == self.n_actions).all()
            and (self.a_indices.reshape(n_states, -1) == np.arange(self.n_actions)).all()
        )

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_sa_pairs(cls, s_indices, a_indices, P, R, gamma, rho=None, n_states=None):
        """Build from QuantEcon's state-action-pair form (pairs in any order).

        Parameters
        ----------
        s_indices, a_indices : array_like of shape (n_pairs,)
            State and action of each pair.
        P : array_like or scipy.sparse of shape (n_pairs, n_states)
            ``P[k, s']`` is the probability of moving to ``s'`` from pair ``k``.
        R : array_like of shape (n_pairs,)
        gamma : float in [0, 1)
        rho : array_like of shape (n_states,), optional
        n_states : int, optional
            Defaults to ``P.shape[1]``.
        """
        if n_states is None:
            shape = P.shape if sp.issparse(P) else np.shape(P)
            if len(shape) != 2:
                raise ValueError(f"P must have shape (n_pairs, n_states), got {tuple(shape)}")
            n_states = shape[1]
        arrays = V.canonical_from_pairs(s_indices, a_indices, P, R, n_states)
        return cls(**arrays, gamma=gamma, rho=rho, _copy=False)

    @classmethod
    def from_dense(cls, P, R, gamma, rho=None):
        """Build from dense arrays ``P[s, a, s']`` of shape (S, A, S) and ``R[s, a]`` of shape (S, A)."""
        P = np.asarray(P)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ValueError(f"P must have shape (S, A, S), got {P.shape}")
        S, A, _ = P.shape
        R = _reward_table(R, S, A)
        s, a = np.divmod(np.arange(S * A), A)
        return cls.from_sa_pairs(s, a, P.reshape(S * A, S), R.reshape(-1), gamma, rho)

    @classmethod
    def from_sparse(cls, P, R, gamma, rho=None):
        """Build from a scipy.sparse ``P`` of shape (S*A, S) (row ``s*A + a``) and ``R`` of shape (S, A)."""
        if not sp.issparse(P):
            raise TypeError("P must be a scipy.sparse matrix or array; use from_dense for arrays")
        R = V.as_float_array(R, "R")
        if R.ndim != 2:
            raise ValueError(f"R must have shape (S, A), got {R.shape}")
        S, A = R.shape
        if P.shape != (S * A, S):
            raise ValueError(f"P must have shape (S*A, S) = ({S * A}, {S}) to match R, got {P.shape}")
        s, a = np.divmod(np.arange(S * A), A)
        return cls.from_sa_pairs(s, a, P, R.reshape(-1), gamma, rho)

    @classmethod
    def from_mdptoolbox(cls, P, R, gamma, rho=None):
        """Build from pymdptoolbox's layout.

        Parameters
        ----------
        P : array_like of shape (A, S, S), or a list of A (sparse) matrices of shape (S, S)
        R : array_like of shape (S, A), (S,) or (A, S, S)
            (A, S, S) holds rewards per transition; the expected reward is used.
        """
        if isinstance(P, (list, tuple)) or (isinstance(P, np.ndarray) and P.dtype == object):
            mats = [sp.csr_array(m, dtype=np.float64) if sp.issparse(m) else np.asarray(m, dtype=np.float64) for m in P]
        else:
            P = np.asarray(P, dtype=np.float64)
            if P.ndim != 3 or P.shape[1] != P.shape[2]:
                raise ValueError(f"P must have shape (A, S, S), got {P.shape}")
            mats = list(P)
        A = len(mats)
        if A == 0:
            raise ValueError("P must hold at least one action")
        if len(mats[0].shape) != 2:
            raise ValueError(f"P[0] must be a square matrix of shape (S, S), got shape {mats[0].shape}")
        S = mats[0].shape[0]
        for a, m in enumerate(mats):
            if m.shape != (S, S):
                raise ValueError(f"P[{a}] must have shape ({S}, {S}), got {m.shape}")
        # rows ordered (s, a): stack per action, then interleave
        stacked = sp.vstack([sp.csr_array(m) for m in mats], format="csr")  # row a*S + s
        perm = (np.arange(S)[:, None] + S * np.arange(A)[None, :]).reshape(-1)
        P_sa = stacked[perm]
        R = V.as_float_array(R, "R")
        if R.shape == (A, S, S):
            r = np.stack([np.asarray((sp.csr_array(m).multiply(R[a])).sum(axis=1)).reshape(-1)
                          if sp.issparse(m) else (m * R[a]).sum(axis=1) for a, m in enumerate(mats)], axis=1)
        elif R.shape == (S,):
            r = np.repeat(R[:, None], A, axis=1)
        elif R.shape == (S, A):
            r = R
        else:
            raise ValueError(f"R must have shape (S, A), (S,) or (A, S, S) = ({S}, {A}), ({S},) or ({A}, {S}, {S}); got {R.shape}")
        s, a = np.divmod(np.arange(S * A), A)
        return cls.from_sa_pairs(s, a, P_sa, r.reshape(-1), gamma, rho)

    @classmethod
    def from_gymnasium(cls, env_or_P, gamma, rho=None):
        """Build from a Gymnasium toy-text environment or its ``P`` dict.

        ``P[s][a]`` is a list of ``(prob, next_state, reward, terminated)``. The
        expected reward of a pair is ``sum(prob * reward)``. Transitions with
        ``terminated=True`` move to one extra absorbing state (index
        ``n_states - 1``, reward 0, every action a self-loop), so values after
        termination are 0 and the MDP stays rectangular. Duplicate
        ``(prob, next_state)`` entries are summed.

        ``rho`` defaults to the environment's ``initial_state_distrib`` when it has
        one (FrozenLake, Taxi), else uniform over the non-absorbing states.
        """
        P = env_or_P
        env_rho = None
        if not isinstance(P, dict):
            env = getattr(env_or_P, "unwrapped", env_or_P)
            if not hasattr(env, "P"):
                raise TypeError("env_or_P must be a dict P[s][a] or an environment with a .P attribute")
            P = env.P
            env_rho = getattr(env, "initial_state_distrib", None)
            if env_rho is None and hasattr(env, "start_state_index"):
                env_rho = np.zeros(len(P))
                env_rho[env.start_state_index] = 1.0
        S = len(P)
        if S == 0:
            raise ValueError("P must hold at least one state")
        missing = [s for s in range(S) if s not in P]
        if missing:
            raise ValueError(f"P must be keyed by the states 0..{S - 1}: state {missing[0]} is missing")
        states = range(S)
        rows, cols, vals, s_idx, a_idx, rew = [], [], [], [], [], []
        any_terminal = False
        k = 0
        for s in states:
            actions = P[s]
            labels = sorted(actions) if isinstance(actions, dict) else range(len(actions))
            for a in labels:
                trans = actions[a]
                if len(trans) == 0:
                    raise ValueError(f"pair (s={s}, a={a}): no transitions")
                exp_r = 0.0
                for t in trans:
                    if len(t) != 4:
                        raise ValueError(f"pair (s={s}, a={a}): transitions must be (prob, next_state, reward, terminated), got {t!r}")
                    prob, nxt, reward, done = t
                    if not 0 <= int(nxt) < S:
                        raise ValueError(f"pair (s={s}, a={a}): next state {nxt} out of range [0, {S})")
                    exp_r += float(prob) * float(reward)
                    rows.append(k)
                    cols.append(S if done else int(nxt))
                    vals.append(float(prob))
                    any_terminal |= bool(done)
                s_idx.append(s)
                a_idx.append(a)
                rew.append(exp_r)
                k += 1
        n_states = S + 1 if any_terminal else S
        n_actions = max(np.bincount(s_idx))
        if any_terminal:
            for a in range(n_actions):
                rows.append(k)
                cols.append(S)
                vals.append(1.0)
                s_idx.append(S)
                a_idx.append(a)
                rew.append(0.0)
                k += 1
        Pm = sp.coo_array((vals, (rows, cols)), shape=(k, n_states)).tocsr()
        if rho is None and env_rho is not None:
            rho = np.zeros(n_states)
            rho[:S] = np.asarray(env_rho, dtype=np.float64)
            rho /= rho.sum()
        elif rho is None and any_terminal:
            rho = np.zeros(n_states)
            rho[:S] = 1.0 / S
        return cls.from_sa_pairs(s_idx, a_idx, Pm, rew, gamma, rho, n_states=n_states)

    # --------------------------------------------------------------- persistence
    def save(self, path):
        """Write the MDP to one ``.npz`` file at exactly ``path`` (``MDP.load(path)`` reads it back exactly)."""
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        kw = dict(**arrays, gamma=np.float64(self.gamma), rho=self.rho, format=np.array("fastppo-mdp-1"))
        if hasattr(path, "write"):
            np.savez(path, **kw)
        else:  # np.savez would append ".npz" to a bare path, and load(path) would then fail
            with open(path, "wb") as f:
                np.savez(f, **kw)

    @classmethod
    def load(cls, path):
        """Read an MDP written by :meth:`save`."""
        with np.load(path, allow_pickle=False) as f:
            if "format" not in f or str(f["format"]) != "fastppo-mdp-1":
                raise ValueError(f"{path} is not a fastppo MDP file")
            return cls(**{name: f[name] for name in _ARRAYS}, gamma=float(f["gamma"]), rho=f["rho"],
                       _copy=False)

    # ------------------------------------------------------------------ views
    @functools.cached_property
    def _transitions(self):
        """The transition arrays and their caches (:class:`Transitions`); an MDP made from
        another with the same arrays may take over the other's holder and its caches."""
        return Transitions(self.p_indptr, self.p_indices, self.p_data)

    @functools.cached_property
    def s_indices(self):
        """State of each pair, shape (n_pairs,), int64 (computed once, read-only)."""
        s = np.repeat(np.arange(self.n_states, dtype=np.int64), np.diff(self.a_indptr))
        s.flags.writeable = False
        return s

    @functools.cached_property
    def terminal(self):
        """Absorbing zero-reward states, shape (S,), bool (computed once, read-only).

        A state is terminal when every action loops back to it with probability 1 and
        reward 0 (e.g. the absorbing state ``from_gymnasium`` adds); rollouts end there.
        """
        single = np.diff(self.p_indptr) == 1  # rows sum to 1, so that entry is 1
        first = self.p_indices[np.minimum(self.p_indptr[:-1], self.p_indices.shape[0] - 1)]
        loops = single & (first == self.s_indices) & (self.r == 0.0)
        term = np.logical_and.reduceat(loops, self.a_indptr[:-1])
        term.flags.writeable = False
        return term

    @property
    def P(self):
        """Transitions as a scipy.sparse CSR array of shape (n_pairs, n_states) (a copy)."""
        return sp.csr_array((self.p_data.copy(), self.p_indices.copy(), self.p_indptr.copy()),
                            shape=(self.n_pairs, self.n_states))

    @property
    def R(self):
        """Rewards in the MDP's table shape: (S, A) if rectangular, else (n_pairs,)."""
        return self.to_table(self.r)

    def pair_name(self, k):
        """``"pair (s=.., a=..)"`` for the flat pair index ``k`` (used in error messages)."""
        s = int(np.searchsorted(self.a_indptr, k, side="right") - 1)
        return f"pair (s={s}, a={int(self.a_indices[k])})"

    def to_pairs(self, table):
        """A per-pair table as a flat float64 array of shape (n_pairs,)."""
        return V.pair_table(self, table, "table")

    def to_table(self, flat, like=None):
        """Reshape a flat (n_pairs,) array to (S, A) for rectangular MDPs.

        With ``like`` given, return the shape of ``like`` instead: (n_pairs,) stays flat.
        """
        flat = np.asarray(flat)
        if like is not None and np.ndim(like) == 1:
            return flat
        if self.is_rectangular:
            return flat.reshape(self.n_states, self.n_actions)
        return flat

    def uniform_policy(self):
        """The uniform policy over each state's actions, flat (n_pairs,)."""
        return np.repeat(1.0 / np.diff(self.a_indptr), np.diff(self.a_indptr))

    def __eq__(self, other):
        if not isinstance(other, MDP):
            return NotImplemented
        return (self.gamma == other.gamma and np.array_equal(self.rho, other.rho)
                and all(np.array_equal(getattr(self, n), getattr(other, n)) for n in _ARRAYS))

    __hash__ = None

    def __repr__(self):
        kind = f"{self.n_actions} actions" if self.is_rectangular else f"up to {self.n_actions} actions"
        return (f"MDP(n_states={self.n_states:,}, {kind}, n_pairs={self.n_pairs:,}, "
                f"nnz={self.p_data.size:,}, gamma={self.gamma})")


class Transitions:
    """The transition CSR arrays of an MDP and what is derived from them alone.

    Caches here depend on ``p_indptr``, ``p_indices``, ``p_data`` only (never on
    rewards, γ or ρ), so every MDP sharing these arrays shares them. Each is computed on
    first use and read-only.

    Parameters
    ----------
    p_indptr, p_indices, p_data : ndarray
        The canonical (read-only) transition arrays, shape (n_pairs + 1,), (nnz,), (nnz,).
    """

    def __init__(self, p_indptr, p_indices, p_data):
        self.p_indptr, self.p_indices, self.p_data = p_indptr, p_indices, p_data

    @functools.cached_property
    def row_lengths(self):
        """Successor entries of each pair, ``diff(p_indptr)``, shape (n_pairs,), int64
        (gathering a policy's compact rows reads it)."""
        lengths = np.diff(self.p_indptr)
        lengths.flags.writeable = False
        return lengths


def _reward_table(R, S, A):
    R = V.as_float_array(R, "R")
    if R.shape != (S, A):
        raise ValueError(f"R must have shape (S, A) = ({S}, {A}), got {R.shape}")
    return R
