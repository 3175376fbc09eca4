"""An MDP's long-lived arrays on transparent huge pages (2 MiB) where Linux offers them.

The sweeps read an MDP's per-entry arrays (P's data, its uint16 columns, the pair codes)
and its per-pair arrays (r, π) from memory at every pass. On 4 KiB pages a pass over the
10k garnet's 11 MB touches ~2,700 pages, more than a core's TLB holds, and after other
work (a SciPy solve between two calls) each page costs a page walk: with the MDP's arrays
on huge pages a cold ``evaluate`` took 13.6–13.7 ms against 15.7–16.3 ms on the same
arrays on 4 KiB pages (benchmarks/RESULTS.md, issue 17, twelfth session). NumPy asks for
huge pages only from 4 MiB on, and malloc often hands back memory already on small pages.

:func:`huge` copies an array of ``HUGE_BYTES`` to ``HUGE_MAX_BYTES`` into its own
anonymous mapping advised ``MADV_HUGEPAGE`` (whole 2 MiB pages: at most 2 MiB more than the
array, nothing for smaller or larger arrays); the copy is an ordinary ndarray (it pickles as one, and its mapping is
unmapped with it). Where huge pages are unavailable (another OS, THP "never") it returns
the array itself. Only for arrays made once and read many times: a fresh huge page is
zeroed (and may be compacted) on first touch, so per-call arrays stay on NumPy's
allocator, and a buffer a call needs for itself alone comes from :func:`scratch`, which
keeps such buffers between calls (the visitation's P_πᵀ entries, written once and read
at each of ~20 sweeps: its 10k garnet solve took 15.9–16.8 ms with a kept buffer
against 20.8–21.5 ms with a fresh one, RESULTS.md).
"""
import collections
import mmap
import threading
import weakref

import numpy as np

__all__ = ["HUGE_BYTES", "HUGE_MAX_BYTES", "huge", "release_buffers", "scratch"]

HUGE_BYTES = 1 << 19  # arrays from 512 KiB (their huge pages cost at most 4x their bytes)
# ... up to 256 MiB: beyond, a copy at construction would double the peak memory of the
# largest MDPs (8 GB of P's data at 10⁹ transitions) for nothing measured (10⁶ states: the
# fused pass 336–375 ms on huge pages against 324–332 ms; NumPy advises ≥ 4 MiB itself)
HUGE_MAX_BYTES = 1 << 28
PAGE = 1 << 21  # 2 MiB


class _HugeMapping(mmap.mmap):
    """An anonymous private mapping advised MADV_HUGEPAGE (the buffer of :func:`huge`)."""


def _thp_enabled():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return "[never]" not in f.read()
    except OSError:
        return False


ENABLED = hasattr(mmap, "MADV_HUGEPAGE") and hasattr(mmap, "MAP_PRIVATE") and _thp_enabled()


def _owners(a):
    """``a`` and the objects its memory comes from, outermost first (array bases, then
    the objects behind memoryviews)."""
    while isinstance(a, (np.ndarray, memoryview)):
        yield a
        a = a.base if isinstance(a, np.ndarray) else a.obj
    yield a


def is_huge(a):
    """Whether ``a`` lies in a mapping of :func:`huge`."""
    return isinstance(list(_owners(a))[-1], _HugeMapping)


def _maps_a_file(a):
    """Whether ``a`` is, or views, a mapping of a file (``np.memmap``)."""
    return any(isinstance(o, np.memmap) or (isinstance(o, mmap.mmap)
                                             and not isinstance(o, _HugeMapping))
               for o in _owners(a))


def _mapped(nbytes):
    """``nbytes`` bytes (uint8) in their own mapping of whole 2 MiB pages, advised
    MADV_HUGEPAGE, from a 2 MiB boundary; None if the mapping fails."""
    pages = -(-nbytes // PAGE)
    try:
        # one page more, to start at a 2 MiB boundary
        m = _HugeMapping(-1, (pages + 1) * PAGE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        m.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return None
    raw = np.frombuffer(m, dtype=np.uint8)
    start = -raw.ctypes.data % PAGE
    return raw[start:start + nbytes]


def huge(a):
    """``a`` (C-contiguous) on transparent huge pages: a copy in a mapping of whole 2 MiB
    pages starting at a 2 MiB boundary, with ``a``'s dtype, shape and ``writeable`` flag;
    ``a`` itself when it has fewer than ``HUGE_BYTES`` or more than ``HUGE_MAX_BYTES``
    bytes, is there already, maps a file (``np.memmap``: ``MDP.load(..., mmap_mode=...)``
    keeps its mapping), or huge pages are unavailable."""
    if _maps_a_file(a):
        return a
    a = np.ascontiguousarray(a)
    if not ENABLED or not HUGE_BYTES <= a.nbytes <= HUGE_MAX_BYTES or is_huge(a):
        return a
    raw = _mapped(a.nbytes)
    if raw is None:
        return a
    out = raw.view(a.dtype).reshape(a.shape)
    out[...] = a
    out.flags.writeable = a.flags.writeable
    return out


def _empty(n, dtype):
    """np.empty(n, dtype), on huge pages from ``HUGE_BYTES`` on (where available)."""
    nbytes = n * dtype.itemsize
    raw = _mapped(nbytes) if ENABLED and nbytes >= HUGE_BYTES else None
    return np.empty(n, dtype=dtype) if raw is None else raw.view(dtype)


# scratch buffers kept between calls (the last given back first), at most this many and
# bytes (a band LU's storage at 50k states: 180 MB); beyond, a computation's own
# allocations cost little beside it
KEEP_BUFFERS = 4
KEEP_BYTES = 512 << 20


class _Pool:
    """Buffers of :func:`scratch` not in use, the most recently given back last."""

    def __init__(self):
        self._free, self._lock = [], threading.Lock()
        # given back by finalizers (any thread, even inside a collection that take() set
        # off): a deque's append is atomic, and take() files them under its lock
        self._given = collections.deque()

    def take(self, n, dtype):
        dtype = np.dtype(dtype)
        with self._lock:
            self._file()
            for i in range(len(self._free) - 1, -1, -1):
                if self._free[i].shape[0] == n and self._free[i].dtype == dtype:
                    return self._free.pop(i)
        return _empty(n, dtype)

    def give(self, buf):
        self._given.append(buf)

    def kept(self):
        """The buffers kept now."""
        with self._lock:
            self._file()
            return list(self._free)

    def _file(self):
        while self._given:
            self._free.append(self._given.popleft())
        del self._free[:-KEEP_BUFFERS]
        while sum(b.nbytes for b in self._free) > KEEP_BYTES:
            del self._free[0]


_POOL = _Pool()


def scratch(n, dtype=np.float64):
    """A buffer of shape (n,) (contents undefined, on huge pages from ``HUGE_BYTES`` on),
    taken from the buffers kept between calls, or made; it is kept again (up to
    ``KEEP_BUFFERS`` and ``KEEP_BYTES``) once it and every array viewing it are collected
    (a view's ``base`` is the array returned here)."""
    buf = _POOL.take(n, dtype)
    out = np.frombuffer(memoryview(buf), dtype=buf.dtype)
    weakref.finalize(out, _POOL.give, buf)
    return out


def release_buffers():
    """Free the work buffers fastppo keeps between calls.

    The solvers keep some of the buffers a call needs for itself (a visitation's P_πᵀ
    entries, the value rows, a band LU's storage: at most 4 buffers and 512 MiB; and this
    thread's work arrays of ``evaluate_batch`` / ``visitation_batch``), so that the next
    call does not touch fresh pages. This returns their memory to the system (a buffer
    still in use by a live solver is freed when that solver is).
    """
    from .batched import release_scratch

    with _POOL._lock:
        _POOL._free.clear()
        _POOL._given.clear()
    release_scratch()
