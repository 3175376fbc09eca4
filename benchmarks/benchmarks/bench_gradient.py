"""fastppo.gradient: exact ∂Ṽ(ρ)/∂θ of the softmax policy (softmax + two solves +
tables)."""
import fastppo

from .common import (FAMILIES, SIZES, OperationMemory, OperationSuite, check_params,
                     get_logits, get_mdp, get_reg)


def _gradient(mdp, logits, backend, n_threads):
    return fastppo.gradient(mdp, logits, get_reg(), backend=backend, n_threads=n_threads)


class GradientSuite(OperationSuite):
    """Wall time of ``gradient(mdp, logits, 0.1·KL)`` (both solves to 1e-12)."""

    name, operation, argument = "gradient", staticmethod(_gradient), staticmethod(get_logits)

    def time_gradient(self, backend, n_states, family, n_threads):
        self.call(backend, n_threads)


class GradientMemory(OperationMemory):
    """Peak RSS of one ``gradient``."""

    operation, argument = staticmethod(_gradient), staticmethod(get_logits)

    def peakmem_gradient(self, backend, n_states, family):
        self.call(backend)


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
