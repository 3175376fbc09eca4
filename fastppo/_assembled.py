r"""A = I − γP_π assembled once per policy, for the solvers that need the matrix.

The matrix-free products (``bellman_matvec``) read every successor entry of every pair
the policy uses; once Richardson's sweeps stall (slow-mixing MDPs: hundreds of products
to come) it pays to assemble A once, with the duplicate successors of a state merged
(O(nnz) of the policy's rows, a dense marker of n_states, never an S × S array), and to
run a preconditioned method on it. One assembly serves both systems of a policy: the
value system A v = c and the visitation system Aᵀ y = μ (:meth:`AssembledMatrix.view`).

Storage: the diagonal D apart; each row's off-diagonal entries with the strictly lower
part L (j < i) first and the strictly upper part U after (the kernels
``kernels/*/assembled`` document the layout), so Gauss–Seidel sweeps need no sorting.
"""
import functools
import os
import weakref

import numpy as np
import scipy.sparse as sp
import threadpoolctl
from scipy.sparse.csgraph import reverse_cuthill_mckee
from scipy.linalg import lapack
from scipy.sparse.linalg import splu

from ._backend import get_kernel
from ._memory import scratch

__all__ = ["AssembledMatrix", "SplitView", "OMEGA", "fits_in_memory", "near_parts"]

OMEGA = 1.0  # SSOR relaxation of the preconditioner (ω > 1 breaks down on advective MDPs)
FILL_CAP = 20.0  # LU: at most this many times the entries of A in L + U
# a deterministic policy's matrix is patched from the last one when at most this share of
# the states changed (policy iteration's later steps): their rows made anew, the others
# copied in blocks (one sequential pass instead of reads of P's rows)
PATCH_SHARE = 0.25
# LAPACK's band LU (dgbtrf, blocked BLAS-3 on the band) against a product with A: one
# entry of a product costs ~1 ns, the band LU ~19 flops per ns on one core (the local
# garnet at 50k: 2 n β² = 3.1e9 flops in 0.166 s against 3.28 ms per product of 3.3e6
# entries, idle machine)
BAND_FLOPS_PER_ENTRY = 19.0

# an assembly may use at most this share of the memory the system has available
MEMORY_SHARE = 0.5


def available_memory():
    """Bytes the system can still give this process without swapping (Linux: MemAvailable;
    elsewhere free pages; inf when unknown)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return float("inf")


def assembly_bytes(mdp):
    """An upper bound of the bytes an assembly takes: per successor entry of P an int32
    column and an int64 position while merging and a float64 value, per state 40."""
    return 20 * int(mdp.p_indptr[-1]) + 40 * mdp.n_states


def fits_in_memory(mdp):
    """Whether I − γP_π may be assembled: :func:`assembly_bytes` within ``MEMORY_SHARE``
    of :func:`available_memory`. At 10⁷ states and 10⁹ successor entries it takes ~20 GB:
    past the 24 GiB of a box that holds the float32 MDP (10 GiB), so the solvers go on
    matrix-free (BiCGSTAB) instead of failing for memory."""
    return assembly_bytes(mdp) <= MEMORY_SHARE * available_memory()


# the sweeps' ``near`` bits (kernels/*/assembled)
NEAR_LOWER, NEAR_UPPER = 1, 2
NEAR_SAMPLE = 2048  # rows near_parts looks at


def near_parts(indptr, mid, indices):
    """The sweep kernels' ``near`` bits for a pattern (``indptr`` (n + 1,), ``mid`` (n,),
    ``indices``): NEAR_LOWER where more than half the rows with a lower part end it with
    column i − 1, NEAR_UPPER where more than half of those with an upper part start it with
    i + 1, among ``NEAR_SAMPLE`` rows evenly spaced (all rows up to that many; every row at
    50k took ~1 ms, once per policy step of ``solve``). A sweep with the bit takes the row
    it solved just before from a register where it is there (the same sums): gridworlds
    and queues (99 % of rows), the SGS operator ~0.6× (grid) and ~0.8× (queue2d) the time
    at 50k (cython). Without it, the plain loop: on the pendulum grid (3 % of rows) the
    check cost its SGS operator 10–45 %."""
    n = mid.shape[0]
    rows = np.arange(0, n, max(1, n // NEAR_SAMPLE))
    start, split, stop = indptr[rows], mid[rows], indptr[rows + 1]
    bits = 0
    lower = split > start
    if 2 * np.count_nonzero(indices[split[lower] - 1] == rows[lower] - 1) > np.count_nonzero(lower):
        bits |= NEAR_LOWER
    upper = stop > split
    if 2 * np.count_nonzero(indices[split[upper]] == rows[upper] + 1) > np.count_nonzero(upper):
        bits |= NEAR_UPPER
    return bits


KERNELS = ("merge_pattern", "assemble_values", "assemble_deterministic", "patch_deterministic",
           "distinct_pairs_bound",
           "split_matvec",
           "triangular_solve", "sgs_operator", "sgs_start", "sgs_bicgstab")


class AssembledMatrix:
    """A = I − γP_π of one policy (duplicate successors merged).

    The structure comes from the MDP's cached pattern (``Transitions.merged_pattern``)
    when the policy's products read all pairs; for the compact rows of a sparse policy it
    is merged afresh (O(nnz) of those rows). The values are one pass over the rows.

    Parameters
    ----------
    mdp : MDP
    rows : tuple or None
        ``(a_indptr, p_indptr, p_indices, p_data, pi)`` of the pairs the policy uses (as
        the evaluator holds them: all pairs, or the compact rows of a sparse policy).
        None with ``pairs``.
    backend : str
        Resolved backend name (the kernels are serial at any thread count).
    workspace : dict, optional
        Scratch kept by the owner across policies (an evaluator's): the band LU reuses its
        buffer (hundreds of MB on the local garnet at 50k, where mapping fresh pages cost
        more than the factorisation), which invalidates the previous matrix's factor.
    pairs : tuple, optional
        ``(pairs, pi)`` or ``(pairs, pi, weights)`` of a deterministic policy: state s's
        only pair ``pairs[s]`` (int64, n_states), π flat (n_pairs,), ``pi[pairs]`` if
        given (else gathered here; None: the same). A is then assembled straight from P's rows
        in one pass (``assemble_deterministic``: the same matrix, bit for bit, as from
        the policy's gathered rows, without the gather).
    base : AssembledMatrix, optional
        With ``pairs``: the matrix of an earlier deterministic policy on the same MDP. When
        at most ``PATCH_SHARE`` of the states changed pair (or π), their rows are made anew
        and the others copied from it (``patch_deterministic``: the same bits).

    Attributes
    ----------
    nnz : int
        Stored off-diagonal entries (plus ``n_states`` diagonal ones).
    """

    def __init__(self, mdp, rows, backend, workspace=None, pairs=None, base=None):
        self._workspace = workspace
        n = mdp.n_states
        self._k = {name: get_kernel(name, backend) for name in KERNELS}
        T = mdp._transitions
        # the fill-reducing order of the pattern of all pairs serves every policy (a
        # policy's pattern is a subset of it); cached with that pattern
        self._shared = T.pattern_cache(backend)
        self._all_pairs = lambda: T.merged_pattern(mdp.a_indptr, backend)
        self.n_states = n
        self._lu = None
        self.fill = None  # (entries the factorisation stores) / (entries of A), once factorised
        self.pairs = self.weights = None  # a deterministic policy's pairs and π on them
        if pairs is not None:
            self._assemble_deterministic(mdp, *pairs, base=base)
            return
        a_indptr, p_indptr, p_indices, p_data, pi = rows
        if p_indptr is T.p_indptr:
            self.indptr, self.mid, self.indices, pos, self.nnz = T.merged_pattern(a_indptr, backend)
            self._cache = self._shared  # the permuted structure depends on the pattern alone
        else:
            self._cache = {}
            self.indptr, self.mid = np.empty(n + 1, dtype=np.int64), np.empty(n, dtype=np.int64)
            indices, pos = np.empty(p_indices.shape[0], dtype=np.int32), np.empty(p_indices.shape[0], dtype=np.int64)
            self.nnz = int(self._k["merge_pattern"](a_indptr, p_indptr, p_indices, self.indptr,
                                                    self.mid, indices, pos,
                                                    np.empty(n, dtype=np.int64), 1))
            self.indices = indices[:self.nnz]
        self.data, self.diag = np.empty(self.nnz + n), np.empty(n)
        self._k["assemble_values"](a_indptr, p_indptr, p_data, pos, pi, mdp.gamma, self.data,
                                   self.diag, 1)
        self.dinv = 1.0 / self.diag  # A is strictly diagonally dominant: diag ≥ 1 − γ > 0
        self._parts = self.indptr, self.mid, self.indices, self.data

    def _assemble_deterministic(self, mdp, pairs, pi, weights=None, base=None):
        T, n = mdp._transitions, mdp.n_states
        self._cache = {}
        self.pairs, self.weights = pairs, pi[pairs] if weights is None else weights
        changed = None
        if base is not None and base.pairs is not None and base.n_states == n:
            changed = np.flatnonzero((pairs != base.pairs) | (self.weights != base.weights))
        patch = PATCH_SHARE and changed is not None and changed.shape[0] <= PATCH_SHARE * n
        if patch:
            # the old rows, the changed ones made anew: a bound on nnz from them alone (no
            # gather of every state's row length)
            size = base.nnz + int(T.row_lengths[pairs[changed]].sum())
        else:
            size = int(T.row_lengths[pairs].sum())  # the policy's entries: a bound on nnz
        self.indptr, self.mid = np.empty(n + 1, dtype=np.int64), np.empty(n, dtype=np.int64)
        indices, data = np.empty(size, dtype=np.int32), np.empty(size + n)
        self.diag = np.empty(n)
        out = (self.indptr, self.mid, indices, data, self.diag, np.empty(n, dtype=np.int64), 1)
        if patch:
            self.nnz = int(self._k["patch_deterministic"](
                T.p_indptr, T.p_indices, T.p_data, pairs, pi, mdp.gamma, changed, base.indptr,
                base.mid, base.indices, base.data, base.diag, *out))
        else:
            self.nnz = int(self._k["assemble_deterministic"](
                T.p_indptr, T.p_indices, T.p_data, pairs, pi, mdp.gamma, *out))
        self.indices, self.data = indices[:self.nnz], data[:self.nnz + n]
        self.dinv = 1.0 / self.diag
        self._parts = self.indptr, self.mid, self.indices, self.data

    @property
    def near(self):
        """The sweeps' ``near`` bits (:func:`near_parts`), once per pattern."""
        if "near" not in self._cache:
            self._cache["near"] = near_parts(self.indptr, self.mid, self.indices)
        return self._cache["near"]

    @property
    def envelope(self):
        """(perm, size, flops, below, above) of the pattern of all pairs (:func:`envelope`), which
        contains every policy's: an upper bound for this matrix, computed once per MDP."""
        if "envelope" not in self._shared:
            indptr, _, indices, _, nnz = self._all_pairs()
            self._shared["envelope"] = envelope(indptr, indices, nnz)
        return self._shared["envelope"]

    @property
    def flops_floor(self):
        """A lower bound on ``envelope``'s flops in every order (:func:`flops_floor`),
        computed once per MDP in two passes over the pattern: the LU work bound declines
        on it without the ordering (a second on a 50k-state garnet)."""
        if "flops_floor" not in self._shared:
            indptr, _, indices, _, _ = self._all_pairs()
            self._shared["flops_floor"] = flops_floor(indptr, indices,
                                                      self._k["distinct_pairs_bound"])
        return self._shared["flops_floor"]

    def csr(self):
        """A as a scipy CSR array (a copy)."""
        n = self.n_states
        rows = np.repeat(np.arange(n), np.diff(self.indptr))
        return sp.csr_array((np.concatenate([self.data[:self.nnz], self.diag]),
                             (np.concatenate([rows, np.arange(n)]),
                              np.concatenate([self.indices, np.arange(n)]))), shape=(n, n))

    def lu(self, max_flops=np.inf):
        """A factorisation of A in the band-reducing order of :func:`envelope`, or None:
        ``solve(r, transpose)`` → A⁻¹ r (or A⁻ᵀ r) in that order. Cached; one serves A and Aᵀ.

        A band LU (LAPACK ``dgbtrf``) when the band of the order (``below`` + ``above``,
        :func:`envelope`) fits in ``FILL_CAP`` × (entries of A), else SuperLU's (A is
        strictly diagonally dominant: no pivoting is needed, so its fill stays in the
        envelope; declined when the envelope holds more than ``FILL_CAP`` × the entries).
        Declined when the work bound exceeds ``max_flops`` (in units of one entry of a
        product: the band LU's flops count 1 / ``BAND_FLOPS_PER_ENTRY``), and before the
        ordering is computed when the floor of the envelope's work (:func:`flops_floor`)
        does (on garnets the ordering alone takes seconds)."""
        n, entries = self.n_states, self.nnz + self.n_states
        if self.flops_floor > max_flops:
            return None  # declined before the ordering is computed
        perm, size, flops, below, above = self.envelope
        if self._lu is not None:
            return self._lu
        if (2 * below + above + 1) * n <= FILL_CAP * entries:
            # the band LU's flops ≤ 2 n below (below + above) with pivoting, 2 n β² with
            # β = max(below, above) ≥ i − first(i): a bound of the same kind as the floor's
            if 2.0 * n * max(below, above) ** 2 / BAND_FLOPS_PER_ENTRY > max_flops:
                return None
            self._lu = self._band_lu(perm, below, above)
            self.fill = (2 * below + above + 1) * n / entries
        else:
            if size > FILL_CAP * entries or flops > max_flops:
                return None
            self._lu = self._sparse_lu(perm)
        return self._lu

    def _band_lu(self, perm, below, above):
        """LAPACK's band LU of A[perm][:, perm] (dgbtrf) and its solve (dgbtrs)."""
        if "band" not in self._cache:
            # the slot of each value [off-diagonal entries, diagonal] in the band storage
            # (Fortran order): entry (i, j) of the permuted matrix at ab[below + above + i − j, j]
            n = self.n_states
            inv = np.empty(n, dtype=np.int64)
            inv[perm] = np.arange(n)
            rows = inv[np.concatenate([np.repeat(np.arange(n), np.diff(self.indptr)),
                                       np.arange(n)])]
            cols = inv[np.concatenate([self.indices, np.arange(n)])]
            self._cache["band"] = (below + above + rows - cols) + cols * (2 * below + above + 1)
        slots = self._cache["band"]
        ab = self._band_buffer((2 * below + above + 1, self.n_states))
        flat = ab.reshape(-1, order="F")  # a view: ab is Fortran-ordered
        flat[slots[:self.nnz]] = self.data[:self.nnz]
        flat[slots[self.nnz:]] = self.diag
        with _one_blas_thread():
            lu, piv, info = lapack.dgbtrf(ab, below, above, overwrite_ab=1)
        if info != 0:  # A is strictly diagonally dominant: nonsingular
            raise np.linalg.LinAlgError(f"dgbtrf: U[{info - 1}, {info - 1}] is zero")

        def solve(r, transpose):
            with _one_blas_thread():
                x, _ = lapack.dgbtrs(lu, below, above, r, piv, trans=int(transpose))
            return x

        return solve

    def _band_buffer(self, shape):
        """Zeros of ``shape`` (Fortran order): the workspace's buffer when it has one of that
        shape (the matrix whose factor it holds loses it), else a scratch buffer, kept
        between calls once the factor in it is gone (``fastppo._memory.scratch``: a fresh
        180 MB of zeros for the local garnet at 50k made its visitation take 222–534 ms,
        median 462, against 219–231 ms with a kept one, side by side; RESULTS.md, issue 17,
        twelfth session)."""
        held = None if self._workspace is None else self._workspace.get("band")
        if held is not None and held[0].shape == shape:
            ab, owner = held[0], held[1]()
            if owner is not None:
                owner._lu = None
        else:
            ab = scratch(shape[0] * shape[1]).reshape(shape, order="F")
        ab.fill(0.0)
        if self._workspace is not None:
            self._workspace["band"] = (ab, weakref.ref(self))
        return ab

    def _sparse_lu(self, perm):
        """SuperLU's LU of A[perm][:, perm] (no pivoting, natural order) and its solve."""
        order, indptr, indices = self._csc(perm)
        values = np.concatenate([self.data[:self.nnz], self.diag])[order]
        A = sp.csc_array((values, indices, indptr), shape=(self.n_states,) * 2)
        factor = splu(A, permc_spec="NATURAL", diag_pivot_thresh=0.0,
                      options=dict(SymmetricMode=True))
        self.fill = (factor.L.nnz + factor.U.nnz - self.n_states) / (self.nnz + self.n_states)

        def solve(r, transpose):
            return factor.solve(r, trans="T" if transpose else "N")

        return solve

    def _csc(self, perm):
        """``_permuted_csc(perm)``, cached."""
        if "csc" not in self._cache:
            self._cache["csc"] = self._permuted_csc(perm)
        return self._cache["csc"]

    def _permuted_csc(self, perm):
        """The CSC structure of A[perm][:, perm]: (order, indptr, indices), ``order`` taking
        the values [off-diagonal slots, diagonal] to CSC order."""
        n = self.n_states
        inv = np.empty(n, dtype=np.int64)
        inv[perm] = np.arange(n)
        rows = np.concatenate([np.repeat(np.arange(n), np.diff(self.indptr)), np.arange(n)])
        cols = np.concatenate([self.indices, np.arange(n)])
        r, c = inv[rows], inv[cols]
        order = np.lexsort((r, c))
        indptr = np.zeros(n + 1, dtype=np.int64)
        np.cumsum(np.bincount(c, minlength=n), out=indptr[1:])
        return order, indptr, r[order].astype(np.int32)

    def view(self, transpose=False, omega=1.0):
        """The system matrix B = A (or Aᵀ for ``transpose``) as a :class:`SplitView` with
        SSOR relaxation ``omega``."""
        return SplitView(self, int(bool(transpose)), omega)


class SplitView:
    """B = A or Aᵀ = D + L_B + U_B, with what the preconditioned solvers need.

    ``fastppo._krylov.sgs`` solves B x = b as Â y = b̂ with the symmetric SOR split
    Â = E (E + L_B)⁻¹ B (E + U_B)⁻¹, E = D/ω, b̂ = E (E + L_B)⁻¹ b and x = (E + U_B)⁻¹ y
    (ω = 1: symmetric Gauss–Seidel; Â is similar to B M⁻¹ for the SSOR preconditioner
    M = (E + L_B) E⁻¹ (E + U_B)). Every method writes into ``out`` (ndarray of shape
    (n_states,)).

    Parameters
    ----------
    matrix : AssembledMatrix
    transpose : int
        1 for Aᵀ.
    omega : float in (0, 2)
        Relaxation of the sweeps.
    """

    def __init__(self, matrix, transpose, omega=1.0):
        self.m, self.transpose, self.omega = matrix, transpose, omega
        self._t = np.empty(matrix.n_states)
        if omega == 1.0:  # E = D: the matrix's own arrays (no copies), the same bits
            self._e, self._einv = matrix.diag, matrix.dinv
            self._kdiag = np.negative(matrix.diag)  # D − 2D, exactly
            return
        self._e = matrix.diag / omega  # E
        self._einv = omega * matrix.dinv
        self._kdiag = matrix.diag - 2.0 * self._e  # K = D − 2E

    def matvec(self, x, out):
        """out = B x."""
        m = self.m
        m._k["split_matvec"](*m._parts, m.diag, x, out, 0, self.transpose, 1)

    def rhs(self, b, out):
        """out = b̂ = E (E + L_B)⁻¹ b."""
        m = self.m
        m._k["triangular_solve"](*m._parts, self._einv, b, out, 1, self.transpose, m.near, 1)
        out *= self._e

    def operator(self, y, out):
        """out = Â y (one backward and one forward sweep)."""
        m = self.m
        m._k["sgs_operator"](*m._parts, self._e, self._einv, self._kdiag, y, self._t, out,
                             self.transpose, m.near, 1)

    def operator_at(self, y, x, out):
        """out = Â y for y = (E + U_B) x (``to_y``'s), given x: the product without its
        backward sweep, E (x + (E + L_B)⁻¹ (y + K x)) (the same formula as ``operator``,
        x in place of (E + U_B)⁻¹ y: equal but for rounding)."""
        m = self.m
        np.multiply(self._kdiag, x, out=out)
        out += y
        m._k["triangular_solve"](*m._parts, self._einv, out, out, 1, self.transpose, m.near, 1)
        out += x
        out *= self._e

    def start(self, b, x, b_hat, y, out):
        """The warm start from x: b_hat = b̂ (``rhs``), y = (E + U_B) x (``to_y``) and out =
        Â y (``operator_at``), the same bits, in one pass over A (``sgs_start``)."""
        m = self.m
        m._k["sgs_start"](*m._parts, self._e, self._einv, self._kdiag, b, x, b_hat, y, out,
                          self.transpose, m.near, 1)

    def bicgstab_steps(self, y, r, r_hat, p, v, s, t, snap, state, threshold, blowup,
                       max_products):
        """BiCGSTAB steps on Â y = b̂, compiled (the ``sgs_bicgstab`` kernel: arrays of
        shape (n_states,) updated in place, ``state`` = [ρ, α, ω, relative recursive
        residual, its lowest, ‖b̂‖, status]); returns the products with Â."""
        m = self.m
        return int(m._k["sgs_bicgstab"](*m._parts, self._e, self._einv, self._kdiag,
                                        self.transpose, m.near, y, r, r_hat, p, v, s, t,
                                        self._t, snap, state, threshold, blowup, max_products,
                                        1))

    def to_x(self, y, out):
        """out = x = (E + U_B)⁻¹ y."""
        m = self.m
        m._k["triangular_solve"](*m._parts, self._einv, y, out, 2, self.transpose, m.near, 1)

    def to_y(self, x, out):
        """out = y = (E + U_B) x."""
        m = self.m
        m._k["split_matvec"](*m._parts, self._e, x, out, 2, self.transpose, 1)

    def factor(self, max_flops=np.inf):
        """``solve(r)`` → B⁻¹ r by the LU of A (:meth:`AssembledMatrix.lu`), or None."""
        lu = self.m.lu(max_flops)
        if lu is None:
            return None
        perm = self.m.envelope[0]
        transpose = bool(self.transpose)

        def solve(r):
            x = np.empty_like(r)
            x[perm] = lu(r[perm], transpose)
            return x

        return solve


@functools.cache
def _blas_controller():
    return threadpoolctl.ThreadpoolController()


def _one_blas_thread():
    """A context with BLAS on one thread: OpenBLAS's threads, busy-waiting in the band
    LU's many small BLAS calls, made ``dgbtrf`` 45× slower on this 2-core machine while
    other processes ran (11.3 s against 0.25 s at 50k), and gained nothing when it was idle."""
    return _blas_controller().limit(limits=1, user_api="blas")


def envelope(indptr, indices, nnz):
    """(perm, size, flops, below, above) of a pattern in a band-reducing order: the
    permutation, the entries of the symmetric envelope {(i, j): first(i) ≤ j ≤ i or the
    same with i, j swapped}, first(i) the leftmost column of row i of A + Aᵀ, Σᵢ (i −
    first(i))², the work of an LU in that order, and the band: the largest i − j (below)
    and j − i (above) of an entry (i, j). An LU without pivoting fills only the envelope:
    its size bounds the memory of :meth:`AssembledMatrix.lu` before anything is
    factorised.

    The order is reverse Cuthill–McKee's, or :func:`smoothed_orders`' refinement of it
    when that has a narrower band that LAPACK's band LU can hold (``FILL_CAP``): on the
    local garnet (successors within ±50 on a ring) RCM's band is 177 on either side,
    the refinement's ~105 (the best is 100), a third of the band LU's work.

    Parameters
    ----------
    indptr : ndarray of shape (n + 1,), indices : ndarray of shape (nnz,)
        The off-diagonal pattern (CSR, any order within rows).
    nnz : int
    """
    n = indptr.shape[0] - 1
    rows = np.repeat(np.arange(n), np.diff(indptr))
    cols = indices[:nnz]
    G = sp.csr_array((np.ones(nnz, dtype=np.int8), cols, indptr), shape=(n, n))
    perm = reverse_cuthill_mckee(G, symmetric_mode=False).astype(np.int64)
    best, width = perm, _band(perm, rows, cols)
    for order in smoothed_orders(G, perm) if nnz else ():
        w = _band(order, rows, cols)
        # narrower, and held by the band LU (else SuperLU fills RCM's envelope)
        if w < width and (3 * w + 1) * n <= FILL_CAP * (nnz + n):
            best, width = order, w
    perm = best
    inv = np.empty(n, dtype=np.int64)
    inv[perm] = np.arange(n)
    r, c = inv[rows], inv[cols]
    first = np.arange(n)
    np.minimum.at(first, np.maximum(r, c), np.minimum(r, c))
    band = np.arange(n) - first
    below = int((r - c).max(initial=0))
    above = int((c - r).max(initial=0))
    return (perm, int(2 * band.sum() + n), float(np.dot(band, band.astype(np.float64))),
            below, above)


def _band(perm, rows, cols):
    """max |i − j| over the entries (i, j) of the pattern (``rows``, ``cols``) in ``perm``."""
    inv = np.empty(perm.shape[0], dtype=np.int64)
    inv[perm] = np.arange(perm.shape[0])
    return int(np.abs(inv[rows] - inv[cols]).max(initial=0))


SMOOTHING_SWEEPS = 8
MIDPOINT_ROUNDS = 3


def smoothed_orders(G, perm):
    """Candidate orders refining ``perm`` (RCM's) towards a narrow band, for
    :func:`envelope` to pick from (it keeps RCM's unless one is narrower).

    Each state's position is averaged with its neighbours' (``SMOOTHING_SWEEPS`` sweeps
    of x ← mean of x over the closed neighbourhood in A + Aᵀ): RCM's level sets make
    x a staircase, and the sweeps turn it into a coordinate along the graph, which
    interleaves the two sides of each level on a ring. Then ``MIDPOINT_ROUNDS`` rounds
    place each state at the midpoint of its neighbours' positions (the centre of the
    interval that bounds its row's band). Each sweep or round is one pass over A + Aᵀ.

    Parameters
    ----------
    G : scipy CSR array of shape (n, n)
        The off-diagonal pattern.
    perm : ndarray of shape (n,)

    Yields
    ------
    ndarray of shape (n,)
        Orders (permutations of the states).
    """
    n = G.shape[0]
    S = (G + G.T + sp.eye_array(n, format="csr", dtype=G.dtype)).tocsr()  # closed neighbourhoods
    S = sp.csr_array((np.ones(S.indices.shape[0]), S.indices, S.indptr), shape=(n, n))
    size = np.diff(S.indptr).astype(np.float64)  # ≥ 1: the state itself
    x = np.empty(n)
    x[perm] = np.arange(n, dtype=np.float64)
    for _ in range(SMOOTHING_SWEEPS):
        x = (S @ x) / size
    order = np.argsort(x, kind="stable")
    yield order
    for _ in range(MIDPOINT_ROUNDS):
        pos = np.empty(n)
        pos[order] = np.arange(n, dtype=np.float64)
        nb = pos[S.indices]
        mid = np.minimum.reduceat(nb, S.indptr[:-1]) + np.maximum.reduceat(nb, S.indptr[:-1])
        order = np.lexsort((pos, mid))
        yield order


def flops_floor(indptr, indices, distinct_pairs_bound):
    """A lower bound on Σᵢ (i − first(i))², the LU work bound of :func:`envelope`, that
    holds in every order of the states: |E|² / n, |E| the edges of the undirected graph
    of the pattern (bounded below by the ``distinct_pairs_bound`` kernel).

    In any order, row i has at least lowerdeg(i) (its neighbours placed before it, at
    distinct positions < i) entries left of the diagonal, so i − first(i) ≥ lowerdeg(i);
    Σᵢ lowerdeg(i) = |E| in every order, and Cauchy–Schwarz gives Σᵢ lowerdeg(i)² ≥
    |E|² / n. Tight for banded patterns (a band of half-width β: n β² both ways), so it
    never declines what the envelope would accept.

    Parameters
    ----------
    indptr : ndarray of shape (n + 1,), indices : ndarray of shape (≥ indptr[-1],)
        The off-diagonal pattern (CSR, columns distinct within a row).
    distinct_pairs_bound : callable
        The backend's kernel.
    """
    n = indptr.shape[0] - 1
    nnz = int(indptr[-1])
    if n == 0 or nnz == 0:
        return 0.0
    log2m = max(6, int(nnz * 8 - 1).bit_length())  # ≥ 8 bits (one byte) per entry
    bits = np.empty(1 << (log2m - 6), dtype=np.uint64)
    edges = int(distinct_pairs_bound(indptr, indices, bits, 64 - log2m, 1))
    return float(edges) ** 2 / n
