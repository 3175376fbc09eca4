r"""Linear solves for the Bellman systems behind one interface.

A :class:`System` is A x = b with A = I − γM: the value system (I − γP_π) v = c and the
visitation system (I − γP_πᵀ) y = μ; ``matvec(x, out)`` writes A x into ``out``. Every
solver is a function with one signature and one result::

    solver(system, x0, stop, max_iter) -> LinearResult(x, n_matvec, residual, converged,
                                                       method, stalled)

``x0`` is the start (None: zero), ``stop`` the :class:`StoppingRule`, ``max_iter`` the
budget of products with A; ``residual`` is always the true relative residual of ``x``.
Solvers never raise on failure: :func:`solve` runs a chain of them, each continuing from
the previous one's iterate, and raises :class:`ConvergenceError` in one place.
:func:`solve_pair` does the same for the value and visitation systems of one policy
together: their Richardson sweeps advance in lockstep through one ``products`` call (a
fused pass over P can serve both), and each system falls to the Krylov methods on its own.

Scale. :func:`solve` and :func:`solve_pair` divide b and x0 by the power of two nearest
max |b| (exact: every iterate is the scaled iterate of the unscaled solve, bit for bit),
so no norm or inner product overflows or underflows for any b of finite entries
(1e-300 … 1e300), and stopping tests, relative, see the same numbers at every scale.

**Solvers.**

``richardson``: the fixed-point sweep x ← x + (b − A x) = c + γP x, with the true
residual for free at every sweep. Plain sweeps contract at rate γ (2,300 sweeps for
1e-10 at γ = 0.99), but only along one direction: P_π 1 = 1. For the value system the
MacQueen bounds  T x + γ/(1−γ) min(Tx − x) ≤ v ≤ T x + γ/(1−γ) max(Tx − x)  remove it
(each sweep adds γ/(1−γ) times the mid-range of the residual: ``System.shift``); for the
visitation system a start of the right mass (1ᵀy = 1/(1−γ)) has no error along it. What
is left contracts at the mixing rate of P_π: about 0.2 per sweep on garnet MDPs, where
this reaches 1e-12 in ~20 products with no orthogonalisation. On slow-mixing MDPs the
rate approaches γ; the sweeps then stop early (``max_rate``) and BiCGSTAB continues.

``bicgstab``: BiCGSTAB (two products and a few vector updates per step, no growing
basis: on a gridworld with ~12 nonzeros per row, GMRES(40)'s orthogonalisation costs five
times the product); restarted with a fresh shadow residual after a breakdown or when the
recursive residual drifts from the true one.

``gmres``: restarted GMRES, the robust last resort; Arnoldi uses classical
Gram–Schmidt (two BLAS gemv per step), re-orthogonalised when cancellation shrinks the
vector below 0.7 of its norm (Kahan–Parlett "twice is enough"), and Givens rotations;
each restart cycle ends with the true residual ‖b − A x‖ / ‖b‖.

A new solver (a preconditioned method, a direct factorisation) is a function of the same
signature added to ``SOLVERS`` and to a chain in :func:`chain`.
"""
import functools
import math

import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["ConvergenceError", "LOCAL", "LinearResult", "Space", "StoppingRule", "System",
           "bicgstab", "chain", "dot", "gmres", "richardson", "solve", "solve_pair"]

METHODS = ("auto", "richardson", "bicgstab", "gmres")
MAX_RATE, MIN_SWEEPS = 0.6, 4  # Richardson gives up when slower than this (in "auto")


class ConvergenceError(RuntimeError):
    """A linear solve did not reach its tolerance within ``max_iter`` products."""


def dot(a, b):
    """a · b of two vectors of shape (n,), on the calling thread.

    ``np.einsum``'s loop, whose sum does not depend on the arrays' alignment. A BLAS
    ddot (``a @ b``, ``np.linalg.norm``) of n ≳ 10⁴ wakes BLAS's worker threads: on a
    loaded 2-core machine that took ~7 ms per call at n = 50,000, the time of a product
    with P_π, and made a PPO-Clip iteration 2.3× and ``solve`` 4× slower.
    """
    return float(np.einsum("i,i->", a, b))


class Space:
    """Where the vectors of a system live, and the reductions over their entries.

    The solvers reduce vectors only through the :class:`StoppingRule`'s space: the default,
    :data:`LOCAL`, holds whole vectors in this process. ``fastppo.distributed`` gives one
    whose vectors are row blocks spread over MPI ranks, each reduction a per-rank partial
    combined in rank order (every rank gets the same bits).
    """

    def dot(self, a, b):
        """a · b (:func:`dot`)."""
        return dot(a, b)

    def dots(self, V, w):
        """V @ w for V of shape (k, n): k dot products at once (GMRES's Gram–Schmidt)."""
        return V @ w

    def sum(self, x):
        return float(x.sum())

    def min(self, x):
        return x.min()

    def max(self, x):
        return x.max()

    def amax(self, x):
        """max |x|."""
        return float(np.max(np.abs(x)))

    def size(self, x):
        """The vectors' length n (the whole vector's, wherever its entries live)."""
        return x.shape[0]

    def all_equal(self, a, b):
        """Whether a and b are equal entry for entry."""
        return np.array_equal(a, b)


LOCAL = Space()


class System:
    """A x = b, A = I − γM given by its product.

    Parameters
    ----------
    matvec : callable ``matvec(x, out)``
        Writes A x into ``out`` (both ndarray of shape (n,)).
    b : ndarray of shape (n,)
        Right-hand side, finite.
    what : str
        Named in error messages, e.g. "evaluation system (I - gamma P_pi) v = ...".
    shift : float
        γ/(1−γ) for the value system (A 1 = (1−γ) 1: Richardson's MacQueen
        extrapolation), 0 otherwise.
    """

    __slots__ = ("matvec", "b", "what", "shift")

    def __init__(self, matvec, b, what="linear system", shift=0.0):
        self.matvec, self.b, self.what, self.shift = matvec, b, what, shift


class LinearResult:
    """What a solver returns.

    Attributes
    ----------
    x : ndarray of shape (n,)
        The solution (the best iterate when not converged).
    n_matvec : int
        Products with A, including residual checks.
    residual : float
        True relative residual ‖b − A x‖₂ / ‖b‖₂ of ``x``.
    converged : bool
        Whether ``stop`` accepted ``residual``.
    method : str
        What ran, in order: "richardson", "richardson+bicgstab", "gmres", ...
    stalled : bool
        Not converged although budget was left (the solver gave up: slow sweeps,
        exhausted restarts, or no progress at the round-off floor).
    """

    __slots__ = ("x", "n_matvec", "residual", "converged", "method", "stalled")

    def __init__(self, x, n_matvec, residual, converged, method, stalled=False):
        self.x, self.n_matvec, self.residual = x, int(n_matvec), float(residual)
        self.converged, self.method, self.stalled = bool(converged), method, bool(stalled)

    def __repr__(self):
        return (f"LinearResult(method={self.method!r}, n_matvec={self.n_matvec}, "
                f"residual={self.residual:.3g}, converged={self.converged})")


class StoppingRule:
    """The one stopping rule of every solver: relative residual ‖b − A x‖₂ / ‖b‖₂ ≤ tol.

    Solvers measure residuals with :meth:`relative` and accept them with :meth:`met`
    only; this is the place for a round-off floor (accepting max(tol, floor)).

    Parameters
    ----------
    tol : float
        Target relative residual, > 0.
    space : Space, default LOCAL
        Where the vectors live: every reduction of the solvers goes through it.
    """

    __slots__ = ("tol", "space")

    def __init__(self, tol, space=LOCAL):
        self.tol = float(tol)
        self.space = space

    def norm(self, x):
        """‖x‖₂ (the systems are scaled to max |b| ∈ [0.5, 1), so it neither overflows
        nor underflows)."""
        return math.sqrt(self.space.dot(x, x))

    def relative(self, r, bnorm):
        """‖r‖₂ / ‖b‖₂."""
        return self.norm(r) / bnorm

    def met(self, residual):
        """Whether a relative residual is accepted."""
        return residual <= self.tol


def _start(system, x0, stop):
    """(‖b‖, a private copy of the start x0, or zeros; zeros whenever b = 0)."""
    b = system.b
    bnorm = stop.norm(b)
    if x0 is None or bnorm == 0.0:
        return bnorm, np.zeros(b.shape[0])
    return bnorm, np.array(x0, dtype=np.float64)


# ----------------------------------------------------------------------- solvers
class _Sweeps:
    """Richardson sweeps on one system, advanced one product at a time by the caller:
    ``A x`` is written into ``r``, then :meth:`absorb` decides and sweeps. ``result`` is
    set once it is finished."""

    def __init__(self, system, x0, stop, max_iter, max_rate=MAX_RATE, min_sweeps=MIN_SWEEPS):
        self.system, self.stop, self.max_iter = system, stop, max_iter
        self.max_rate, self.min_sweeps = max_rate, min_sweeps
        self.bnorm, self.x = _start(system, x0, stop)
        self.r = np.empty(system.b.shape[0])
        self.n_matvec, self.last, self.slow = 0, np.inf, 0
        self.result = None
        if self.bnorm == 0.0:
            self.result = LinearResult(self.x, 0, 0.0, True, "richardson")

    def absorb(self):
        r, x = self.r, self.x
        self.n_matvec += 1
        np.subtract(self.system.b, r, out=r)
        residual = self.stop.relative(r, self.bnorm)
        if self.stop.met(residual):
            self.result = LinearResult(x, self.n_matvec, residual, True, "richardson")
            return
        self.slow = self.slow + 1 if residual > self.max_rate * self.last else 0
        self.last = residual
        slow = self.n_matvec >= self.min_sweeps and self.slow >= 2
        if self.n_matvec >= self.max_iter or slow:
            self.result = LinearResult(x, self.n_matvec, residual, False, "richardson",
                                       stalled=self.n_matvec < self.max_iter)
            return
        x += r
        if self.system.shift:
            space = self.stop.space
            x += self.system.shift * 0.5 * (space.min(r) + space.max(r))


def richardson(system, x0, stop, max_iter, *, max_rate=MAX_RATE, min_sweeps=MIN_SWEEPS):
    """Sweeps x ← x + r (+ shift · mid-range(r) · 1), r = b − A x, while they converge fast.

    Parameters
    ----------
    system, x0, stop, max_iter
        The solver interface (module docstring).
    max_rate : float
        Give up once the residual shrank by less than this factor in two sweeps running
        (after ``min_sweeps`` sweeps); 1.0 sweeps until ``tol``, the budget, or a stall.
    min_sweeps : int

    Returns
    -------
    LinearResult
    """
    sweeps = _Sweeps(system, x0, stop, max_iter, max_rate, min_sweeps)
    while sweeps.result is None:
        system.matvec(sweeps.x, sweeps.r)
        sweeps.absorb()
    return sweeps.result


def bicgstab(system, x0, stop, max_iter, *, max_restarts=5):
    """BiCGSTAB for A x = b, checked on the true residual.

    Parameters
    ----------
    system, x0, stop, max_iter
        The solver interface (module docstring).
    max_restarts : int
        Fresh starts (new shadow residual) allowed after a breakdown, or when the
        recursive residual met the rule but the true one did not.

    Returns
    -------
    LinearResult
        Not converged when ``max_iter`` or the restarts ran out (``x`` is then the last
        iterate, for GMRES to continue from).
    """
    matvec, b, dot = system.matvec, system.b, stop.space.dot
    bnorm, x = _start(system, x0, stop)
    if bnorm == 0.0:
        return LinearResult(x, 0, 0.0, True, "bicgstab")
    n = b.shape[0]
    r, v, p, s, t = (np.empty(n) for _ in range(5))
    n_matvec, out_of_budget = 0, False
    for _ in range(max_restarts + 1):
        if x0 is None and n_matvec == 0:
            r[:] = b
        else:
            matvec(x, r)
            n_matvec += 1
            np.subtract(b, r, out=r)
        residual = stop.relative(r, bnorm)
        if stop.met(residual):
            return LinearResult(x, n_matvec, residual, True, "bicgstab")
        r_hat = r.copy()
        rho = alpha = omega = 1.0
        v.fill(0.0)
        p.fill(0.0)
        while n_matvec + 2 <= max_iter:
            rho_new = dot(r_hat, r)
            if rho_new == 0.0 or omega == 0.0:
                break  # breakdown: restart
            beta = (rho_new / rho) * (alpha / omega)
            p -= omega * v
            p *= beta
            p += r
            matvec(p, v)
            denom = dot(r_hat, v)
            if denom == 0.0:
                n_matvec += 1
                break
            alpha = rho_new / denom
            np.subtract(r, alpha * v, out=s)
            matvec(s, t)
            n_matvec += 2
            tt = dot(t, t)
            omega = dot(t, s) / tt if tt > 0.0 else 0.0
            x += alpha * p
            x += omega * s
            np.subtract(s, omega * t, out=r)
            rho = rho_new
            if stop.met(stop.relative(r, bnorm)):
                break  # verify on the true residual
        if n_matvec + 2 > max_iter:
            out_of_budget = True
            break
    matvec(x, r)
    n_matvec += 1
    np.subtract(b, r, out=r)
    residual = stop.relative(r, bnorm)
    converged = stop.met(residual)
    return LinearResult(x, n_matvec, residual, converged, "bicgstab",
                        stalled=not (converged or out_of_budget))


def gmres(system, x0, stop, max_iter, *, restart=40):
    """Restarted GMRES for A x = b.

    Parameters
    ----------
    system, x0, stop, max_iter
        The solver interface (module docstring).
    restart : int
        Krylov subspace size per cycle (memory: restart × n floats).

    Returns
    -------
    LinearResult
        ``stalled`` when three restart cycles running gained less than 1 % each (the
        round-off floor of the system lies above the tolerance).
    """
    matvec, b = system.matvec, system.b
    n = b.shape[0]
    bnorm, x = _start(system, x0, stop)
    if bnorm == 0.0:
        return LinearResult(x, 0, 0.0, True, "gmres")
    m = max(1, min(restart, stop.space.size(b)))
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
        beta = stop.norm(r)
        residual = beta / bnorm
        if stop.met(residual):
            return LinearResult(x, n_matvec, residual, True, "gmres")
        if n_matvec >= max_iter:
            return LinearResult(x, n_matvec, residual, False, "gmres")
        if residual > 0.99 * last:  # a whole restart cycle gained < 1 %: round-off floor
            stalls += 1
            if stalls == 3:
                return LinearResult(x, n_matvec, residual, False, "gmres", stalled=True)
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
            before = stop.norm(w)
            h = stop.space.dots(Vj, w)
            w -= h @ Vj
            hn = stop.norm(w)
            if hn < 0.7 * before:  # cancellation: orthogonalise once more ("twice is enough")
                h2 = stop.space.dots(Vj, w)
                w -= h2 @ Vj
                h += h2
                hn = stop.norm(w)
            col = np.append(h, hn)
            for i in range(j):  # apply earlier rotations
                col[i], col[i + 1] = cs[i] * col[i] + sn[i] * col[i + 1], -sn[i] * col[i] + cs[i] * col[i + 1]
            rho = np.hypot(col[j], col[j + 1])
            cs[j], sn[j] = (1.0, 0.0) if rho == 0.0 else (col[j] / rho, col[j + 1] / rho)
            col[j], col[j + 1] = rho, 0.0
            H[: j + 2, j] = col
            g[j], g[j + 1] = cs[j] * g[j], -sn[j] * g[j]
            k = j + 1
            # the recursive estimate, with a safety factor 2 (the true residual is checked)
            if hn == 0.0 or stop.met(2.0 * abs(g[j + 1]) / bnorm) or n_matvec >= max_iter:
                break
            np.divide(w, hn, out=V[j + 1])
        y = solve_triangular(H[:k, :k], g[:k])
        x += y @ V[:k]


SOLVERS = {"richardson": richardson, "bicgstab": bicgstab, "gmres": gmres}


def chain(method="auto", restart=40):
    """The solvers ``method`` runs, in order, as (name, solver) pairs.

    "auto": Richardson sweeps while they converge fast, then BiCGSTAB from their
    iterate, then GMRES if BiCGSTAB fails. A solver's name forces it alone (Richardson
    then sweeps until the tolerance, the budget or a stall).
    """
    if method == "auto":
        names = ("richardson", "bicgstab", "gmres")
    else:
        names = (method,)
    options = {"richardson": {} if method == "auto" else {"max_rate": 1.0},
               "bicgstab": {}, "gmres": {"restart": restart}}
    return [(name, functools.partial(SOLVERS[name], **options[name])) for name in names]


# ------------------------------------------------------------------------ drivers
def _scaled(system, x0, stop):
    """(system with b / 2^e, x0 / 2^e, e), 2^(e−1) ≤ max |b| < 2^e (e = 0 when b = 0)."""
    big = stop.space.amax(system.b)
    if big == 0.0:
        return system, x0, 0
    e = int(np.frexp(big)[1])
    b = np.ldexp(system.b, -e)
    return (System(system.matvec, b, system.what, system.shift),
            None if x0 is None else np.ldexp(x0, -e), e)


def _finish(system, first, links, stop, max_iter):
    """Continue a chain: ``first`` is the result of its first link (already run), then
    each of ``links`` from the last iterate; raises ConvergenceError if none converges."""
    used, total, res = [first.method], first.n_matvec, first
    for name, solver in links:
        if res.converged or total >= max_iter:
            break
        res = solver(system, res.x, stop, max_iter - total)
        used.append(name)
        total += res.n_matvec
    method = "+".join(used)
    if not res.converged:
        if res.stalled and total < max_iter:
            raise ConvergenceError(
                f"{method} on the {system.what} stalled at relative residual {res.residual:.3g} "
                f"after {total} products, above tol={stop.tol:g}: the tolerance is below what "
                f"round-off allows for this system; raise tol")
        raise ConvergenceError(
            f"{method} on the {system.what} did not reach tol={stop.tol:g} within "
            f"max_iter={max_iter} products (relative residual {res.residual:.3g}); raise "
            f"max_iter or tol")
    return LinearResult(res.x, total, res.residual, True, method)


def _unscaled(res, e):
    x = np.ldexp(res.x, e) if e else res.x
    return LinearResult(x, res.n_matvec, res.residual, res.converged, res.method)


def solve(system, x0=None, *, stop, max_iter, method="auto", restart=40):
    """Solve A x = b by the chain of ``method``, each solver continuing from the last.

    Parameters
    ----------
    system : System
    x0 : ndarray of shape (n,), optional
        Start (warm start); zero when None.
    stop : StoppingRule
        When a relative residual ‖b − A x‖₂ / ‖b‖₂ is accepted.
    max_iter : int
        Budget of products with A for the whole chain.
    method : {"auto", "richardson", "bicgstab", "gmres"}
        See :func:`chain`.
    restart : int
        GMRES restart length.

    Returns
    -------
    LinearResult
        Converged; ``method`` says which solvers ran.

    Raises
    ------
    ConvergenceError
        If the chain ends without meeting ``stop``, naming the system and why (out of
        budget, or stalled above the tolerance).
    """
    scaled, x0, e = _scaled(system, x0, stop)
    (_, first), *links = chain(method, restart)
    res = first(scaled, x0, stop, max_iter)
    return _unscaled(_finish(scaled, res, links, stop, max_iter), e)


def solve_pair(value, visit, products, v0=None, y0=None, *, stop, max_iter, method="auto",
               restart=40):
    """Solve the value and visitation systems of one policy together.

    With ``method="auto"`` both run Richardson sweeps in lockstep, one
    ``products(x_value, x_visit, out_value, out_visit)`` call per sweep (two products,
    counted as two); a system that converges leaves the lockstep, the other continues
    alone with its own ``matvec``, and a system whose sweeps stall continues with the
    Krylov methods on its own. Each system's iterates are exactly those of
    :func:`solve` on it alone. Other methods solve the two systems one after the other.

    Parameters
    ----------
    value, visit : System
    products : callable ``products(x_value, x_visit, out_value, out_visit)``
        Both products at once: ``out_value = A_value x_value``, ``out_visit = A_visit x_visit``.
    v0, y0 : ndarray of shape (n,), optional
        Starts of the two systems.
    stop, max_iter, method, restart
        As in :func:`solve`, for each system (``max_iter`` is each system's budget).

    Returns
    -------
    (LinearResult, LinearResult)
        For ``value`` and ``visit``.

    Raises
    ------
    ConvergenceError
        If either system fails (the value system is finished first).
    """
    if method != "auto":
        return (solve(value, v0, stop=stop, max_iter=max_iter, method=method, restart=restart),
                solve(visit, y0, stop=stop, max_iter=max_iter, method=method, restart=restart))
    _, *links = chain(method, restart)  # the first link, Richardson, runs here
    sv, v0, ev = _scaled(value, v0, stop)
    sy, y0, ey = _scaled(visit, y0, stop)
    a, b = _Sweeps(sv, v0, stop, max_iter), _Sweeps(sy, y0, stop, max_iter)
    while a.result is None and b.result is None:
        products(a.x, b.x, a.r, b.r)
        a.absorb()
        b.absorb()
    for sweeps in (a, b):
        while sweeps.result is None:
            sweeps.system.matvec(sweeps.x, sweeps.r)
            sweeps.absorb()
    return (_unscaled(_finish(sv, a.result, links, stop, max_iter), ev),
            _unscaled(_finish(sy, b.result, links, stop, max_iter), ey))
