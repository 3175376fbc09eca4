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
``method="gmres"`` uses GMRES from the start. ``tol`` is the relative
residual; the default 1e-12 gives v and d to about 1e-10 relative accuracy for
γ ≤ 0.99 (the condition number of I − γP_π is at most (1+γ)/(1−γ)).
"""
import numpy as np

from . import _validation as V
from ._backend import get_kernel, resolve_backend, resolve_threads
from ._krylov import ConvergenceError, bicgstab, gmres, richardson
from ._result import Result

__all__ = ["Evaluation", "evaluate", "visitation", "gradient", "softmax"]

DEFAULT_TOL = 1e-12
DEFAULT_RESTART = 40
DEFAULT_MAX_ITER = 5000


class Evaluation(Result):
    """Result of :func:`evaluate`.

    Attributes
    ----------
    v : ndarray of shape (n_states,)
        Regularized values Ṽ.
    q, adv : ndarray of the shape of ``pi`` (for sigma: that of ``mdp.R``)
        Q̃ and Ã per pair.
    J : float
        Σ_s ρ(s) Ṽ(s).
    n_matvec : int
        Products with I − γP_π used by the solve.
    residual : float
        Relative residual of the solve.
    method : str
        The solvers that ran, in order: "richardson", "richardson+bicgstab",
        "richardson+bicgstab+gmres", or "gmres".
    backend : str
    """


def reg_args(mdp, reg, pi):
    """(code, alpha, tau, ref) kernel arguments for a regularizer (None: the plain MDP)."""
    from .regularizers import Regularizer

    if reg is None:
        return 0, 0.0, 0.0, pi
    if not isinstance(reg, Regularizer):
        raise TypeError(f"reg must be a fastppo regularizer (e.g. fastppo.ForwardKL(0.1)) or None, got {reg!r}")
    ref = reg.reference_policy(mdp)  # validated even when τ = 0
    if reg.tau == 0.0:
        return 0, 0.0, 0.0, ref
    return reg.code, reg.alpha, reg.tau, ref


METHODS = ("auto", "gmres")


def _linear_solve(matvec, b, x0, tol, restart, max_iter, method, shift, what):
    """(x, n_matvec, residual, methods used): Richardson sweeps; if they are slow,
    BiCGSTAB from their iterate; if that fails too, GMRES."""
    V.check_choice(method, "method", METHODS)
    used, n_total = [], 0
    if method == "auto":
        for name, solver, kw in (("richardson", richardson, dict(shift=shift)),
                                 ("bicgstab", bicgstab, {})):
            x0, n, residual, done = solver(matvec, b, x0, tol, max_iter - n_total, **kw)
            used.append(name)
            n_total += n
            if done:
                return x0, n_total, residual, "+".join(used)
            if n_total >= max_iter:
                raise ConvergenceError(f"the {what} did not reach tol={tol:g} within max_iter="
                                       f"{max_iter} products (relative residual {residual:.3g})")
    x, n, residual = gmres(matvec, b, x0, tol, restart, max_iter - n_total, what=what)
    return x, n + n_total, residual, "+".join([*used, "gmres"])


def _policy_rows(mdp, pi):
    """Kernel arrays (a_indptr, p_indptr, p_indices, p_data, pi) of the pairs π uses.

    Products with P_π only need the pairs with π > 0. When those are at most half of
    all pairs (a deterministic policy uses one per state), their rows are gathered once
    into a compact CSR (O(nnz) of those rows), so every product reads only them; the
    sums are the same, term by term.
    """
    if np.count_nonzero(pi) > mdp.n_pairs // 2:
        return mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi
    used = np.flatnonzero(pi)
    a_indptr = np.zeros(mdp.n_states + 1, dtype=np.int64)
    np.cumsum(np.bincount(mdp.s_indices[used], minlength=mdp.n_states), out=a_indptr[1:])
    lengths = mdp.p_indptr[used + 1] - mdp.p_indptr[used]
    p_indptr = np.zeros(used.shape[0] + 1, dtype=np.int64)
    np.cumsum(lengths, out=p_indptr[1:])
    gather = np.repeat(mdp.p_indptr[used] - p_indptr[:-1], lengths) + np.arange(p_indptr[-1])
    return a_indptr, p_indptr, mdp.p_indices[gather], mdp.p_data[gather], pi[used]


def _solver_args(tol, max_iter, restart):
    tol = V.check_positive(tol, "tol")
    max_iter = V.check_int(DEFAULT_MAX_ITER if max_iter is None else max_iter, "max_iter")
    restart = V.check_int(restart, "restart")
    return tol, max_iter, restart


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
        Relative residual of the linear solve.
    max_iter : int, default 5000
        Maximum number of sparse products.
    restart : int, default 40
        GMRES restart length (memory: restart × n_states floats).
    method : {"auto", "gmres"}, default "auto"
        "auto": extrapolated Richardson sweeps while they converge fast (residual
        shrinking by a factor 0.6 or better per sweep), then BiCGSTAB from their iterate,
        and GMRES if BiCGSTAB fails; "gmres": GMRES only. The result says which ran.
    backend : {"numba", "cython", "numpy"}, optional
    n_threads : int, optional

    Returns
    -------
    Evaluation
        ``v`` (n_states,), ``q`` and ``adv`` in the shape of ``pi`` (for sigma: the
        MDP's table shape, that of ``mdp.R``), ``J``,
        ``n_matvec``, ``residual``, ``backend``.

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
    V.check_discounted(mdp, "evaluate")
    flat = V.as_policy(mdp, pi)
    code, alpha, tau, ref = reg_args(mdp, reg, flat)
    tol, max_iter, restart = _solver_args(tol, max_iter, restart)
    v0 = _guess(v0, mdp.n_states, "v0")
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    k = lambda name: get_kernel(name, which)  # noqa: E731

    c = np.empty(mdp.n_states)
    k("regularized_reward")(mdp.a_indptr, mdp.r, flat, ref, code, alpha, tau, c, nt)
    V.check_finite(c, "r_pi - tau * D_f(pi)")
    matvec = k("bellman_matvec")
    args = (*_policy_rows(mdp, flat), mdp.gamma)
    gamma = mdp.gamma
    v, n_matvec, residual, used = _linear_solve(
        lambda x, out: matvec(*args, x, out, nt), c, v0, tol, restart, max_iter, method,
        gamma / (1.0 - gamma), "evaluation system (I - gamma P_pi) v = r_pi - tau D_f(pi)")
    q = np.empty(mdp.n_pairs)
    k("q_values")(mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, mdp.gamma, v, q, nt)
    adv = np.empty(mdp.n_pairs)
    k("advantages")(mdp.a_indptr, flat, q, adv, nt)
    like = None if V.is_sigma(mdp, pi) else pi
    return Evaluation(v=v, q=mdp.to_table(q, like=like), adv=mdp.to_table(adv, like=like),
                      J=float(mdp.rho @ v), n_matvec=n_matvec, residual=residual, method=used,
                      backend=which)


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
        Return a Result with ``d``, ``n_matvec``, ``residual``, ``method``, ``backend``.

    Returns
    -------
    d : ndarray of shape (n_states,)
        Non-negative, sums to 1, ``d >= (1−γ) mu``.
    """
    V.check_discounted(mdp, "visitation")
    flat = V.as_policy(mdp, pi)
    mu = mdp.rho if mu is None else V.check_distribution(mu, mdp.n_states, "mu")
    tol, max_iter, restart = _solver_args(tol, max_iter, restart)
    d0 = _guess(d0, mdp.n_states, "d0")
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    rmatvec = get_kernel("bellman_rmatvec", which)
    buf = np.empty((nt, mdp.n_states))
    args = (*_policy_rows(mdp, flat), mdp.gamma)
    scale = 1.0 - mdp.gamma
    # a start of the solution's mass 1/(1−γ) leaves no error along P_πᵀ's slow direction
    y0 = mu / scale if d0 is None else d0 / (scale * d0.sum()) if d0.sum() > 0 else None
    y, n_matvec, residual, used = _linear_solve(
        lambda x, out: rmatvec(*args, x, out, buf, nt), mu, y0, tol, restart, max_iter, method,
        0.0, "visitation system (I - gamma P_pi^T) d = (1 - gamma) mu")
    d = scale * y
    np.maximum(d, 0.0, out=d)  # clears round-off negatives only (d >= (1-γ)μ >= 0 exactly)
    d /= d.sum()
    if full_output:
        return Result(d=d, n_matvec=n_matvec, residual=residual, method=used, backend=which)
    return d


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
    out = np.empty_like(flat)
    nt = resolve_threads(n_threads)
    get_kernel("segment_softmax", backend)(mdp.a_indptr, flat, out, nt)
    return mdp.to_table(out, like=logits)


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
    V.check_discounted(mdp, "gradient")
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    opts = dict(tol=tol, max_iter=max_iter, restart=restart, backend=which, n_threads=nt)
    pi = softmax(mdp, V.check_logits(mdp, logits), backend=which, n_threads=nt)
    ev = evaluate(mdp, pi, reg, **opts)
    d = visitation(mdp, pi, mu, **opts)
    code, alpha, tau, ref = reg_args(mdp, reg, pi)
    out = np.empty(mdp.n_pairs)
    get_kernel("policy_gradient", which)(mdp.a_indptr, pi, ev.adv, d / (1.0 - mdp.gamma), ref,
                                          code, alpha, tau, out, nt)
    return mdp.to_table(out, like=logits)
