"""fastppo.gradient: exact ∂Ṽ(ρ)/∂θ of the softmax policy (softmax + two solves +
tables)."""
import fastppo

from .common import OperationMemory, OperationProducts, OperationSuite, get_logits, get_reg


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


class GradientProducts(OperationProducts):
    """Products used by one ``gradient``: the evaluation solve plus the visitation solve."""

    argument = staticmethod(get_logits)

    @staticmethod
    def products(mdp, logits):
        opts = dict(backend="numba", n_threads=1)
        pi = fastppo.softmax(mdp, logits, **opts)
        ev = fastppo.evaluate(mdp, pi, get_reg(), **opts)
        d = fastppo.visitation(mdp, pi, full_output=True, **opts)
        return ev.n_matvec + d.n_matvec
