"""fastppo.evaluate_batch / visitation_batch: K members at once (issue 14 item 5).

Compare ``time_evaluate_batch`` with ``bench_evaluate.EvaluateSuite.time_evaluate`` (one
policy) at the same parameters; benchmarks/batched.py measures both side by side in one
process (the table in RESULTS.md).
"""
import functools

import numpy as np

import fastppo

from .common import (BACKENDS, FAMILIES, SIZES, TINY, TimeSolve, check_params, get_mdp, get_reg,
                     get_tiny, warm)

K_VALUES = [1, 8]


@functools.lru_cache(maxsize=None)
def get_batch(family, n_states, K):
    """(K policies (K, n_pairs), K reward vectors (K, n_pairs)): softmax of N(0, 1) logits
    (seeds 1 … K) and r + 0.1·std(r)·z, z ~ N(0, 1) (seed 0)."""
    mdp = get_mdp(family, n_states)
    pis = np.stack([fastppo.softmax(mdp, np.random.default_rng(1 + m).standard_normal(mdp.n_pairs),
                                    backend="numpy") for m in range(K)])
    R = mdp.r + 0.1 * mdp.r.std() * np.random.default_rng(0).standard_normal((K, mdp.n_pairs))
    for x in (pis, R):
        x.flags.writeable = False
    return pis, R


class BatchSuite(TimeSolve):
    """Wall time of ``evaluate_batch`` (0.1·KL) on K policies and on one policy with K
    reward vectors, and of ``visitation_batch`` on K policies, to relative residual 1e-12."""

    params = [BACKENDS, SIZES, FAMILIES, K_VALUES]
    param_names = ["backend", "n_states", "family", "K"]

    def setup(self, backend, n_states, family, K):
        check_params(backend, n_states)
        self.mdp = get_mdp(family, n_states)
        self.pis, self.R = get_batch(family, n_states, K)
        tiny = get_tiny(family)
        tiny_pis, tiny_R = get_batch(family, TINY, K)
        warm(("batch", backend, family, K), lambda: (
            fastppo.evaluate_batch(tiny, tiny_pis, get_reg(), backend=backend, n_threads=1),
            fastppo.evaluate_batch(tiny, tiny_pis[0], get_reg(), r=tiny_R, backend=backend,
                                   n_threads=1),  # the shared product's kernels too
            fastppo.visitation_batch(tiny, tiny_pis, backend=backend, n_threads=1)))

    def time_evaluate_batch_policies(self, backend, n_states, family, K):
        fastppo.evaluate_batch(self.mdp, self.pis, get_reg(), backend=backend, n_threads=1)

    def time_evaluate_batch_rewards(self, backend, n_states, family, K):
        fastppo.evaluate_batch(self.mdp, self.pis[0], get_reg(), r=self.R, backend=backend,
                               n_threads=1)

    def time_visitation_batch(self, backend, n_states, family, K):
        fastppo.visitation_batch(self.mdp, self.pis, backend=backend, n_threads=1)


class BatchPasses:
    """Batched products (passes over the transitions) of ``evaluate_batch`` on K
    policies: the lockstep sweeps, against ``bench_evaluate.EvaluateProducts``."""

    params = [SIZES, FAMILIES, K_VALUES]
    param_names = ["n_states", "family", "K"]
    unit = "products"

    def setup(self, n_states, family, K):
        check_params("numba", n_states)
        self.mdp = get_mdp(family, n_states)
        self.pis, _ = get_batch(family, n_states, K)

    def track_n_passes(self, n_states, family, K):
        return fastppo.evaluate_batch(self.mdp, self.pis, get_reg(), n_threads=1).n_passes
