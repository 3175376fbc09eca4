"""Linear solvers driven by a fused matrix-free product: Richardson sweeps, then GMRES.

Solves A x = b for the Bellman systems (I − γP_π) v = c and (I − γP_πᵀ) y = μ,
where ``matvec(x, out)`` writes A x into ``out``.

``richardson`` is the fixed-point sweep x ← x + (b − A x) = c + γP x with the true
residual for free at every sweep. Plain sweeps contract at rate γ (2,300 sweeps for
1e-10 at γ = 0.99), but only along one direction: P_π 1 = 1. For the value system the
MacQueen bounds  T x + γ/(1−γ) min(Tx − x) ≤ v ≤ T x + γ/(1−γ) max(Tx − x)  remove it
(each sweep adds γ/(1−γ) times the mid-range of the residual); for the visitation
system a start of the right mass (1ᵀy = 1/(1−γ)) has no error along it. What is left
contracts at the mixing rate of P_π: about 0.2 per sweep on garnet MDPs, where this
reaches 1e-12 in ~20 products with no orthogonalisation. On slow-mixing MDPs the rate
approaches γ; ``richardson`` then stops early and hands its iterate to GMRES.

``bicgstab``: BiCGSTAB (two products and a few vector updates per step, no growing
basis: on a gridworld with ~12 nonzeros per row, GMRES(40)'s orthogonalisation costs five
times the product); restarted with a fresh shadow residual after a breakdown or when the
recursive residual drifts from the true one.

``gmres``: restarted GMRES, the robust last resort; Arnoldi uses classical
Gram–Schmidt (two BLAS gemv per step), re-orthogonalised when cancellation shrinks the
vector below 0.7 of its norm (Kahan–Parlett "twice is enough"), and Givens rotations;
each restart cycle ends with the true residual ‖b − A x‖ / ‖b‖, so the
reported residual is never an estimate.
"""
import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["ConvergenceError", "bicgstab", "gmres", "richardson"]


class ConvergenceError(RuntimeError):
    """A linear solve did not reach its tolerance within ``max_iter`` products."""


def _start(b, x0):
    """(‖b‖, a private copy of the start x0, or zeros; zeros whenever b = 0)."""
    bnorm = np.linalg.norm(b)
    if x0 is None or bnorm == 0.0:
        return bnorm, np.zeros(b.shape[0])
    return bnorm, np.array(x0, dtype=np.float64)


def richardson(matvec, b, x0=None, tol=1e-12, max_iter=2000, shift=0.0, max_rate=0.6,
               min_sweeps=4):
    """Sweeps x ← x + r (+ shift · mid-range(r) · 1), r = b − A x, while they converge fast.

    Parameters
    ----------
    matvec : callable ``matvec(x, out)``
    b : ndarray of shape (n,)
    x0 : ndarray of shape (n,), optional
        Start (default 0).
    tol : float
        Target relative residual ‖b − A x‖₂ / ‖b‖₂.
    max_iter : int
        Maximum number of products.
    shift : float
        γ/(1−γ) for the value system (MacQueen extrapolation), 0 otherwise.
    max_rate : float
        Give up once the residual shrank by less than this factor in two sweeps running
        (after ``min_sweeps`` sweeps).

    Returns
    -------
    x, n_matvec, residual, converged
        ``residual`` is the true relative residual of ``x``.
    """
    bnorm, x = _start(b, x0)
    if bnorm == 0.0:
        return x, 0, 0.0, True
    r = np.empty(b.shape[0])
    n_matvec, last, slow = 0, np.inf, 0
    while True:
        matvec(x, r)
        n_matvec += 1
        np.subtract(b, r, out=r)
        residual = np.linalg.norm(r) / bnorm
        if residual <= tol:
            return x, n_matvec, residual, True
        slow = slow + 1 if residual > max_rate * last else 0
        last = residual
        if n_matvec >= max_iter or (n_matvec >= min_sweeps and slow >= 2):
            return x, n_matvec, residual, False
        x += r
        if shift:
            x += shift * 0.5 * (r.min() + r.max())


def bicgstab(matvec, b, x0=None, tol=1e-12, max_iter=2000, max_restarts=5):
    """BiCGSTAB for A x = b, checked on the true residual.

    Parameters
    ----------
    matvec, b, x0, tol, max_iter
        As in :func:`richardson`.
    max_restarts : int
        Fresh starts (new shadow residual) allowed after a breakdown, or when the
        recursive residual met ``tol`` but the true one did not.

    Returns
    -------
    x, n_matvec, residual, converged
        ``converged`` is False when ``max_iter`` or the restarts ran out (``x`` is then
        the best iterate, for GMRES to continue from).
    """
    bnorm, x = _start(b, x0)
    if bnorm == 0.0:
        return x, 0, 0.0, True
    n = b.shape[0]
    r, v, p, s, t = (np.empty(n) for _ in range(5))
    n_matvec = 0
    for _ in range(max_restarts + 1):
        if x0 is None and n_matvec == 0:
            r[:] = b
        else:
            matvec(x, r)
            n_matvec += 1
            np.subtract(b, r, out=r)
        residual = np.linalg.norm(r) / bnorm
        if residual <= tol:
            return x, n_matvec, residual, True
        r_hat = r.copy()
        rho = alpha = omega = 1.0
        v.fill(0.0)
        p.fill(0.0)
        while n_matvec + 2 <= max_iter:
            rho_new = float(r_hat @ r)
            if rho_new == 0.0 or omega == 0.0:
                break  # breakdown: restart
            beta = (rho_new / rho) * (alpha / omega)
            p -= omega * v
            p *= beta
            p += r
            matvec(p, v)
            denom = float(r_hat @ v)
            if denom == 0.0:
                n_matvec += 1
                break
            alpha = rho_new / denom
            np.subtract(r, alpha * v, out=s)
            matvec(s, t)
            n_matvec += 2
            tt = float(t @ t)
            omega = float(t @ s) / tt if tt > 0.0 else 0.0
            x += alpha * p
            x += omega * s
            np.subtract(s, omega * t, out=r)
            rho = rho_new
            if np.linalg.norm(r) / bnorm <= tol:
                break  # verify on the true residual
        if n_matvec + 2 > max_iter:
            break
    matvec(x, r)
    n_matvec += 1
    residual = np.linalg.norm(b - r) / bnorm
    return x, n_matvec, residual, residual <= tol


def gmres(matvec, b, x0=None, tol=1e-12, restart=40, max_iter=2000, what="linear system"):
    """Solve A x = b to relative residual ``tol``.

    Parameters
    ----------
    matvec : callable ``matvec(x, out)``
    b : ndarray of shape (n,)
    x0 : ndarray of shape (n,), optional
        Initial guess (warm start).
    tol : float
        Target relative residual ‖b − A x‖₂ / ‖b‖₂.
    restart : int
        Krylov subspace size per cycle.
    max_iter : int
        Maximum number of products with A.
    what : str
        Named in the error message.

    Returns
    -------
    x : ndarray of shape (n,)
    n_matvec : int
        Products with A used, including the residual checks.
    residual : float
        True relative residual of the returned x.

    Raises
    ------
    ConvergenceError
        If ``tol`` is not reached within ``max_iter`` products.
    """
    n = b.shape[0]
    bnorm = np.linalg.norm(b)
    x = np.zeros(n) if x0 is None else np.array(x0, dtype=np.float64)
    if bnorm == 0.0:
        return np.zeros(n), 0, 0.0
    m = max(1, min(restart, n))
    V = np.empty((m + 1, n))
    H = np.zeros((m + 1, m))
    w = np.empty(n)
    n_matvec = 0
    fresh = x0 is None
    last, stalls = np.inf, 0
    while True:
        if fresh:
            r = b.copy()
            fresh = False
        else:
            matvec(x, w)
            n_matvec += 1
            r = b - w
        beta = np.linalg.norm(r)
        residual = beta / bnorm
        if residual <= tol:
            return x, n_matvec, residual
        if n_matvec >= max_iter:
            raise ConvergenceError(
                f"GMRES on the {what} did not reach tol={tol:g} within max_iter={max_iter} "
                f"products (relative residual {residual:.3g}); raise max_iter or tol"
            )
        if residual > 0.99 * last:  # a whole restart cycle gained < 1 %: round-off floor
            stalls += 1
            if stalls == 3:
                raise ConvergenceError(
                    f"GMRES on the {what} stalled at relative residual {residual:.3g} after "
                    f"{n_matvec} products, above tol={tol:g}: the tolerance is below what "
                    f"round-off allows for this system; raise tol")
        else:
            stalls = 0
        last = residual
        np.divide(r, beta, out=V[0])
        g = np.zeros(m + 1)
        g[0] = beta
        cs = np.zeros(m)
        sn = np.zeros(m)
        k = 0
        for j in range(m):
            matvec(V[j], w)
            n_matvec += 1
            Vj = V[: j + 1]
            before = np.linalg.norm(w)
            h = Vj @ w
            w -= h @ Vj
            hn = np.linalg.norm(w)
            if hn < 0.7 * before:  # cancellation: orthogonalise once more ("twice is enough")
                h2 = Vj @ w
                w -= h2 @ Vj
                h += h2
                hn = np.linalg.norm(w)
            col = np.append(h, hn)
            for i in range(j):  # apply earlier rotations
                col[i], col[i + 1] = cs[i] * col[i] + sn[i] * col[i + 1], -sn[i] * col[i] + cs[i] * col[i + 1]
            rho = np.hypot(col[j], col[j + 1])
            cs[j], sn[j] = (1.0, 0.0) if rho == 0.0 else (col[j] / rho, col[j + 1] / rho)
            col[j], col[j + 1] = rho, 0.0
            H[: j + 2, j] = col
            g[j], g[j + 1] = cs[j] * g[j], -sn[j] * g[j]
            k = j + 1
            if hn == 0.0 or abs(g[j + 1]) / bnorm <= 0.5 * tol or n_matvec >= max_iter:
                break
            np.divide(w, hn, out=V[j + 1])
        y = solve_triangular(H[:k, :k], g[:k])
        x += y @ V[:k]
