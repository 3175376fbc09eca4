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
import os
import zipfile

import numpy as np
import scipy.sparse as sp

from . import _validation as V
from ._backend import get_kernel

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
        Discount factor in [0, 1], or 1 for an episodic MDP in which every policy
        terminates: terminal states (:attr:`terminal`) absorbing with reward 0, the
        other states acyclic (:attr:`topological_order` exists); otherwise ValueError
        naming a state on a cycle.
    rho : ndarray of shape (n_states,), optional
        Start distribution; uniform by default.

    The arrays are copied (the MDP's own copies are read-only), so the caller's
    arrays are neither aliased nor frozen. Every value is checked before it is cast:
    index arrays may be of any integer dtype, or float holding integers (3.0, not 3.5);
    nothing wraps or is truncated, complex arrays are rejected, and ``n_states`` is at
    most 2³¹ − 1 (next-state indices are int32); see ``fastppo._validation``.

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
        arrays, n_states = V.canonical_arrays(a_indptr, a_indices, p_indptr, p_indices, p_data, r,
                                              copy=_copy)
        a_indptr = arrays["a_indptr"]
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
        if self.gamma == 1.0:
            V.check_episodic(self)

    # ----------------------------------------------------------------- constructors
    @classmethod
    def from_sa_pairs(cls, s_indices, a_indices, P, R, gamma, rho=None, n_states=None, *,
                      infeasible="reject"):
        """Build from QuantEcon's state-action-pair form (pairs in any order).

        Parameters
        ----------
        s_indices, a_indices : array_like of shape (n_pairs,)
            State and action label of each pair.
        P : array_like or scipy.sparse of shape (n_pairs, n_states)
            ``P[k, s']`` is the probability of moving to ``s'`` from pair ``k``.
        R : array_like of shape (n_pairs,)
        gamma : float in [0, 1)
        rho : array_like of shape (n_states,), optional
        n_states : int, optional
            Defaults to ``P.shape[1]``.
        infeasible : {"reject", "drop"}, default "reject"
            What to do with pairs of reward −inf (QuantEcon marks infeasible actions so):
            "reject" raises, naming the pair; "drop" removes them with their rows of
            ``P`` (which need not be probability vectors then), and raises naming any
            state left with no action.
        """
        V.check_choice(infeasible, "infeasible", ("reject", "drop"))
        if n_states is None:
            shape = P.shape if sp.issparse(P) else np.shape(P)
            if len(shape) != 2:
                raise ValueError(f"P must have shape (n_pairs, n_states), got {tuple(shape)}")
            n_states = shape[1]
        if infeasible == "drop":
            s_indices, a_indices, P, R = V.drop_infeasible(s_indices, a_indices, P, R, n_states)
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
    def from_mdptoolbox(cls, P, R, gamma, rho=None, *, reward_layout=None):
        """Build from pymdptoolbox's layout.

        Parameters
        ----------
        P : array_like of shape (A, S, S), or a list, tuple or object array of A
            (dense or scipy.sparse) matrices of shape (S, S)
            ``P[a][s, s']`` is the probability of moving to ``s'`` from ``s`` under ``a``.
        R : array_like, scipy.sparse, or a list, tuple or object array of A entries
            Rewards; the layout is read as pymdptoolbox reads it (``MDP._computeReward``):
            first by type, then by dimension, never from the sizes of S and A:

            ========================================  ======================  =============================
            R                                         layout                  reward of (s, a)
            ========================================  ======================  =============================
            ndarray (or sparse) of shape (S,)         ``"state"``             ``R[s]``
            ndarray (or sparse) of shape (S, A)       ``"state-action"``      ``R[s, a]``
            ndarray of shape (A, S, S)                ``"action-state-state"``  ``Σ_s' P[a][s, s'] R[a][s, s']``
            list / tuple of numbers (length S)        ``"state"``             ``R[s]``
            list / tuple / object array of A (S,)     ``"action-state"``      ``R[a][s]``
            vectors (or (S, 1), (1, S); dense,
            sparse or lists)
            list / tuple / object array of A (S, S)   ``"action-state-state"``  ``Σ_s' P[a][s, s'] R[a][s, s']``
            matrices (dense or sparse)
            ========================================  ======================  =============================

            So a nested list ``[[...], ...]`` is read per action (A entries of length S),
            while the same numbers as an ndarray of shape (S, A) are read per state, as
            in pymdptoolbox. Transition rewards are never densified when sparse.
        gamma : float in [0, 1)
        rho : array_like of shape (S,), optional
        reward_layout : {"state", "state-action", "action-state", "action-state-state"}, optional
            Read ``R`` in this layout instead (an ndarray of shape (A, S) as
            ``"action-state"``, a nested list of shape (S, A) as ``"state-action"``, ...).
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
        r = _mdptoolbox_rewards(R, mats, reward_layout)
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
                    nxt = V.check_index(nxt, f"pair (s={s}, a={a}): next state")
                    if not 0 <= nxt < S:
                        raise ValueError(f"pair (s={s}, a={a}): next state {nxt} out of range [0, {S})")
                    prob = V.check_real(prob, f"pair (s={s}, a={a}): transition probability")
                    exp_r += prob * V.check_real(reward, f"pair (s={s}, a={a}): reward")
                    rows.append(k)
                    cols.append(S if done else nxt)
                    vals.append(prob)
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
        """Read an MDP written by :meth:`save`.

        Every field is checked as by the constructor (no pickles are read); a bad field
        raises ValueError or TypeError naming the file and the field.
        """
        where = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "the MDP file")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile) as err:  # empty, truncated, not npz
            raise ValueError(f"{where} is not a readable fastppo MDP file ({err})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{where} is not a fastppo MDP file")
        with data as f:
            if "format" not in f or str(f["format"]) != "fastppo-mdp-1":
                raise ValueError(f"{where} is not a fastppo MDP file")
            fields = {}
            for name in (*_ARRAYS, "gamma", "rho"):
                if name not in f:
                    raise ValueError(f"{where}: field {name!r} is missing")
                try:
                    fields[name] = f[name]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                    raise ValueError(f"{where}: field {name!r} cannot be read ({err})") from None
        gamma = fields.pop("gamma")
        try:
            return cls(**fields, gamma=gamma[()] if gamma.ndim == 0 else gamma, _copy=False)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None

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

    @functools.cached_property
    def topological_order(self):
        """The non-terminal states in an order in which every transition between them
        goes forward, shape (n_nonterminal,), int32 (computed once, read-only).

        ``arange`` of the non-terminal states when the numbering already is such an
        order (``token_mdp``). Raises ValueError naming a state on a cycle when there is
        none; an MDP with ``gamma = 1`` always has one.
        """
        order = V.acyclic_order(self)
        order.flags.writeable = False
        return order

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

    def to_sigma(self, table):
        """Per state, the action label of the largest entry of a per-pair table.

        Parameters
        ----------
        table : array_like of shape (n_pairs,) or (n_states, n_actions)
            E.g. a policy (its most probable action) or Q-values (the greedy action).

        Returns
        -------
        sigma : ndarray of shape (n_states,), int64
            Action labels (values of ``a_indices``, QuantEcon's ``sigma``); ties go to
            the lowest label.
        """
        flat = V.pair_table(self, table, "table")
        nan = np.isnan(flat)
        if nan.any():
            raise ValueError(f"table must not hold NaN: {self.pair_name(int(np.argmax(nan)))} is NaN")
        starts = self.a_indptr[:-1]
        top = np.maximum.reduceat(flat, starts)
        first = np.where(flat == top[self.s_indices], np.arange(self.n_pairs), self.n_pairs)
        return self.a_indices[np.minimum.reduceat(first, starts)]

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
        self._patterns = {}

    @functools.cached_property
    def row_lengths(self):
        """Successor entries of each pair, ``diff(p_indptr)``, shape (n_pairs,), int64
        (gathering a policy's compact rows reads it)."""
        lengths = np.diff(self.p_indptr)
        lengths.flags.writeable = False
        return lengths

    def pattern_cache(self, backend):
        """A dict for what ``fastppo._assembled`` derives from :meth:`merged_pattern` (its
        fill-reducing order, the permuted structure)."""
        return self._patterns.setdefault(("derived", backend), {})

    def merged_pattern(self, a_indptr, backend):
        """The structure of I − γP_π shared by every policy on all pairs (duplicate
        successors of a state merged), made by ``backend``'s ``merge_pattern`` kernel on
        first use: ``(indptr, mid, indices, pos, nnz)`` (``fastppo._assembled``; read-only).

        Memory: 8 bytes per transition entry (``pos``) plus 4 per merged entry.
        """
        if backend not in self._patterns:
            n = a_indptr.shape[0] - 1
            indptr, mid = np.empty(n + 1, dtype=np.int64), np.empty(n, dtype=np.int64)
            indices = np.empty(self.p_indices.shape[0], dtype=np.int32)
            pos = np.empty(self.p_indices.shape[0], dtype=np.int64)
            nnz = int(get_kernel("merge_pattern", backend)(
                a_indptr, self.p_indptr, self.p_indices, indptr, mid, indices, pos,
                np.empty(n, dtype=np.int64), 1))
            indices = indices[:nnz].copy()
            for a in (indptr, mid, indices, pos):
                a.flags.writeable = False
            self._patterns[backend] = (indptr, mid, indices, pos, nnz)
        return self._patterns[backend]


def _reward_table(R, S, A):
    R = V.as_float_array(R, "R")
    if R.shape != (S, A):
        raise ValueError(f"R must have shape (S, A) = ({S}, {A}), got {R.shape}")
    return R


REWARD_LAYOUTS = ("state", "state-action", "action-state", "action-state-state")


def _mdptoolbox_rewards(R, mats, layout=None):
    """pymdptoolbox's rewards as an (S, A) table (see ``MDP.from_mdptoolbox``)."""
    A, S = len(mats), mats[0].shape[0]
    shapes = (f"R must have shape (S, A), (S,) or (A, S, S) = ({S}, {A}), ({S},) or "
              f"({A}, {S}, {S})")
    per_action = isinstance(R, (list, tuple)) or (isinstance(R, np.ndarray) and R.dtype == object)
    if layout is None:
        if per_action and all(np.ndim(x) == 0 and not sp.issparse(x) for x in R):
            layout = "state"  # a plain list of numbers
        elif per_action:
            first = R[0] if len(R) else None
            layout = "action-state-state" if np.shape(first) == (S, S) and S > 1 else "action-state"
        else:
            ndim = np.ndim(R) if not sp.issparse(R) else 2
            if sp.issparse(R) and 1 in R.shape and R.shape != (S, A):
                ndim = 1  # a sparse (S, 1) or (1, S) vector
            layout = {1: "state", 2: "state-action", 3: "action-state-state"}.get(ndim)
            if layout is None:
                raise ValueError(f"{shapes}; got {np.shape(R)}")
    V.check_choice(layout, "reward_layout", REWARD_LAYOUTS)
    if layout == "state":
        r = _reward_vector(R, S, "R", shapes)
        return np.repeat(r[:, None], A, axis=1)
    if layout == "state-action":
        R = V.as_float_array(R.toarray() if sp.issparse(R) else R, "R")
        if R.shape != (S, A):
            raise ValueError(f"{shapes}; got {R.shape}")
        return R
    entries = list(R) if per_action or (isinstance(R, np.ndarray) and R.ndim >= 2) else None
    if entries is None or len(entries) != A:
        got = f"{len(entries)} entries" if entries is not None else f"shape {np.shape(R)}"
        hint = (" (a list is read per action, as pymdptoolbox reads it: for an (S, A) table pass "
                "an ndarray or reward_layout='state-action')") if per_action else ""
        raise ValueError(f"R in the {layout!r} layout must hold one entry per action: "
                         f"expected {A}, got {got}{hint}")
    if layout == "action-state":
        return np.stack([_reward_vector(x, S, f"R[{a}]") for a, x in enumerate(entries)], axis=1)
    return np.stack([_expected_reward(mats[a], x, S, a) for a, x in enumerate(entries)], axis=1)


def _reward_vector(x, S, name, shapes=None):
    """A reward vector given as (S,), (S, 1) or (1, S) (dense, sparse or a list) → (S,)."""
    x = V.as_float_array(x.toarray() if sp.issparse(x) else x, name)
    if x.shape not in ((S,), (S, 1), (1, S)):
        msg = shapes or f"{name} must be a reward vector of shape ({S},), ({S}, 1) or (1, {S})"
        raise ValueError(f"{msg}; got {x.shape}")
    return x.reshape(S)


def _expected_reward(Pa, Ra, S, a):
    """Σ_s' P[a][s, s'] R[a][s, s'] for one action, shape (S,); sparse stays sparse."""
    if sp.issparse(Ra) or sp.issparse(Pa):
        Ra = sp.csr_array(Ra, dtype=np.float64) if sp.issparse(Ra) else V.as_float_array(Ra, f"R[{a}]")
        if Ra.shape != (S, S):
            raise ValueError(f"R[{a}] must be a transition reward of shape ({S}, {S}), got {Ra.shape}")
        return np.asarray(sp.csr_array(Pa).multiply(Ra).sum(axis=1)).reshape(S)
    Ra = V.as_float_array(Ra, f"R[{a}]")
    if Ra.shape != (S, S):
        raise ValueError(f"R[{a}] must be a transition reward of shape ({S}, {S}), got {Ra.shape}")
    return (Pa * Ra).sum(axis=1)
