r"""Linear solves for the Bellman systems behind one interface.

A :class:`System` is A x = b with A = I − γM: the value system (I − γP_π) v = c and the
visitation system (I − γP_πᵀ) y = μ; ``matvec(x, out)`` writes A x into ``out``. Every
solver is a function with one signature and one result::

    solver(system, x0, stop, max_iter) -> LinearResult(x, n_matvec, residual, converged,
                                                       method, stalled)

``x0`` is the start (None: zero), ``stop`` the :class:`StoppingRule`, ``max_iter`` the
budget of products with A; ``residual`` is always the true relative residual of ``x``,
and ``x`` is always finite. Solvers never raise on failure: :func:`solve` runs a chain of
them, each continuing from the previous one's iterate, and raises
:class:`ConvergenceError` in one place. The one stopping rule (:class:`StoppingRule`)
accepts max(tol, round-off floor of the system) and tells a stall at round-off from a
failure.
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
(each sweep adds γ/(1−γ) times the residual's part along 1, estimated by MacQueen's
mid-range or, from ``MEAN_STATES`` states on (``WARM_MEAN_STATES`` from warm starts), by
its mean: :func:`extrapolation`,
``System.shift``); for the
visitation system a start of the right mass (1ᵀy = 1/(1−γ)) has no error along it. What
is left contracts at the mixing rate of P_π: about 0.2 per sweep on garnet MDPs, where
this reaches 1e-12 in ~20 products with no orthogonalisation. On slow-mixing MDPs the
rate approaches γ; the sweeps then stop early (``max_rate``) and the assembled solvers
continue, from the last iterate or from the start if that was better (on gridworlds the
extrapolation first multiplies the value system's residual by ~50). A system may make a
whole sweep in one pass (``System.sweep``: product, residual, update and the residual's
sums; the evaluator's ``row_sweep``); the sweeps use it except where their product must
keep more (``sweep_product``'s last).

``sgs``: BiCGSTAB on I − γP_π assembled once per policy (duplicate successors merged,
``fastppo._assembled``), split-preconditioned by symmetric Gauss–Seidel with Eisenstat's
trick: a step costs two passes over the assembled entries, like plain BiCGSTAB, and takes
fewer steps (products at 10k, π = softmax(N(0, 1)), γ = 0.99: 2.2× fewer on the local
garnet, 2.9× on the gridworld, 3.5× on queue2d, 9.5× on the pendulum grid). The steps
between two checks of the true residual run compiled (the ``sgs_bicgstab`` kernel).

``lu``: an LU of the assembled matrix in reverse Cuthill–McKee order and iterative
refinement: LAPACK's band LU where the band fits in 20× the entries of A (the local
garnet: 11× faster than SuperLU at 50k), else SuperLU's sparse LU, whose fill, bounded by
the envelope before anything is factorised, is capped at 20× the entries. Its cost does not grow as γ → 1; "auto" uses it
first where it is cheap (chains, banded matrices) and after ``sgs`` fails. The cheap
probe declines first on a floor of the work bound valid in every order
(``fastppo._assembled.flops_floor``: two passes over the pattern), before the ordering
is computed: on garnets the ordering alone took seconds.

``bicgstab``: BiCGSTAB (two products and a few vector updates per step, no growing
basis: on a gridworld with ~12 nonzeros per row, GMRES(40)'s orthogonalisation costs five
times the product); restarted with a fresh shadow residual after a breakdown or when the
recursive residual drifts from the true one, and from the best finite iterate when an
iterate turns non-finite or explodes (RiverSwim's drift makes it diverge from some
starts). Matrix-free: the chain of systems without an assembled form.

``gmres``: restarted GMRES, the robust last resort; Arnoldi uses classical
Gram–Schmidt (two BLAS gemv per step), re-orthogonalised when cancellation shrinks the
vector below 0.7 of its norm (Kahan–Parlett "twice is enough"), and Givens rotations;
each restart cycle ends with the true residual ‖b − A x‖ / ‖b‖.

A new solver is a function of the same signature added to ``SOLVERS`` and to a chain in
:func:`chain`; one that needs the matrix asks ``system.assembled()`` for it (the
evaluator assembles it once per policy, for both systems).
"""
import functools
import math

import numpy as np
from scipy.linalg import solve_triangular

__all__ = ["ConvergenceError", "LOCAL", "LinearResult", "Space", "StoppingRule", "System",
           "bicgstab", "chain", "dot", "gmres", "norm", "richardson", "scale_exponent", "solve",
           "solve_pair"]
from ._assembled import FILL_CAP

__all__ = ["ConvergenceError", "LinearResult", "StoppingRule", "System", "bicgstab", "chain",
           "dot", "gmres", "lu", "richardson", "sgs", "solve", "solve_pair"]

METHODS = ("auto", "richardson", "bicgstab", "sgs", "lu", "gmres")
MAX_RATE, MIN_SWEEPS = 0.6, 4  # Richardson gives up when slower than this (in "auto")
# ... unless this many more sweeps at their mean rate since the first product meet tol
REACH_SWEEPS = 4
# the value sweeps estimate the residual's part along 1 by its mean, not its mid-range,
# from MEAN_STATES states on from zero starts, WARM_MEAN_STATES from warm starts
# (:func:`extrapolation`)
MEAN_EXTRAPOLATION = True
MEAN_STATES = 1 << 15
WARM_MEAN_STATES = 1 << 19
REFINE = 1e-5  # approximate (float32) products: an exact one after the residual fell this much
# approximate products near tol too, the last one predicted (from the last sweep's rate) exact
PREDICT_LAST = True
FIRST_RATE = 0.2  # the rate assumed before a system's second product (optimistic: see _Sweeps)
# sweeps that give up hand over their iterate only when it halved the start's residual:
# else the start (the pendulum at 50k: SGS-BiCGSTAB took 33 products from the sweeps'
# iterate at 0.71 of the start's residual, 24 from the start; the other families unchanged)
HALVED_HANDOVER = True
EPS = float(np.finfo(np.float64).eps)


def start_is_better(residual, start_residual):
    """Whether sweeps that gave up at ``residual`` hand over their start instead of their
    iterate: it did not halve the start's residual (``HALVED_HANDOVER``; else: rose)."""
    return residual > (0.5 if HALVED_HANDOVER else 1.0) * start_residual


def within_reach(residual, start_residual, n_matvec, target):
    """Whether ``REACH_SWEEPS`` more sweeps at the mean rate since the first product
    (``start_residual``; ``residual`` after ``n_matvec`` products) meet ``target``: slow
    sweeps this near it go on. Late in a 10⁶-state PPO-Clip run a warm value solve slowed
    to 0.65 per sweep at 4.3 tol and handed over to SGS-BiCGSTAB: 11 products and an
    assembled I − γP_π (2 GiB) where two more sweeps would do."""
    if n_matvec < 2 or not 0.0 < residual < start_residual:
        return False
    rate = (residual / start_residual) ** (1.0 / (n_matvec - 1))
    return residual * rate ** REACH_SWEEPS <= target


def hands_over_start(residual, start_residual, shift, cold, n):
    """Whether sweeps that gave up hand over their start: :func:`start_is_better`, or
    always for the value system (``shift``) from a zero start (``cold``) where it is
    extrapolated by the mean (:func:`mean_extrapolation`). The mid-range's sweeps first
    drive a gridworld's residual up and hand over zero; the mean's halve it, and
    SGS-BiCGSTAB took 89 products from their iterate against 83 from zero (the 50k grid;
    queue 155 against 153, local and pendulum the same)."""
    return (shift != 0 and cold and mean_extrapolation(n)) or start_is_better(residual,
                                                                              start_residual)


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


def norm(x):
    """‖x‖₂ of a vector held whole in this process (:func:`dot`)."""
    return math.sqrt(dot(x, x))


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
    assembled : callable, optional
        ``assembled()`` returns A assembled (a ``fastppo._assembled.SplitView``: its
        products, Gauss–Seidel sweeps and the preconditioned operator), built on the
        first call; None when A is only known by its product (``sgs`` then runs
        BiCGSTAB on ``matvec``).
    sweep_product : callable, optional
        ``sweep_product(x, out, last)``: A x into ``out`` for Richardson's sweeps (exact),
        told whether it may be their last (a warm start's first, or the one predicted to
        meet tol: :class:`_Sweeps`), so that it can keep what the caller needs of a
        solution met there. None: ``matvec``.
    sweep : callable, optional
        ``sweep(b, x, shift, out)``: x ← x + shift, then a whole Richardson sweep in one
        pass, x + r into ``out`` (r = b − A x), returning (Σ r, Σ r², min r, max r) (the
        ``row_sweep`` kernel); Richardson's sweeps use it, except for the products that
        ``sweep_product`` is asked for. None: ``sweep_product`` and vector operations.
    """

    __slots__ = ("matvec", "b", "what", "shift", "assembled", "sweep_product", "sweep")

    def __init__(self, matvec, b, what="linear system", shift=0.0, assembled=None,
                 sweep_product=None, sweep=None):
        self.matvec, self.b, self.what, self.shift = matvec, b, what, shift
        self.assembled, self.sweep_product, self.sweep = assembled, sweep_product, sweep


class LinearResult:
    """What a solver returns.

    Attributes
    ----------
    x : ndarray of shape (n,)
        The solution (the best finite iterate when not converged).
    n_matvec : int
        Products with A, including residual checks (a symmetric Gauss–Seidel step, one
        pass over A's entries, counts as one).
    residual : float
        True relative residual ‖b − A x‖₂ / ‖b‖₂ of ``x``.
    converged : bool
        Whether ``stop`` accepted ``residual``.
    method : str
        What ran, in order: "richardson", "richardson+sgs", "gmres", ...
    stalled : bool
        Not converged although budget was left (the solver gave up: slow sweeps,
        exhausted restarts, or no progress at the round-off floor).
    ahead : ndarray of shape (n,) or None
        Where asked (:func:`solve_pair`'s ``ahead``), the sweep after ``x`` when Richardson
        converged on an exact product: x + r from that product's residual r, without the
        system's shift along 1. Its own residual is not computed: for A = I − γM it is
        γ M r, at most γ ‖r‖∞ for M row-stochastic (the value system) and γ ‖r‖₁ for
        M column-stochastic (the visitation). A warm start for a nearby system, not a
        result.
    """

    __slots__ = ("x", "n_matvec", "residual", "converged", "method", "stalled", "ahead")

    def __init__(self, x, n_matvec, residual, converged, method, stalled=False, ahead=None):
        self.x, self.n_matvec, self.residual = x, int(n_matvec), float(residual)
        self.converged, self.method, self.stalled = bool(converged), method, bool(stalled)
        self.ahead = ahead

    def __repr__(self):
        return (f"LinearResult(method={self.method!r}, n_matvec={self.n_matvec}, "
                f"residual={self.residual:.3g}, converged={self.converged})")


class StoppingRule:
    r"""The one stopping rule of every solver, on the relative residual ‖b − A x‖₂ / ‖b‖₂.

    A = I − γM with M (sub)stochastic has ‖A‖∞ ≤ 1 + γ and ‖A⁻¹‖∞ ≤ 1/(1 − γ): the
    residual of the exact solution rounded to doubles, computed in doubles, is of the
    order eps·(1+γ)/(1−γ). The rule's round-off floor is ten times that,

        floor = 10 · eps · (1 + γ) / (1 − γ)        (4.4e-13 at γ = 0.99, 4.4e-10 at 0.99999)

    and a residual ≤ ``target`` = max(tol, floor) is convergence. A solver that stalls
    (no progress left) is accepted when its residual is ≤ max(tol, 10 · floor): the floor
    is an estimate, and a stall that close to it is round-off. A stall above that is a
    failure, reported with the name of the caller's tolerance (``name``). The solution's
    error then obeys ‖x − x*‖/‖x*‖ ≤ cond(A) · residual.

    Solvers measure residuals with :meth:`relative` and decide with :meth:`met` and
    :meth:`accepts_stall` only.

    Parameters
    ----------
    tol : float
        Target relative residual, > 0.
    gamma : float in [0, 1), default 0
        Discount of the systems (sets the floor).
    name : str, default "tol"
        The caller's name for ``tol`` ("lin_tol" for ``solve`` and the PPO methods), used
        in error messages.
    space : Space, default LOCAL
        Where the vectors live: every reduction of the solvers goes through it.
    """

    __slots__ = ("tol", "gamma", "floor", "target", "name", "space")

    def __init__(self, tol, gamma=0.0, name="tol", space=LOCAL):
        self.tol, self.gamma, self.name, self.space = float(tol), float(gamma), name, space
        self.floor = 10.0 * EPS * (1.0 + self.gamma) / (1.0 - self.gamma) if gamma < 1 else np.inf
        self.target = max(self.tol, self.floor)

    def norm(self, x):
        """‖x‖₂ (the systems are scaled to max |b| ∈ [0.5, 1), so it neither overflows
        nor underflows)."""
        return math.sqrt(self.space.dot(x, x))

    def relative(self, r, bnorm):
        """‖r‖₂ / ‖b‖₂."""
        return self.norm(r) / bnorm

    def met(self, residual):
        """Whether a relative residual is accepted: ≤ max(tol, floor)."""
        return residual <= self.target

    def accepts_stall(self, residual):
        """Whether a solver that can make no more progress at ``residual`` has reached
        round-off: ≤ max(tol, 10 · floor)."""
        return residual <= max(self.tol, 10.0 * self.floor)


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
    set once it is finished. A zero start's residual is b itself (:meth:`zero_start`, as
    GMRES and BiCGSTAB take it): a cold garnet evaluation takes 16 products, not 17.

    A product may be approximate (``absorb(exact=False)``: float32 gathers of a correction,
    :func:`solve_pair`), accurate to about 1e-7 of the residual at the last exact product
    (1e-5 for the value system's constant direction at γ = 0.99). ``exact`` asks the caller
    for an exact product: to start a new correction once the residual fell by REFINE below
    the last exact one (or stopped falling), and to certify a residual that met the rule
    on an approximate product. Once the last exact residual is within REFINE of tol (late
    in a PPO run, with good warm starts, from the first product on), a certificate would
    cost a pass of its own, so the product that is predicted to meet tol is asked exact:
    the one after a sweep whose residual times the last sweep's rate (FIRST_RATE before
    the second residual) is at most tol. A wrong guess costs either way: an exact product
    that misses tol ~0.4 of a pass more than a correction (10⁶ states), a correction that
    meets it a whole certifying pass; hence the optimistic FIRST_RATE. A late 10⁶-state
    PPO-Clip solve then runs ``exact, exact, 2 corrections, exact`` instead of 5 exact
    passes (benchmarks/RESULTS.md, issue 12 target 5). ``PREDICT_LAST`` False: every
    product exact near tol (the rule before it).

    Sweeps that end unconverged return the start instead of their last iterate unless that
    halved the start's true residual (``HALVED_HANDOVER``): on a gridworld's value system
    the extrapolation first drives the residual from 1 to 47 and the sweeps give up at 6.9,
    and SGS-BiCGSTAB then needed 103 products from there against 80 from the zero start;
    on the pendulum at 50k the sweeps gave up at 0.71 of the start's, and it took 33
    products from there against 24 from the start."""

    def __init__(self, system, x0, stop, max_iter, max_rate=MAX_RATE, min_sweeps=MIN_SWEEPS,
                 ahead=False):
        self.system, self.stop, self.max_iter = system, stop, max_iter
        self.ahead = ahead  # LinearResult.ahead on a converged exact product
        self.max_rate, self.min_sweeps = max_rate, min_sweeps
        self.bnorm, self.x = _start(system, x0, stop)
        self.x0 = x0  # the caller's start (not modified: ``x`` is a copy), None for zero
        self.start_residual = np.inf  # the true residual at the start (the first product)
        self.r = np.empty(system.b.shape[0])
        self.y = None  # the next sweep of ``System.sweep``, on first use
        self.pending = 0.0  # x's shift along 1 not yet stored (:meth:`sweep`)
        # how :meth:`sweep` estimates the residual's part along 1 (:func:`extrapolation`)
        self.mean = mean_extrapolation(system.b.shape[0], x0 is None)
        self.n_matvec, self.last, self.slow = 0, np.inf, 0
        self.n_residuals = 0  # residuals absorbed: products, and the free one of a zero start
        self.exact = True  # the next product must be exact (the first one, a certification)
        self.exact_residual = np.inf  # residual at the last exact product
        self.approximate = 0  # approximate products since then
        self.corrected = False  # whether any product was approximate
        self.result = None
        if self.bnorm == 0.0:
            self.result = LinearResult(self.x, 0, 0.0, True, "richardson")

    def zero_start(self):
        """Absorb the residual b of a zero start without a product (A 0 = 0, exactly);
        nothing when the caller gave a start or the system is already solved."""
        if self.result is None and self.x0 is None:
            # r = b − A 0 = b, whose relative residual is ‖b‖ / ‖b‖ = 1 exactly (the same norm)
            if self._decide(1.0, True, False):
                r, x = self.system.b, self.x
                x += r  # (x is zero: as absorb makes it)
                if self.system.shift:
                    x += self.system.shift * extrapolation(r, self.stop.space, True)

    def absorb(self, exact=True, product=True):
        """Take A x from ``r``: its residual decides (:meth:`_decide`), then x ← x + r
        (+ the shift along 1)."""
        r, x = self.r, self.x
        np.subtract(self.system.b, r, out=r)
        if self._decide(self.stop.relative(r, self.bnorm), exact, product):
            self._step(x, r)
        elif self.ahead and exact and self.result.converged:
            self.result.ahead = x + r  # no shift: r may be round-off, which it would amplify

    def _step(self, x, r):
        """x ← x + r + the shift along 1."""
        x += r
        if self.system.shift:
            x += self.system.shift * extrapolation(r, self.stop.space, self.x0 is None)

    def sweep(self):
        """One sweep made by the system (``System.sweep``): x ← x + ``pending``, then x + r
        into ``y``, with r's sums. The same decisions as :meth:`absorb`; x is then that
        sweep, and its shift along 1 is pending (stored by the next sweep, or by
        :meth:`settle`): no NumPy operation between two sweeps."""
        if self.y is None:
            self.y = np.empty_like(self.x)
        total, squares, least, most = self.system.sweep(self.system.b, self.x, self.pending,
                                                         self.y)
        self.pending = 0.0  # stored into x by the sweep
        if self._decide(math.sqrt(squares) / self.bnorm, True, True):
            self.x, self.y = self.y, self.x
            if self.system.shift:
                self.pending = self.system.shift * (
                    total / self.x.shape[0] if self.mean else 0.5 * (least + most))

    def settle(self):
        """x ← x + ``pending`` (stored, as :meth:`absorb` stores its shift)."""
        if self.pending:
            self.x += self.pending
            self.pending = 0.0

    def _decide(self, residual, exact, product):
        """Record a residual of x (with nothing pending); sets ``result`` if the sweeps end
        there. Returns whether they go on."""
        self.n_matvec += product
        self.n_residuals += 1
        # the last sweep's rate, on any product (an approximate residual is accurate to
        # ~1e-7 of the last exact one: far within this test's margin); once products
        # were approximate, a slow sweep asks the next product exact, and the sweeps give
        # up only on an exact product: as many sweeps to give up as with exact products
        slower = residual > self.max_rate * self.last
        if not exact:
            self.corrected = True
        self.exact = slower and self.corrected
        if exact:
            if self.n_residuals == 1:
                self.start_residual = residual
            self.exact_residual, self.approximate = residual, 0
        else:
            self.approximate += 1
            if residual <= REFINE * self.exact_residual:
                self.exact = True  # near the correction's float32 round-off: a new base
        # the residual the next product should have: this one times the last sweep's rate
        rate = FIRST_RATE if self.n_residuals == 1 else residual / self.last if self.last > 0 else 1.0
        predicted = residual * rate
        self.last = residual
        if self.exact_residual * REFINE <= self.stop.tol and (
                not PREDICT_LAST or predicted <= self.stop.target):
            self.exact = True  # the next product should meet tol: exact, no certificate
        if self.stop.met(residual):
            if exact:
                self.result = LinearResult(self.x, self.n_matvec, residual, True, "richardson")
                return False
            self.exact = True  # certify x by an exact product before accepting it
            return True
        self.slow = self.slow + 1 if slower else 0
        slow = (exact and self.n_residuals >= self.min_sweeps and self.slow >= 2
                and not within_reach(residual, self.start_residual, self.n_residuals,
                                     self.stop.target))
        if self.n_matvec >= self.max_iter or slow:
            stalled = self.n_matvec < self.max_iter
            x = self.x
            if exact and hands_over_start(residual, self.start_residual, self.system.shift,
                                          self.x0 is None, self.stop.space.size(x)):
                x = np.zeros_like(x) if self.x0 is None else np.array(self.x0, dtype=np.float64)
                residual = self.start_residual
            self.result = LinearResult(x, self.n_matvec, residual, False, "richardson",
                                       stalled=stalled)
            return False
        return True


def extrapolation(r, space=LOCAL, cold=True):
    """The residual's part along 1, estimated: a sweep of the value system adds ``shift``
    times it along 1. Its mean (:func:`mean_extrapolation`), or its mid-range
    ½ (min r + max r) (MacQueen's bounds). ``fastppo.batched`` does the same per member.
    The part to remove is uᵀr, u P_π's stationary distribution (uᵀ(I − γP_π) = (1 − γ)uᵀ);
    the rest of r has uᵀw = 0, and the mean's error (1/n − u)ᵀw averages w's entries where
    the mid-range's ½ (min w + max w) rests on its two extremes, noisier the more states:
    on garnets at 50k the mid-range's sweeps took 17–18 products with 3–6 exact among
    them, the mean's 17 with 3, seeds 0–2 (benchmarks/RESULTS.md, issue 17)."""
    if mean_extrapolation(space.size(r), cold):
        return space.sum(r) / space.size(r)
    return 0.5 * (space.min(r) + space.max(r))


def mean_extrapolation(n, cold=True):
    """Whether the value sweeps of n states extrapolate by the residual's mean
    (``MEAN_EXTRAPOLATION``): from ``MEAN_STATES`` states on from a zero start (``cold``),
    from ``WARM_MEAN_STATES`` from a warm one. On the README run (garnet 50k, PPO-Clip's
    predicted starts) the mean from warm starts took 2,272 products and 4.69 passes per late
    iteration against the mid-range's 2,236 and 4.10; at 10⁶ states (float32, from log π* +
    0.001 noise) the mid-range's first sweep from a warm start raised the residual ~10×
    (3e-11 → 7e-10) and the mean's did not: iterations 6–8 took 16, 13 and 12 products
    against 20, 16 and 15, the passes alike. Below ``MEAN_STATES``, the mid-range: on a
    30 × 30 gridworld at γ = 0.99999 the mean's sweeps hand a better iterate to the LU,
    whose refinement then stops at tol (1e-12) where, from the start, it reached 1e-14;
    with the condition 1/(1 − γ) = 10⁵ that moved J by 1e-7, and PPO-Clip's J, non-decreasing
    to 1e-9 there (issue 17 target 3), fell once."""
    return MEAN_EXTRAPOLATION and n >= (MEAN_STATES if cold else WARM_MEAN_STATES)


def richardson(system, x0, stop, max_iter, *, max_rate=MAX_RATE, min_sweeps=MIN_SWEEPS):
    """Sweeps x ← x + r (+ shift · extrapolation(r) · 1), r = b − A x, while they converge
    fast.

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
    sweeps.zero_start()
    product = system.sweep_product
    while sweeps.result is None:
        # an exact product is asked for to keep what sweep_product keeps; the sweep itself
        # is exact
        if system.sweep is not None and (product is None or not sweeps.exact):
            sweeps.sweep()
            continue
        sweeps.settle()
        if product is None:
            system.matvec(sweeps.x, sweeps.r)
        else:
            product(sweeps.x, sweeps.r, sweeps.exact)
        sweeps.absorb()
    return sweeps.result


BLOWUP = 1e8  # BiCGSTAB: a residual this far above the lowest seen restarts from the best iterate


def _bicgstab(matvec, b, x, zero_start, stop, max_iter, max_restarts, check, steps=None):
    """BiCGSTAB for matvec(x) = b from ``x`` (updated in place), for a caller whose own
    residual ``check(x) -> (relative residual, products)`` decides convergence (the true
    residual of the caller's system, of which this may be a preconditioned form): the
    steps of :func:`bicgstab_steps` served one at a time.

    Returns (products, caller's residual, converged, stalled).
    """
    return drive(bicgstab_steps(b, x, zero_start, stop, max_iter, max_restarts, steps), matvec,
                 check)


def drive(steps, matvec, check):
    """Serve a step generator (:func:`bicgstab_steps`) on one system: ``matvec(vector,
    out)`` for each product it asks for, ``check(x)`` for each check; returns its result.
    (``fastppo.batched`` serves K of them at once, one batched product per round.)"""
    try:
        vector, out = next(steps)
        while True:
            if out is None:
                vector, out = steps.send(check(vector))
            else:
                matvec(vector, out)
                vector, out = steps.send(None)
    except StopIteration as done:
        return done.value


def bicgstab_steps(b, x, zero_start, stop, max_iter, max_restarts, steps=None):
    """BiCGSTAB for A x = b from ``x`` (updated in place), step by step: a generator that
    yields ``(vector, out)`` to have A·vector written into ``out`` (then resumed with
    ``send(None)``), and ``(x, None)`` to have the caller's residual of ``x``, a pair
    (relative residual, products), sent back: the true residual of the caller's system,
    of which A may be a preconditioned form, decides convergence. Its return value
    (``StopIteration.value``) is (products, caller's residual, converged, stalled).
    ``steps``, if given, runs the iteration between two checks compiled (the
    ``sgs_bicgstab`` kernel's interface, :meth:`fastppo._assembled.SplitView.bicgstab_steps`;
    the same arithmetic as the loop here, in another summation order) and asks for no
    product itself.

    The iteration stops when its recursive residual, scaled by the ratio of the caller's
    residual to it at the last check, is half the rule's target; the caller's residual is
    then checked, and a miss restarts with a fresh shadow residual. A non-finite or
    exploding iterate (residual above 1e8 × the lowest seen) restarts from the best finite
    one (a snapshot taken whenever the residual halved).
    """
    n, dot = b.shape[0], stop.space.dot
    bnorm = stop.norm(b)
    r, v, p, s, t = (np.empty(n) for _ in range(5))
    state = np.empty(7)
    used, ratio, last_true, stalls, true = 0, 1.0, np.inf, 0, np.inf
    snap, snap_rel = x.copy(), np.inf
    for attempt in range(max_restarts + 1):
        if zero_start and attempt == 0:
            r[:] = b
        else:
            yield x, r
            used += 1
            np.subtract(b, r, out=r)
        rel = stop.relative(r, bnorm)
        if not math.isfinite(rel):
            x[:] = snap
            continue
        if rel < snap_rel:
            snap[:] = x
            snap_rel = rel
        r_hat = r.copy()
        rho = alpha = omega = 1.0
        v.fill(0.0)
        p.fill(0.0)
        if steps is not None:
            state[:6] = rho, alpha, omega, rel, snap_rel, bnorm
            used += steps(x, r, r_hat, p, v, s, t, snap, state, stop.target / (2.0 * ratio),
                          BLOWUP, max_iter - used)
            rel, snap_rel = state[3], state[4]
        while steps is None and used + 2 <= max_iter and not stop.met(2.0 * rel * ratio):
            rho_new = dot(r_hat, r)
            if rho_new == 0.0 or omega == 0.0:
                break  # breakdown: restart
            beta = (rho_new / rho) * (alpha / omega)
            p -= omega * v
            p *= beta
            p += r
            yield p, v
            denom = dot(r_hat, v)
            if denom == 0.0:
                used += 1
                break
            alpha = rho_new / denom
            np.subtract(r, alpha * v, out=s)
            yield s, t
            used += 2
            tt = dot(t, t)
            omega = dot(t, s) / tt if tt > 0.0 else 0.0
            x += alpha * p
            x += omega * s
            np.subtract(s, omega * t, out=r)
            rho = rho_new
            rel = stop.relative(r, bnorm)
            if not rel <= BLOWUP * snap_rel:  # NaN, inf or blow-up: back to the best iterate
                x[:] = snap
                rel = snap_rel
                break
            if rel < 0.5 * snap_rel:
                snap[:] = x
                snap_rel = rel
        true, k = yield x, None
        used += k
        if not math.isfinite(true):
            x[:] = snap
            true, k = yield x, None
            used += k
        if stop.met(true):
            return used, true, True, False
        if rel > 0.0:
            ratio = max(1.0, true / rel)
        stalls = stalls + 1 if true > 0.5 * last_true else 0
        last_true = min(last_true, true)
        if used + 2 > max_iter:
            return used, true, False, False
        if stalls == 2:  # two restarts running without halving the residual
            break
    return used, true, False, True


def bicgstab(system, x0, stop, max_iter, *, max_restarts=5):
    """BiCGSTAB for A x = b, checked on the true residual.

    Parameters
    ----------
    system, x0, stop, max_iter
        The solver interface (module docstring).
    max_restarts : int
        Fresh starts (new shadow residual) allowed after a breakdown, a non-finite or
        exploding iterate (from the best finite one), or when the recursive residual met
        the rule but the true one did not.

    Returns
    -------
    LinearResult
        Not converged when ``max_iter`` or the restarts ran out (``x`` is then the last
        finite iterate, for GMRES to continue from).
    """
    matvec, b = system.matvec, system.b
    bnorm, x = _start(system, x0, stop)
    if bnorm == 0.0:
        return LinearResult(x, 0, 0.0, True, "bicgstab")
    r = np.empty(b.shape[0])

    def check(x):
        matvec(x, r)
        np.subtract(b, r, out=r)
        return stop.relative(r, bnorm), 1

    used, residual, converged, stalled = _bicgstab(matvec, b, x, x0 is None, stop, max_iter,
                                                   max_restarts, check)
    return LinearResult(x, used, residual, converged, "bicgstab", stalled)


# sgs from a start x₀: the first product Â y₀ from x₀ without a backward sweep
WARM_SGS_START = True


def sgs(system, x0, stop, max_iter, *, max_restarts=5):
    r"""BiCGSTAB on the assembled A, split-preconditioned by symmetric Gauss–Seidel.

    With A = D + L + U (diagonal, strictly lower and upper parts; for the visitation
    system the same of Aᵀ) and the preconditioner M = (D + L) D⁻¹ (D + U), BiCGSTAB
    solves Â y = b̂ with Â = D (D + L)⁻¹ A (D + U)⁻¹, b̂ = D (D + L)⁻¹ b, x = (D + U)⁻¹ y.
    Eisenstat's trick applies Â in one pass over A's off-diagonal entries (a forward and
    a backward sweep), the cost of one product; A is assembled once per policy with
    duplicate successors merged, so on a gridworld a step reads ~4 entries per state
    instead of 12. On the slow-mixing families this needs 2–10× fewer steps than plain
    BiCGSTAB (module docstring; a forward sweep alone solves a chain whose moves all go
    one way).
    Convergence is decided on the true residual ‖b − A x‖ / ‖b‖.

    Parameters
    ----------
    system, x0, stop, max_iter
        The solver interface; without ``system.assembled`` (or where it returns None:
        the matrix would not fit in memory) this is :func:`bicgstab`.
    max_restarts : int
        As in :func:`bicgstab`.

    Returns
    -------
    LinearResult
    """
    if system.assembled is None:
        return bicgstab(system, x0, stop, max_iter, max_restarts=max_restarts)
    b = system.b
    bnorm, x = _start(system, x0, stop)
    if bnorm == 0.0:
        return LinearResult(x, 0, 0.0, True, "sgs")
    M = system.assembled()
    if M is None:  # it would not fit in memory
        return bicgstab(system, x0, stop, max_iter, max_restarts=max_restarts)
    n = b.shape[0]
    b_hat, y, r = np.empty(n), np.zeros(n), np.empty(n)
    warm = WARM_SGS_START and x0 is not None
    if warm:
        # b̂, y₀ = (E + U_B) x₀ and the first product Â y₀ (before any check changes x), from
        # the known x₀ = x without a backward sweep, in one pass (``SplitView.start``)
        first_product = np.empty(n)
        M.start(b, x, b_hat, y, first_product)
    else:
        M.rhs(b, b_hat)
        if x0 is not None:
            M.to_y(x, y)

    # whether y may have moved since the last check (whose x is then y's): every product
    # and compiled run of steps may move it; the iteration restores a snapshot only after
    # a product or before a check
    moved = [True]

    def check(y):
        M.to_x(y, x)
        moved[0] = False
        M.matvec(x, r)
        np.subtract(b, r, out=r)
        return stop.relative(r, bnorm), 1

    if warm:
        first = [True]

        def operator(vector, out):
            moved[0] = True
            if first[0]:  # vector is y₀
                first[0] = False
                out[:] = first_product
            else:
                M.operator(vector, out)
    else:
        def operator(vector, out):
            moved[0] = True
            M.operator(vector, out)

    # the compiled steps test the recursive residual against the rule's target: a rule
    # whose ``met`` is another test (a subclass) decides in the Python loop
    steps = None
    if type(stop).met is StoppingRule.met:
        def steps(*args):
            moved[0] = True
            return M.bicgstab_steps(*args)
    used, residual, converged, stalled = _bicgstab(operator, b_hat, y, x0 is None, stop,
                                                   max_iter - 1, max_restarts, check,
                                                   steps=steps)
    if moved[0]:
        M.to_x(y, x)  # a backward sweep, unless the last check already made this x
    return LinearResult(x, used + 1, residual, converged, "sgs", stalled)


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
        ``stalled`` when three restart cycles running gained less than 1 % each at the
        round-off floor of the system (:meth:`StoppingRule.accepts_stall`), or above it
        with the cycle already at its longest (16 × ``restart``, or n): a stagnating
        GMRES(m) doubles m first, and so does one whose last cycle's rate would not reach
        tol within ``max_iter`` (a 120-state pendulum at γ = 0.9999: GMRES(40) gained
        5–20 % a cycle and ran out of 5,000 products at 4e-9).
    """
    matvec, b = system.matvec, system.b
    n = b.shape[0]
    bnorm, x = _start(system, x0, stop)
    if bnorm == 0.0:
        return LinearResult(x, 0, 0.0, True, "gmres")
    m = max(1, min(restart, stop.space.size(b)))
    max_m = max(m, min(16 * restart, stop.space.size(b)))  # memory: (max_m + 1) × n floats at most
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
        if stop.accepts_stall(residual) and residual > 0.5 * last:  # slow at round-off
            return LinearResult(x, n_matvec, residual, False, "gmres", stalled=True)
        if residual > 0.99 * last:  # a whole restart cycle gained < 1 %
            stalls += 1
            if stalls == 3 and (stop.accepts_stall(residual) or m >= max_m):  # round-off
                return LinearResult(x, n_matvec, residual, False, "gmres", stalled=True)
            longer = stalls == 3  # GMRES(m) stagnates above round-off
        else:
            stalls = 0
            longer = (m < max_m and last < np.inf and m * math.log(stop.target / residual)
                      > (max_iter - n_matvec) * math.log(residual / last))  # tol beyond budget
        if longer:  # a longer cycle
            m = min(2 * m, max_m)
            V, H = np.empty((m + 1, n)), np.zeros((m + 1, m))
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
        y = solve_triangular(H[:k, :k], g[:k], check_finite=False)
        step = y @ V[:k]
        if not np.isfinite(step).all():  # a breakdown of the recurrence: keep the last x
            return LinearResult(x, n_matvec, residual, False, "gmres", stalled=True)
        x += step


def lu(system, x0, stop, max_iter, *, max_flops=np.inf, max_refinements=10):
    """A sparse LU of the assembled matrix, with iterative refinement on the true residual.

    The factorisation (``fastppo._assembled.AssembledMatrix.lu``: reverse Cuthill–McKee
    order, a band LU or a sparse LU, storage at most ``FILL_CAP`` × the entries of A) is made
    once per policy and serves both systems; its cost does not grow as γ → 1, where the
    iterative methods slow down. x ← x + LU⁻¹ (b − A x) until the rule is met.

    Parameters
    ----------
    system, x0, stop, max_iter
        The solver interface.
    max_flops : float
        Decline when the factorisation's work bound exceeds this many products with A
        (the "auto" chain tries an LU first only where it is cheap).
    max_refinements : int

    Returns
    -------
    LinearResult
        ``method`` "lu"; "" with no product when declined (no assembled form, or the
        fill or work bound is exceeded): the chain then goes on from ``x0``.
    """
    b = system.b
    bnorm, x = _start(system, x0, stop)
    if bnorm == 0.0:
        return LinearResult(x, 0, 0.0, True, "lu")
    M = None if system.assembled is None else system.assembled()
    solve_lu = None if M is None else M.factor(max_flops * (M.m.nnz + M.m.n_states))
    if solve_lu is None:
        return LinearResult(x, 0, np.inf, False, "")
    r = np.empty(b.shape[0])
    used, last, residual = 0, np.inf, np.inf
    for step in range(max_refinements + 1):
        if x0 is None and step == 0:
            r[:] = b
        else:
            M.matvec(x, r)
            np.subtract(b, r, out=r)
            used += 1
        residual = stop.relative(r, bnorm)
        if stop.met(residual):
            return LinearResult(x, used, residual, True, "lu")
        if residual > 0.5 * last or used >= max_iter:  # no more gain: round-off
            break
        last = residual
        x += solve_lu(r)
    return LinearResult(x, used, residual, False, "lu", stalled=used < max_iter)


SOLVERS = {"richardson": richardson, "bicgstab": bicgstab, "sgs": sgs, "lu": lu, "gmres": gmres}
# "auto" factorises first when the LU's work bound is below this many products with A. One
# factorisation serves both systems of a policy; SGS-BiCGSTAB took ~90 steps of two sweeps
# per system on the local garnet (10k and 50k), where the band LU costs ~50 products.
LU_FIRST = 60.0


def chain(method="auto", restart=40, assembled=True):
    """The solvers ``method`` runs, in order, as (name, solver) pairs.

    "auto": Richardson sweeps while they converge fast; then, on the assembled matrix, a
    sparse LU where it is cheap (a work bound below ``LU_FIRST`` products: banded
    matrices such as chains), else BiCGSTAB preconditioned by symmetric Gauss–Seidel
    (``sgs``), then the LU if its fill is acceptable, then GMRES. Without an assembled
    form (``assembled=False``): Richardson, BiCGSTAB, GMRES. A solver's name forces it
    alone (Richardson then sweeps until the tolerance, the budget or a stall).
    """
    if method == "auto":
        names = (("richardson", "lu-cheap", "sgs", "lu", "gmres") if assembled
                 else ("richardson", "bicgstab", "gmres"))
    else:
        names = (method,)
    options = {"richardson": {} if method == "auto" else {"max_rate": 1.0},
               "bicgstab": {}, "sgs": {}, "lu": {}, "gmres": {"restart": restart}}
    links = []
    for name in names:
        if name == "lu-cheap":
            links.append(("lu", functools.partial(lu, max_flops=LU_FIRST)))
        else:
            links.append((name, functools.partial(SOLVERS[name], **options[name])))
    return links
# ------------------------------------------------------------------------ drivers
def scale_exponent(b, space=LOCAL):
    """e with 2^(e−1) ≤ max |b| < 2^e (0 when b = 0): :func:`solve` and :func:`solve_pair`
    run on b / 2^e, so their iterates are those of the solution divided by 2^e, exactly."""
    big = space.amax(b)
    return 0 if big == 0.0 else int(np.frexp(big)[1])


def pow2_scaled(x, e):
    """x · 2^e, bit for bit ``np.ldexp(x, e)``: a product by a power of two is exact, and
    rounds like ldexp where the result leaves the normal range (both round to nearest).
    ``np.ldexp`` takes ~17 ns per entry (168 µs at 10⁴ entries, 12 ms at 5·10⁵), a
    product ~1 ns."""
    if -1022 <= e <= 1023:
        return x * math.ldexp(1.0, e)  # 2^e, a normal double
    return np.ldexp(x, e)


def _scaled(system, x0, stop):
    """(system with b / 2^e, x0 / 2^e, e), e = :func:`scale_exponent` (b)."""
    e = scale_exponent(system.b, stop.space)
    if e == 0:
        return system, x0, 0
    b = pow2_scaled(system.b, -e)
    return (System(system.matvec, b, system.what, system.shift, system.assembled,
                   system.sweep_product, system.sweep),
            None if x0 is None else pow2_scaled(x0, -e), e)


def _links(method, restart, system):
    """The chain of ``method`` for ``system`` (whether it has an assembled form)."""
    return chain(method, restart, assembled=system.assembled is not None)


def _finish(system, first, links, stop, max_iter):
    """Continue a chain: ``first`` is the result of its first link (already run), then
    each of ``links`` from the last iterate; raises ConvergenceError if none converges.

    A solver that stalls within :meth:`StoppingRule.accepts_stall` (at round-off) ends
    the chain as converged; Richardson's early exit in "auto" (slow sweeps) is not a
    stall of that kind and hands over to the next solver.
    """
    used, total, res = [first.method], first.n_matvec, first

    def at_round_off(res):
        return res.stalled and total < max_iter and stop.accepts_stall(res.residual)

    for name, solver in links:
        if res.converged or total >= max_iter or (res.method != "richardson" and at_round_off(res)):
            break
        if name == "lu" and "lu" in used:
            continue  # the factorisation already ran
        nxt = solver(system, res.x, stop, max_iter - total)
        if not nxt.method:  # declined (no assembled form, or the LU would fill too much)
            continue
        res = nxt
        used.append(res.method)  # "bicgstab" where sgs had no assembled form in memory
        total += res.n_matvec
    method = "+".join(used)
    if not (res.converged or at_round_off(res)):
        floor = (f" (the round-off floor of this system is {stop.floor:.2g})"
                 if stop.floor > stop.tol else "")
        if res.stalled and total < max_iter:
            raise ConvergenceError(
                f"{method} on the {system.what} stalled at relative residual {res.residual:.3g} "
                f"after {total} products, above {stop.name}={stop.tol:g} and above 10x the "
                f"round-off floor {stop.floor:.2g} of this system (gamma={stop.gamma:g}); "
                f"raise {stop.name}")
        raise ConvergenceError(
            f"{method} on the {system.what} did not reach {stop.name}={stop.tol:g}{floor} within "
            f"max_iter={max_iter} products (relative residual {res.residual:.3g}); raise "
            f"max_iter or {stop.name}")
    return LinearResult(res.x, total, res.residual, True, method, ahead=res.ahead)


def _unscaled(res, e):
    x, ahead = (res.x, res.ahead) if not e else (
        pow2_scaled(res.x, e), None if res.ahead is None else pow2_scaled(res.ahead, e))
    return LinearResult(x, res.n_matvec, res.residual, res.converged, res.method, ahead=ahead)


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
    method : {"auto", "richardson", "bicgstab", "sgs", "lu", "gmres"}
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
    (_, first), *links = _links(method, restart, system)
    res = first(scaled, x0, stop, max_iter)
    if not res.method:  # a forced LU declined
        raise ConvergenceError(
            f"lu declined the {system.what}: its fill bound exceeds {FILL_CAP:g}x the entries "
            f"of the matrix (or the system has no assembled form); use method='auto'")
    return _unscaled(_finish(scaled, res, links, stop, max_iter), e)


def solve_pair(value, visit, products, v0=None, y0=None, *, stop, max_iter, method="auto",
               restart=40, ahead=False):
    """Solve the value and visitation systems of one policy together.

    With ``method="auto"`` both run Richardson sweeps in lockstep, one
    ``products(x_value, x_visit, out_value, out_visit, exact)`` call per sweep (two
    products, counted as two; a fused pass over P can serve both); a system that
    converges leaves the lockstep and the other sweeps on alone through ``products`` with
    None for the finished side; a system whose sweeps stall continues with the Krylov
    methods (its ``matvec``) on its own. With exact products each system's iterates are
    exactly those of :func:`solve` on it alone, when its ``matvec`` sums as ``products``
    does (the evaluator's single solves sweep on P_π's state rows and P_πᵀ's entries, from
    ``ROW_SWEEP_STATES`` and ``TRANSPOSED_STATES`` states on: then to round-off). So when
    the value system's result is
    "richardson" (with at least one product), the last ``products`` call with an
    ``x_value`` was exact, at its returned iterate divided by 2^:func:`scale_exponent` (b).
    Other methods solve the two systems one after the other with their ``matvec``.

    ``products`` may return approximate products when ``exact`` is False (mixed
    precision: float32 gathers of the correction from the last exact product, float64
    sums), and returns whether they were exact. The first product of each system is
    exact, and a residual met on an approximate product is certified by an exact one at
    the same iterate before it is accepted: every converged result holds the true
    (float64) residual.

    Parameters
    ----------
    value, visit : System
    products : callable ``products(x_value, x_visit, out_value, out_visit, exact)`` -> bool
        Both products at once: ``out_value = A_value x_value``, ``out_visit = A_visit x_visit``;
        a side given as None (``x`` and ``out``) is skipped. ``exact``: whether the
        products must be exact; returns whether they were.
    v0, y0 : ndarray of shape (n,), optional
        Starts of the two systems.
    stop, max_iter, method, restart
        As in :func:`solve`, for each system (``max_iter`` is each system's budget).
    ahead : bool
        Give each result its ``ahead`` (:class:`LinearResult`) where its sweeps converge.

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
    sv, v0, ev = _scaled(value, v0, stop)
    sy, y0, ey = _scaled(visit, y0, stop)
    a, b = (_Sweeps(sv, v0, stop, max_iter, ahead=ahead),
            _Sweeps(sy, y0, stop, max_iter, ahead=ahead))
    a.zero_start()
    b.zero_start()
    while a.result is None and b.result is None:
        exact = products(a.x, b.x, a.r, b.r, a.exact or b.exact)
        a.absorb(exact)
        b.absorb(exact)
    while a.result is None:
        a.absorb(products(a.x, None, a.r, None, a.exact))
    while b.result is None:
        b.absorb(products(None, b.x, None, b.r, b.exact))
    return (_unscaled(_finish(sv, a.result, _links(method, restart, sv)[1:], stop, max_iter), ev),
            _unscaled(_finish(sy, b.result, _links(method, restart, sy)[1:], stop, max_iter), ey))
