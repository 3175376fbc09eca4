r"""Batched exact evaluation: K policies, or one policy under K reward vectors, at once.

Member m (m = 0 … K−1) has a policy π_m and rewards r_m (either may be shared by all
members); its quantities are those of :func:`fastppo.evaluate` and
:func:`fastppo.visitation` on it alone:

    Ṽ_m = (I − γ P_{π_m})^{-1} (r_{m,π_m} − τ D_f(π_m)),   Q̃_m = r_m + γ P Ṽ_m,
    Ã_m = Q̃_m − Σ_a π_m Q̃_m,   J_m = ρ · Ṽ_m,   d_m = (1 − γ) (I − γ P_{π_m}ᵀ)^{-1} μ_m.

Inside, the K iterates are one (n_states, K) array, member m of state s at ``x[s, m]``
(64-byte aligned: at K = 8 a state's members are one cache line): one product (kernels
``bellman_matvec_batch`` / ``bellman_rmatvec_batch``, stem ``batched``) reads the
transition rows once for all K members, and gathers one line per successor, where K
separate calls read the rows K times. The policies (and reward vectors) stay the (K,
n_pairs) rows the caller gave; a product takes the rows of the members still running.
With one policy for all members (K reward vectors), its P_π entries π(a|s) p(s'|s, a)
are computed once per call (kernel ``shared_weights``) and each forward product is
``bellman_matvec_shared``: one weight and one gathered line per entry, no per-pair
weighting. The (n_states, K) buffers and those entries are this thread's scratch, kept
between calls (``release_scratch`` frees them): at the 50k garnet and K = 8 they are
~55 MB, fresh pages at every call otherwise.

The solve is the chain of ``fastppo._krylov.solve`` run for each member, in lockstep:
extrapolated Richardson sweeps advance all members together, one batched product and two
passes over the (n_states, K) arrays per sweep (kernels ``sweep_residual_batch``,
``sweep_update_batch``); each member keeps its own scale, residual, slow-sweep count and
stopping decision, and is frozen (its iterate copied out) the sweep it converges; its
column leaves the products at the next repack, which happens when it saves a block of
SIMD lanes (at K = 8, seven members would cost three single-lane passes more). Members
whose sweeps stall (slow-mixing MDPs: gridworlds, local successors) continue with
BiCGSTAB, also in lockstep: each member runs ``fastppo._krylov.bicgstab_steps`` (the single solver's own iteration, a generator that
asks for the products it needs), and each round serves all of them with one batched
product. GMRES, the last resort, runs per member on the single-member product. The
regularized rewards of all members come from one kernel (``regularized_reward_batch``:
a shared policy's divergence once, reverse KL's logs vectorised).

Member m's iteration is its separate call's, not its bits: the batched products sum each
member's terms in the same order (with one policy, (π p)·x for π·(p·x): its P_π
entries), but the Cython lanes fuse multiply-adds (FMA), the residual norms are summed
in another order, and the divergence terms may differ by a few ulps. Its results equal
the separate call's to ~1e-14 relative (tests/test_batched.py asserts 1e-12), its
product count within one (a stopping decision can flip only for a residual within
round-off of a threshold), on every backend.
"""
import threading

import numpy as np

from . import _krylov
from ._assembled import OMEGA, AssembledMatrix, fits_in_memory
from . import _validation as V
from ._backend import get_kernel, resolve_backend, resolve_threads
from ._evaluator import (DEFAULT_RESTART, DEFAULT_TOL, VALUE_SYSTEM, VISIT_SYSTEM, policy_rows,
                         regularizer_args)
from ._result import Result
from .evaluation import _solver_args

__all__ = ["BatchEvaluation", "evaluate_batch", "visitation_batch"]


class BatchEvaluation(Result):
    """Result of :func:`evaluate_batch`: member m's quantities at index m.

    Attributes
    ----------
    v : ndarray of shape (K, n_states)
        Regularized values Ṽ_m.
    q, adv : ndarray of shape (K, n_pairs) or (K, n_states, n_actions)
        Q̃_m and Ã_m, each member in the shape :func:`fastppo.evaluate` gives them.
    J : ndarray of shape (K,)
        ρ · Ṽ_m.
    n_matvec : ndarray of shape (K,), int
        Products with I − γP_{π_m} each member's solve used (as :func:`fastppo.evaluate`
        counts them).
    residual : ndarray of shape (K,)
        Relative residual of each member's solve.
    method : list of str
        The solvers that ran for each member ("richardson", "richardson+bicgstab", ...).
    n_passes : int
        Batched products (passes over the transition rows serving all members at once).
    backend : str
    """


# ---------------------------------------------------------------- the batched solve
def interleaved(n, k):
    """Zeros of shape (n, k), C-contiguous, starting on a 64-byte boundary: at K = 8 a
    state's K entries are one cache line, which the products gather at once."""
    return _aligned(np.zeros(n * k + 8), n, k)


def _aligned(buf, n, k):
    start = (-buf.ctypes.data % 64) // 8
    return buf[start:start + n * k].reshape(n, k)


def _interleaved_scratch(name, n, k):
    """As :func:`interleaved`, but this thread's scratch ``name`` (contents undefined)."""
    return _aligned(_scratch(name, n * k + 8), n, k)


_thread_scratch = threading.local()


def _scratch(name, size, dtype=np.float64):
    """This thread's work array ``name`` of at least ``size`` entries (its first ``size``;
    contents undefined), kept for the thread's next call: a batched solve's (n, K) buffers
    and a shared policy's weights (as many as P's entries) would otherwise be fresh pages
    at every call (a first touch of a page costs ~µs; ~55 MB at the 50k garnet). Released
    by :func:`release_scratch`."""
    arrays = getattr(_thread_scratch, "arrays", None)
    if arrays is None:
        arrays = _thread_scratch.arrays = {}
    buf = arrays.get(name)
    if buf is None or buf.shape[0] < size or buf.dtype != dtype:
        buf = arrays[name] = np.empty(size, dtype=dtype)
    return buf[:size]


def release_scratch():
    """Free the calling thread's work arrays of :func:`evaluate_batch` and
    :func:`visitation_batch` (they are kept between calls, to be reused)."""
    _thread_scratch.arrays = {}


def _columns(buf, k):
    """The first n·k entries of ``buf`` (an ``interleaved(n, K)`` array, k ≤ K) as a
    C-contiguous (n, k) array, on the same 64-byte boundary: the buffers of the K members
    serve any fewer without fresh pages (a first touch of a page costs ~µs here, and a
    solve repacks its iterates each time members freeze)."""
    n = buf.shape[0]
    return buf.reshape(-1)[:n * k].reshape(n, k)


class _Members:
    """The K members' product rows on one MDP: batched products for any subset of
    members, and each member's single product (for the solvers that run per member).

    ``pis`` (L, n_pairs) holds L = K policies, or L = 1 shared by all members; member m
    uses row ``row_of[m]``.
    """

    def __init__(self, mdp, pis, backend, n_threads):
        self.mdp, self.n_threads, self.backend = mdp, n_threads, backend
        self.pis = pis
        self.row_of = np.arange(pis.shape[0]) if pis.shape[0] > 1 else None
        used = (pis != 0.0).any(axis=0)
        # the pairs some member uses, gathered once when they are at most half (as policy_rows)
        *rows, kept = policy_rows(mdp, used.astype(np.float64))
        self.rows = tuple(rows)
        self.weights = pis if kept.shape[0] == mdp.n_pairs else np.ascontiguousarray(pis[:, used])
        self.k = {name: get_kernel(name, backend) for name in (
            "bellman_matvec_batch", "bellman_rmatvec_batch", "bellman_matvec", "bellman_rmatvec",
            "shared_weights", "bellman_matvec_shared")}
        self.shared = pis.shape[0] == 1  # one policy: P_π's entries once (shared_weights)
        self._shared_rows = None
        self._last = (None, None)  # (key, product): the last subset's product
        self._matrices = {}  # member → its assembled I − γP_π (as the Evaluator's), on first use

    def rows_of(self, members):
        """The rows of ``pis`` the given members use (int64)."""
        if self.row_of is None:
            return np.zeros(len(members), dtype=np.int64)
        return np.asarray(members, dtype=np.int64)

    def batch_product(self, transposed, members):
        """``product(x, out)`` on (n_states, len(members)) arrays for those members."""
        key = (transposed, tuple(members))
        if self._last[0] != key:
            self._last = (key, self._batch_product(transposed, members))
        return self._last[1]

    def shared_rows(self):
        """(row_indptr, p_indices, weights): P_π of the shared policy as a CSR over states
        (a state's entries π(a|s) p(s'|s, a), its pairs' rows one after another; kernel
        ``shared_weights``), computed on first use into this thread's scratch."""
        if self._shared_rows is None:
            a_indptr, p_indptr, p_indices, p_data = self.rows
            weights = _scratch("shared weights", p_indptr[-1])
            self.k["shared_weights"](p_indptr, p_data, self.weights[0], weights, self.n_threads)
            self._shared_rows = (p_indptr[a_indptr], p_indices, weights)
        return self._shared_rows

    def _batch_product(self, transposed, members):
        rows, gamma, nt = self.rows_of(members), self.mdp.gamma, self.n_threads
        if not transposed and self.shared:
            kernel, shared = self.k["bellman_matvec_shared"], self.shared_rows()
            return lambda x, out: kernel(*shared, gamma, x, out, nt)
        if not transposed:
            kernel = self.k["bellman_matvec_batch"]
            return lambda x, out: kernel(*self.rows, self.weights, rows, gamma, x, out, nt)
        kernel = self.k["bellman_rmatvec_batch"]
        # as many chunks as the Evaluator's scatter (Evaluator._buf): the same sums
        buf = np.empty((max(2, nt), self.mdp.n_states, len(members)))
        return lambda x, out: kernel(*self.rows, self.weights, rows, gamma, x, out, buf, nt)

    def policy(self, m):
        return self.pis[m if self.row_of is not None else 0]

    def assembled(self, transposed, m):
        """``assembled()`` of member m's system: its I − γP_π assembled on first use
        (``Evaluator.assembled``), for the chain's solvers after the sweeps; None where it
        would not fit in memory."""
        def view():
            if m not in self._matrices and not fits_in_memory(self.mdp):
                return None
            if m not in self._matrices:
                self._matrices[m] = AssembledMatrix(self.mdp, policy_rows(self.mdp, self.policy(m)),
                                                    self.backend)
            return self._matrices[m].view(transposed, OMEGA)
        return view

    def single_product(self, transposed, m):
        """``matvec(x, out)`` of member m alone (the single-policy kernels)."""
        rows = (*policy_rows(self.mdp, self.policy(m)), self.mdp.gamma)
        nt = self.n_threads
        if not transposed:
            kernel = self.k["bellman_matvec"]
            return lambda x, out: kernel(*rows, x, out, nt)
        kernel = self.k["bellman_rmatvec"]
        buf = np.empty((max(2, nt), self.mdp.n_states))
        return lambda x, out: kernel(*rows, x, out, buf, nt)


def _scaled(b, x0):
    """(b / 2^e, x0 / 2^e, e) for one member, as ``fastppo._krylov.solve`` scales."""
    e = _krylov.scale_exponent(b)
    if e == 0:
        return b, x0, 0
    return (_krylov.pow2_scaled(b, -e), None if x0 is None else _krylov.pow2_scaled(x0, -e), e)


def _sweeps(members, transposed, B, X0, shift, stop, max_iter, max_rate):
    """Richardson sweeps for all members in lockstep (``_krylov.richardson`` per member:
    the same extrapolation, and a member whose sweeps end unconverged above its start's
    residual hands over its start).

    The iterates are one (n, K') array of K' members (those still sweeping, and members
    frozen since the last repack: their columns are repacked away only when that saves a
    block of SIMD lanes in the products, ``_lane_blocks``; until then they ride along,
    their statistics ignored); each sweep is one batched product and two passes over the
    (n, K') arrays (kernels ``sweep_residual_batch``: r = b − A x and each member's Σ r²,
    min r, max r, Σ r; ``sweep_update_batch``: x ← x + r + shift · (mid-range or mean of
    r, as :func:`_krylov.extrapolation`)). Each member keeps its own scale, residual, slow-sweep
    count and stopping decision; its norms are summed in another order than its own
    call's (the decisions agree but for residuals within round-off of a threshold).

    B : (K, n) scaled right-hand sides; X0 : list of K scaled starts (None: zero).
    Returns (list of K LinearResult, number of batched products).
    """
    K, n = B.shape
    bnorm = [stop.norm(B[m]) for m in range(K)]
    results = [None] * K
    for m in range(K):
        if bnorm[m] == 0.0:  # as _krylov: zero start, converged at once
            results[m] = _krylov.LinearResult(np.zeros(n), 0, 0.0, True, "richardson")
    current = dict(enumerate(X0))  # each active member's iterate (None: zero)
    last, slow = np.full(K, np.inf), np.zeros(K, dtype=np.int64)
    start_residual = np.full(K, np.inf)  # each member's true residual at its start
    # residuals seen (each sweep's, and the first); a zero start's first is b, free (as
    # _krylov._Sweeps.zero_start): the product runs only for a member with a start given
    n_seen, n_products = 0, 0
    free = np.array([x0 is None for x0 in X0], dtype=np.int64)
    residual_kernel = get_kernel("sweep_residual_batch", members.backend)
    update_kernel = get_kernel("sweep_update_batch", members.backend)
    nt = members.n_threads
    # buffers of K members, reused as the active members shrink; the iterates alternate
    # between two (a repack reads the columns of the other), the residual overwrites A x
    spaces = [_interleaved_scratch(f"sweeps {i}", n, K) for i in range(4)]
    stats_space = np.empty(4 * K)
    while True:
        active = [m for m in range(K) if results[m] is None]
        if not active:
            return results, n_products
        # (re)pack the active members' columns: frozen members leave the products
        k = len(active)
        spaces[0], spaces[3] = spaces[3], spaces[0]
        x, b, r = (_columns(space, k) for space in spaces[:3])
        x[:] = 0.0
        for i, m in enumerate(active):
            if current[m] is not None:
                x[:, i] = current[m]
        b[:] = B[active].T
        stats = stats_space[:4 * k].reshape(4, k)
        # each member's estimate along 1 (_krylov.extrapolation): the mean from zero starts
        by_mean = [_krylov.mean_extrapolation(n, X0[m] is None) for m in active]
        product = members.batch_product(transposed, active)
        finished = False
        while not finished:
            if n_seen > 0 or not free[active].all():
                product(x, r)
                n_products += 1
            else:
                r[:] = 0.0
            n_seen += 1
            residual_kernel(b, r, stats, nt)
            norms = np.sqrt(stats[0])
            for i, m in enumerate(active):
                if results[m] is not None:  # frozen, its column not yet repacked away
                    continue
                residual = norms[i] / bnorm[m]
                n_matvec = n_seen - free[m]  # this member's products
                if n_seen == 1:
                    start_residual[m] = residual
                if stop.met(residual):
                    results[m] = _krylov.LinearResult(x[:, i].copy(), n_matvec, residual, True,
                                                      "richardson")
                    continue
                slow[m] = slow[m] + 1 if residual > max_rate * last[m] else 0
                last[m] = residual
                gave_up = (n_seen >= _krylov.MIN_SWEEPS and slow[m] >= 2
                           and not _krylov.within_reach(residual, start_residual[m],
                                                        n_seen, stop.target))
                if n_matvec >= max_iter or gave_up:
                    end = x[:, i].copy()
                    if _krylov.hands_over_start(residual, start_residual[m], shift,
                                                X0[m] is None, n):
                        end = np.zeros(n) if X0[m] is None else np.array(X0[m], dtype=np.float64)
                        residual = start_residual[m]
                    results[m] = _krylov.LinearResult(end, n_matvec, residual, False,
                                                      "richardson", stalled=n_matvec < max_iter)
            running = sum(results[m] is None for m in active)
            finished = running == 0 or _lane_blocks(running) < _lane_blocks(k)
            # x ← x + r + shift · (r's part along 1), per member (as _krylov._Sweeps: its
            # mean, or ½ (min r + max r)); a frozen column riding along may overflow: its
            # lane alone, unread
            with np.errstate(over="ignore", invalid="ignore"):
                offset = shift * np.where(by_mean, stats[3] / n, 0.5 * (stats[1] + stats[2]))
            update_kernel(x, r, offset, nt)
        for i, m in enumerate(active):
            current[m] = x[:, i]


def _lane_blocks(k):
    """Blocks of SIMD lanes the batched products take for k members (8, 4, then 1 at a
    time): the passes over a row's entries."""
    return k // 8 + k % 8 // 4 + k % 4


def _bicgstab_member(b, x0, stop, max_iter, max_restarts=5):
    """``_krylov.bicgstab`` on one member as a step generator: its requests are those of
    ``_krylov.bicgstab_steps`` ((vector, out): a product; (x, None): the true residual
    of x); returns the member's LinearResult."""
    bnorm, x = _krylov._start(_krylov.System(None, b), x0, stop)
    if bnorm == 0.0:
        return _krylov.LinearResult(x, 0, 0.0, True, "bicgstab")
    used, residual, converged, stalled = yield from _krylov.bicgstab_steps(
        b, x, x0 is None, stop, max_iter, max_restarts)
    return _krylov.LinearResult(x, used, residual, converged, "bicgstab", stalled)


def _lockstep(members, transposed, B, starts, stop, max_iters):
    """BiCGSTAB for the listed members together: each round, one batched product serves
    every member's request (a product, or the product of its true-residual check, whose
    relative residual is then sent back as ``_krylov.bicgstab``'s check computes it).

    ``starts``, ``max_iters``: {member: start, budget}. Returns ({member: LinearResult},
    number of batched products)."""
    steps = {m: _bicgstab_member(B[m], starts[m], stop, max_iters[m]) for m in starts}
    pending, results = {}, {}

    def advance(m, value):
        try:
            pending[m] = steps[m].send(value)
        except StopIteration as done:
            results[m] = done.value
            pending.pop(m, None)

    for m in steps:
        advance(m, None)
    n = B.shape[1]
    n_passes = 0
    spaces = [_interleaved_scratch(f"lockstep {i}", n, len(steps)) for i in range(2)]
    while pending:
        active = sorted(pending)
        x, out = (_columns(space, len(active)) for space in spaces)
        for i, m in enumerate(active):
            x[:, i] = pending[m][0]
        members.batch_product(transposed, active)(x, out)
        n_passes += 1
        for i, m in enumerate(active):
            vector, target = pending[m]
            if target is not None:
                target[:] = out[:, i]
                advance(m, None)
            else:  # the check: as _krylov.bicgstab's, on a contiguous residual
                residual = B[m] - out[:, i]
                advance(m, (stop.relative(residual, stop.norm(B[m])), 1))
    return results, n_passes


def _joined(first, then):
    """One LinearResult for ``first`` followed by ``then`` (as ``_krylov._finish`` joins
    the links of a chain)."""
    return _krylov.LinearResult(then.x, first.n_matvec + then.n_matvec, then.residual,
                                then.converged, f"{first.method}+{then.method}", stalled=then.stalled)


def _solve_members(members, transposed, B, X0, what, shift, *, stop, max_iter, method, restart):
    """Member-wise ``_krylov.solve`` of A_m x_m = b_m, with Richardson and BiCGSTAB run
    for all members in lockstep (one batched product per step) and GMRES per member.

    Returns (list of K unscaled LinearResult, number of batched products); raises
    ConvergenceError naming the first member that fails.
    """
    K = B.shape[0]
    scaled = [_scaled(B[m], None if X0 is None else X0[m]) for m in range(K)]
    Bs = np.stack([s[0] for s in scaled])
    starts = [s[1] for s in scaled]
    links = _krylov.chain(method, restart)
    n_passes = 0
    if links[0][0] == "richardson":
        max_rate = _krylov.MAX_RATE if method == "auto" else 1.0
        firsts, n_passes = _sweeps(members, transposed, Bs, starts, shift, stop, max_iter, max_rate)
        links = links[1:]
        if links and links[0][0] == "bicgstab":  # as _krylov._finish: from the sweeps' iterate
            todo = [m for m in range(K) if not firsts[m].converged and firsts[m].n_matvec < max_iter]
            more, passes = _lockstep(members, transposed, Bs, {m: firsts[m].x for m in todo}, stop,
                                     {m: max_iter - firsts[m].n_matvec for m in todo})
            n_passes += passes
            for m in todo:
                firsts[m] = _joined(firsts[m], more[m])
            links = links[1:]
    elif links[0][0] == "bicgstab":
        firsts, n_passes = _lockstep(members, transposed, Bs, dict(enumerate(starts)), stop,
                                     dict.fromkeys(range(K), max_iter))
        firsts = [firsts[m] for m in range(K)]
        links = links[1:]
    else:
        firsts = None
    results = []
    for m in range(K):
        system = _krylov.System(members.single_product(transposed, m), Bs[m], what, shift,
                                assembled=members.assembled(transposed, m))
        try:
            if firsts is not None:
                res = _krylov._finish(system, firsts[m], links, stop, max_iter)
            else:
                res = _krylov.solve(system, starts[m], stop=stop, max_iter=max_iter,
                                    method=method, restart=restart)
        except _krylov.ConvergenceError as exc:
            raise _krylov.ConvergenceError(f"member {m}: {exc}") from None
        results.append(_krylov._unscaled(res, scaled[m][2]))
    return results, n_passes


# ------------------------------------------------------------------- public API
def _members(mdp, pi, batch, name_batch):
    """(pis (K, n_pairs) or (1, n_pairs), like): the policies, and the array whose shape
    each member's per-pair tables take (None: the MDP's table shape, for sigma)."""
    if batch is not None and V.is_single_policy(mdp, pi):
        flat = V.as_policy(mdp, pi)
        return flat[None, :], None if V.is_sigma(mdp, pi) else np.asarray(pi)
    pis = V.policy_batch(mdp, pi)
    if batch is not None and pis.shape[0] != batch:
        raise ValueError(f"pi holds {pis.shape[0]} policies but {name_batch} holds {batch} "
                         f"members: give K of each, or one policy")
    x = np.asarray(pi)
    sigma = x.ndim == 2 and x.shape[1] == mdp.n_states and np.issubdtype(x.dtype, np.integer)
    return pis, None if sigma else x[0]


def _table_shape(mdp, like):
    return mdp.to_table(np.empty(mdp.n_pairs), like=like).shape


def evaluate_batch(mdp, pi, reg=None, *, r=None, v0=None, tol=DEFAULT_TOL, max_iter=None,
                   restart=DEFAULT_RESTART, method="auto", backend=None, n_threads=None):
    """Regularized values Ṽ, Q̃, Ã of K policies, or of one policy under K reward vectors.

    Equal, member by member, to K calls of :func:`fastppo.evaluate` to round-off (1e-12
    relative; not bit for bit: module docstring), with one pass over the transitions per
    Richardson sweep for all K members.

    Parameters
    ----------
    mdp : MDP
    pi : array_like of shape (K, n_pairs) or (K, n_states, n_actions), or int array of shape (K, n_states)
        K policies (probabilities; or per row ``sigma``, action labels). With ``r``
        given, ``pi`` may also be one policy in any shape :func:`fastppo.evaluate`
        takes, shared by all members.
    reg : Regularizer, optional
        τ·D_f(π ‖ π_ref), the same for every member; None for the plain MDP.
    r : array_like of shape (K, n_pairs) or (K, n_states, n_actions), optional
        Member m's rewards r_m (member m is then ``mdp.with_rewards(r[m])``); the MDP's
        own rewards for every member when None.
    v0 : array_like of shape (K, n_states), optional
        Warm starts.
    tol, max_iter, restart, method, backend, n_threads
        As in :func:`fastppo.evaluate`, for each member.

    Returns
    -------
    BatchEvaluation
        ``v`` (K, n_states); ``q``, ``adv`` (K, n_pairs) or (K, n_states, n_actions);
        ``J`` (K,); ``n_matvec``, ``residual``, ``method`` per member; ``n_passes``.

    Raises
    ------
    ConvergenceError
        If a member's solve does not reach ``tol`` within ``max_iter`` products (the
        message names the member).

    Examples
    --------
    >>> import numpy as np, fastppo
    >>> mdp = fastppo.garnet(100, 4, 3, gamma=0.9, seed=0)
    >>> rng = np.random.default_rng(0)
    >>> pis = np.stack([fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs)) for _ in range(3)])
    >>> ev = fastppo.evaluate_batch(mdp, pis)
    >>> ev.v.shape, ev.J.shape
    ((3, 100), (3,))
    >>> bool(np.allclose(ev.v[1], fastppo.evaluate(mdp, pis[1]).v, rtol=1e-12, atol=0))
    True
    """
    V.check_discounted(mdp, "evaluate_batch")
    V.check_float64_storage(mdp, "evaluate_batch")
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    opts = _solver_args(tol, max_iter, restart, method)
    rewards = None if r is None else V.reward_batch(mdp, r)
    pis, like = _members(mdp, pi, None if rewards is None else rewards.shape[0], "r")
    K = pis.shape[0] if rewards is None else rewards.shape[0]
    v0 = V.state_batch(v0, K, mdp.n_states, "v0")
    code, alpha, tau, ref = regularizer_args(mdp, reg)
    if ref is None:
        ref = mdp.uniform_policy()
    members = _Members(mdp, pis, which, nt)
    C = _regularized_rewards(mdp, pis, rewards, ref, code, alpha, tau, which, nt)
    gamma = mdp.gamma
    results, n_passes = _solve_members(
        members, False, C, v0, VALUE_SYSTEM, gamma / (1.0 - gamma),
        stop=_krylov.StoppingRule(opts["tol"]), max_iter=opts["max_iter"],
        method=opts["method"], restart=opts["restart"])
    v = np.stack([res.x for res in results])
    # Q̃ = r + γ P Ṽ for all members in one pass; Ã per member
    vt = _interleaved_scratch("values", mdp.n_states, K)
    vt[:] = v.T
    r_rows, r_of = ((mdp.r[None], np.zeros(K, dtype=np.int64)) if rewards is None
                    else (rewards, np.arange(K, dtype=np.int64)))
    q = np.empty((K, mdp.n_pairs))
    get_kernel("q_values_batch", which)(mdp.p_indptr, mdp.p_indices, mdp.p_data, r_rows, r_of,
                                        gamma, vt, q, nt)
    adv = np.empty_like(q)
    adv_kernel = get_kernel("advantages", which)
    for m in range(K):
        adv_kernel(mdp.a_indptr, members.policy(m), q[m], adv[m], nt)
    shape = (K, *_table_shape(mdp, like))
    return BatchEvaluation(
        v=v, q=q.reshape(shape), adv=adv.reshape(shape),
        J=np.array([_krylov.dot(mdp.rho, v[m]) for m in range(K)]),
        n_matvec=np.array([res.n_matvec for res in results]),
        residual=np.array([res.residual for res in results]),
        method=[res.method for res in results], n_passes=n_passes, backend=which)


def _regularized_rewards(mdp, pis, rewards, ref, code, alpha, tau, which, nt):
    """c_m = r_{m,π_m} − τ D_f(π_m ‖ π_ref), one row per member (K, n_states): the
    ``regularized_reward_batch`` kernel (each member's ``regularized_reward`` to a few
    ulps; with one policy for all members, its divergence terms computed once)."""
    K = pis.shape[0] if rewards is None else rewards.shape[0]
    r_rows, r_of = ((mdp.r[None], np.zeros(K, dtype=np.int64)) if rewards is None
                    else (rewards, np.arange(K, dtype=np.int64)))
    pi_of = np.arange(K, dtype=np.int64) if pis.shape[0] > 1 else np.zeros(K, dtype=np.int64)
    C = np.empty((K, mdp.n_states))
    get_kernel("regularized_reward_batch", which)(mdp.a_indptr, r_rows, r_of, pis, pi_of, ref, code,
                                                  alpha, tau, C, np.empty(mdp.n_pairs), nt)
    for m in range(K):
        V.check_finite(C[m], f"r_pi - tau * D_f(pi) of member {m}")
    return C


def visitation_batch(mdp, pi, mu=None, *, d0=None, tol=DEFAULT_TOL, max_iter=None,
                     restart=DEFAULT_RESTART, method="auto", backend=None, n_threads=None,
                     full_output=False):
    """Visitations d_m = (1−γ) (I − γP_{π_m}ᵀ)^{-1} μ_m of K policies (or one policy and
    K start distributions), at once.

    Equal, member by member, to K calls of :func:`fastppo.visitation` (to round-off).

    Parameters
    ----------
    mdp : MDP
    pi : array_like of shape (K, n_pairs) or (K, n_states, n_actions), or int array of shape (K, n_states)
        K policies, as in :func:`evaluate_batch`; one policy (any shape
        :func:`fastppo.visitation` takes) when ``mu`` holds K distributions.
    mu : array_like of shape (n_states,) or (K, n_states), optional
        Start distribution, shared or one per member; ``mdp.rho`` by default.
    d0 : array_like of shape (K, n_states), optional
        Warm starts (any positive multiple of a guess of d_m).
    tol, max_iter, restart, method, backend, n_threads
        As in :func:`fastppo.visitation`, for each member.
    full_output : bool, default False
        Return a Result with ``d``, ``n_matvec`` (K,), ``residual`` (K,), ``method``
        (list), ``n_passes``, ``backend``.

    Returns
    -------
    d : ndarray of shape (K, n_states)
        Each row non-negative, summing to 1.
    """
    V.check_discounted(mdp, "visitation_batch")
    V.check_float64_storage(mdp, "visitation_batch")
    which, nt = resolve_backend(backend), resolve_threads(n_threads)
    opts = _solver_args(tol, max_iter, restart, method)
    mus = None if mu is None or np.ndim(mu) != 2 else np.asarray(mu)
    pis, _ = _members(mdp, pi, None if mus is None else mus.shape[0], "mu")
    K = pis.shape[0] if mus is None else mus.shape[0]
    mu = (np.broadcast_to(mdp.rho, (K, mdp.n_states)) if mu is None
          else V.distribution_batch(mu, K, mdp.n_states, "mu"))
    d0 = V.state_batch(d0, K, mdp.n_states, "d0")
    scale = 1.0 - mdp.gamma
    starts = []
    for m in range(K):  # as Evaluator._visit_system: a start of the solution's mass
        if d0 is None:
            starts.append(mu[m] / scale)
        else:
            total = d0[m].sum()
            starts.append(d0[m] / (scale * total) if total > 0 else None)
    members = _Members(mdp, pis, which, nt)
    results, n_passes = _solve_members(
        members, True, np.ascontiguousarray(mu), starts, VISIT_SYSTEM, 0.0,
        stop=_krylov.StoppingRule(opts["tol"]), max_iter=opts["max_iter"],
        method=opts["method"], restart=opts["restart"])
    d = np.stack([scale * res.x for res in results])
    for m in range(K):  # as Evaluator._visitation
        np.maximum(d[m], 0.0, out=d[m])  # clears round-off negatives only
        d[m] /= d[m].sum()
    if not full_output:
        return d
    return Result(d=d, n_matvec=np.array([res.n_matvec for res in results]),
                  residual=np.array([res.residual for res in results]),
                  method=[res.method for res in results], n_passes=n_passes, backend=which)
