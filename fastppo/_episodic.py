r"""Exact quantities on episodic MDPs (γ = 1): one topological pass each, no linear solve.

At γ = 1 every policy terminates (the non-terminal states form a DAG,
``MDP.topological_order``; terminal states are absorbing with zero reward), and SPEC §1
reads with d^π_μ(s)/(1−γ) as the expected number of visits n(s) before termination:

    Ṽ = (I − P_π)⁻¹ (r_π − τ D_f(π))  on the non-terminal states, 0 on terminal ones
    n = (I − P_πᵀ)⁻¹ μ                on the non-terminal states, 0 on terminal ones
    d = n / L,  L = Σ_s n(s)          (the expected episode length from μ)
    ∂Ṽ(μ)/∂θ(s,a) = n(s) · π(a|s) · [Ã(s,a) − τ (f'(w_a) − Σ_b π(b|s) f'(w_b))]

Ṽ in reverse topological order (each state from its final successors), n in topological
order (each state pushing its final visits forward): the kernels ``episodic_values`` and
``episodic_visits`` (kernels/numba/episodic.py, kernels/cython/episodic.pyx, the NumPy
reference). Terminal states carry no divergence: episodes end there, nothing is acted.

:class:`EpisodicEvaluator` offers the methods of ``fastppo._evaluator.Evaluator`` that
its callers use; ``Evaluator(mdp, ...)`` returns one when ``mdp.gamma == 1``.
:func:`visit_weights` is the weight d/(1−γ) of the exact methods' updates at any γ.
"""
import numpy as np

from . import _krylov
from ._backend import get_kernel
from ._evaluator import Evaluation, Evaluator
from ._result import Result

METHOD = "topological"


def visit_weights(mdp, vis):
    """d^π_μ/(1−γ) of a visitation Result: the expected (discounted) visits per state,
    shape (n_states,); at γ = 1 the visits n before termination (``vis.visits``)."""
    if mdp.gamma == 1.0:
        return vis.visits
    return vis.d / (1.0 - mdp.gamma)


class EpisodicEvaluator(Evaluator):
    """:class:`fastppo._evaluator.Evaluator` on an MDP with γ = 1: the same operations,
    each evaluation or visitation one topological pass (exact: no tolerance, no warm
    start; ``tol``, ``v0`` and ``d0`` are accepted and ignored).

    The visitation Result also holds ``visits`` (n, shape (n_states,)) and ``length``
    (L = Σ n, the expected episode length); ``d = n / L``.
    """

    fuses_greedy = False  # its evaluation always makes Q̃

    def __init__(self, mdp, reg, backend, n_threads, **solver_options):
        super().__init__(mdp, reg, backend, n_threads, **solver_options)
        self._order = mdp.topological_order
        self._terminal = mdp.terminal.view(np.uint8)
        self._values = get_kernel("episodic_values", backend)
        self._visits = get_kernel("episodic_visits", backend)

    def _pass_args(self):
        mdp = self.mdp
        return (self._order, self._terminal, mdp.a_indptr, mdp.p_indptr, mdp.p_indices,
                mdp.p_data, self.pi, mdp.gamma)

    def _residual(self, product, x, b):
        """‖b − (I − P_π…) x‖₂/‖b‖₂ on the non-terminal states (one product)."""
        live = self._terminal == 0
        ax = np.empty(self.mdp.n_states)
        product(x, ax)
        norm = float(np.linalg.norm(b[live]))
        return float(np.linalg.norm((b - ax)[live])) / norm if norm > 0 else 0.0

    def evaluation(self, v0=None, tol=None, advantages=True, q_out=None):
        """Ṽ, Q̃, Ã and J of the loaded policy (Ṽ = 0 on terminal states); ``adv`` None
        when not ``advantages`` (``Evaluator.evaluation``).

        Returns
        -------
        Evaluation
            Flat ``q`` and ``adv`` (n_pairs,); ``n_matvec`` 1 (the pass), ``residual`` of
            the pass checked by one product, ``method`` "topological".
        """
        mdp = self.mdp
        passes = self.n_passes
        self.n_passes += 2  # the topological pass and q_values (the residual's product counts itself)
        c = self.regularized_reward()
        v = np.empty(mdp.n_states)
        self._values(*self._pass_args(), c, v, self.n_threads)
        q = np.empty(mdp.n_pairs) if q_out is None else q_out
        self._k["q_values"](mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, mdp.gamma, v, q,
                            self.n_threads)
        adv = self.advantages(q) if advantages else None
        residual = self._residual(self.matvec, v, c)
        return Evaluation(v=v, q=q, adv=adv, J=_krylov.dot(mdp.rho, v), n_matvec=1,
                          n_passes=self.n_passes - passes, residual=residual, method=METHOD,
                          backend=self.backend)

    def visitation(self, mu, d0=None, tol=None):
        """d = n/L of the loaded policy, n = (I − P_πᵀ)⁻¹ μ on the non-terminal states.

        Returns
        -------
        Result
            ``d``, ``visits`` (n), ``length`` (L), ``n_matvec``, ``residual``, ``method``,
            ``backend``.

        Raises
        ------
        ValueError
            If μ has no mass on the non-terminal states (no episode takes a step).
        """
        passes = self.n_passes
        self.n_passes += 1  # the topological pass
        n = np.empty(self.mdp.n_states)
        self._visits(*self._pass_args(), mu, n, self.n_threads)
        length = float(n.sum())
        if not length > 0:
            raise ValueError("the start distribution puts all its mass on terminal states: "
                             "no episode takes a step, so d (visits / episode length) is undefined")
        live_mu = np.where(self._terminal == 0, mu, 0.0)
        residual = self._residual(self.rmatvec, n, live_mu)
        return Result(d=n / length, visits=n, length=length, n_matvec=1,
                      n_passes=self.n_passes - passes, residual=residual, method=METHOD,
                      backend=self.backend)

    def evaluation_and_visitation(self, mu, v0=None, d0=None, tol=None, q=True, ahead=False):
        """:meth:`evaluation` and :meth:`visitation`; (Evaluation, Result) (``q`` and
        ``ahead`` are accepted for the Evaluator's signature: Q̃ is always made here, and
        the solves are direct, with no sweep ahead)."""
        return self.evaluation(), self.visitation(mu)

    def gradient(self, mu, tol=None):
        """∂Ṽ^{π_θ}(μ)/∂θ at the loaded π, flat (n_pairs,): the visits n weigh the states."""
        mdp = self.mdp
        ev, vis = self.evaluation_and_visitation(mu)
        out = np.empty(mdp.n_pairs)
        self._k["policy_gradient"](mdp.a_indptr, self.pi, ev.adv, vis.visits, self.ref,
                                   self.code, self.alpha, self.tau, out, self.n_threads)
        return out
