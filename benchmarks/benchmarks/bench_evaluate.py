"""fastppo.evaluate: regularized Ṽ, Q̃, Ã of a fixed policy (one GMRES solve + tables)."""
import fastppo

from .common import (BACKENDS, FAMILIES, MEM_SIZES, SIZES, THREADS, TimeSolve, get_mdp, get_policy, get_reg,
                     get_tiny, check_params, warm)


class EvaluateSuite(TimeSolve):
    """Wall time of ``evaluate(mdp, pi, 0.1·KL)`` to relative residual 1e-12."""

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        self.reg = get_reg()
        warm(("evaluate", backend, n_states, family, n_threads),
             lambda: self.time_evaluate(backend, n_states, family, n_threads))

    def time_evaluate(self, backend, n_states, family, n_threads):
        fastppo.evaluate(self.mdp, self.pi, self.reg, backend=backend, n_threads=n_threads)


class EvaluateMemory:
    """Peak RSS of one ``evaluate`` (subtract ``peakmem_reference``: process + MDP + JIT)."""

    params = [BACKENDS, MEM_SIZES, FAMILIES]
    param_names = ["backend", "n_states", "family"]

    def setup(self, backend, n_states, family):
        check_params(backend, n_states)
        tiny = get_tiny(family)  # compile / load kernels without touching the large MDP
        fastppo.evaluate(tiny, tiny.uniform_policy(), get_reg(), backend=backend, n_threads=1)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        self.reg = get_reg()

    def peakmem_reference(self, backend, n_states, family):
        pass

    def peakmem_evaluate(self, backend, n_states, family):
        fastppo.evaluate(self.mdp, self.pi, self.reg, backend=backend, n_threads=1)


class EvaluateProducts:
    """GMRES products with I − γP_π to reach 1e-12: the algorithmic cost, separate from the
    cost per product (backend-independent up to round-off, so measured with numba)."""

    params = [SIZES, FAMILIES]
    param_names = ["n_states", "family"]
    unit = "products"

    def setup(self, n_states, family):
        check_params("numba", n_states)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)

    def track_n_matvec(self, n_states, family):
        return fastppo.evaluate(self.mdp, self.pi, get_reg(), backend="numba", n_threads=1).n_matvec
