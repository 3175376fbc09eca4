"""fastppo.visitation: d^π_μ = (1−γ)(I − γP_πᵀ)^{-1} μ (one GMRES solve, transposed
products)."""
import fastppo

from .common import (BACKENDS, FAMILIES, MEM_SIZES, SIZES, THREADS, TimeSolve, check_params,
                     get_mdp, get_policy, get_tiny, reset_peak_rss, warm)


def _visitation(mdp, pi, backend, n_threads):
    return fastppo.visitation(mdp, pi, backend=backend, n_threads=n_threads, full_output=True)


class VisitationSuite(TimeSolve):
    """Wall time of ``visitation(mdp, pi)`` (μ = ρ uniform) to relative residual 1e-12."""

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        tiny = get_tiny(family)
        warm(("visitation", backend, family, n_threads),
             lambda: _visitation(tiny, tiny.uniform_policy(), backend, n_threads))

    def time_visitation(self, backend, n_states, family, n_threads):
        _visitation(self.mdp, self.pi, backend, n_threads)


class VisitationMemory:
    """Peak RSS of one ``visitation`` (subtract ``peakmem_reference``)."""

    params = [BACKENDS, MEM_SIZES, FAMILIES]
    param_names = ["backend", "n_states", "family"]

    def setup(self, backend, n_states, family):
        check_params(backend, n_states)
        tiny = get_tiny(family)
        _visitation(tiny, tiny.uniform_policy(), backend, 1)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        reset_peak_rss()

    def peakmem_reference(self, backend, n_states, family):
        pass

    def peakmem_visitation(self, backend, n_states, family):
        _visitation(self.mdp, self.pi, backend, 1)


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
