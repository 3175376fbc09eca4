"""Sampling kernels: vectorised rollouts, GAE and returns, and PPO minibatch epochs.

``rollout``:            one episode per environment from pre-drawn uniforms (no RNG here)
``gae``:                GAE(γ, λ) along each row, respecting episode ends and truncation
``discounted_returns``: discounted returns along each row, bootstrapped at truncation
``ppo_minibatches``:    epochs × minibatches of PPO-Clip on tabular logits and critic (serial),
                        with an entropy bonus and per-state or per-sample averaging

The NumPy reference (fastppo/_reference.py) states each one's arithmetic.
Mirrors kernels/cython/sampling.pyx.
"""
import math

import numpy as np
from numba import njit, prange

from ._codes import KL_K1, KL_K2, KL_K3
from ._jit import serial, twins
from ._probability import row_total
from ._softmax import LANES, fexp, max_actions, softmax_states


@njit(cache=True, nogil=True, inline="always")
def first_below(weights, lo, hi, u):
    """First i in [lo, hi) with u < weights[lo] + ... + weights[i] (hi − 1 if round-off leaves none)."""
    acc = 0.0
    for i in range(lo, hi):
        acc += weights[i]
        if u < acc:
            return i
    return hi - 1


def rollout(a_indptr, pi, log_pi, r, p_indptr, p_indices, p_data, terminal, start, u_action,
            u_next, states, actions, pairs, next_states, rewards, logp, terminated, truncated):
    n_envs, horizon = u_action.shape
    for e in prange(n_envs):
        s = start[e]
        for t in range(horizon):
            if s < 0 or terminal[s] != 0:
                states[e, t] = -1
                actions[e, t] = -1
                pairs[e, t] = -1
                next_states[e, t] = -1
                rewards[e, t] = 0.0
                logp[e, t] = 0.0
                terminated[e, t] = 0
                truncated[e, t] = 0
                s = -1
                continue
            k = first_below(pi, a_indptr[s], a_indptr[s + 1], u_action[e, t])
            j = first_below(p_data, p_indptr[k], p_indptr[k + 1],
                            u_next[e, t] * row_total(p_data, p_indptr[k], p_indptr[k + 1]))
            nxt = np.int64(p_indices[j])
            states[e, t] = s
            actions[e, t] = k - a_indptr[s]
            pairs[e, t] = k
            next_states[e, t] = nxt
            rewards[e, t] = r[k]
            logp[e, t] = log_pi[k]
            ends = terminal[nxt] != 0
            terminated[e, t] = 1 if ends else 0
            truncated[e, t] = 1 if (t == horizon - 1 and not ends) else 0
            s = nxt


def gae(rewards, values, next_values, terminated, done, gamma, lam, out):
    n_rows, n_cols = rewards.shape
    for e in prange(n_rows):
        a = 0.0
        for t in range(n_cols - 1, -1, -1):
            nv = 0.0 if terminated[e, t] != 0 else next_values[e, t]
            delta = rewards[e, t] + gamma * nv - values[e, t]
            a = delta + gamma * lam * (0.0 if done[e, t] != 0 else a)
            out[e, t] = a


def discounted_returns(rewards, next_values, terminated, done, gamma, out):
    n_rows, n_cols = rewards.shape
    for e in prange(n_rows):
        g = 0.0
        for t in range(n_cols - 1, -1, -1):
            follow = next_values[e, t] if done[e, t] != 0 else g
            g = rewards[e, t] + gamma * (0.0 if terminated[e, t] != 0 else follow)
            out[e, t] = g


def ppo_minibatches(a_indptr, sample_states, sample_pairs, logp_old, adv, logp_ref, returns,
                    v_old, order, bounds, eps_low, eps_high, dual_clip, kl_coef, kl_kind,
                    value_clip, lr, critic_lr, ent_coef, sample_mean, logits, values, g, csum,
                    vsum, counts, lse, clipped):
    block = np.empty((2, max_actions(a_indptr, 0, a_indptr.shape[0] - 1), LANES))
    lanes = np.empty((3, LANES))
    no_pi = np.empty(0)
    for ep in range(order.shape[0]):
        for m in range(bounds.shape[0] - 1):
            size = float(bounds[m + 1] - bounds[m])
            for j in range(bounds[m], bounds[m + 1]):
                i = order[ep, j]
                s = sample_states[i]
                k = sample_pairs[i]
                if counts[s] == 0:  # first sample of s in this minibatch: log Σ exp θ(s,·)
                    softmax_states(a_indptr, s, s + 1, logits, no_pi, lse, block, lanes)
                logp = logits[k] - lse[s]
                ratio = math.exp(logp - logp_old[i])
                A = adv[i]
                active = ((A > 0.0 and ratio < 1.0 + eps_high)
                          or (A < 0.0 and ratio > 1.0 - eps_low and ratio < dual_clip))
                if not active and A != 0.0:
                    clipped[ep] += 1
                coef = ratio * A if active else 0.0
                if kl_kind == KL_K1:
                    coef = coef - kl_coef * 1.0
                elif kl_kind == KL_K2:
                    coef = coef - kl_coef * (logp - logp_ref[i])
                elif kl_kind == KL_K3:
                    coef = coef - kl_coef * (1.0 - math.exp(logp_ref[i] - logp))
                diff = values[s] - returns[i]
                dv = values[s] - v_old[i]
                if abs(dv) > value_clip:  # the clipped loss wins: no gradient
                    dc = v_old[i] + math.copysign(value_clip, dv) - returns[i]
                    if dc * dc > diff * diff:
                        diff = 0.0
                g[k] += coef
                csum[s] += coef
                vsum[s] += diff
                counts[s] += 1
            for j in range(bounds[m], bounds[m + 1]):
                s = sample_states[order[ep, j]]
                n = counts[s]
                if n == 0:
                    continue
                den = size if sample_mean else float(n)  # per-sample or per-state mean
                cs = csum[s]
                if ent_coef != 0.0:  # ∂H/∂θ_b = −p_b (log p_b + H), once per sample of s
                    ew = ent_coef * (n / den)
                    h = 0.0
                    for b in range(a_indptr[s], a_indptr[s + 1]):
                        lp = logits[b] - lse[s]
                        h -= fexp(lp) * lp
                    for b in range(a_indptr[s], a_indptr[s + 1]):
                        lp = logits[b] - lse[s]
                        p = fexp(lp)
                        logits[b] += lr * ((g[b] - cs * p) / den - ew * (p * (lp + h)))
                        g[b] = 0.0
                else:
                    for b in range(a_indptr[s], a_indptr[s + 1]):
                        p = fexp(logits[b] - lse[s])
                        logits[b] += lr * ((g[b] - cs * p) / den)
                        g[b] = 0.0
                values[s] -= critic_lr * vsum[s] / den
                csum[s] = 0.0
                vsum[s] = 0.0
                counts[s] = 0


KERNELS = {**twins(rollout, gae, discounted_returns), **serial(ppo_minibatches)}
