r"""Sample-based PPO on tabular MDPs: the RLHF pipeline, checked against the exact answer.

**Rollouts** (``rollout``). Each of ``n_envs`` environments runs one episode of at most
``horizon`` steps: start state from ρ (the same for the ``group_size`` members of a
group, as GRPO's completions share a prompt), a ~ π(·|s), s' ~ P(·|s,a); the episode
ends when s' is terminal (``MDP.terminal``: absorbing, zero reward) or at the horizon
(truncated). The uniforms are drawn from a seeded ``numpy.random.Generator`` outside the
kernels, so every backend gives the same trajectories.

**Returns and GAE** (``discounted_returns``, ``gae``), along the last (time) axis:

    δ_t = r_t + γ (1 − term_t) V(s_{t+1}) − V(s_t)
    A_t = δ_t + γλ (1 − done_t) A_{t+1}                 (done = terminated or truncated)
    G_t = r_t + γ (0 if term_t; V(s_{t+1}) if truncated_t; else G_{t+1})

so λ = 1 gives G − V and λ = 0 the TD error; truncation bootstraps from V.

**Rewards** (``process_rewards``). The environment rewards of a batch, optionally
standardised per episode score (``reward_norm``, TRL's ``normalize_reward``) and clipped
(``reward_clip``, OpenRLHF's ``reward_clip_range``), before the KL penalty.

**KL to the reference** per step, with log-ratio ℓ = log π_ref(a|s) − log π(a|s) at
a ~ π: k1 = −ℓ, k2 = ½ℓ², k3 = (e^ℓ − 1) − ℓ (k1 and k3 unbiased for KL(π ‖ π_ref),
k3 ≥ 0). As a reward penalty (``kl_penalty="reward"``, InstructGPT) r − β k; as a loss
term (``"loss"``, GRPO) β k(π_θ) is added to the minimised loss. β is fixed, or adapted
by the proportional controller of Ziegler et al. (2019),
β ← β (1 + clip(KL/target − 1, ±0.2) · n / horizon), toward ``kl_target_sequence`` (the
KL summed over an episode, averaged over the batch, n = episodes: TRL's and InstructGPT's
units) or ``kl_target_step`` (the mean per-step KL, n = steps; ``kl_target`` is its old
name).

**Advantages** (``advantage=``): ``gae`` (with the tabular critic V), or critic-free from
the discounted returns: ``grpo`` (G − mean)/(std + 1e-8) (unbiased std), ``dr_grpo``
G − mean, ``rloo`` G − mean of the other members, ``reinforce`` G. At
``advantage_level="sequence"`` (the default for ``grpo``: GRPO as practised) the
statistics are taken over the members' whole-episode returns G_0, one advantage for every
step of an episode; at ``"step"`` (the default for the others) over their reward-to-go
G_t at each step t (members whose episode has ended count with G_t = 0, the value of the
absorbing state). ``whiten`` then standardises them over the batch.

**The update** (``SampledPPO``): ``epochs`` passes over the batch in ``minibatches``
shuffled minibatches; each ascends the clipped surrogate min(r A, clip(r, 1−ε_low,
1+ε_high) A) (with dual clip c: gradient 0 once r > c for A < 0), plus the entropy bonus
``ent_coef`` · H(π(·|s)) of each sample's state, on tabular logits, and fits the critic to
the returns (value clipping optional). With ``weighting="state_mean"`` (default) each
visited state moves by ``lr`` times the *mean* over its samples (a per-state
normalisation that makes ``lr`` dimensionless); with ``"sample_mean"`` by ``lr`` times the
gradient of the minibatch's mean loss, as standard PPO (each state weighted by its share
of the samples: ``lr`` then wants about the number of states a minibatch visits times
more). The weighting changes the path, not the fixed points (``fastppo.targets`` §1).

**Ground truth** (``reference=True``, the default): :func:`fastppo.sampled_target` gives
the exact target of the configuration — the regularized optimum for k1 in the reward,
a fixed point for a loss-placed KL or an entropy bonus, no target (``target`` None, the
reason in ``target_note``) for grpo's σ-scaling, whiten with a loss term, an adaptive β,
reward normalisation and most reward-placed k2/k3. Every iterate is evaluated exactly:
the history records J (on ``reg``), J_plain (plain rewards), the d-weighted total
variation ``tv_target`` to the target, and the gap J* − J where the target maximises J.
"""
import dataclasses
import json
import os
import time

import numpy as np
from scipy.special import entr

from . import _validation as V
from ._backend import get_kernel, resolve_backend, resolve_threads
from ._codes import KL_KINDS, KL_NONE
from ._errors import renamed_parameters
from ._result import Result
from ._run import IterativeMethod, check_states
from ._evaluator import Evaluator, regularizer_args
from .regularizers import ReverseKL
from .targets import (ADVANTAGES, KL_ESTIMATORS, LEVELS, _GROUPED, NoTargetError,
                      SampledTarget, _acting, check_reward_clip, longest_episode, resolve_level,
                      sampled_target)

__all__ = ["rollout", "gae", "discounted_returns", "kl_estimate", "group_advantages",
           "process_rewards", "AdaptiveKLController", "SampledPPO", "SampledPPOConfig",
           "Rollout"]

WEIGHTINGS = ("state_mean", "sample_mean")


class Rollout(Result):
    """Trajectories of :func:`rollout`, arrays of shape (n_envs, horizon) unless noted.

    ``states``, ``actions`` (action labels, values of ``mdp.a_indices``: QuantEcon's
    meaning, as ``sigma``), ``action_index`` (the action's position among its state's
    pairs, ``pairs − a_indptr[states]``), ``pairs`` (flat pair index), ``next_states``,
    all −1 after the episode, ``rewards``, ``logp`` (log π(a|s)),
    ``terminated`` / ``truncated`` / ``done`` (bool, set on the episode's last step),
    ``mask`` (bool: a step of the episode), ``length`` (n_envs,), ``group`` (n_envs,).
    """


def rollout(mdp, pi, n_envs, horizon, seed=None, *, group_size=1, start=None, backend=None,
            n_threads=None):
    """Simulate ``n_envs`` episodes of policy ``pi``, vectorised in a compiled kernel.

    Parameters
    ----------
    mdp : MDP
    pi : array_like, shape (n_pairs,) or (S, A), or int array of shape (S,)
        Policy probabilities, or sigma (action labels), as in ``fastppo.evaluate``.
    n_envs : int
        Number of environments (episodes), a multiple of ``group_size``.
    horizon : int
        Maximum episode length T; longer episodes are truncated.
    seed : int, numpy.random.Generator or None
        Source of every random number (start states, actions, transitions).
    group_size : int, default 1
        Consecutive environments share a start state drawn from ``mdp.rho``.
    start : array_like of int, shape (n_envs,), optional
        Start states (instead of drawing them from ρ).
    backend, n_threads
        Kernel backend and threads; all backends give identical trajectories.

    Returns
    -------
    Rollout
    """
    pi = V.as_policy(mdp, pi)
    n_envs = V.check_int(n_envs, "n_envs")
    horizon = V.check_int(horizon, "horizon")
    group_size = V.check_int(group_size, "group_size")
    if n_envs % group_size:
        raise ValueError(f"n_envs ({n_envs}) must be a multiple of group_size ({group_size})")
    check_batch_memory(n_envs, horizon)
    rng = V.check_seed(seed)
    if start is None:
        start = np.repeat(rng.choice(mdp.n_states, size=n_envs // group_size, p=mdp.rho), group_size)
    else:
        start = np.asarray(start)
        if start.shape != (n_envs,) or not np.issubdtype(start.dtype, np.integer):
            raise ValueError(f"start must be {n_envs} integer states, got {start.dtype} {start.shape}")
        bad = (start < 0) | (start >= mdp.n_states)
        if bad.any():
            i = int(np.argmax(bad))
            raise ValueError(f"start[{i}] = {start[i]} is not a state in [0, {mdp.n_states})")
    start = start.astype(np.int64)
    u_action = rng.random((n_envs, horizon))
    u_next = rng.random((n_envs, horizon))
    shape = (n_envs, horizon)
    states, action_index, pairs, next_states = (np.empty(shape, np.int64) for _ in range(4))
    rewards, logp = np.empty(shape), np.empty(shape)
    terminated, truncated = np.empty(shape, np.uint8), np.empty(shape, np.uint8)
    with np.errstate(divide="ignore"):  # π = 0 is never sampled
        log_pi = np.log(pi)
    get_kernel("rollout", backend)(
        mdp.a_indptr, pi, log_pi, mdp.r, mdp.p_indptr, mdp.p_indices, mdp.p_data,
        mdp.terminal.view(np.uint8), start, u_action, u_next,
        states, action_index, pairs, next_states, rewards, logp, terminated, truncated,
        resolve_threads(n_threads))
    mask = states >= 0
    actions = np.where(mask, mdp.a_indices[pairs], -1)  # pairs are -1 (a valid index) outside
    return Rollout(states=states, actions=actions, action_index=action_index, pairs=pairs,
                   next_states=next_states,
                   rewards=rewards, logp=logp, terminated=terminated.view(bool),
                   truncated=truncated.view(bool), done=(terminated | truncated).view(bool),
                   mask=mask, length=mask.sum(axis=1), group=np.arange(n_envs) // group_size)


BYTES_PER_STEP = 160  # the (n_envs, horizon) arrays of a rollout and of one update, per step


def check_batch_memory(n_envs, horizon):
    """ValueError if a batch of ``n_envs`` episodes of ``horizon`` steps would need more
    than the machine's physical memory (estimated at ``BYTES_PER_STEP`` per step), checked
    before anything is allocated."""
    need = n_envs * horizon * BYTES_PER_STEP
    try:
        have = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows): no check
        return
    if need > have:
        raise ValueError(f"n_envs x horizon = {n_envs} x {horizon} steps would need about "
                         f"{need / 2**30:.3g} GiB ({BYTES_PER_STEP} bytes a step), more than "
                         f"the {have / 2**30:.3g} GiB of memory of this machine")


def _flags(terminated, truncated):
    return terminated, (terminated | truncated)


@renamed_parameters(lam="gae_lambda")
def gae(rewards, values, next_values, terminated, truncated, gamma, gae_lambda, *, backend=None,
        n_threads=None):
    """Generalised advantage estimates GAE(γ, λ) along the last axis.

    Parameters
    ----------
    rewards, values, next_values : array_like, shape (..., T)
        r_t, V(s_t) and V(s_{t+1}) (the latter is ignored where terminated).
    terminated, truncated : array_like of bool, shape (..., T)
        The episode ended at step t in a terminal state / by truncation (the next step,
        if any, starts a new episode).
    gamma, gae_lambda : float in [0, 1]
        Discount γ and GAE λ (``gae_lambda`` was ``lam``).
    backend, n_threads
        Kernel backend and threads (rows are independent).

    Returns
    -------
    ndarray, shape (..., T)
        A_t; ``A + values`` are the λ-returns.
    """
    gamma = V.check_unit_interval(gamma, "gamma")
    gae_lambda = V.check_unit_interval(gae_lambda, "gae_lambda")
    shape, a = V.trajectory_arrays("rewards", rewards=rewards, values=values,
                                   next_values=next_values, **{"flag:terminated": terminated,
                                                              "flag:truncated": truncated})
    term, done = _flags(a["terminated"], a["truncated"])
    out = np.empty_like(a["rewards"])
    get_kernel("gae", backend)(a["rewards"], a["values"], a["next_values"], term, done, gamma,
                               gae_lambda, out, resolve_threads(n_threads))
    return out.reshape(shape)


def discounted_returns(rewards, terminated, truncated, gamma, next_values=None, *, backend=None,
                       n_threads=None):
    """Discounted returns G_t along the last axis, bootstrapped from ``next_values`` at truncation.

    Parameters
    ----------
    rewards : array_like, shape (..., T)
    terminated, truncated : array_like of bool, shape (..., T)
    gamma : float in [0, 1]
    next_values : array_like, shape (..., T), optional
        V(s_{t+1}), used where an episode is truncated; default 0 (no bootstrap).
    backend, n_threads
        Kernel backend and threads (rows are independent).

    Returns
    -------
    ndarray, shape (..., T)
    """
    gamma = V.check_unit_interval(gamma, "gamma")
    if next_values is None:
        next_values = np.zeros(np.shape(rewards))
    shape, a = V.trajectory_arrays("rewards", rewards=rewards, next_values=next_values,
                                   **{"flag:terminated": terminated, "flag:truncated": truncated})
    term, done = _flags(a["terminated"], a["truncated"])
    out = np.empty_like(a["rewards"])
    get_kernel("discounted_returns", backend)(a["rewards"], a["next_values"], term, done, gamma,
                                              out, resolve_threads(n_threads))
    return out.reshape(shape)


def kl_estimate(logp, logp_ref, kind="k1"):
    """Per-sample estimates of KL(π ‖ π_ref) from log π(a|s) and log π_ref(a|s) at a ~ π.

    Parameters
    ----------
    logp, logp_ref : array_like, same shape
        log π(a|s) and log π_ref(a|s) of sampled actions.
    kind : {"k1", "k2", "k3"}
        ``k1`` = log π/π_ref (unbiased), ``k2`` = ½ (log π_ref/π)² (biased, low
        variance), ``k3`` = (π_ref/π − 1) − log(π_ref/π) (unbiased, ≥ 0).

    Returns
    -------
    ndarray, the shape of the inputs
    """
    V.check_choice(kind, "kind", KL_ESTIMATORS)
    log_r = np.asarray(logp_ref, dtype=np.float64) - np.asarray(logp, dtype=np.float64)
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r * log_r
    return np.expm1(log_r) - log_r


def group_advantages(returns, group_size, kind, *, level="step", mask=None):
    """Critic-free advantages from returns grouped along the first axis.

    Parameters
    ----------
    returns : array_like, shape (n_envs, T) or (n_envs,)
        Rows ``g·group_size … (g+1)·group_size − 1`` form group g. Reward-to-go G_t per
        step (e.g. :func:`discounted_returns`), or one return per sequence.
    group_size : int
    kind : {"grpo", "dr_grpo", "rloo", "reinforce"}
        ``grpo`` (G − mean)/(std + 1e-8) (unbiased std), ``dr_grpo`` G − mean, ``rloo``
        G − mean of the other members, ``reinforce`` G.
    level : {"step", "sequence"}, default "step"
        ``step``: statistics across a group's rows separately at every column t.
        ``sequence`` (outcome level, GRPO as practised): one advantage per row from the
        rows' returns at column 0 (the whole episode's return), the same on every step of
        the episode. For 1-D ``returns`` the two agree.
    mask : array_like of bool, shape of ``returns``, optional
        The steps of each episode (``Rollout.mask``); with ``level="sequence"`` the
        advantage is 0 outside them.

    Returns
    -------
    ndarray, shape of ``returns``

    Examples
    --------
    Responses of lengths 2, 4, 4, 4 with outcome rewards 1, 1, 0, 0 (γ = 1): per sequence
    every token gets ±0.866; per step the last two tokens of the second response get
    1.5 and those of the others −0.5, as the first response has ended:

    >>> import numpy as np, fastppo
    >>> G = np.array([[1., 1, 0, 0], [1, 1, 1, 1], [0, 0, 0, 0], [0, 0, 0, 0]])
    >>> mask = np.array([[1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1]], bool)
    >>> fastppo.group_advantages(G, 4, "grpo", level="sequence", mask=mask).round(3)[:, 3]
    array([ 0.   ,  0.866, -0.866, -0.866])
    >>> fastppo.group_advantages(G, 4, "grpo").round(3)[:, 3]
    array([-0.5,  1.5, -0.5, -0.5])
    """
    V.check_choice(kind, "kind", ADVANTAGES[1:])
    V.check_choice(level, "level", LEVELS)
    group_size = V.check_int(group_size, "group_size", minimum=2 if kind in _GROUPED else 1)
    G = V.as_float_array(returns, "returns")
    if G.shape[0] % group_size:
        raise ValueError(f"the number of rows ({G.shape[0]}) must be a multiple of group_size ({group_size})")
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != G.shape or mask.dtype != bool:
            raise ValueError(f"mask must be a bool array of the shape of returns {G.shape}, "
                             f"got {mask.dtype} {mask.shape}")
    if level == "sequence" and G.ndim == 2:
        adv = np.repeat(group_advantages(G[:, 0], group_size, kind)[:, None], G.shape[1], axis=1)
        return adv if mask is None else np.where(mask, adv, 0.0)
    if kind == "reinforce":
        return G.copy()
    g = G.reshape(-1, group_size, *G.shape[1:])
    mean = g.mean(axis=1, keepdims=True)
    if kind == "grpo":
        adv = (g - mean) / (g.std(axis=1, ddof=1, keepdims=True) + 1e-8)
    elif kind == "dr_grpo":
        adv = g - mean
    else:  # rloo: G − (Σ_others G) / (n − 1)
        adv = (g - mean) * (group_size / (group_size - 1))
    return adv.reshape(G.shape)


def process_rewards(rewards, mask, reward_clip=None, reward_norm=False):
    """The environment rewards of a batch after normalisation and clipping (before the KL
    penalty), shape (n_envs, T).

    ``reward_norm``: the episodes' scores S_e = Σ_t r_{e,t} (undiscounted) are standardised
    over the batch: every reward is divided by σ + 1e-8 and the last step of each episode
    is shifted by −μ/(σ + 1e-8) (μ, σ the batch mean and unbiased std of S), so each
    episode's rewards sum to (S_e − μ)/(σ + 1e-8): with an outcome reward (only the last
    step pays) this is TRL's ``normalize_reward`` of the sequence score (RLOOTrainer,
    trl 0.11–0.18). ``reward_clip`` = (low, high) then clips every reward, as OpenRLHF's
    ``reward_clip_range`` clamps the reward-model score before the per-token KL penalty is
    added (``compute_reward``); TRL clips the normalised score to ±``reward_clip_range``.

    Parameters
    ----------
    rewards : ndarray of shape (n_envs, T)
    mask : ndarray of bool, shape (n_envs, T)
        The steps of each episode (at the start of each row, ``Rollout.mask``).
    reward_clip : (float, float), optional
    reward_norm : bool, default False

    Returns
    -------
    ndarray of shape (n_envs, T), 0 outside the episodes
    """
    r = np.where(mask, rewards, 0.0)
    if reward_norm:
        length = mask.sum(axis=1)
        scores = r.sum(axis=1)
        if scores.size < 2:
            raise ValueError("reward_norm needs at least 2 episodes per batch")
        mu, sd = scores.mean(), scores.std(ddof=1) + 1e-8
        r = r / sd
        rows = np.flatnonzero(length > 0)
        r[rows, length[rows] - 1] -= mu / sd
    if reward_clip is not None:
        r = np.where(mask, np.clip(r, *reward_clip), 0.0)
    return r


class AdaptiveKLController:
    """The KL coefficient controller of Ziegler et al. (2019), as in InstructGPT / TRL.

    β ← β · (1 + clip(KL / target − 1, −0.2, 0.2) · n_steps / horizon) at each
    ``update(current_kl, n_steps)``; ``value`` is the current β.

    Parameters
    ----------
    init_kl_coef : float ≥ 0
        Initial β.
    target : float > 0
        Target KL, in the units ``update`` receives: per sequence (the KL summed over a
        response, TRL's and InstructGPT's units, with ``n_steps`` counting sequences), or
        per step (with ``n_steps`` counting steps).
    horizon : float > 0, default 10000
        Samples (sequences or steps, as ``n_steps``) over which an error of 20 % changes β
        by 20 %.
    """

    def __init__(self, init_kl_coef, target, horizon=10_000):
        self.value = V.check_positive(init_kl_coef, "kl_coef", strict=False)
        self.target = V.check_positive(target, "kl_target")
        self.horizon = V.check_positive(horizon, "kl_horizon")

    def update(self, current_kl, n_steps):
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon
        return self.value


@dataclasses.dataclass(frozen=True)
class SampledPPOConfig:
    """The settings of :class:`SampledPPO`, validated once (on construction) and saved
    verbatim with its results (``config.json``) and checkpoints. As CleanRL's ``Args`` or
    TRL's ``PPOConfig``: one place for every knob. ``SampledPPO(mdp, reg, config)`` and
    ``SampledPPO(mdp, reg, lr=..., ...)`` are equivalent; the method stores the config with
    its defaults resolved against the MDP (``horizon``, ``group_size``, ``advantage_level``,
    ``kl_coef``, ``backend``, ``n_threads``) as ``.config``.

    Parameters
    ----------
    clip : float or (float, float), default 0.2
        ε, or (ε_low, ε_high).
    dual_clip : float > 1, optional
        Dual clip c (Ye et al., 2020): for A < 0, no gradient once r > c.
    value_clip : float, optional
        Clip the critic's change per iteration to ±value_clip (PPO2's value clipping).
    epochs, minibatches : int, default 4, 4
        Passes over each batch (at most 10,000), and shuffled minibatches per pass.
    lr : float, default 0.5
        Actor step: with ``weighting="state_mean"`` each visited state's logits move by
        lr × the mean per-sample gradient (in reward units: scale it with 1 / the size of
        the advantages). Constant-step noise leaves a floor on the distance to the target
        that shrinks with lr and with the batch.
    critic_lr : float in [0, 1], default 0.5
        Critic step: V(s) moves by critic_lr × the mean of (target − V(s)) over s's samples
        (× s's share of the minibatch with ``weighting="sample_mean"``).
    n_envs : int, default 256
        Episodes per iteration.
    horizon : int, optional
        Maximum episode length; default the smallest T with γ^T ≤ 0.01, or the longest
        episode where every episode ends sooner (a DAG of non-terminal states, e.g. a token
        MDP, always at γ = 1: no episode is then cut).
    gae_lambda : float in [0, 1], default 0.95
    advantage : {"gae", "grpo", "dr_grpo", "rloo", "reinforce"}, default "gae"
        ``reinforce`` has no baseline and wants a smaller ``lr`` (0.05 on rewards in
        [0, 1]); at 0.5 it commits early to a deterministic suboptimal policy.
    group_size : int, optional
        Episodes per start state; default 8 for grpo / dr_grpo / rloo, else 1.
    advantage_level : {"sequence", "step"}, optional
        Critic-free advantages from the whole episode's return, the same for all its steps
        (``"sequence"``: outcome level, GRPO / Dr. GRPO / RLOO as practised on responses),
        or from the reward-to-go at each step with group statistics per step (``"step"``).
        Default "sequence" for grpo, "step" for dr_grpo, rloo and reinforce (whose per-step
        forms have an exact target on every MDP, module ``fastppo.targets`` §2); gae is
        per step.
    whiten : bool, default False
        Standardise the advantages over each batch (common in deep PPO). It keeps the
        update size fixed as the advantages vanish: on a 30-state garnet (200
        iterations) the gap stalls at 0.5 % with τ = 0.5 (0.03 % without), while
        unregularized it helps (0.014 % against 0.064 %).
    ent_coef : float ≥ 0, default 0
        Entropy bonus: ``ent_coef`` · H(π(·|s)) of each sample's state is added to the
        maximised objective (CleanRL's / SB3's ``ent_coef``). A KL to uniform in the loss:
        its target is a fixed point (``fastppo.targets`` §6).
    weighting : {"state_mean", "sample_mean"}, default "state_mean"
        How a minibatch's per-sample gradients are combined: the mean over each state's
        samples (every visited state moves at the scale ``lr``), or the mean over all of
        the minibatch's samples (standard PPO: states weighted by their visits).
    reward_clip : float or (float, float), optional
        Clip every environment reward to [−c, c] or [low, high] before the KL penalty
        (OpenRLHF's ``reward_clip_range``; after ``reward_norm`` if both are set).
    reward_norm : bool, default False
        Standardise the episodes' scores (undiscounted sums of environment rewards) over
        each batch (TRL's ``normalize_reward``; :func:`process_rewards`).
    kl_coef : float, optional
        Initial weight β of the KL to π_ref; default ``reg.tau`` (0 without a regularizer).
    kl_estimator : {"k1", "k2", "k3"}, default "k1"
    kl_penalty : {"reward", "loss"}, default "reward"
    kl_target_sequence : float, optional
        Adapt β toward this KL per episode (the per-step estimates summed over an episode,
        averaged over the batch: TRL's / InstructGPT's units, e.g. 6 nats); the
        controller's n counts episodes.
    kl_target_step : float, optional
        Adapt β toward this mean per-step KL (``kl_target`` is its deprecated name); the
        controller's n counts steps. At most one of the two; fixed β when both are None.
    kl_horizon : float, default 10000
        Horizon of the adaptive controller, in episodes (``kl_target_sequence``) or steps.
    seed : int, numpy.random.Generator or None
        Seeds every random draw; the same seed gives the same run on every backend. A
        Generator is used as is (and recorded as ``null``; checkpoints hold its state).
    backend, n_threads
        Kernel backend and threads.
    """

    clip: float | tuple = 0.2
    dual_clip: float | None = None
    value_clip: float | None = None
    epochs: int = 4
    minibatches: int = 4
    lr: float = 0.5
    critic_lr: float = 0.5
    n_envs: int = 256
    horizon: int | None = None
    gae_lambda: float = 0.95
    advantage: str = "gae"
    group_size: int | None = None
    advantage_level: str | None = None
    whiten: bool = False
    ent_coef: float = 0.0
    weighting: str = "state_mean"
    reward_clip: float | tuple | None = None
    reward_norm: bool = False
    kl_coef: float | None = None
    kl_estimator: str = "k1"
    kl_penalty: str = "reward"
    kl_target_sequence: float | None = None
    kl_target_step: float | None = None
    kl_horizon: float = 10_000
    seed: object = None
    backend: str | None = None
    n_threads: int | None = None

    def __post_init__(self):
        from ._backend import _check_backend
        from .solvers import _clip_range

        def put(name, value):
            object.__setattr__(self, name, value)

        low, high = _clip_range(self.clip)
        put("clip", low if np.ndim(self.clip) == 0 else (low, high))
        if self.dual_clip is not None:
            put("dual_clip", V.check_positive(self.dual_clip, "dual_clip"))
            if self.dual_clip <= 1.0:
                raise ValueError(f"dual_clip must be > 1, got {self.dual_clip}")
        put("value_clip", V.check_positive(self.value_clip, "value_clip", allow_none=True))
        put("epochs", V.check_int(self.epochs, "epochs", maximum=MAX_EPOCHS))
        put("minibatches", V.check_int(self.minibatches, "minibatches", maximum=MAX_EPOCHS))
        put("lr", V.check_positive(self.lr, "lr"))
        put("critic_lr", V.check_unit_interval(self.critic_lr, "critic_lr"))
        put("n_envs", V.check_int(self.n_envs, "n_envs"))
        if self.horizon is not None:
            put("horizon", V.check_int(self.horizon, "horizon"))
        put("gae_lambda", V.check_unit_interval(self.gae_lambda, "gae_lambda"))
        V.check_choice(self.advantage, "advantage", ADVANTAGES)
        grouped = self.advantage in _GROUPED
        put("group_size", V.check_int(8 if grouped and self.group_size is None
                                      else 1 if self.group_size is None else self.group_size,
                                      "group_size", minimum=2 if grouped else 1))
        if self.n_envs % self.group_size:
            raise ValueError(f"n_envs ({self.n_envs}) must be a multiple of group_size "
                             f"({self.group_size})")
        put("advantage_level", resolve_level(self.advantage, self.advantage_level))
        put("whiten", V.check_bool(self.whiten, "whiten"))
        put("ent_coef", V.check_positive(self.ent_coef, "ent_coef", strict=False))
        V.check_choice(self.weighting, "weighting", WEIGHTINGS)
        if self.reward_clip is not None:
            low, high = check_reward_clip(self.reward_clip)
            put("reward_clip", high if np.ndim(self.reward_clip) == 0 else (low, high))
        put("reward_norm", V.check_bool(self.reward_norm, "reward_norm"))
        put("kl_coef", V.check_positive(self.kl_coef, "kl_coef", strict=False, allow_none=True))
        V.check_choice(self.kl_estimator, "kl_estimator", KL_ESTIMATORS)
        V.check_choice(self.kl_penalty, "kl_penalty", ("reward", "loss"))
        for name in ("kl_target_sequence", "kl_target_step"):
            put(name, V.check_positive(getattr(self, name), name, allow_none=True))
        if self.kl_target_sequence is not None and self.kl_target_step is not None:
            raise ValueError("give at most one of kl_target_sequence (KL per episode) and "
                             "kl_target_step (KL per step)")
        put("kl_horizon", V.check_positive(self.kl_horizon, "kl_horizon"))
        V.check_seed(self.seed)  # type and range only; the generator is made by SampledPPO
        if self.backend is not None:
            _check_backend(self.backend)
        if self.n_threads is not None:
            put("n_threads", V.check_int(self.n_threads, "n_threads"))

    def to_dict(self):
        """The settings as JSON values (a Generator seed as None)."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        if isinstance(d["seed"], np.random.Generator):
            d["seed"] = None
        for name in ("clip", "reward_clip"):
            if isinstance(d[name], tuple):
                d[name] = list(d[name])
        return d


SampledPPOConfig.__init__ = renamed_parameters(kl_target="kl_target_step")(SampledPPOConfig.__init__)

MAX_EPOCHS = 10_000  # epochs and minibatches: a damaged file asking for 10**12 would hang

_HISTORY = [("iter", np.int64), ("J", np.float64), ("J_plain", np.float64),
            ("tv_target", np.float64), ("gap", np.float64), ("mean_return", np.float64),
            ("clipfrac", np.float64), ("approx_kl", np.float64), ("kl_ref", np.float64),
            ("kl_sequence", np.float64), ("kl_coef", np.float64), ("entropy", np.float64),
            ("explained_variance", np.float64), ("n_samples", np.int64), ("seconds", np.float64)]

class SampledPPO(IterativeMethod):
    """PPO-Clip from sampled trajectories on a tabular MDP (actor, critic, reference, reward).

    Parameters
    ----------
    mdp : MDP
    reg : ReverseKL or None
        The objective: J = Σ ρ Ṽ with τ·KL(π ‖ π_ref). Its π_ref is the reference policy
        and τ the default ``kl_coef``; the history reports the exact J of this objective
        and J_plain of the plain rewards. (Other f-divergences have no per-sample KL
        estimator here; use :class:`PPOClip` for them.)
    config : SampledPPOConfig, optional
        The settings; keywords below override its fields.
    init : array_like, optional
        Initial logits, shape (n_pairs,) or (S, A); default log π_ref.
    reference : bool, SampledTarget or float, default True
        True: the exact target of these settings, :func:`fastppo.sampled_target` (None when
        the settings have none: ``target_note`` says why); a SampledTarget: that one;
        False or None: no target; a float: J* of an optimum, for the gap only.
    **kwargs
        The fields of :class:`SampledPPOConfig` (``clip``, ``dual_clip``, ``value_clip``,
        ``epochs``, ``minibatches``, ``lr``, ``critic_lr``, ``n_envs``, ``horizon``,
        ``gae_lambda``, ``advantage``, ``group_size``, ``advantage_level``, ``whiten``,
        ``ent_coef``, ``weighting``, ``reward_clip``, ``reward_norm``, ``kl_coef``,
        ``kl_estimator``, ``kl_penalty``, ``kl_target_sequence``, ``kl_target_step``,
        ``kl_horizon``, ``seed``, ``backend``, ``n_threads``); ``kl_target`` is the
        deprecated name of ``kl_target_step``.

    Attributes
    ----------
    target : SampledTarget or None
        The exact target the history measures ``tv_target`` against.
    target_note : str
        What the target is (its ``objective``), or why there is none.
    reference : float or None
        J* where the target maximises the history's J (k1 in the reward with β = τ, or no KL,
        entropy bonus nor reward clipping with ``reg`` None): the ``gap`` J* − J is then
        recorded; None (gap NaN) at a fixed point, which maximises nothing, or where the
        target optimises another objective.

    Notes
    -----
    History: ``J`` (on ``reg``), ``J_plain``, ``tv_target`` (Σ_s d^π_ρ(s) ½‖π(·|s) −
    π*(·|s)‖₁, NaN without a target), ``gap`` (see ``reference``), ``mean_return`` (the
    batch's discounted return of the environment rewards), ``clipfrac``, ``approx_kl`` (to
    the previous policy), ``kl_ref`` (mean per-step KL estimate to π_ref), ``kl_sequence``
    (its sum over an episode, averaged over the batch), ``kl_coef``, ``entropy``,
    ``explained_variance`` (gae), ``n_samples``, ``seconds``; ``tv_target`` weighs the
    non-terminal states as :func:`fastppo.tv_distance`. ``run(tol=...)`` stops when
    the gap ≤ tol, or when ``tv_target`` ≤ tol where no J* is known.

    ``save(path)`` / ``SampledPPO.resume(path)`` checkpoint the complete state, the
    random generator and the target included: a resumed run continues bit for bit.
    """

    HISTORY = _HISTORY
    STATE = {"values": ("states", False), "v_exact": ("states", True),
             "d_exact": ("states", True), "rng": ("json", False), "kl_coef": ("float", False),
             "target": ("pairs", True), "target_info": ("json", False)}

    @renamed_parameters(kl_target="kl_target_step")
    def __init__(self, mdp, reg=None, config=None, *, init=None, reference=True, **kwargs):
        if config is None:
            config = SampledPPOConfig(**kwargs)
        elif not isinstance(config, SampledPPOConfig):
            raise TypeError(f"config must be a SampledPPOConfig, got {type(config).__name__}")
        elif kwargs:
            config = dataclasses.replace(config, **kwargs)
        if reg is not None and not isinstance(reg, ReverseKL):
            raise TypeError(f"SampledPPO estimates KL(π ‖ π_ref) from samples, so reg must be "
                            f"ReverseKL or None, got {type(reg).__name__}; use PPOClip for other f")
        self.mdp, self.reg = mdp, reg
        _, _, tau, ref = regularizer_args(mdp, reg)
        self._ref = mdp.uniform_policy() if ref is None else ref
        horizon = config.horizon
        if horizon is None:
            longest = longest_episode(mdp)  # an int at gamma = 1 (a DAG)
            horizon = (1 if mdp.gamma == 0 else longest if mdp.gamma == 1.0
                       else int(np.ceil(np.log(0.01) / np.log(mdp.gamma))))
            if longest is not None:
                horizon = min(horizon, max(longest, 1))
        check_batch_memory(config.n_envs, horizon)
        config = dataclasses.replace(
            config, horizon=horizon, kl_coef=tau if config.kl_coef is None else config.kl_coef,
            backend=resolve_backend(config.backend), n_threads=resolve_threads(config.n_threads))
        self.config = c = config
        self.backend, self.n_threads = c.backend, c.n_threads
        self.eps_low, self.eps_high = (c.clip, c.clip) if np.ndim(c.clip) == 0 else c.clip
        self.dual_clip = np.inf if c.dual_clip is None else c.dual_clip
        self.value_clip = np.inf if c.value_clip is None else c.value_clip
        self.reward_clip = None if c.reward_clip is None else check_reward_clip(c.reward_clip)
        for name in ("epochs", "minibatches", "lr", "critic_lr", "n_envs", "horizon",
                     "gae_lambda", "advantage", "group_size", "advantage_level", "whiten",
                     "ent_coef", "weighting", "reward_norm", "kl_estimator", "kl_penalty"):
            setattr(self, name, getattr(c, name))
        kl_target = c.kl_target_step if c.kl_target_sequence is None else c.kl_target_sequence
        self.kl_controller = (None if kl_target is None
                              else AdaptiveKLController(c.kl_coef, kl_target, c.kl_horizon))
        self._log_ref = np.log(self._ref)
        self.logits = (self._log_ref.copy() if init is None
                       else V.check_logits(mdp, init, "init"))
        self._table = init is None or np.ndim(init) != 1
        self.values = np.zeros(mdp.n_states)
        self.rng = V.check_seed(c.seed)
        self.target, self.reference = None, None
        if reference is True:
            self.target, self.target_note = self._own_target(init is not None)
        elif isinstance(reference, SampledTarget):
            self.target, self.target_note = reference, reference.objective
        elif reference is False or reference is None:
            self.target_note = "no target (reference=False)"
        else:
            self.reference = V.check_finite_float(reference, "reference")
            self.target_note = "J* given (reference=float): the gap only"
        if self.target is not None:
            self._target_flat = mdp.to_pairs(self.target.policy)
            if self._maximises_J(self.target):
                self.reference = float(self.target.J_reg)
        self.pi = self._softmax(self.logits)
        self.n_iter = 0
        self._rows = []
        self._v_exact = self._d_exact = None

    def _own_target(self, from_init):
        """(SampledTarget or None, note) of this configuration."""
        c = self.config
        if c.kl_target_sequence is not None or c.kl_target_step is not None:
            return None, ("no fixed target: the adaptive kl_coef (kl_target_sequence / "
                          "kl_target_step) follows the sampled KL")
        try:
            t = sampled_target(
                self.mdp, self.reg, kl_coef=c.kl_coef, kl_estimator=c.kl_estimator,
                kl_penalty=c.kl_penalty, advantage=c.advantage, group_size=c.group_size,
                whiten=c.whiten, advantage_level=c.advantage_level, ent_coef=c.ent_coef,
                reward_clip=c.reward_clip, reward_norm=c.reward_norm,
                init=self.logits if from_init else None, backend=self.backend,
                n_threads=self.n_threads)
        except NoTargetError as exc:
            return None, f"no fixed target: {exc}"
        return t, t.objective

    def _maximises_J(self, t):
        """Whether the target is the maximiser of the history's J (then J* − J is a gap)."""
        if t.kind != "optimum" or t.reward_clip is not None:
            return False
        tau = 0.0 if self.reg is None else self.reg.tau
        return tau == (0.0 if t.divergence == "none" else t.kl_coef)

    @property
    def FALLBACK_MEASURE(self):
        """What ``run(tol=...)`` compares with tol when no J* is known."""
        return "tv_target" if self.target is not None else None

    @property
    def _evaluator(self):
        """Exact evaluation of the iterates (an Evaluator, made on first use)."""
        E = self.__dict__.get("_E")
        if E is None:
            E = self._E = Evaluator(self.mdp, self.reg, self.backend, self.n_threads)
        return E

    def _softmax(self, logits):
        return self._evaluator.softmax(logits)

    def _exact(self):
        """(Evaluation, d^π_ρ, J_plain, tv_target) of the current policy, warm-started from
        the last ones: J_plain = J + Σ_s d(s) (r_π − c_π)(s)/(1 − γ), c_π = r_π − τ KL
        (d/(1 − γ): the visits before termination at γ = 1)."""
        E, mdp = self._evaluator, self.mdp
        E.load(self.pi)
        if self.target is None and not E.tau:  # J_plain = J and no distance: no d needed
            ev = E.evaluation(self._v_exact)
            return ev, None, ev.J, np.nan
        ev, vis = E.evaluation_and_visitation(mdp.rho, self._v_exact, self._d_exact)
        d = vis.d
        J_plain = ev.J
        if E.tau:
            r_pi = np.add.reduceat(self.pi * mdp.r, mdp.a_indptr[:-1])
            J_plain += (float(vis.visits @ (r_pi - E.regularized_reward())) if mdp.gamma == 1.0
                        else float(d @ (r_pi - E.regularized_reward())) / (1.0 - mdp.gamma))
        tv = np.nan
        if self.target is not None:  # as fastppo.tv_distance: d on the non-terminal states
            tv = float(_acting(mdp, d) @ (0.5 * np.add.reduceat(np.abs(self.pi - self._target_flat),
                                                                mdp.a_indptr[:-1])))
        return ev, d, J_plain, tv

    @property
    def kl_coef(self):
        """The KL coefficient β now in force."""
        return self.config.kl_coef if self.kl_controller is None else self.kl_controller.value

    def _advantages(self, traj, rewards):
        """(advantages, critic targets, V_old) on the (n_envs, T) grid."""
        opts = dict(backend=self.backend, n_threads=self.n_threads)
        mask = traj.mask
        v_old = np.where(mask, self.values[np.maximum(traj.states, 0)], 0.0)
        if self.advantage == "gae":
            nxt = np.where(mask, self.values[np.maximum(traj.next_states, 0)], 0.0)
            adv = gae(rewards, v_old, nxt, traj.terminated, traj.truncated, self.mdp.gamma,
                      self.gae_lambda, **opts)
            return adv, adv + v_old, v_old
        G = discounted_returns(rewards, traj.terminated, traj.truncated, self.mdp.gamma, **opts)
        return (group_advantages(G, self.group_size, self.advantage, level=self.advantage_level,
                                 mask=mask), G, v_old)

    def step(self):
        """One iteration: roll out, estimate advantages, update; returns its diagnostics."""
        t0 = time.perf_counter()
        mdp = self.mdp
        traj = rollout(mdp, self.pi, self.n_envs, self.horizon, self.rng,
                       group_size=self.group_size, backend=self.backend, n_threads=self.n_threads)
        mask = traj.mask
        env_rewards = traj.rewards
        if self.reward_norm or self.reward_clip is not None:
            env_rewards = process_rewards(traj.rewards, mask, self.reward_clip, self.reward_norm)
        logp_ref = np.where(mask, self._log_ref[np.maximum(traj.pairs, 0)], 0.0)
        kl = np.where(mask, kl_estimate(traj.logp, logp_ref, self.kl_estimator), 0.0)
        beta = self.kl_coef
        rewards = env_rewards - beta * kl if self.kl_penalty == "reward" else env_rewards
        adv, targets, v_old = self._advantages(traj, rewards)
        n = int(mask.sum())
        if n == 0:
            raise RuntimeError("every episode started in a terminal state: no samples to learn from")
        s, k = traj.states[mask], traj.pairs[mask]
        a = adv[mask]
        if self.whiten:
            a = (a - a.mean()) / (a.std() + 1e-8)
        critic_lr = self.critic_lr if self.advantage == "gae" else 0.0
        order = np.stack([self.rng.permutation(n) for _ in range(self.epochs)]).astype(np.int64)
        bounds = np.linspace(0, n, self.minibatches + 1).round().astype(np.int64)
        clipped = np.zeros(self.epochs, np.int64)
        kl_kind = KL_KINDS[self.kl_estimator] if self.kl_penalty == "loss" else KL_NONE
        values_before = self.values.copy()
        get_kernel("ppo_minibatches", self.backend)(
            mdp.a_indptr, s, k, traj.logp[mask], a, logp_ref[mask], targets[mask], v_old[mask],
            order, bounds, self.eps_low, self.eps_high, self.dual_clip, beta, kl_kind,
            self.value_clip, self.lr, critic_lr, self.ent_coef, self.weighting == "sample_mean",
            self.logits, self.values, np.zeros(mdp.n_pairs), np.zeros(mdp.n_states),
            np.zeros(mdp.n_states), np.zeros(mdp.n_states, np.int64), np.empty(mdp.n_states),
            clipped, self.n_threads)
        if not np.isfinite(self.logits).all():
            raise FloatingPointError(f"SampledPPO: non-finite logits at iteration {self.n_iter + 1}; "
                                     f"reduce lr")
        pi_old, self.pi = self.pi, self._softmax(self.logits)
        self.n_iter += 1
        _check_collapse(mdp, pi_old, self.pi, self.logits, self.n_iter)
        log_ratio = np.log(self.pi[k]) - np.log(pi_old[k])
        entropy = np.add.reduceat(entr(pi_old), mdp.a_indptr[:-1])
        row = dict(iter=self.n_iter, clipfrac=clipped.sum() / (self.epochs * n),
                   approx_kl=float(np.mean(np.expm1(log_ratio) - log_ratio)),
                   kl_ref=float(kl[mask].mean()), kl_sequence=float(kl.sum(axis=1).mean()),
                   kl_coef=beta, entropy=float(entropy[s].mean()),
                   mean_return=float(discounted_returns(traj.rewards, traj.terminated,
                                                        traj.truncated, mdp.gamma)[:, 0].mean()),
                   n_samples=n)
        if self.advantage == "gae":
            resid, tgt = targets[mask] - values_before[s], targets[mask]
            var = tgt.var()
            row["explained_variance"] = 1.0 - resid.var() / var if var > 0 else np.nan
        if self.kl_controller is not None:
            if self.config.kl_target_sequence is not None:
                self.kl_controller.update(row["kl_sequence"], self.n_envs)
            else:
                self.kl_controller.update(row["kl_ref"], n)
        ev, d, J_plain, tv = self._exact()
        self._v_exact, self._d_exact = ev.v, d
        row.update(J=ev.J, J_plain=J_plain, tv_target=tv,
                   gap=np.nan if self.reference is None else self.reference - ev.J)
        row["seconds"] = time.perf_counter() - t0
        self._rows.append(row)
        return row

    # ------------------------------------------- run loop and checkpoint hooks (_run)
    def _final(self):
        ev, _, J_plain, tv = self._exact()
        return self.values.copy(), ev.J, {"kl_coef": self.kl_coef, "J_plain": J_plain,
                                          "tv_target": tv}

    def _postfix(self, row):
        post = {**super()._postfix(row), "clipfrac": f"{row['clipfrac']:.2f}"}
        if self.target is not None:
            post["tv"] = f"{row['tv_target']:.2e}"
        return post

    @classmethod
    def _setting_names(cls):
        return [f.name for f in dataclasses.fields(SampledPPOConfig)]

    def _settings(self):
        return self.config.to_dict()

    def _state(self):
        from ._io import _jsonable

        info = {"note": self.target_note}
        if self.target is not None:
            info.update({name: self.target[name] for name in _TARGET_FIELDS})
            if info["reward_clip"] is not None:
                info["reward_clip"] = list(info["reward_clip"])
        return {"values": self.values, "v_exact": self._v_exact, "d_exact": self._d_exact,
                "rng": json.dumps(self.rng.bit_generator.state, default=_jsonable),
                "kl_coef": np.float64(self.kl_coef),
                "target": None if self.target is None else self._target_flat,
                "target_info": json.dumps(info, default=_jsonable)}

    @classmethod
    def _state_checks(cls, mdp):
        return {"values": check_states(mdp), "v_exact": check_states(mdp),
                "d_exact": check_states(mdp, nonnegative=True), "rng": None,
                "kl_coef": lambda x, name: V.check_positive(x, name, strict=False),
                "target": lambda x, name: V.check_policy(mdp, x, name),
                "target_info": _check_target_info}

    @classmethod
    def _restore_arguments(cls, state):
        return {}

    def _set_state(self, state):
        self.values, self._v_exact = state["values"], state["v_exact"]
        self._d_exact = state["d_exact"]
        self.rng = _generator_from_state(state["rng"])
        if self.kl_controller is not None:
            self.kl_controller.value = state["kl_coef"]
        elif state["kl_coef"] != self.config.kl_coef:
            raise ValueError(f"kl_coef: {state['kl_coef']!r} differs from the fixed kl_coef "
                             f"{self.config.kl_coef!r} of the settings")
        info = dict(state["target_info"])
        self.target_note = info.pop("note")
        if (state["target"] is None) != (len(info) == 0):
            raise ValueError("target_info: must describe the saved target (and only then)")
        self.target = None
        if state["target"] is not None:
            if info["reward_clip"] is not None:
                info["reward_clip"] = tuple(info["reward_clip"])
            self._target_flat = state["target"]
            self.target = SampledTarget(policy=self.mdp.to_table(state["target"].copy()), **info)


_TARGET_FIELDS = ("J_plain", "J_reg", "kind", "objective", "divergence", "tau", "kl_coef",
                  "scale", "ent_coef", "advantage_level", "reward_clip", "method", "residual",
                  "update_norm", "converged", "n_iter", "spread", "starts", "stable")


def _check_target_info(x, name):
    """The saved description of SampledPPO's target: {"note": str} plus, with a target,
    exactly the scalar fields of SampledTarget."""
    if not isinstance(x, dict) or not isinstance(x.get("note"), str):
        raise ValueError(f"{name} must be a JSON object with a string 'note'")
    keys = set(x) - {"note"}
    if keys and keys != set(_TARGET_FIELDS):
        missing = sorted(set(_TARGET_FIELDS) - keys) or sorted(keys - set(_TARGET_FIELDS))
        raise ValueError(f"{name}: unexpected or missing field {missing[0]!r}")
    return x


def _check_collapse(mdp, pi_old, pi, logits, it):
    """FloatingPointError if an update sent a probability from > 0 to exactly 0 (a step so
    large the policy collapsed onto one action, as the exact methods report it)."""
    collapsed = (pi == 0) & (pi_old > 0)
    if collapsed.any():
        k = int(np.argmax(collapsed))
        s = int(mdp.s_indices[k])
        theta = logits[mdp.a_indptr[s]:mdp.a_indptr[s + 1]]
        raise FloatingPointError(
            f"SampledPPO: the policy underflowed to 0 at iteration {it} ({mdp.pair_name(k)}; "
            f"the logits of state {s} span {float(theta.max() - theta.min()):.3g}); reduce lr")


_BIT_GENERATORS = ("PCG64", "PCG64DXSM", "MT19937", "Philox", "SFC64")


def _generator_from_state(state):
    """A numpy Generator in the saved ``bit_generator.state`` (checked: names the field ``rng``)."""
    name = state.get("bit_generator") if isinstance(state, dict) else None
    if name not in _BIT_GENERATORS:
        raise ValueError(f"rng must be the state of one of numpy's bit generators "
                         f"({', '.join(_BIT_GENERATORS)}), got {str(state)[:60]!r}")
    bit_generator = getattr(np.random, name)()
    try:
        bit_generator.state = state
    except (ValueError, TypeError, KeyError, OverflowError) as exc:
        raise ValueError(f"rng: not a valid {name} state ({exc})") from None
    return np.random.Generator(bit_generator)
