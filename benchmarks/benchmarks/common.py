"""Shared fixtures for the asv suite: memoised fixed-seed MDPs, policies, JIT warm-up.

Three families, because garnet MDPs alone flatter every solver (they mix in a few
steps, so Richardson sweeps need ~20 products whatever the size):

- ``"garnet"``: ``fastppo.garnet(S, 10, 10, gamma=0.99, seed=0)``, successors
  uniform over all states (fast mixing, poor memory locality);
- ``"local"``: the same with ``locality=50`` (successors within ±50 states: slow
  mixing, ~160-180 products from 10,000 states on, good locality);
- ``"grid"``: ``fastppo.gridworld(H, W, gamma=0.99)`` with ``H * W = S`` (4 actions,
  ≤ 3 successors, slip 0.1, one absorbing goal; ~260-310 products, cheap products).

Everything is memoised per process: asv re-runs ``setup`` before every timing
sample, so a ``setup`` must be cheap after its first call. The first ``setup`` of each
(operation, backend, n_threads, family) runs the operation once on a 200-state MDP of
the family (same dtypes, hence the same compiled specialisations), so Numba's
compilation / cache load and the start of the thread pool never land in a timed call,
without paying a full-size call per benchmark.

``asv.conf.json`` selects asv's fork server: the benchmark modules are imported once
and every benchmark runs in a fork of that process. :func:`_preload` uses this to load
the serial Numba kernels once instead of once per benchmark.
"""
import functools
import math
import os
import sys

import numpy as np

import fastppo

BACKENDS = ["numba", "cython", "numpy"]
SIZES = [1_000, 10_000, 50_000]
MEM_SIZES = [10_000, 50_000]  # at 1,000 states the working set is lost in the interpreter
FAMILIES = ["garnet", "local", "grid"]
STRUCTURED = ["queue", "pendulum"]  # issue 17's structured families (scripts only)
THREADS = [1, 2]

N_ACTIONS = 10
BRANCHING = 10
LOCALITY = 50
GAMMA = 0.99
SEED = 0
SLOW_SIZE = 50_000  # n_states >= this: only with FASTPPO_ASV_SLOW=1


def _skip_slow():
    """Skip a large benchmark unless FASTPPO_ASV_SLOW=1 (asv: NotImplementedError = skip)."""
    if os.environ.get("FASTPPO_ASV_SLOW", "0") != "1":
        raise NotImplementedError("large size: set FASTPPO_ASV_SLOW=1 to run it")


try:  # asv_runner >= 0.2: a skip raised inside the benchmark body (setup already ran)
    from asv_runner.benchmarks.mark import SkipNotImplemented
except ImportError:  # outside asv (tests calling the suites directly)
    class SkipNotImplemented(NotImplementedError):
        """Stand-in for asv_runner's skip-from-the-body exception."""


def kernel_or_skip(name, backend):
    """``fastppo._backend.get_kernel(name, backend)``, or a skip (NotImplementedError) when
    the installed commit has no kernel of that name: asv runs this suite against older
    commits (``benchmarks/history_commits.txt``), e.g. before ``bellman_products`` existed."""
    from fastppo import _backend

    if not any(name in names for names in _backend.STEMS.values()):
        raise NotImplementedError(f"kernel {name!r} does not exist in this commit")
    return _backend.get_kernel(name, backend)


def check_params(backend, n_states, n_threads=1):
    """Skip the large sizes (see _skip_slow) and numpy with n_threads > 1 (it is serial)."""
    if n_states >= SLOW_SIZE:
        _skip_slow()
    if backend == "numpy" and n_threads != 1:
        raise NotImplementedError("the numpy backend ignores n_threads")


def grid_shape(n_states):
    """(H, W) with H * W == n_states and H the largest divisor <= sqrt(n_states)."""
    h = max(d for d in range(1, math.isqrt(n_states) + 1) if n_states % d == 0)
    return h, n_states // h


def family_call(family, n_states, n_actions=N_ACTIONS, branching=BRANCHING, gamma=GAMMA,
                seed=SEED, locality=LOCALITY):
    """(builder, args, kwargs) of the benchmark MDP ``family`` with ``n_states`` states:
    the one definition of the families, shared by the asv suite and the scripts in
    ``benchmarks/`` (compare.py, peers.py, ppo_run.py, convergence_study.py)."""
    if family == "garnet":
        return fastppo.garnet, (n_states, n_actions, branching), dict(gamma=gamma, seed=seed)
    if family == "local":
        return fastppo.garnet, (n_states, n_actions, branching), dict(gamma=gamma, seed=seed,
                                                                      locality=locality)
    if family == "grid":
        return fastppo.gridworld, grid_shape(n_states), dict(gamma=gamma)
    if family == "queue":  # two queues, one controlled server (issue 17)
        h, w = grid_shape(n_states)
        return fastppo.queue2d, (), dict(capacity=(h - 1, w - 1), gamma=gamma)
    if family == "pendulum":  # a control-grid discretisation (issue 17)
        return fastppo.pendulum, grid_shape(n_states)[::-1], dict(gamma=gamma)
    raise ValueError(f"unknown family {family!r}; choose from {', '.join(FAMILIES + STRUCTURED)}")


def build_mdp(family, n_states, **kw):
    """The fixed-seed MDP of a family (see :func:`family_call`; keywords override the
    suite's defaults ``n_actions``, ``branching``, ``gamma``, ``seed``, ``locality``)."""
    func, args, kwargs = family_call(family, n_states, **kw)
    return func(*args, **kwargs)


def describe_mdp(family, n_states, **kw):
    """The call that builds the family's MDP, as text (for benchmark reports)."""
    func, args, kwargs = family_call(family, n_states, **kw)
    text = ", ".join([*map(str, args), *(f"{k}={v}" for k, v in kwargs.items())])
    return f"fastppo.{func.__name__}({text})"


@functools.lru_cache(maxsize=None)
def get_mdp(family, n_states):
    """The fixed-seed MDP of a family with exactly ``n_states`` states (memoised)."""
    return build_mdp(family, n_states)


@functools.lru_cache(maxsize=None)
def get_logits(family, n_states):
    """Fixed-seed logits θ ~ N(0, 1) per pair (a non-uniform, full-support policy)."""
    mdp = get_mdp(family, n_states)
    logits = np.random.default_rng(SEED + 1).standard_normal(mdp.n_pairs)
    logits.flags.writeable = False
    return logits


@functools.lru_cache(maxsize=None)
def get_policy(family, n_states):
    """π = softmax(get_logits(...)), flat (n_pairs,)."""
    mdp = get_mdp(family, n_states)
    pi = fastppo.softmax(mdp, get_logits(family, n_states), backend="numpy")
    pi.flags.writeable = False
    return pi


PPO_DIVERGENCES = {"none": (0, 0.0), "reverse-kl": (1, 0.0), "forward-kl": (2, 0.0),
                   "chi-square": (3, 0.0), "hellinger": (4, 0.0), "jensen-shannon": (5, 0.0),
                   "alpha-0.5": (6, 0.5)}  # name: (kernel code of fastppo._codes, α)
PPO_TAU = 0.1  # τ of the regularized cases ("none": τ = 0)
PPO_STEPS = 10  # inner steps K per ppo_update call


@functools.lru_cache(maxsize=None)
def ppo_update_inputs(family, n_states):
    """Fixed-seed inputs of one ``ppo_update`` call: (mdp, pi_old, adv, weight, ref, theta0,
    lr). π_old = softmax(get_logits), θ0 = its logits, Ã ~ N(0, 1) centred per state under
    π_old, weights 1/(S(1 − γ)) (d uniform), π_ref uniform, and lr = 0.1·S(1 − γ), so that
    one step moves θ by O(0.1) and some pairs clip within K = 10 steps."""
    mdp = get_mdp(family, n_states)
    a = mdp.a_indptr
    states = np.repeat(np.arange(mdp.n_states), np.diff(a))
    theta0 = get_logits(family, n_states)
    pi_old = get_policy(family, n_states)
    adv = np.random.default_rng(SEED + 2).standard_normal(mdp.n_pairs)
    adv -= np.add.reduceat(pi_old * adv, a[:-1])[states]
    weight = np.full(mdp.n_states, 1.0 / (mdp.n_states * (1.0 - mdp.gamma)))
    ref = 1.0 / np.diff(a)[states]
    lr = 0.1 * mdp.n_states * (1.0 - mdp.gamma)
    for x in (adv, weight, ref):
        x.flags.writeable = False
    return mdp, pi_old, adv, weight, ref, theta0, lr


def get_reg():
    """The regularizer used by evaluate / gradient benchmarks: 0.1 · KL(π ‖ uniform)."""
    return fastppo.ReverseKL(0.1)


def reset_peak_rss():
    """Reset the process's peak RSS to its current RSS (Linux ≥ 4.0; elsewhere a no-op).

    Called at the end of a peakmem ``setup``: building a large MDP (the generators' int32
    and bool temporaries) peaks above the working set of the operation itself, and asv's
    peakmem reads ``ru_maxrss``, which would otherwise still hold the setup's peak.
    ``peakmem_reference`` then measures the RSS after setup and ``peakmem_<op>`` the
    peak during the operation.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass


_warm = set()


def warm(key, func):
    """Call ``func()`` once per process for ``key`` (JIT compile / cache load, page-in)."""
    if key not in _warm:
        func()
        _warm.add(key)


TINY = 200


@functools.lru_cache(maxsize=None)
def get_tiny(family):
    """A 200-state MDP of the family: warms the JIT without a full-size call."""
    return get_mdp(family, TINY)


class TimeSolve:
    """Timing attributes shared by the solver suites (one call = tens to hundreds of products).

    ``setup`` already ran the operation once, so no asv warm-up; one call per sample,
    1 to 3 samples within ~0.5 s (keeps the default suite to a few minutes; raise with
    ``asv run -a repeat=7 -a rounds=2`` for publication numbers).
    """

    number = 1
    repeat = (1, 3, 0.5)
    rounds = 1
    warmup_time = 0.0
    timeout = 300


class OperationSuite(TimeSolve):
    """Wall time of one call ``operation(mdp, argument, backend, n_threads)``.

    Subclasses set ``name``, ``operation`` and ``argument`` (``get_policy`` or
    ``get_logits``) and define ``time_<name>`` calling ``self.call``.
    """

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]
    argument = staticmethod(get_policy)

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        self.arg = self.argument(family, n_states)
        tiny, tiny_arg = get_tiny(family), self.argument(family, TINY)
        warm((self.name, backend, family, n_threads),
             lambda: self.operation(tiny, tiny_arg, backend, n_threads))

    def call(self, backend, n_threads):
        return self.operation(self.mdp, self.arg, backend, n_threads)


class OperationMemory:
    """Peak RSS of one call (subtract ``peakmem_reference``: process + MDP + JIT).

    Subclasses set ``operation`` and ``argument`` and define ``peakmem_<name>``
    calling ``self.call``.
    """

    params = [BACKENDS, MEM_SIZES, FAMILIES]
    param_names = ["backend", "n_states", "family"]
    argument = staticmethod(get_policy)

    def setup(self, backend, n_states, family):
        check_params(backend, n_states)
        self.operation(get_tiny(family), self.argument(family, TINY), backend, 1)  # load kernels
        self.mdp = get_mdp(family, n_states)
        self.arg = self.argument(family, n_states)
        reset_peak_rss()

    def __init_subclass__(cls, **kwargs):
        # the benchmark method exists on subclasses only: asv would otherwise also
        # collect this base class (imported into every bench module) and fail its setup
        super().__init_subclass__(**kwargs)
        cls.peakmem_reference = cls._reference

    def _reference(self, backend, n_states, family):
        pass

    def call(self, backend):
        return self.operation(self.mdp, self.arg, backend, 1)


class OperationProducts:
    """Products one call needs to reach 1e-12: the algorithmic cost, separate from
    the cost per product (backend-independent up to round-off, so measured with numba).
    Subclasses set ``products(mdp, argument)`` and ``argument``."""

    params = [SIZES, FAMILIES]
    param_names = ["n_states", "family"]
    unit = "products"
    argument = staticmethod(get_policy)

    def setup(self, n_states, family):
        check_params("numba", n_states)
        self.mdp = get_mdp(family, n_states)
        self.arg = self.argument(family, n_states)

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)  # see OperationMemory
        cls.track_n_matvec = cls._track_n_matvec

    def _track_n_matvec(self, n_states, family):
        return self.products(self.mdp, self.arg)


def _preload():
    """Load the serial Numba kernels and the Cython modules in asv's fork server.

    asv (``"launch_method": "forkserver"``) imports the benchmark modules once in a
    server process (``benchmark.py run_server ...``) and forks one child per benchmark
    and parameter set, so whatever is loaded here is not paid again per child (the Numba
    cache load is ~0.6 s). Only n_threads=1 is run: a process that has run a parallel
    Numba kernel (GNU OpenMP thread pool) must not fork. With ``--launch-method spawn``
    (a fresh interpreter per benchmark) nothing is preloaded.
    """
    if "run_server" not in sys.argv:
        return
    tiny = get_tiny("garnet")
    pi = tiny.uniform_policy()
    for backend in ("numba", "cython"):
        try:
            fastppo.gradient(tiny, np.log(pi), get_reg(), backend=backend, n_threads=1)
        except Exception:  # a broken backend must not hide the rest of the suite
            pass


_preload()
