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
import mmap
import os
import struct
import zipfile

import numpy as np
import scipy.sparse as sp

from . import _validation as V
from ._backend import get_kernel
from ._memory import huge

__all__ = ["MDP"]

_ARRAYS = ("a_indptr", "a_indices", "p_indptr", "p_indices", "p_data", "r")
_STATE_SCALARS = ("gamma", "n_states", "n_pairs", "n_actions", "is_rectangular")
# what with_rewards / with_gamma / with_rho take over (attributes and cached properties):
# the action layout, the transitions and what is derived from them alone ...
_STRUCTURE = ("a_indptr", "a_indices", "p_indptr", "p_indices", "p_data", "n_states", "n_pairs",
              "n_actions", "is_rectangular", "_transitions", "s_indices", "_state_indptr",
              "_pair_codes")
# ... and, when the rewards stay, the caches that depend on the rewards but not on γ or ρ
_REWARD_CACHES = ("terminal", "topological_order")


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
        float64 (or float32, see ``dtype``); indices sorted within rows; rows sum to 1.
    r : ndarray of shape (n_pairs,), float64
        Expected reward of each pair.
    gamma : float
        Discount factor in [0, 1], or 1 for an episodic MDP in which every policy
        terminates: terminal states (:attr:`terminal`) absorbing with reward 0, the
        other states acyclic (:attr:`topological_order` exists); otherwise ValueError
        naming a state on a cycle.
    rho : ndarray of shape (n_states,), optional
        Start distribution; uniform by default.
    dtype : {numpy.float64, numpy.float32}, default numpy.float64
        Storage of the transition probabilities ``p_data`` (every constructor and
        generator takes it). float32 is opt-in compact storage for MDPs too large for
        float64 (12 → 8 bytes per transition with the int32 next-state indices):
        ``p_data`` is rounded to float32 once (rows must then sum to 1 within 1e-7), and
        the MDP solved is the stored one with each row divided by its float64 sum, so
        that it is stochastic to float64 round-off (values, visitations, gradients,
        every sum in float64). Its values differ from the float64 MDP's by at most
        ``2⁻²³ γ / (1 − γ) · max|v|`` (each row of P moves by at most 2⁻²³ in ℓ1 norm;
        the issue's b·2⁻²⁴·γ/(1−γ) for b ≥ 2). Not supported (a clear ValueError):
        ``fastppo.batched`` and ``fastppo.distributed``. Float32 input with the default
        dtype is read exactly as float64 (never down-cast unasked; not normalised).

    The arrays are copied (the MDP's own copies are read-only), so the caller's
    arrays are neither aliased nor frozen. Every value is checked before it is cast:
    index arrays may be of any integer dtype, or float holding integers (3.0, not 3.5);
    nothing wraps or is truncated, complex arrays are rejected, and ``n_states`` is at
    most 2³¹ − 1 (next-state indices are int32); see ``fastppo._validation``.

    ``with_rewards``, ``with_gamma`` and ``with_rho`` derive MDPs that share the arrays
    (O(n_pairs), not O(nnz)); an MDP pickles as its arrays, γ and ρ, and
    ``MDP.load(path, mmap_mode="r")`` maps a saved one.

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
                 *, dtype=np.float64, _copy=True):
        # _copy=False: the arrays are fresh (from_sa_pairs, load) and may be taken over
        arrays, n_states = V.canonical_arrays(a_indptr, a_indices, p_indptr, p_indices, p_data, r,
                                              copy=_copy, dtype=dtype)
        a_indptr = arrays["a_indptr"]
        for name, x in arrays.items():
            x = huge(x)  # read at every pass: on huge pages (fastppo._memory)
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
                      infeasible="reject", dtype=np.float64):
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
        dtype : {numpy.float64, numpy.float32}, default numpy.float64
            Storage of the transition probabilities (see :class:`MDP`). A float32 ``P``
            with ``dtype=np.float32`` is never copied to float64.
        """
        V.check_choice(infeasible, "infeasible", ("reject", "drop"))
        if n_states is None:
            shape = P.shape if sp.issparse(P) else np.shape(P)
            if len(shape) != 2:
                raise ValueError(f"P must have shape (n_pairs, n_states), got {tuple(shape)}")
            n_states = shape[1]
        if infeasible == "drop":
            s_indices, a_indices, P, R = V.drop_infeasible(s_indices, a_indices, P, R, n_states)
        arrays = V.canonical_from_pairs(s_indices, a_indices, P, R, n_states, dtype=dtype)
        return cls(**arrays, gamma=gamma, rho=rho, dtype=dtype, _copy=False)

    @classmethod
    def from_dense(cls, P, R, gamma, rho=None, *, dtype=np.float64):
        """Build from dense arrays ``P[s, a, s']`` of shape (S, A, S) and ``R[s, a]`` of shape (S, A)
        (``dtype``: storage of the probabilities, see :class:`MDP`)."""
        P = np.asarray(P)
        if P.ndim != 3 or P.shape[0] != P.shape[2]:
            raise ValueError(f"P must have shape (S, A, S), got {P.shape}")
        S, A, _ = P.shape
        R = _reward_table(R, S, A)
        s, a = np.divmod(np.arange(S * A), A)
        return cls.from_sa_pairs(s, a, P.reshape(S * A, S), R.reshape(-1), gamma, rho, dtype=dtype)

    @classmethod
    def from_sparse(cls, P, R, gamma, rho=None, *, dtype=np.float64):
        """Build from a scipy.sparse ``P`` of shape (S*A, S) (row ``s*A + a``) and ``R`` of shape (S, A)
        (``dtype``: storage of the probabilities, see :class:`MDP`)."""
        if not sp.issparse(P):
            raise TypeError("P must be a scipy.sparse matrix or array; use from_dense for arrays")
        R = V.as_float_array(R, "R")
        if R.ndim != 2:
            raise ValueError(f"R must have shape (S, A), got {R.shape}")
        S, A = R.shape
        if P.shape != (S * A, S):
            raise ValueError(f"P must have shape (S*A, S) = ({S * A}, {S}) to match R, got {P.shape}")
        s, a = np.divmod(np.arange(S * A), A)
        return cls.from_sa_pairs(s, a, P, R.reshape(-1), gamma, rho, dtype=dtype)

    @classmethod
    def from_mdptoolbox(cls, P, R, gamma, rho=None, *, reward_layout=None, dtype=np.float64):
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
        dtype : {numpy.float64, numpy.float32}, default numpy.float64
            Storage of the transition probabilities (see :class:`MDP`).
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
        return cls.from_sa_pairs(s, a, P_sa, r.reshape(-1), gamma, rho, dtype=dtype)

    @classmethod
    def from_gymnasium(cls, env_or_P, gamma, rho=None, *, dtype=np.float64):
        """Build from a Gymnasium toy-text environment or its ``P`` dict.

        ``P[s][a]`` is a list of ``(prob, next_state, reward, terminated)``. The
        expected reward of a pair is ``sum(prob * reward)``. Transitions with
        ``terminated=True`` move to one extra absorbing state (index
        ``n_states - 1``, reward 0, every action a self-loop), so values after
        termination are 0 and the MDP stays rectangular. Duplicate
        ``(prob, next_state)`` entries are summed.

        ``rho`` defaults to the environment's ``initial_state_distrib`` when it has
        one (FrozenLake, Taxi), else uniform over the non-absorbing states. ``dtype``:
        storage of the probabilities (see :class:`MDP`).
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
        return cls.from_sa_pairs(s_idx, a_idx, Pm, rew, gamma, rho, n_states=n_states, dtype=dtype)

    # --------------------------------------------------------------- persistence
    def save(self, path):
        """Write the MDP to one ``.npz`` file at exactly ``path`` (``MDP.load(path)`` reads it back exactly).

        The file is NumPy's ``.npz`` (``np.load`` reads it): uncompressed members, each
        array's data aligned to 64 bytes in the file, so that
        ``MDP.load(path, mmap_mode="r")`` can map it.
        """
        arrays = {name: getattr(self, name) for name in _ARRAYS}
        kw = dict(**arrays, gamma=np.float64(self.gamma), rho=self.rho, format=np.array("fastppo-mdp-1"))
        if hasattr(path, "write"):
            _write_npz(path, kw)
        else:  # np.savez would append ".npz" to a bare path, and load(path) would then fail
            with open(path, "wb") as f:
                _write_npz(f, kw)

    @classmethod
    def load(cls, path, mmap_mode=None):
        """Read an MDP written by :meth:`save`.

        Parameters
        ----------
        path : str, path-like or file-like
        mmap_mode : {None, "r"}, default None
            "r": map the arrays read-only from the file instead of reading them
            (``path`` must then be a file name, and the file uncompressed, as
            :meth:`save` writes it). Arrays stored in their canonical dtype
            (``p_data`` float64 or float32, ``p_indices`` int32, ..., and ``rho``) stay
            ``numpy.memmap`` objects of the file: the operating system shares their
            pages between processes, and a mapped MDP pickles as a reference to the
            file (see :meth:`__getstate__`).

        Every field is checked as by the constructor (no pickles are read; with
        ``mmap_mode`` the checks read the mapped arrays without copying them); a bad
        field raises ValueError or TypeError naming the file and the field. An MDP saved
        with float32 storage (``dtype=np.float32``) loads as one.
        """
        V.check_choice(mmap_mode, "mmap_mode", (None, "r"))
        if mmap_mode is not None and not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"mmap_mode={mmap_mode!r} needs a file name, got {type(path).__name__}")
        where = path if isinstance(path, (str, os.PathLike)) else getattr(path, "name", "the MDP file")
        try:
            data = np.load(path, allow_pickle=False)
        except (ValueError, EOFError, zipfile.BadZipFile) as err:  # empty, truncated, not npz
            raise ValueError(f"{where} is not a readable fastppo MDP file ({err})") from None
        if not isinstance(data, np.lib.npyio.NpzFile):
            raise ValueError(f"{where} is not a fastppo MDP file")
        mapped = {}
        with data as f:
            if "format" not in f or str(f["format"]) != "fastppo-mdp-1":
                raise ValueError(f"{where} is not a fastppo MDP file")
            fields = {}
            for name in (*_ARRAYS, "gamma", "rho"):
                if name not in f:
                    raise ValueError(f"{where}: field {name!r} is missing")
                try:
                    if mmap_mode is not None and name != "gamma":
                        fields[name] = mapped[name] = _map_member(path, f.zip.getinfo(f"{name}.npy"))
                    else:
                        fields[name] = f[name]
                except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
                    raise ValueError(f"{where}: field {name!r} cannot be read ({err})") from None
        gamma = fields.pop("gamma")
        dtype = np.float32 if fields["p_data"].dtype == np.float32 else np.float64
        try:
            mdp = cls(**fields, gamma=gamma[()] if gamma.ndim == 0 else gamma, dtype=dtype,
                      _copy=False)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{where}: {err}") from None
        for name, m in mapped.items():  # keep the maps where the checked array is the map's data
            x = getattr(mdp, name)
            if not isinstance(m, np.memmap) or (x.dtype, x.shape) != (m.dtype, m.shape):
                continue
            if x.ctypes.data == m.ctypes.data or (name == "rho" and np.array_equal(x, m)):
                setattr(mdp, name, m)  # (rho was checked on a copy)
        return mdp

    # ------------------------------------------------------------------ pickling
    def __getstate__(self):
        """The arrays, γ, ρ and the sizes; no derived cache (they are re-made on first use).

        A pickle is about as large as the arrays themselves, or, for arrays mapped by
        ``MDP.load(path, mmap_mode="r")``, a reference to the file (its name, the
        array's place in it, its size and modification time): unpickling maps the file
        again, so a process pool shares one copy of the transitions through the
        operating system's page cache. The file must then be readable at the same path
        and unchanged (else unpickling raises ValueError).
        """
        state = {name: _FileArray.wrap(getattr(self, name)) for name in (*_ARRAYS, "rho")}
        state.update({name: getattr(self, name) for name in _STATE_SCALARS})
        return state

    def __setstate__(self, state):
        # a pickle is trusted (unpickling can run any code): no O(nnz) checks again
        for name in (*_ARRAYS, "rho"):
            x = state[name]
            x = x.open() if isinstance(x, _FileArray) else x
            x.flags.writeable = False
            setattr(self, name, x)
        for name in _STATE_SCALARS:
            setattr(self, name, state[name])

    # ------------------------------------------------------------ derived MDPs
    def with_rewards(self, r):
        """The same MDP with rewards ``r``: O(n_pairs), whatever the number of transitions.

        The new MDP shares this one's transition arrays (read-only), action layout and
        everything derived from them alone (``mdp._transitions`` and its caches,
        ``s_indices``); γ and ρ are kept. Caches that depend on the rewards
        (``terminal``, ``topological_order``) are not carried over.

        Parameters
        ----------
        r : array_like of shape (n_pairs,) or (n_states, n_actions)
            Expected reward of each pair (the table shape for rectangular MDPs); finite.
            Copied.

        Returns
        -------
        MDP

        Raises
        ------
        ValueError
            Naming the pair of a non-finite reward, or, for γ = 1, a state on a cycle of
            the non-terminal states (terminal states depend on the rewards).

        Examples
        --------
        >>> import fastppo
        >>> mdp = fastppo.garnet(100, 4, 3, gamma=0.9, seed=0)
        >>> other = mdp.with_rewards(2 * mdp.r)
        >>> other.p_data is mdp.p_data, other._transitions is mdp._transitions
        (True, True)
        """
        r = V.pair_table(self, r, "r")
        bad = ~np.isfinite(r)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(f"r must be finite: {self.pair_name(k)} has reward {r[k]}")
        r.flags.writeable = False
        return self._derived(r=r)

    def with_gamma(self, gamma):
        """The same MDP with discount ``gamma`` (O(1); γ = 1 checks that the MDP is
        episodic, as the constructor does). Shares every array and cache that does not
        depend on γ (see :meth:`with_rewards`).

        Parameters
        ----------
        gamma : float in [0, 1]

        Returns
        -------
        MDP
        """
        return self._derived(gamma=V.check_gamma(gamma))

    def with_rho(self, rho):
        """The same MDP with start distribution ``rho`` (O(n_states)). Shares every array
        and cache that does not depend on ρ (see :meth:`with_rewards`).

        Parameters
        ----------
        rho : array_like of shape (n_states,)
            A probability vector; copied.

        Returns
        -------
        MDP
        """
        rho = V.check_distribution(rho, self.n_states, "rho")
        rho.flags.writeable = False
        return self._derived(rho=rho)

    def _derived(self, r=None, gamma=None, rho=None):
        """A new MDP with some of r, γ, ρ replaced, taking over what depends on none of
        them: ``_STRUCTURE`` always, ``_REWARD_CACHES`` unless the rewards change."""
        self._transitions  # made now, so both MDPs hold the one holder and fill it together
        keep = _STRUCTURE if r is not None else _STRUCTURE + _REWARD_CACHES
        new = object.__new__(type(self))
        new.__dict__.update({name: self.__dict__[name] for name in keep if name in self.__dict__})
        new.r = self.r if r is None else r
        new.gamma = self.gamma if gamma is None else gamma
        new.rho = self.rho if rho is None else rho
        if new.gamma == 1.0:
            V.check_episodic(new)
        return new

    # ------------------------------------------------------------------ views
    @functools.cached_property
    def _transitions(self):
        """The transition arrays and their caches (:class:`Transitions`); an MDP made from
        another with the same arrays may take over the other's holder and its caches."""
        return Transitions(self.p_indptr, self.p_indices, self.p_data)

    @functools.cached_property
    def _state_indptr(self):
        """P's entries by state: state s's at p_indptr[a_indptr[s]] ≤ j <
        p_indptr[a_indptr[s + 1]], shape (n_states + 1,), int64 (computed once, read-only)."""
        indptr = huge(self.p_indptr[self.a_indptr])
        indptr.flags.writeable = False
        return indptr

    @functools.cached_property
    def _pair_codes(self):
        """Each entry of P's pair among its state's pairs (k − a_indptr[s] for an entry of
        pair k of state s), shape (p_indptr[-1],), uint8: the value sweeps weight P's own
        rows by π with it (kernel ``pair_sweep``). None when a state has more than 256
        pairs. Computed once, read-only."""
        counts = np.diff(self.a_indptr)
        if counts.max(initial=0) > 256:
            return None
        place = np.arange(self.n_pairs) - np.repeat(self.a_indptr[:-1], counts)
        codes = huge(np.repeat(place.astype(np.uint8), np.diff(self.p_indptr)))
        codes.flags.writeable = False
        return codes

    @functools.cached_property
    def s_indices(self):
        """State of each pair, shape (n_pairs,), int64 (computed once, read-only)."""
        s = huge(np.repeat(np.arange(self.n_states, dtype=np.int64), np.diff(self.a_indptr)))
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
        flat = V.pair_table(self, table, "table", copy=False)  # read only
        if self.n_pairs and np.isnan(flat.max()):  # NaN propagates: no temporary
            nan = np.isnan(flat)
            raise ValueError(f"table must not hold NaN: {self.pair_name(int(np.argmax(nan)))} is NaN")
        if self.is_rectangular:  # labels 0..A-1 in order: argmax takes the first maximum
            first = flat.reshape(self.n_states, self.n_actions).argmax(axis=1)
            return self.a_indices[self.a_indptr[:-1] + first]
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
                f"nnz={self.p_data.size:,}, gamma={self.gamma}"
                + (f", dtype={self.p_data.dtype})" if self.p_data.dtype != np.float64 else ")"))


NARROW_STATES = 1 << 16  # up to this many states, P's column indices fit in uint16


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
        self._narrow = None

    def narrow_indices(self, n_states):
        """``p_indices`` as uint16 when every state fits (``n_states`` ≤ 2¹⁶), else None:
        the products read 2 bytes fewer per entry of P (12 → 10 with float64 ``p_data``),
        the same sums. Made on first use, read-only; 2 bytes per entry."""
        if n_states > NARROW_STATES:
            return None
        if self._narrow is None:
            narrow = huge(self.p_indices.astype(np.uint16))
            narrow.flags.writeable = False
            self._narrow = narrow
        return self._narrow

    def transposed_pattern(self, n_states, s_indices):
        """P's entries in the transposed order, for the visitation's gather
        (``transposed_rmatvec``) on an MDP of at most 2¹⁶ states (else None):
        ``(t_indptr, t_pairs, t_sources, t_data)``, state c's entries at t_indptr[c] ≤ e <
        t_indptr[c + 1], each with its pair (int32), that pair's state (uint16) and its
        probability, in P's order within a state (a stable sort by successor). Made on
        first use (``s_indices``: the MDP's state of each pair, fixed for these arrays),
        read-only.

        Memory: 14 bytes per entry of P (float64 P), plus 8 per state."""
        if n_states > NARROW_STATES:
            return None
        if "transposed" not in self._patterns:
            order = np.argsort(self.p_indices, kind="stable")
            t_indptr = np.zeros(n_states + 1, dtype=np.int64)
            np.cumsum(np.bincount(self.p_indices, minlength=n_states), out=t_indptr[1:])
            pairs = np.repeat(np.arange(self.p_indptr.shape[0] - 1, dtype=np.int32),
                              np.diff(self.p_indptr))[order]
            sources = s_indices[pairs].astype(np.uint16)
            data = self.p_data[order]
            parts = tuple(huge(a) for a in (t_indptr, pairs, sources, data))
            for a in parts:
                a.flags.writeable = False
            self._patterns["transposed"] = parts
        return self._patterns["transposed"]

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


NPZ_ALIGN = 64  # np.lib.format pads .npy headers to this; members start on it too


def _write_npz(f, arrays):
    """``np.savez(f, **arrays)`` (uncompressed ``.npy`` members, read by ``np.load``), with
    each array's data at a multiple of 64 bytes in the file so that a map of it is aligned.

    The local header of each member gets a padding field in its "extra" block (ID 0xD935,
    as Android's zipalign writes; zip readers skip unknown fields). A file object that
    cannot tell its position is written unpadded (still valid, maps unaligned).
    """
    with zipfile.ZipFile(f, mode="w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_STORED
            try:
                pos = f.tell()
            except (AttributeError, OSError):
                pos = None
            if pos is not None:
                # local header: 30 bytes, the name, the extra block (ours, then 20 bytes of zip64)
                need = -(pos + 30 + len(info.filename.encode()) + 20) % NPZ_ALIGN
                if need:
                    pad = need - 4 if need >= 4 else need + NPZ_ALIGN - 4
                    info.extra = struct.pack("<HH", 0xD935, pad) + bytes(pad)
            with zf.open(info, "w", force_zip64=True) as out:
                np.lib.format.write_array(out, np.asanyarray(value), allow_pickle=False)


def _map_member(path, info):
    """A read-only ``numpy.memmap`` of the ``.npy`` member ``info`` of the npz file ``path``.

    ``np.load`` ignores ``mmap_mode`` for npz files; an uncompressed member is a plain
    ``.npy`` file inside the zip, so it is mapped at its place. Raises ValueError for a
    compressed or damaged member.
    """
    if info.compress_type != zipfile.ZIP_STORED:
        raise ValueError("the member is compressed; mmap_mode needs the uncompressed file "
                         "MDP.save writes")
    with open(path, "rb") as f:
        f.seek(info.header_offset)
        head = f.read(30)
        if len(head) != 30 or head[:4] != b"PK\x03\x04":
            raise ValueError("bad zip member header")
        name_len, extra_len = struct.unpack("<HH", head[26:30])
        start = info.header_offset + 30 + name_len + extra_len
        f.seek(start)
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f".npy format version {version} cannot be mapped")
        offset = f.tell()
    if dtype.hasobject:
        raise ValueError("the member holds Python objects")
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if offset - start + nbytes != info.file_size:
        raise ValueError(f"the member holds {info.file_size - (offset - start)} bytes of data, "
                         f"its header announces {nbytes}")
    if nbytes == 0:
        return np.zeros(shape, dtype=dtype)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=shape,
                     order="F" if fortran else "C")


class _FileArray:
    """A pickled reference to an array mapped read-only from a file (see ``MDP.__getstate__``)."""

    def __init__(self, filename, offset, dtype, shape, order, size, mtime_ns):
        self.filename, self.offset, self.dtype, self.shape = filename, offset, dtype, shape
        self.order, self.size, self.mtime_ns = order, size, mtime_ns

    @classmethod
    def wrap(cls, x):
        """``x`` itself, or a reference to its file if it is a whole read-only file map."""
        if not (isinstance(x, np.memmap) and x.mode == "r" and x.filename is not None
                and isinstance(x.base, mmap.mmap)):
            return x  # in memory, or a view of a map (not the map itself): pickled by value
        st = os.stat(x.filename)
        order = "F" if (x.flags.f_contiguous and not x.flags.c_contiguous) else "C"
        return cls(x.filename, x.offset, x.dtype.str, x.shape, order, st.st_size, st.st_mtime_ns)

    def open(self):
        try:
            st = os.stat(self.filename)
        except OSError as err:
            raise ValueError(f"cannot map the MDP file {self.filename} again: {err}") from None
        if (st.st_size, st.st_mtime_ns) != (self.size, self.mtime_ns):
            raise ValueError(f"the MDP file {self.filename} changed since the MDP was pickled "
                             "(its arrays were mapped from it)")
        return np.memmap(self.filename, dtype=np.dtype(self.dtype), mode="r", offset=self.offset,
                         shape=self.shape, order=self.order)


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
