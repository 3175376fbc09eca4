"""fastppo.gradient: exact ∂Ṽ(ρ)/∂θ of the softmax policy (softmax + two solves +
tables)."""
import fastppo

from .common import (BACKENDS, FAMILIES, MEM_SIZES, SIZES, THREADS, TINY, TimeSolve,
                     check_params, get_logits, get_mdp, get_reg, get_tiny, reset_peak_rss,
                     warm)


def _gradient(mdp, logits, backend, n_threads):
    return fastppo.gradient(mdp, logits, get_reg(), backend=backend, n_threads=n_threads)


class GradientSuite(TimeSolve):
    """Wall time of ``gradient(mdp, logits, 0.1·KL)`` (both solves to 1e-12)."""

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        self.logits = get_logits(family, n_states)
        tiny, tiny_logits = get_tiny(family), get_logits(family, TINY)
        warm(("gradient", backend, family, n_threads),
             lambda: _gradient(tiny, tiny_logits, backend, n_threads))

    def time_gradient(self, backend, n_states, family, n_threads):
        _gradient(self.mdp, self.logits, backend, n_threads)


class GradientMemory:
    """Peak RSS of one ``gradient`` (subtract ``peakmem_reference``)."""

    params = [BACKENDS, MEM_SIZES, FAMILIES]
    param_names = ["backend", "n_states", "family"]

    def setup(self, backend, n_states, family):
        check_params(backend, n_states)
        _gradient(get_tiny(family), get_logits(family, TINY), backend, 1)
        self.mdp = get_mdp(family, n_states)
        self.logits = get_logits(family, n_states)
        reset_peak_rss()

    def peakmem_reference(self, backend, n_states, family):
        pass

    def peakmem_gradient(self, backend, n_states, family):
        _gradient(self.mdp, self.logits, backend, 1)


class GradientProducts:
    """Products used by one ``gradient``: the evaluation solve plus the visitation solve."""

    params = [SIZES, FAMILIES]
    param_names = ["n_states", "family"]
    unit = "products"

    def setup(self, n_states, family):
        check_params("numba", n_states)
        self.mdp = get_mdp(family, n_states)
        self.pi = fastppo.softmax(self.mdp, get_logits(family, n_states), backend="numba")

    def track_n_matvec(self, n_states, family):
        opts = dict(backend="numba", n_threads=1)
        ev = fastppo.evaluate(self.mdp, self.pi, get_reg(), **opts)
        d = fastppo.visitation(self.mdp, self.pi, full_output=True, **opts)
        return ev.n_matvec + d.n_matvec
