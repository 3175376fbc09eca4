"""One exact PPO-Clip outer iteration (``PPOClip.step()``) and the regularized optimum
(``solve``), with the products and the passes over P they need beside their times.

The README problem's settings at benchmark sizes: forward KL τ = 0.1, ε = 0.2, K = 10,
default scale-free step. ``PPOStepSuite`` times the step after ``WARMUP`` outer
iterations (warm starts predicted from the solutions before, as late in a run): ``setup``
restores the same iterate before every sample, so every sample times the same step.
``track_products`` / ``track_passes``: products with I − γP_π (a fused pass counts two)
and reads of P's arrays (a fused pass counts one) of that step — fewer products and
cheaper products show up separately, as in the ``*Products`` suites of the solves.
"""
import functools

import fastppo

from .common import (BACKENDS, FAMILIES, SIZES, THREADS, SkipNotImplemented, TimeSolve,
                     check_params, get_mdp, get_tiny, warm)

WARMUP = 20


def _reg():
    return fastppo.ForwardKL(0.1)


@functools.lru_cache(maxsize=None)
def _after_warmup(backend, n_states, family, n_threads):
    """(method, snapshot) after WARMUP iterations (memoised: asv calls setup per sample)."""
    ppo = fastppo.PPOClip(get_mdp(family, n_states), _reg(), backend=backend, n_threads=n_threads)
    ppo.run(WARMUP)
    return ppo, _snapshot(ppo)


def _passes(n_passes):
    """``int(n_passes)``, or a skip for commits that did not count passes yet (asv runs
    this suite against older commits: ``benchmarks/history_commits.txt``)."""
    if n_passes is None:
        raise SkipNotImplemented("this commit does not count passes over P")
    return int(n_passes)


def _copy(x):
    return x.copy() if hasattr(x, "copy") else x


def _snapshot(ppo):
    """The iterate of ``ppo``: logits, π, history, and the warm starts (``_state``)."""
    return dict(state={k: _copy(v) for k, v in ppo._state().items()}, logits=ppo.logits.copy(),
                pi=ppo.pi.copy(), n_iter=ppo.n_iter, rows=list(ppo._rows))


def _restore(ppo, snap):
    ppo.logits, ppo.pi = snap["logits"].copy(), snap["pi"].copy()
    ppo.n_iter, ppo._rows = snap["n_iter"], list(snap["rows"])
    ppo._set_state({k: _copy(snap["state"].get(k)) for k in type(ppo).STATE})


class PPOStepSuite(TimeSolve):
    """Wall time of one ``PPOClip.step()`` after 20 iterations, and its products and passes."""

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        warm(("ppo", backend, family, n_threads),
             lambda: fastppo.PPOClip(get_tiny(family), _reg(), backend=backend,
                                     n_threads=n_threads).run(3))
        self.ppo, snap = _after_warmup(backend, n_states, family, n_threads)
        _restore(self.ppo, snap)

    def time_step(self, backend, n_states, family, n_threads):
        self.ppo.step()

    def track_products(self, backend, n_states, family, n_threads):
        return int(self.ppo.step()["n_matvec"])

    track_products.unit = "products"

    def track_passes(self, backend, n_states, family, n_threads):
        return _passes(self.ppo.step().get("n_passes"))

    track_passes.unit = "passes"


class SolveSuite(TimeSolve):
    """Wall time of ``solve(mdp, ForwardKL(0.1))`` (regularized policy iteration to a
    Bellman residual of 1e-12), and its products and passes over P."""

    params = [BACKENDS, SIZES, FAMILIES, THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        warm(("solve", backend, family, n_threads),
             lambda: fastppo.solve(get_tiny(family), _reg(), backend=backend, n_threads=n_threads))

    def _solve(self, backend, n_threads):
        return fastppo.solve(self.mdp, _reg(), backend=backend, n_threads=n_threads)

    def time_solve(self, backend, n_states, family, n_threads):
        self._solve(backend, n_threads)

    def track_products(self, backend, n_states, family, n_threads):
        return int(self._solve(backend, n_threads).n_matvec)

    track_products.unit = "products"

    def track_passes(self, backend, n_states, family, n_threads):
        return _passes(getattr(self._solve(backend, n_threads), "n_passes", None))

    track_passes.unit = "passes"
