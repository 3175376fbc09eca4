"""The ``ppo_update`` kernel (K = 10 inner steps of exact PPO-Clip on every pair, SPEC §1)
through ``fastppo._backend.get_kernel``, per backend, thread count and f-divergence.

ns per pair per inner step = time / (n_pairs · K); ``benchmarks/ppo_update_ns.py``
prints that table directly (issue 12 target 3: ≤ 3 ns for τ = 0 and the two KLs, ≤ 6 ns
for the other f, garnet S = 50,000, A = 10, one thread).
"""
import numpy as np

from .common import (BACKENDS, PPO_DIVERGENCES, PPO_STEPS, PPO_TAU, SIZES, THREADS, check_params,
                     kernel_or_skip, ppo_update_inputs, warm)

try:  # the kernels' log_ref argument (log π_ref, formed once per run)
    from fastppo._evaluator import ppo_log_ref
except ImportError:  # older commits (asv's history): no log_ref argument
    ppo_log_ref = None


def ppo_update_call(backend, family, n_states, divergence, n_threads, n_steps=PPO_STEPS):
    """(reset, call): reset θ to θ0, then one ppo_update call of ``n_steps`` inner steps
    (outputs preallocated)."""
    mdp, pi_old, adv, weight, ref, theta0, lr = ppo_update_inputs(family, n_states)
    code, alpha = PPO_DIVERGENCES[divergence]
    tau = 0.0 if divergence == "none" else PPO_TAU
    theta = theta0.copy()
    outs = (np.empty(mdp.n_pairs), np.empty(mdp.n_states, dtype=np.int64),
            np.empty(mdp.n_states), np.empty(mdp.n_states))
    kernel = kernel_or_skip("ppo_update", backend)
    refs = (ref,) if ppo_log_ref is None else (ref, ppo_log_ref(code, tau, ref))

    def call():
        kernel(mdp.a_indptr, pi_old, adv, weight, *refs, code, alpha, tau, 0.2, 0.2, 0.0, lr,
               n_steps, theta, *outs, n_threads)

    return (lambda: np.copyto(theta, theta0)), call


class PPOUpdateSuite:
    """Wall time of one ``ppo_update`` call (garnet, A = 10, K = 10, ε = 0.2, τ = 0.1)."""

    params = [BACKENDS, SIZES, list(PPO_DIVERGENCES), THREADS]
    param_names = ["backend", "n_states", "divergence", "n_threads"]
    number = 1  # θ is updated in place: setup resets it before every sample
    repeat = (5, 20, 0.5)
    rounds = 1
    warmup_time = 0.0
    timeout = 300  # numba's first case compiles every branch of the kernel: 71 s cold, idle

    def setup(self, backend, n_states, divergence, n_threads):
        check_params(backend, n_states, n_threads)
        tiny_reset, tiny_call = ppo_update_call(backend, "garnet", 200, divergence, n_threads)
        warm(("ppo_update", backend, divergence, n_threads), tiny_call)
        self.reset, self.call = ppo_update_call(backend, "garnet", n_states, divergence,
                                                n_threads)
        self.reset()

    def time_ppo_update(self, backend, n_states, divergence, n_threads):
        self.call()
