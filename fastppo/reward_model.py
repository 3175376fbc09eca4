r"""A reward-model stand-in, as in RLHF: preferences labelled by a gold reward, and a
proxy reward fitted to them.

On a :class:`~fastppo.TokenMDP` the gold reward is its outcome reward R (``task.reward``).

1. :func:`preference_pairs`: two responses y, y' to the same prompt p, sampled from a
   policy (e.g. π_ref), labelled by Bradley–Terry on the gold reward:

       Pr(y ≻ y') = σ(R(p, y) − R(p, y')),    σ(z) = 1/(1 + e^{−z}).

2. :func:`fit_proxy`: a linear reward R̂(y) = ⟨w, φ(y)⟩ on the features

       φ(y) = (count of token 0, ..., count of token V−1, [ℓ = 0], ..., [ℓ = L])

   (token counts and a one-hot length ℓ = len(y)), fitted by logistic regression on the
   label: w minimises the mean Bradley–Terry negative log-likelihood

       (1/n) Σ_i log(1 + exp(−z_i ⟨w, φ(y_i) − φ(y'_i)⟩)) + (l2/2) ‖w‖²,    z_i = ±1,

   with L-BFGS (``scipy.optimize.minimize``). Bradley–Terry sees reward differences within
   a prompt only, so R̂ is determined up to a constant (the L2 term picks the smallest w).
   The features span ``token_value`` and ``length_value`` of the gold reward but not its
   interactions (``prompt_value``, ``pair_value``), so with ``interaction > 0`` the proxy
   is misspecified, as a real reward model is.

3. ``task.with_reward(fit.reward)``: the proxy-reward MDP (same states, transitions, ρ and
   π_ref; proxy outcome rewards on the ending pairs), for the over-optimisation curve:
   optimise the proxy, measure the gold return.

Examples
--------
>>> import fastppo
>>> from fastppo import reward_model
>>> task = fastppo.token_mdp(vocab=3, max_len=3, n_prompts=2, seed=0)
>>> prefs = reward_model.preference_pairs(task, task.ref, 1000, seed=0)
>>> fit = reward_model.fit_proxy(task, prefs)
>>> proxy = task.with_reward(fit.reward)   # same states and pairs, proxy rewards
>>> proxy.mdp.n_pairs == task.mdp.n_pairs, fit.converged
(True, True)
"""
import numpy as np
from scipy.special import expit

from . import _validation as V
from ._result import Result
from .sampled import rollout
from .tokens import OutcomeReward, TokenMDP, check_responses

__all__ = ["Preferences", "ProxyFit", "sample_responses", "preference_pairs", "features",
           "fit_proxy"]


class Preferences(Result):
    """Preference pairs of :func:`preference_pairs`.

    Attributes
    ----------
    prompts : ndarray of shape (n,), int64
    tokens_a, tokens_b : ndarray of shape (n, max_len), int64
        The two responses, padded at the end with -1.
    gold_a, gold_b : ndarray of shape (n,)
        Their gold rewards R(p, y).
    prob_a : ndarray of shape (n,)
        Bradley–Terry Pr(a ≻ b) = σ(gold_a − gold_b).
    a_preferred : ndarray of shape (n,), bool
        The sampled label.
    """


class ProxyFit(Result):
    """Result of :func:`fit_proxy`.

    Attributes
    ----------
    reward : OutcomeReward
        The proxy R̂: ``token_value = w[:V]``, ``length_value = w[V:]``, zero elsewhere.
    weights : ndarray of shape (vocab + max_len + 1,)
    loss : float
        The minimised objective (mean negative log-likelihood + L2 term).
    accuracy : float
        Among the training pairs of two different responses (different features), the
        fraction the proxy orders as the label does.
    n_iter : int
    converged : bool
    message : str
    """


def sample_responses(task, pi, n, seed=None, *, group_size=1, backend=None):
    """Sample ``n`` responses of policy ``pi`` on a token MDP.

    Parameters
    ----------
    task : TokenMDP
    pi : array_like of shape (n_pairs,) or (n_states, vocab + 1)
    n : int
        Number of responses, a multiple of ``group_size``.
    seed : int, None or numpy.random.Generator
    group_size : int, default 1
        Consecutive responses share a prompt drawn from ρ.
    backend : {"numba", "cython", "numpy"}, optional
        Backend of :func:`fastppo.rollout`, which simulates the episodes.

    Returns
    -------
    prompts : ndarray of shape (n,), int64
    tokens : ndarray of shape (n, max_len), int64
        Padded at the end with -1 (EOS is not written).
    """
    _check_task(task)
    traj = rollout(task.mdp, pi, n, task.max_len, V.check_seed(seed), group_size=group_size,
                   backend=backend)
    tokens = np.where((traj.actions >= 0) & (traj.actions < task.eos), traj.actions, -1)
    return traj.states[:, 0].copy(), tokens


def preference_pairs(task, pi, n, seed=None, *, reward=None, backend=None):
    """``n`` preference pairs: two responses of ``pi`` to one prompt, labelled by
    Bradley–Terry on the gold reward.

    Parameters
    ----------
    task : TokenMDP
    pi : array_like of shape (n_pairs,) or (n_states, vocab + 1)
        The sampling policy (e.g. ``task.ref``).
    n : int
        Number of pairs.
    seed : int, None or numpy.random.Generator
        Draws the responses (via :func:`fastppo.rollout`), then the labels.
    reward : OutcomeReward, optional
        The gold reward; default ``task.reward``.
    backend : {"numba", "cython", "numpy"}, optional

    Returns
    -------
    Preferences
    """
    n = V.check_int(n, "n")
    gold = task.reward if reward is None else reward
    if not isinstance(gold, OutcomeReward):
        raise TypeError(f"reward must be an OutcomeReward or None, got {type(gold).__name__}")
    rng = V.check_seed(seed)
    prompts, tokens = sample_responses(task, pi, 2 * n, rng, group_size=2, backend=backend)
    values = gold(prompts, tokens)
    prob_a = expit(values[0::2] - values[1::2])
    return Preferences(prompts=prompts[0::2], tokens_a=tokens[0::2], tokens_b=tokens[1::2],
                       gold_a=values[0::2], gold_b=values[1::2], prob_a=prob_a,
                       a_preferred=rng.random(n) < prob_a)


def features(task, tokens):
    """φ(y): token counts and one-hot length, shape (n, vocab + max_len + 1).

    Parameters
    ----------
    task : TokenMDP
    tokens : array_like of int, shape (n, T)
        Responses padded at the end with -1.
    """
    _check_task(task)
    _, t = check_responses(task.n_prompts, task.vocab, task.max_len,
                           np.zeros(len(np.atleast_1d(tokens)), dtype=np.int64), tokens)
    n, Vb = t.shape[0], task.vocab
    valid = t >= 0
    rows = np.broadcast_to(np.arange(n)[:, None], t.shape)[valid]
    counts = np.bincount(rows * Vb + t[valid], minlength=n * Vb).reshape(n, Vb)
    length = np.zeros((n, task.max_len + 1))
    length[np.arange(n), valid.sum(axis=1)] = 1.0
    return np.hstack([counts.astype(np.float64), length])


def fit_proxy(task, prefs, *, l2=1e-4, tol=1e-10, max_iter=1000):
    """Fit the linear proxy reward to preference pairs (Bradley–Terry logistic regression).

    Parameters
    ----------
    task : TokenMDP
    prefs : Preferences
        From :func:`preference_pairs` (or any result with ``tokens_a``, ``tokens_b`` and
        ``a_preferred``).
    l2 : float >= 0, default 1e-4
        L2 penalty on the weights (makes the minimiser unique).
    tol : float, default 1e-10
        Gradient tolerance of L-BFGS (``gtol``).
    max_iter : int, default 1000

    Returns
    -------
    ProxyFit
        ``task.with_reward(fit.reward)`` is the proxy-reward task.
    """
    l2 = V.check_positive(l2, "l2", strict=False)
    tol = V.check_positive(tol, "tol")
    max_iter = V.check_int(max_iter, "max_iter")
    X = features(task, prefs.tokens_a) - features(task, prefs.tokens_b)
    z = np.where(np.asarray(prefs.a_preferred, dtype=bool), 1.0, -1.0)
    if z.shape != (X.shape[0],):
        raise ValueError(f"a_preferred must have shape ({X.shape[0]},), got {z.shape}")
    Xz = X * z[:, None]
    n = X.shape[0]

    def objective(w):
        m = Xz @ w  # margins
        loss = np.logaddexp(0.0, -m).mean() + 0.5 * l2 * (w @ w)
        grad = -(Xz.T @ expit(-m)) / n + l2 * w
        return loss, grad

    from scipy.optimize import minimize  # here: importing fastppo stays ~1 s shorter

    opt = minimize(objective, np.zeros(X.shape[1]), jac=True, method="L-BFGS-B",
                   options=dict(gtol=tol, ftol=0.0, maxiter=max_iter))
    w = opt.x
    Vb, P = task.vocab, task.n_prompts
    proxy = OutcomeReward(np.zeros(P), w[:Vb], np.zeros((P, Vb)), np.zeros((Vb, Vb)), w[Vb:])
    return ProxyFit(reward=proxy, weights=w, loss=float(opt.fun),
                    accuracy=float(np.mean((Xz @ w > 0)[(X != 0).any(axis=1)])), n_iter=int(opt.nit),
                    converged=bool(opt.success), message=str(opt.message))


def _check_task(task):
    if not isinstance(task, TokenMDP):
        raise TypeError(f"task must be a TokenMDP (from fastppo.token_mdp), got {type(task).__name__}")
