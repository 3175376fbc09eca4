"""fastppo.visitation: d^π_μ = (1−γ)(I − γP_πᵀ)^{-1} μ (one GMRES solve, transposed
products)."""
import fastppo

from .common import (FAMILIES, SIZES, OperationMemory, OperationSuite, check_params, get_mdp,
                     get_policy)


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


class VisitationProducts:
    """GMRES products with I − γP_πᵀ to reach 1e-12 (algorithmic cost)."""

    params = [SIZES, FAMILIES]
    param_names = ["n_states", "family"]
    unit = "products"

    def setup(self, n_states, family):
        check_params("numba", n_states)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)

    def track_n_matvec(self, n_states, family):
        return _visitation(self.mdp, self.pi, "numba", 1).n_matvec
