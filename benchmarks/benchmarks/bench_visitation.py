"""fastppo.visitation: d^π_μ = (1−γ)(I − γP_πᵀ)^{-1} μ (one linear solve, transposed
products)."""
import fastppo

from .common import OperationMemory, OperationProducts, OperationSuite


def _visitation(mdp, pi, backend, n_threads):
    return fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads, full_output=True)


class VisitationSuite(OperationSuite):
    """Wall time of ``visitation(mdp, pi)`` (μ = ρ uniform) to relative residual 1e-12."""

    name, operation = "visitation", staticmethod(_visitation)

    def time_visitation(self, backend, n_states, family, n_threads):
        self.call(backend, n_threads)


class VisitationMemory(OperationMemory):
    """Peak RSS of one ``visitation``."""

    operation = staticmethod(_visitation)

    def peakmem_visitation(self, backend, n_states, family):
        self.call(backend)


class VisitationProducts(OperationProducts):
    """Products with I − γP_πᵀ (Richardson, then BiCGSTAB / GMRES if needed) to reach 1e-12."""

    @staticmethod
    def products(mdp, pi):
        return _visitation(mdp, pi, "numba", 1).n_matvec
