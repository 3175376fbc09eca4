r"""Token MDPs: LLM response generation as an episodic MDP, with an SFT-like reference
policy and an outcome reward.

A prompt ``p ∈ {0..P-1}`` is drawn from ρ; the policy then writes a response
``y = (y_1, ..., y_ℓ)`` of tokens ``y_i ∈ {0..V-1}``, one per step, and ends it with the
end-of-sequence action EOS (action ``V``) at any length ``ℓ = 0..L-1``, or by writing
the ``L``-th token (``L = max_len``). The episode's return is

    G(p, y) = R(p, y) + Σ_i b[y_i]

with the outcome reward R paid on the transition that ends the response and the
optional per-token rewards ``b = token_reward`` on every token action.

**States and numbering.** One state per prompt and prefix ``(p, y)`` with
``len(y) = 0..L-1``, plus one terminal state END (absorbing, reward 0, the last index).
Prefixes are numbered by length, then prompt, then the prefix read as a base-V number:

    s(p, ()) = p,        s(p, y + t) = V·s(p, y) + P + t,

so every transition goes to a higher index (``MDP.topological_order`` is the identity on
the non-terminal states) and the prefixes of length d are the block
``[P (V^d − 1)/(V − 1), P (V^{d+1} − 1)/(V − 1))``. In all

    n_states = P (V^L − 1)/(V − 1) + 1        (P·L + 1 if V = 1),
    n_pairs = nnz = (V + 1)·n_states          (deterministic transitions).

For example V = 8, L = 7, P = 4 gives 1,198,373 states and 10.8 million pairs (about
0.4 GB of MDP arrays, 36 bytes per pair, plus 8 per pair for π_ref).

**Outcome reward** (:class:`OutcomeReward`; 1-based token positions):

    R(p, y) = prompt_bias[p] + Σ_{i=1..ℓ} token_value[y_i] + prompt_value[p, y_1]
              + Σ_{i=2..ℓ} pair_value[y_{i-1}, y_i] + length_value[ℓ]

(the ``prompt_value`` term only when ℓ ≥ 1). Token counts and the length span the
``token_value`` and ``length_value`` terms but not the interactions ``prompt_value``
and ``pair_value``, which is what :mod:`fastppo.reward_model` uses to make a
misspecified proxy.

**Reference policy** (a bigram "SFT" policy): π_ref(a | c) depends only on the context
c, the last token of the prefix, or the prompt for the empty prefix; a table of shape
(P + V, V + 1), full support. At END it is uniform.
"""

import numpy as np

from . import _validation as V
from .generators import _MAX_STATES, _real
from .mdp import MDP

__all__ = ["token_mdp", "TokenMDP", "OutcomeReward"]


def _softmax_rows(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


class OutcomeReward:
    """The outcome reward R(p, y) of a token MDP (formula in :mod:`fastppo.tokens`).

    Parameters
    ----------
    prompt_bias : array_like of shape (n_prompts,)
    token_value : array_like of shape (vocab,)
    prompt_value : array_like of shape (n_prompts, vocab)
        Interaction of the prompt with the first token.
    pair_value : array_like of shape (vocab, vocab)
        Interaction of consecutive tokens, ``pair_value[previous, next]``.
    length_value : array_like of shape (max_len + 1,)
        Term of each response length 0..max_len.

    The arrays are copied, read-only, float64 and finite.
    """

    _FIELDS = ("prompt_bias", "token_value", "prompt_value", "pair_value", "length_value")

    def __init__(self, prompt_bias, token_value, prompt_value, pair_value, length_value):
        arrays = {}
        for name, x in zip(self._FIELDS, (prompt_bias, token_value, prompt_value, pair_value,
                                          length_value)):
            x = V.as_float_array(x, name, copy=True)
            V.check_finite(x, name)
            x.flags.writeable = False
            arrays[name] = x
        P, Vb = arrays["prompt_value"].shape if arrays["prompt_value"].ndim == 2 else (-1, -1)
        L = arrays["length_value"].shape[0] - 1 if arrays["length_value"].ndim == 1 else -1
        want = {"prompt_bias": (P,), "token_value": (Vb,), "prompt_value": (P, Vb),
                "pair_value": (Vb, Vb), "length_value": (L + 1,)}
        for name, shape in want.items():
            if arrays[name].shape != shape or min(shape) < 1:
                raise ValueError(
                    f"{name} must have shape {shape} to match prompt_value (n_prompts, vocab) "
                    f"and length_value (max_len + 1,), got {arrays[name].shape}")
        if L < 1:
            raise ValueError("length_value must have shape (max_len + 1,) with max_len >= 1")
        self.__dict__.update(arrays)
        self.n_prompts, self.vocab, self.max_len = P, Vb, L

    @classmethod
    def random(cls, vocab, max_len, n_prompts, seed=None, interaction=1.0):
        """The seeded reward of :func:`token_mdp`.

        ``prompt_bias``, ``token_value`` standard normal; ``prompt_value``, ``pair_value``
        normal with standard deviation ``interaction``; ``length_value[ℓ] =
        −(ℓ − ℓ*)²/L`` with a preferred length ℓ* uniform on 1..L. Drawn in that order
        from ``seed``.
        """
        rng = V.check_seed(seed)
        interaction = _real(interaction, "interaction")
        P, Vb, L = n_prompts, vocab, max_len
        bias, token = rng.standard_normal(P), rng.standard_normal(Vb)
        prompt = interaction * rng.standard_normal((P, Vb))
        pair = interaction * rng.standard_normal((Vb, Vb))
        best = rng.integers(1, L + 1)
        return cls(bias, token, prompt, pair, -(np.arange(L + 1) - best) ** 2 / L)

    def __call__(self, prompts, tokens):
        """R(p, y) of a batch of responses.

        Parameters
        ----------
        prompts : int or array_like of int, shape (n,)
        tokens : array_like of int, shape (T,) or (n, T)
            Responses padded at the end with -1 (EOS is not written), lengths <= max_len.

        Returns
        -------
        float, or ndarray of shape (n,)
        """
        single = np.ndim(prompts) == 0
        p, t = check_responses(self.n_prompts, self.vocab, self.max_len,
                               np.atleast_1d(prompts), np.atleast_2d(tokens) if single else tokens)
        valid = t >= 0
        t0 = np.where(valid, t, 0)
        length = valid.sum(axis=1)
        total = self.prompt_bias[p] + (self.token_value[t0] * valid).sum(axis=1)
        total += self.length_value[length]
        if t.shape[1]:
            total += np.where(length > 0, self.prompt_value[p, t0[:, 0]], 0.0)
            total += (self.pair_value[t0[:, :-1], t0[:, 1:]] * valid[:, 1:]).sum(axis=1)
        return float(total[0]) if single else total

    def __repr__(self):
        return (f"OutcomeReward(n_prompts={self.n_prompts}, vocab={self.vocab}, "
                f"max_len={self.max_len})")


def check_responses(n_prompts, vocab, max_len, prompts, tokens):
    """(prompts int64 (n,), tokens int64 (n, T)) checked: -1 padding at the end only."""
    p = np.asarray(prompts)
    t = np.asarray(tokens)
    for name, x in (("prompts", p), ("tokens", t)):
        if x.size and not np.issubdtype(x.dtype, np.integer):
            raise TypeError(f"{name} must hold integers, got dtype {x.dtype}")
    p, t = p.astype(np.int64), t.astype(np.int64)
    if p.ndim != 1 or t.ndim != 2 or t.shape[0] != p.shape[0]:
        raise ValueError(f"prompts must have shape (n,) and tokens (n, T), got {p.shape} and {t.shape}")
    bad = (p < 0) | (p >= n_prompts)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"prompts[{i}] = {p[i]} is not a prompt in [0, {n_prompts})")
    bad = (t < -1) | (t >= vocab)
    if bad.any():
        i, j = np.unravel_index(int(np.argmax(bad)), t.shape)
        raise ValueError(f"tokens[{i}, {j}] = {t[i, j]} is not a token in [0, {vocab}) or -1 (padding)")
    valid = t >= 0
    bad = valid[:, 1:] & ~valid[:, :-1]
    if bad.any():
        i = int(np.argmax(bad.any(axis=1)))
        raise ValueError(f"response {i}: a token follows the -1 padding")
    too_long = valid.sum(axis=1) > max_len
    if too_long.any():
        i = int(np.argmax(too_long))
        raise ValueError(f"response {i} has {int(valid[i].sum())} tokens, more than max_len = {max_len}")
    return p, t


class TokenMDP:
    """A token MDP with its reference policy and reward, returned by :func:`token_mdp`.

    Build one with :func:`token_mdp`; every parameter is kept as an attribute.

    Parameters
    ----------
    mdp : MDP
        Rectangular, ``vocab + 1`` actions (tokens 0..vocab-1, then EOS).
    ref : ndarray of shape (n_pairs,), read-only
        The bigram reference policy π_ref (pass it as ``ReverseKL(tau, ref=task.ref)``).
    reward : OutcomeReward
        The outcome reward R built into ``mdp.r``.
    token_reward : ndarray of shape (vocab,)
        Reward of every token action on top of R.
    ref_table : ndarray of shape (n_prompts + vocab, vocab + 1)
        π_ref(a | c): rows 0..P-1 the prompts (empty prefix), row P + t after token t.
    vocab, max_len, n_prompts : int

    Attributes
    ----------
    eos : int
        The EOS action (= vocab).
    end : int
        The terminal state (= mdp.n_states - 1).
    """

    def __init__(self, mdp, ref, ref_table, reward, token_reward, vocab, max_len, n_prompts):
        self.mdp, self.ref, self.ref_table = mdp, ref, ref_table
        self.reward, self.token_reward = reward, token_reward
        self.vocab, self.max_len, self.n_prompts = vocab, max_len, n_prompts
        self.eos, self.end = vocab, mdp.n_states - 1

    # ----------------------------------------------------------------- numbering
    @property
    def level_starts(self):
        """First state of each prefix length 0..max_len, shape (max_len + 1,); the last
        entry is ``end`` (the number of prefix states)."""
        return _level_starts(self.vocab, self.max_len, self.n_prompts)

    def state(self, prompt, tokens=()):
        """The state of prompt ``prompt`` followed by the prefix ``tokens`` (length < max_len)."""
        prompt = V.check_int(prompt, "prompt", minimum=0)
        if prompt >= self.n_prompts:
            raise ValueError(f"prompt must be < n_prompts = {self.n_prompts}, got {prompt}")
        tokens = list(tokens)
        if len(tokens) >= self.max_len:
            raise ValueError(f"a prefix state has fewer than max_len = {self.max_len} tokens, "
                             f"got {len(tokens)}")
        s = prompt
        for t in tokens:
            t = V.check_int(t, "token", minimum=0)
            if t >= self.vocab:
                raise ValueError(f"tokens must be < vocab = {self.vocab}, got {t}")
            s = self.vocab * s + self.n_prompts + t
        return s

    def decode(self, state):
        """(prompt, tokens) of a non-terminal state (inverse of :meth:`state`)."""
        s = V.check_int(state, "state", minimum=0)
        if s >= self.end:
            raise ValueError(f"state {s} is not a prefix state (those are 0..{self.end - 1}; "
                             f"{self.end} is the terminal state)")
        P, Vb = self.n_prompts, self.vocab
        tokens = []
        while s >= P:
            t = (s - P) % Vb
            tokens.append(t)
            s = (s - P - t) // Vb
        return s, tuple(reversed(tokens))

    # ------------------------------------------------------------------- rewards
    def pair_rewards(self, reward=None, token_reward=None):
        """The MDP's pair rewards for an outcome reward, shape (n_pairs,).

        Parameters
        ----------
        reward : OutcomeReward, optional
            Default ``self.reward``; its sizes must match the task.
        token_reward : float or array_like of shape (vocab,), optional
            Default ``self.token_reward``.
        """
        reward = self.reward if reward is None else reward
        if not isinstance(reward, OutcomeReward):
            raise TypeError(f"reward must be an OutcomeReward, got {type(reward).__name__}")
        sizes = (reward.n_prompts, reward.vocab, reward.max_len)
        if sizes != (self.n_prompts, self.vocab, self.max_len):
            raise ValueError(f"reward has (n_prompts, vocab, max_len) = {sizes}, the task "
                             f"{(self.n_prompts, self.vocab, self.max_len)}")
        token_reward = (self.token_reward if token_reward is None
                        else _token_reward(token_reward, self.vocab))
        return _pair_rewards(reward, token_reward, self.level_starts)

    def with_reward(self, reward, token_reward=None):
        """The same task with another outcome reward (e.g. a fitted proxy): a new
        TokenMDP whose MDP shares this one's transitions, ρ, γ and π_ref."""
        mdp = self.mdp.with_rewards(self.pair_rewards(reward, token_reward))
        token_reward = (self.token_reward if token_reward is None
                        else _token_reward(token_reward, self.vocab))
        return TokenMDP(mdp, self.ref, self.ref_table, reward, token_reward, self.vocab,
                        self.max_len, self.n_prompts)

    def __repr__(self):
        return (f"TokenMDP(vocab={self.vocab}, max_len={self.max_len}, n_prompts={self.n_prompts}, "
                f"n_states={self.mdp.n_states:,}, gamma={self.mdp.gamma})")


def _level_starts(Vb, L, P):
    d = np.arange(L + 1, dtype=np.int64)
    return P * d if Vb == 1 else P * (Vb ** d - 1) // (Vb - 1)


def _token_reward(x, vocab):
    x = V.as_float_array(x, "token_reward", copy=True)
    if x.shape not in ((), (vocab,)):
        raise ValueError(f"token_reward must be a number or have shape ({vocab},), got {x.shape}")
    x = np.broadcast_to(x, (vocab,)).copy()
    V.check_finite(x, "token_reward")
    x.flags.writeable = False
    return x


def _contexts(lo, hi, P, Vb):
    """π_ref / interaction context of states lo..hi-1 of one level: the prompt on level 0,
    else P + the last token."""
    s = np.arange(lo, hi, dtype=np.int64)
    return s if hi <= P else P + (s - P) % Vb


def _pair_rewards(reward, token_reward, starts):
    """Pair rewards (n_pairs,): one vectorised step per prefix length."""
    P, Vb, L = reward.n_prompts, reward.vocab, reward.max_len
    N = int(starts[-1])
    inter = np.vstack([reward.prompt_value, reward.pair_value])  # (P + V, V) by context
    r = np.zeros((N + 1, Vb + 1))
    r[:N, :Vb] = token_reward
    score = np.empty(N)  # R(p, y) without its length term, per prefix
    score[:P] = reward.prompt_bias
    for d in range(L):
        lo, hi = int(starts[d]), int(starts[d + 1])
        child = score[lo:hi, None] + reward.token_value + inter[_contexts(lo, hi, P, Vb)]
        r[lo:hi, Vb] = score[lo:hi] + reward.length_value[d]  # EOS ends y
        if d + 1 < L:
            score[hi:int(starts[d + 2])] = child.reshape(-1)
        else:  # the L-th token ends y + t
            r[lo:hi, :Vb] += child + reward.length_value[L]
    return r.reshape(-1)


def token_mdp(vocab, max_len, n_prompts=1, *, gamma=1.0, seed=None, rho=None, interaction=1.0,
              ref_scale=1.0, token_reward=0.0, reward=None):
    """An episodic MDP of LLM generation: prompts, tokens, EOS, an outcome reward, and a
    bigram reference policy.

    Parameters
    ----------
    vocab : int
        Number of tokens V; the actions are the tokens 0..V-1 and EOS (= V).
    max_len : int
        Longest response L: a response ends by EOS at any length < L, or when its L-th
        token is written.
    n_prompts : int, default 1
        Number of prompts P (the start states 0..P-1).
    gamma : float in [0, 1], default 1
        Every policy terminates within L steps, so γ = 1 is allowed.
    seed : int, None or numpy.random.Generator
        Draws, in this order: ρ (unless given), the reward (:meth:`OutcomeReward.random`;
        drawn even when ``reward`` is given, so ρ and π_ref do not depend on it) and
        π_ref's logits.
    rho : array_like of shape (n_prompts,), optional
        Prompt distribution; default seeded Dirichlet(1, ..., 1).
    interaction : float, default 1
        Standard deviation of the seeded reward's interaction terms (``prompt_value``,
        ``pair_value``); 0 puts R in the span of token counts and length.
    ref_scale : float >= 0, default 1
        π_ref(·|c) = softmax(ref_scale · z_c), z_c standard normal over the V + 1
        actions, one row per context c (prompt or last token); 0 gives uniform π_ref.
    token_reward : float or array_like of shape (vocab,), default 0
        Reward of each token action on top of the outcome reward (e.g. a length cost).
    reward : OutcomeReward, optional
        The outcome reward; default the seeded one.

    Returns
    -------
    TokenMDP
        ``.mdp`` (the MDP), ``.ref`` (π_ref per pair), ``.reward``, and the numbering
        helpers ``state`` / ``decode``. States, numbering, rewards and sizes are described
        in :mod:`fastppo.tokens`: ``n_states = P (V^L − 1)/(V − 1) + 1``, ``n_pairs =
        nnz = (V + 1) n_states``. Built with one vectorised step per length, memory
        proportional to ``n_pairs``.

    Examples
    --------
    >>> import fastppo
    >>> task = fastppo.token_mdp(vocab=3, max_len=2, n_prompts=2, seed=0)
    >>> task.mdp.n_states, task.mdp.n_actions, task.mdp.gamma    # 2 (1 + 3) + 1 states
    (9, 4, 1.0)
    >>> task.state(1, [2]), task.decode(7)
    (7, (1, (2,)))
    >>> s = task.state(0, [1])
    >>> bool(abs(task.mdp.R[s, task.eos] - task.reward(0, [1])) < 1e-12)  # EOS pays R(p, y)
    True
    >>> reg = fastppo.ReverseKL(0.1, ref=task.ref)
    """
    Vb = V.check_int(vocab, "vocab")
    L = V.check_int(max_len, "max_len")
    P = V.check_int(n_prompts, "n_prompts")
    gamma = V.check_gamma(gamma)
    ref_scale = _real(ref_scale, "ref_scale")
    if ref_scale < 0:
        raise ValueError(f"ref_scale must be >= 0, got {ref_scale}")
    token_reward = _token_reward(token_reward, Vb)
    n_prefix = P * L if Vb == 1 else P * (Vb ** L - 1) // (Vb - 1)
    if n_prefix + 1 > _MAX_STATES:
        raise ValueError(f"token_mdp({vocab}, {max_len}, {n_prompts}) would have {n_prefix + 1} "
                         f"states, more than {_MAX_STATES} (int32 indices)")
    rng = V.check_seed(seed)
    prompt_rho = rng.standard_exponential(P)
    prompt_rho /= prompt_rho.sum()
    if rho is not None:
        prompt_rho = V.check_distribution(rho, P, "rho")
    seeded = OutcomeReward.random(Vb, L, P, rng, interaction)
    if reward is None:
        reward = seeded
    elif not isinstance(reward, OutcomeReward):
        raise TypeError(f"reward must be an OutcomeReward or None, got {type(reward).__name__}")
    ref_table = _softmax_rows(ref_scale * rng.standard_normal((P + Vb, Vb + 1)))
    ref_table.flags.writeable = False

    N, A = n_prefix, Vb + 1
    S, n_pairs = N + 1, (N + 1) * A
    starts = _level_starts(Vb, L, P)
    succ = np.full((S, A), N, dtype=np.int32)  # EOS, the L-th token and END → END
    inner = int(starts[L - 1])  # prefixes shorter than L - 1: tokens lead to a child
    succ[:inner, :Vb] = Vb * np.arange(inner, dtype=np.int32)[:, None] + P + np.arange(Vb, dtype=np.int32)
    ref = np.full((S, A), 1.0 / A)
    for d in range(L):
        lo, hi = int(starts[d]), int(starts[d + 1])
        ref[lo:hi] = ref_table[_contexts(lo, hi, P, Vb)]
    ref = ref.reshape(-1)
    ref.flags.writeable = False
    mdp_rho = np.zeros(S)
    mdp_rho[:P] = prompt_rho
    if (reward.n_prompts, reward.vocab, reward.max_len) != (P, Vb, L):
        raise ValueError(f"reward has (n_prompts, vocab, max_len) = "
                         f"{(reward.n_prompts, reward.vocab, reward.max_len)}, expected {(P, Vb, L)}")
    r = _pair_rewards(reward, token_reward, starts)
    mdp = MDP(np.arange(0, n_pairs + 1, A, dtype=np.int64), np.tile(np.arange(A, dtype=np.int64), S),
              np.arange(n_pairs + 1, dtype=np.int64), succ.reshape(-1), np.ones(n_pairs), r,
              gamma, mdp_rho, _copy=False)
    return TokenMDP(mdp, ref, ref_table, reward, token_reward, Vb, L, P)
