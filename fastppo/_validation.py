"""The one place that turns user input into fastppo's canonical arrays.

Canonical form of an MDP (QuantEcon's state-action-pair layout):

- pairs sorted by (state, action); ``a_indptr`` of shape (n_states + 1,), int64:
  the pairs of state ``s`` are ``a_indptr[s]:a_indptr[s + 1]`` (never empty);
- ``a_indices`` of shape (n_pairs,), int64: the action label of each pair,
  strictly increasing within a state;
- transitions as CSR of shape (n_pairs, n_states): ``p_indptr`` int64,
  ``p_indices`` int32 (sorted, distinct within a row), ``p_data`` float64
  (finite, non-negative, each row summing to 1 within 1e-8), or float32 when asked for
  (``dtype=np.float32``: see "Compact storage" below);
- ``r`` of shape (n_pairs,), float64, finite;
- ``gamma`` in [0, 1] (1 only for episodic MDPs: :func:`check_episodic`); ``rho`` of
  shape (n_states,), a probability vector.

Every check raises ``ValueError`` (``TypeError`` for wrong types) whose message
names the first offending state, pair or argument.

Input dtypes (one rule for every constructor, ``MDP(...)`` and ``MDP.load``): values
are checked before any cast, so nothing is truncated, wrapped or silently dropped.

- Index arrays (``s_indices``, ``a_indices``, ``a_indptr``, ``p_indptr``, ``p_indices``,
  a Gymnasium next state): any integer dtype, or a float dtype whose values are all
  integers (``3.0``, never ``3.5``, NaN or inf); every value must fit int64, and next
  states must lie in ``[0, n_states)``.
- ``n_states`` ≤ ``MAX_STATES`` = 2³¹ − 1: next-state indices are stored as int32 (the
  kernels read them as unsigned 32-bit indices).
- Real arrays (``P``, ``R``/``r``, ``p_data``, ``rho``, policies, tables): bool, integer
  or float dtypes; complex dtypes are rejected, even with a zero imaginary part.

Compact storage (``dtype=np.float32`` in the constructors and generators; opt-in, float64
is the default and float32 input is then read exactly as float64, never down-cast
unasked): ``p_data`` is stored as float32, rounded to nearest from the input; indices
stay int32 (signed: they already reach 2³¹ − 1 states, and every kernel reads them
unsigned), ``p_indptr`` int64. Everything else (rewards, ρ, values, visitations,
gradients, every sum) stays float64. Rounding moves each entry by at most 2⁻²⁴ of
itself, so a row's sum by at most 2⁻²⁴ ≈ 6e-8 (sums are taken in float64): float32 rows
must sum to 1 within ``ROW_SUM_TOL_FLOAT32`` = 1e-7 (1e-8 for the input plus the
rounding); so must float32 input read as float64 (its sums are no closer to 1), while
float64 input stored as float64 keeps ``ROW_SUM_TOL``. The MDP fastppo solves is the
stored one with each float32 row divided by its float64 sum (in the kernels, as they
read it: kernels/numba/_probability.py), so that P 1 = 1 to float64 round-off, which
the solvers' invariants need (Richardson's mass and MacQueen bounds; without it the
lockstep sweeps stall near 1e-10 and fall to the assembled solvers). Each entry then
differs from the float64 input's by at most 2⁻²³ of itself, a row by 2⁻²³ in ℓ1, and the
values of any policy by at most 2⁻²³ γ/(1 − γ) · max|v| (the issue's b·2⁻²⁴·γ/(1−γ)
for b ≥ 2).
"""
import numbers

import numpy as np
import scipy.sparse as sp

ROW_SUM_TOL = 1e-8
ROW_SUM_TOL_FLOAT32 = 1e-7  # ROW_SUM_TOL + the rounding to float32 (≤ 2⁻²⁴ of the row's sum)
TRANSITION_DTYPES = (np.dtype(np.float64), np.dtype(np.float32))
MAX_STATES = int(np.iinfo(np.int32).max)  # next-state indices are int32
_INT64_MAX = int(np.iinfo(np.int64).max)


def check_gamma(gamma):
    """A discount in [0, 1]; γ = 1 is checked against the MDP by :func:`check_episodic`."""
    if isinstance(gamma, bool) or not isinstance(gamma, numbers.Real):
        raise TypeError(f"gamma must be a real number, got {type(gamma).__name__}")
    gamma = float(gamma)
    if not 0.0 <= gamma <= 1.0:
        raise ValueError(f"gamma must be in [0, 1), got {gamma} (or 1 for an episodic MDP "
                         "in which every policy terminates)")
    return gamma


def check_episodic(mdp):
    """γ = 1 needs every policy to terminate: the non-terminal states form a DAG."""
    try:
        mdp.topological_order
    except ValueError as exc:
        raise ValueError(f"gamma must be in [0, 1), got 1.0: gamma = 1 needs an episodic MDP in "
                         f"which every policy terminates, but {exc}") from None


def check_discounted(mdp, what):
    """Refuse γ = 1 in the entry points whose formulas still divide by 1 − γ (NPG,
    KLPenaltyPPO)."""
    if mdp.gamma == 1.0:
        raise NotImplementedError(
            f"{what} does not support gamma = 1 (episodic MDPs) yet: evaluate, visitation, "
            "gradient, solve, PPOClip, SoftmaxPG and SampledPPO do; for this one use "
            "gamma < 1 (e.g. 0.9999)")


def acyclic_order(mdp):
    """The non-terminal states in an order in which every transition between them goes
    forward: int32 array of shape (n_nonterminal,).

    Only transitions with positive probability count; terminal states (absorbing, zero
    reward: ``MDP.terminal``) are left out, their self-loops are not cycles. When the
    index order already works (every such transition goes to a higher index, e.g.
    ``token_mdp``), it is returned and no more is needed. Otherwise the strongly connected
    components of the successor graph (``scipy.sparse.csgraph.connected_components``)
    either show a cycle, or, all of size one, give the order (SciPy numbers them sinks
    first; the order is verified, with Kahn's algorithm as fallback).

    Raises
    ------
    ValueError
        Naming a state on a cycle (a self-loop names its pair).
    """
    from scipy.sparse.csgraph import connected_components

    S = mdp.n_states
    term = mdp.terminal
    per_state = np.diff(mdp.p_indptr[mdp.a_indptr])
    src = np.repeat(np.arange(S, dtype=np.int32), per_state)
    dst = mdp.p_indices
    keep = (mdp.p_data > 0) & ~term[src] & ~term[dst]
    loop = keep & (src == dst)
    if loop.any():
        j = int(np.argmax(loop))
        k = int(np.searchsorted(mdp.p_indptr, j, side="right") - 1)
        raise ValueError(f"state {src[j]} lies on a cycle: {mdp.pair_name(k)} returns to it "
                         f"with probability {mdp.p_data[j]}")
    live = np.flatnonzero(~term).astype(np.int32)
    src, dst = src[keep], dst[keep]
    del keep, loop
    if (dst > src).all():
        return live
    graph = sp.csr_array((np.ones(src.size, dtype=np.int8), (src, dst)), shape=(S, S))
    _, labels = connected_components(graph, directed=True, connection="strong")
    sizes = np.bincount(labels)
    if (sizes > 1).any():
        s = int(np.argmax(sizes[labels] > 1))
        members = np.flatnonzero(labels == labels[s])
        shown = ", ".join(map(str, members[:6])) + (", ..." if members.size > 6 else "")
        raise ValueError(f"state {s} lies on a cycle (strongly connected states: {shown}; "
                         f"{members.size} in all)")
    order = np.argsort(-labels, kind="stable").astype(np.int32)
    order = order[~term[order]]
    position = np.empty(S, dtype=np.int64)
    position[order] = np.arange(order.size)
    if (position[src] < position[dst]).all():
        return order
    return kahn_order(graph, live)


def kahn_order(graph, live):
    """Kahn's algorithm, one vectorised step per level: a topological order of the
    states ``live`` of the acyclic CSR ``graph`` (edges among ``live`` only)."""
    indegree = np.bincount(graph.indices, minlength=graph.shape[0])
    frontier = live[indegree[live] == 0]
    levels = []
    while frontier.size:
        levels.append(frontier)
        successors = graph[frontier].indices
        indegree -= np.bincount(successors, minlength=graph.shape[0])
        candidates = np.unique(successors)
        frontier = candidates[indegree[candidates] == 0].astype(np.int32)
    return np.concatenate(levels).astype(np.int32) if levels else live[:0]


def check_finite(x, name):
    bad = ~np.isfinite(x)
    if bad.any():
        i = np.unravel_index(int(np.argmax(bad)), x.shape)
        raise ValueError(f"{name} must be finite: {name}[{', '.join(map(str, i))}] = {x[i]}")


def as_float_array(x, name, copy=False, dtype=np.float64):
    """``x`` as a float64 (or ``dtype``) ndarray; TypeError (not numpy's ValueError) for
    non-numbers and for complex input (never its real part alone)."""
    try:
        x = np.asarray(x)
        if x.dtype.kind == "c":
            raise TypeError
        return np.array(x, dtype=dtype, copy=copy or None)
    except (TypeError, ValueError):
        got = f", got dtype {x.dtype}" if isinstance(x, np.ndarray) and x.dtype.kind == "c" else ""
        raise TypeError(f"{name} must be an array of real numbers{got}") from None


def check_transition_dtype(dtype):
    """The storage dtype of transition probabilities: numpy.float64 (default, also for
    None) or numpy.float32 (compact storage, see the module docstring)."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise TypeError(f"dtype must be numpy.float64 or numpy.float32, got {dtype!r}") from None
    if dt not in TRANSITION_DTYPES:
        raise ValueError(f"dtype must be numpy.float64 or numpy.float32 (the storage of the "
                         f"transition probabilities), got {dt}")
    return dt


def row_sum_tol(*p_data):
    """How far from 1 a row may sum: ``ROW_SUM_TOL_FLOAT32`` when any of the given arrays
    (the input, the stored) is float32 (float32 numbers read as float64 sum to 1 only as
    well as float32 rounding allows), else ``ROW_SUM_TOL``."""
    return ROW_SUM_TOL_FLOAT32 if any(getattr(x, "dtype", None) == np.float32 for x in p_data) \
        else ROW_SUM_TOL


def check_float64_storage(mdp, what):
    """ValueError naming ``what`` when ``mdp`` stores its transitions as float32 (for the
    paths not built for compact storage)."""
    if getattr(mdp, "p_data", np.empty(0)).dtype != np.float64:
        raise ValueError(f"{what} does not support float32 transition storage (an MDP built "
                         f"with dtype=np.float32); use a float64 MDP")


def check_n_states(n_states):
    """The number of states: an integer in [1, MAX_STATES]."""
    n_states = check_int(n_states, "n_states")
    if n_states > MAX_STATES:
        raise ValueError(f"n_states = {n_states} is too large: next-state indices are stored as int32, "
                         f"so at most {MAX_STATES} states")
    return n_states


def index_array(x, name):
    """A 1-D array of integers, checked before any cast (see the dtype rule above).

    Integer input keeps its dtype (no copy; every value fits int64); float input holding
    integers becomes int64. TypeError for other dtypes and for non-integral floats,
    ValueError (naming the position) for values beyond int64.
    """
    x = np.asarray(x)
    if x.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
    kind = x.dtype.kind
    if x.size == 0:
        return np.zeros(0, dtype=np.int64)
    if kind == "u" and x.max() > _INT64_MAX:
        i = int(np.argmax(x > _INT64_MAX))
        raise ValueError(f"{name}[{i}] = {x[i]} is out of the int64 range")
    if kind in "iu":
        return x
    if kind != "f":
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(x) | (x != np.trunc(x))
    if bad.any():
        i = int(np.argmax(bad))
        raise TypeError(f"{name} must hold integers, got dtype {x.dtype}: {name}[{i}] = {x[i].item()!r}")
    bad = np.abs(x) >= 2.0 ** 63
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{name}[{i}] = {x[i].item()!r} is out of the int64 range")
    return x.astype(np.int64)


def _as_index_array(x, name):
    """:func:`index_array` as int64."""
    return index_array(x, name).astype(np.int64, copy=False)


def check_index(x, name):
    """One integer index (an int, or a float holding an integer) as a Python int."""
    if not isinstance(x, (bool, np.bool_)):
        if isinstance(x, numbers.Integral):
            return int(x)
        if isinstance(x, numbers.Real) and float(x).is_integer():
            return int(x)
    raise TypeError(f"{name} must be an integer, got {x!r}")


def check_real(x, name):
    """One real number (not complex, not bool) as a Python float."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {x!r}")
    return float(x)


def check_distribution(x, n_states, name):
    """A probability vector over states (None means uniform)."""
    if x is None:
        return np.full(n_states, 1.0 / n_states)
    x = as_float_array(x, name, copy=True)
    if x.shape != (n_states,):
        raise ValueError(f"{name} must have shape ({n_states},), got {x.shape}")
    check_finite(x, name)
    if (x < 0).any():
        s = int(np.argmax(x < 0))
        raise ValueError(f"{name} must be non-negative: {name}[{s}] = {x[s]}")
    total = x.sum()
    if abs(total - 1.0) > ROW_SUM_TOL:
        raise ValueError(f"{name} must sum to 1, sums to {float(total)!r} (off by {total - 1.0:.3g})")
    return x


def as_csr(P, shape, name="P", dtype=np.float64):
    """A float64 CSR copy of ``P`` (dense or any scipy.sparse) with sorted, summed indices;
    with ``dtype=np.float32``, a float32 ``P`` stays float32 (no float64 copy; any other
    input is made float64 here and rounded by the caller)."""
    dtype = np.float32 if (np.dtype(dtype) == np.float32 and getattr(P, "dtype", None) == np.float32) \
        else np.float64
    if sp.issparse(P):
        if P.dtype.kind == "c":
            raise TypeError(f"{name} must hold real numbers, got dtype {P.dtype}")
        if P.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {P.shape}")
        # copy first: a CSR built from (data, indices, indptr) views its inputs and
        # sort_indices / sum_duplicates would reorder the caller's arrays in place
        P = sp.csr_array(P, dtype=dtype, copy=True)
    else:
        P = np.asarray(P)
        if P.dtype == object or not (np.issubdtype(P.dtype, np.number) or P.dtype == bool):
            raise TypeError(f"{name} must be a numeric array or a scipy.sparse matrix")
        if P.dtype.kind == "c":
            raise TypeError(f"{name} must hold real numbers, got dtype {P.dtype}")
        if P.shape != shape:
            raise ValueError(f"{name} must have shape {shape}, got {P.shape}")
        # non-finite entries are reported by check_canonical, naming the (s, a) pair
        P = sp.csr_array(P.astype(dtype))
    P.sum_duplicates()
    P.eliminate_zeros()  # explicit zeros would make the canonical form depend on the input form
    P.sort_indices()
    return P


def canonical_from_pairs(s_indices, a_indices, P, R, n_states, dtype=np.float64):
    """Sort and check a state-action-pair MDP; return the canonical arrays.

    Parameters
    ----------
    s_indices, a_indices : array_like of shape (n_pairs,)
    P : array_like or scipy.sparse of shape (n_pairs, n_states)
    R : array_like of shape (n_pairs,)
    n_states : int
    dtype : {numpy.float64, numpy.float32}
        Storage of ``p_data`` (:func:`check_transition_dtype`).

    Returns
    -------
    dict with a_indptr, a_indices, p_indptr, p_indices, p_data, r
    """
    dtype = check_transition_dtype(dtype)
    n_states = check_n_states(n_states)
    s_indices = _as_index_array(s_indices, "s_indices")
    a_indices = _as_index_array(a_indices, "a_indices")
    n_pairs = s_indices.size
    if a_indices.size != n_pairs:
        raise ValueError(
            f"s_indices and a_indices must have the same length, got {n_pairs} and {a_indices.size}"
        )
    if n_pairs == 0:
        raise ValueError("the MDP has no state-action pairs")
    if (s_indices < 0).any() or (s_indices >= n_states).any():
        k = int(np.argmax((s_indices < 0) | (s_indices >= n_states)))
        raise ValueError(
            f"pair {k}: state index {s_indices[k]} out of range [0, {n_states})"
        )
    if (a_indices < 0).any():
        k = int(np.argmax(a_indices < 0))
        raise ValueError(f"pair {k} (s={s_indices[k]}): negative action index {a_indices[k]}")
    R = as_float_array(R, "R")
    if R.shape != (n_pairs,):
        raise ValueError(f"R must have shape ({n_pairs},), got {R.shape}")
    P = as_csr(P, (n_pairs, n_states), dtype=dtype)

    order = np.lexsort((a_indices, s_indices))
    s_sorted, a_sorted = s_indices[order], a_indices[order]
    dup = (s_sorted[1:] == s_sorted[:-1]) & (a_sorted[1:] == a_sorted[:-1])
    if dup.any():
        k = int(np.argmax(dup))
        raise ValueError(f"duplicate state-action pair (s={s_sorted[k]}, a={a_sorted[k]})")
    counts = np.bincount(s_sorted, minlength=n_states)
    if (counts == 0).any():
        raise ValueError(f"state {int(np.argmax(counts == 0))} has no actions")
    for name, x in (("R", R),):
        bad = ~np.isfinite(x)
        if bad.any():
            k = int(np.argmax(bad))
            hint = " (an infeasible action? infeasible='drop' removes such pairs)" if x[k] == -np.inf else ""
            raise ValueError(
                f"{name} must be finite: pair (s={s_indices[k]}, a={a_indices[k]}) has {x[k]}{hint}"
            )
    P = P[order]
    P.sort_indices()
    a_indptr = np.zeros(n_states + 1, dtype=np.int64)
    np.cumsum(counts, out=a_indptr[1:])
    arrays = dict(
        a_indptr=a_indptr,
        a_indices=a_sorted,
        p_indptr=P.indptr.astype(np.int64),
        p_indices=P.indices.astype(np.int32),
        p_data=P.data.astype(dtype),
        r=R[order],
    )
    check_canonical(**arrays, n_states=n_states, row_tol=row_sum_tol(P, arrays["p_data"]))
    return arrays


def canonical_arrays(a_indptr, a_indices, p_indptr, p_indices, p_data, r, copy=True,
                     dtype=np.float64):
    """The canonical arrays of ``MDP(...)`` and ``MDP.load``, checked; returns (dict, n_states).

    Values are checked before they are cast to the canonical dtypes (the rule above), then
    by :func:`check_canonical`. ``copy=False`` takes over arrays that already have the
    canonical dtype and layout (fresh ones, e.g. just loaded). ``dtype``: the storage of
    ``p_data`` (:func:`check_transition_dtype`).
    """
    dtype = check_transition_dtype(dtype)
    def conv(x, dtype):
        return np.array(x, dtype=dtype, order="C") if copy else np.ascontiguousarray(x, dtype=dtype)

    row_tol = row_sum_tol(p_data, np.empty(0, dtype=dtype))
    a_indptr = index_array(a_indptr, "a_indptr")
    if a_indptr.shape[0] < 2:
        raise ValueError("the MDP must have at least one state (a_indptr of length >= 2)")
    n_states = check_n_states(a_indptr.shape[0] - 1)
    arrays = dict(
        a_indptr=conv(a_indptr, np.int64),
        a_indices=conv(index_array(a_indices, "a_indices"), np.int64),
        p_indptr=conv(index_array(p_indptr, "p_indptr"), np.int64),
        p_indices=index_array(p_indices, "p_indices"),  # cast to int32 once in range
        p_data=conv(as_float_array(p_data, "p_data", dtype=dtype), dtype),
        r=conv(as_float_array(r, "r"), np.float64),
    )
    check_canonical(**arrays, n_states=n_states, row_tol=row_tol)
    arrays["p_indices"] = conv(arrays["p_indices"], np.int32)
    return arrays, n_states


def check_canonical(a_indptr, a_indices, p_indptr, p_indices, p_data, r, n_states, row_tol=None):
    """Check canonical arrays in O(nnz) time without copying them.

    Raises ValueError naming the first offending pair (as (s, a)). Row sums are taken in
    float64 whatever the storage, to within ``row_tol`` (default :func:`row_sum_tol`).
    """
    if r.ndim != 1:
        raise ValueError(f"r must be one-dimensional, got shape {r.shape}")
    n_pairs = r.shape[0]
    if a_indptr.shape != (n_states + 1,) or a_indptr[0] != 0 or a_indptr[-1] != n_pairs:
        raise ValueError(
            f"a_indptr must have length n_states + 1 = {n_states + 1}, start at 0 and end at "
            f"n_pairs = {n_pairs}; got length {a_indptr.size} from {a_indptr[:1]} to {a_indptr[-1:]}"
        )
    counts = np.diff(a_indptr)
    if (counts <= 0).any():
        raise ValueError(f"state {int(np.argmax(counts <= 0))} has no actions")
    if a_indices.shape != (n_pairs,):
        raise ValueError(f"a_indices must have shape ({n_pairs},), got {a_indices.shape}")

    def pair(k):
        s = int(np.searchsorted(a_indptr, k, side="right") - 1)
        return f"pair (s={s}, a={int(a_indices[k])})"

    same_state = np.ones(n_pairs, dtype=bool)
    same_state[a_indptr[:-1]] = False
    bad = same_state[1:] & (a_indices[1:] <= a_indices[:-1])
    if bad.any():
        raise ValueError(f"{pair(int(np.argmax(bad)) + 1)}: action labels must increase within a state")
    if (a_indices < 0).any():
        raise ValueError(f"{pair(int(np.argmax(a_indices < 0)))}: negative action label")
    bad = ~np.isfinite(r)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"R must be finite: {pair(k)} has reward {r[k]}")
    if p_indptr.shape != (n_pairs + 1,) or p_indptr[0] != 0 or p_indptr[-1] != p_data.size:
        raise ValueError("p_indptr must have length n_pairs + 1, start at 0 and end at nnz")
    if p_indices.size != p_data.size:
        raise ValueError("p_indices and p_data must have the same length")
    row_len = np.diff(p_indptr)
    if (row_len < 0).any():
        raise ValueError(f"p_indptr must be non-decreasing: it decreases at {pair(int(np.argmax(row_len < 0)))}")
    nnz = p_indices.size

    def where(j):
        return pair(int(np.searchsorted(p_indptr, j, side="right") - 1))

    j = _first_bad(nnz, lambda lo, hi: (p_indices[lo:hi] < 0) | (p_indices[lo:hi] >= n_states))
    if j >= 0:
        raise ValueError(f"{where(j)}: next-state index {p_indices[j]} out of range [0, {n_states}) "
                         f"(p_indices[{j}])")
    j = _first_bad(nnz, lambda lo, hi: ~np.isfinite(p_data[lo:hi]))
    if j >= 0:
        raise ValueError(f"{where(j)}: transition probability {p_data[j]} is not finite")
    j = _first_bad(nnz, lambda lo, hi: p_data[lo:hi] < 0)
    if j >= 0:
        raise ValueError(
            f"{where(j)}: negative transition probability {p_data[j]} to state {p_indices[j]}")
    if (row_len == 0).any():
        raise ValueError(f"{pair(int(np.argmax(row_len == 0)))}: transition row is empty (probabilities sum to 0)")
    sums = row_sums(p_data, p_indptr)
    sums -= 1.0
    np.abs(sums, out=sums)
    k = int(np.argmax(sums))
    if sums[k] > (row_sum_tol(p_data) if row_tol is None else row_tol):
        total = float(p_data[p_indptr[k]:p_indptr[k + 1]].sum(dtype=np.float64))
        raise ValueError(
            f"{pair(k)}: transition probabilities sum to {total!r} (off by {total - 1.0:.3g})"
        )
    del sums

    def unsorted(lo, hi):
        lo = max(lo, 1)
        bad = p_indices[lo:hi] <= p_indices[lo - 1:hi - 1]
        starts = p_indptr[np.searchsorted(p_indptr, lo):np.searchsorted(p_indptr, hi)]
        bad[starts - lo] = False  # a row start may be smaller than the previous row's end
        return bad

    j = _first_bad(nnz, unsorted, offset=1)
    if j >= 0:
        raise ValueError(f"{where(j)}: next-state indices must be sorted and distinct")


_CHUNK = 1 << 22


def row_sums(p_data, p_indptr):
    """The sum of each (non-empty) row of ``p_data``, shape (n_pairs,), float64; float32
    storage is summed in float64 by chunks of about ``_CHUNK`` entries (``np.add.reduceat``
    with a float64 dtype would first copy all of ``p_data`` to float64)."""
    starts = p_indptr[:-1]
    if p_data.dtype == np.float64:
        return np.add.reduceat(p_data, starts)
    n = starts.shape[0]
    sums = np.empty(n)
    k0 = 0
    while k0 < n:
        k1 = max(k0 + 1, int(np.searchsorted(starts, starts[k0] + _CHUNK, side="left")))
        lo, hi = int(starts[k0]), int(p_indptr[k1])
        sums[k0:k1] = np.add.reduceat(p_data[lo:hi].astype(np.float64), starts[k0:k1] - lo)
        k0 = k1
    return sums


def _first_bad(n, is_bad, offset=0):
    """First index j in [offset, n) flagged by ``is_bad(lo, hi)`` (a bool array for j in
    [max(lo, offset), hi)), checked in chunks so no full-size temporary is made; -1 if none."""
    for lo in range(0, n, _CHUNK):
        hi = min(n, lo + _CHUNK)
        if hi <= offset:
            continue
        bad = is_bad(lo, hi)
        if bad.any():
            return max(lo, offset) + int(np.argmax(bad))
    return -1


def pair_table(mdp, x, name, dtype=np.float64, copy=True):
    """A per-pair table given as (n_pairs,) or, rectangular MDPs only, (S, A) → (n_pairs,);
    ``copy`` False: ``x`` itself (a view) when it already has the dtype and is contiguous."""
    x = np.asarray(x)
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.dtype.kind == "c":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    if x.shape == (mdp.n_pairs,):
        flat = x.astype(dtype, copy=copy)
    elif mdp.is_rectangular and x.shape == (mdp.n_states, mdp.n_actions):
        flat = x.astype(dtype, copy=copy).reshape(-1)
    else:
        extra = f" or ({mdp.n_states}, {mdp.n_actions})" if mdp.is_rectangular else ""
        raise ValueError(f"{name} must have shape ({mdp.n_pairs},){extra}, got {x.shape}")
    return np.ascontiguousarray(flat)


def check_policy(mdp, pi, name="pi", copy=True):
    """A policy as (n_pairs,) float64: non-negative, finite, summing to 1 in every state.
    ``copy`` False: ``pi`` itself, or a view of it, when it is already contiguous float64
    (for callers that use it only during the call)."""
    flat = pair_table(mdp, pi, name, copy=copy)
    if mdp.is_rectangular:  # a product with ones: ~4x faster than reduceat
        sums = flat.reshape(mdp.n_states, mdp.n_actions) @ np.ones(mdp.n_actions)
    else:
        sums = np.add.reduceat(flat, mdp.a_indptr[:-1])
    # a NaN or negative entry fails the min (NaN compares False), an infinite one its sum
    if not (flat.min(initial=0.0) >= 0.0 and np.isfinite(sums).all()):
        bad = ~np.isfinite(flat) | (flat < 0)
        if bad.any():
            k = int(np.argmax(bad))
            raise ValueError(
                f"{name} must be finite and non-negative: {mdp.pair_name(k)} has {flat[k]}")
    bad = ~(np.abs(sums - 1.0) <= ROW_SUM_TOL)
    if bad.any():
        s = int(np.argmax(bad))
        raise ValueError(
            f"{name} must sum to 1 in every state: state {s} sums to {float(sums[s])!r} "
            f"(off by {sums[s] - 1.0:.3g})"
        )
    return flat


def check_logits(mdp, logits, name="logits"):
    flat = pair_table(mdp, logits, name)
    bad = ~np.isfinite(flat)
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"{name} must be finite: {mdp.pair_name(k)} has {flat[k]}")
    return flat


def check_positive(x, name, strict=True, allow_none=False):
    if x is None and allow_none:
        return None
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x) or (x <= 0 if strict else x < 0):
        raise ValueError(f"{name} must be {'>' if strict else '>='} 0 and finite, got {x}")
    return x


def check_lin_tol(x, name="lin_tol"):
    """A relative residual > 0, or the string "adaptive"."""
    if isinstance(x, str):
        if x != "adaptive":
            raise ValueError(f"{name} must be a positive float or 'adaptive', got {x!r}")
        return x
    return check_positive(x, name)


def check_int(x, name, minimum=1, maximum=None):
    if isinstance(x, bool) or not isinstance(x, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(x).__name__}")
    if x < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x}")
    if maximum is not None and x > maximum:
        raise ValueError(f"{name} must be <= {maximum}, got {x}")
    return int(x)


def check_unit_interval(x, name):
    """A real number in [0, 1]."""
    x = check_positive(x, name, strict=False)
    if x > 1:
        raise ValueError(f"{name} must be in [0, 1], got {x}")
    return x


def check_choice(x, name, choices):
    if x not in choices:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, choices))}; got {x!r}")
    return x


def check_finite_float(x, name):
    """A finite real number (any sign)."""
    if isinstance(x, bool) or not isinstance(x, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}")
    x = float(x)
    if not np.isfinite(x):
        raise ValueError(f"{name} must be finite, got {x}")
    return x


def check_bool(x, name):
    """A bool (Python or NumPy); 0/1 and strings are rejected."""
    if not isinstance(x, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {x!r}")
    return bool(x)


def check_seed(seed, name="seed"):
    """A ``numpy.random.Generator`` from a seed: None (fresh entropy), an int >= 0, or a
    Generator (used as is). The one seed rule of generators and SampledPPO."""
    if seed is None or isinstance(seed, np.random.Generator):
        return np.random.default_rng(seed)
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral):
        raise TypeError(f"{name} must be an int, None or a numpy.random.Generator, "
                        f"got {type(seed).__name__}")
    if seed < 0:
        raise ValueError(f"{name} must be >= 0, got {seed}")
    return np.random.default_rng(int(seed))


# ------------------------------------------------------------ values read from files
STORED_KINDS = ("text", "json", "count", "float", "bool", "vector", "array")


def check_stored(x, kind, name):
    """A value read back from an ``.npz`` (an ndarray) as what ``kind`` says it is.

    ``text``: a 0-d unicode array → str; ``json``: the same, parsed (JSON);
    ``count`` / ``float`` / ``bool``: a 0-d integer / real / bool array → Python scalar;
    ``vector``: a 1-d array of real numbers; ``array``: any array (both returned as
    is, for the caller's own checks). TypeError or ValueError naming ``name`` otherwise.
    """
    import json

    if kind in ("text", "json"):
        if x.dtype.kind != "U" or x.ndim != 0:
            raise TypeError(f"{name} must be a string, got {x.dtype} of shape {x.shape}")
        if kind == "text":
            return str(x)
        try:
            return json.loads(str(x))
        except (ValueError, RecursionError) as exc:
            raise ValueError(f"{name} is not valid JSON: {exc}") from None
    if kind in ("count", "float", "bool"):
        accepted, what = {"count": ("iu", "an integer"), "float": ("fiu", "a real"),
                          "bool": ("b", "a bool")}[kind]
        if x.ndim != 0 or x.dtype.kind not in accepted:
            raise TypeError(f"{name} must be {what} scalar, got {x.dtype} of shape {x.shape}")
        return x.item()
    if kind == "vector":
        if x.dtype.kind not in "fiu":
            raise TypeError(f"{name} must be an array of real numbers, got dtype {x.dtype}")
        if x.ndim != 1:
            raise ValueError(f"{name} must be one-dimensional, got shape {x.shape}")
        return x
    if kind == "array":
        return x
    raise ValueError(f"unknown kind {kind!r}; expected one of {', '.join(STORED_KINDS)}")


def check_length(x, n, name, what):
    """A 1-d array of exactly ``n`` entries (``what`` names n, e.g. "n_pairs")."""
    if x.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) ({what}), got {x.shape}")
    return x


def check_state_vector(x, n_states, name, nonnegative=False, size_name="n_states"):
    """A saved (n_states,) vector (a warm start, a critic): float64, finite (and ≥ 0);
    another saved vector of ``n_states`` entries, called ``size_name`` in the error."""
    check_length(x, n_states, name, size_name)
    x = as_float_array(x, name, copy=True)
    check_finite(x, name)
    if nonnegative and (x < 0).any():
        s = int(np.argmax(x < 0))
        raise ValueError(f"{name} must be non-negative: {name}[{s}] = {x[s]}")
    return x


def trajectory_arrays(shape_name, **arrays):
    """Same-shape (…, T) arrays → C-contiguous 2-D (rows, T): float64, or uint8 for flags.

    ``arrays`` maps names to array_like (None skipped); names starting with ``flag:``
    are boolean flags. The first array fixes the shape; any other shape is rejected
    naming the array. Float arrays must be finite.
    """
    out, shape = {}, None
    for key, x in arrays.items():
        flag = key.startswith("flag:")
        name = key.removeprefix("flag:")
        x = np.asarray(x)
        if shape is None:
            shape = x.shape
            if x.ndim == 0:
                raise ValueError(f"{name} must have a time axis (shape (..., T)), got a scalar")
        elif x.shape != shape:
            raise ValueError(f"{name} must have the shape of {shape_name} {shape}, got {x.shape}")
        if flag:
            if x.dtype != bool and not np.isin(x, (0, 1)).all():
                raise ValueError(f"{name} must hold booleans (0/1)")
            x = x.astype(np.uint8)
        else:
            x = as_float_array(x, name)
            check_finite(x, name)
        out[name] = np.ascontiguousarray(x.reshape(-1, shape[-1]))
    return shape, out


# ------------------------------------------------ policies given as action labels
def is_sigma(mdp, pi):
    """True when ``pi`` is a policy given as action labels (QuantEcon's ``sigma``).

    The rule: an integer-dtype array of shape (n_states,) is sigma; anything else
    (a float array, a bool array, any other shape) is a probability table.
    """
    x = np.asarray(pi)
    return x.shape == (mdp.n_states,) and np.issubdtype(x.dtype, np.integer)


def sigma_pairs(mdp, sigma, name="sigma"):
    """The flat pair index of each state's action label.

    Parameters
    ----------
    mdp : MDP
    sigma : array_like of int, shape (n_states,)
        ``sigma[s]`` is an action label of state ``s`` (a value of ``mdp.a_indices``
        among the pairs of ``s``), as in QuantEcon's ``DiscreteDP``.
    name : str

    Returns
    -------
    ndarray of shape (n_states,), int64
        ``k[s]`` with ``mdp.a_indices[k[s]] == sigma[s]``.

    Raises
    ------
    ValueError
        Naming the first state whose label is not one of its actions (out of range,
        negative, or an infeasible action dropped by ``from_sa_pairs``).
    """
    sigma = np.asarray(sigma)
    if sigma.shape != (mdp.n_states,) or not np.issubdtype(sigma.dtype, np.integer):
        raise TypeError(f"{name} must be an integer array of shape ({mdp.n_states},) (one action "
                        f"label per state), got dtype {sigma.dtype} and shape {sigma.shape}")
    labels = sigma.astype(np.int64)
    starts = mdp.a_indptr[:-1]
    # within a state labels increase, so the pair of label a sits after the labels < a
    below = np.add.reduceat((mdp.a_indices < labels[mdp.s_indices]).astype(np.int64), starts)
    k = starts + below
    ok = (below < np.diff(mdp.a_indptr)) & (labels >= 0) & (labels == sigma)
    ok[ok] = mdp.a_indices[k[ok]] == labels[ok]
    if not ok.all():
        s = int(np.argmin(ok))
        actions = mdp.a_indices[mdp.a_indptr[s]:mdp.a_indptr[s + 1]]
        shown = ", ".join(map(str, actions[:10])) + (", ..." if actions.size > 10 else "")
        raise ValueError(f"{name}[{s}] = {sigma[s]} is not an action of state {s} "
                         f"(its actions: {shown})")
    return k


def as_policy(mdp, pi, name="pi", copy=True):
    """A policy given as probabilities or as action labels → (n_pairs,) float64 (``copy``
    as :func:`check_policy`'s).

    An integer array of shape (n_states,) is sigma (one action label per state,
    :func:`sigma_pairs`) and becomes the deterministic policy choosing it; anything
    else is a probability table checked by :func:`check_policy`. A non-integer array of
    shape (n_states,) that cannot be a table (n_states != n_pairs) is rejected with a
    hint, so a float sigma is never misread.
    """
    if is_sigma(mdp, pi):
        flat = np.zeros(mdp.n_pairs)
        flat[sigma_pairs(mdp, pi, name)] = 1.0
        return flat
    x = np.asarray(pi)
    if x.shape == (mdp.n_states,) and mdp.n_states != mdp.n_pairs:
        raise TypeError(
            f"{name} has shape ({mdp.n_states},) and dtype {x.dtype}: a policy given as action "
            f"labels (sigma) must have an integer dtype; a probability table has shape "
            f"({mdp.n_pairs},)" + (f" or ({mdp.n_states}, {mdp.n_actions})" if mdp.is_rectangular else ""))
    return check_policy(mdp, x, name, copy)


def drop_infeasible(s_indices, a_indices, P, R, n_states):
    """Remove the pairs whose reward is −inf (QuantEcon's mark of an infeasible action).

    Returns ``(s_indices, a_indices, P, R)`` without those pairs (the inputs themselves
    when there are none). Inputs of inconsistent shapes are returned unchanged, for
    :func:`canonical_from_pairs` to report.

    Raises
    ------
    ValueError
        Naming the first state left with no action (every reward of it −inf).
    """
    R = as_float_array(R, "R")
    s = np.asarray(s_indices)
    n_rows = P.shape[0] if sp.issparse(P) else (np.shape(P)[0] if np.ndim(P) >= 1 else -1)
    if R.ndim != 1 or s.shape != R.shape or np.shape(a_indices) != R.shape or n_rows != R.size:
        return s_indices, a_indices, P, R
    keep = R != -np.inf
    if keep.all():
        return s_indices, a_indices, P, R
    s = _as_index_array(s, "s_indices")
    valid = (s >= 0) & (s < n_states)
    had = np.zeros(n_states, dtype=bool)
    had[s[valid]] = True
    kept = np.zeros(n_states, dtype=bool)
    kept[s[valid & keep]] = True
    lost = had & ~kept
    if lost.any():
        st = int(np.argmax(lost))
        raise ValueError(f"state {st} has no feasible action: every reward of it is -inf")
    P = sp.csr_array(P)[keep] if sp.issparse(P) else np.asarray(P)[keep]
    return s[keep], np.asarray(a_indices)[keep], P, R[keep]


# ------------------------------------------------- batches of K members (evaluate_batch)
def _member_shapes(mdp, name, what):
    """The accepted shapes of a batch of per-pair tables, as text for error messages."""
    table = f", (K, {mdp.n_states}, {mdp.n_actions})" if mdp.is_rectangular else ""
    sigma = f" or an integer array (K, {mdp.n_states}) of action labels" if what == "policies" else ""
    return f"{name} must hold K {what}: shape (K, {mdp.n_pairs}){table}{sigma}"


def is_single_policy(mdp, pi):
    """Whether ``pi`` has the shape of one policy: (n_pairs,), (S, A) for rectangular
    MDPs, or sigma (an integer array of shape (S,))."""
    shape = np.shape(pi)
    return (shape == (mdp.n_pairs,) or is_sigma(mdp, pi)
            or (mdp.is_rectangular and shape == (mdp.n_states, mdp.n_actions)))


def policy_batch(mdp, pi, name="pi"):
    """K policies → (K, n_pairs) float64, each member checked by :func:`as_policy`.

    Accepted: (K, n_pairs) or (K, S, A) (rectangular MDPs) probability tables, or an
    integer (K, S) array of action labels (one sigma per row). A member's error names it
    (``pi[2] must sum to 1 in every state: state 5 ...``).
    """
    x = np.asarray(pi)
    member_shape = x.shape[1:]
    ok = x.ndim >= 2 and x.shape[0] >= 1 and (
        member_shape == (mdp.n_pairs,)
        or (mdp.is_rectangular and member_shape == (mdp.n_states, mdp.n_actions))
        or (member_shape == (mdp.n_states,) and np.issubdtype(x.dtype, np.integer)))
    if not ok:
        raise ValueError(f"{_member_shapes(mdp, name, 'policies')}, K >= 1; got shape {x.shape}"
                         + (f" and dtype {x.dtype}" if member_shape == (mdp.n_states,) else ""))
    if member_shape == (mdp.n_states,):  # one sigma per row
        return np.stack([as_policy(mdp, x[m], f"{name}[{m}]") for m in range(x.shape[0])])
    return _probability_batch(mdp, x, name)


def _probability_batch(mdp, x, name):
    """K probability tables (K, n_pairs) or (K, S, A) → (K, n_pairs) float64, checked as
    :func:`check_policy` checks each member, in one pass over all of them: a member fails
    when an entry is not ≥ 0 (NaN, negative, −inf) or a state's sum is off 1 (+inf: sum
    inf); the first such member is checked alone, for the member-wise message. The
    caller's array itself when it is already C-contiguous float64 (only read)."""
    if x.dtype == object or not (np.issubdtype(x.dtype, np.number) or x.dtype == bool):
        raise TypeError(f"{name} must be a numeric array, got dtype {x.dtype}")
    if x.dtype.kind == "c":
        raise TypeError(f"{name} must hold real numbers, got dtype {x.dtype}")
    flat = np.ascontiguousarray(x, dtype=np.float64).reshape(x.shape[0], mdp.n_pairs)
    bad = ~(flat.min(axis=1) >= 0.0)  # NaN propagates through min
    sums = np.add.reduceat(flat, mdp.a_indptr[:-1], axis=1)
    np.subtract(sums, 1.0, out=sums)
    bad |= (np.abs(sums, out=sums) > ROW_SUM_TOL).any(axis=1)
    for m in np.flatnonzero(bad):  # the first raises, naming the member's first offence
        check_policy(mdp, flat[m], f"{name}[{m}]")
    return flat


def reward_batch(mdp, r, name="r"):
    """K reward vectors → (K, n_pairs) float64, finite; (K, S, A) for rectangular MDPs."""
    x = as_float_array(r, name)
    member_shape = x.shape[1:]
    ok = x.ndim >= 2 and x.shape[0] >= 1 and (
        member_shape == (mdp.n_pairs,)
        or (mdp.is_rectangular and member_shape == (mdp.n_states, mdp.n_actions)))
    if not ok:
        raise ValueError(f"{_member_shapes(mdp, name, 'reward vectors')}, K >= 1; got shape {x.shape}")
    x = np.ascontiguousarray(x.reshape(x.shape[0], mdp.n_pairs))
    bad = ~np.isfinite(x)
    if bad.any():
        m, k = np.unravel_index(int(np.argmax(bad)), x.shape)
        raise ValueError(f"{name}[{m}] must be finite: {mdp.pair_name(k)} has {x[m, k]}")
    return x


def state_batch(x, n_members, n_states, name):
    """A (K, n_states) warm start → float64, finite (None stays None)."""
    if x is None:
        return None
    x = as_float_array(x, name, copy=True)
    if x.shape != (n_members, n_states):
        raise ValueError(f"{name} must have shape ({n_members}, {n_states}) (K, n_states), got {x.shape}")
    check_finite(x, name)
    return x


def distribution_batch(mu, n_members, n_states, name):
    """Start distributions: (n_states,) shared by all members or (K, n_states), one per
    member; each a probability vector (:func:`check_distribution`) → (K, n_states)."""
    x = np.asarray(mu)
    if x.shape == (n_states,):
        return np.broadcast_to(check_distribution(x, n_states, name), (n_members, n_states))
    if x.shape != (n_members, n_states):
        raise ValueError(f"{name} must have shape ({n_states},) or ({n_members}, {n_states}) "
                         f"(K, n_states), got {x.shape}")
    return np.stack([check_distribution(x[m], n_states, f"{name}[{m}]") for m in range(n_members)])
