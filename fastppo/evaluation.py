r"""Exact regularized policy evaluation, visitation and the softmax policy gradient.

For a policy π and a regularizer τ·D_f(π ‖ π_ref) (τ = 0 or ``reg=None``: the
plain MDP):

    Ṽ^π = (I − γ P_π)^{-1} (r_π − τ D_f(π))
    Q̃(s,a) = r(s,a) + γ Σ_s' P(s'|s,a) Ṽ(s')
    Ã(s,a) = Q̃(s,a) − Σ_b π(b|s) Q̃(s,b)
    d^π_μ = (1 − γ) (I − γ P_πᵀ)^{-1} μ
    J(π) = Σ_s ρ(s) Ṽ(s)

and for the softmax policy π_θ(a|s) ∝ exp θ(s,a), with w_a = π(a|s)/π_ref(a|s),

    ∂Ṽ(μ)/∂θ(s,a) = d_μ(s)/(1−γ) · π(a|s) · [Ã(s,a) − τ (f'(w_a) − Σ_b π(b|s) f'(w_b))].

Both linear systems are solved matrix-free on fused sparse kernels
(``fastppo._krylov``); no S×S matrix is formed. ``method="auto"`` starts with
extrapolated Richardson sweeps (no orthogonalisation: fast on MDPs that mix quickly,
e.g. garnet) and hands over to BiCGSTAB as soon as the sweeps converge slowly
(gridworlds, local successors), and to restarted GMRES if BiCGSTAB fails;
``method="richardson"``, ``"bicgstab"`` or ``"gmres"`` runs that solver alone. ``tol`` is
the relative residual ‖b − A x‖₂/‖b‖₂, the same at every reward scale (rewards × c
give values × c); the default 1e-12 gives v and d to about 1e-10 relative accuracy for
γ ≤ 0.99 (the condition number of I − γP_π is at most (1+γ)/(1−γ)).

At γ = 1 (episodic MDPs: every policy terminates, the non-terminal states form a DAG)
d^π_μ/(1−γ) reads as the expected visits n = (I − P_πᵀ)^{-1} μ before termination and
d^π_μ as n divided by the expected episode length Σ n; Ṽ, n and d are 0 on terminal
states, and each is one exact pass over the states in topological order
(``fastppo._episodic``): no linear solve, ``tol`` and warm starts do not apply.

These functions check their inputs, then delegate to ``fastppo._evaluator.Evaluator``,
which the solvers' inner loops use directly.
"""
import numpy as np

from . import _validation as V
from ._backend import resolve_backend, resolve_threads
from ._evaluator import (DEFAULT_MAX_ITER, DEFAULT_RESTART, DEFAULT_TOL, Evaluation,
                         Evaluator)
from ._krylov import METHODS

__all__ = ["Evaluation", "evaluate", "visitation", "gradient", "softmax"]


def _solver_args(tol, max_iter, restart, method="auto"):
    """The linear-solve options, checked, as Evaluator keywords."""
    return dict(tol=V.check_positive(tol, "tol"),
                max_iter=V.check_int(DEFAULT_MAX_ITER if max_iter is None else max_iter, "max_iter"),
                restart=V.check_int(restart, "restart"),
                method=V.check_choice(method, "method", METHODS))


def _guess(x0, n, name):
    if x0 is None:
        return None
    x0 = np.asarray(x0, dtype=np.float64)
    if x0.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},), got {x0.shape}")
    V.check_finite(x0, name)
    return x0


def evaluate(mdp, pi, reg=None, *, v0=None, tol=DEFAULT_TOL, max_iter=None,
             restart=DEFAULT_RESTART, method="auto", backend=None, n_threads=None):
    """Regularized values Ṽ, Q̃ and advantages Ã of a policy.

    Parameters
    ----------
    mdp : MDP
    pi : array_like of shape (n_pairs,) or (n_states, n_actions), or int array of shape (n_states,)
        Policy probabilities (the second shape for rectangular MDPs only), or ``sigma``:
        per state, the action label (a value of ``mdp.a_indices``) of a deterministic
        policy, as in QuantEcon. The dtype decides: an integer array of shape
        (n_states,) is sigma, a float array is a probability table.
    reg : Regularizer, optional
        τ·D_f(π ‖ π_ref); None for the plain MDP.
    v0 : ndarray of shape (n_states,), optional
        Initial guess for Ṽ (warm start, e.g. the previous policy's values).
    tol : float, default 1e-12
        Relative residual of the linear solve. Below the round-off floor of the system,
        10·eps·(1+γ)/(1−γ), the floor is the target (a solver that stalls within 10× the
        floor has converged); the result's ``residual`` says what was reached.
    max_iter : int, default 5000
        Maximum number of sparse products.
    restart : int, default 40
        GMRES restart length (memory: restart × n_states floats).
    method : {"auto", "richardson", "bicgstab", "sgs", "lu", "gmres"}, default "auto"
        "auto": extrapolated Richardson sweeps while they converge fast (residual
        shrinking by a factor 0.6 or better per sweep); then, on I − γP_π assembled once
        (duplicate successors merged), a sparse LU where it is cheap (banded: chains),
        else BiCGSTAB preconditioned by symmetric Gauss–Seidel ("sgs"), then the LU if
        its fill stays below 20× the matrix, then GMRES. A solver's name runs it alone
        ("lu" raises ``ConvergenceError`` when its fill bound exceeds the cap). The
        result says which ran (``method``; ``fill`` of the LU when one ran).
    backend : {"numba", "cython", "numpy"}, optional
    n_threads : int, optional

    Returns
    -------
    Evaluation
        ``v`` (n_states,), ``q`` and ``adv`` in the shape of ``pi`` (for sigma: the
        MDP's table shape, that of ``mdp.R``), ``J``,
        ``n_matvec`` (products), ``n_passes`` (reads of P's arrays), ``residual``,
        ``method``, ``fill``, ``backend``.

    Raises
    ------
    ConvergenceError
        If the solve does not reach ``tol`` within ``max_iter`` products.

    Examples
    --------
    >>> import fastppo
    >>> mdp = fastppo.garnet(100, 4, 3, gamma=0.9, seed=0)
    >>> ev = fastppo.evaluate(mdp, mdp.uniform_policy())
    >>> ev.v.shape, bool(abs(ev.adv.sum()) < 1e-8 * len(ev.adv))
    ((100,), True)
    """
    flat = V.as_policy(mdp, pi, copy=False)  # used during this call only
    E = Evaluator(mdp, reg, resolve_backend(backend), resolve_threads(n_threads),
                  **_solver_args(tol, max_iter, restart, method))
    v0 = _guess(v0, mdp.n_states, "v0")
    E.load(flat)
    ev = E.evaluation(v0)
    like = None if V.is_sigma(mdp, pi) else pi
    ev.q, ev.adv = mdp.to_table(ev.q, like=like), mdp.to_table(ev.adv, like=like)
    return ev


def visitation(mdp, pi, mu=None, *, d0=None, tol=DEFAULT_TOL, max_iter=None,
               restart=DEFAULT_RESTART, method="auto", backend=None, n_threads=None,
               full_output=False):
    """Normalised discounted state visitation d^π_μ = (1−γ) (I − γP_πᵀ)^{-1} μ.

    Parameters
    ----------
    mdp : MDP
    pi : array_like of shape (n_pairs,) or (n_states, n_actions), or int array of shape (n_states,)
        Policy probabilities, or sigma (action labels), as in :func:`evaluate`.
    mu : array_like of shape (n_states,), optional
        Start distribution; ``mdp.rho`` by default.
    d0 : ndarray of shape (n_states,), optional
        Initial guess for d (warm start).
    tol, max_iter, restart, method, backend, n_threads
        As in :func:`evaluate`.
    full_output : bool, default False
        Return a Result with ``d``, ``n_matvec``, ``n_passes``, ``residual``, ``method``, ``fill``,
        ``backend``.

    Returns
    -------
    d : ndarray of shape (n_states,)
        Non-negative, sums to 1, ``d >= (1−γ) mu``. At γ = 1: the expected visits before
        termination divided by the expected episode length, 0 on terminal states
        (``full_output`` adds ``visits`` and ``length``).
    """
    flat = V.as_policy(mdp, pi, copy=False)  # used during this call only
    mu = mdp.rho if mu is None else V.check_distribution(mu, mdp.n_states, "mu")
    E = Evaluator(mdp, None, resolve_backend(backend), resolve_threads(n_threads),
                  **_solver_args(tol, max_iter, restart, method))
    d0 = _guess(d0, mdp.n_states, "d0")
    E.load(flat)
    res = E.visitation(mu, d0)
    return res if full_output else res.d


def softmax(mdp, logits, *, backend=None, n_threads=None):
    """Per-state softmax π(a|s) = exp θ(s,a) / Σ_b exp θ(s,b) (log-sum-exp, safe at ±1e4).

    Parameters
    ----------
    mdp : MDP
    logits : array_like of shape (n_pairs,) or (n_states, n_actions)
    backend : {"numba", "cython", "numpy"}, optional
    n_threads : int, optional

    Returns
    -------
    pi : ndarray of the shape of ``logits``
    """
    flat = V.check_logits(mdp, logits)
    E = Evaluator(mdp, None, resolve_backend(backend), resolve_threads(n_threads))
    return mdp.to_table(E.softmax(flat), like=logits)


def gradient(mdp, logits, reg=None, mu=None, *, tol=DEFAULT_TOL, max_iter=None,
             restart=DEFAULT_RESTART, backend=None, n_threads=None):
    """Exact gradient ∂Ṽ^{π_θ}(μ)/∂θ of the softmax policy π_θ, μ-weighted.

    Parameters
    ----------
    mdp : MDP
    logits : array_like of shape (n_pairs,) or (n_states, n_actions)
    reg : Regularizer, optional
    mu : array_like of shape (n_states,), optional
        Weighting of start states; ``mdp.rho`` by default.
    tol, max_iter, restart, backend, n_threads
        As in :func:`evaluate`.

    Returns
    -------
    grad : ndarray of the shape of ``logits``
    """
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    theta = V.check_logits(mdp, logits)
    E = Evaluator(mdp, reg, which, nt, **_solver_args(tol, max_iter, restart))
    mu = mdp.rho if mu is None else V.check_distribution(mu, mdp.n_states, "mu")
    E.load(E.softmax(theta))
    return mdp.to_table(E.gradient(mu), like=logits)
