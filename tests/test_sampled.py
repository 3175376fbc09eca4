"""Sample-based pipeline: rollouts, returns/GAE, KL estimators, group advantages, the PPO
minibatch kernel and SampledPPO, checked against plain loops, exact quantities and the
exact solver."""
import numpy as np
import pytest
from scipy import stats

import fastppo
from conftest import BACKENDS, random_mdp, random_policy
from fastppo import _codes
from fastppo._backend import get_kernel

COMPILED = ["numba", "cython"]


# ------------------------------------------------------------------ returns and GAE
def _random_trajectories(seed, n_rows=7, T=23):
    rng = np.random.default_rng(seed)
    rewards = rng.normal(size=(n_rows, T))
    values = rng.normal(size=(n_rows, T))
    next_values = rng.normal(size=(n_rows, T))
    terminated = rng.random((n_rows, T)) < 0.1
    truncated = ~terminated & (rng.random((n_rows, T)) < 0.1)
    truncated[:, -1] |= ~terminated[:, -1]  # every row ends at its last column
    return rewards, values, next_values, terminated, truncated


def _loop_gae(rewards, values, next_values, terminated, truncated, gamma, lam):
    adv = np.zeros_like(rewards)
    for e in range(rewards.shape[0]):
        running = 0.0
        for t in reversed(range(rewards.shape[1])):
            if terminated[e, t] or truncated[e, t]:
                running = 0.0  # a new episode starts at t + 1
            bootstrap = 0.0 if terminated[e, t] else next_values[e, t]
            delta = rewards[e, t] + gamma * bootstrap - values[e, t]
            running = delta + gamma * lam * running
            adv[e, t] = running
    return adv


def _loop_returns(rewards, terminated, truncated, gamma, next_values):
    G = np.zeros_like(rewards)
    for e in range(rewards.shape[0]):
        for t in range(rewards.shape[1]):
            # sum forward until the episode of step t ends
            total, disc = 0.0, 1.0
            for u in range(t, rewards.shape[1]):
                total += disc * rewards[e, u]
                disc *= gamma
                if terminated[e, u]:
                    break
                if truncated[e, u]:
                    total += disc * next_values[e, u]
                    break
            G[e, t] = total
    return G


@pytest.mark.parametrize("n_threads", [1, 2])
def test_gae_and_returns_equal_plain_loops(backend, n_threads):
    for seed in range(3):
        r, v, nv, term, trunc = _random_trajectories(seed)
        for gamma, lam in [(0.9, 0.95), (0.99, 0.5), (1.0, 1.0), (0.0, 0.3)]:
            adv = fastppo.gae(r, v, nv, term, trunc, gamma, lam, backend=backend, n_threads=n_threads)
            np.testing.assert_allclose(adv, _loop_gae(r, v, nv, term, trunc, gamma, lam), rtol=1e-12, atol=1e-12)
            G = fastppo.discounted_returns(r, term, trunc, gamma, next_values=nv, backend=backend,
                                           n_threads=n_threads)
            np.testing.assert_allclose(G, _loop_returns(r, term, trunc, gamma, nv), rtol=1e-12, atol=1e-12)


def test_gae_limits():
    r, v, nv, term, trunc = _random_trajectories(5)
    # a consistent trajectory: V(s_{t+1}) is the next step's V(s_t) inside an episode
    inside = ~(term | trunc)[:, :-1]
    nv[:, :-1] = np.where(inside, v[:, 1:], nv[:, :-1])
    gamma = 0.93
    G = fastppo.discounted_returns(r, term, trunc, gamma, next_values=nv)
    np.testing.assert_allclose(fastppo.gae(r, v, nv, term, trunc, gamma, 1.0), G - v, rtol=1e-12, atol=1e-12)
    td = r + gamma * np.where(term, 0.0, nv) - v
    np.testing.assert_allclose(fastppo.gae(r, v, nv, term, trunc, gamma, 0.0), td, rtol=1e-13, atol=1e-13)
    # without next_values the returns are plain truncated Monte Carlo sums
    G0 = fastppo.discounted_returns(r, term, trunc, gamma)
    np.testing.assert_allclose(G0, _loop_returns(r, term, trunc, gamma, np.zeros_like(r)), rtol=1e-12)


def test_gae_keeps_the_shape_of_one_trajectory():
    r, v, nv, term, trunc = (x[0] for x in _random_trajectories(2))
    adv = fastppo.gae(r, v, nv, term, trunc, 0.9, 0.9)
    assert adv.shape == r.shape
    np.testing.assert_allclose(adv, _loop_gae(*(x[None] for x in (r, v, nv, term, trunc)), 0.9, 0.9)[0], rtol=1e-12)


def test_gae_rejections():
    r, v, nv, term, trunc = _random_trajectories(0)
    with pytest.raises(ValueError, match=r"values must have the shape of rewards \(7, 23\), got \(7, 22\)"):
        fastppo.gae(r, v[:, 1:], nv, term, trunc, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"terminated must hold booleans"):
        fastppo.gae(r, v, nv, term * 2, trunc, 0.9, 0.9)
    with pytest.raises(ValueError, match=r"gae_lambda must be in \[0, 1\], got 1.5"):
        fastppo.gae(r, v, nv, term, trunc, 0.9, 1.5)
    with pytest.raises(ValueError, match=r"gamma must be >= 0"):
        fastppo.discounted_returns(r, term, trunc, -0.1)
    bad = r.copy()
    bad[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"rewards must be finite: rewards\[2, 3\] = nan"):
        fastppo.discounted_returns(bad, term, trunc, 0.9)


# ------------------------------------------------------------------ rollouts
@pytest.fixture(scope="module")
def frozenlake():
    gym = pytest.importorskip("gymnasium")
    return fastppo.MDP.from_gymnasium(gym.make("FrozenLake-v1", map_name="4x4"), 0.95)


def test_terminal_states():
    gym = pytest.importorskip("gymnasium")
    mdp = fastppo.MDP.from_gymnasium(gym.make("FrozenLake-v1", map_name="4x4"), 0.95)
    assert mdp.terminal.tolist() == [False] * 16 + [True]
    assert not fastppo.garnet(50, 3, 2, seed=0).terminal.any()
    # a zero-reward self-loop is terminal, a rewarding one is not
    P = np.zeros((3, 2, 3))
    P[0, :, 1] = P[1, :, 1] = P[2, :, 2] = 1.0
    R = np.zeros((3, 2))
    R[2] = 1.0
    mdp = fastppo.MDP.from_dense(P, R, 0.9)
    assert mdp.terminal.tolist() == [False, True, False]


def test_rollout_identical_on_every_backend_and_thread_count(frozenlake):
    for mdp in (random_mdp(3, n_states=15, rectangular=False), frozenlake):
        pi = random_policy(mdp, 1)[0]
        ref = fastppo.rollout(mdp, pi, 64, 30, seed=7, group_size=4, backend="numba")
        for backend in BACKENDS:
            for n_threads in (1, 2):
                out = fastppo.rollout(mdp, pi, 64, 30, seed=7, group_size=4, backend=backend,
                                      n_threads=n_threads)
                for key in ref:
                    assert np.array_equal(out[key], ref[key]), (backend, n_threads, key)
        other = fastppo.rollout(mdp, pi, 64, 30, seed=8, group_size=4)
        assert not np.array_equal(other.states, ref.states)


def test_rollout_structure(frozenlake):
    mdp = frozenlake
    pi = random_policy(mdp, 2)[0]
    H = 10
    tr = fastppo.rollout(mdp, pi, 200, H, seed=1, group_size=5)
    mask = tr.mask
    for e in range(200):
        n = tr.length[e]
        assert mask[e, :n].all() and not mask[e, n:].any()
        assert (tr.states[e, n:] == -1).all() and (tr.pairs[e, n:] == -1).all()
        assert np.array_equal(tr.states[e, 1:n], tr.next_states[e, :n - 1])
        ends = np.flatnonzero(tr.done[e])
        assert ends.tolist() == [n - 1]
        assert tr.terminated[e, n - 1] == mdp.terminal[tr.next_states[e, n - 1]]
        assert tr.truncated[e, n - 1] == (n == H and not mdp.terminal[tr.next_states[e, n - 1]])
    s, k = tr.states[mask], tr.pairs[mask]
    assert np.array_equal(mdp.s_indices[k], s)
    assert np.array_equal(tr.action_index[mask], k - mdp.a_indptr[s])
    assert np.array_equal(tr.actions[mask], mdp.a_indices[k])  # labels (= indices here)
    assert (tr.actions[~mask] == -1).all() and (tr.action_index[~mask] == -1).all()
    np.testing.assert_array_equal(tr.rewards[mask], mdp.r[k])
    np.testing.assert_array_equal(tr.logp[mask], np.log(pi[k]))
    assert (tr.rewards[~mask] == 0).all()
    # groups share a start state; FrozenLake starts in state 0
    starts = tr.states[:, 0].reshape(40, 5)
    assert (starts == starts[:, :1]).all() and (starts == 0).all()
    assert tr.terminated.any() and tr.truncated.any()


def _geometric_state_sample(tr, gamma, rng):
    """One state per episode at a Geometric(1 − γ) time: distributed as d^π_ρ."""
    t = rng.geometric(1.0 - gamma, size=tr.states.shape[0]) - 1
    e = np.arange(tr.states.shape[0])
    keep = t < tr.states.shape[1]
    last = tr.next_states[e, tr.length - 1]  # where an ended episode stays (absorbing)
    states = np.where(t < tr.length, tr.states[e, np.minimum(t, tr.states.shape[1] - 1)], last)
    return states[keep]


def _chi2_pvalue(counts, expected_prob):
    expected = expected_prob * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0, "samples where the exact probability is 0"
    return stats.chisquare(counts[keep], expected[keep]).pvalue


@pytest.mark.parametrize("which", ["garnet", "frozenlake"])
def test_rollout_state_frequencies_match_exact_visitation(which, frozenlake):
    if which == "garnet":
        mdp = random_mdp(11, n_states=12, gamma=0.8)
    else:
        mdp = frozenlake
    pi = random_policy(mdp, 3)[0]
    H = int(np.ceil(np.log(1e-12) / np.log(mdp.gamma)))  # γ^H ≤ 1e-12: truncation invisible
    tr = fastppo.rollout(mdp, pi, 40_000, H, seed=5)
    states = _geometric_state_sample(tr, mdp.gamma, np.random.default_rng(6))
    counts = np.bincount(states, minlength=mdp.n_states)
    d = fastppo.visitation(mdp, pi)
    assert _chi2_pvalue(counts, d) > 1e-3
    # the test has power: the visitation of another policy is rejected
    d_other = fastppo.visitation(mdp, random_policy(mdp, 4)[0])
    assert _chi2_pvalue(counts, d_other) < 1e-6


def test_rollout_action_frequencies_match_policy():
    mdp = random_mdp(12, n_states=10, n_actions=4, rectangular=False)
    pi = random_policy(mdp, 5)[0]
    tr = fastppo.rollout(mdp, pi, 2000, 50, seed=9)

    def pvalue(policy):
        counts = np.bincount(tr.pairs[tr.mask], minlength=mdp.n_pairs)
        visits = np.add.reduceat(counts, mdp.a_indptr[:-1])[mdp.s_indices]
        expected = visits * policy
        x2 = np.sum((counts - expected) ** 2 / expected)
        dof = int(np.sum((np.diff(mdp.a_indptr) - 1)[np.add.reduceat(counts, mdp.a_indptr[:-1]) > 0]))
        return stats.chi2.sf(x2, dof)

    assert pvalue(pi) > 1e-3
    tilted = pi * np.exp(0.1 * np.random.default_rng(0).normal(size=mdp.n_pairs))
    tilted /= np.add.reduceat(tilted, mdp.a_indptr[:-1])[mdp.s_indices]
    assert pvalue(tilted) < 1e-6


def test_rollout_start_states_and_rejections():
    mdp = random_mdp(13)
    pi = mdp.uniform_policy()
    tr = fastppo.rollout(mdp, pi, 6, 5, seed=0, start=np.array([0, 1, 2, 3, 4, 5]))
    assert tr.states[:, 0].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"n_envs \(10\) must be a multiple of group_size \(4\)"):
        fastppo.rollout(mdp, pi, 10, 5, group_size=4)
    with pytest.raises(ValueError, match=r"start\[1\] = 12 is not a state in \[0, 12\)"):
        fastppo.rollout(mdp, pi, 2, 5, start=np.array([0, 12]))
    with pytest.raises(ValueError, match=r"horizon must be >= 1, got 0"):
        fastppo.rollout(mdp, pi, 2, 0)
    with pytest.raises(ValueError, match=r"pi must sum to 1 in every state: state 0"):
        fastppo.rollout(mdp, pi * 2, 2, 5)


# ------------------------------------------------------------------ KL estimators
def test_kl_estimators_match_exact_expectations():
    rng = np.random.default_rng(0)
    pi = rng.dirichlet(np.ones(5))
    ref = rng.dirichlet(np.ones(5))
    a = rng.choice(5, size=400_000, p=pi)
    logp, logp_ref = np.log(pi[a]), np.log(ref[a])
    kl = float(np.sum(pi * np.log(pi / ref)))
    log_r = np.log(ref / pi)
    exact = {"k1": kl, "k2": float(np.sum(pi * 0.5 * log_r ** 2)), "k3": kl}
    for kind, expectation in exact.items():
        k = fastppo.kl_estimate(logp, logp_ref, kind)
        se = k.std() / np.sqrt(k.size)
        assert abs(k.mean() - expectation) < 4 * se, kind
    assert (fastppo.kl_estimate(logp, logp_ref, "k3") >= 0).all()
    assert abs(exact["k2"] - kl) > 0.01  # k2 is biased here, so the test above can tell them apart
    with pytest.raises(ValueError, match=r"kind must be one of 'k1', 'k2', 'k3'; got 'k4'"):
        fastppo.kl_estimate(logp, logp_ref, "k4")


def test_adaptive_kl_controller():
    c = fastppo.AdaptiveKLController(0.5, target=0.1, horizon=1000)
    assert c.update(0.11, 100) == pytest.approx(0.5 * (1 + 0.1 * 0.1))
    assert c.update(1.0, 100) == pytest.approx(0.5 * 1.01 * (1 + 0.2 * 0.1))   # error clipped to +0.2
    assert c.update(0.0, 100) == pytest.approx(0.5 * 1.01 * 1.02 * (1 - 0.2 * 0.1))


# ------------------------------------------------------------------ group advantages
def test_group_advantages_against_loops():
    rng = np.random.default_rng(1)
    G = rng.normal(size=(12, 5))
    n = 4
    for kind in ["grpo", "dr_grpo", "rloo", "reinforce"]:
        adv = fastppo.group_advantages(G, n, kind)
        for i in range(12):
            members = [j for j in range(12) if j // n == i // n]
            others = [j for j in members if j != i]
            for t in range(5):
                col = G[members, t]
                expect = {"grpo": (G[i, t] - col.mean()) / (np.std(col, ddof=1) + 1e-8),
                          "dr_grpo": G[i, t] - col.mean(),
                          "rloo": G[i, t] - G[others, t].mean(),
                          "reinforce": G[i, t]}[kind]
                assert adv[i, t] == pytest.approx(expect, rel=1e-12, abs=1e-12), kind
    with pytest.raises(ValueError, match=r"group_size must be >= 2, got 1"):
        fastppo.group_advantages(G, 1, "rloo")
    with pytest.raises(ValueError, match=r"number of rows \(12\) must be a multiple of group_size \(5\)"):
        fastppo.group_advantages(G, 5, "grpo")


# ------------------------------------------------------------------ the minibatch kernel
def _loop_minibatches(a_indptr, states, pairs, logp_old, adv, logp_ref, returns, v_old, order,
                      bounds, eps_low, eps_high, dual_clip, kl_coef, kl_kind, value_clip, lr,
                      critic_lr, logits, values, ent_coef=0.0, sample_mean=False):
    """The PPO minibatch update written as explicit per-state loops (autograd-free): per
    sample the gradient of its surrogate term plus ent_coef × the gradient of its state's
    entropy (the softmax Jacobian diag(π) − ππᵀ times −(log π + 1)); averaged per state, or
    summed and divided by the minibatch size (``sample_mean``)."""
    logits, values = logits.copy(), values.copy()
    clipped = np.zeros(order.shape[0], np.int64)
    for ep in range(order.shape[0]):
        for m in range(len(bounds) - 1):
            batch = order[ep, bounds[m]:bounds[m + 1]]
            grads, vgrads = {}, {}
            for i in batch:
                s, k = states[i], pairs[i]
                seg = logits[a_indptr[s]:a_indptr[s + 1]]
                pi_s = np.exp(seg - seg.max()) / np.exp(seg - seg.max()).sum()
                logp = np.log(pi_s[k - a_indptr[s]])
                r = np.exp(logp - logp_old[i])
                A = adv[i]
                # min(rA, clip(r)A) has slope rA in log π where the clip is off; the dual
                # clip max(·, cA) for A < 0 is flat once r > c
                if A > 0:
                    active = r < 1 + eps_high
                elif A < 0:
                    active = (r > 1 - eps_low) and (r < dual_clip)
                else:
                    active = False
                clipped[ep] += (not active) and A != 0
                d_logp = r * A if active else 0.0
                d_logp -= kl_coef * {_codes.KL_NONE: 0.0, _codes.KL_K1: 1.0,
                                     _codes.KL_K2: logp - logp_ref[i],
                                     _codes.KL_K3: 1 - np.exp(logp_ref[i] - logp)}[kl_kind]
                onehot = np.zeros(len(seg))
                onehot[k - a_indptr[s]] = 1.0
                jacobian = np.diag(pi_s) - np.outer(pi_s, pi_s)
                d_entropy = jacobian @ -(np.log(pi_s) + 1.0)
                grads.setdefault(s, []).append(d_logp * (onehot - pi_s) + ent_coef * d_entropy)
                V = values[s]
                clipped_value = min(max(V, v_old[i] - value_clip), v_old[i] + value_clip)
                # ½ max((V − R)², (V_clip − R)²): the clipped branch has zero slope in V
                use_clipped = clipped_value != V and (clipped_value - returns[i]) ** 2 > (V - returns[i]) ** 2
                vgrads.setdefault(s, []).append(0.0 if use_clipped else V - returns[i])
            for s, g in grads.items():
                den = len(batch) if sample_mean else len(g)
                logits[a_indptr[s]:a_indptr[s + 1]] += lr * np.sum(g, axis=0) / den
                values[s] -= critic_lr * np.sum(vgrads[s]) / den
    return logits, values, clipped


@pytest.mark.parametrize("kl_kind, ent_coef, sample_mean", [
    (_codes.KL_NONE, 0.0, False), (_codes.KL_K1, 0.0, False), (_codes.KL_K2, 0.0, False),
    (_codes.KL_K3, 0.0, False), (_codes.KL_NONE, 0.3, False), (_codes.KL_K2, 0.3, True),
    (_codes.KL_K3, 0.0, True)])
def test_ppo_minibatch_kernel_equals_explicit_loops(backend, kl_kind, ent_coef, sample_mean):
    mdp = random_mdp(21, n_states=9, n_actions=3, rectangular=False)
    rng = np.random.default_rng(kl_kind)
    n = 300
    pi_old, logits0 = random_policy(mdp, 3)
    pairs = rng.choice(mdp.n_pairs, size=n, p=np.ones(mdp.n_pairs) / mdp.n_pairs)
    states = mdp.s_indices[pairs].astype(np.int64)
    logp_old = np.log(pi_old[pairs])
    adv = rng.normal(size=n) * 2
    adv[::17] = 0.0
    logp_ref = np.log(random_policy(mdp, 4)[0][pairs])
    returns = rng.normal(size=n)
    values0 = rng.normal(size=mdp.n_states)
    v_old = values0[states]
    order = np.stack([rng.permutation(n) for _ in range(3)]).astype(np.int64)
    bounds = np.array([0, 70, 150, 220, 300], np.int64)
    args = (0.2, 0.25, 2.0, 0.3, kl_kind, 0.4, 1.5, 0.7)
    logits, values = logits0.copy(), values0.copy()
    clipped = np.zeros(3, np.int64)
    scratch = (np.zeros(mdp.n_pairs), np.zeros(mdp.n_states), np.zeros(mdp.n_states),
               np.zeros(mdp.n_states, np.int64))
    get_kernel("ppo_minibatches", backend)(
        mdp.a_indptr, states, pairs, logp_old, adv, logp_ref, returns, v_old, order, bounds,
        *args, ent_coef, sample_mean, logits, values, *scratch, np.empty(mdp.n_states), clipped, 1)
    exp_logits, exp_values, exp_clipped = _loop_minibatches(
        mdp.a_indptr, states, pairs, logp_old, adv, logp_ref, returns, v_old, order, bounds,
        *args, logits0, values0, ent_coef, sample_mean)
    np.testing.assert_allclose(logits, exp_logits, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(values, exp_values, rtol=1e-12, atol=1e-12)
    assert np.array_equal(clipped, exp_clipped) and clipped.sum() > 0
    assert all((x == 0).all() for x in scratch), "scratch must be left zeroed"
    assert not np.allclose(logits, logits0)


# ------------------------------------------------------------------ SampledPPO
@pytest.fixture(scope="module")
def garnet30():
    return fastppo.garnet(30, 4, 3, gamma=0.9, seed=0)


@pytest.mark.parametrize("advantage, kw, threshold", [
    ("gae", {}, 0.005), ("grpo", {}, 0.01), ("dr_grpo", {}, 0.005), ("rloo", {}, 0.005),
    # no baseline: every sampled action is reinforced (G > 0), so at the default lr it
    # commits to a deterministic suboptimal policy (gap 27 %); a smaller step avoids that
    ("reinforce", {"lr": 0.05}, 0.03)])
def test_sampled_ppo_reaches_the_optimum_with_defaults(garnet30, advantage, kw, threshold):
    """A 30-state garnet with default settings, 200 iterations: within `threshold` of J*.
    (grpo, whose σ-scaling has no fixed target, is measured against the plain optimum,
    given as J*.)"""
    J_star = fastppo.solve(garnet30).J
    res = fastppo.SampledPPO(garnet30, advantage=advantage, seed=0, reference=J_star,
                             **kw).run(200)
    assert res.gap / abs(res.reference) < threshold
    h = res.history
    assert h["gap"][0] > 10 * res.gap  # it moved from far away
    np.testing.assert_allclose(res.J, h["J"][-1], rtol=1e-10)


def test_sampled_ppo_regularized_optimum_and_growing_samples(garnet30):
    """With reg=ReverseKL(τ) and the k1 reward penalty β = τ, SampledPPO's fixed point is the
    regularized optimum of the exact solver; more samples per iteration lower the gap."""
    reg = fastppo.ReverseKL(0.5)
    J_star = fastppo.solve(garnet30, reg).J
    late = {}
    for n_envs in (16, 512):
        res = fastppo.SampledPPO(garnet30, reg, n_envs=n_envs, seed=1, reference=J_star).run(150)
        late[n_envs] = float(np.mean(res.history["gap"][-50:]))
    assert late[512] < 1e-3 * abs(J_star)
    assert late[512] < late[16] / 3


def test_sampled_ppo_adaptive_beta_moves_toward_target(garnet30):
    """From β far above and far below, the controller brings the per-step KL to the target
    and β to the same equilibrium."""
    target = 0.02
    runs = {beta0: fastppo.SampledPPO(garnet30, kl_coef=beta0, kl_target_step=target, kl_horizon=5000,
                                      seed=2).run(60).history for beta0 in (5.0, 0.001)}
    high, low = runs[5.0], runs[0.001]
    assert (np.diff(high["kl_coef"][:4]) < 0).all()   # KL below target: β falls
    assert low["kl_coef"][20] > 100 * 0.001            # KL above target: β rises
    for h in runs.values():
        assert 0.5 * target < h["kl_ref"][-30:].mean() < 3 * target
    late = [h["kl_coef"][-30:].mean() for h in runs.values()]
    assert max(late) < 2 * min(late)


def test_sampled_ppo_reproducible_and_backend_identical(garnet30):
    kw = dict(seed=4, n_envs=64, advantage="gae", dual_clip=3.0, value_clip=0.5, kl_target_step=0.01)
    reg = fastppo.ReverseKL(0.3)
    runs = {b: fastppo.SampledPPO(garnet30, reg, backend=b, **kw).run(8) for b in BACKENDS}
    again = fastppo.SampledPPO(garnet30, reg, backend="numba", **kw).run(8)
    assert np.array_equal(again.logits, runs["numba"].logits)
    assert np.array_equal(runs["cython"].logits, runs["numba"].logits)
    assert np.array_equal(runs["cython"].v, runs["numba"].v)
    np.testing.assert_allclose(runs["numpy"].logits, runs["numba"].logits, rtol=1e-10, atol=1e-10)
    for field in ["J", "clipfrac", "kl_ref", "kl_coef", "explained_variance", "mean_return"]:
        assert np.array_equal(runs["cython"].history[field], runs["numba"].history[field]), field
    other = fastppo.SampledPPO(garnet30, reg, backend="numba", **{**kw, "seed": 5}).run(8)
    assert not np.array_equal(other.logits, runs["numba"].logits)


def test_sampled_ppo_history_diagnostics(garnet30):
    res = fastppo.SampledPPO(garnet30, fastppo.ReverseKL(0.2), seed=0, n_envs=128).run(20)
    h = res.history
    assert h["iter"].tolist() == list(range(1, 21))
    assert ((h["clipfrac"] >= 0) & (h["clipfrac"] <= 1)).all() and h["clipfrac"].max() > 0
    assert (h["approx_kl"] >= 0).all()
    assert (h["entropy"] > 0).all() and h["entropy"][0] == pytest.approx(np.log(4), rel=1e-12)
    assert h["explained_variance"][-1] > h["explained_variance"][0]
    ppo_horizon = int(np.ceil(np.log(0.01) / np.log(garnet30.gamma)))
    assert (h["n_samples"] == 128 * ppo_horizon).all()  # no terminal states: full episodes
    # iteration 1 rolls out π_ref (uniform): its sampled discounted return estimates the
    # exact unregularized J of the uniform policy (truncation at γ^H ≤ 0.01 and noise: ~1 %)
    exact = fastppo.evaluate(garnet30, garnet30.uniform_policy()).J
    assert abs(h["mean_return"][0] - exact) < 0.03 * abs(exact)


def test_sampled_ppo_episodic_frozenlake(frozenlake):
    """Termination: FrozenLake episodes end in the absorbing state; PPO improves J a lot."""
    ppo = fastppo.SampledPPO(frozenlake, seed=0, n_envs=256, lr=5.0)
    res = ppo.run(60)
    assert res.J > 0.5 * res.reference and res.J > 5 * res.history["J"][0]


def test_sampled_ppo_rejections(garnet30):
    m = garnet30
    with pytest.raises(TypeError, match=r"reg must be ReverseKL or None, got ForwardKL"):
        fastppo.SampledPPO(m, fastppo.ForwardKL(0.1))
    with pytest.raises(ValueError, match=r"advantage must be one of 'gae', 'grpo'"):
        fastppo.SampledPPO(m, advantage="ppo")
    with pytest.raises(ValueError, match=r"group_size must be >= 2, got 1"):
        fastppo.SampledPPO(m, advantage="grpo", group_size=1)
    with pytest.raises(ValueError, match=r"n_envs \(100\) must be a multiple of group_size \(8\)"):
        fastppo.SampledPPO(m, advantage="rloo", n_envs=100)
    with pytest.raises(ValueError, match=r"dual_clip must be > 1, got 0.5"):
        fastppo.SampledPPO(m, dual_clip=0.5)
    with pytest.raises(ValueError, match=r"critic_lr must be in \[0, 1\], got 2.0"):
        fastppo.SampledPPO(m, critic_lr=2.0)
    with pytest.raises(ValueError, match=r"kl_penalty must be one of 'reward', 'loss'; got 'both'"):
        fastppo.SampledPPO(m, kl_penalty="both")
    with pytest.raises(ValueError, match=r"kl_target_step must be > 0"):
        fastppo.SampledPPO(m, kl_target_step=0.0)
    with pytest.warns(DeprecationWarning, match="kl_target= is deprecated"), \
            pytest.raises(ValueError, match=r"kl_target_step must be > 0"):
        fastppo.SampledPPO(m, kl_target=0.0)
    with pytest.raises(ValueError, match=r"lr must be > 0"):
        fastppo.SampledPPO(m, lr=-1.0)


# ------------------------------------------------------------------ GRPO as practised
def _four_responses():
    """Responses of lengths 2, 4, 4, 4 with outcome rewards 1, 1, 0, 0 on their last token."""
    rewards = np.zeros((4, 4))
    rewards[0, 1] = rewards[1, 3] = 1.0
    length = np.array([2, 4, 4, 4])
    mask = np.arange(4)[None] < length[:, None]
    terminated = np.arange(4)[None] == (length - 1)[:, None]
    return rewards, mask, terminated


def test_grpo_sequence_advantages_hand_computed():
    """One advantage per response from the outcome rewards (1, 1, 0, 0): mean 1/2, unbiased
    std 1/√3, so ±(1/2)√3 = ±0.866 on every token; the per-step form gives +1.5 / −0.5 on
    the last two tokens, where the first response has already ended (G_t = 0 there)."""
    rewards, mask, terminated = _four_responses()
    G = fastppo.discounted_returns(rewards, terminated, np.zeros_like(terminated), 1.0)
    seq = fastppo.group_advantages(G, 4, "grpo", level="sequence", mask=mask)
    h = np.sqrt(3) / 2
    np.testing.assert_allclose(seq, [[h, h, 0, 0], [h, h, h, h], [-h, -h, -h, -h], [-h, -h, -h, -h]],
                               atol=1e-7)
    step = fastppo.group_advantages(G, 4, "grpo")
    np.testing.assert_allclose(step[mask], [h, h, h, h, 1.5, 1.5, -h, -h, -0.5, -0.5, -h, -h, -0.5, -0.5],
                               atol=1e-7)
    for kind, value in [("dr_grpo", 0.5), ("rloo", 2 / 3)]:
        adv = fastppo.group_advantages(G, 4, kind, level="sequence", mask=mask)
        np.testing.assert_allclose(adv, np.where(mask, [[value], [value], [-value], [-value]], 0.0),
                                   atol=1e-12)
    np.testing.assert_array_equal(
        fastppo.group_advantages(G, 1, "reinforce", level="sequence", mask=mask),
        np.where(mask, [[1.0], [1.0], [0.0], [0.0]], 0.0))


def test_group_advantages_sequence_level_against_loops():
    rng = np.random.default_rng(3)
    G = rng.normal(size=(12, 6))
    mask = np.arange(6)[None] < rng.integers(1, 7, size=12)[:, None]
    n = 4
    for kind in ["grpo", "dr_grpo", "rloo", "reinforce"]:
        adv = fastppo.group_advantages(G, n, kind, level="sequence", mask=mask)
        for i in range(12):
            members = [j for j in range(12) if j // n == i // n]
            others = [j for j in members if j != i]
            col = G[members, 0]
            expect = {"grpo": (G[i, 0] - col.mean()) / (np.std(col, ddof=1) + 1e-8),
                      "dr_grpo": G[i, 0] - col.mean(), "rloo": G[i, 0] - G[others, 0].mean(),
                      "reinforce": G[i, 0]}[kind]
            for t in range(6):
                assert adv[i, t] == (pytest.approx(expect, rel=1e-12, abs=1e-12) if mask[i, t] else 0.0)
        np.testing.assert_array_equal(fastppo.group_advantages(G[:, 0], n, kind),
                                      fastppo.group_advantages(G[:, 0], n, kind, level="sequence"))
    with pytest.raises(ValueError, match="level must be one of 'sequence', 'step'"):
        fastppo.group_advantages(G, n, "grpo", level="token")
    with pytest.raises(ValueError, match="mask must be a bool array"):
        fastppo.group_advantages(G, n, "grpo", level="sequence", mask=mask[:, :3])


@pytest.fixture(scope="module")
def tokens():
    task = fastppo.token_mdp(vocab=3, max_len=4, n_prompts=2, gamma=0.999, seed=1)
    return task, fastppo.ReverseKL(0.2, ref=task.ref)


@pytest.mark.parametrize("advantage", ["grpo", "dr_grpo", "rloo", "reinforce"])
def test_sampled_ppo_sequence_advantage_is_one_per_response(tokens, advantage):
    """SampledPPO's advantages at advantage_level="sequence" (grpo's default): the same on
    every token of a response, the group statistic of the responses' whole returns."""
    task, reg = tokens
    ppo = fastppo.SampledPPO(task.mdp, reg, advantage=advantage, advantage_level="sequence",
                             group_size=4, n_envs=64, seed=0, reference=False)
    assert ppo.advantage_level == "sequence"
    traj = fastppo.rollout(task.mdp, ppo.pi, 64, ppo.horizon, seed=1, group_size=4)
    rewards = traj.rewards - 0.2 * np.where(traj.mask, traj.logp - np.log(task.ref[np.maximum(traj.pairs, 0)]), 0)
    adv, _, _ = ppo._advantages(traj, rewards)
    assert len(set(traj.length)) > 1  # responses of several lengths
    G0 = np.array([sum(0.999 ** t * rewards[e, t] for t in range(traj.length[e])) for e in range(64)])
    expect = fastppo.group_advantages(G0, 4, advantage)
    for e in range(64):
        n = traj.length[e]
        np.testing.assert_allclose(adv[e, :n], expect[e], rtol=1e-12, atol=1e-12)
        assert (adv[e, n:] == 0).all()
    assert fastppo.SampledPPO(task.mdp, reg, advantage="grpo", reference=False).advantage_level == "sequence"
    assert fastppo.SampledPPO(task.mdp, reg, advantage="rloo", reference=False).advantage_level == "step"


# ------------------------------------------------------------------ rewards and the KL controller
def test_process_rewards_against_loops():
    """reward_norm: each episode's score (its sum) standardised over the batch, the shift on
    its last step (TRL's normalize_reward on an outcome reward); then reward_clip."""
    rng = np.random.default_rng(5)
    rewards = rng.normal(size=(9, 5)) * 2
    length = rng.integers(1, 6, size=9)
    mask = np.arange(5)[None] < length[:, None]
    scores = [sum(rewards[e, :length[e]]) for e in range(9)]
    mu, sd = np.mean(scores), np.std(scores, ddof=1) + 1e-8
    for clip in (None, (-0.5, 0.8)):
        out = fastppo.process_rewards(rewards, mask, clip, reward_norm=True)
        for e in range(9):
            for t in range(5):
                x = rewards[e, t] / sd - (mu / sd if t == length[e] - 1 else 0.0)
                if clip is not None:
                    x = min(max(x, clip[0]), clip[1])
                assert out[e, t] == (pytest.approx(x, rel=1e-12, abs=1e-12) if mask[e, t] else 0.0)
    norm = fastppo.process_rewards(rewards, mask, reward_norm=True)
    np.testing.assert_allclose(norm.sum(axis=1), (np.array(scores) - mu) / sd, rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(fastppo.process_rewards(rewards, mask, (-1.0, 1.0)),
                                  np.where(mask, np.clip(rewards, -1, 1), 0.0))


def test_sampled_ppo_reward_clip_and_norm(tokens):
    task, reg = tokens
    mdp = task.mdp
    base = dict(n_envs=64, seed=3, advantage="rloo", group_size=4)
    wide = fastppo.SampledPPO(mdp, reg, reward_clip=1e6, **base)
    plain = fastppo.SampledPPO(mdp, reg, **base)
    np.testing.assert_array_equal(wide.run(3).logits, plain.run(3).logits)  # nothing clipped
    lo, hi = np.quantile(mdp.r, [0.3, 0.7])
    ppo = fastppo.SampledPPO(mdp, reg, reward_clip=(lo, hi), **base)
    assert ppo.config.reward_clip == (lo, hi) and ppo.target.reward_clip == (lo, hi)
    assert np.isnan(ppo.reference or np.nan)  # an optimum of the clipped rewards: no gap on J
    assert not np.array_equal(ppo.run(3).logits, plain.logits)
    normed = fastppo.SampledPPO(mdp, reg, reward_norm=True, **base)
    assert normed.target is None and "reward_norm=True has no fixed target" in normed.target_note
    assert np.isfinite(normed.run(2).history["J"]).all()
    with pytest.raises(ValueError, match="reward_clip must be > 0"):
        fastppo.SampledPPO(mdp, reg, reward_clip=-1.0)


def test_kl_controller_per_sequence_and_per_step(garnet30):
    """kl_target_sequence: β moves with the per-episode KL (summed over the episode, averaged
    over the batch) and n = episodes; kl_target_step: with the per-step KL and n = steps."""
    reg = fastppo.ReverseKL(0.3)
    seq = fastppo.SampledPPO(garnet30, reg, kl_target_sequence=2.0, kl_horizon=1000, n_envs=64,
                             seed=0, reference=False).run(3).history
    step = fastppo.SampledPPO(garnet30, reg, kl_target_step=0.01, kl_horizon=1000, n_envs=64,
                              seed=0, reference=False).run(3).history
    for i in range(2):
        err = np.clip(seq["kl_sequence"][i] / 2.0 - 1, -0.2, 0.2)
        assert seq["kl_coef"][i + 1] == pytest.approx(seq["kl_coef"][i] * (1 + err * 64 / 1000), rel=1e-14)
        err = np.clip(step["kl_ref"][i] / 0.01 - 1, -0.2, 0.2)
        assert step["kl_coef"][i + 1] == pytest.approx(
            step["kl_coef"][i] * (1 + err * step["n_samples"][i] / 1000), rel=1e-14)
    for h in (seq, step):  # the per-episode KL is the per-step one times the mean length
        np.testing.assert_allclose(h["kl_sequence"], h["kl_ref"] * h["n_samples"] / 64, rtol=1e-12)
    assert seq["kl_coef"][1] != step["kl_coef"][1]


def test_kl_target_is_deprecated_for_kl_target_step(garnet30):
    with pytest.warns(DeprecationWarning, match="SampledPPO: kl_target= is deprecated.*kl_target_step="):
        ppo = fastppo.SampledPPO(garnet30, kl_target=0.02, reference=False)
    assert ppo.config.kl_target_step == 0.02 and ppo.config.kl_target_sequence is None
    with pytest.warns(DeprecationWarning, match="SampledPPOConfig: kl_target= is deprecated"):
        assert fastppo.SampledPPOConfig(kl_target=0.02).kl_target_step == 0.02
    with pytest.raises(TypeError, match="give kl_target_step= only"):
        fastppo.SampledPPO(garnet30, kl_target=0.02, kl_target_step=0.02)
    with pytest.raises(ValueError, match="at most one of kl_target_sequence"):
        fastppo.SampledPPOConfig(kl_target_step=0.02, kl_target_sequence=5.0)


# ------------------------------------------------------------------ SampledPPO's own target
def test_sampled_ppo_target_wiring(garnet30):
    mdp, reg = garnet30, fastppo.ReverseKL(0.3)
    # k1 in the reward: the regularized optimum, a gap
    ppo = fastppo.SampledPPO(mdp, reg, n_envs=32, seed=0)
    assert ppo.target.kind == "optimum" and ppo.reference == pytest.approx(fastppo.solve(mdp, reg).J, rel=1e-12)
    h = ppo.run(3).history
    assert np.isfinite(h["gap"]).all() and np.isfinite(h["tv_target"]).all()
    np.testing.assert_allclose(h["J"][-1], fastppo.evaluate(mdp, ppo.pi, reg).J, rtol=1e-10)
    np.testing.assert_allclose(h["J_plain"][-1], fastppo.evaluate(mdp, ppo.pi).J, rtol=1e-10)
    np.testing.assert_allclose(h["tv_target"][-1], fastppo.tv_distance(mdp, ppo.pi, ppo.target), rtol=1e-10)
    # k3 in the loss: a fixed point, no gap; run(tol) stops on the distance
    kw = dict(kl_estimator="k3", kl_penalty="loss")
    ppo = fastppo.SampledPPO(mdp, reg, n_envs=128, seed=0, **kw)
    own = fastppo.sampled_target(mdp, reg, **kw)
    np.testing.assert_array_equal(ppo.target.policy, own.policy)
    assert ppo.reference is None and ppo.target_note == own.objective
    res = ppo.run(60, tol=0.03)
    assert res.converged and res.n_iter < 60 and res.history["tv_target"][-1] <= 0.03
    assert np.isnan(res.history["gap"]).all() and np.isnan(res.gap)
    assert res.tv_target == pytest.approx(fastppo.tv_distance(mdp, res.policy, own), rel=1e-10)
    # k1 in the loss with reg: the target is the plain optimum, but J is regularized: no gap
    ppo = fastppo.SampledPPO(mdp, reg, n_envs=32, seed=0, kl_estimator="k1", kl_penalty="loss")
    assert ppo.target.divergence == "none" and ppo.reference is None
    # without reg and KL: the plain optimum, with a gap
    ppo = fastppo.SampledPPO(mdp, n_envs=32, seed=0)
    assert ppo.reference == pytest.approx(fastppo.solve(mdp).J, rel=1e-12)
    # no target: grpo, an adaptive β, whiten with a loss KL; the note says why
    for kw, why in [(dict(advantage="grpo"), "group's standard deviation"),
                    (dict(kl_target_sequence=1.0), "adaptive kl_coef"),
                    (dict(whiten=True, kl_estimator="k2", kl_penalty="loss"), "batch standard deviation")]:
        ppo = fastppo.SampledPPO(mdp, reg, n_envs=16, seed=0, **kw)
        assert ppo.target is None and ppo.reference is None and why in ppo.target_note
        assert np.isnan(ppo.run(1).history["tv_target"]).all()
        with pytest.raises(ValueError, match="needs a reference"):
            ppo.run(1, tol=0.1)
    # a given target, a given J*, none
    given = fastppo.SampledPPO(mdp, reg, n_envs=16, seed=0, reference=own, **kw)
    assert given.target is own and given.reference is None
    star = fastppo.SampledPPO(mdp, reg, n_envs=16, seed=0, reference=1.5)
    assert star.target is None and star.reference == 1.5 and star.run(1).history["gap"][0] == 1.5 - star.history["J"][0]
    assert fastppo.SampledPPO(mdp, reg, reference=False).target is None


def test_sampled_ppo_new_options_backend_identical(tokens):
    task, reg = tokens
    kw = dict(seed=2, n_envs=64, advantage="grpo", group_size=4, ent_coef=0.05,
              weighting="sample_mean", lr=5.0, reward_clip=0.5, kl_estimator="k3",
              kl_penalty="loss", kl_target_sequence=1.0, reference=False)
    runs = {b: fastppo.SampledPPO(task.mdp, reg, backend=b, **kw).run(4) for b in BACKENDS}
    assert np.array_equal(runs["cython"].logits, runs["numba"].logits)
    np.testing.assert_allclose(runs["numpy"].logits, runs["numba"].logits, rtol=1e-10, atol=1e-10)
    for field in ["J", "J_plain", "kl_sequence", "kl_coef", "entropy"]:
        assert np.array_equal(runs["cython"].history[field], runs["numba"].history[field]), field
    with pytest.raises(ValueError, match="weighting must be one of 'state_mean', 'sample_mean'"):
        fastppo.SampledPPO(task.mdp, reg, weighting="mean")
    with pytest.raises(ValueError, match="ent_coef must be >= 0"):
        fastppo.SampledPPO(task.mdp, reg, ent_coef=-0.1)
    with pytest.raises(ValueError, match="applies to the critic-free"):
        fastppo.SampledPPO(task.mdp, reg, advantage_level="sequence")


@pytest.mark.parametrize("case", ["grpo-entropy-sample_mean", "fixed-point-target", "reward_norm"])
def test_sampled_ppo_resume_bit_exact_with_new_settings(tmp_path, tokens, case):
    """The new settings live in SampledPPOConfig and its checkpoint; the target (policy and
    description) in the checkpoint's state: a resumed run continues bit for bit."""
    task, reg = tokens
    mdp = task.mdp
    kw = {"grpo-entropy-sample_mean": dict(advantage="grpo", ent_coef=0.05, weighting="sample_mean",
                                           lr=5.0, reward_clip=(-0.5, 0.7), kl_target_sequence=1.0),
          "fixed-point-target": dict(advantage="rloo", kl_estimator="k3", kl_penalty="loss",
                                     ent_coef=0.02, reward_clip=1.0),
          "reward_norm": dict(advantage="dr_grpo", advantage_level="sequence", reward_norm=True,
                              kl_estimator="k2", kl_penalty="loss")}[case]
    kw = dict(seed=7, n_envs=32, group_size=4, **kw)
    full = fastppo.SampledPPO(mdp, reg, **kw)
    done = full.run(6)
    first = fastppo.SampledPPO(mdp, reg, **kw).run(3)
    first.save(tmp_path)
    resumed = fastppo.SampledPPO.resume(tmp_path)
    assert resumed.config == full.config and resumed.target_note == full.target_note
    assert (resumed.target is None) == (full.target is None) and resumed.reference == full.reference
    if full.target is not None:
        np.testing.assert_array_equal(resumed.target.policy, full.target.policy)
        assert {k: v for k, v in resumed.target.items() if k != "policy"} == \
            {k: v for k, v in full.target.items() if k != "policy"}
    rest = resumed.run(3)
    assert np.array_equal(rest.logits, done.logits) and np.array_equal(rest.v, done.v)
    for name in rest.history.dtype.names:
        if name != "seconds":
            assert np.array_equal(rest.history[name], done.history[name], equal_nan=True), name


# ------------------------------------------------------------------ each variant on its own target
def _two_action_mdp(n_states, seed, scale, gamma):
    """Small rewards and a reference putting 0.2 on the optimal action: reward-placed k3 has
    an attracting fixed point there (tests/test_targets.py)."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(n_states, 0.5), size=(n_states, 2))
    mdp = fastppo.MDP.from_dense(P, scale * rng.normal(size=(n_states, 2)), gamma)
    best = fastppo.solve(mdp).sigma
    return mdp, fastppo.ReverseKL(1.0, ref=np.where(np.arange(2)[None] == best[:, None], 0.2, 0.8))


def _variant_problems():
    garnet = fastppo.garnet(6, 3, 2, gamma=0.6, seed=0)
    g_reg = fastppo.ReverseKL(0.3, ref=fastppo.softmax(garnet, 0.5 * np.random.default_rng(0).normal(size=18)))
    task = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=2, gamma=0.999, seed=0)
    t_reg = fastppo.ReverseKL(1.0, ref=task.ref)
    episodic = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=2, seed=0)  # gamma = 1
    return {"garnet": (garnet, g_reg), "garnet-plain": (garnet, None),
            "two-action": _two_action_mdp(4, 0, scale=0.05, gamma=0.5), "tokens": (task.mdp, t_reg),
            "tokens-episodic": (episodic.mdp, fastppo.ReverseKL(1.0, ref=episodic.ref))}


# (problem, settings, n_envs): critic-based forms on a 6-state garnet (γ = 0.6); the
# critic-free ones on a token MDP (every episode ends within the horizon, module
# fastppo.targets §2; lr 0.1 keeps 16 minibatch steps of the loss KL stable)
VARIANTS = {
    "k1-reward-gae": ("garnet", {}, 128),
    "k2-loss-gae": ("garnet", dict(kl_estimator="k2", kl_penalty="loss"), 128),
    "entropy-no-kl": ("garnet-plain", dict(ent_coef=0.2), 128),
    "k1-reward-entropy": ("garnet", dict(ent_coef=0.1), 128),
    "k1-reward-gae-sample_mean": ("garnet", dict(weighting="sample_mean", lr=3.0), 128),
    "k3-reward": ("two-action", dict(kl_estimator="k3", lr=0.2), 128),
    "k2-loss-dr_grpo-sequence": ("tokens", dict(kl_estimator="k2", kl_penalty="loss", advantage="dr_grpo",
                                                advantage_level="sequence", lr=0.1), 256),
    "k3-loss-dr_grpo-step": ("tokens", dict(kl_estimator="k3", kl_penalty="loss", advantage="dr_grpo",
                                            lr=0.1), 256),
    "k2-loss-entropy-rloo-sequence": ("tokens", dict(kl_estimator="k2", kl_penalty="loss", ent_coef=0.1,
                                                     advantage="rloo", advantage_level="sequence",
                                                     lr=0.1), 256),
    "k1-reward-rloo-step": ("tokens", dict(advantage="rloo", lr=0.1), 256),
    "k3-loss-dr_grpo-sequence-episodic": ("tokens-episodic", dict(
        kl_estimator="k3", kl_penalty="loss", advantage="dr_grpo", advantage_level="sequence",
        lr=0.1), 256),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list(VARIANTS))
def test_each_variant_is_within_3_se_of_its_own_target(name):
    """Each SampledPPO variant sits on its own exact target (fastppo.sampled_target), within
    sampling error, and closer as the batch grows 4x.

    Per seed i (5 seeds), π̄_i = the policy averaged over iterations 61..160, started from
    the target's logits plus a fixed perturbation (N(0, 0.5²) per logit; the reward-placed
    k3 variant, whose neighbourhood holds other attractors, from the target itself). The
    statistic is the d-weighted total variation D = Σ_s d*(s) ½ Σ_a |m(s,a) − π*(s,a)| of
    the seed mean m = mean_i π̄_i, d* the target's visitation on the non-terminal states;
    its scale is the same functional of the standard errors of m,
    E = Σ_s d*(s) ½ Σ_a sd_i(π̄_i(s,a))/√5 (pure noise gives D ≈ E). Asserted: D ≤ 3E at
    n_envs and at 4·n_envs, and D shrinks."""
    key, kw, n_envs = VARIANTS[name]
    mdp, reg = _variant_problems()[key]
    kw = dict(kw, group_size=4) if kw.get("advantage") else dict(kw)
    if key == "tokens":
        kw["horizon"] = 3
    target_kw = {k: v for k, v in kw.items() if k in ("kl_estimator", "kl_penalty", "advantage",
                                                      "group_size", "advantage_level", "ent_coef")}
    target = fastppo.sampled_target(mdp, reg, n_starts=1, **target_kw)
    star = mdp.to_pairs(target.policy)
    d = np.where(mdp.terminal, 0.0, fastppo.visitation(mdp, star))
    d /= d.sum()

    def functional(x):
        return float(d @ (0.5 * np.add.reduceat(x, mdp.a_indptr[:-1])))

    shift = 0.0 if key == "two-action" else 0.5 * np.random.default_rng(99).normal(size=mdp.n_pairs)
    D, E = {}, {}
    for n in (n_envs, 4 * n_envs):
        means = []
        for seed in range(5):
            ppo = fastppo.SampledPPO(mdp, reg, n_envs=n, seed=seed, reference=target,
                                     init=np.log(star) + shift, **kw)
            assert ppo.target is target
            avg = np.zeros(mdp.n_pairs)
            for i in range(160):
                ppo.step()
                if i >= 60:
                    avg += ppo.pi / 100
            means.append(avg)
        means = np.array(means)
        D[n] = functional(np.abs(means.mean(axis=0) - star))
        E[n] = functional(means.std(axis=0, ddof=1) / np.sqrt(len(means)))
        assert D[n] <= 3 * E[n], (name, n, D[n], E[n])
    assert D[4 * n_envs] < D[n_envs], (name, D)


def test_default_horizon_covers_the_longest_episode(tokens, frozenlake):
    """Where every episode ends (a DAG: token MDPs) the default horizon is the longest
    episode, not the 4603 steps γ = 0.999 would give; with cycles it stays γ^T ≤ 0.01."""
    task, reg = tokens
    assert fastppo.targets.longest_episode(task.mdp) == task.max_len
    assert fastppo.SampledPPO(task.mdp, reg, reference=False).horizon == task.max_len
    assert fastppo.SampledPPO(task.mdp, reg, reference=False, horizon=9).horizon == 9
    assert fastppo.targets.longest_episode(frozenlake) is None
    assert fastppo.SampledPPO(frozenlake, reference=False).horizon == int(np.ceil(np.log(0.01) / np.log(0.95)))
    tr = fastppo.rollout(task.mdp, task.ref, 500, task.max_len, seed=0)
    assert tr.terminated[np.arange(500), tr.length - 1].all()  # no episode is cut
