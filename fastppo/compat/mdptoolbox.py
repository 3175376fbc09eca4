"""pymdptoolbox's solver classes on fastppo's exact solver.

Replace ``import mdptoolbox.mdp as mdp`` (or ``mdptoolbox.mdp``) with
``from fastppo.compat import mdptoolbox as mdp``; the rest of the code stays::

    >>> import numpy as np
    >>> from fastppo.compat import mdptoolbox
    >>> P = np.array([[[0.5, 0.5], [0.8, 0.2]], [[0, 1], [0.1, 0.9]]])  # mdptoolbox.example.small()
    >>> R = np.array([[5, 10], [-1, 2]])
    >>> pi = mdptoolbox.PolicyIteration(P, R, 0.9)
    >>> pi.run()
    >>> pi.policy
    (1, 0)
    >>> [round(x, 8) for x in pi.V]
    [42.44186047, 36.04651163]

``transitions`` and ``reward`` take every layout pymdptoolbox takes, read by
``fastppo.MDP.from_mdptoolbox`` (its docstring tables them): P of shape (A, S, S) or a
list of A (sparse) (S, S) matrices; R of shape (S,), (S, A), (A, S, S), or a list of A
per-action vectors or (sparse) transition-reward matrices.

**What differs.** ``run()`` computes the exact optimum with fastppo's policy iteration
and exact (Krylov) evaluations, stopped when the greedy policy is stable (Bellman
residual about 1e-12 relative) — for every class. pymdptoolbox's ``PolicyIteration``
(``eval_type=0``) gives the same; its ``ValueIteration`` and ``PolicyIterationModified``
stop when the span of the last update is below ε(1−γ)/γ, which makes the policy
ε-optimal but leaves ``V`` short of the optimal values (by a near-constant offset that
can be large: 5.93 against 74.65 at state 0 of ``forest()`` with γ = 0.96); here ``V`` is
the optimal value itself, and ``policy`` an optimal policy (the same unless two actions
are optimal within ε). ``iter`` counts fastppo's policy-iteration steps (pymdptoolbox's
value iteration counts sweeps), ``time`` is wall-clock seconds of ``run()``.
``epsilon``, ``eval_type``, ``initial_value``, ``policy0`` and, except for
``PolicyIteration``, ``max_iter`` are checked and stored but do not change the answer.
``discount`` must be < 1. ``FiniteHorizon``, ``RelativeValueIteration``, ``QLearning``
and ``_LP`` are not provided (other problems: finite horizon, average reward,
sampling).
"""
import time

import numpy as np

from .. import _validation as V
from ..mdp import MDP
from ..solvers import solve

__all__ = ["PolicyIteration", "PolicyIterationModified", "ValueIteration",
           "ValueIterationGS"]


class _Solver:
    """Shared construction and ``run()``; see the module docstring."""

    _caps_iterations = False  # only PolicyIteration's max_iter caps policy-iteration steps

    def __init__(self, transitions, reward, discount, epsilon, max_iter, skip_check=False):
        if not 0 <= discount < 1:
            raise ValueError(f"discount must be in [0, 1), got {discount}")
        self.discount = float(discount)
        self.mdp = MDP.from_mdptoolbox(transitions, reward, self.discount)
        self.S, self.A = self.mdp.n_states, self.mdp.n_actions
        self.P = tuple(transitions[a] for a in range(self.A))
        self.R = tuple(self.mdp.R.T)  # per action, the expected reward of each state
        if epsilon is not None:
            self.epsilon = V.check_positive(float(epsilon), "epsilon")
        self.max_iter = V.check_int(int(max_iter), "max_iter")
        self.verbose = False
        self.time = None
        self.iter = 0
        self.V = None
        self.policy = None

    def run(self):
        """Solve exactly; set ``V`` and ``policy`` (tuples), ``iter`` and ``time``."""
        t0 = time.time()
        opts = {"max_iter": self.max_iter} if self._caps_iterations else {}
        res = solve(self.mdp, **opts)
        self.V = tuple(res.v.tolist())
        self.policy = tuple(res.sigma.tolist())
        self.iter = res.n_iter
        self.time = time.time() - t0

    def setSilent(self):
        """Verbosity off (fastppo prints nothing either way)."""
        self.verbose = False

    def setVerbose(self):
        """Verbosity on (fastppo prints nothing either way)."""
        self.verbose = True

    def __repr__(self):
        return f"{type(self).__name__}({self.mdp!r})"


class PolicyIteration(_Solver):
    """A discounted MDP solved by policy iteration (pymdptoolbox's signature).

    Parameters
    ----------
    transitions : array of shape (A, S, S), or a list of A (sparse) (S, S) matrices
    reward : array or list
        Any of pymdptoolbox's layouts (see ``fastppo.MDP.from_mdptoolbox``).
    discount : float in [0, 1)
    policy0 : array_like of int, shape (S,), optional
        Starting policy: checked (labels in 0..A-1), then ignored.
    max_iter : int, default 1000
        Cap on policy-iteration steps (``ConvergenceError`` past it).
    eval_type : {0, "matrix", 1, "iterative"}, default 0
        Checked, then ignored: evaluations are always exact.
    skip_check : bool, default False
        Accepted for newer pymdptoolbox versions; fastppo always checks its input.

    Attributes
    ----------
    V : tuple of float
        The optimal values (exact), after ``run()``.
    policy : tuple of int
        An optimal policy, after ``run()``.
    iter : int
        Policy-iteration steps.
    time : float
        Seconds taken by ``run()``.
    mdp : fastppo.MDP
    """

    _caps_iterations = True

    def __init__(self, transitions, reward, discount, policy0=None, max_iter=1000, eval_type=0,
                 skip_check=False):
        super().__init__(transitions, reward, discount, None, max_iter, skip_check)
        if policy0 is not None:  # integers, or floats of integer value as pymdptoolbox allows
            policy0 = np.asarray(policy0).reshape(-1)
            if policy0.dtype.kind == "f" and (policy0 == np.round(policy0)).all():
                policy0 = policy0.astype(np.int64)
            V.sigma_pairs(self.mdp, policy0, "policy0")
        if eval_type in (0, "matrix"):
            self.eval_type = "matrix"
        elif eval_type in (1, "iterative"):
            self.eval_type = "iterative"
        else:
            raise ValueError("'eval_type' should be '0' for matrix evaluation or '1' for "
                             "iterative evaluation. The strings 'matrix' and 'iterative' can "
                             "also be used.")


class PolicyIterationModified(_Solver):
    """A discounted MDP solved by modified policy iteration (pymdptoolbox's signature);
    here exactly, by fastppo's policy iteration.

    Parameters
    ----------
    transitions, reward, discount
        As in :class:`PolicyIteration`.
    epsilon : float, default 0.01
        Checked (> 0) and stored; the answer is exact, not span-stopped.
    max_iter : int, default 10
        Checked and stored (pymdptoolbox's cap on each partial evaluation); unused.
    skip_check : bool, default False

    Attributes
    ----------
    V, policy, iter, time, mdp
        As in :class:`PolicyIteration`.
    """

    def __init__(self, transitions, reward, discount, epsilon=0.01, max_iter=10,
                 skip_check=False):
        super().__init__(transitions, reward, discount, epsilon, max_iter, skip_check)


class ValueIteration(_Solver):
    """A discounted MDP solved by value iteration (pymdptoolbox's signature); here
    exactly, by fastppo's policy iteration.

    Parameters
    ----------
    transitions, reward, discount
        As in :class:`PolicyIteration`.
    epsilon : float, default 0.01
        Checked (> 0) and stored; the answer is exact, not span-stopped.
    max_iter : int, default 1000
        Checked and stored (pymdptoolbox's cap on sweeps); unused.
    initial_value : array_like of shape (S,) or 0, default 0
        Checked, then ignored.
    skip_check : bool, default False

    Attributes
    ----------
    V, policy, iter, time, mdp
        As in :class:`PolicyIteration` (``iter``: policy-iteration steps, not sweeps).
    """

    def __init__(self, transitions, reward, discount, epsilon=0.01, max_iter=1000,
                 initial_value=0, skip_check=False):
        super().__init__(transitions, reward, discount, epsilon, max_iter, skip_check)
        if not (np.ndim(initial_value) == 0 and initial_value == 0):
            if np.size(initial_value) != self.S:
                raise ValueError("The initial value must be a vector of length S.")


class ValueIterationGS(ValueIteration):
    """Gauss-Seidel value iteration (pymdptoolbox's signature, ``max_iter=10``); here
    exactly, by fastppo's policy iteration. As :class:`ValueIteration`."""

    def __init__(self, transitions, reward, discount, epsilon=0.01, max_iter=10,
                 initial_value=0, skip_check=False):
        super().__init__(transitions, reward, discount, epsilon, max_iter, initial_value,
                         skip_check)
