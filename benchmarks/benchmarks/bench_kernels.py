"""One sparse product per kernel, through ``fastppo._backend.get_kernel`` (cost per product).

``bellman_matvec``: x − γP_π x; ``bellman_rmatvec``: x − γP_πᵀ x; ``q_values``: r + γ P v.
Together with the ``*Products`` tracks this separates "fewer products" from "faster
products".
"""
import numpy as np

from fastppo._backend import get_kernel

from .common import BACKENDS, FAMILIES, SIZES, THREADS, get_mdp, get_policy, check_params, warm

KERNELS = ["bellman_matvec", "bellman_rmatvec", "q_values"]


class KernelSuite:
    params = [KERNELS, BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["kernel", "backend", "n_states", "family", "n_threads"]
    number = 5
    repeat = (3, 10, 0.25)
    rounds = 1
    warmup_time = 0.0

    def setup(self, kernel, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        m = get_mdp(family, n_states)
        pi = get_policy(family, n_states)
        x = np.random.default_rng(0).random(m.n_states)
        k = get_kernel(kernel, backend)
        if kernel == "bellman_matvec":
            out = np.empty(m.n_states)
            args = (m.a_indptr, m.p_indptr, m.p_indices, m.p_data, pi, m.gamma, x, out, n_threads)
        elif kernel == "bellman_rmatvec":
            out = np.empty(m.n_states)
            buf = np.empty((n_threads, m.n_states))
            args = (m.a_indptr, m.p_indptr, m.p_indices, m.p_data, pi, m.gamma, x, out, buf, n_threads)
        else:
            out = np.empty(m.n_pairs)
            args = (m.p_indptr, m.p_indices, m.p_data, m.r, m.gamma, x, out, n_threads)
        self.call = lambda: k(*args)
        warm((kernel, backend, n_states, family, n_threads), self.call)

    def time_kernel(self, kernel, backend, n_states, family, n_threads):
        self.call()
