"""The sample-based pipeline: ``fastppo.rollout`` (environment steps), ``fastppo.gae``,
and one ``SampledPPO`` iteration (rollout, advantages, minibatch epochs, exact J).

Rollouts run on the garnet family (successors anywhere: random memory access) and on a
gridworld (short rows, local successors), 4,096 environments × 64 steps.
"""
import numpy as np

import fastppo

from .common import BACKENDS, THREADS, check_params, get_mdp, get_policy, warm

N_ENVS, HORIZON = 4096, 64


class _Timing:
    number = 1  # one call per sample; setup already warmed the JIT
    repeat = (3, 10, 0.5)
    rounds = 1
    warmup_time = 0.0


class Rollout(_Timing):
    params = [BACKENDS, [1_000, 10_000], ["garnet", "grid"], THREADS]
    param_names = ["backend", "n_states", "family", "n_threads"]

    def setup(self, backend, n_states, family, n_threads):
        check_params(backend, n_states, n_threads)
        self.mdp = get_mdp(family, n_states)
        self.pi = get_policy(family, n_states)
        warm(("rollout", backend, family, n_threads),
             lambda: fastppo.rollout(self.mdp, self.pi, 8, 4, 0, backend=backend,
                                     n_threads=n_threads))

    def time_rollout(self, backend, n_states, family, n_threads):
        fastppo.rollout(self.mdp, self.pi, N_ENVS, HORIZON, 0, backend=backend,
                        n_threads=n_threads)

    def track_steps(self, backend, n_states, family, n_threads):
        """Environment steps in one timed rollout (divide by the time for steps/s)."""
        return int(fastppo.rollout(self.mdp, self.pi, N_ENVS, HORIZON, 0, backend=backend,
                                   n_threads=n_threads).mask.sum())

    track_steps.unit = "steps"


class GAE(_Timing):
    params = [BACKENDS, THREADS]
    param_names = ["backend", "n_threads"]

    def setup(self, backend, n_threads):
        check_params(backend, 0, n_threads)
        rng = np.random.default_rng(0)
        shape = (N_ENVS, 256)
        self.args = (rng.random(shape), rng.random(shape), rng.random(shape),
                     rng.random(shape) < 0.01, np.zeros(shape, bool))
        self.args[4][:, -1] = True
        warm(("gae", backend, n_threads),
             lambda: fastppo.gae(*(a[:2, :4] for a in self.args), 0.99, 0.95, backend=backend))

    def time_gae(self, backend, n_threads):
        fastppo.gae(*self.args, 0.99, 0.95, backend=backend, n_threads=n_threads)


class SampledPPOIteration(_Timing):
    params = [BACKENDS, ["gae", "grpo"]]
    param_names = ["backend", "advantage"]
    repeat = (3, 10, 1.0)

    def setup(self, backend, advantage):
        mdp = fastppo.garnet(1_000, 4, 5, gamma=0.95, seed=0)
        self.ppo = fastppo.SampledPPO(mdp, fastppo.ReverseKL(0.1), advantage=advantage,
                                      n_envs=1024, seed=0, backend=backend)
        self.ppo.step()  # JIT and warm-start

    def time_step(self, backend, advantage):
        self.ppo.step()
