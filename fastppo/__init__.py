"""fastppo: exact and sample-based PPO-Clip on large sparse finite MDPs.

Quick start::

    import fastppo
    mdp = fastppo.garnet(50_000, 10, 10, gamma=0.99, seed=0)
    ev = fastppo.evaluate(mdp, mdp.uniform_policy(), fastppo.ForwardKL(0.1))
    d = fastppo.visitation(mdp, mdp.uniform_policy())
"""
from ._backend import backend, get_backend, set_backend, set_num_threads, show_backends
from ._errors import ConvergenceWarning
from ._krylov import ConvergenceError
from .evaluation import Evaluation, evaluate, gradient, softmax, visitation
from .batched import BatchEvaluation, evaluate_batch, visitation_batch
from .generators import chain, garnet, gridworld, pendulum, queue2d, token_tree
from .mdp import MDP
from ._memory import release_buffers
from .tokens import OutcomeReward, TokenMDP, token_mdp
from . import reward_model
from .sampled import (AdaptiveKLController, Rollout, SampledPPO, SampledPPOConfig,
                      discounted_returns, gae, group_advantages, kl_estimate, process_rewards,
                      rollout)
from .solvers import NPG, KLPenaltyPPO, PPOClip, RunResult, SoftmaxPG, SolveResult, solve
from .sweeps import sweep
from .targets import (NoTargetError, SampledTarget, advantage_scale, expected_update,
                      sampled_target, tv_distance)
from .regularizers import (AlphaDivergence, ChiSquare, ForwardKL, Hellinger, JensenShannon,
                           Regularizer, ReverseKL)

__version__ = "0.1.0"
__all__ = [
    "MDP", "garnet", "gridworld", "chain", "queue2d", "pendulum", "token_tree", "token_mdp", "TokenMDP", "OutcomeReward",
    "Regularizer", "ReverseKL", "ForwardKL", "ChiSquare", "Hellinger", "JensenShannon",
    "AlphaDivergence",
    "evaluate", "visitation", "gradient", "softmax", "Evaluation", "ConvergenceError",
    "evaluate_batch", "visitation_batch", "BatchEvaluation",
    "ConvergenceWarning",
    "solve", "PPOClip", "SoftmaxPG", "NPG", "KLPenaltyPPO", "SolveResult", "RunResult",
    "rollout", "Rollout", "gae", "discounted_returns", "kl_estimate", "group_advantages",
    "process_rewards",
    "AdaptiveKLController", "SampledPPO", "SampledPPOConfig",
    "sampled_target", "SampledTarget", "NoTargetError", "expected_update", "advantage_scale",
    "tv_distance",
    "backend", "set_backend", "get_backend", "set_num_threads", "show_backends",
    "sweep", "reward_model", "release_buffers",
]
