"""fastppo.evaluate: regularized Ṽ, Q̃, Ã of a fixed policy (one linear solve + tables)."""
import fastppo

from .common import OperationMemory, OperationProducts, OperationSuite, get_reg


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


class EvaluateProducts(OperationProducts):
    """Products with I − γP_π (Richardson, then BiCGSTAB / GMRES if needed) to reach 1e-12."""

    @staticmethod
    def products(mdp, pi):
        return _evaluate(mdp, pi, "numba", 1).n_matvec
