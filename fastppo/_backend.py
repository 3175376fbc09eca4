"""The one dispatch point: (kernel name, backend) → callable.

Every kernel is called as ``kernel(*arrays_and_scalars, n_threads)``. Backend
resolution: explicit ``backend=`` argument → ``with fastppo.backend(...)`` block →
``set_backend()`` → environment variable ``FASTPPO_BACKEND`` → ``DEFAULT_BACKEND``
("cython": compiled when the package is installed, so a first run waits for no JIT).
Thread count: explicit ``n_threads=`` → ``with fastppo.backend(n_threads=...)`` block →
``set_num_threads()`` → ``FASTPPO_NUM_THREADS`` → 1;
at most ``os.cpu_count()``.

A ``with fastppo.backend(...)`` block is local to its thread (a ``contextvars`` context:
also to its asyncio task); ``set_backend`` and ``set_num_threads`` are process-wide.
"""
import contextlib
import contextvars
import functools
import importlib
import numbers
import os

BACKENDS = ("numba", "cython", "numpy")
DEFAULT_BACKEND = "cython"
# kernel file stem → kernel names (identical in kernels/numba, kernels/cython, _reference)
STEMS = {
    "linear": ("bellman_matvec", "bellman_rmatvec", "q_values", "q_greedy", "bellman_products",
               "q_products", "blocked_entries", "blocked_products", "transposed_weights",
               "transposed_rmatvec", "row_sweep", "pair_sweep", "transposed_sweep"),
    "tables": ("segment_softmax", "regularized_reward", "advantages", "q_advantages",
               "policy_gradient", "compact_indptr", "compact_rows"),
    "policy_update": ("greedy_policy", "ppo_update"),
    "sampling": ("rollout", "gae", "discounted_returns", "ppo_minibatches"),
    "episodic": ("episodic_values", "episodic_visits"),
    "assembled": ("merge_pattern", "assemble_values", "assemble_deterministic",
                  "patch_deterministic", "distinct_pairs_bound", "split_matvec",
                  "triangular_solve", "sgs_operator", "sgs_start", "sgs_bicgstab"),
    "batched": ("bellman_matvec_batch", "bellman_rmatvec_batch", "q_values_batch",
                "sweep_residual_batch", "sweep_update_batch", "regularized_reward_batch",
                "shared_weights", "bellman_matvec_shared"),
}

_state = {"backend": None, "n_threads": None}  # process-wide: set_backend, set_num_threads
# the innermost ``with backend(...)`` block of this thread / task: (backend, n_threads), None = unset
_block = contextvars.ContextVar("fastppo_backend_block", default=(None, None))
_cache = {}


def _check_backend(name):
    if name not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}; got {name!r}")
    return name


def resolve_backend(backend=None):
    """The backend name in force for a call with ``backend=`` (may be None)."""
    if backend is not None:
        return _check_backend(backend)
    block = _block.get()[0]
    if block is not None:
        return block
    if _state["backend"] is not None:
        return _state["backend"]
    env = os.environ.get("FASTPPO_BACKEND")
    if env:
        return _check_backend(env)
    return DEFAULT_BACKEND


def resolve_threads(n_threads=None):
    """The thread count in force for a call with ``n_threads=`` (may be None).

    Unless set (argument, ``set_num_threads``, ``FASTPPO_NUM_THREADS``), kernels run on
    one thread: the products are memory-bound, and a default that does not depend on
    the machine's load keeps timings reproducible on shared machines. More threads can
    pay on an idle one: benchmarks/RESULTS.md measured a whole PPO-Clip iteration at
    S = 50,000 at 111 ms on one thread and 66 ms on two when the machine is idle (cython).
    """
    if n_threads is None:
        n_threads = _block.get()[1]
    if n_threads is None:
        n_threads = _state["n_threads"]
    if n_threads is None:
        return env_threads() or 1
    if isinstance(n_threads, bool) or not isinstance(n_threads, numbers.Integral) or n_threads < 1:
        raise ValueError(f"n_threads must be a positive integer, got {n_threads!r}")
    if n_threads > max_threads():
        raise ValueError(f"n_threads must be <= {max_threads()} (the CPUs of this machine, "
                         f"os.cpu_count()), got {n_threads}")
    return int(n_threads)


def env_threads():
    """The thread count of ``FASTPPO_NUM_THREADS`` (None when unset), checked as
    ``n_threads=``; ValueError naming the variable."""
    env = os.environ.get("FASTPPO_NUM_THREADS")
    if not env:
        return None
    prefix = f"environment variable FASTPPO_NUM_THREADS={env!r}: "
    if not env.strip().isdecimal() or int(env) < 1:
        raise ValueError(f"{prefix}must be a positive integer")
    if int(env) > max_threads():
        raise ValueError(f"{prefix}must be <= {max_threads()} (the CPUs of this machine, "
                         f"os.cpu_count())")
    return int(env)


@functools.cache
def max_threads():
    """The most kernel threads a call may ask for: the machine's logical CPUs
    (``os.cpu_count()``, also Numba's default thread pool; asked once: ~50 µs a call
    here). More only oversubscribe."""
    return os.cpu_count() or 1


def set_backend(name):
    """Set the default backend.

    Parameters
    ----------
    name : {"numba", "cython", "numpy"} or None
        None restores the default (``FASTPPO_BACKEND``, else ``DEFAULT_BACKEND``).
    """
    _state["backend"] = None if name is None else _check_backend(name)


def get_backend():
    """The backend now in force in this thread (block, process setting, environment, default)."""
    return resolve_backend(None)


def set_num_threads(n):
    """Set the default number of kernel threads.

    Parameters
    ----------
    n : int or None
        Threads; None restores the default (``FASTPPO_NUM_THREADS``, else 1).
    """
    _state["n_threads"] = None if n is None else resolve_threads(n)


@contextlib.contextmanager
def backend(name=None, n_threads=None):
    """Context manager: ``with fastppo.backend("cython", n_threads=1): ...``.

    The block is local to the thread (and asyncio task) that enters it: other threads
    keep their own setting, and a thread started inside the block does not inherit it
    (run it in ``contextvars.copy_context()`` to pass it on, or give ``backend=``). Inside
    the block it takes precedence over ``set_backend`` / ``set_num_threads`` (which are
    process-wide); an explicit ``backend=`` / ``n_threads=`` argument still wins. Blocks
    nest; leaving one restores the setting of the enclosing one.

    Parameters
    ----------
    name : {"numba", "cython", "numpy"}, optional
        Backend inside the block (unchanged when None).
    n_threads : int, optional
        Kernel threads inside the block (unchanged when None).
    """
    outer_name, outer_threads = _block.get()
    inner = (outer_name if name is None else _check_backend(name),
             outer_threads if n_threads is None else resolve_threads(n_threads))
    token = _block.set(inner)
    try:
        yield
    finally:
        _block.reset(token)


def _numba_kernel(serial, parallel):
    import numba

    def call(*args):
        *args, n_threads = args
        if n_threads == 1:
            return serial(*args)
        old = numba.get_num_threads()
        numba.set_num_threads(min(n_threads, numba.config.NUMBA_NUM_THREADS))
        try:
            return parallel(*args)
        finally:
            numba.set_num_threads(old)

    call.__name__ = serial.__name__.removesuffix("_serial")
    return call


def _load(name, which):
    stem = next(s for s, names in STEMS.items() if name in names)
    if which == "numpy":
        from . import _reference
        return getattr(_reference, name)
    try:
        module = importlib.import_module(f"fastppo._kernels.{which}.{stem}")
    except ImportError as exc:
        from ._check_build import raise_build_error
        raise_build_error(exc)
    if which == "numba":
        return _numba_kernel(*module.KERNELS[name])
    return getattr(module, name)


def get_kernel(name, backend=None):
    """The callable for kernel ``name`` of the resolved backend."""
    which = resolve_backend(backend)
    key = (name, which)
    if key not in _cache:
        _cache[key] = _load(name, which)
    return _cache[key]


def openmp_enabled():
    """Whether the Cython kernels were compiled with OpenMP."""
    from ._kernels.cython import _info
    return _info.openmp_enabled()


def show_backends(file=None):
    """Print the available backends, thread counts and build facts.

    Parameters
    ----------
    file : file-like, optional
        Where to print; ``sys.stdout`` by default.
    """
    import numba
    import numpy
    import scipy

    from . import __version__

    lines = [f"fastppo {__version__} (numpy {numpy.__version__}, scipy {scipy.__version__})"]
    lines.append(f"  numba   available  (numba {numba.__version__}, "
                 f"{numba.config.NUMBA_NUM_THREADS} threads, layer {numba.config.THREADING_LAYER})")
    try:
        omp = openmp_enabled()
        lines.append(f"  cython  available  ({'OpenMP' if omp else 'serial build, no OpenMP'})")
    except ImportError as exc:
        lines.append(f"  cython  NOT BUILT  ({exc})")
    lines.append("  numpy   available  (reference implementation)")
    lines.append(f"  default backend: {get_backend()}, threads: {resolve_threads()}")
    print("\n".join(lines), file=file)
