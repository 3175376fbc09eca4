"""fastppo.evaluate: regularized Ṽ, Q̃, Ã of a fixed policy (one GMRES solve + tables)."""
import fastppo

from .common import (BACKENDS, FAMILIES, MEM_SIZES, SIZES, THREADS, TimeSolve, check_params,
                     get_mdp, get_policy, get_reg, get_tiny, reset_peak_rss, warm)


def _evaluate(mdp, pi, backend, n_threads):
    return fastppo.evaluate(mdp, pi, get_reg(), backend=backend, n_threads=n_threads)


class EvaluateSuite(TimeSolve):
    """Wall time of ``evaluate(mdp, pi, 0.1·KL)`` to relative residual 1e-12."""

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        tiny = get_tiny(family)
        warm(("evaluate", backend, family, n_threads),
             lambda: _evaluate(tiny, tiny.uniform_policy(), backend, n_threads))

    def time_evaluate(self, backend, n_states, family, n_threads):
        _evaluate(self.mdp, self.pi, backend, n_threads)


class EvaluateMemory:
    """Peak RSS of one ``evaluate`` (subtract ``peakmem_reference``: process + MDP + JIT)."""

    params = [BACKENDS, MEM_SIZES, FAMILIES]
    param_names = ["backend", "n_states", "family"]

    def setup(self, backend, n_states, family):
        check_params(backend, n_states)
        tiny = get_tiny(family)  # load the kernels without touching the large MDP
        _evaluate(tiny, tiny.uniform_policy(), backend, 1)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        reset_peak_rss()

    def peakmem_reference(self, backend, n_states, family):
        pass

    def peakmem_evaluate(self, backend, n_states, family):
        _evaluate(self.mdp, self.pi, backend, 1)


class EvaluateProducts:
    """GMRES products with I − γP_π to reach 1e-12: the algorithmic cost, separate from
    the cost per product (backend-independent up to round-off, so measured with numba)."""

    params = [SIZES, FAMILIES]
    param_names = ["n_states", "family"]
    unit = "products"

    def setup(self, n_states, family):
        check_params("numba", n_states)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)

    def track_n_matvec(self, n_states, family):
        return _evaluate(self.mdp, self.pi, "numba", 1).n_matvec
