"""The exact targets of SampledPPO's variants (fastppo.targets) against brute force.

Brute force here is written differently from the module: values by dense
``np.linalg.solve`` (tests/naive.py), the stationarity equations of each variant written
out per pair with loops and solved by ``scipy.optimize.root`` / ``brentq``, closed forms on
bandits, and SampledPPO itself (its expected update by averaging its own steps; its
long-run policy in the slow tests).
"""
import math
import warnings

import numpy as np
import pytest
from scipy.optimize import brentq, root

import fastppo
from fastppo.targets import NoTargetError

import naive


# ---------------------------------------------------------------- brute force
def bandit(r, gamma=0.0):
    r = np.asarray(r, dtype=float)
    return fastppo.MDP.from_dense(np.ones((1, r.size, 1)), r[None], gamma=gamma)


def two_action_mdp(n_states, seed, scale, gamma):
    """Random 2-action MDP with small rewards, and a reference putting 0.2 on the optimal
    action of each state (a setting where reward-placed k2/k3 have attracting fixed points)."""
    rng = np.random.default_rng(seed)
    P = rng.dirichlet(np.full(n_states, 0.5), size=(n_states, 2))
    mdp = fastppo.MDP.from_dense(P, scale * rng.normal(size=(n_states, 2)), gamma)
    best = fastppo.solve(mdp).sigma
    ref = np.where(np.arange(2)[None] == best[:, None], 0.2, 0.8)
    return mdp, ref


def k_value(name, w):
    lw = math.log(w)
    return 0.5 * lw * lw if name == "k2" else 1.0 / w - 1.0 + lw


def dense_values(mdp, pi, rewards):
    """V = (I − γ P_π)^{-1} r_π and Q = rewards + γ P V for per-pair ``rewards``, by loops."""
    states, P, _ = naive.dense(mdp)
    S = mdp.n_states
    r_pi = np.zeros(S)
    for k in range(mdp.n_pairs):
        r_pi[states[k]] += pi[k] * rewards[k]
    v = np.linalg.solve(np.eye(S) - mdp.gamma * naive.P_pi(mdp, pi), r_pi)
    return v, rewards + mdp.gamma * (P @ v)


def stationarity_terms(mdp, pi, ref, beta, c, estimator, placement):
    """Per pair, the quantity the variant's fixed point makes constant over a state's
    actions (module docstring §3–§5), from dense values."""
    n = mdp.n_pairs
    w = [pi[k] / ref[k] for k in range(n)]
    if placement == "loss":
        _, q = dense_values(mdp, pi, np.array(mdp.r, dtype=float))
        if estimator == "k2":
            return np.array([c * q[k] - beta * math.log(w[k]) for k in range(n)])
        return np.array([c * q[k] + beta / w[k] for k in range(n)])  # k3: cQ − β(1 − 1/w)
    if estimator == "k1":
        pen = [math.log(w[k]) for k in range(n)]  # returns from r − β log w
    else:
        pen = [k_value(estimator, w[k]) for k in range(n)]
    _, q = dense_values(mdp, pi, np.array([mdp.r[k] - beta * pen[k] for k in range(n)]))
    return q


def solve_stationarity(mdp, ref, beta, c, estimator, placement, start):
    """Root of the stationarity equations in gauge-fixed logits (last action of each state
    at 0), by scipy.optimize.root from the policy ``start``."""
    last = [int(mdp.a_indptr[s + 1]) - 1 for s in range(mdp.n_states)]
    free = [k for k in range(mdp.n_pairs) if k not in last]

    def policy(y):
        theta = np.zeros(mdp.n_pairs)
        theta[free] = y
        return naive.softmax(mdp, theta)

    def equations(y):
        t = stationarity_terms(mdp, policy(y), ref, beta, c, estimator, placement)
        return np.array([t[k] - t[last[mdp.s_indices[k]]] for k in free])

    theta0 = np.log(start) - np.log(start[np.array(last)][mdp.s_indices])
    sol = root(equations, theta0[free], method="hybr", tol=1e-14)
    assert np.max(np.abs(equations(sol.x))) < 1e-10, sol.message
    return policy(sol.x)


def dense_field(mdp, pi, ref, beta, c, estimator, placement):
    """SampledPPO's expected update F (module §1) from dense values, by loops."""
    n, S = mdp.n_pairs, mdp.n_states
    w = [pi[k] / ref[k] for k in range(n)]
    if placement == "loss":
        v, q = dense_values(mdp, pi, np.array(mdp.r, dtype=float))
        phi = {"k1": [1.0] * n, "k2": [math.log(x) for x in w], "k3": [1.0 - 1.0 / x for x in w]}[estimator]
        x = [c * (q[k] - v[mdp.s_indices[k]]) - beta * phi[k] for k in range(n)]
    else:
        pen = [{"k1": math.log(w[k]), "k2": 0.5 * math.log(w[k]) ** 2,
                "k3": 1.0 / w[k] - 1.0 + math.log(w[k])}[estimator] for k in range(n)]
        rew = np.array([mdp.r[k] - beta * pen[k] for k in range(n)])
        v, q = dense_values(mdp, pi, rew)
        x = [c * (q[k] - v[mdp.s_indices[k]]) for k in range(n)]
    F = np.empty(n)
    for s in range(S):
        ks = range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1]))
        mean = sum(pi[k] * x[k] for k in ks)
        for k in ks:
            F[k] = pi[k] * (x[k] - mean)
    return F


def flat(mdp, table):
    return mdp.to_pairs(table)


# ---------------------------------------------------------------- bandits
R3 = [1.0, 0.5, 0.0]
REF3 = np.array([[0.5, 0.3, 0.2]])


@pytest.mark.parametrize("advantage, group_size", [("gae", None), ("reinforce", None),
                                                   ("rloo", 4), ("dr_grpo", 4), ("dr_grpo", 2)])
def test_bandit_closed_forms(advantage, group_size):
    mdp, beta, ref = bandit(R3), 0.7, REF3[0]
    r = np.array(R3)
    c = (group_size - 1) / group_size if advantage == "dr_grpo" else 1.0
    assert fastppo.advantage_scale(advantage, group_size) == c
    kw = dict(advantage=advantage, group_size=group_size)
    reg = fastppo.ReverseKL(beta, ref=REF3)

    def target(est, place):
        return flat(mdp, fastppo.sampled_target(mdp, reg, kl_estimator=est, kl_penalty=place, **kw).policy)

    softmax = lambda z: ref * np.exp(z - z.max()) / np.sum(ref * np.exp(z - z.max()))  # noqa: E731
    # k1 in the reward: the reverse-KL optimum for every c
    np.testing.assert_allclose(target("k1", "reward"), softmax(r / beta), rtol=0, atol=1e-13)
    # k2 in the loss: reverse-KL greedy of the plain Q with τ = β/c (= the optimum at γ = 0)
    np.testing.assert_allclose(target("k2", "loss"), softmax(c * r / beta), rtol=0, atol=1e-13)
    # k3 in the loss: forward-KL greedy p_a = τ ref_a / (ν − r_a), Σ p = 1
    tau = beta / c
    nu = brentq(lambda nu: np.sum(tau * ref / (nu - r)) - 1.0, r.max() + 1e-12, r.max() + tau + 1.0,
                xtol=1e-15, rtol=1e-15)
    np.testing.assert_allclose(target("k3", "loss"), tau * ref / (nu - r), rtol=0, atol=1e-12)
    # k1 in the loss: no regularization at all
    np.testing.assert_array_equal(target("k1", "loss"), [1.0, 0.0, 0.0])


def test_zero_kl_coef_is_the_plain_optimum():
    mdp = fastppo.garnet(15, 3, 2, gamma=0.9, seed=3)
    plain = fastppo.solve(mdp).policy
    for est in ("k1", "k2", "k3"):
        for place in ("reward", "loss"):
            t = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), kl_coef=0.0,
                                       kl_estimator=est, kl_penalty=place)
            assert t.kind == "optimum" and t.divergence == "none" and t.tau == 0.0
            np.testing.assert_array_equal(t.policy, plain)
            assert t.residual < 1e-12 and t.update_norm == 0.0


def two_action_roots(estimator, dr, ref, beta):
    """Stationary p = π(a=0) of the 2-armed bandit with the KL in the reward, by a grid scan
    and brentq, each with its stability: p moves along Φ'(p) = Δr − β(k(w_0) − k(w_1)), a
    root is attracting where Φ' goes from + to −."""
    phi = lambda p: dr - beta * (k_value(estimator, p / ref[0]) - k_value(estimator, (1 - p) / ref[1]))  # noqa: E731
    grid = np.linspace(1e-6, 1 - 1e-6, 200_001)
    vals = np.array([phi(p) for p in grid])
    roots = []
    for i in np.flatnonzero(np.sign(vals[1:]) != np.sign(vals[:-1])):
        p = brentq(phi, grid[i], grid[i + 1], xtol=1e-15)
        roots.append((p, vals[i] > 0 > vals[i + 1]))
    return roots


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_reward_k2_k3_two_armed_bandit(estimator):
    ref, beta, dr = np.array([0.2, 0.8]), 1.0, 0.1
    roots = two_action_roots(estimator, dr, ref, beta)
    stable = [p for p, ok in roots if ok]
    assert len(roots) == 3 and len(stable) == 1  # unstable, stable, unstable; and p → 1 attracts
    if estimator == "k3":
        np.testing.assert_allclose([p for p, _ in roots], [0.1310682, 0.3409966, 0.6161395], atol=1e-7)
    # the module's condition (at most one action below π_ref, Σ 1/h < 0) agrees with the flow
    for p, ok in roots:
        w = np.array([p, 1 - p]) / ref
        h = (np.log(w) / w if estimator == "k2" else (w - 1) / w**2) / ref
        assert ok == bool((h < 0).sum() == 1 and np.sum(1 / h) < 0)
    t = fastppo.sampled_target(bandit([dr, 0.0]), fastppo.ReverseKL(beta, ref=ref[None]),
                               kl_estimator=estimator, kl_penalty="reward")
    assert t.kind == "fixed point" and t.stable and t.converged
    np.testing.assert_allclose(t.policy[0, 0], stable[0], atol=1e-12)
    assert t.residual <= 1e-12
    assert np.isinf(t.spread) or t.spread < 1e-10  # random starts may end at the vertex p = 1


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_reward_k2_k3_uniform_reference_has_no_target(estimator):
    with pytest.raises(NoTargetError, match=r"drives pair \(s=0, a=2\) to probability 0"):
        fastppo.sampled_target(bandit(R3), fastppo.ReverseKL(1.0), kl_estimator=estimator,
                               kl_penalty="reward")
    mdp = fastppo.garnet(6, 3, 2, gamma=0.9, seed=0)
    with pytest.raises(NoTargetError, match="still falling"):
        fastppo.sampled_target(mdp, fastppo.ReverseKL(0.3), kl_estimator=estimator,
                               kl_penalty="reward")


def test_uniform_reference_stationary_points_are_unstable():
    """Module §5: with a uniform π_ref no stationary point satisfies the stability condition
    (random w with Σ w = n and one or more actions below 1)."""
    rng = np.random.default_rng(0)
    for _ in range(2000):
        n = int(rng.integers(2, 7))
        w = rng.dirichlet(np.ones(n) * rng.uniform(0.3, 3)) * n
        ref = np.full(n, 1.0 / n)
        for h in (np.log(w) / w / ref, (w - 1) / w**2 / ref):
            assert not ((h < 0).sum() == 1 and np.sum(1 / h) < 0)


# ---------------------------------------------------------------- small MDPs
SMALL = [(2, 2, 0.5, 0), (3, 3, 0.9, 1), (4, 2, 0.9, 2), (4, 3, 0.7, 3)]


@pytest.mark.parametrize("S, A, gamma, seed", SMALL)
@pytest.mark.parametrize("estimator, placement, advantage",
                         [("k1", "reward", "gae"), ("k1", "reward", "dr_grpo"),
                          ("k2", "loss", "gae"), ("k2", "loss", "dr_grpo"),
                          ("k3", "loss", "reinforce"), ("k3", "loss", "dr_grpo")])
def test_small_mdp_targets_match_root_finding(S, A, gamma, seed, estimator, placement, advantage):
    mdp = fastppo.garnet(S, A, min(2, S), gamma=gamma, seed=seed)
    rng = np.random.default_rng(seed)
    ref = fastppo.softmax(mdp, 0.5 * rng.normal(size=mdp.n_pairs))
    beta = 0.4
    reg = fastppo.ReverseKL(beta, ref=ref)
    t = fastppo.sampled_target(mdp, reg, kl_estimator=estimator, kl_penalty=placement,
                               advantage=advantage, group_size=3)
    c = 2 / 3 if advantage == "dr_grpo" else 1.0
    brute = solve_stationarity(mdp, ref, beta, c, estimator, placement, ref)
    pi = flat(mdp, t.policy)
    np.testing.assert_allclose(pi, brute, rtol=0, atol=1e-10)
    assert t.converged and t.residual <= 1e-12
    assert t.spread < 1e-10
    # the target is a zero of SampledPPO's expected update (dense loops)
    assert np.max(np.abs(dense_field(mdp, pi, ref, beta, c, estimator, placement))) < 1e-10
    assert t.update_norm < 1e-10
    # both objectives, by dense evaluation
    v_plain, _, _ = naive.evaluate(mdp, pi)
    v_reg, _, _ = naive.evaluate(mdp, pi, reg)
    np.testing.assert_allclose([t.J_plain, t.J_reg], [mdp.rho @ v_plain, mdp.rho @ v_reg], rtol=1e-10)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_reward_k2_k3_mdp_fixed_point(seed, estimator):
    """4-state MDP with small rewards and a reference favouring the worse action: an
    attracting interior fixed point. Checked by root-finding, by the stationarity in the
    docstring's form Q̂ − βk(w) = V_R(s), and by the eigenvalues of the full (coupled)
    Jacobian of the expected update, dense."""
    mdp, ref_table = two_action_mdp(4, seed, scale=0.05, gamma=0.5)
    ref = flat(mdp, ref_table)
    beta = 1.0
    t = fastppo.sampled_target(mdp, fastppo.ReverseKL(beta, ref=ref_table),
                               kl_estimator=estimator, kl_penalty="reward", n_starts=1)
    pi = flat(mdp, t.policy)
    assert t.kind == "fixed point" and t.stable and t.residual <= 1e-12
    brute = solve_stationarity(mdp, ref, beta, 1.0, estimator, "reward", pi)
    np.testing.assert_allclose(pi, brute, rtol=0, atol=1e-10)
    pen = np.array([k_value(estimator, pi[k] / ref[k]) for k in range(mdp.n_pairs)])
    v_r, q_r = dense_values(mdp, pi, mdp.r - beta * pen)
    np.testing.assert_allclose(q_r, v_r[mdp.s_indices], rtol=0, atol=1e-12)  # Q_R = V_R
    # stability of the coupled system: the Jacobian of F in the free logits, by differences
    free = np.ones(mdp.n_pairs, bool)
    free[mdp.a_indptr[1:] - 1] = False
    theta = np.log(pi) - np.log(pi[mdp.a_indptr[1:] - 1])[mdp.s_indices]

    def field(y):
        th = theta.copy()
        th[free] = y
        return dense_field(mdp, naive.softmax(mdp, th), ref, beta, 1.0, estimator, "reward")[free]

    y0, h = theta[free], 1e-6
    jac = np.column_stack([(field(y0 + h * e) - field(y0 - h * e)) / (2 * h) for e in np.eye(y0.size)])
    assert np.max(np.linalg.eigvals(jac).real) < -1e-4


def test_k3_reward_values_are_the_reverse_kl_values():
    """E_π k3 = KL(π ‖ π_ref): the returns' values with k3 in the reward are Ṽ (§5)."""
    mdp = fastppo.garnet(6, 3, 2, gamma=0.8, seed=4)
    rng = np.random.default_rng(1)
    pi = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    ref = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    pen = np.array([k_value("k3", pi[k] / ref[k]) for k in range(mdp.n_pairs)])
    v, _ = dense_values(mdp, pi, mdp.r - 0.3 * pen)
    np.testing.assert_allclose(v, fastppo.evaluate(mdp, pi, fastppo.ReverseKL(0.3, ref=ref)).v, rtol=1e-10)


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("placement", ["reward", "loss"])
def test_expected_update_against_dense_loops(estimator, placement):
    mdp = fastppo.garnet(7, 3, 2, gamma=0.85, seed=5)
    rng = np.random.default_rng(2)
    ref = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    pi = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    F = fastppo.expected_update(mdp, pi, fastppo.ReverseKL(0.6, ref=ref), kl_estimator=estimator,
                                kl_penalty=placement, advantage="dr_grpo", group_size=5)
    np.testing.assert_allclose(F, dense_field(mdp, pi, ref, 0.6, 0.8, estimator, placement),
                               rtol=0, atol=1e-11)
    np.testing.assert_allclose(np.add.reduceat(F, mdp.a_indptr[:-1]), 0.0, atol=1e-13)


def test_loss_k2_gradient_is_reverse_kl_and_k3_forward_kl():
    """On policy, the expected loss gradient of β·k: 0 (k1), ∇KL(π‖π_ref) (k2), ∇KL(π_ref‖π)
    (k3). With equal rewards only the KL term is left: compare with finite differences.
    (Equal and nonzero: a zero-reward absorbing state is terminal, never sampled, F = 0.)"""
    mdp = fastppo.MDP.from_dense(np.ones((1, 4, 1)), np.ones((1, 4)), gamma=0.0)
    rng = np.random.default_rng(3)
    ref, theta = fastppo.softmax(mdp, rng.normal(size=4)), rng.normal(size=4)
    kl = {"k2": lambda p: np.sum(p * np.log(p / ref)), "k3": lambda p: np.sum(ref * np.log(ref / p))}
    for est in ("k1", "k2", "k3"):
        F = fastppo.expected_update(mdp, fastppo.softmax(mdp, theta), fastppo.ReverseKL(1.0, ref=ref),
                                    kl_estimator=est, kl_penalty="loss")
        if est == "k1":
            np.testing.assert_allclose(F, 0.0, atol=1e-15)
            continue
        fd = np.array([(kl[est](fastppo.softmax(mdp, theta + 1e-6 * e)) -
                        kl[est](fastppo.softmax(mdp, theta - 1e-6 * e))) / 2e-6 for e in np.eye(4)])
        np.testing.assert_allclose(F, -fd, atol=1e-9)


def test_terminal_states_keep_the_start_policy():
    """SampledPPO's episodes end in terminal states, so it never updates them: the target
    keeps the start policy there, the expected update is 0 there, and the residual and the
    stability check ignore them."""
    mdp = fastppo.gridworld(4, 4, gamma=0.95)
    term = mdp.terminal[mdp.s_indices]
    assert term.any()
    rng = np.random.default_rng(0)
    init = rng.normal(size=mdp.n_pairs)
    start = fastppo.softmax(mdp, init)
    for est, place in [("k1", "reward"), ("k1", "loss"), ("k2", "loss"), ("k3", "loss")]:
        t = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.2), kl_estimator=est, kl_penalty=place,
                                   init=init, n_starts=1)
        pi = flat(mdp, t.policy)
        np.testing.assert_allclose(pi[term], start[term], rtol=0, atol=1e-15)
        assert t.converged, (est, place, t.residual)
        F = flat(mdp, fastppo.expected_update(mdp, np.maximum(pi, 1e-300) / np.add.reduceat(
            np.maximum(pi, 1e-300), mdp.a_indptr[:-1])[mdp.s_indices], fastppo.ReverseKL(0.2),
            kl_estimator=est, kl_penalty=place))
        assert np.all(F[term] == 0.0)


# ---------------------------------------------------------------- uniqueness, hard cases
@pytest.mark.parametrize("mdp", [fastppo.chain(30, gamma=0.99), fastppo.gridworld(5, 5, gamma=0.99),
                                 fastppo.garnet(60, 4, 3, gamma=0.99, seed=2, locality=3)],
                         ids=["chain", "grid", "local-garnet"])
@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_loss_targets_unique_on_slow_mixing_mdps(mdp, estimator):
    """Small τ on slow-mixing MDPs, where plain iteration π ← greedy(Q^π) cycles (chain):
    Newton reaches the same fixed point from every start, and it zeroes the update."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # round-off floor reported, not hidden
        t = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.01), kl_estimator=estimator,
                                   kl_penalty="loss", n_starts=4)
    assert t.residual < 1e-10
    assert t.spread < 1e-8, t.starts
    assert t.update_norm < 1e-10 * max(1.0, np.abs(fastppo.evaluate(mdp, t.policy).v).max())


def plain_iteration(mdp, ref, tau, code, n=2000):
    """π ← greedy(Q^π) with the greedy step written out (reverse KL: softmax; forward KL:
    bisection on ν), Q^π dense; a different algorithm from the module's Newton."""
    pi = np.array(ref, dtype=float)
    for _ in range(n):
        _, q = dense_values(mdp, pi, np.array(mdp.r, dtype=float))
        new = np.empty_like(pi)
        for s in range(mdp.n_states):
            ks = slice(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1]))
            qs, rs = q[ks], ref[ks]
            if code == 1:
                e = rs * np.exp((qs - qs.max()) / tau)
                new[ks] = e / e.sum()
            else:
                lo, hi = qs.max(), qs.max() + tau
                for _ in range(200):
                    mid = 0.5 * (lo + hi)
                    lo, hi = (mid, hi) if np.sum(tau * rs / (mid - qs)) > 1 else (lo, mid)
                new[ks] = tau * rs / (0.5 * (lo + hi) - qs)
                new[ks] /= new[ks].sum()
        done = np.max(np.abs(new - pi)) < 1e-13
        pi = new
        if done:
            break
    return pi


@pytest.mark.parametrize("code, estimator", [(1, "k2"), (2, "k3")])
def test_hard_instance_where_newton_alone_stalls(code, estimator):
    """γ = 0.99 on a slow-mixing garnet: the module's answer equals plain iteration with
    dense values, and zeroes the expected update."""
    mdp = fastppo.garnet(8, 3, 2, gamma=0.99, seed=3, locality=2)
    t = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.3), kl_estimator=estimator, kl_penalty="loss")
    ref = mdp.uniform_policy()
    pi = flat(mdp, t.policy)
    np.testing.assert_allclose(pi, plain_iteration(mdp, ref, 0.3, code), rtol=0, atol=1e-10)
    assert t.converged and t.spread < 1e-10
    assert np.max(np.abs(dense_field(mdp, pi, ref, 0.3, 1.0, estimator, "loss"))) < 1e-10


def test_several_loss_fixed_points_are_reported():
    """k2 in the loss has several fixed points here: ``spread`` shows it, the target is the
    one the expected-update flow reaches from SampledPPO's start, and another start gives
    another genuine fixed point."""
    mdp = fastppo.garnet(20, 3, 2, gamma=0.99, seed=3, locality=2)
    reg = fastppo.ReverseKL(0.3)
    t = fastppo.sampled_target(mdp, reg, kl_estimator="k2", kl_penalty="loss", n_starts=6)
    assert t.spread > 0.5 and t.method == "flow+newton" and t.converged
    ref = mdp.uniform_policy()
    pi = flat(mdp, t.policy)
    assert np.max(np.abs(dense_field(mdp, pi, ref, 0.3, 1.0, "k2", "loss"))) < 1e-10
    rng = np.random.default_rng(0)
    others = []
    for _ in range(6):
        o = fastppo.sampled_target(mdp, reg, kl_estimator="k2", kl_penalty="loss", n_starts=1,
                                   init=2.0 * rng.normal(size=mdp.n_pairs))
        p = flat(mdp, o.policy)
        assert np.max(np.abs(dense_field(mdp, p, ref, 0.3, 1.0, "k2", "loss"))) < 1e-10
        others.append(np.max(0.5 * np.add.reduceat(np.abs(p - pi), mdp.a_indptr[:-1])))
    assert max(others) > 0.5


# ---------------------------------------------------------------- the scale c by simulation
@pytest.mark.parametrize("advantage, G", [("dr_grpo", 2), ("dr_grpo", 4), ("dr_grpo", 8),
                                          ("rloo", 4), ("reinforce", 1)])
def test_advantage_scale_by_simulation(advantage, G):
    """E[Â (e_a − π)] = c · π (r − Σπr), with Â from fastppo.group_advantages on sampled
    groups (noisy rewards): c = (G−1)/G for dr_grpo, 1 for rloo and reinforce."""
    rng = np.random.default_rng(G)
    pi, r = np.array([0.5, 0.3, 0.2]), np.array([1.0, 0.2, -0.5])
    n_groups = 200_000 // G
    a = rng.choice(3, size=n_groups * G, p=pi)
    returns = r[a] + rng.normal(scale=0.5, size=a.size)
    adv = fastppo.group_advantages(returns, G, advantage)
    per_sample = adv[:, None] * (np.eye(3)[a] - pi)
    expected = pi * (r - pi @ r)
    # per-group sums are independent: their spread gives the standard error
    groups = per_sample.reshape(n_groups, G, 3).sum(axis=1) / G
    est, se = groups.mean(axis=0), groups.std(axis=0) / np.sqrt(n_groups)
    c_hat = est @ expected / (expected @ expected)
    c = fastppo.advantage_scale(advantage, G)
    assert c == ((G - 1) / G if advantage == "dr_grpo" else 1.0)
    assert np.all(np.abs(est - c * expected) < 4.5 * se)
    assert abs(c_hat - c) < 0.03


@pytest.mark.parametrize("estimator, placement, advantage",
                         [("k1", "loss", "gae"), ("k2", "loss", "gae"), ("k3", "loss", "dr_grpo"),
                          ("k2", "reward", "gae"), ("k3", "reward", "dr_grpo"),
                          ("k1", "reward", "rloo")])
def test_expected_update_is_sampled_ppos_mean_step(estimator, placement, advantage):
    """SampledPPO's own first step (epochs = minibatches = 1, ratio 1, critic at 0) averaged
    over seeds equals lr · F of expected_update, on a bandit (one step per episode)."""
    mdp = bandit(R3)
    ref = REF3
    reg = fastppo.ReverseKL(0.5, ref=ref)
    theta = np.array([[0.3, -0.2, 0.1]])
    F = flat(mdp, fastppo.expected_update(mdp, fastppo.softmax(mdp, theta), reg, kl_estimator=estimator,
                                          kl_penalty=placement, advantage=advantage, group_size=4))
    steps = []
    for seed in range(40):
        ppo = fastppo.SampledPPO(mdp, reg, kl_estimator=estimator, kl_penalty=placement,
                                 advantage=advantage, group_size=4 if advantage != "gae" else None,
                                 epochs=1, minibatches=1, lr=1.0, n_envs=2048, init=theta,
                                 seed=seed, reference=False)
        ppo.step()
        steps.append(flat(mdp, ppo.logits) - flat(mdp, theta))
    steps = np.array(steps)
    mean, se = steps.mean(axis=0), steps.std(axis=0, ddof=1) / np.sqrt(len(steps))
    assert np.all(np.abs(mean - F) < 4.5 * se + 1e-12), (mean, F, se)
    if estimator == "k1" and placement == "loss":
        return
    assert np.max(np.abs(F)) > 10 * np.max(se)  # the test can tell a wrong F


# ---------------------------------------------------------------- metric, results, errors
def test_tv_distance_against_loops():
    mdp = fastppo.garnet(9, 3, 2, gamma=0.9, seed=6)
    rng = np.random.default_rng(7)
    pi = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    star = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    d = naive.visitation(mdp, pi)
    expect = 0.0
    for s in range(mdp.n_states):
        tv = sum(abs(pi[k] - star[k]) for k in range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])))
        expect += d[s] * 0.5 * tv
    assert fastppo.tv_distance(mdp, pi, star) == pytest.approx(expect, rel=1e-10)
    assert fastppo.tv_distance(mdp, pi, pi) == 0.0
    t = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.2), kl_estimator="k3", kl_penalty="loss")
    assert fastppo.tv_distance(mdp, t, t.policy) == 0.0
    sigma = mdp.to_sigma(star)
    assert 0.0 < fastppo.tv_distance(mdp, pi, sigma) <= 1.0


def test_result_fields():
    mdp = fastppo.garnet(8, 3, 2, gamma=0.9, seed=8)
    t = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), kl_estimator="k2", kl_penalty="loss",
                               advantage="dr_grpo", group_size=5)
    assert t.kind == "fixed point" and t.method == "iteration+newton" and t.divergence == "reverse-kl"
    assert t.kl_coef == 0.5 and t.scale == 0.8 and t.tau == pytest.approx(0.625)
    assert set(t.starts) == {"reference", "random 0", "optimum"} and t.stable is None
    assert t.policy.shape == (8, 3)
    opt = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5))
    assert opt.kind == "optimum" and opt.method == "solve" and opt.spread == 0.0
    np.testing.assert_allclose(opt.policy, fastppo.solve(mdp, fastppo.ReverseKL(0.5)).policy, atol=1e-10)
    assert opt.J_reg == pytest.approx(fastppo.solve(mdp, fastppo.ReverseKL(0.5)).J, rel=1e-12)
    # kl_coef overrides reg.tau; J_reg stays on reg
    t2 = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), kl_coef=0.2)
    np.testing.assert_allclose(t2.policy, fastppo.solve(mdp, fastppo.ReverseKL(0.2)).policy, atol=1e-10)
    assert t2.J_reg == pytest.approx(fastppo.evaluate(mdp, t2.policy, fastppo.ReverseKL(0.5)).J)
    # no regularizer: uniform π_ref, J_reg = J_plain
    t3 = fastppo.sampled_target(mdp, None, kl_coef=0.5, kl_estimator="k3", kl_penalty="loss")
    assert t3.J_reg == t3.J_plain
    # init is SampledPPO's start, reported first
    t4 = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), kl_estimator="k3", kl_penalty="loss",
                                init=np.zeros((8, 3)), n_starts=1)
    assert list(t4.starts) == ["init"]


def test_whiten_with_reward_keeps_the_target():
    mdp = fastppo.garnet(8, 3, 2, gamma=0.9, seed=8)
    a = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5))
    b = fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), whiten=True)
    np.testing.assert_array_equal(a.policy, b.policy)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(advantage="grpo"), NoTargetError, "group's standard deviation"),
    (dict(whiten=True, kl_penalty="loss", kl_estimator="k2"), NoTargetError, "batch standard deviation"),
    (dict(kl_estimator="k4"), ValueError, "kl_estimator"),
    (dict(kl_penalty="critic"), ValueError, "kl_penalty"),
    (dict(advantage="ppo"), ValueError, "advantage"),
    (dict(kl_coef=-1.0), ValueError, "kl_coef"),
    (dict(advantage="dr_grpo", group_size=1), ValueError, "group_size"),
    (dict(n_starts=0), ValueError, "n_starts"),
    (dict(init=np.zeros(5)), ValueError, "init"),
])
def test_errors(kwargs, exc, match):
    mdp = fastppo.garnet(6, 3, 2, gamma=0.9, seed=0)
    with pytest.raises(exc, match=match):
        fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), **kwargs)


def test_errors_reg_and_policy():
    mdp = fastppo.garnet(6, 3, 2, gamma=0.9, seed=0)
    with pytest.raises(TypeError, match="ReverseKL or None"):
        fastppo.sampled_target(mdp, fastppo.ForwardKL(0.5))
    with pytest.raises(ValueError, match="full support"):
        fastppo.expected_update(mdp, np.repeat(np.eye(3)[:1], 6, axis=0), fastppo.ReverseKL(0.5),
                                kl_estimator="k2", kl_penalty="loss")
    with pytest.raises(NoTargetError):
        fastppo.advantage_scale("grpo")
    assert issubclass(NoTargetError, ValueError)


# ---------------------------------------------------------------- SampledPPO lands on its own target
def averaged_run(mdp, reg, n_iter, n_avg, **kwargs):
    ppo = fastppo.SampledPPO(mdp, reg, seed=1, reference=False, **kwargs)
    avg = np.zeros(mdp.n_pairs)
    for i in range(n_iter):
        ppo.step()
        if i >= n_iter - n_avg:
            avg += ppo.pi / n_avg
    return avg


def check_lands_on_own_target(mdp, reg, own, targets, avg):
    dist = {v: fastppo.tv_distance(mdp, avg, t) for v, t in targets.items()}
    others = min(d for v, d in dist.items() if v != own)
    assert dist[own] < 0.005, dist
    assert dist[own] < 0.25 * others, dist


GARNET_VARIANTS = [("k1", "reward"), ("k2", "loss"), ("k3", "loss"), ("k1", "loss")]


@pytest.mark.slow
@pytest.mark.parametrize("variant", GARNET_VARIANTS[:3], ids=lambda v: "-".join(v))
def test_sampled_ppo_lands_on_its_target_garnet(variant):
    """10-state garnet, τ = 0.3: the policy averaged over iterations 100..300 is within
    0.005 (d-weighted TV) of its own target and 4x closer to it than to any other."""
    mdp, reg = fastppo.garnet(10, 3, 2, gamma=0.9, seed=0), fastppo.ReverseKL(0.3)
    targets = {v: fastppo.sampled_target(mdp, reg, kl_estimator=v[0], kl_penalty=v[1], n_starts=1)
               for v in GARNET_VARIANTS}
    avg = averaged_run(mdp, reg, 300, 200, kl_estimator=variant[0], kl_penalty=variant[1], lr=0.5)
    check_lands_on_own_target(mdp, reg, variant, targets, avg)


@pytest.mark.slow
@pytest.mark.parametrize("variant", [("k3", "reward"), ("k2", "reward")], ids=lambda v: "-".join(v))
def test_sampled_ppo_lands_on_its_target_reward_k2_k3(variant):
    """4-state 2-action MDP with an attracting fixed point for k2/k3 in the reward."""
    mdp, ref = two_action_mdp(4, 0, scale=0.05, gamma=0.5)
    reg = fastppo.ReverseKL(1.0, ref=ref)
    variants = [("k3", "reward"), ("k2", "reward"), ("k1", "reward"), ("k2", "loss"), ("k3", "loss")]
    targets = {v: fastppo.sampled_target(mdp, reg, kl_estimator=v[0], kl_penalty=v[1], n_starts=1)
               for v in variants}
    avg = averaged_run(mdp, reg, 300, 150, kl_estimator=variant[0], kl_penalty=variant[1], lr=0.2)
    check_lands_on_own_target(mdp, reg, variant, targets, avg)


@pytest.mark.slow
@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_sampled_ppo_collapses_where_there_is_no_target(estimator):
    """Uniform π_ref: k2/k3 in the reward have no target (NoTargetError), and SampledPPO
    indeed drives the 3-armed bandit to a deterministic policy, while k1 does not."""
    mdp, reg = bandit(R3), fastppo.ReverseKL(1.0)
    final = {}
    for est in ("k1", estimator):
        ppo = fastppo.SampledPPO(mdp, reg, kl_estimator=est, kl_penalty="reward", lr=0.1,
                                 n_envs=256, seed=0, reference=False)
        ppo.run(400)
        final[est] = ppo.pi
    assert final[estimator].max() > 0.999
    np.testing.assert_allclose(final["k1"], flat(mdp, fastppo.sampled_target(mdp, reg).policy), atol=0.02)


@pytest.mark.slow
def test_sampled_ppo_dr_grpo_lands_on_the_scaled_target():
    """dr_grpo (G = 8) with k2 in the loss lands on τ = β/c, c = 7/8, not on τ = β: the
    scale c inside SampledPPO itself. Horizon 80 (γ^80 ≈ 2e-4): the critic-free returns are
    cut at the horizon, and the default horizon (γ^T ≤ 0.01) visibly biases the result."""
    mdp, reg = fastppo.garnet(10, 3, 2, gamma=0.9, seed=0), fastppo.ReverseKL(0.3)
    own = fastppo.sampled_target(mdp, reg, kl_estimator="k2", kl_penalty="loss",
                                 advantage="dr_grpo", n_starts=1)
    unscaled = fastppo.sampled_target(mdp, reg, kl_estimator="k2", kl_penalty="loss", n_starts=1)
    assert own.tau == pytest.approx(0.3 * 8 / 7)
    avg = averaged_run(mdp, reg, 300, 200, kl_estimator="k2", kl_penalty="loss",
                       advantage="dr_grpo", lr=0.5, horizon=80)
    d_own, d_unscaled = fastppo.tv_distance(mdp, avg, own), fastppo.tv_distance(mdp, avg, unscaled)
    assert d_own < 0.005 and d_own < 0.5 * d_unscaled, (d_own, d_unscaled)


@pytest.mark.slow
def test_sampled_ppo_two_armed_bandit_lands_on_the_stable_root():
    """The docstring's example: r = (0.1, 0), π_ref = (0.2, 0.8), β = 1, k3 in the reward:
    of the stationary points 0.131, 0.341, 0.616 SampledPPO lands on the stable 0.341."""
    mdp, reg = bandit([0.1, 0.0]), fastppo.ReverseKL(1.0, ref=[[0.2, 0.8]])
    t = fastppo.sampled_target(mdp, reg, kl_estimator="k3", kl_penalty="reward", n_starts=1)
    ppo = fastppo.SampledPPO(mdp, reg, kl_estimator="k3", kl_penalty="reward", lr=0.5, seed=0,
                             reference=False)
    ppo.run(300)
    assert abs(ppo.pi[0] - t.policy[0, 0]) < 1e-3


# ---------------------------------------------------------------- entropy bonus, sequence level, rewards
def extended_terms(mdp, pi, ref, beta, m, alpha, estimator, placement):
    """Per pair, the quantity the fixed point makes constant over a state's actions with a
    per-pair advantage scale ``m`` (c·w(s), module §2) and an entropy bonus ``alpha`` (§6):
    m Q − β φ-term − α log π, from dense values (loops)."""
    n = mdp.n_pairs
    w = [pi[k] / ref[k] for k in range(n)]
    if placement == "loss":
        _, q = dense_values(mdp, pi, np.array(mdp.r, dtype=float))
        kl = {"k1": [0.0] * n, "k2": [-beta * math.log(x) for x in w],
              "k3": [beta / x for x in w]}[estimator]  # −β(1 − 1/w) up to a constant
    else:
        pen = [math.log(x) if estimator == "k1" else k_value(estimator, x) for x in w]
        _, q = dense_values(mdp, pi, np.array([mdp.r[k] - beta * pen[k] for k in range(n)]))
        kl = [0.0] * n
    return np.array([m[k] * q[k] + kl[k] - alpha * math.log(pi[k]) for k in range(n)])


def root_policy(mdp, terms, start):
    """Root of 'terms constant over each non-terminal state's actions' in gauge-fixed logits
    (scipy.optimize.root); terminal states keep ``start`` (SampledPPO never updates them)."""
    live = [s for s in range(mdp.n_states) if not mdp.terminal[s]]
    last = {s: int(mdp.a_indptr[s + 1]) - 1 for s in live}
    free = [k for s in live for k in range(int(mdp.a_indptr[s]), last[s])]
    theta0 = np.log(start).copy()

    def policy(y):
        theta = theta0.copy()
        theta[free] = y
        return naive.softmax(mdp, theta)

    def equations(y):
        t = terms(policy(y))
        return np.array([t[k] - t[last[int(mdp.s_indices[k])]] for k in free])

    y0 = np.array([theta0[k] - theta0[last[int(mdp.s_indices[k])]] for k in free])
    theta0[[last[s] for s in live]] = 0.0
    sol = root(equations, y0, method="hybr", tol=1e-14)
    assert np.max(np.abs(equations(sol.x))) < 1e-10, sol.message
    return policy(sol.x)


ENTROPY_CASES = [("k1", "loss", "gae"), ("k2", "loss", "dr_grpo"), ("k3", "loss", "gae"),
                 ("k3", "loss", "dr_grpo"), ("k1", "reward", "gae"), ("k1", "reward", "dr_grpo")]


@pytest.mark.parametrize("S, A, gamma, seed", SMALL[1:])
@pytest.mark.parametrize("estimator, placement, advantage", ENTROPY_CASES)
def test_entropy_bonus_targets_match_root_finding(S, A, gamma, seed, estimator, placement, advantage):
    """§6: with ent_coef = α every variant's target makes m Q − β φ − α log π constant."""
    mdp = fastppo.garnet(S, A, min(2, S), gamma=gamma, seed=seed)
    rng = np.random.default_rng(seed)
    ref = fastppo.softmax(mdp, 0.5 * rng.normal(size=mdp.n_pairs))
    beta, alpha = 0.4, 0.3
    reg = fastppo.ReverseKL(beta, ref=ref)
    t = fastppo.sampled_target(mdp, reg, kl_estimator=estimator, kl_penalty=placement,
                               advantage=advantage, group_size=3, ent_coef=alpha)
    c = 2 / 3 if advantage == "dr_grpo" else 1.0
    m = np.full(mdp.n_pairs, c)
    brute = root_policy(mdp, lambda p: extended_terms(mdp, p, ref, beta, m, alpha, estimator,
                                                      placement), ref)
    pi = flat(mdp, t.policy)
    np.testing.assert_allclose(pi, brute, rtol=0, atol=1e-10)
    assert t.kind == "fixed point" and t.ent_coef == alpha and t.converged and t.spread < 1e-10
    assert t.update_norm < 1e-10
    F = flat(mdp, fastppo.expected_update(mdp, t.policy, reg, kl_estimator=estimator,
                                          kl_penalty=placement, advantage=advantage,
                                          group_size=3, ent_coef=alpha))
    assert np.max(np.abs(F)) < 1e-10
    # and the bonus matters: without it the target moves
    t0 = fastppo.sampled_target(mdp, reg, kl_estimator=estimator, kl_penalty=placement,
                                advantage=advantage, group_size=3)
    assert np.max(np.abs(t0.policy - t.policy)) > 1e-3


def test_entropy_bonus_bandit_closed_forms():
    """k1 in the loss (or β = 0) with α: π = softmax(c r/α); k2 in the loss:
    π ∝ π_ref^{β/(β+α)} exp(c r/(β+α)); k1 in the reward: π ∝ π_ref^{cβ/(cβ+α)} exp(c r/(cβ+α))
    (γ = 0: Q = r)."""
    mdp, beta, alpha, ref = bandit(R3), 0.7, 0.4, REF3[0]
    r = np.array(R3)
    reg = fastppo.ReverseKL(beta, ref=REF3)

    def softmax(z):
        return np.exp(z - z.max()) / np.exp(z - z.max()).sum()

    for advantage, c in [("gae", 1.0), ("dr_grpo", 0.75)]:
        kw = dict(advantage=advantage, group_size=4, ent_coef=alpha)
        got = {(e, p): flat(mdp, fastppo.sampled_target(mdp, reg, kl_estimator=e, kl_penalty=p,
                                                        **kw).policy)
               for e, p in [("k1", "loss"), ("k2", "loss"), ("k1", "reward")]}
        np.testing.assert_allclose(got["k1", "loss"], softmax(c * r / alpha), atol=1e-13)
        np.testing.assert_allclose(got["k2", "loss"],
                                   softmax(beta / (beta + alpha) * np.log(ref) + c * r / (beta + alpha)),
                                   atol=1e-13)
        b = c * beta + alpha
        np.testing.assert_allclose(got["k1", "reward"],
                                   softmax(c * beta / b * np.log(ref) + c * r / b), atol=1e-13)


def test_entropy_bonus_k3_loss_bandit_by_nested_roots():
    """k3 in the loss with α (no closed form, §6): for each ν solve
    c r_a + β ref_a/p − α(log p + 1) = ν for p_a by brentq, then Σ p = 1 for ν."""
    mdp, beta, alpha, ref = bandit(R3), 0.7, 0.4, REF3[0]
    r = np.array(R3)

    def p_of(nu):  # in u = log p: r + β ref e^{−u} − α(u + 1) − ν, decreasing in u
        return np.exp([brentq(lambda u: r[a] + beta * ref[a] * math.exp(-u) - alpha * (u + 1) - nu,
                              -700.0, 230.0, xtol=1e-15, rtol=1e-15) for a in range(3)])

    nu = brentq(lambda nu: p_of(nu).sum() - 1.0, -20.0, 20.0, xtol=1e-15, rtol=1e-15)
    t = fastppo.sampled_target(mdp, fastppo.ReverseKL(beta, ref=REF3), kl_estimator="k3",
                               kl_penalty="loss", ent_coef=alpha)
    assert t.divergence == "forward-kl+entropy"
    np.testing.assert_allclose(flat(mdp, t.policy), p_of(nu), atol=1e-12)


@pytest.mark.parametrize("estimator", ["k2", "k3"])
def test_reward_k2_k3_with_entropy_bonus(estimator):
    """§5 with §6: an attracting fixed point with α, by root-finding; the bonus also gives a
    uniform π_ref a target where α is large enough to make Φ_s concave."""
    mdp, ref_table = two_action_mdp(4, 0, scale=0.05, gamma=0.5)
    ref = flat(mdp, ref_table)
    beta, alpha = 1.0, 0.1
    t = fastppo.sampled_target(mdp, fastppo.ReverseKL(beta, ref=ref_table), kl_estimator=estimator,
                               kl_penalty="reward", ent_coef=alpha, n_starts=1)
    pi = flat(mdp, t.policy)
    assert t.stable and t.residual <= 1e-12
    m = np.ones(mdp.n_pairs)
    brute = root_policy(mdp, lambda p: extended_terms(mdp, p, ref, beta, m, alpha, estimator,
                                                      "reward"), pi)
    np.testing.assert_allclose(pi, brute, atol=1e-10)
    # a 3-armed bandit with uniform π_ref: no target at α = 0, a stable interior one at α = 3
    # (the vertices still attract: near them k2, k3 outgrow the bonus's −α log π)
    with pytest.raises(NoTargetError):
        fastppo.sampled_target(bandit(R3), fastppo.ReverseKL(1.0), kl_estimator=estimator,
                               kl_penalty="reward")
    t = fastppo.sampled_target(bandit(R3), fastppo.ReverseKL(1.0), kl_estimator=estimator,
                               kl_penalty="reward", ent_coef=3.0, n_starts=1)
    terms = extended_terms(bandit(R3), flat(bandit(R3), t.policy), np.full(3, 1 / 3), 1.0,
                           np.ones(3), 3.0, estimator, "reward")
    assert t.stable and np.ptp(terms) < 1e-10


def token_task(gamma, seed=0):
    task = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=2, gamma=gamma, seed=seed)
    return task, fastppo.ReverseKL(0.5, ref=task.ref)


def test_depths_of_a_token_mdp_and_of_a_garnet():
    task, _ = token_task(0.9)
    t = fastppo.targets.depths(task.mdp)
    lengths = [len(task.decode(s)[1]) for s in range(task.end)]
    assert t[:task.end].tolist() == lengths and t[task.end] == -1  # END is terminal
    assert fastppo.targets.depths(fastppo.garnet(8, 2, 2, seed=0)) is None  # cycles
    tree = fastppo.MDP.from_dense(np.array([[[0, 1, 0, 0]], [[0, 0, 0, 1]], [[0, 0, 0, 1]],
                                            [[0, 0, 0, 1]]], float), np.ones((4, 1)), 0.9,
                                  rho=[0.5, 0, 0.5, 0])
    assert fastppo.targets.depths(tree) is None  # state 2 at depth 0 (start), ... ; 3 at 1 and 2


@pytest.mark.parametrize("estimator, alpha", [("k2", 0.0), ("k3", 0.0), ("k1", 0.2), ("k3", 0.2)])
def test_sequence_level_targets_on_a_token_mdp(estimator, alpha):
    """§2: sequence-level dr_grpo with the KL in the loss weighs state s by c γ^t(s),
    t(s) the prefix length: the target makes c γ^t Q − β φ − α log π constant."""
    gamma = 0.8
    task, reg = token_task(gamma)
    mdp, ref = task.mdp, task.ref
    kw = dict(kl_estimator=estimator, kl_penalty="loss", advantage="dr_grpo", group_size=4,
              ent_coef=alpha)
    seq = fastppo.sampled_target(mdp, reg, advantage_level="sequence", **kw)
    step = fastppo.sampled_target(mdp, reg, advantage_level="step", **kw)
    assert seq.advantage_level == "sequence" and "gamma^t(s)" in seq.objective
    depth = np.array([len(task.decode(s)[1]) if s < task.end else 0 for s in range(mdp.n_states)])
    m = 0.75 * gamma ** depth[mdp.s_indices]
    brute = root_policy(mdp, lambda p: extended_terms(mdp, p, ref, 0.5, m, alpha, estimator,
                                                      "loss"), ref)
    np.testing.assert_allclose(flat(mdp, seq.policy), brute, atol=1e-10)
    assert seq.converged and seq.update_norm < 1e-10
    assert np.max(np.abs(seq.policy - step.policy)) > 1e-3  # the weights matter
    # without a loss term the level does not move the target (k1 in the reward)
    a = fastppo.sampled_target(mdp, reg, advantage="dr_grpo", advantage_level="sequence")
    b = fastppo.sampled_target(mdp, reg, advantage="dr_grpo", advantage_level="step")
    np.testing.assert_array_equal(a.policy, b.policy)


@pytest.mark.parametrize("estimator, placement, advantage, level, alpha", [
    ("k2", "loss", "dr_grpo", "sequence", 0.0), ("k1", "reward", "rloo", "sequence", 0.2),
    ("k3", "loss", "gae", "step", 0.2)])
def test_expected_update_is_sampled_ppos_mean_step_on_a_token_mdp(estimator, placement,
                                                                 advantage, level, alpha):
    """SampledPPO's first step (epochs = minibatches = 1, critic at 0: gae with λ = 1 is
    then the return) averaged over seeds is lr · F of expected_update, the sequence-level
    weights γ^t(s) and the entropy bonus included, on a token MDP (γ = 0.8, depths 0-2)."""
    task = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=1, gamma=0.8, seed=2)
    mdp = task.mdp
    reg = fastppo.ReverseKL(0.5, ref=task.ref)
    theta = np.random.default_rng(0).normal(scale=0.5, size=mdp.n_pairs)
    kw = dict(kl_estimator=estimator, kl_penalty=placement, advantage=advantage,
              advantage_level=level, ent_coef=alpha)
    group = dict(group_size=4) if advantage != "gae" else {}
    F = fastppo.expected_update(mdp, fastppo.softmax(mdp, theta), reg, **kw, **group)
    steps = []
    for seed in range(40):
        ppo = fastppo.SampledPPO(mdp, reg, epochs=1, minibatches=1, lr=1.0, n_envs=2048,
                                 init=theta, seed=seed, reference=False, gae_lambda=1.0,
                                 **kw, **group)
        ppo.step()
        steps.append(ppo.logits - theta)
    steps = np.array(steps)
    live = ~mdp.terminal[mdp.s_indices]
    mean, se = steps.mean(axis=0), steps.std(axis=0, ddof=1) / np.sqrt(len(steps))
    assert np.all(np.abs(mean - F)[live] < 4.5 * se[live] + 1e-12), (mean - F, se)
    assert np.max(np.abs(F)) > 10 * np.max(se)  # the test can tell a wrong F
    if level == "sequence" and placement == "loss":  # and a wrong weighting
        F_step = fastppo.expected_update(mdp, fastppo.softmax(mdp, theta), reg,
                                         **{**kw, "advantage_level": "step"}, **group)
        assert np.max(np.abs(mean - F_step)[live] / (se[live] + 1e-12)) > 6


def test_reward_clip_target_is_the_clipped_mdps():
    mdp = fastppo.garnet(8, 3, 2, gamma=0.9, seed=8)
    lo, hi = np.quantile(mdp.r, [0.2, 0.8])
    clipped = fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data,
                          np.clip(mdp.r, lo, hi), mdp.gamma, mdp.rho)
    reg = fastppo.ReverseKL(0.3)
    for kw in (dict(), dict(kl_estimator="k3", kl_penalty="loss")):
        t = fastppo.sampled_target(mdp, reg, reward_clip=(lo, hi), **kw)
        ref = fastppo.sampled_target(clipped, reg, **kw)
        np.testing.assert_allclose(t.policy, ref.policy, atol=1e-12)
        assert t.reward_clip == (lo, hi) and "clipped" in t.objective
        # the objectives are reported on the MDP's own rewards
        assert t.J_reg == pytest.approx(fastppo.evaluate(mdp, t.policy, reg).J, rel=1e-10)
    wide = fastppo.sampled_target(mdp, reg, reward_clip=10.0)
    assert wide.reward_clip is None and wide.kind == "optimum"


@pytest.mark.parametrize("kwargs, match", [
    (dict(reward_norm=True), "reward_norm=True has no fixed target"),
    (dict(whiten=True, ent_coef=0.1), "batch standard deviation"),
    (dict(advantage="dr_grpo", advantage_level="sequence", kl_estimator="k2", kl_penalty="loss"),
     "several depths"),
    (dict(advantage="rloo", advantage_level="sequence", ent_coef=0.1), "several depths"),
])
def test_no_target_cases(kwargs, match):
    mdp = fastppo.garnet(6, 3, 2, gamma=0.9, seed=0)
    with pytest.raises(NoTargetError, match=match):
        fastppo.sampled_target(mdp, fastppo.ReverseKL(0.5), **kwargs)


def test_new_setting_errors():
    mdp = fastppo.garnet(6, 3, 2, gamma=0.9, seed=0)
    reg = fastppo.ReverseKL(0.5)
    with pytest.raises(ValueError, match="advantage_level='sequence' applies to the critic-free"):
        fastppo.sampled_target(mdp, reg, advantage_level="sequence")
    with pytest.raises(ValueError, match="advantage_level must be one of"):
        fastppo.sampled_target(mdp, reg, advantage="rloo", advantage_level="token")
    with pytest.raises(ValueError, match="ent_coef must be >= 0"):
        fastppo.sampled_target(mdp, reg, ent_coef=-1.0)
    with pytest.raises(ValueError, match=r"reward_clip must have low < high"):
        fastppo.sampled_target(mdp, reg, reward_clip=(1.0, -1.0))
    with pytest.raises(ValueError, match="reward_clip must be > 0"):
        fastppo.sampled_target(mdp, reg, reward_clip=0.0)
    # sequence-level rloo without a loss term: the same target as per step, on any MDP
    a = fastppo.sampled_target(mdp, reg, advantage="rloo", advantage_level="sequence")
    np.testing.assert_array_equal(a.policy, fastppo.sampled_target(mdp, reg, advantage="rloo").policy)


def test_tv_distance_weighs_the_non_terminal_states():
    """On an episodic MDP the visitation is taken on the non-terminal states, renormalised
    (the absorbing state would otherwise carry almost all of d at γ near 1)."""
    task = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=2, gamma=0.999, seed=0)
    mdp = task.mdp
    rng = np.random.default_rng(1)
    pi = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    star = fastppo.softmax(mdp, rng.normal(size=mdp.n_pairs))
    d = naive.visitation(mdp, pi)
    live = [s for s in range(mdp.n_states) if not mdp.terminal[s]]
    total = sum(d[s] for s in live)
    expect = sum(d[s] / total * 0.5 * sum(abs(pi[k] - star[k]) for k in range(int(mdp.a_indptr[s]),
                                                                            int(mdp.a_indptr[s + 1])))
                 for s in live)
    assert fastppo.tv_distance(mdp, pi, star) == pytest.approx(expect, rel=1e-9)
    assert d[task.end] > 0.99  # what the renormalisation removes


def test_terminal_policy_does_not_enter_the_reward_kl():
    """SampledPPO samples no KL in terminal states (its episodes end there): the k1-in-reward
    update and target do not depend on the policy there (evaluate() with the regularizer
    would charge τ KL per step in the absorbing state)."""
    task = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=1, gamma=0.8, seed=2)
    mdp, reg = task.mdp, fastppo.ReverseKL(0.5, ref=task.ref)
    theta = np.random.default_rng(0).normal(scale=0.5, size=mdp.n_pairs)
    term = mdp.terminal[mdp.s_indices]
    other = np.where(term, np.random.default_rng(1).normal(size=mdp.n_pairs), theta)
    F = fastppo.expected_update(mdp, fastppo.softmax(mdp, theta), reg)
    G = fastppo.expected_update(mdp, fastppo.softmax(mdp, other), reg)
    np.testing.assert_allclose(F, G, atol=1e-12)
    # and it is the update on the rewards r − β log(π/π_ref) outside the terminal states
    pi = fastppo.softmax(mdp, theta)
    ref = np.asarray(task.ref)
    r = np.where(term, mdp.r, mdp.r - 0.5 * np.log(pi / ref))
    shifted = fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data, r,
                          mdp.gamma, mdp.rho)
    x = mdp.to_pairs(fastppo.evaluate(shifted, pi).adv)  # the state's own KL sample included
    mean = np.add.reduceat(pi * x, mdp.a_indptr[:-1])
    expect = np.where(term, 0.0, pi * (x - mean[mdp.s_indices]))
    np.testing.assert_allclose(F, expect, atol=1e-10)
