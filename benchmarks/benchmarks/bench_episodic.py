"""Token MDPs (gamma = 1): building one, and one topological pass of the episodic kernels.

``token_mdp(8, max_len, 4, seed=0)`` has 4 (8^L − 1)/7 + 1 states and 9 pairs per state:
2,341 (L = 4), 18,725 (L = 5) and 149,797 (L = 6; 1.35 million pairs). One pass of
``episodic_values`` (v) or ``episodic_visits`` (n) replaces a whole linear solve; compare
its time with one ``bellman_matvec`` product on the same MDP (``time_product``).
"""
import functools

import numpy as np

import fastppo
from fastppo._backend import get_kernel

from .common import BACKENDS, warm

MAX_LENS = [4, 5, 6]


@functools.lru_cache(maxsize=None)
def get_task(max_len):
    return fastppo.token_mdp(8, max_len, 4, seed=0)


class TokenMDPBuild:
    params = [MAX_LENS]
    param_names = ["max_len"]
    number = 1
    repeat = (3, 10, 2.0)

    def time_build(self, max_len):
        fastppo.token_mdp(8, max_len, 4, seed=0)

    def peakmem_build(self, max_len):
        fastppo.token_mdp(8, max_len, 4, seed=0)


class EpisodicPass:
    params = [["episodic_values", "episodic_visits"], BACKENDS, MAX_LENS]
    param_names = ["kernel", "backend", "max_len"]
    number = 1
    repeat = (5, 20, 0.2)
    warmup_time = 0.0

    def setup(self, kernel, backend, max_len):
        task = get_task(max_len)
        m = task.mdp
        m.topological_order  # computed once per MDP (at construction for gamma = 1)
        args = (m.topological_order, m.terminal.view(np.uint8), m.a_indptr, m.p_indptr,
                m.p_indices, m.p_data, task.ref, 1.0)
        x = m.rho if kernel == "episodic_visits" else np.ones(m.n_states)
        out = np.empty(m.n_states)
        k = get_kernel(kernel, backend)
        self.call = lambda: k(*args, x, out, 1)
        matvec = get_kernel("bellman_matvec", backend)
        self.product = lambda: matvec(m.a_indptr, m.p_indptr, m.p_indices, m.p_data, task.ref,
                                      0.99, x, out, 1)
        warm((kernel, backend, max_len), lambda: (self.call(), self.product()))

    def time_pass(self, kernel, backend, max_len):
        self.call()

    def time_product(self, kernel, backend, max_len):
        self.product()
