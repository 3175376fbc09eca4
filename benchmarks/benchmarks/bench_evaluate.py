"""fastppo.evaluate: regularized Ṽ, Q̃, Ã of a fixed policy (one GMRES solve + tables)."""
import fastppo

from .common import (FAMILIES, SIZES, OperationMemory, OperationSuite, check_params, get_mdp,
                     get_policy, get_reg)


def _evaluate(mdp, pi, backend, n_threads):
    return fastppo.evaluate(mdp, pi, get_reg(), backend=backend, n_threads=n_threads)


class EvaluateSuite(OperationSuite):
    """Wall time of ``evaluate(mdp, pi, 0.1·KL)`` to relative residual 1e-12."""

    name, operation = "evaluate", staticmethod(_evaluate)

    def time_evaluate(self, backend, n_states, family, n_threads):
        self.call(backend, n_threads)


class EvaluateMemory(OperationMemory):
    """Peak RSS of one ``evaluate``."""

    operation = staticmethod(_evaluate)

    def peakmem_evaluate(self, backend, n_states, family):
        self.call(backend)


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
