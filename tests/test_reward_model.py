"""The reward-model stand-in: sampled responses, Bradley–Terry labels, features, and the
logistic proxy fit (well-specified recovery, misspecification, reproducibility)."""
import itertools
import math

import numpy as np
import pytest

import fastppo
from fastppo import reward_model as rm


def all_responses(V, L):
    """Every response of length 0..L, padded with -1, by itertools."""
    ys = [y for ell in range(L + 1) for y in itertools.product(range(V), repeat=ell)]
    tokens = np.full((len(ys), L), -1)
    for i, y in enumerate(ys):
        tokens[i, :len(y)] = y
    return ys, tokens


def gold(reward, p, y):
    """R(p, y) term by term (the formula of fastppo.tokens)."""
    total = reward.prompt_bias[p] + reward.length_value[len(y)]
    for i, t in enumerate(y):
        total += reward.token_value[t]
        total += reward.prompt_value[p, t] if i == 0 else reward.pair_value[y[i - 1], t]
    return total


def response_probability(task, pi, p, y):
    """Pr(y | p) under pi: the product of pi along the prefixes, then EOS unless len(y) = L."""
    pi = pi.reshape(-1, task.vocab + 1)
    prob, s = 1.0, task.state(p)
    for i, t in enumerate(y):
        prob *= pi[s, t]
        if i + 1 < task.max_len:
            s = task.state(p, y[:i + 1])
    return prob * (pi[s, task.eos] if len(y) < task.max_len else 1.0)


def test_sampled_responses_follow_the_policy():
    task = fastppo.token_mdp(2, 3, 2, seed=0)
    n = 40_000
    prompts, tokens = rm.sample_responses(task, task.ref, n, seed=1, group_size=2)
    assert tokens.shape == (n, 3) and prompts.shape == (n,)
    np.testing.assert_array_equal(prompts[0::2], prompts[1::2])  # pairs share a prompt
    ys, _ = all_responses(2, 3)
    for p in range(2):
        mine = prompts == p
        assert abs(mine.mean() - task.mdp.rho[p]) <= 5 * math.sqrt(0.25 / (n / 2))
        counts = {y: 0 for y in ys}
        for row in tokens[mine]:
            counts[tuple(int(t) for t in row[row >= 0])] += 1
        for y in ys:
            q = response_probability(task, task.ref, p, y)
            se = math.sqrt(q * (1 - q) / mine.sum())
            assert abs(counts[y] / mine.sum() - q) <= 5 * se + 1e-12, (p, y)


def test_bradley_terry_labels():
    """Label frequencies of each (a, b) pair of responses match σ(R(a) − R(b))."""
    task = fastppo.token_mdp(2, 1, 1, seed=3)  # responses (), (0), (1)
    n = 60_000
    prefs = rm.preference_pairs(task, task.mdp.uniform_policy(), n, seed=2)
    ya = [tuple(int(t) for t in r[r >= 0]) for r in prefs.tokens_a]
    yb = [tuple(int(t) for t in r[r >= 0]) for r in prefs.tokens_b]
    ga = np.array([gold(task.reward, 0, y) for y in ya])
    gb = np.array([gold(task.reward, 0, y) for y in yb])
    np.testing.assert_allclose(prefs.gold_a, ga, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prefs.gold_b, gb, rtol=0, atol=1e-12)
    np.testing.assert_allclose(prefs.prob_a, 1 / (1 + np.exp(gb - ga)), rtol=1e-12)
    checked = 0
    for a, b in itertools.product([(), (0,), (1,)], repeat=2):
        mask = np.array([u == a and v == b for u, v in zip(ya, yb)])
        q = 1 / (1 + math.exp(gold(task.reward, 0, b) - gold(task.reward, 0, a)))
        freq = prefs.a_preferred[mask].mean()
        assert abs(freq - q) <= 4 * math.sqrt(q * (1 - q) / mask.sum()), (a, b, freq, q)
        checked += mask.sum() > 1000
    assert checked == 9


def test_features():
    task = fastppo.token_mdp(3, 4, 1, seed=0)
    _, tokens = all_responses(3, 4)
    phi = rm.features(task, tokens)
    assert phi.shape == (tokens.shape[0], 3 + 5)
    for row, f in zip(tokens, phi):
        y = [int(t) for t in row if t >= 0]
        assert list(f[:3]) == [y.count(t) for t in range(3)]
        assert list(f[3:]) == [float(len(y) == ell) for ell in range(5)]


def fisher_standard_errors(task, prefs, responses):
    """Asymptotic standard errors of the fitted R̂(y) − mean_y R̂ (inverse Fisher information
    of the logistic likelihood at the gold reward; pseudo-inverse for its null directions)."""
    X = rm.features(task, prefs.tokens_a) - rm.features(task, prefs.tokens_b)
    q = 1 / (1 + np.exp(prefs.gold_b - prefs.gold_a))
    info = (X * (q * (1 - q))[:, None]).T @ X / X.shape[0]
    cov = np.linalg.pinv(info) / X.shape[0]
    F = rm.features(task, responses)
    A = F - F.mean(axis=0)
    return np.sqrt(np.einsum("ij,jk,ik->i", A, cov, A))


@pytest.mark.parametrize("seed", [0, 4, 6])
def test_well_specified_fit_recovers_the_gold_reward(seed):
    """interaction = 0 puts the gold reward in the span of the features: with 20,000 pairs
    the proxy matches it (up to a constant) on every response within 4 asymptotic standard
    errors, to 0.2 absolute (rewards' spread ≈ 1), with correlation > 0.999. (Over ten
    seeds the largest |error| / standard error was 2.7; the largest error 0.134.)"""
    task = fastppo.token_mdp(3, 3, 2, seed=seed, interaction=0.0)
    prefs = rm.preference_pairs(task, task.mdp.uniform_policy(), 20_000, seed=seed)
    fit = rm.fit_proxy(task, prefs)
    assert fit.converged, fit.message
    ys, tokens = all_responses(3, 3)
    g = np.array([gold(task.reward, 0, y) for y in ys])
    h = fit.reward(np.zeros(len(ys), dtype=int), tokens)
    err = (h - g) - (h - g).mean()
    se = fisher_standard_errors(task, prefs, tokens)
    assert np.abs(err / se).max() <= 4.0
    assert np.abs(err).max() <= 0.2
    assert np.corrcoef(g, h)[0, 1] >= 0.999
    # the proxy has no prompt term: R̂ is the same for every prompt
    assert fit.reward(np.ones(len(ys), dtype=int), tokens) == pytest.approx(h, abs=1e-15)


def test_error_shrinks_with_more_pairs():
    task = fastppo.token_mdp(3, 3, 2, seed=1, interaction=0.0)
    ys, tokens = all_responses(3, 3)
    g = np.array([gold(task.reward, 0, y) for y in ys])
    rms = []
    for n in (2_000, 32_000):
        fit = rm.fit_proxy(task, rm.preference_pairs(task, task.mdp.uniform_policy(), n, seed=5))
        err = fit.reward(np.zeros(len(ys), dtype=int), tokens) - g
        rms.append(np.std(err))
    assert rms[1] <= rms[0] / 2  # 1/√n predicts a factor 4


def test_misspecified_gold_reward_is_outside_the_feature_span():
    """With interactions, even the best linear function of the features misses the gold
    reward (so any fitted proxy does)."""
    task = fastppo.token_mdp(3, 3, 1, seed=2, interaction=1.0)
    ys, tokens = all_responses(3, 3)
    g = np.array([gold(task.reward, 0, y) for y in ys])
    F = rm.features(task, tokens)
    w, *_ = np.linalg.lstsq(F, g, rcond=None)  # the constant is in the span (one-hot length)
    assert np.std(g - F @ w) >= 0.1 * np.std(g)  # measured: 0.65 of 3.69


def test_fit_reports_its_training_accuracy():
    task = fastppo.token_mdp(3, 3, 2, seed=2)
    prefs = rm.preference_pairs(task, task.ref, 2_000, seed=0)
    fit = rm.fit_proxy(task, prefs)
    margin = fit.reward(prefs.prompts, prefs.tokens_a) - fit.reward(prefs.prompts, prefs.tokens_b)
    agree = np.where(prefs.a_preferred, margin, -margin) > 0
    differ = [not np.array_equal(a, b) for a, b in zip(prefs.tokens_a, prefs.tokens_b)]
    # (a permutation of the same tokens has the same features: the proxy cannot order it)
    same_features = [sorted(a) == sorted(b) for a, b in zip(prefs.tokens_a, prefs.tokens_b)]
    informative = np.array(differ) & ~np.array(same_features)
    assert 500 < informative.sum() < 2000
    assert abs(fit.accuracy - agree[informative].mean()) <= 1 / informative.sum()  # round-off ties
    assert 0.5 < fit.accuracy < 1.0


def test_proxy_mdp_pays_the_proxy_reward():
    task = fastppo.token_mdp(3, 2, 2, seed=0)
    fit = rm.fit_proxy(task, rm.preference_pairs(task, task.ref, 500, seed=0))
    proxy = task.with_reward(fit.reward)
    w = fit.weights
    for p in range(2):
        for y in [(), (0,), (2,)]:
            phi = np.r_[[y.count(t) for t in range(3)], [len(y) == ell for ell in range(3)]]
            assert proxy.mdp.R[task.state(p, y), task.eos] == pytest.approx(phi @ w, abs=1e-12)
    s = task.state(1, (1,))
    phi = np.r_[[0, 2, 0], [0, 0, 1]]  # the 2nd token ends y = (1, 1)
    assert proxy.mdp.R[s, 1] == pytest.approx(phi @ w, abs=1e-12)
    assert proxy.mdp.p_indices is task.mdp.p_indices


def test_reproducible():
    task = fastppo.token_mdp(3, 3, 2, seed=0)
    a = rm.preference_pairs(task, task.ref, 300, seed=4)
    b = rm.preference_pairs(task, task.ref, 300, seed=4)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    c = rm.preference_pairs(task, task.ref, 300, seed=5)
    assert not np.array_equal(a.tokens_a, c.tokens_a)
    fa, fb = rm.fit_proxy(task, a), rm.fit_proxy(task, b)
    np.testing.assert_array_equal(fa.weights, fb.weights)
    for backend in ("cython", "numpy"):  # every backend simulates the same responses
        d = rm.preference_pairs(task, task.ref, 300, seed=4, backend=backend)
        np.testing.assert_array_equal(d.tokens_b, a.tokens_b)
        np.testing.assert_array_equal(d.a_preferred, a.a_preferred)


def test_rejects_bad_input():
    task = fastppo.token_mdp(2, 2, 1, seed=0)
    prefs = rm.preference_pairs(task, task.ref, 10, seed=0)
    with pytest.raises(TypeError, match="task must be a TokenMDP"):
        rm.fit_proxy(task.mdp, prefs)
    with pytest.raises(TypeError, match="reward must be an OutcomeReward or None"):
        rm.preference_pairs(task, task.ref, 10, reward=1.0)
    with pytest.raises(ValueError, match="n must be >= 1"):
        rm.preference_pairs(task, task.ref, 0)
    with pytest.raises(ValueError, match="l2 must be >= 0"):
        rm.fit_proxy(task, prefs, l2=-1.0)
    with pytest.raises(ValueError, match=r"a_preferred must have shape \(10,\), got \(9,\)"):
        rm.fit_proxy(task, rm.Preferences(prefs, a_preferred=prefs.a_preferred[:9]))
    with pytest.raises(ValueError, match="response 0 has 3 tokens, more than max_len = 2"):
        rm.features(task, [[0, 1, 1]])
