"""The private evaluator: exact quantities of policies on one MDP, with no validation inside.

One :class:`Evaluator` per (MDP, regularizer, backend, threads) holds the kernel
arguments, the resolved kernels, the regularizer resolved once (code, α, τ and the flat
π_ref), the linear-solve options and per-policy state. The public functions of
``fastppo.evaluation`` validate their inputs, then delegate here (SciPy's
validate-then-worker split); every method's inner loop (``solve``, ``PPOClip`` and the
other exact methods, ``SampledPPO``'s exact evaluations) calls it directly with arrays it
has already checked: flat float64 of shape (n_pairs,) or (n_states,), C-contiguous.

Use::

    E = Evaluator(mdp, reg, "numba", 1)
    E.load(pi)                          # the current policy: its product rows
    ev = E.evaluation(v0)               # Ṽ, Q̃, Ã, J (one linear solve)
    d = E.visitation(mu, d0)            # d^π_μ (one linear solve)
    ev, d = E.evaluation_and_visitation(mu, v0, d0)   # both systems together
    g = E.gradient(mu)                  # ∂Ṽ(μ)/∂θ at θ with softmax(θ) = π
    E.greedy(q, pi_out, value_out)      # the regularized greedy step
    E.softmax(logits, out)

The formulas are in ``fastppo.evaluation``'s docstring; the linear solves behind one
interface in ``fastppo._krylov``.
"""
import functools

import numpy as np
import scipy.sparse as sp

from . import _krylov
from ._assembled import MEMORY_SHARE, OMEGA, AssembledMatrix, available_memory, fits_in_memory
from ._backend import get_kernel
from ._codes import REVERSE_KL
from ._memory import scratch
from ._result import Result
from ._validation import check_finite

DEFAULT_TOL = 1e-12
DEFAULT_RESTART = 40
DEFAULT_MAX_ITER = 5000

_EMPTY = np.empty(0)  # a skipped side of bellman_products
_ONES = functools.lru_cache(maxsize=2)(np.ones)
MIXED_STATES = 1 << 19  # from here on, lockstep sweeps on float32 corrections (``mixed``)
# the products on all pairs read P's column indices as uint16 where they fit (2 bytes fewer
# per entry, the same sums: Transitions.narrow_indices)
NARROW_INDICES = True
# evaluate's sweeps keep P x per pair on the product predicted to meet tol: Q̃ without a pass
LAST_ROWS = True
# single visitation solves (Richardson's sweeps and the Krylov methods after them) on an MDP
# of this many states up to 2¹⁶: their products gather by state from P's entries in the
# transposed order (Transitions.transposed_pattern, 14 bytes per entry, once per MDP),
# weighted by π once per policy (8 bytes per entry), instead of scattering: on the 10k
# garnet 20 products and the weights took 10.7–11.0 ms against 13.7–14.1 ms
# (benchmarks/RESULTS.md, issue 17 target 1). Another order of the sums: the lockstep
# solves (which scatter) then match the single ones to round-off, below it bit for bit.
# None: never.
TRANSPOSED_STATES = 5_000
# single solves' Richardson sweeps on an MDP of this many states up to 2¹⁶ (float64 P, a
# policy on all pairs): each sweep one pass (product, residual, update and r's sums at
# once, no NumPy operation between sweeps): the value's by ``pair_sweep`` on P's own rows,
# each entry weighted by its pair's π as it is read (a pair code per entry, once per MDP:
# MDP._pair_codes; on the 10k garnet an evaluate ~3 % faster than with P_π's rows written
# by its first sweep, benchmarks/RESULTS.md, issue 17), the last (predicted to meet tol) by
# ``bellman_products``, which keeps P x per pair for Q̃; the visitation's by ``row_sweep``
# on P_πᵀ's entries (TRANSPOSED_STATES; written by its first sweep, ``transposed_sweep``).
# None: never.
ROW_SWEEP_STATES = 5_000
# ... and at least this many entries of P per state on average: rows long enough for the
# eight-lane gathers (the 10k garnet, 100 entries a state, with P_π's rows written:
# evaluate −11 %; the gridworld, queue and pendulum, 12–20: +2–5 %, their sweeps hand over
# to SGS after a few products; benchmarks/RESULTS.md, issue 17)
ROW_SWEEP_ENTRIES = 32
# the visitation's row sweeps after the pass that wrote P_πᵀ's entries: prefetched
# (row_sweep's ``prefetch``; pair_sweep always prefetches); an array the caches lost reads
# at memory speed for two passes here, with prefetching faster (RESULTS.md, issue 17)
COLD_PASSES = 2
SWEEP_CHUNKS = 16  # row_sweep's chunks of r's sums: fixed, so any thread count sums alike
# the exact passes of both sides (with the rows) or of the visitation side alone, on all
# pairs of a float64 P, run from this many states on on a copy of P's entries in column
# blocks (``blocked_products``; 11 bytes per entry, made only within MEMORY_SHARE of the
# available memory): the lines a chunk gathers from and scatters into (16 bytes a state,
# one buffer per chunk) then lie in one block of columns at a time, at most BLOCK_BYTES of
# lines over all chunks (blocks of at most 2¹⁶ states: columns as 16-bit offsets). Each
# block re-reads the chunk's per-pair rows and weights, so fewer blocks read less, but
# the lines must stay in a fast cache: the fused pass at 10⁶ states took 0.65× P's own
# rows with 2 MB (16 blocks) and 0.95–1.0× with 4–8 MB on a 2-core Intel Xeon (L2 2 MiB
# per core, a slow shared L3), 0.6–0.8× with 8 MB on a 2-core AMD EPYC (L2 512 KiB, L3
# 32 MiB) (benchmarks/RESULTS.md, issue 12 target 5).
# The copy is made on the evaluator's BLOCKED_AFTER-th exact fused pass: a run that makes
# many (PPO-Clip) pays for it once (~4 s at 10⁸ entries). None: never.
BLOCKED_STATES = 1 << 19
BLOCK_BYTES = 2 << 20
BLOCKED_AFTER = 8
VALUE_SYSTEM = "evaluation system (I - gamma P_pi) v = r_pi - tau D_f(pi)"
VISIT_SYSTEM = "visitation system (I - gamma P_pi^T) d = (1 - gamma) mu"


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
    n_passes : int
        Reads of P's arrays (the products' kernels and ``q_values``). A fused pass that
        serves both products of a lockstep sweep counts once here and twice in
        ``n_matvec``; from :meth:`Evaluator.evaluation_and_visitation` both results carry
        the passes of the joint solve (not to be added).
    residual : float
        Relative residual of the solve.
    method : str
        The solvers that ran, in order: "richardson", "richardson+lu", "richardson+sgs",
        "richardson+sgs+lu+gmres", "bicgstab", "gmres", ...
    fill : float or None
        With "lu" in ``method``: the entries of the LU factors over those of the assembled
        I − γP_π (capped at ``fastppo._assembled.FILL_CAP``); None otherwise.
    backend : str
    """


@functools.cache
def _kernels(backend):
    """{name: kernel} of the evaluator on ``backend`` (made once per backend; not modified)."""
    return {name: get_kernel(name, backend) for name in (
        "bellman_matvec", "bellman_rmatvec", "bellman_products", "q_values", "q_greedy",
        "regularized_reward", "advantages", "q_advantages", "policy_gradient",
        "greedy_policy", "segment_softmax", "blocked_products", "transposed_weights",
        "transposed_rmatvec", "row_sweep", "pair_sweep", "transposed_sweep", "q_products")}


def regularizer_args(mdp, reg):
    """(code, alpha, tau, ref): a regularizer's kernel arguments, π_ref flat (n_pairs,)
    and checked against the MDP; (0, 0, 0, None) for None, and code 0 when τ = 0."""
    from .regularizers import Regularizer

    if reg is None:
        return 0, 0.0, 0.0, None
    if not isinstance(reg, Regularizer):
        raise TypeError(f"reg must be a fastppo regularizer (e.g. fastppo.ForwardKL(0.1)) or None, got {reg!r}")
    ref = reg.reference_policy(mdp)  # checked even when τ = 0
    if reg.tau == 0.0:
        return 0, 0.0, 0.0, ref
    return reg.code, reg.alpha, reg.tau, ref


def ppo_log_ref(code, tau, ref):
    """The ``log_ref`` argument of the ``ppo_update`` kernels, formed once per run: log π_ref
    (−inf where π_ref = 0) for reverse KL with τ ≠ 0, the only case that reads it (it would
    otherwise take a log per pair in every call); else ``ref`` itself, not read."""
    if tau == 0.0 or code != REVERSE_KL:
        return ref
    with np.errstate(divide="ignore"):
        return np.log(ref)


def blocked_columns(n_states, n_blocks):
    """The dtype of :func:`blocked_layout`'s column offsets: uint16 for blocks of at most
    2¹⁶ states, else int32."""
    return np.dtype(np.uint16 if -(-n_states // n_blocks) <= 1 << 16 else np.int32)


def blocked_layout(mdp, n_chunks, n_blocks, backend=None, n_threads=1):
    """P's entries in ``n_blocks`` blocks of columns for ``blocked_products`` with
    ``n_chunks`` chunks of states: (chunk_pairs, begins, ends, steps, columns, data). Chunk
    c's entries of block b (columns [b w, (b + 1) w), w = ⌈n_states / n_blocks⌉) are
    begins[b, c] ≤ e < ends[b, c], in P's order, each with its column less b w (uint16
    where w ≤ 2¹⁶, else int32), its probability and its pair as a one-byte step from the
    pair before (from chunk_pairs[c], the chunk's first pair; a step over 255 takes
    fillers of probability 0 first, one per 255 pairs with no entry in the block); the
    chunks' regions one after the other, blocks in order. 11 bytes per entry of P (13 for
    blocks wider than 2¹⁶ states; ``blocked_entries``)."""
    n = mdp.n_states
    width = -(-n // n_blocks)
    chunk_pairs = mdp.a_indptr[np.arange(n_chunks + 1) * n // n_chunks]
    kernel = get_kernel("blocked_entries", backend)
    column = blocked_columns(n, n_blocks)
    counts = np.zeros((n_blocks, n_chunks), dtype=np.int64)  # the regions' sizes first
    kernel(mdp.p_indptr, mdp.p_indices, mdp.p_data, chunk_pairs, width, counts,
           np.empty_like(counts), np.empty(0, np.uint8), np.empty(0, column), np.empty(0),
           n_threads)
    ends = np.cumsum(counts.T.ravel()).reshape(n_chunks, n_blocks).T.copy()
    begins = ends - counts
    size = int(counts.sum())
    steps, columns, data = np.empty(size, np.uint8), np.empty(size, column), np.empty(size)
    cursor = begins.copy()
    kernel(mdp.p_indptr, mdp.p_indices, mdp.p_data, chunk_pairs, width, cursor,
           np.empty_like(cursor), steps, columns, data, n_threads)
    return chunk_pairs, begins, ends, steps, columns, data


def policy_rows(mdp, pi, previous=None, backend=None, n_threads=1, in_place=False):
    """Kernel arrays (a_indptr, p_indptr, p_indices, p_data, pi) of the pairs π uses.

    Products with P_π only need the pairs with π > 0. When those are at most half of
    all pairs (a deterministic policy uses one per state), their rows are gathered once
    into a compact CSR (O(nnz) of those rows; kernels ``compact_indptr`` and
    ``compact_rows`` of ``backend``, default the one in force, on ``n_threads``), so every product reads
    only them; the sums are the same, term by term.

    ``previous``: (π', its compact rows) of an earlier policy, or None. When π differs
    from π' in a few states whose pairs' rows keep their shape (policy iteration's last
    steps), only those states' rows are gathered anew, into a copy of the old arrays
    (``in_place``: into the old arrays themselves, which the caller gives up).
    """
    T = mdp._transitions
    n_used = mdp.n_pairs if pi.min(initial=1.0) > 0 else np.count_nonzero(pi)
    if n_used > mdp.n_pairs // 2:
        return mdp.a_indptr, T.p_indptr, T.p_indices, T.p_data, pi
    if previous is not None:
        rows = _patched_rows(mdp, pi, *previous, deterministic=n_used == mdp.n_states,
                             in_place=in_place)
        if rows is not None:
            return rows
    a_indptr = np.empty(mdp.n_states + 1, dtype=np.int64)
    p_indptr, pairs = np.empty(n_used + 1, dtype=np.int64), np.empty(n_used, dtype=np.int64)
    get_kernel("compact_indptr", backend)(mdp.a_indptr, T.p_indptr, pi, a_indptr, p_indptr,
                                          pairs, 1)
    indices = np.empty(p_indptr[-1], dtype=T.p_indices.dtype)
    data, weights = np.empty(p_indptr[-1], dtype=T.p_data.dtype), np.empty(n_used)
    get_kernel("compact_rows", backend)(T.p_indptr, T.p_indices, T.p_data, pi, pairs, p_indptr,
                                        indices, data, weights, n_threads)
    return a_indptr, p_indptr, indices, data, weights


# on the steps solved on the assembled matrix alone (method "sgs" / "lu"), a deterministic
# policy whose rows cannot be patched has its I − γP_π assembled straight from P
# (assemble_deterministic), its rows gathered only if a product needs them
DIRECT_ASSEMBLY = True
PATCH_SHARE = 0.25  # policy_rows patches the old rows when at most this share of states changed


def _patched_rows(mdp, pi, old_pi, old_rows, deterministic=False, in_place=False):
    """The compact rows of ``pi`` from those of ``old_pi`` (:func:`policy_rows`), or None
    when too many states changed or a changed state's rows change shape (nothing written).
    ``deterministic``: π uses one pair per state (as every policy uses ≥ 1); ``in_place``:
    written into ``old_rows``' arrays, else into copies."""
    a_old, p_old, indices_old, data_old, w_old = old_rows
    T = mdp._transitions
    a = mdp.a_indptr
    diff = np.flatnonzero(pi != old_pi)
    if deterministic and a_old[-1] == mdp.n_states:
        # one pair per state in both: a changed state's new pair is its only slot
        used = diff[pi[diff] != 0]
        if used.shape[0] > PATCH_SHARE * mdp.n_states:
            return None
        slots = mdp.s_indices[used]
    else:
        changed = mdp.s_indices[diff]  # sorted: pairs go by state
        states = changed[np.flatnonzero(np.diff(changed, prepend=-1))]  # each once
        if states.shape[0] > PATCH_SHARE * mdp.n_states:
            return None
        # the pairs of the changed states, and those of them π uses
        counts = a[states + 1] - a[states]
        pairs = np.repeat(a[states] - np.cumsum(counts) + counts, counts) + np.arange(counts.sum())
        used = pairs[pi[pairs] != 0]
        per_state = np.bincount(np.searchsorted(states, mdp.s_indices[used]),
                                minlength=states.shape[0])
        if not np.array_equal(per_state, a_old[states + 1] - a_old[states]):
            return None  # a state now uses more or fewer pairs: the layout moves
        slots = np.repeat(a_old[states] - np.cumsum(per_state) + per_state, per_state) + \
            np.arange(used.shape[0])  # the compact pair slots of ``used``, in order
    lengths = T.row_lengths[used]
    if not np.array_equal(lengths, p_old[slots + 1] - p_old[slots]):
        return None  # a row of another length: the layout moves
    if in_place:
        w, indices, data = w_old, indices_old, data_old
    else:
        w, indices, data = w_old.copy(), indices_old.copy(), data_old.copy()
    w[slots] = pi[used]
    old = np.repeat(p_old[slots] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    new = np.repeat(T.p_indptr[used] - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
    indices[old] = T.p_indices[new]
    data[old] = T.p_data[new]
    return a_old, p_old, indices, data, w


class Evaluator:
    """Exact evaluation, visitation, gradient and greedy step on one MDP.

    Construction resolves the kernels and the regularizer once (π_ref is checked against
    the MDP there); the operations never validate.

    Parameters
    ----------
    mdp : MDP
    reg : Regularizer or None
    backend : {"numba", "cython", "numpy"}
        Resolved backend name.
    n_threads : int
        Resolved thread count.
    tol : float, default 1e-12
        Relative residual of the linear solves (each operation can override it).
    max_iter : int, default 5000
        Products allowed per linear system.
    restart : int, default 40
        GMRES restart length.
    method : {"auto", "richardson", "bicgstab", "sgs", "lu", "gmres"}, default "auto"
        Linear-solve chain (``fastppo._krylov.chain``).
    mixed : bool, optional
        Sweeps of the lockstep solve on float32 corrections (:meth:`products`); default:
        from ``MIXED_STATES`` states on, with the compiled backends, until the evaluator
        makes its copy of P in column blocks (see ``BLOCKED_STATES``).
    tol_name : str, default "tol"
        The caller's name for ``tol`` in error messages ("lin_tol" for ``solve`` and
        the PPO methods).

    Attributes
    ----------
    code, alpha, tau : int, float, float
        The regularizer's kernel arguments (code 0 and τ = 0 without one).
    ref : ndarray of shape (n_pairs,)
        π_ref (uniform without a regularizer).
    pi : ndarray of shape (n_pairs,) or None
        The loaded policy.
    space : fastppo._krylov.Space
        Where the state vectors live (``_krylov.LOCAL``; ``fastppo.distributed``'s
        evaluator holds row blocks on MPI ranks): every reduction over states goes
        through it.
    """

    def __new__(cls, mdp, *args, **kwargs):
        if cls is Evaluator and mdp.gamma == 1.0:  # episodic: one topological pass each
            from ._episodic import EpisodicEvaluator
            cls = EpisodicEvaluator
        return super().__new__(cls)

    space = _krylov.LOCAL

    def __init__(self, mdp, reg, backend, n_threads, *, tol=DEFAULT_TOL,
                 max_iter=DEFAULT_MAX_ITER, restart=DEFAULT_RESTART, method="auto", mixed=None,
                 tol_name="tol"):
        self.mdp, self.backend, self.n_threads = mdp, backend, n_threads
        self.tol_name = tol_name
        self.code, self.alpha, self.tau, ref = regularizer_args(mdp, reg)
        if ref is not None:
            self.ref = ref
        self.tol, self.max_iter, self.restart, self.method = tol, max_iter, restart, method
        self._k = _kernels(backend)
        self.pi = None
        self._held_rows = None
        self._narrow_rows = None  # _rows with narrow column indices (_product_rows)
        self._pairs, self._patch = None, False
        self._weights = None
        self._compact = False
        self._previous = None  # (π, its compact rows) for load(patch=True)
        self._scratch = None  # scatter buffers of the transposed product, on first use
        self._q_rows = None  # P x per pair of the last value sweep (n_pairs,), on first use
        self._rows_fresh = False  # _q_rows holds P x of the value system's last product
        self.n_passes = 0  # reads of P's arrays so far
        if mixed is None:
            mixed = backend != "numpy" and mdp.n_states >= MIXED_STATES
        self.mixed = bool(mixed)
        self._base = [None, None]  # per side: (x, A x) of its last exact product
        self._buf32 = self._x32 = None  # float32 scatter buffers and gathered correction
        self._transposed = None  # the loaded policy's P_πᵀ entries (_transposed_rows)
        self._transposed_weights = None  # their buffer, kept across policies
        self._pair_args = None  # pair_sweep's arrays for the loaded policy, on first use
        # evaluation's Q̃ and Ã with its last product (_q_product): γ 2^e, and (q, adv)
        self._q_scale = self._q_last = None
        self._sweep_stats = np.empty((SWEEP_CHUNKS, 4))
        self._cold_passes = 0  # row sweeps still to prefetch the rows last written (COLD_PASSES)
        self._matrix = None  # the loaded policy's assembled I − γP_π, on first use
        self._direct = None  # the last one assembled straight from P (a deterministic policy)
        self._workspace = {}  # the assembled matrices' scratch, kept across policies
        self._blocked = None  # P's entries in column blocks (_blocked_layout), on first use
        self._fused_passes = 0  # exact fused passes on P's own rows so far
        self.omega = OMEGA
        # pairs at which each evaluation keeps Q̃ (Evaluation.q_probe: a warm start's
        # residual fit, fastppo.solvers), None for none; and c = r_π − τ D_f of the loaded
        # policy, on first use
        self.probe_pairs = None
        self._probed = self._reward = None
        self._probe_matrix = None  # (probe_pairs, P's rows there), on first use

    @functools.cached_property
    def ref(self):
        """π_ref, flat (n_pairs,): the regularizer's, or uniform (made on first use)."""
        return self.mdp.uniform_policy()

    # ------------------------------------------------------------- the loaded policy
    def load(self, pi, patch=False, pairs=None):
        """Make ``pi`` (flat, checked; kept by reference, not copied) the current policy.
        ``patch``: its compact rows may be patched, in place, from the last loaded
        policy's (:func:`policy_rows`; for policy iteration, whose consecutive policies
        differ in few states), and ``pi`` is kept as the reference of the next patch: the
        caller leaves it unchanged until the next ``load``. ``pairs``: the pairs with
        π > 0 in order, if the caller has them (:meth:`q_greedy`'s), else found here."""
        previous = self._previous if patch and self._compact else None
        self.pi = pi
        self._rows_fresh = False
        self._reward = None
        self._pair_args = None
        self._transposed = None
        self._matrix = None
        self._narrow_rows = None
        mdp = self.mdp
        self._pairs = None
        if DIRECT_ASSEMBLY and self.method in ("sgs", "lu"):
            # (flatnonzero on booleans: ~6x faster than on floats)
            used = np.flatnonzero(pi != 0) if pairs is None else pairs
            if used.shape[0] == mdp.n_states and used.shape[0] <= mdp.n_pairs // 2:
                # deterministic (one pair per state), solved on the assembled matrix
                # alone. A patch of the last rows re-reads only the changed states' rows
                # of P (their scattered reads cost ~10x the merge of the compact rows:
                # local garnet, 10k); without one (rows of other lengths: the pendulum),
                # the rows are gathered only if a product needs them, and I − γP_π is
                # assembled straight from P
                rows = None if previous is None else _patched_rows(
                    mdp, pi, *previous, deterministic=True, in_place=True)
                if rows is not None:
                    self._hold(rows, patch, pairs)
                    return
                self._pairs, self._compact, self._patch = used, True, patch
                self._weights = None  # π on its pairs, on first use
                self._held_rows, self._previous = None, None
                return
        rows = policy_rows(mdp, pi, previous, self.backend, self.n_threads, in_place=True)
        self._hold(rows, patch, pairs)

    def _hold(self, rows, patch, pairs=None):
        # a caller's pairs of a deterministic policy: r_π is their gather (regularized_reward)
        if pairs is not None and pairs.shape[0] == self.mdp.n_states:
            self._pairs, self._weights = pairs, None
        self._compact = rows[0] is not self.mdp.a_indptr
        self._previous = (self.pi, rows[:5]) if patch and self._compact else None
        self._held_rows = (*rows, self.mdp.gamma)
        self._narrow_rows = None

    @property
    def _rows(self):
        """The kernel arrays of the loaded policy's pairs (:func:`policy_rows`) and γ."""
        if self._held_rows is None:  # a deterministic policy's rows, on first use
            self._hold(policy_rows(self.mdp, self.pi, None, self.backend, self.n_threads),
                       self._patch)
        return self._held_rows

    @property
    def _product_rows(self):
        """:attr:`_rows` for the products: on all pairs, P's column indices as uint16 where
        every state fits (``Transitions.narrow_indices``; 2 bytes fewer read per entry,
        the same sums); compact rows and the NumPy reference keep int32."""
        if self._narrow_rows is None:
            rows = self._rows
            if rows[2] is self.mdp.p_indices:  # P's own rows, not compact ones
                rows = (*rows[:2], self._column_indices(), *rows[3:])
            self._narrow_rows = rows
        return self._narrow_rows

    def _column_indices(self):
        """P's column indices for the products: uint16 where every state fits and the
        backend is compiled (``Transitions.narrow_indices``), else ``p_indices``."""
        mdp = self.mdp
        narrow = None
        if NARROW_INDICES and self.backend != "numpy":
            narrow = mdp._transitions.narrow_indices(mdp.n_states)
        return mdp.p_indices if narrow is None else narrow

    def assembled(self, transpose=False):
        """The loaded policy's I − γP_π (or its transpose), assembled on first use and
        shared by both systems (a ``fastppo._assembled.SplitView``); None where it would
        not fit in memory (``fastppo._assembled.fits_in_memory``)."""
        if self._matrix is None and not fits_in_memory(self.mdp):
            return None
        if self._matrix is None and self._held_rows is None:  # straight from P
            # patched from the last such matrix where few states changed
            self._matrix = AssembledMatrix(self.mdp, None, self.backend, self._workspace,
                                           pairs=(self._pairs, self.pi, self._weights),
                                           base=self._direct)
            self._direct = self._matrix
        elif self._matrix is None:
            self._matrix = AssembledMatrix(self.mdp, self._rows[:5], self.backend,
                                           self._workspace)
        return self._matrix.view(transpose, self.omega)

    @property
    def _buf(self):
        """Scatter buffers of the transposed product, (n_chunks, 2 n_states): one per chunk
        of states, summed in a fixed order; a fused pass keeps the gathered x beside the
        sums, ``bellman_products``. max(2, n_threads) chunks, so the products (hence
        visitations) are bit for bit the same on 1 and 2 threads."""
        if self._scratch is None:
            self._scratch = np.empty((max(2, self.n_threads), 2 * self.mdp.n_states))
        return self._scratch

    def matvec(self, x, out):
        """out = (I − γP_π) x."""
        self.n_passes += 1
        self._rows_fresh = False
        self._k["bellman_matvec"](*self._product_rows, x, out, self.n_threads)

    def rmatvec(self, x, out):
        """out = (I − γP_πᵀ) x."""
        self.n_passes += 1
        self._k["bellman_rmatvec"](*self._product_rows, x, out, self._buf, self.n_threads)

    def visit_matvec(self, x, out):
        """out = (I − γP_πᵀ) x for a visitation solve: a gather on P's entries in the
        transposed order (:meth:`_transposed_rows`) where they apply, else :meth:`rmatvec`.
        Exact either way (another order of the sums)."""
        rows = self._transposed_rows()
        if rows is None:
            self.rmatvec(x, out)
            return
        self.n_passes += 1
        self._k["transposed_rmatvec"](*rows, x, out, self.n_threads)

    def _gathers_apply(self, from_states):
        """Whether rows of P_π (or P_πᵀ) for the eight-lane gathers apply: from
        ``from_states`` (None: never) up to 2¹⁶ states (uint16 columns), a compiled backend,
        a policy on all pairs (not compact rows) and float64 P."""
        mdp = self.mdp
        return (from_states is not None and from_states <= mdp.n_states <= 1 << 16
                and self.backend != "numpy" and not self._compact
                and mdp.p_data.dtype == np.float64)

    def _transposed_apply(self):
        """Whether :meth:`_transposed_rows` apply (without making them)."""
        return self._gathers_apply(TRANSPOSED_STATES)

    def _transposed_parts(self):
        """(t_indptr, t_pairs, t_sources, t_data) of P's transposed pattern, and the buffer
        of P_πᵀ's entries (kept across policies)."""
        mdp = self.mdp
        pattern = mdp._transitions.transposed_pattern(mdp.n_states, mdp.s_indices)
        if self._transposed_weights is None:
            self._transposed_weights = scratch(pattern[3].shape[0])
        return (*pattern, self._transposed_weights)

    def _transposed_rows(self):
        """(t_indptr, t_sources, P_πᵀ's entries, γ) of the loaded policy for
        ``transposed_rmatvec``, or None where they do not apply: fewer than
        ``TRANSPOSED_STATES`` states or more than 2¹⁶, the NumPy backend, compact rows (a
        policy on at most half of the pairs: its scatter reads only those), or float32
        storage (whose products re-normalise each pair's row). The entries are made by one
        pass of ``transposed_weights`` on first use per policy (counted in ``n_passes``)."""
        if self._transposed is None:
            if not self._transposed_apply():
                self._transposed = False
            else:
                t_indptr, pairs, sources, data, weights = self._transposed_parts()
                self.n_passes += 1
                self._k["transposed_weights"](pairs, data, self.pi, weights, self.n_threads)
                self._transposed = (t_indptr, sources, weights, self.mdp.gamma)
        return self._transposed or None

    def _row_sweeps_apply(self):
        """Whether single solves sweep with ``row_sweep`` / ``pair_sweep`` (ROW_SWEEP_STATES,
        ROW_SWEEP_ENTRIES, at most 256 pairs a state; the visitation also needs
        :meth:`_transposed_apply`)."""
        mdp = self.mdp
        return (self._gathers_apply(ROW_SWEEP_STATES)
                and mdp.p_indices.shape[0] >= ROW_SWEEP_ENTRIES * mdp.n_states
                and mdp._pair_codes is not None)

    def _value_row_sweep(self, b, x, shift, out):
        """A sweep of the value system (``System.sweep``) by ``pair_sweep``: P_π's state
        rows read from P itself, each entry weighted by its pair's π as it is read (no
        rows written; each state's pairs' rows one after another, 10 bytes and a pair
        code per entry)."""
        self.n_passes += 1
        self._rows_fresh = False
        if self._pair_args is None:  # per policy
            mdp = self.mdp
            self._pair_args = (mdp._state_indptr, mdp.a_indptr, mdp._pair_codes,
                               self._column_indices(), mdp.p_data, self.pi, mdp.gamma)
        return self._k["pair_sweep"](*self._pair_args, b, x, shift, out, self._sweep_stats,
                                     self.n_threads)

    def _visit_row_sweep(self, b, x, shift, out):
        """A sweep of the visitation system (``System.sweep``) by ``row_sweep`` on P_πᵀ's
        entries (:meth:`_transposed_rows`); the policy's first sweep writes them as it goes
        (``transposed_sweep``)."""
        self.n_passes += 1
        if self._transposed is None:
            gamma = self.mdp.gamma
            t_indptr, pairs, sources, data, weights = self._transposed_parts()
            sums = self._k["transposed_sweep"](t_indptr, pairs, sources, data, self.pi, gamma,
                                               b, x, shift, out, weights, self._sweep_stats,
                                               self.n_threads)
            self._transposed = (t_indptr, sources, weights, gamma)
            self._cold_passes = COLD_PASSES
            return sums
        self._cold_passes -= 1
        return self._k["row_sweep"](*self._transposed, b, x, shift, out, self._sweep_stats,
                                    self._cold_passes >= 0, self.n_threads)

    def products(self, x_value, x_visit, out_value, out_visit, exact=True):
        """The products of one lockstep sweep in one pass over P (``bellman_products``):
        out_value = (I − γP_π) x_value and out_visit = (I − γP_πᵀ) x_visit, a side given
        as None skipped. An exact value product also keeps P x_value per pair (not for
        compact rows), from which :meth:`evaluation_and_visitation` takes Q̃ without a pass.
        From BLOCKED_STATES states on, the exact passes of both sides or of the visitation
        side run on P's entries in column blocks once made (:meth:`_blocked_layout`): the
        same sums.

        Mixed precision (``self.mixed``; ``exact`` False): each side's product is its last
        exact product A x̂ plus the product of the correction x − x̂, gathered (value) and
        scattered (visitation) in float32 and summed in float64, so its error is
        ~6e-8 ‖x − x̂‖, not ~6e-8 ‖x‖: small once the sweeps are near their solution, and
        the solve certifies its result with an exact product (``_krylov.solve_pair``).
        At 10⁶ states a pass of corrections took 0.65 s of CPU against 0.85 s for an exact
        fused pass (numba, one thread, loaded machine: benchmarks/RESULTS.md, issue 12
        target 5). Returns whether the products were exact.
        """
        if self.mixed and not exact:
            return self._corrections(x_value, x_visit, out_value, out_visit)
        self.n_passes += 1
        rows = _EMPTY
        if x_value is None:
            x_value = out_value = _EMPTY
        elif not self._compact:
            if self._q_rows is None:  # the evaluator's own (kept between calls)
                self._q_rows = scratch(self.mdp.n_pairs)
            rows = self._q_rows
            self._rows_fresh = True
            self._q_last = None
        else:
            self._rows_fresh = False
        if x_visit is None:
            x_visit = out_visit = _EMPTY
        blocked = None
        own = self._rows
        if (x_visit.shape[0] and (rows.shape[0] or not x_value.shape[0])
                and own[2] is self.mdp.p_indices):  # both sides and rows, or visitation's
            if rows.shape[0]:
                self._fused_passes += 1
            blocked = self._blocked_layout()
        if blocked is not None:
            self._k["blocked_products"](own[0], *blocked, own[4], own[5],
                                        x_value, x_visit, out_value, out_visit, rows,
                                        self._blocked_weights, self._buf, self.n_threads)
        else:
            self._k["bellman_products"](*self._product_rows, x_value, x_visit, out_value,
                                        out_visit, rows, self._buf, self.n_threads)
        if self.mixed:
            for side, (x, out) in enumerate(((x_value, out_value), (x_visit, out_visit))):
                if x.shape[0]:
                    self._base[side] = (x.copy(), out.copy())
        return True

    def _blocked_layout(self):
        """:func:`blocked_layout` for ``blocked_products``, made on the BLOCKED_AFTER-th
        exact fused pass where it applies (see BLOCKED_STATES), else None. The visitation
        side's passes use it once made but never make it (a lone visitation's few passes
        would not pay for it). Making it ends ``mixed``: an exact pass on it costs less
        than a pass of float32 corrections on P's own rows (10⁶ states: 175 against 189 ms,
        and late PPO-Clip iterations 0.83× the time with the same passes; RESULTS.md)."""
        mdp = self.mdp
        if self._blocked is None:
            n, n_chunks = mdp.n_states, self._buf.shape[0]
            if (BLOCKED_STATES is None or n < BLOCKED_STATES
                    or self._fused_passes < BLOCKED_AFTER or mdp.p_data.dtype != np.float64):
                return None
            n_blocks = max(1, -(-16 * n * n_chunks // BLOCK_BYTES))
            entry = 9 + blocked_columns(n, n_blocks).itemsize  # bytes: step, column, data
            if entry * mdp.p_indices.shape[0] > MEMORY_SHARE * available_memory():
                return None
            self.mixed, self._base, self._buf32, self._x32 = False, [None, None], None, None
            self._blocked = blocked_layout(mdp, n_chunks, n_blocks, self.backend, self.n_threads)
            self._blocked_weights = np.empty(mdp.n_pairs)
        return self._blocked

    def _corrections(self, x_value, x_visit, out_value, out_visit):
        """Approximate products from the last exact ones (see :meth:`products`)."""
        n = self.mdp.n_states
        if self._buf32 is None:
            self._buf32 = np.empty(self._buf.shape, dtype=np.float32)
            self._x32 = np.empty(n, dtype=np.float32)
        ex, ey, ox, oy = _EMPTY, _EMPTY, _EMPTY, _EMPTY
        if x_value is not None:
            base, ax = self._base[0]
            np.subtract(x_value, base, out=out_value)
            ex, ox = self._x32, out_value
            ex[:] = out_value  # rounded to float32
            self._rows_fresh = False
        if x_visit is not None:
            base, ay = self._base[1]
            ey, oy = x_visit - base, out_visit
        self.n_passes += 1
        self._k["bellman_products"](*self._product_rows, ex, ey, ox, oy, _EMPTY, self._buf32,
                                    self.n_threads)
        if x_value is not None:
            out_value += self._base[0][1]
        if x_visit is not None:
            out_visit += self._base[1][1]
            self._balance_mass(x_visit, out_visit)
        return False

    def _balance_mass(self, y, out):
        """Shift an approximate out = (I − γP_πᵀ) y along 1 so that 1ᵀout = (1 − γ) 1ᵀy, as
        it holds exactly: the sweeps keep the mass of y (their slow direction, contracting
        by γ only) as long as products keep this balance."""
        n = self.mdp.n_states
        mass = (1.0 - self.mdp.gamma) * _krylov.dot(_ONES(n), y)
        out += (mass - _krylov.dot(_ONES(n), out)) / n

    def q_values(self, v, out=None):
        """Q̃ = r + γ P v, flat (n_pairs,), for state values ``v`` (n_states,) (into ``out``
        if given); returns it."""
        mdp = self.mdp
        q = np.empty(mdp.n_pairs) if out is None else out
        self._k["q_values"](mdp.p_indptr, self._column_indices(), mdp.p_data, mdp.r, mdp.gamma, v, q,
                            self.n_threads)
        return q

    def regularized_reward(self):
        """c = r_π − τ D_f(π ‖ π_ref), shape (n_states,), read-only (made once per loaded
        policy); ValueError if not finite (a divergence that is infinite at this policy)."""
        if self._reward is None:
            c = self._regularized_reward()
            c.flags.writeable = False
            self._reward = c
        return self._reward

    def _regularized_reward(self):
        mdp = self.mdp
        if self.tau == 0.0 and self._pairs is not None:
            # a deterministic policy (``load``'s direct path): Σ_a π r has one term, a
            # gather of r on its pairs
            if self._weights is None:  # kept for the assembly (one gather per policy)
                self._weights = self.pi[self._pairs]
            return mdp.r[self._pairs] * self._weights
        c = np.empty(mdp.n_states)
        ref = self.ref if self.tau != 0.0 else self.pi  # not read when τ = 0
        self._k["regularized_reward"](mdp.a_indptr, mdp.r, self.pi, ref, self.code,
                                      self.alpha, self.tau, c, self.n_threads)
        check_finite(c, "r_pi - tau * D_f(pi)")
        return c

    def _value_sweep(self, x, out, last):
        """The value system's sweep product (``System.sweep_product``): one that may be
        the sweeps' last (a warm start's first, or the one predicted to meet tol) by
        :meth:`products`, which keeps P x per pair, so that Q̃ of a solution met there
        comes from its rows (:meth:`_q_advantages`) instead of a pass of ``q_values``; the
        others by :meth:`matvec`. The same sums either way (bit for bit)."""
        if last and LAST_ROWS and self._q_scale is not None:
            self._q_product(x, out)
        elif last and LAST_ROWS:
            self.products(x, None, out, None)
        else:
            self.matvec(x, out)

    def _q_product(self, x, out):
        """A value product that makes Q̃ and Ã of its iterate as well (``q_products``: the
        rows of :meth:`products` and ``q_advantages`` of them in one pass, the same bits),
        for :meth:`evaluation` when it asked for both (``_q_scale``: γ 2^e of its
        system's scaling); :meth:`_q_advantages` hands them over if the solve ends there."""
        self.n_passes += 1
        mdp = self.mdp
        if self._q_last is None:
            self._q_last = (np.empty(mdp.n_pairs), np.empty(mdp.n_pairs))
        q, adv = self._q_last
        self._k["q_products"](*self._product_rows[:5], mdp.gamma, x, mdp.r, self._q_scale,
                              out, q, adv, self.n_threads)
        self._rows_fresh = True

    def _value_system(self):
        gamma = self.mdp.gamma
        return _krylov.System(self.matvec, self.regularized_reward(), VALUE_SYSTEM,
                              shift=gamma / (1.0 - gamma), assembled=self.assembled,
                              sweep_product=self._value_sweep,
                              sweep=self._value_row_sweep if self._row_sweeps_apply() else None)

    def _visit_system(self, mu, d0):
        scale = 1.0 - self.mdp.gamma
        # a start of the solution's mass 1/(1−γ) leaves no error along P_πᵀ's slow direction
        if d0 is None:
            y0 = mu / scale
        else:
            total = self.space.sum(d0)
            y0 = d0 / (scale * total) if total > 0 else None
        # (the rows are made by the first sweep that needs them: the lockstep solves,
        # which scatter, never make them)
        sweep = (self._visit_row_sweep if self._row_sweeps_apply() and self._transposed_apply()
                 else None)
        return _krylov.System(self.visit_matvec, mu, VISIT_SYSTEM, sweep=sweep,
                              assembled=(None if self.assembled is None
                                         else functools.partial(self.assembled, True))), y0

    def _q_advantages(self, res, b, advantages=True, q=True, out=None):
        """Q̃ = r + γ P v and Ã = Q̃ − Σ_a π Q̃ of the solution ``res`` of the value system
        with right-hand side ``b``: from the rows of its last sweep when that was at v
        (Richardson, rows kept: the same numbers, the iterate being v / 2^e,
        :meth:`_value_sweep`; one pass over the pairs,
        ``q_advantages``), else by a pass of ``q_values`` (and Ã only if
        ``advantages``; else None).

        ``q`` False: (None, Ã), Ã written over the rows, whose buffer is handed over (the
        next product takes another kept buffer, ``fastppo._memory.scratch``: PPO-Clip's
        next π, written over Ã, takes the pages of the π two steps before it), or over
        Q̃ from the pass of ``q_values``: no Q̃ array, and no fresh per-pair array
        (its page faults cost ~45 ms a step at 10⁶ states, RESULTS.md).

        ``out``: Q̃ written into it (n_pairs,) instead of a new array."""
        mdp, nt = self.mdp, self.n_threads
        fresh = self._rows_fresh and res.method == "richardson" and res.n_matvec > 0
        if not q:
            adv = self._q_rows if self._q_rows is not None else scratch(mdp.n_pairs)
            self._q_rows, self._rows_fresh = None, False  # the caller's now
            if fresh:
                scale = float(np.ldexp(mdp.gamma, _krylov.scale_exponent(b)))
                self._probe(adv, scale)
                self._k["q_advantages"](mdp.a_indptr, self.pi, adv, mdp.r, scale, adv, adv, nt)
            else:
                self.n_passes += 1
                self._probe(self.q_values(res.x, out=adv))
                self._k["advantages"](mdp.a_indptr, self.pi, adv, adv, nt)
            return None, adv
        if fresh and self._q_last is not None:  # made by the last product (_q_product)
            self._probe(self._q_last[0])
            return self._q_last
        if fresh:
            q = np.empty(mdp.n_pairs) if out is None else out
            # without ``advantages``, Ã goes over the rows, which are spent: no per-pair
            # array more (policy iteration's peak: 0.8 GB at 10⁷ states)
            adv = np.empty(mdp.n_pairs) if advantages else self._q_rows
            self._rows_fresh = advantages
            scale = float(np.ldexp(mdp.gamma, _krylov.scale_exponent(b)))
            self._k["q_advantages"](mdp.a_indptr, self.pi, self._q_rows, mdp.r, scale, q, adv, nt)
            self._probe(q)
            return q, adv if advantages else None
        self.n_passes += 1
        q = self.q_values(res.x, out=out)
        self._probe(q)
        return q, self.advantages(q) if advantages else None

    def _probe(self, q, scale=None):
        """Keep Q̃ at ``probe_pairs`` (if set) for the Evaluation: q's own, or r + scale·q
        from rows q = P x (Q̃ as ``q_advantages`` makes it)."""
        pairs = self.probe_pairs
        if pairs is not None:
            self._probed = q[pairs] if scale is None else q[pairs] * scale + self.mdp.r[pairs]

    def advantages(self, q, out=None):
        """Ã = Q̃ − Σ_a π Q̃ of the loaded policy, flat (n_pairs,), from its Q̃ ``q``
        (into ``out`` if given)."""
        adv = np.empty(self.mdp.n_pairs) if out is None else out
        self._k["advantages"](self.mdp.a_indptr, self.pi, q, adv, self.n_threads)
        return adv

    def _evaluation(self, res, b, passes, advantages=True, q=True, q_out=None):
        mdp = self.mdp
        v = res.x
        self._probed = None
        if q or advantages:
            q, adv = self._q_advantages(res, b, advantages, q, q_out)
        else:
            q = adv = None
        ev = Evaluation(v=v, q=q, adv=adv, J=self.space.dot(mdp.rho, v), n_matvec=res.n_matvec,
                        n_passes=self.n_passes - passes, residual=res.residual,
                        method=res.method, fill=self._fill(res), backend=self.backend)
        if self.probe_pairs is not None:
            ev.q_probe = self._probed  # Q̃ at probe_pairs (None if not made)
        if res.ahead is not None:
            ev.v_ahead = res.ahead
            if self._probed is not None:  # Q̃ + γ P (v_ahead − v) at probe_pairs
                ev.q_probe_ahead = self._probed + mdp.gamma * (self._probe_rows() @ (res.ahead - v))
        return ev

    def _probe_rows(self):
        """P's rows at ``probe_pairs``, a scipy CSR (len(probe_pairs), n_states) in float64,
        made once."""
        pairs = self.probe_pairs
        if self._probe_matrix is None or self._probe_matrix[0] is not pairs:
            mdp = self.mdp
            lo, counts = mdp.p_indptr[pairs], np.diff(mdp.p_indptr)[pairs]
            indptr = np.concatenate(([0], np.cumsum(counts)))
            entries = np.repeat(lo - indptr[:-1], counts) + np.arange(indptr[-1])
            rows = sp.csr_array((mdp.p_data[entries].astype(np.float64),
                                 mdp.p_indices[entries], indptr),
                                shape=(pairs.shape[0], mdp.n_states))
            self._probe_matrix = (pairs, rows)
        return self._probe_matrix[1]

    def _visitation(self, res, passes):
        vis = Result(d=self._normalized(res.x), n_matvec=res.n_matvec,
                     n_passes=self.n_passes - passes, residual=res.residual,
                     method=res.method, fill=self._fill(res), backend=self.backend)
        if res.ahead is not None:
            vis.d_ahead = self._normalized(res.ahead)
        return vis

    def _normalized(self, y):
        """d = (1 − γ) y with its round-off negatives cleared (d ≥ (1 − γ)μ ≥ 0 exactly),
        scaled to sum to 1."""
        d = (1.0 - self.mdp.gamma) * y
        np.maximum(d, 0.0, out=d)
        d /= self.space.sum(d)
        return d

    def _fill(self, res):
        """The LU's fill ratio when an LU ran for ``res``, else None."""
        ran = "lu" in res.method.split("+") and self._matrix is not None
        return self._matrix.fill if ran else None

    def _solve_options(self, tol):
        stop = _krylov.StoppingRule(self.tol if tol is None else tol, self.mdp.gamma,
                                    self.tol_name, self.space)
        return dict(stop=stop, max_iter=self.max_iter, method=self.method, restart=self.restart)

    def evaluation(self, v0=None, tol=None, advantages=True, q_out=None, q=True):
        """Ṽ, Q̃, Ã and J of the loaded policy.

        Parameters
        ----------
        v0 : ndarray of shape (n_states,), optional
            Warm start.
        tol : float, optional
            Relative residual; the evaluator's by default.
        advantages : bool, default True
            False: ``adv`` may be None (policy iteration's steps need Q̃ only; one pass
            over the pairs less, :meth:`advantages` makes it later).
        q_out : ndarray of shape (n_pairs,), optional
            Q̃ written into it (policy iteration alternates two: no fresh 8·n_pairs bytes
            per step).
        q : bool, default True
            False with ``advantages`` False: neither Q̃ nor Ã (``q``, ``adv`` None; policy
            iteration at τ = 0 makes Q̃ with its greedy step, :meth:`q_greedy`).

        Returns
        -------
        Evaluation
            Flat ``q`` and ``adv`` (n_pairs,).
        """
        passes = self.n_passes
        system = self._value_system()
        # Q̃ and Ã with the last sweep's product where the sweeps run on P's own rows
        self._q_scale = (float(np.ldexp(self.mdp.gamma, _krylov.scale_exponent(system.b)))
                             if q and advantages and q_out is None and system.sweep is not None
                             else None)
        self._q_last = None
        try:
            res = _krylov.solve(system, v0, **self._solve_options(tol))
            return self._evaluation(res, system.b, passes, advantages, q, q_out)
        finally:
            self._q_scale = self._q_last = None

    def visitation(self, mu, d0=None, tol=None):
        """d^π_μ of the loaded policy.

        Parameters
        ----------
        mu : ndarray of shape (n_states,)
            Start distribution.
        d0 : ndarray of shape (n_states,), optional
            Warm start (any positive multiple of a guess of d).
        tol : float, optional

        Returns
        -------
        Result
            ``d``, ``n_matvec``, ``n_passes``, ``residual``, ``method``, ``backend``.
        """
        passes = self.n_passes
        system, y0 = self._visit_system(mu, d0)
        return self._visitation(_krylov.solve(system, y0, **self._solve_options(tol)), passes)

    def evaluation_and_visitation(self, mu, v0=None, d0=None, tol=None, q=True, ahead=False):
        """:meth:`evaluation` and :meth:`visitation` of the loaded policy, their linear
        systems advanced together (``fastppo._krylov.solve_pair``); the same results.
        ``ahead``: where the sweeps converged, the visitation's Result also holds
        ``d_ahead``, d one sweep past its certified solution (``LinearResult.ahead``; its
        residual is not computed), and the Evaluation ``v_ahead``, Ṽ one sweep on, with
        Q̃ of it at ``probe_pairs`` (``q_probe_ahead``): warm starts for the next policy's
        solves.

        A lockstep sweep is one pass over P (:meth:`products`), and Q̃ comes from the rows
        of the value system's last sweep (no pass of its own) when the sweeps solved it.
        ``q`` False: the Evaluation's ``q`` is None and its ``adv`` takes the rows' buffer
        (Ã made in place, the same numbers): one per-pair array instead of three.

        Returns
        -------
        (Evaluation, Result)
            Both with the ``n_passes`` of the whole call.
        """
        passes = self.n_passes
        value = self._value_system()
        visit, y0 = self._visit_system(mu, d0)
        res_v, res_d = _krylov.solve_pair(value, visit, self.products, v0, y0,
                                          ahead=ahead, **self._solve_options(tol))
        ev = self._evaluation(res_v, value.b, passes, q=q)
        vis = self._visitation(res_d, passes)
        vis.n_passes = ev.n_passes
        return ev, vis

    def gradient(self, mu, tol=None):
        """∂Ṽ^{π_θ}(μ)/∂θ of the softmax policy at the loaded π = softmax(θ), flat (n_pairs,)."""
        mdp = self.mdp
        ev, vis = self.evaluation_and_visitation(mu, tol=tol)
        out = np.empty(mdp.n_pairs)
        self._k["policy_gradient"](mdp.a_indptr, self.pi, ev.adv, vis.d / (1.0 - mdp.gamma),
                                   self.ref, self.code, self.alpha, self.tau, out, self.n_threads)
        return out

    # -------------------------------------------------------- per-state operations
    # q_greedy serves policy iteration at τ = 0 (subclasses whose Q̃ needs more than P's
    # local rows, or another pass, say False)
    fuses_greedy = True

    def q_greedy(self, v, q_out, pi_out, value_out):
        """Q̃ = r + γ P v into ``q_out`` and the greedy step at τ = 0 (:meth:`greedy`) in one
        pass over P (counted in ``n_passes``); returns the pair π_out takes at each state,
        shape (n_states,) int64."""
        mdp = self.mdp
        pairs = np.empty(mdp.n_states, dtype=np.int64)
        self.n_passes += 1
        self._k["q_greedy"](mdp.a_indptr, mdp.p_indptr, self._column_indices(), mdp.p_data,
                            mdp.r, mdp.gamma, v, q_out, pi_out, pairs, value_out, self.n_threads)
        return pairs

    def greedy(self, q, pi_out, value_out):
        """The regularized greedy step: per state, pi_out = argmax_p Σ p q − τ D_f(p ‖ π_ref)
        and value_out its value (the regularized Bellman operator applied to q)."""
        self._k["greedy_policy"](self.mdp.a_indptr, q, self.ref, self.code, self.alpha,
                                 self.tau, pi_out, value_out, self.n_threads)

    def softmax(self, logits, out=None):
        """Per-state softmax of flat logits (into ``out`` if given); returns it."""
        if out is None:
            out = np.empty(self.mdp.n_pairs)
        self._k["segment_softmax"](self.mdp.a_indptr, logits, out, self.n_threads)
        return out
