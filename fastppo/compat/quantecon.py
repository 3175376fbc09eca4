r"""QuantEcon's ``DiscreteDP`` interface on fastppo's exact solver.

Replace ``from quantecon.markov import DiscreteDP`` with
``from fastppo.compat.quantecon import DiscreteDP``; the rest of the code stays::

    >>> from fastppo.compat.quantecon import DiscreteDP
    >>> R = [[5, 10], [-1, -float('inf')]]            # QuantEcon's docstring example
    >>> Q = [[(0.5, 0.5), (0, 1)], [(0, 1), (0.5, 0.5)]]
    >>> ddp = DiscreteDP(R, Q, 0.95)
    >>> res = ddp.solve(method='policy_iteration', v_init=[0, 0])
    >>> res.sigma
    array([0, 0])
    >>> res.v.round(8)
    array([ -8.57142857, -20.        ])

The model is QuantEcon's: states ``0..n-1``, feasible state-action pairs with reward
``r(s, a)`` and next-state distribution ``q(·|s, a)``, discount ``beta``; a policy
``sigma`` holds one action label per state, and

    (T v)(s) = max_{a ∈ A(s)} r(s, a) + β Σ_s' q(s'|s, a) v(s'),
    v_σ = (I − β Q_σ)^{-1} r_σ.

**What differs.** Every ``solve`` method returns the exact optimum: fastppo's policy
iteration with exact (Krylov) evaluations, stopped when the greedy policy is stable
(Bellman residual about 1e-12 relative), never ε-stopped. For ``'policy_iteration'`` this
is QuantEcon's answer; for ``'value_iteration'`` and ``'modified_policy_iteration'``
(which QuantEcon stops with an ε-optimal policy and a value within ε/2 of v*) it is the
limit those approximate, so ``res.v`` agrees with QuantEcon's to its ε/2 and ``sigma`` is
an optimal policy (the same as QuantEcon's unless two actions are optimal within ε).
``num_iter`` counts fastppo's policy-iteration steps (QuantEcon counts value-iteration
sweeps for ``'vi'``). ``v_init`` and ``k`` are accepted and ignored (the optimum does not
depend on them); ``max_iter`` caps the policy-iteration steps (``ConvergenceError``
past it, instead of an unconverged answer) for ``'pi'`` and is recorded only for the
other methods. ``beta`` must be < 1 (QuantEcon's ``beta=1`` finite-horizon mode is not
provided). Infeasible actions (reward −inf) are dropped from the model, so a ``sigma``
choosing one is an error naming the state, where QuantEcon returns −inf values.
``to_sa_pair_form``, ``to_product_form``, ``s_wise_max`` and ``operator_iteration`` are
not provided.
"""
import numpy as np
import scipy.sparse as sp

from .. import _validation as V
from ..evaluation import evaluate
from ..mdp import MDP
from ..solvers import solve

__all__ = ["DiscreteDP", "DPSolveResult"]

_METHODS = {"policy_iteration": "policy iteration", "pi": "policy iteration",
            "value_iteration": "value iteration", "vi": "value iteration",
            "modified_policy_iteration": "modified policy iteration",
            "mpi": "modified policy iteration",
            "linear_programming": "linear programming", "lp": "linear programming"}


class DPSolveResult(dict):
    """QuantEcon's result of ``DiscreteDP.solve``: a dict with attribute access.

    Attributes
    ----------
    v : ndarray of shape (n,)
        The optimal value function (exact, not ε-approximate).
    sigma : ndarray of shape (n,), int
        An optimal policy: one action label per state (ties to the lowest label).
    num_iter : int
        fastppo's policy-iteration steps.
    mc : quantecon.MarkovChain
        The controlled Markov chain of ``sigma`` (only when quantecon is installed).
    method : str
        QuantEcon's name of the method asked for ("policy iteration", ...).
    epsilon : float
        ('value iteration' and 'modified policy iteration' only) as passed; unused.
    max_iter : int
    k : int
        ('modified policy iteration' only) as passed; unused.
    """

    def __getattr__(self, name):
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    __setattr__ = dict.__setitem__
    __delattr__ = dict.__delitem__

    def __repr__(self):
        if not self:
            return f"{type(self).__name__}()"
        m = max(map(len, self)) + 1
        return "\n".join(f"{k.rjust(m)}: {v!r}" for k, v in self.items())

    def __dir__(self):
        return list(self.keys())


class DiscreteDP:
    """A discrete dynamic program, built and used as QuantEcon's ``DiscreteDP``.

    Two forms, as in QuantEcon (n states, m actions, L feasible pairs):

    1. ``DiscreteDP(R, Q, beta)``: product form, ``R`` of shape (n, m) with ``-inf``
       for infeasible actions, ``Q`` of shape (n, m, n) (rows of infeasible pairs
       are ignored);
    2. ``DiscreteDP(R, Q, beta, s_indices, a_indices)``: state-action-pair form,
       ``R`` of shape (L,), ``Q`` of shape (L, n), dense or scipy.sparse, pairs in
       any order (pairs of reward ``-inf`` are dropped).

    Parameters
    ----------
    R : array_like of shape (n, m) or (L,)
    Q : array_like of shape (n, m, n) or (L, n), or scipy.sparse of shape (L, n)
    beta : float in [0, 1)
        Discount factor (QuantEcon also allows 1 for finite horizons; fastppo does not).
    s_indices, a_indices : array_like of int, shape (L,), optional
        The pairs, for the state-action-pair form.

    Attributes
    ----------
    R, Q, beta, s_indices, a_indices :
        As given (``Q`` as CSR when sparse; the index arrays None in product form).
    num_states : int
    num_sa_pairs : int
        Number of feasible pairs (finite reward).
    epsilon : float, default 1e-3
        Default ``epsilon`` of ``solve`` (recorded in the result; unused).
    max_iter : int, default 250
        Default ``max_iter`` of ``solve``.
    mdp : fastppo.MDP
        The canonical sparse model every method runs on.
    """

    def __init__(self, R, Q, beta, s_indices=None, a_indices=None):
        if sp.issparse(Q):
            Q = sp.csr_array(Q)
            self._sparse = True
        else:
            Q = np.asarray(Q)
            self._sparse = False
            if Q.ndim not in (2, 3):
                raise ValueError("Q must be 2- or 3-dimensional")
        if not 0 <= beta < 1:
            raise ValueError(f"beta must be in [0, 1), got {beta} (fastppo does not provide "
                             f"QuantEcon's beta=1 finite-horizon mode)")
        R = np.asarray(R)
        if R.ndim not in (1, 2):
            raise ValueError("R must be 1- or 2-dimensional")
        self.R, self.Q, self.beta = R, Q, beta
        if Q.ndim == 2:  # state-action-pair form
            L, n = Q.shape
            if R.shape != (L,):
                raise ValueError("shapes of R and Q must be either (n, m) and (n, m, n), "
                                 "or (L,) and (L, n)")
            if s_indices is None:
                raise ValueError("s_indices must be supplied")
            if a_indices is None:
                raise ValueError("a_indices must be supplied")
            s, a, P, r = s_indices, a_indices, Q, R
            self.s_indices, self.a_indices = np.asarray(s_indices), np.asarray(a_indices)
        else:
            if R.ndim != 2 or Q.shape != (*R.shape, R.shape[0]):
                raise ValueError("shapes of R and Q must be either (n, m) and (n, m, n), "
                                 "or (L,) and (L, n)")
            n, m = R.shape
            s, a = np.divmod(np.arange(n * m), m)
            P, r = Q.reshape(n * m, n), R.reshape(-1)
            self.s_indices = self.a_indices = None
        self.mdp = MDP.from_sa_pairs(s, a, P, r, beta, n_states=n, infeasible="drop")
        self.num_states = n
        self.num_sa_pairs = self.mdp.n_pairs
        self.epsilon = 1e-3
        self.max_iter = 250
        self._P = sp.csr_array((self.mdp.p_data, self.mdp.p_indices, self.mdp.p_indptr),
                               shape=(self.mdp.n_pairs, n))

    # ------------------------------------------------------------------ operators
    def RQ_sigma(self, sigma):
        """The reward vector and transition matrix of a policy.

        Parameters
        ----------
        sigma : array_like of int, shape (n,)
            One action label per state.

        Returns
        -------
        R_sigma : ndarray of shape (n,)
        Q_sigma : ndarray of shape (n, n), or scipy.sparse CSR when ``Q`` was sparse
        """
        k = V.sigma_pairs(self.mdp, np.asarray(sigma), "sigma")
        Q_sigma = self._P[k]
        return self.mdp.r[k], Q_sigma if self._sparse else Q_sigma.toarray()

    def T_sigma(self, sigma):
        """The operator ``v ↦ r_σ + β Q_σ v`` of a policy (a callable)."""
        R_sigma, Q_sigma = self.RQ_sigma(sigma)
        return lambda v: R_sigma + self.beta * (Q_sigma @ v)

    def bellman_operator(self, v, Tv=None, sigma=None):
        """``T v``, and in ``sigma`` (if given) a v-greedy policy.

        Parameters
        ----------
        v : array_like of shape (n,)
        Tv : ndarray of shape (n,), optional
            Output array.
        sigma : ndarray of int, shape (n,), optional
            Output array for the v-greedy action labels (ties to the lowest label).

        Returns
        -------
        Tv : ndarray of shape (n,)
        """
        q = self._q(v)
        if Tv is None:
            Tv = np.empty(self.num_states)
        Tv[:] = np.maximum.reduceat(q, self.mdp.a_indptr[:-1])
        if sigma is not None:
            sigma[:] = self.mdp.to_sigma(q)
        return Tv

    def compute_greedy(self, v, sigma=None):
        """A v-greedy policy: per state, the action label maximising
        ``r(s, a) + β Σ q(s'|s, a) v(s')`` (ties to the lowest label), shape (n,)."""
        if sigma is None:
            sigma = np.empty(self.num_states, dtype=int)
        sigma[:] = self.mdp.to_sigma(self._q(v))
        return sigma

    def _q(self, v):
        v = np.asarray(v, dtype=np.float64)
        if v.shape != (self.num_states,):
            raise ValueError(f"v must have shape ({self.num_states},), got {v.shape}")
        return self.mdp.r + self.beta * (self._P @ v)

    def evaluate_policy(self, sigma):
        """The value ``v_σ = (I − β Q_σ)^{-1} r_σ`` of a policy, shape (n,), by
        ``fastppo.evaluate`` (relative residual 1e-12; no dense or LU solve)."""
        sigma = np.asarray(sigma)
        V.sigma_pairs(self.mdp, sigma, "sigma")  # errors name sigma, not evaluate's pi
        return evaluate(self.mdp, sigma).v

    def controlled_mc(self, sigma):
        """The controlled Markov chain of ``sigma`` (a ``quantecon.MarkovChain``; needs quantecon)."""
        from quantecon import MarkovChain

        return MarkovChain(self.RQ_sigma(sigma)[1])

    # -------------------------------------------------------------------- solve
    def solve(self, method="policy_iteration", v_init=None, epsilon=None, max_iter=None, k=20):
        """Solve the dynamic program (exactly, whatever the method).

        Parameters
        ----------
        method : str, default 'policy_iteration'
            One of QuantEcon's names: 'policy_iteration' / 'pi', 'value_iteration' /
            'vi', 'modified_policy_iteration' / 'mpi', 'linear_programming' / 'lp'. All
            run fastppo's exact policy iteration; the name is recorded in the result.
        v_init : array_like of shape (n,), optional
            Checked, then ignored (the optimum does not depend on it).
        epsilon : float, optional
            Recorded for 'vi' and 'mpi' (default ``self.epsilon``); unused: the values
            are exact, not ε-optimal.
        max_iter : int, optional
            Default ``self.max_iter``. For 'pi', the cap on policy-iteration steps;
            recorded only for the other methods.
        k : int, default 20
            Recorded for 'mpi'; unused.

        Returns
        -------
        DPSolveResult
            ``v``, ``sigma``, ``num_iter``, ``mc`` (when quantecon is installed),
            ``method``, ``max_iter``, and ``epsilon`` / ``k`` as QuantEcon includes them.
        """
        if method not in _METHODS:
            raise ValueError("invalid method")
        name = _METHODS[method]
        max_iter = V.check_int(self.max_iter if max_iter is None else max_iter, "max_iter")
        if v_init is not None:
            v_init = np.asarray(v_init, dtype=np.float64)
            if v_init.shape != (self.num_states,):
                raise ValueError(f"v_init must have shape ({self.num_states},), got {v_init.shape}")
        opt = solve(self.mdp, **({"max_iter": max_iter} if name == "policy iteration" else {}))
        res = DPSolveResult(v=opt.v, sigma=opt.sigma.astype(int), num_iter=opt.n_iter)
        try:
            res.mc = self.controlled_mc(res.sigma)
        except ImportError:
            pass
        res.method = name
        if name in ("value iteration", "modified policy iteration"):
            res.epsilon = self.epsilon if epsilon is None else epsilon
        res.max_iter = max_iter
        if name == "modified policy iteration":
            res.k = k
        return res
