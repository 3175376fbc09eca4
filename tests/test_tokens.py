"""token_mdp: structure, the outcome reward against its formula (by brute force), the
reference policy, reproducibility, size and memory."""
import itertools
import tracemalloc

import numpy as np
import pytest

import fastppo
from fastppo import OutcomeReward, TokenMDP, token_mdp

SIZES = [(3, 3, 2), (1, 4, 3), (4, 1, 2), (2, 5, 1)]  # (vocab, max_len, n_prompts)


def prefixes(V, L, P):
    """Every (prompt, prefix) with len(prefix) < L, by itertools."""
    return [(p, y) for ell in range(L) for p in range(P) for y in itertools.product(range(V), repeat=ell)]


def gold(reward, p, y):
    """R(p, y) written out term by term from the formula in fastppo.tokens."""
    total = reward.prompt_bias[p] + reward.length_value[len(y)]
    for i, t in enumerate(y):
        total += reward.token_value[t]
        total += reward.prompt_value[p, t] if i == 0 else reward.pair_value[y[i - 1], t]
    return total


@pytest.mark.parametrize("V, L, P", SIZES)
def test_structure(V, L, P):
    task = token_mdp(V, L, P, seed=0)
    mdp = task.mdp
    n_prefix = P * L if V == 1 else P * (V ** L - 1) // (V - 1)
    assert mdp.n_states == n_prefix + 1 == task.end + 1
    assert mdp.n_pairs == mdp.p_data.size == (V + 1) * mdp.n_states
    assert mdp.is_rectangular and mdp.n_actions == V + 1 and task.eos == V
    assert (mdp.p_data == 1.0).all() and mdp.gamma == 1.0
    P3 = mdp.P.toarray().reshape(mdp.n_states, V + 1, mdp.n_states)
    states = prefixes(V, L, P)
    assert len(states) == n_prefix
    index = {}
    for p, y in states:
        s = task.state(p, y)
        assert task.decode(s) == (p, y)
        index[p, y] = s
    assert sorted(index.values()) == list(range(n_prefix))  # a bijection onto 0..n_prefix-1
    for (p, y), s in index.items():
        for t in range(V):
            nxt = index[p, y + (t,)] if len(y) < L - 1 else task.end
            assert P3[s, t, nxt] == 1.0 and nxt > s
        assert P3[s, V, task.end] == 1.0  # EOS ends the response at any length
    assert (P3[task.end, :, task.end] == 1.0).all() and (mdp.R[task.end] == 0).all()
    np.testing.assert_array_equal(mdp.terminal, np.arange(mdp.n_states) == task.end)
    np.testing.assert_array_equal(mdp.topological_order, np.arange(task.end))
    # ρ: the prompt states only (the empty prefixes 0..P-1)
    assert mdp.rho[:P].sum() == pytest.approx(1.0) and (mdp.rho[P:] == 0).all()
    assert [index[p, ()] for p in range(P)] == list(range(P))
    # states are numbered by prefix length
    lengths = [len(task.decode(s)[1]) for s in range(n_prefix)]
    assert lengths == sorted(lengths)
    np.testing.assert_array_equal(task.level_starts, [lengths.index(d) for d in range(L)] + [n_prefix])


@pytest.mark.parametrize("V, L, P", SIZES)
def test_rewards_follow_the_formula(V, L, P):
    token_reward = np.linspace(-0.3, 0.2, V)
    task = token_mdp(V, L, P, seed=3, token_reward=token_reward)
    R = task.mdp.R
    for p, y in prefixes(V, L, P):
        s = task.state(p, y)
        assert R[s, V] == pytest.approx(gold(task.reward, p, y), abs=1e-12)  # EOS: R(p, y)
        for t in range(V):
            expect = token_reward[t] + (gold(task.reward, p, y + (t,)) if len(y) == L - 1 else 0.0)
            assert R[s, t] == pytest.approx(expect, abs=1e-12)


def test_episode_return_is_the_outcome_reward_plus_token_rewards():
    """Follow a response through the MDP and add up the rewards."""
    task = token_mdp(3, 4, 2, seed=1, token_reward=0.1)
    rng = np.random.default_rng(0)
    for _ in range(50):
        p = int(rng.integers(2))
        y = tuple(int(t) for t in rng.integers(0, 3, rng.integers(0, 5)))
        s, total = p, 0.0
        for t in (*y, task.eos)[:task.max_len]:
            total += task.mdp.R[s, t]
            s = task.mdp.p_indices[s * (task.vocab + 1) + t]
        assert s == task.end
        assert total == pytest.approx(gold(task.reward, p, y) + 0.1 * len(y), abs=1e-12)


def test_outcome_reward_call_matches_the_formula():
    reward = OutcomeReward.random(4, 5, 3, seed=2)
    rng = np.random.default_rng(1)
    n = 200
    prompts = rng.integers(0, 3, n)
    lengths = rng.integers(0, 6, n)
    tokens = np.where(np.arange(6) < lengths[:, None], rng.integers(0, 4, (n, 6)), -1)
    got = reward(prompts, tokens)
    expect = [gold(reward, p, tuple(t[t >= 0])) for p, t in zip(prompts, tokens)]
    np.testing.assert_allclose(got, expect, rtol=0, atol=1e-12)
    assert reward(2, [3, 1]) == pytest.approx(gold(reward, 2, (3, 1)), abs=1e-12)
    assert reward(0, []) == reward.prompt_bias[0] + reward.length_value[0]


def test_seeded_reward_structure():
    r = OutcomeReward.random(5, 6, 2, seed=0, interaction=0.0)
    assert (r.prompt_value == 0).all() and (r.pair_value == 0).all()
    best = int(np.argmax(r.length_value))
    np.testing.assert_allclose(r.length_value, -(np.arange(7) - best) ** 2 / 6)
    assert 1 <= best <= 6
    assert not r.token_value.flags.writeable


def test_reference_policy_is_a_full_support_bigram():
    task = token_mdp(3, 3, 2, seed=5)
    V, P = 3, 2
    ref = task.ref.reshape(-1, V + 1)
    assert (ref > 0).all()
    np.testing.assert_allclose(ref.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    np.testing.assert_allclose(task.ref_table.sum(axis=1), 1.0, rtol=0, atol=1e-15)
    for p, y in prefixes(V, 3, P):
        context = p if not y else P + y[-1]
        np.testing.assert_array_equal(ref[task.state(p, y)], task.ref_table[context])
    np.testing.assert_array_equal(ref[task.end], 0.25)
    assert np.ptp(task.ref_table) > 0.1  # not uniform
    flat = token_mdp(3, 3, 2, seed=5, ref_scale=0.0)
    np.testing.assert_allclose(flat.ref, 0.25)
    # usable as the regularizer's reference
    fastppo.ReverseKL(0.1, ref=task.ref).reference_policy(task.mdp)


def test_reproducible_from_a_seed():
    a, b = token_mdp(4, 3, 3, seed=7), token_mdp(4, 3, 3, seed=7)
    assert a.mdp == b.mdp
    np.testing.assert_array_equal(a.ref, b.ref)
    for field in OutcomeReward._FIELDS:
        np.testing.assert_array_equal(getattr(a.reward, field), getattr(b.reward, field))
    c = token_mdp(4, 3, 3, seed=8)
    assert not np.array_equal(a.mdp.r, c.mdp.r) and not np.array_equal(a.ref, c.ref)
    assert not np.array_equal(a.mdp.rho, c.mdp.rho)
    # a given reward or rho leaves the other draws unchanged
    other = OutcomeReward.random(4, 3, 3, seed=1)
    d = token_mdp(4, 3, 3, seed=7, reward=other)
    np.testing.assert_array_equal(d.ref, a.ref)
    np.testing.assert_array_equal(d.mdp.rho, a.mdp.rho)
    np.testing.assert_array_equal(d.mdp.r, a.pair_rewards(other))
    e = token_mdp(4, 3, 3, seed=7, rho=[0.5, 0.25, 0.25])
    np.testing.assert_array_equal(e.mdp.r, a.mdp.r)
    np.testing.assert_array_equal(e.mdp.rho[:3], [0.5, 0.25, 0.25])
    g = np.random.default_rng(3)
    assert token_mdp(2, 2, seed=g).mdp != token_mdp(2, 2, seed=g).mdp  # a Generator advances


def test_with_reward_shares_transitions():
    task = token_mdp(3, 3, 2, seed=0, gamma=0.99)
    other = OutcomeReward.random(3, 3, 2, seed=9, interaction=0.0)
    r_before = task.mdp.r.copy()
    new = task.with_reward(other)
    assert isinstance(new, TokenMDP) and new.reward is other
    assert new.mdp.p_indices is task.mdp.p_indices and new.mdp.gamma == 0.99
    np.testing.assert_array_equal(new.mdp.rho, task.mdp.rho)
    np.testing.assert_array_equal(new.ref, task.ref)
    np.testing.assert_array_equal(task.mdp.r, r_before)
    for p, y in prefixes(3, 3, 2):
        assert new.mdp.R[task.state(p, y), 3] == pytest.approx(gold(other, p, y), abs=1e-12)
    np.testing.assert_array_equal(task.with_reward(task.reward).mdp.r, task.mdp.r)
    np.testing.assert_allclose(task.pair_rewards(token_reward=1.0).reshape(-1, 4)[:-1, :3] - 1.0,
                               task.pair_rewards().reshape(-1, 4)[:-1, :3], rtol=0, atol=1e-15)


def test_memory_proportional_to_pairs():
    """vocab 8, max_len 6, 4 prompts: 149,797 states, 1.35 million pairs (no timing)."""
    tracemalloc.start()
    try:
        task = token_mdp(8, 6, 4, seed=0)
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    n_pairs = task.mdp.n_pairs
    assert task.mdp.n_states == 4 * (8 ** 6 - 1) // 7 + 1 == 149_797
    assert n_pairs == 9 * 149_797
    # MDP arrays 36 bytes per pair, π_ref 8, cached views; measured peak 66
    assert peak <= 100 * n_pairs, peak / n_pairs
    assert current <= 70 * n_pairs, current / n_pairs


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(vocab=0), ValueError, "vocab must be >= 1"),
    (dict(max_len=0), ValueError, "max_len must be >= 1"),
    (dict(n_prompts=0), ValueError, "n_prompts must be >= 1"),
    (dict(vocab=2.0), TypeError, "vocab must be an integer"),
    (dict(gamma=1.5), ValueError, r"gamma must be in \[0, 1\), got 1\.5"),
    (dict(vocab=50, max_len=7), ValueError,
     r"token_mdp\(50, 7, 1\) would have 15943877552 states, more than 2147483647"),
    (dict(ref_scale=-1.0), ValueError, "ref_scale must be >= 0"),
    (dict(token_reward=[1.0, 2.0, 3.0]), ValueError, r"token_reward must be a number or have shape \(2,\)"),
    (dict(token_reward=np.nan), ValueError, "token_reward must be finite"),
    (dict(rho=[0.5, 0.6]), ValueError, "rho must have shape"),
    (dict(reward="gold"), TypeError, "reward must be an OutcomeReward or None"),
    (dict(reward=OutcomeReward.random(3, 3, 1)), ValueError,
     r"reward has \(n_prompts, vocab, max_len\) = \(1, 3, 3\), expected \(1, 2, 3\)"),
    (dict(seed="0"), TypeError, "seed must be an int"),
])
def test_token_mdp_rejects(kwargs, exc, match):
    args = dict(vocab=2, max_len=3, n_prompts=1)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        token_mdp(**args)


def test_numbering_helpers_reject_bad_input():
    task = token_mdp(3, 2, 2, seed=0)
    with pytest.raises(ValueError, match="prompt must be < n_prompts = 2, got 2"):
        task.state(2)
    with pytest.raises(ValueError, match="tokens must be < vocab = 3, got 3"):
        task.state(0, [3])
    with pytest.raises(ValueError, match="a prefix state has fewer than max_len = 2 tokens, got 2"):
        task.state(0, [1, 1])
    with pytest.raises(ValueError, match=r"state 8 is not a prefix state \(those are 0\.\.7; 8 is the terminal"):
        task.decode(8)
    with pytest.raises(TypeError, match="reward must be an OutcomeReward"):
        task.pair_rewards("x")
    with pytest.raises(ValueError, match=r"reward has \(n_prompts, vocab, max_len\) = \(2, 3, 3\)"):
        task.with_reward(OutcomeReward.random(3, 3, 2))


@pytest.mark.parametrize("args, exc, match", [
    ((0, [[0, -1, 1]]), ValueError, "response 0: a token follows the -1 padding"),
    ((0, [[0, 5]]), ValueError, r"tokens\[0, 1\] = 5 is not a token in \[0, 3\) or -1"),
    ((3, [[0]]), ValueError, r"prompts\[0\] = 3 is not a prompt in \[0, 2\)"),
    (([0], [[0, 1, 2, 0, 1]]), ValueError, "response 0 has 5 tokens, more than max_len = 4"),
    (([0, 1], [[0]]), ValueError, r"prompts must have shape \(n,\) and tokens \(n, T\)"),
    ((0, [[0.5]]), TypeError, "tokens must hold integers"),
])
def test_outcome_reward_rejects_bad_responses(args, exc, match):
    reward = OutcomeReward.random(3, 4, 2, seed=0)
    p, t = args
    with pytest.raises(exc, match=match):
        reward(p if np.ndim(p) else np.array([p]), t)


def test_outcome_reward_rejects_inconsistent_shapes():
    ok = dict(prompt_bias=np.zeros(2), token_value=np.zeros(3), prompt_value=np.zeros((2, 3)),
              pair_value=np.zeros((3, 3)), length_value=np.zeros(5))
    OutcomeReward(**ok)
    for name, bad in (("pair_value", np.zeros((3, 2))), ("token_value", np.zeros(4)),
                      ("prompt_bias", np.zeros(3))):
        with pytest.raises(ValueError, match=rf"{name} must have shape"):
            OutcomeReward(**{**ok, name: bad})
    with pytest.raises(ValueError, match="max_len >= 1"):
        OutcomeReward(**{**ok, "length_value": np.zeros(1)})
    with pytest.raises(ValueError, match=r"token_value must be finite: token_value\[1\] = inf"):
        OutcomeReward(**{**ok, "token_value": [0, np.inf, 0]})
