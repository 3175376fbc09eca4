r"""fastppo on MPI: an MDP whose states are split into contiguous row blocks over ranks.

Run a script under ``mpiexec -n R python script.py``; every rank calls the same
functions with its own block (SPMD, as PETSc and madupite do)::

    from fastppo import distributed as D

    M = D.DistributedMDP.load("garnet.npz")     # each rank maps only its rows
    res = D.solve(M, fastppo.ReverseKL(0.1))    # res.v: this rank's states
    v = M.gather_states(res.v)                  # the whole vector on rank 0 (None elsewhere)

**Partition.** Rank q owns the states ``offsets[q]:offsets[q+1]`` (balanced by state count,
at least one state per rank) and all their pairs and transition rows. Every vector over
states or pairs is held by blocks: a rank's ``v``, ``d``, ``pi``, ``logits`` are its own
entries only. :meth:`DistributedMDP.load` maps the ``.npz`` written by ``MDP.save``
(uncompressed members, aligned) and reads only the rank's slice of each array;
:meth:`DistributedMDP.from_rows` builds the rows of the block from a callable (e.g. a
generator whose rows depend only on (seed, state)); :meth:`DistributedMDP.from_mdp`
takes them from an MDP every rank holds (tests, modest sizes).

**Products** run the existing compiled kernels (``bellman_matvec``, ``bellman_rmatvec``,
``q_values``, ...) on the local block. A rank stores its successor indices *rotated*,
j ↦ (j − lo) mod S, so that its own states are 0..n_local−1 in every kernel:

- (I − γP_π) x: the x entries are exchanged by ``Allgatherv`` into a buffer of length S in
  the rotated order (each rank's block stays contiguous), then the kernel computes the
  local rows exactly as one process would (same terms, same order, same bits).
- (I − γP_πᵀ) x: the kernel scatters the local rows' contributions into a length-S buffer
  (its ``a_indptr`` padded with empty states), which is rotated back and summed onto the
  owners by ``Reduce_scatter``.
- Dot products, norms and sums: per-rank partial results, gathered (``Allgather``) and
  added in rank order on every rank, so every rank gets the same bits and a run at a fixed
  rank count is reproducible bit for bit; max / min reduce exactly (``Allreduce``).

The linear solvers, the policy-iteration loop of :func:`fastppo.solve` and the
evaluator are fastppo's own (``fastppo._krylov``, ``fastppo._evaluator``), with their
reductions over states routed through a :class:`fastppo._krylov.Space` of this module.
Results equal one process's up to the round-off of the different summation order
(≤ 1e-12 at the default tolerances; tests check it).

Bytes moved per product per rank: 8·S (Allgatherv receives every other block; the
transposed product's Reduce_scatter sends and receives ~8·S). This is the "allgather to
start" design: each rank holds a few length-S buffers (x, the scattered contributions,
the padded ``a_indptr``), about 48·S bytes per rank (see benchmarks/RESULTS.md, "Issue 16:
MPI", for the scaling model). Run one rank per core: with R > 1, threads within a rank do
not speed up the transposed product (``bellman_rmatvec`` splits all S states into
per-thread chunks, and a rank's rows are the first S/R of them). Only the uniform π_ref is
supported.

**Errors.** Importing this module in a job of more than one rank installs
``sys.excepthook``: an exception on any rank
prints ``fastppo.distributed: rank r failed: ...`` and calls ``COMM_WORLD.Abort(1)``, so the
job ends (non-zero status) instead of hanging in a collective. A rank killed from outside
is reported by ``mpiexec`` (MPICH's names the rank and its exit code) and ends the job too.

**Checkpoints.** :meth:`PPOClip.save` gathers the iterate to rank 0, which writes one
``.npz`` (tag ``fastppo-distributed-checkpoint-1``, whole vectors in global state/pair
order, aligned like ``MDP.save``); :meth:`PPOClip.resume` maps it on every rank and takes
each rank's slice, so a run can resume at any rank count.
"""
import json
import math
import os
import sys
import time
import traceback

import numpy as np
from mpi4py import MPI

from . import _krylov
from . import _validation as V
from ._backend import get_kernel, resolve_backend, resolve_threads
from ._evaluator import DEFAULT_TOL, Evaluator, ppo_log_ref
from ._result import Result
from .mdp import Transitions, _map_member, _write_npz
from .solvers import MAX_INNER_STEPS, _clip_range, _first_policy, _policy_iteration

__all__ = ["DistributedMDP", "evaluate", "visitation", "solve", "PPOClip", "partition",
           "install_excepthook"]

CHECKPOINT_FORMAT = "fastppo-distributed-checkpoint-1"


# ------------------------------------------------------------------------- errors
ABORT_GRACE = 0.5  # seconds for mpiexec to forward the report before Abort ends the job


def _abort_on_error(exc_type, exc, tb):
    rank = MPI.COMM_WORLD.Get_rank()
    report = (f"fastppo.distributed: rank {rank} failed: {exc_type.__name__}: {exc}\n"
              + "".join(traceback.format_exception(exc_type, exc, tb)))
    sys.stderr.flush()
    os.write(2, report.encode(errors="replace"))  # one write: Abort cannot cut it in half
    time.sleep(ABORT_GRACE)
    MPI.COMM_WORLD.Abort(1)


def install_excepthook():
    """Make an uncaught exception on this rank abort the whole MPI job, naming the rank
    (done on import of this module when the job has more than one rank)."""
    sys.excepthook = _abort_on_error


if MPI.COMM_WORLD.Get_size() > 1:
    install_excepthook()


# ---------------------------------------------------------------------- partition
def partition(n_states, n_ranks):
    """Offsets of contiguous blocks of states balanced by count, shape (n_ranks + 1,).

    Rank q owns ``offsets[q]:offsets[q+1]``; every rank gets at least one state.
    """
    if n_states < n_ranks:
        raise ValueError(f"n_states = {n_states} is smaller than the number of ranks {n_ranks}: "
                         f"every rank needs at least one state")
    return np.array([q * n_states // n_ranks for q in range(n_ranks + 1)], dtype=np.int64)


class _Block:
    """The local rows as the Evaluator sees an MDP: ``n_states`` local states whose
    successor indices are rotated global ones (see the module docstring)."""

    def __init__(self, a_indptr, p_indptr, p_indices, p_data, r, gamma, rho):
        self.a_indptr, self.p_indptr, self.p_indices, self.p_data = a_indptr, p_indptr, p_indices, p_data
        self.r, self.gamma, self.rho = r, gamma, rho
        self.n_states = a_indptr.shape[0] - 1
        self.n_pairs = r.shape[0]
        self._transitions = Transitions(p_indptr, p_indices, p_data)
        self.s_indices = np.repeat(np.arange(self.n_states, dtype=np.int64), np.diff(a_indptr))

    def uniform_policy(self):
        counts = np.diff(self.a_indptr)
        return np.repeat(1.0 / counts, counts)


class DistributedMDP:
    """This rank's block of a finite discounted MDP split over the ranks of ``comm``.

    Build one with :meth:`load`, :meth:`from_rows` or :meth:`from_mdp` (collective calls:
    every rank of ``comm`` makes the same call).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        The ranks (None: ``COMM_WORLD``).
    n_states : int
        States of the whole MDP (at most 2³¹ − 1; at least one per rank).
    a_indptr, a_indices, p_indptr, p_indices, p_data, r
        This rank's block in ``fastppo.MDP``'s canonical form: ``a_indptr`` of length
        n_local + 1 and ``p_indptr`` (both may start at any offset), ``p_indices`` global
        state indices; checked here (bad rows are named by their global state).
    gamma : float
        Discount, < 1.
    rho : ndarray of shape (n_local,), optional
        This rank's entries of the start distribution (uniform by default).

    Attributes
    ----------
    comm : mpi4py.MPI.Comm
    rank, size : int
    n_states, n_pairs : int
        Of the whole MDP.
    offsets : ndarray of shape (size + 1,), int64
        State blocks: this rank owns ``lo = offsets[rank]`` to ``hi = offsets[rank + 1]``.
    pair_offsets : ndarray of shape (size + 1,), int64
        Pair blocks (pairs in global (state, action) order).
    lo, hi, n_local, n_local_pairs : int
    gamma : float
    a_indptr : ndarray of shape (n_local + 1,), int64
        Local pairs of local state i: ``a_indptr[i]:a_indptr[i+1]``.
    a_indices : ndarray of shape (n_local_pairs,)
        Action labels.
    r : ndarray of shape (n_local_pairs,)
    rho : ndarray of shape (n_local,)
        The start distribution's entries of the local states.
    """

    def __init__(self, comm, n_states, a_indptr, a_indices, p_indptr, p_indices, p_data, r,
                 gamma, rho=None):
        comm = MPI.COMM_WORLD if comm is None else comm
        self.comm, self.rank, self.size = comm, comm.Get_rank(), comm.Get_size()
        S = self.n_states = int(n_states)
        if S > np.iinfo(np.int32).max:
            raise ValueError(f"n_states must be <= 2**31 - 1 (int32 indices), got {S}")
        self.offsets = partition(S, self.size)
        self.lo, self.hi = int(self.offsets[self.rank]), int(self.offsets[self.rank + 1])
        n_local = self.n_local = self.hi - self.lo
        a_indptr = np.ascontiguousarray(a_indptr, dtype=np.int64)
        a_indptr = a_indptr - a_indptr[0]
        p_indptr = np.ascontiguousarray(p_indptr, dtype=np.int64)
        p_indptr = p_indptr - p_indptr[0]
        if np.asarray(p_data).dtype == np.float32:
            raise ValueError("fastppo.distributed does not support float32 transition storage "
                             "(an MDP built with dtype=np.float32); use a float64 MDP")
        p_data = np.ascontiguousarray(p_data, dtype=np.float64)
        r = np.ascontiguousarray(r, dtype=np.float64)
        _check_block(self, a_indptr, p_indptr, p_indices, p_data, r)
        self.gamma = V.check_gamma(gamma)
        if self.gamma >= 1.0:
            raise ValueError("fastppo.distributed needs gamma < 1 (discounted MDPs)")
        self.a_indptr, self.a_indices, self.r = a_indptr, np.asarray(a_indices), r
        counts = np.array(comm.allgather(int(r.shape[0])), dtype=np.int64)
        self.pair_offsets = np.concatenate(([0], np.cumsum(counts)))
        self.n_pairs = int(self.pair_offsets[-1])
        self.n_local_pairs = int(r.shape[0])
        if rho is None:
            rho = np.full(n_local, 1.0 / S)
        else:
            rho = V.as_float_array(rho, "rho")
            if rho.shape != (n_local,):
                raise ValueError(f"rho (this rank's block) must have shape ({n_local},), got {rho.shape}")
            if not (np.isfinite(rho).all() and (rho >= 0).all()):
                k = int(np.argmax(~(np.isfinite(rho) & (rho >= 0))))
                raise ValueError(f"rho must be finite and >= 0: rho[{self.lo + k}] = {rho[k]}")
            total = _rank_order_sum(comm, float(rho.sum()))
            if not abs(total - 1.0) <= 1e-10:
                raise ValueError(f"rho must sum to 1, sums to {total!r}")
        self.rho = rho
        # successor indices rotated by -lo: the local states are 0..n_local-1 in every kernel
        rotated = np.asarray(p_indices, dtype=np.int64) - self.lo
        rotated %= S
        self._block = _Block(a_indptr, p_indptr, rotated.astype(np.int32), p_data, r,
                             self.gamma, rho)
        self.nnz = int(comm.allreduce(int(p_data.shape[0])))

    # ------------------------------------------------------------- constructors
    @classmethod
    def load(cls, path, comm=None):
        """This rank's rows of an MDP saved by ``fastppo.MDP.save``, read by mapping the file
        (``path``; ``comm`` None: ``COMM_WORLD``).

        Each rank maps the uncompressed members of the ``.npz`` and copies only its own
        slice of ``a_indices``, ``r``, ``p_indptr``, ``p_indices``, ``p_data`` and ``rho``
        (plus n_local + 1 entries of ``a_indptr``); nothing of size O(nnz) is read whole.
        """
        import zipfile

        comm = MPI.COMM_WORLD if comm is None else comm
        with zipfile.ZipFile(path) as z:
            if "format.npy" not in z.namelist():
                raise ValueError(f"{path} is not a fastppo MDP file")
            maps = {}
            for name in ("a_indptr", "a_indices", "p_indptr", "p_indices", "p_data", "r", "rho"):
                try:
                    maps[name] = _map_member(path, z.getinfo(f"{name}.npy"))
                except KeyError:
                    raise ValueError(f"{path}: field {name!r} is missing") from None
            gamma = float(np.load(z.open("gamma.npy")))
            fmt = str(np.load(z.open("format.npy")))
        if fmt != "fastppo-mdp-1":
            raise ValueError(f"{path} is not a fastppo MDP file")
        S = maps["a_indptr"].shape[0] - 1
        offsets = partition(S, comm.Get_size())
        lo, hi = int(offsets[comm.Get_rank()]), int(offsets[comm.Get_rank() + 1])
        a_indptr = np.array(maps["a_indptr"][lo:hi + 1])
        k0, k1 = int(a_indptr[0]), int(a_indptr[-1])
        p_indptr = np.array(maps["p_indptr"][k0:k1 + 1])
        j0, j1 = int(p_indptr[0]), int(p_indptr[-1])
        return cls(comm, S, a_indptr, np.array(maps["a_indices"][k0:k1]), p_indptr,
                   np.array(maps["p_indices"][j0:j1]), np.array(maps["p_data"][j0:j1]),
                   np.array(maps["r"][k0:k1]), gamma, np.array(maps["rho"][lo:hi]))

    @classmethod
    def from_rows(cls, n_states, build, gamma, comm=None):
        """Each rank builds its own rows: ``build(lo, hi)`` returns ``(a_indptr, a_indices,
        p_indptr, p_indices, p_data, r)`` of the states ``lo..hi-1`` (``a_indptr`` of length
        hi − lo + 1, ``p_indices`` global state indices), optionally with ``rho`` (the
        states' start probabilities) as a 7th item."""
        comm = MPI.COMM_WORLD if comm is None else comm
        offsets = partition(int(n_states), comm.Get_size())
        rank = comm.Get_rank()
        parts = build(int(offsets[rank]), int(offsets[rank + 1]))
        return cls(comm, n_states, *parts[:6], gamma, *(parts[6:7]))

    @classmethod
    def from_mdp(cls, mdp, comm=None):
        """This rank's rows of an MDP every rank holds (e.g. built by the same seeded
        generator)."""
        comm = MPI.COMM_WORLD if comm is None else comm
        offsets = partition(mdp.n_states, comm.Get_size())
        lo, hi = int(offsets[comm.Get_rank()]), int(offsets[comm.Get_rank() + 1])
        a = mdp.a_indptr[lo:hi + 1]
        k0, k1 = int(a[0]), int(a[-1])
        p = mdp.p_indptr[k0:k1 + 1]
        j0, j1 = int(p[0]), int(p[-1])
        return cls(comm, mdp.n_states, a, mdp.a_indices[k0:k1], p, mdp.p_indices[j0:j1],
                   mdp.p_data[j0:j1], mdp.r[k0:k1], mdp.gamma, mdp.rho[lo:hi])

    # -------------------------------------------------------------- gather/scatter
    def _gather(self, x, offsets, root):
        x = np.ascontiguousarray(x, dtype=np.float64)
        counts = np.diff(offsets)
        if x.shape != (counts[self.rank],):
            raise ValueError(f"expected this rank's block of shape ({counts[self.rank]},), "
                             f"got {x.shape}")
        spec = [counts, offsets[:-1], MPI.DOUBLE]
        if root is None:
            out = np.empty(int(offsets[-1]))
            self.comm.Allgatherv(x, [out, *spec])
            return out
        out = np.empty(int(offsets[-1])) if self.rank == root else None
        self.comm.Gatherv(x, [out, *spec] if self.rank == root else None, root=root)
        return out

    def gather_states(self, x, root=0):
        """The whole vector over states from each rank's block: on ``root`` (None
        elsewhere), or on every rank when ``root`` is None."""
        return self._gather(x, self.offsets, root)

    def gather_pairs(self, x, root=0):
        """As :meth:`gather_states`, for a vector over pairs."""
        return self._gather(x, self.pair_offsets, root)

    def local_states(self, x):
        """This rank's block of a whole vector over states (a copy)."""
        return np.array(np.asarray(x)[self.lo:self.hi], dtype=np.float64)

    def local_pairs(self, x):
        """This rank's block of a whole vector over pairs (a copy)."""
        lo, hi = self.pair_offsets[self.rank], self.pair_offsets[self.rank + 1]
        return np.array(np.asarray(x)[lo:hi], dtype=np.float64)

    def __repr__(self):
        return (f"DistributedMDP(n_states={self.n_states:,}, n_pairs={self.n_pairs:,}, "
                f"nnz={self.nnz:,}, gamma={self.gamma}, rank {self.rank} of {self.size}: "
                f"states {self.lo}..{self.hi - 1})")


def _check_block(M, a_indptr, p_indptr, p_indices, p_data, r):
    """ValueError naming the first bad state or pair of the block (global indices)."""
    counts = np.diff(a_indptr)
    if a_indptr.shape != (M.n_local + 1,):
        raise ValueError(f"a_indptr of the states {M.lo}..{M.hi - 1} must have length "
                         f"{M.n_local + 1}, got {a_indptr.shape}")
    if (counts <= 0).any():
        raise ValueError(f"state {M.lo + int(np.argmax(counts <= 0))} has no actions")
    L = int(a_indptr[-1])
    if r.shape != (L,) or p_indptr.shape != (L + 1,):
        raise ValueError(f"the block has {L} pairs but r has shape {r.shape} and p_indptr "
                         f"{p_indptr.shape}")
    lengths = np.diff(p_indptr)
    if (lengths <= 0).any():
        raise ValueError(f"pair {int(np.argmax(lengths <= 0))} of rank {M.rank}'s block has no "
                         f"successors")
    idx = np.asarray(p_indices)
    if idx.shape != (int(p_indptr[-1]),) or p_data.shape != idx.shape:
        raise ValueError("p_indices and p_data must have length p_indptr[-1]")
    bad = (idx < 0) | (idx >= M.n_states)
    if bad.any():
        raise ValueError(f"p_indices[{int(np.argmax(bad))}] = {idx[bad][0]} of rank {M.rank}'s "
                         f"block is not a state (0..{M.n_states - 1})")
    bad = ~(np.isfinite(p_data) & (p_data >= 0))
    if bad.any() or not np.isfinite(r).all():
        raise ValueError(f"rank {M.rank}: transition probabilities must be finite and >= 0 "
                         f"and rewards finite")
    sums = np.add.reduceat(p_data, p_indptr[:-1]) if L else np.zeros(0)
    bad = np.abs(sums - 1.0) > 1e-10
    if bad.any():
        k = int(np.argmax(bad))
        s = M.lo + int(np.searchsorted(a_indptr, k, side="right") - 1)
        raise ValueError(f"the transition row of pair {k} of state {s} sums to {sums[k]!r}, not 1")


# ------------------------------------------------------------------ reductions
def _rank_order_sum(comm, partial):
    parts = comm.allgather(partial)
    total = 0.0
    for p in parts:
        total += p
    return total


class RankSpace(_krylov.Space):
    """Vectors held as row blocks over the ranks of ``comm``: reductions are per-rank
    partials gathered and added in rank order (the same bits on every rank)."""

    def __init__(self, comm, n):
        self.comm, self.n = comm, n
        self._parts = np.empty(comm.Get_size())
        self._one = np.empty(1)

    def _sum_parts(self, partial):
        self._one[0] = partial
        self.comm.Allgather(self._one, self._parts)
        total = 0.0
        for p in self._parts:
            total += p
        return float(total)

    def dot(self, a, b):
        return self._sum_parts(_krylov.dot(a, b))

    def dots(self, Vm, w):
        part = np.ascontiguousarray(Vm @ w, dtype=np.float64)
        parts = np.empty((self.comm.Get_size(), part.shape[0]))
        self.comm.Allgather(part, parts)
        total = parts[0].copy()
        for row in parts[1:]:
            total += row
        return total

    def sum(self, x):
        return self._sum_parts(float(x.sum()))

    def _reduce(self, value, op):
        self._one[0] = value
        out = np.empty(1)
        self.comm.Allreduce(self._one, out, op=op)
        return float(out[0])

    def min(self, x):
        return self._reduce(x.min(), MPI.MIN)

    def max(self, x):
        return self._reduce(x.max(), MPI.MAX)

    def amax(self, x):
        return self._reduce(float(np.max(np.abs(x))), MPI.MAX)

    def size(self, x):
        return self.n

    def all_equal(self, a, b):
        return bool(self.comm.allreduce(bool(np.array_equal(a, b)), op=MPI.LAND))


# ------------------------------------------------------------------- evaluator
class DistributedEvaluator(Evaluator):
    """fastppo's Evaluator on this rank's block: products exchange vector entries over
    MPI (module docstring), every reduction goes through a :class:`RankSpace`."""

    fuses_greedy = False  # Q̃ gathers x over MPI (q_values)

    def __init__(self, M, reg, backend, n_threads, **options):
        if reg is not None and getattr(reg, "ref", None) is not None:
            raise ValueError("fastppo.distributed supports the uniform reference policy only "
                             "(reg.ref must be None)")
        self.dmdp = M
        self.space = RankSpace(M.comm, M.n_states)
        super().__init__(M._block, reg, backend, n_threads, **options)
        S = M.n_states
        counts = np.diff(M.offsets)
        self._gather_spec = [counts, (M.offsets[:-1] - M.lo) % S, MPI.DOUBLE]
        self._counts = counts
        self._x = np.empty(S)        # x in rotated order (this rank's block first)
        self._y = None               # transposed product: rotated contributions, scratch

    def load(self, pi, patch=False):
        super().load(pi, patch)
        S, a = self.dmdp.n_states, self._rows[0]
        if self._y is None:
            self._y = (np.empty(S), np.empty(S), np.empty(S), np.empty(S + 1, dtype=np.int64),
                       np.empty((self.n_threads, S)))
        pad = self._y[3]
        pad[:a.shape[0]] = a
        pad[a.shape[0]:] = a[-1]
        self._rows_t = (pad, *self._rows[1:])

    def _gather_x(self, x):
        self.dmdp.comm.Allgatherv(np.ascontiguousarray(x), [self._x, *self._gather_spec])
        return self._x

    def matvec(self, x, out):
        """out = this rank's rows of (I − γP_π) x."""
        self.n_passes += 1
        self._rows_fresh = False
        self._k["bellman_matvec"](*self._rows, self._gather_x(x), out, self.n_threads)

    def rmatvec(self, x, out):
        """out = this rank's entries of (I − γP_πᵀ) x."""
        self.n_passes += 1
        M = self.dmdp
        xr, contrib, send, _, scratch = self._y
        n, S, lo = M.n_local, M.n_states, M.lo
        xr[:n] = x
        xr[n:] = 0.0
        self._k["bellman_rmatvec"](*self._rows_t, xr, contrib, scratch, self.n_threads)
        send[lo:] = contrib[:S - lo]  # back to global order
        send[:lo] = contrib[S - lo:]
        M.comm.Reduce_scatter(send, out, recvcounts=self._counts, op=MPI.SUM)

    def q_values(self, v, out=None):
        mdp = self.mdp
        q = np.empty(mdp.n_pairs) if out is None else out
        self._k["q_values"](mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, mdp.gamma,
                            self._gather_x(v), q, self.n_threads)
        return q

    def products(self, x_value, x_visit, out_value, out_visit, exact=True):
        """The lockstep sweep's two products, each with its own exchange (exact, float64:
        no fused pass or float32 corrections across ranks)."""
        if x_value is not None:
            self.matvec(x_value, out_value)  # (Q̃ then comes from q_values, not the rows)
        if x_visit is not None:
            self.rmatvec(x_visit, out_visit)
        return True

    def _transposed_rows(self):
        """No transposed gather across ranks: the visitation's products scatter and exchange."""
        return None

    def _row_sweeps_apply(self):
        """No one-pass sweeps across ranks: each sweep's product exchanges x (``matvec``),
        and its reductions go through the rank space."""
        return False

    # the assembled matrix, its LU and SGS need every row in one process: Krylov only
    assembled = None


def _evaluator(M, reg, backend, n_threads, tol):
    if not isinstance(M, DistributedMDP):
        raise TypeError(f"expected a DistributedMDP, got {type(M).__name__}")
    return DistributedEvaluator(M, reg, resolve_backend(backend), resolve_threads(n_threads),
                                tol=V.check_positive(tol, "tol"))


def _local(M, x, n, name):
    x = V.as_float_array(x, name)
    if x.shape != (n,):
        raise ValueError(f"{name} (rank {M.rank}'s block) must have shape ({n},), got {x.shape}")
    return np.ascontiguousarray(x)


# ------------------------------------------------------------------- public API
def evaluate(M, pi, reg=None, *, tol=DEFAULT_TOL, backend=None, n_threads=None):
    """Ṽ, Q̃, Ã and J of a policy, as :func:`fastppo.evaluate` (collective).

    Parameters
    ----------
    M : DistributedMDP
    pi : ndarray of shape (n_local_pairs,)
        This rank's pairs of the policy (flat, checked by the caller: ≥ 0, sums to 1 per
        state; e.g. ``M.local_pairs(whole_policy)``).
    reg : Regularizer, optional
        With the uniform π_ref.
    tol : float, default 1e-12
        Relative residual of the linear solve.
    backend, n_threads
        Kernel backend and threads per rank.

    Returns
    -------
    Evaluation
        ``v`` (n_local,), ``q`` and ``adv`` (n_local_pairs,): this rank's entries; ``J`` and
        the solve's ``n_matvec``, ``residual``, ``method``: the same on every rank.
    """
    E = _evaluator(M, reg, backend, n_threads, tol)
    E.load(_local(M, pi, M.n_local_pairs, "pi"))
    return E.evaluation()


def visitation(M, pi, mu=None, *, tol=DEFAULT_TOL, backend=None, n_threads=None,
               full_output=False):
    """d^π_μ, as :func:`fastppo.visitation` (collective).

    Parameters
    ----------
    M : DistributedMDP
    pi : ndarray of shape (n_local_pairs,)
        This rank's pairs of the policy.
    mu : ndarray of shape (n_local,), optional
        This rank's entries of the start distribution; default ρ.
    tol : float, default 1e-12
    backend, n_threads
        Kernel backend and threads per rank.
    full_output : bool, default False
        Return the Result (``d``, ``n_matvec``, ``residual``, ``method``) instead of ``d``.

    Returns
    -------
    ndarray of shape (n_local,)
        This rank's states of d.
    """
    E = _evaluator(M, None, backend, n_threads, tol)
    E.load(_local(M, pi, M.n_local_pairs, "pi"))
    mu = M.rho if mu is None else _local(M, mu, M.n_local, "mu")
    res = E.visitation(mu)
    return res if full_output else res.d


def solve(M, reg=None, *, tol=1e-12, max_iter=100, lin_tol=1e-13, backend=None, n_threads=None):
    """The regularized optimum by policy iteration, as :func:`fastppo.solve` (the same
    loop), on the distributed MDP (collective).

    Parameters
    ----------
    M : DistributedMDP
    reg : Regularizer, optional
        With the uniform π_ref; None: the plain MDP.
    tol, max_iter, lin_tol
        As in :func:`fastppo.solve`.
    backend, n_threads
        Kernel backend and threads per rank.

    Returns
    -------
    Result
        ``policy``, ``q``, ``adv`` (this rank's pairs, flat), ``v`` (this rank's states),
        ``J``, ``n_iter``, ``bellman_residual``, ``n_matvec``, ``converged``.
    """
    tol = V.check_positive(tol, "tol")
    max_iter = V.check_int(max_iter, "max_iter")
    E = _evaluator(M, reg, backend, n_threads, lin_tol)
    pi = _first_policy(E, None, None)
    pi, ev, it, residual, n_matvec, converged = _policy_iteration(E, pi, None, tol, max_iter,
                                                                   E.tol)
    return Result(policy=pi, v=ev.v, q=ev.q, adv=ev.adv, J=ev.J, n_iter=it,
                  bellman_residual=residual, n_matvec=n_matvec, converged=converged,
                  backend=E.backend)


HISTORY = [("iter", np.int64), ("J", np.float64), ("max_abs_adv", np.float64),
           ("clipfrac", np.float64), ("kl", np.float64), ("grad_norm", np.float64),
           ("n_matvec", np.int64), ("seconds", np.float64)]


class PPOClip:
    """Deterministic PPO-Clip (:class:`fastppo.PPOClip`'s update and history) on a
    distributed MDP: the same iterates up to round-off.

    Parameters
    ----------
    M : DistributedMDP
    reg : Regularizer, optional
        With the uniform π_ref.
    clip, inner_steps, lr, step_scale, lin_tol, warm_start, backend, n_threads
        As in :class:`fastppo.PPOClip` (the weighting μ is ρ, mixed with uniform when ρ
        lacks full support; the initial logits log π_ref).

    Attributes
    ----------
    logits, pi : ndarray of shape (n_local_pairs,)
        This rank's pairs.
    history : structured ndarray
        One row per iteration (``iter``, ``J``, ``max_abs_adv``, ``clipfrac``, ``kl``,
        ``grad_norm``, ``n_matvec``, ``seconds``), the same on every rank.
    """

    def __init__(self, M, reg=None, clip=0.2, inner_steps=10, lr=None, *, step_scale=1.0,
                 lin_tol=DEFAULT_TOL, warm_start=True, backend=None, n_threads=None):
        self.M, self.reg = M, reg
        self.eps_low, self.eps_high = _clip_range(clip)
        self.inner_steps = V.check_int(inner_steps, "inner_steps", maximum=MAX_INNER_STEPS)
        self.lin_tol = V.check_positive(lin_tol, "lin_tol")
        self.warm_start = V.check_bool(warm_start, "warm_start")
        E = self._E = _evaluator(M, reg, backend, n_threads, self.lin_tol)
        self.backend, self.n_threads = E.backend, E.n_threads
        full = M.comm.allreduce(bool((M.rho > 0).all()), op=MPI.LAND)
        self.mu = M.rho if full else 0.5 * (M.rho + 1.0 / M.n_states)
        self.logits = np.log(M._block.uniform_policy() if E.tau == 0 else E.ref)
        self.pi = E.softmax(self.logits)
        self._log_ref = ppo_log_ref(E.code, E.tau, E.ref)  # once per run (reverse KL)
        self._v = self._d = None
        if lr is None:
            step_scale = V.check_positive(step_scale, "step_scale")
            E.load(self.pi)
            self._d = E.visitation(self.mu).d
            lr = step_scale * (1.0 - M.gamma) / E.space.max(self._d)
        self.lr = V.check_positive(lr, "lr")
        self.n_iter = 0
        self._rows = []

    @property
    def history(self):
        return np.array([tuple(r[k] for k, _ in HISTORY) for r in self._rows], dtype=HISTORY)

    def step(self):
        """One outer iteration; returns its history row (a dict)."""
        t0 = time.perf_counter()
        M, E = self.M, self._E
        E.load(self.pi)
        warm = (self._v, self._d) if self.warm_start else (None, None)
        ev, vis = E.evaluation_and_visitation(self.mu, *warm)
        self._d = vis.d
        weight = vis.d / (1.0 - M.gamma)
        n = M.n_local
        pi_new = np.empty(M.n_local_pairs)
        clipped = np.empty(n, dtype=np.int64)
        gsq, kl = np.empty(n), np.empty(n)
        get_kernel("ppo_update", self.backend)(
            M.a_indptr, self.pi, ev.adv, weight, E.ref, self._log_ref, E.code, E.alpha, E.tau,
            self.eps_low, self.eps_high, 0.0, self.lr, self.inner_steps, self.logits, pi_new,
            clipped, gsq, kl, self.n_threads)
        bad = ~np.isfinite(self.logits)
        if bad.any():
            k = int(np.argmax(bad))
            raise FloatingPointError(f"PPOClip: non-finite logits at iteration {self.n_iter + 1} "
                                     f"(pair {M.pair_offsets[M.rank] + k}); reduce lr")
        self.pi = pi_new
        self.n_iter += 1
        self._v = ev.v
        S = E.space
        row = dict(iter=self.n_iter, J=ev.J, max_abs_adv=S.amax(ev.adv),
                   clipfrac=M.comm.allreduce(int(clipped.sum())) / M.n_pairs,
                   kl=S.dot(self._d, np.maximum(kl, 0.0)), grad_norm=math.sqrt(S.sum(gsq)),
                   n_matvec=ev.n_matvec + vis.n_matvec, seconds=time.perf_counter() - t0)
        self._rows.append(row)
        return row

    def run(self, n_iter, checkpoint=None, every=1):
        """``n_iter`` more iterations; with ``checkpoint`` (a file name) :meth:`save` after
        every ``every`` iterations and at the end. Returns the history."""
        n_iter = V.check_int(n_iter, "n_iter", minimum=0)
        for i in range(1, n_iter + 1):
            self.step()
            if checkpoint is not None and (i % every == 0 or i == n_iter):
                self.save(checkpoint)
        return self.history

    # ---------------------------------------------------------------- checkpoints
    def _settings(self):
        return dict(clip=[self.eps_low, self.eps_high], inner_steps=self.inner_steps,
                    lr=self.lr, lin_tol=self.lin_tol, warm_start=self.warm_start,
                    regularizer=None if self.reg is None else
                    {"name": type(self.reg).__name__, "tau": self.reg.tau,
                     "alpha": getattr(self.reg, "alpha", None)})

    def save(self, path):
        """Write a checkpoint to the file ``path`` (collective; rank 0 writes).

        Fields: ``format``, ``n_states``, ``n_pairs``, ``n_iter``, ``settings`` (JSON),
        ``history``, and the whole vectors ``logits``, ``mu`` and (after the first
        iteration) ``v_warm``, ``d_warm`` in global order.
        """
        M = self.M
        arrays = dict(logits=M.gather_pairs(self.logits), mu=M.gather_states(self.mu))
        for name, x in (("v_warm", self._v), ("d_warm", self._d)):
            if x is not None:
                arrays[name] = M.gather_states(x)
        if M.rank == 0:
            meta = dict(format=np.array(CHECKPOINT_FORMAT), n_states=np.int64(M.n_states),
                        n_pairs=np.int64(M.n_pairs), n_iter=np.int64(self.n_iter),
                        settings=np.array(json.dumps(self._settings())), history=self.history)
            tmp = f"{path}.tmp"
            with open(tmp, "wb") as f:
                _write_npz(f, {**meta, **arrays})
            os.replace(tmp, path)
        M.comm.Barrier()

    @classmethod
    def resume(cls, path, M, reg=None, *, backend=None, n_threads=None):
        """The run saved at ``path`` on the distributed MDP ``M`` (any rank count), with
        the same regularizer ``reg``; ValueError naming the field that does not match."""
        import zipfile

        with zipfile.ZipFile(path) as z:
            def small(name):
                return np.load(z.open(f"{name}.npy"))

            if str(small("format")) != CHECKPOINT_FORMAT:
                raise ValueError(f"{path} is not a fastppo.distributed checkpoint")
            if (int(small("n_states")), int(small("n_pairs"))) != (M.n_states, M.n_pairs):
                raise ValueError(f"{path}: n_states/n_pairs do not match the MDP")
            settings = json.loads(str(small("settings")))
            history, n_iter = small("history"), int(small("n_iter"))
            maps = {name[:-4]: _map_member(path, z.getinfo(name)) for name in z.namelist()
                    if name[:-4] in ("logits", "mu", "v_warm", "d_warm")}
        spec = settings.pop("regularizer")
        mine = None if reg is None else {"name": type(reg).__name__, "tau": reg.tau,
                                         "alpha": getattr(reg, "alpha", None)}
        if spec != mine:
            raise ValueError(f"{path}: the regularizer {mine} differs from the checkpoint's {spec}")
        run = cls(M, reg, clip=settings["clip"], inner_steps=settings["inner_steps"],
                  lr=settings["lr"], lin_tol=settings["lin_tol"],
                  warm_start=settings["warm_start"], backend=backend, n_threads=n_threads)
        run.logits = M.local_pairs(maps["logits"])
        run.pi = run._E.softmax(run.logits)
        run.mu = M.local_states(maps["mu"])
        run._v = M.local_states(maps["v_warm"]) if "v_warm" in maps else None
        run._d = M.local_states(maps["d_warm"]) if "d_warm" in maps else None
        run.n_iter = n_iter
        run._rows = [{k: h[k].item() for k, _ in HISTORY} for h in history]
        return run
