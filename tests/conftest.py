"""Shared fixtures: backends, seeds and small MDPs."""
import os
import tempfile

# Numba's cache must live outside the package tree (set before numba is imported).
os.environ.setdefault("NUMBA_CACHE_DIR", os.path.join(tempfile.gettempdir(), "fastppo-numba-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import fastppo  # noqa: E402

BACKENDS = ["numba", "cython", "numpy"]
MAX_WORKERS = 4  # each worker compiles the Numba kernels it meets that the cache lacks


def pytest_xdist_auto_num_workers(config):
    """``-n auto``: one test worker per core this process may run on, at most MAX_WORKERS."""
    return max(1, min(MAX_WORKERS, len(os.sched_getaffinity(0))))


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


@pytest.fixture(params=[1, 2], ids=lambda n: f"threads{n}")
def n_threads(request):
    return request.param


def raw_mdp(seed, n_states=12, n_actions=3, rectangular=True, density=0.4, boost=0.1,
            reward_scales=None):
    """(s_indices, a_indices, P dense (n_pairs, S), R) of a small random MDP, in generation
    order; non-rectangular ones have 1..n_actions actions per state, with non-contiguous
    action labels."""
    rng = np.random.default_rng(seed)
    s_idx, a_idx, rows = [], [], []
    for s in range(n_states):
        labels = (np.arange(n_actions) if rectangular
                  else np.sort(rng.choice(2 * n_actions, rng.integers(1, n_actions + 1), replace=False)))
        for a in labels:
            p = rng.random(n_states) * (rng.random(n_states) < density)
            p[rng.integers(n_states)] += boost
            rows.append(p / p.sum())
            s_idx.append(s)
            a_idx.append(a)
    R = rng.normal(size=len(s_idx))
    if reward_scales is not None:
        R = R * rng.choice(reward_scales)
    return np.array(s_idx), np.array(a_idx), np.array(rows), R, rng


def random_mdp(seed, n_states=12, n_actions=3, gamma=0.9, rectangular=True, density=0.4):
    """A small random MDP (see raw_mdp) with a random full-support rho."""
    s_idx, a_idx, P, R, rng = raw_mdp(seed, n_states, n_actions, rectangular, density)
    rho = rng.random(n_states) + 0.1
    return fastppo.MDP.from_sa_pairs(s_idx, a_idx, P, R, gamma, rho / rho.sum())


def random_policy(mdp, seed, sharp=1.0):
    rng = np.random.default_rng(seed)
    logits = sharp * rng.normal(size=mdp.n_pairs)
    return fastppo.softmax(mdp, logits, backend="numpy"), logits


def gather_rows_cases():
    """(mdp, π, cases) for where the evaluator's rows for eight-lane gathers apply: a
    300-state garnet, a policy on all its pairs, and (mdp, backend, policy, applies) for a
    compiled backend, the NumPy one, a deterministic policy (compact rows) and float32
    storage."""
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=14)
    pi = random_policy(mdp, 15)[0]
    det = np.zeros(mdp.n_pairs)
    det[mdp.a_indptr[:-1]] = 1.0
    single = fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices,
                         mdp.p_data, mdp.r, mdp.gamma, dtype=np.float32)
    return mdp, pi, ((mdp, "cython", pi, True), (mdp, "numba", pi, True),
                     (mdp, "numpy", pi, False), (mdp, "cython", det, False),
                     (single, "cython", pi, False))


@pytest.fixture
def small_mdp():
    return random_mdp(0)


@pytest.fixture
def ragged_mdp():
    return random_mdp(1, rectangular=False)


# the scripts mpiexec runs (tests/test_distributed.py), not modules to collect for doctests
collect_ignore = ["mpi_scripts"]
