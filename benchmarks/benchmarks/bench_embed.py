"""A solver inside a pipeline: ``MDP.with_rewards`` against rebuilding the MDP, and the
products of a warm-started ``solve`` after a 1 % reward change (benchmarks/warm_start.py
prints the full table)."""
import functools

import numpy as np

import fastppo

from .common import FAMILIES, SIZES, check_params, get_mdp

REGS = {"none": None, "reverse-kl-0.1": fastppo.ReverseKL(0.1)}


class WithRewardsSuite:
    """``mdp.with_rewards(r)`` (O(n_pairs): the transitions are shared) next to
    ``MDP(...)`` rebuilt from the same arrays (O(nnz): every array checked and copied)."""

    params = [SIZES]
    param_names = ["n_states"]

    def setup(self, n_states):
        check_params("numba", n_states)
        self.mdp = get_mdp("garnet", n_states)
        self.r = self.mdp.r + 0.01

    def time_with_rewards(self, n_states):
        self.mdp.with_rewards(self.r)

    def time_rebuild(self, n_states):
        m = self.mdp
        fastppo.MDP(m.a_indptr, m.a_indices, m.p_indptr, m.p_indices, m.p_data, self.r,
                    m.gamma, m.rho)


@functools.lru_cache(maxsize=None)
def warm_and_cold(family, n_states, reg):
    """(cold, warm) products of ``solve`` on the MDP whose rewards moved by 1 % of their
    spread at every pair (r + 0.01·std(r)·z, z ~ N(0, 1), seed 1); warm: ``v0`` = the
    values of the optimum before the change."""
    mdp = get_mdp(family, n_states)
    old = fastppo.solve(mdp, REGS[reg])
    z = np.random.default_rng(1).standard_normal(mdp.n_pairs)
    new = mdp.with_rewards(mdp.r + 0.01 * mdp.r.std() * z)
    cold = fastppo.solve(new, REGS[reg])
    warm = fastppo.solve(new, REGS[reg], v0=old.v)
    return cold.n_matvec, warm.n_matvec


class WarmStartProducts:
    """Products of a warm-started ``solve(new, v0=old.v)`` and their ratio to a cold one
    (the issue's target: ≤ 0.4); algorithmic counts, measured with numba."""

    params = [SIZES, FAMILIES, list(REGS)]
    param_names = ["n_states", "family", "reg"]
    timeout = 600

    def setup(self, n_states, family, reg):
        check_params("numba", n_states)

    def track_warm_products(self, n_states, family, reg):
        return warm_and_cold(family, n_states, reg)[1]

    track_warm_products.unit = "products"

    def track_warm_over_cold(self, n_states, family, reg):
        cold, warm = warm_and_cold(family, n_states, reg)
        return warm / cold

    track_warm_over_cold.unit = "ratio"
