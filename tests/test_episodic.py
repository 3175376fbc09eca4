"""gamma = 1 (episodic MDPs): the DAG check, the topological order, the one-pass kernels
(against dense solves, across backends, by their properties and by simulation), and the
entry points at gamma = 1 (evaluate, visitation, gradient, solve, PPOClip, SoftmaxPG,
SampledPPO) against dense solves on the non-terminal states, and the two that still refuse it."""
import numpy as np
import pytest
import scipy.sparse as sp

import fastppo
from fastppo import _validation as V
from fastppo._backend import get_kernel

import naive
from conftest import BACKENDS, random_policy


def random_dag(seed, n_live=10, n_terminal=2, n_actions=3, gamma=1.0, rectangular=True,
               permute=True, density=0.4):
    """A random MDP whose ``n_live`` non-terminal states form a DAG (ranked 0..n_live-1,
    successors of higher rank or terminal), plus ``n_terminal`` absorbing zero-reward
    states; labels randomly permuted unless ``permute=False``."""
    rng = np.random.default_rng(seed)
    S = n_live + n_terminal
    label = rng.permutation(S) if permute else np.arange(S)
    s_idx, a_idx, rows, R = [], [], [], []
    for rank in range(S):
        labels = (np.arange(n_actions) if rectangular
                  else np.sort(rng.choice(2 * n_actions, rng.integers(1, n_actions + 1), replace=False)))
        for a in labels:
            p = np.zeros(S)
            if rank >= n_live:  # terminal: a self-loop, reward 0
                p[label[rank]] = 1.0
                R.append(0.0)
            else:
                later = np.arange(rank + 1, S)
                keep = later[rng.random(later.size) < density]
                if keep.size == 0:
                    keep = rng.choice(later, 1)
                p[label[keep]] = rng.random(keep.size) + 0.05
                R.append(rng.normal())
            rows.append(p / p.sum())
            s_idx.append(label[rank])
            a_idx.append(a)
    rho = np.zeros(S)
    rho[label[:n_live]] = rng.random(n_live) + 0.1
    return fastppo.MDP.from_sa_pairs(s_idx, a_idx, np.array(rows), R, gamma, rho / rho.sum())


def dags():
    return [random_dag(0), random_dag(1, rectangular=False, n_live=14, n_terminal=1),
            random_dag(2, permute=False, density=0.2), random_dag(3, n_live=1, n_terminal=1),
            fastppo.token_mdp(3, 3, 2, seed=0).mdp]


def kernel_args(mdp, pi):
    return (mdp.topological_order, mdp.terminal.view(np.uint8), mdp.a_indptr, mdp.p_indptr,
            mdp.p_indices, mdp.p_data, pi)


def episodic(mdp, pi, reg, backend, gamma=None, mu=None):
    """(v, n, c) through the kernels, c = r_π − τ D_f(π) from tests/naive.py."""
    gamma = mdp.gamma if gamma is None else gamma
    _, _, tau = naive.spec(reg)
    c = naive.r_pi(mdp, pi) - tau * naive.divergence(mdp, pi, reg)
    v, n = np.empty(mdp.n_states), np.empty(mdp.n_states)
    get_kernel("episodic_values", backend)(*kernel_args(mdp, pi), gamma, c, v, 1)
    get_kernel("episodic_visits", backend)(*kernel_args(mdp, pi), gamma,
                                           mdp.rho if mu is None else mu, n, 1)
    return v, n, c


# ------------------------------------------------------------------ the DAG check
def test_gamma_one_accepted_on_dags():
    for mdp in dags():
        assert mdp.gamma == 1.0
        order = mdp.topological_order
        assert order.dtype == np.int32 and not order.flags.writeable
        assert sorted(order) == list(np.flatnonzero(~mdp.terminal))
    assert fastppo.token_tree(3, 3, gamma=1.0).gamma == 1.0  # leaves absorb: episodic


def assert_topological(mdp, order):
    """Every positive-probability transition between non-terminal states goes forward."""
    _, P, _ = naive.dense(mdp)
    term = naive.terminal_states(mdp)
    assert sorted(order) == list(np.flatnonzero(~term))
    position = {int(s): i for i, s in enumerate(order)}
    for s in np.flatnonzero(~term):
        for k in range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])):
            for t in np.flatnonzero(P[k] > 0):
                if not term[t]:
                    assert position[int(t)] > position[int(s)], (s, t)


def test_topological_order_is_topological():
    for mdp in dags():
        assert_topological(mdp, mdp.topological_order)


def test_order_is_the_identity_when_the_numbering_is_topological():
    np.testing.assert_array_equal(random_dag(2, permute=False).topological_order, np.arange(10))
    task = fastppo.token_mdp(4, 3, 3, seed=1)
    np.testing.assert_array_equal(task.mdp.topological_order, np.arange(task.end))


@pytest.mark.parametrize("seed", range(6))
def test_kahn_fallback_matches_the_definition(seed):
    mdp = random_dag(seed, n_live=30, n_terminal=3, density=0.15)
    term = mdp.terminal
    src = mdp.s_indices.repeat(np.diff(mdp.p_indptr))
    keep = ~term[src] & ~term[mdp.p_indices]
    graph = sp.csr_array((np.ones(keep.sum()), (src[keep], mdp.p_indices[keep])),
                         shape=(mdp.n_states,) * 2)
    assert_topological(mdp, V.kahn_order(graph, np.flatnonzero(~term).astype(np.int32)))


def test_deep_chain_numbered_backwards():
    """A chain s → s-1 → ... → 0 → END: SciPy's components give the order in one pass."""
    S = 2000
    rows = np.arange(S + 1)
    cols = np.r_[S, np.arange(S - 1), S]  # state 0 → END (= S), s → s - 1, END → END
    P = sp.csr_array((np.ones(S + 1), (rows, cols)), shape=(S + 1, S + 1))
    r = np.r_[np.ones(S), 0.0]
    mdp = fastppo.MDP.from_sa_pairs(rows, np.zeros(S + 1), P, r, 1.0, n_states=S + 1)
    np.testing.assert_array_equal(mdp.topological_order, np.arange(S - 1, -1, -1))
    v = np.empty(S + 1)
    pi = np.ones(S + 1)
    get_kernel("episodic_values", "numba")(*kernel_args(mdp, pi), 1.0, r, v, 1)
    np.testing.assert_array_equal(v, np.r_[np.arange(1, S + 1), 0.0])  # s + 1 steps to END


CYCLES = [
    # (P rows by pair for states 0..2 (2 terminal), expected message)
    ([[0, 1, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]], r"state 0 lies on a cycle \(strongly connected states: 0, 1; 2 in all\)"),
    ([[0, 0, 1], [0, 1, 0], [0, 0, 1], [0, 0, 1]], r"state 1 lies on a cycle: pair \(s=1, a=0\) returns to it with probability 1\.0"),
    ([[0, 0.5, 0.5], [0.5, 0, 0.5], [0, 0, 1], [0, 0, 1]], r"state 0 lies on a cycle \(strongly connected"),
]


@pytest.mark.parametrize("rows, match", CYCLES)
def test_gamma_one_rejects_cycles_naming_a_state(rows, match):
    # states 0, 1, 2; pairs (0,0), (1,0), (1,1), (2,0); state 2 terminal
    s, a = [0, 1, 1, 2], [0, 0, 1, 0]
    r = [1.0, 1.0, 1.0, 0.0]
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\), got 1\.0: gamma = 1 needs an "
                                         r"episodic MDP in which every policy terminates, but " + match):
        fastppo.MDP.from_sa_pairs(s, a, np.array(rows, dtype=float), r, 1.0, n_states=3)
    mdp = fastppo.MDP.from_sa_pairs(s, a, np.array(rows, dtype=float), r, 0.9, n_states=3)
    with pytest.raises(ValueError, match=match):
        mdp.topological_order


def test_cycle_message_lists_a_long_cycle():
    S = 9  # 0 → 1 → ... → 7 → 0, and 8 terminal
    rows = np.arange(S)
    cols = np.r_[(np.arange(8) + 1) % 8, 8]
    P = sp.csr_array((np.ones(S), (rows, cols)), shape=(S, S))
    with pytest.raises(ValueError, match=r"state 0 lies on a cycle \(strongly connected states: "
                                         r"0, 1, 2, 3, 4, 5, \.\.\.; 8 in all\)"):
        fastppo.MDP.from_sa_pairs(rows, np.zeros(S), P, np.r_[np.ones(8), 0.0], 1.0, n_states=S)


def test_non_terminal_self_loops_are_cycles():
    # an absorbing state that pays a reward is not terminal: at gamma = 1 its value is infinite
    with pytest.raises(ValueError, match=r"state 1 lies on a cycle: pair \(s=1, a=0\)"):
        fastppo.MDP.from_dense([[[0, 1], [0, 1]], [[0, 1], [0, 1]]], [[0, 0], [1, 0]], 1.0)
    # ... as is a terminal-looking state with one action that leaves
    with pytest.raises(ValueError, match=r"state 0 lies on a cycle: pair \(s=0, a=0\)"):
        fastppo.MDP.from_dense([[[1, 0], [0, 1]], [[0, 1], [0, 1]]], [[0, 0], [0, 0]], 1.0)


def test_zero_probability_transitions_are_not_cycles():
    # canonical arrays with an explicit 0 from state 1 back to state 0
    mdp = fastppo.MDP(a_indptr=[0, 1, 2, 3], a_indices=[0, 0, 0], p_indptr=[0, 1, 3, 4],
                      p_indices=[1, 0, 2, 2], p_data=[1.0, 0.0, 1.0, 1.0], r=[1.0, 2.0, 0.0],
                      gamma=1.0)
    np.testing.assert_array_equal(mdp.topological_order, [0, 1])


def test_generators_with_cycles_reject_gamma_one():
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\), got 1\.0: .* lies on a cycle"):
        fastppo.garnet(10, 2, 2, gamma=1.0, seed=0)
    with pytest.raises(ValueError, match=r"got 1\.0: .* lies on a cycle"):
        fastppo.gridworld(3, 3, gamma=1.0)
    with pytest.raises(ValueError, match=r"gamma must be in \[0, 1\), got 1\.5 \(or 1 for an episodic"):
        fastppo.token_mdp(2, 2, gamma=1.5)


def test_save_load_keeps_gamma_one(tmp_path):
    mdp = random_dag(0)
    mdp.save(tmp_path / "m.npz")
    back = fastppo.MDP.load(tmp_path / "m.npz")
    assert back == mdp and back.gamma == 1.0


# ------------------------------------------------------------------ the kernels
REGS = [None, fastppo.ReverseKL(0.3), fastppo.ForwardKL(0.2), fastppo.JensenShannon(0.5)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg", REGS, ids=lambda r: repr(r))
def test_kernels_match_dense_solves(backend, reg):
    for i, mdp in enumerate(dags()):
        pi, _ = random_policy(mdp, i, sharp=1.5)
        v, n, _ = episodic(mdp, pi, reg, backend)
        v_ref, n_ref = naive.episodic(mdp, pi, reg)
        assert naive.rel_err(v, v_ref) <= 1e-12, i
        assert naive.rel_err(n, n_ref) <= 1e-12, i


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_with_a_deterministic_policy_and_a_start_distribution(backend):
    rng = np.random.default_rng(5)
    for mdp in dags():
        pi = np.zeros(mdp.n_pairs)
        pi[mdp.a_indptr[:-1] + rng.integers(0, np.diff(mdp.a_indptr))] = 1.0
        mu = rng.random(mdp.n_states)
        mu /= mu.sum()
        v, n, _ = episodic(mdp, pi, None, backend, mu=mu)
        v_ref, n_ref = naive.episodic(mdp, pi, mu=mu)
        assert naive.rel_err(v, v_ref) <= 1e-12
        assert naive.rel_err(n, n_ref) <= 1e-12


def test_backends_agree_on_a_token_mdp():
    task = fastppo.token_mdp(5, 4, 3, seed=2)
    pi = task.ref
    reg = fastppo.ReverseKL(0.1, ref=task.ref)
    out = {b: episodic(task.mdp, fastppo.softmax(task.mdp, np.log(pi) + 0.3), reg, b)
           for b in BACKENDS}
    for b in ("cython", "numpy"):
        for x, y in zip(out[b][:2], out["numba"][:2]):
            assert naive.rel_err(x, y) <= 1e-13, b


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernel_properties(backend):
    for i, mdp in enumerate(dags()):
        pi, _ = random_policy(mdp, 10 + i)
        reg = fastppo.ReverseKL(0.4)
        v, n, c = episodic(mdp, pi, reg, backend)
        live = ~mdp.terminal
        # v = r_π − τ D_f(π) + P_π v on the non-terminal states, 0 on terminal ones
        P_pi = naive.P_pi(mdp, pi)
        np.testing.assert_allclose((c + P_pi @ v)[live], v[live], rtol=1e-13, atol=1e-13)
        assert (v[~live] == 0).all() and (n[~live] == 0).all()
        # n = μ + P_πᵀ n on the non-terminal states: the expected visits, n ≥ μ
        np.testing.assert_allclose((mdp.rho + P_pi.T @ n)[live], n[live], rtol=1e-13, atol=1e-13)
        assert (n >= mdp.rho * live - 1e-15).all()
        # Σ n = expected episode length = μᵀ (I − P_π)⁻¹ 1, by the values of a unit step cost
        steps = np.empty(mdp.n_states)
        get_kernel("episodic_values", backend)(*kernel_args(mdp, pi), 1.0,
                                               np.ones(mdp.n_states), steps, 1)
        assert abs(n.sum() - mdp.rho @ steps) <= 1e-12 * n.sum()
        # J = ρᵀ v = Σ_s n(s) c(s): values and visits are dual
        assert abs(mdp.rho @ v - n[live] @ c[live]) <= 1e-12 * max(1.0, abs(mdp.rho @ v))
        # d = n / Σ n is a distribution over the non-terminal states
        d = n / n.sum()
        assert abs(d.sum() - 1.0) <= 1e-14 and (d[~live] == 0).all()


def test_episode_length_and_visits_by_simulation():
    """n(s) is the mean number of visits per episode and Σ n the mean episode length."""
    task = fastppo.token_mdp(3, 4, 2, seed=4)
    mdp = task.mdp
    _, n, _ = episodic(mdp, task.ref, None, "numba")
    traj = fastppo.rollout(mdp, task.ref, 40_000, task.max_len, seed=0)
    assert not traj.truncated.any() and traj.terminated.sum() == 40_000
    counts = np.bincount(traj.states[traj.mask], minlength=mdp.n_states) / 40_000
    se = np.sqrt(n * (1 - np.minimum(n, 1)) / 40_000)  # each prefix is visited at most once
    assert (np.abs(counts - n) <= 5 * se + 5 / 40_000).all()  # (+ 5 counts for rare prefixes)
    length = traj.length
    assert abs(length.mean() - n.sum()) <= 5 * length.std() / np.sqrt(40_000)


def test_discounted_episodic_kernels_match_evaluate_and_visitation():
    """At gamma < 1 the kernels agree with the Krylov solvers (another algorithm): v
    everywhere, and the visitation d = (1 − γ) n on the non-terminal states."""
    for i, mdp0 in enumerate(dags()):
        mdp = fastppo.MDP(mdp0.a_indptr, mdp0.a_indices, mdp0.p_indptr, mdp0.p_indices,
                          mdp0.p_data, mdp0.r, 0.95, mdp0.rho)
        pi, _ = random_policy(mdp, 20 + i)
        v, n, _ = episodic(mdp, pi, None, "cython")
        ev = fastppo.evaluate(mdp, pi)
        assert naive.rel_err(v, ev.v) <= 1e-10
        d = fastppo.visitation(mdp, pi)
        live = ~mdp.terminal
        assert naive.rel_err((1 - 0.95) * n[live], d[live]) <= 1e-10


# ------------------------------------------------------------------ the entry points
def dense_q(mdp, v):
    """(q, adv-free) q = r + P v per pair by loops over the dense P (γ = 1)."""
    _, P, r = naive.dense(mdp)
    return np.array([r[k] + sum(P[k, t] * v[t] for t in range(mdp.n_states))
                     for k in range(mdp.n_pairs)])


def dense_adv(mdp, pi, q):
    adv = np.empty(mdp.n_pairs)
    for s in range(mdp.n_states):
        ks = range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1]))
        mean = sum(pi[k] * q[k] for k in ks)
        for k in ks:
            adv[k] = q[k] - mean
    return adv


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg", REGS, ids=lambda r: repr(r))
def test_evaluate_and_visitation_match_dense_solves(backend, reg):
    """evaluate / visitation at γ = 1 against np.linalg.solve on I − P_π restricted to the
    non-terminal states (tests/naive.py): v, q, adv, J; n, the length L = Σ n, d = n / L."""
    for i, mdp in enumerate(dags()):
        pi, _ = random_policy(mdp, 30 + i, sharp=1.5)
        v_ref, n_ref = naive.episodic(mdp, pi, reg)
        ev = fastppo.evaluate(mdp, pi, reg, backend=backend)
        assert ev.method == "topological" and ev.residual <= 1e-13
        assert naive.rel_err(ev.v, v_ref) <= 1e-12, i
        q = dense_q(mdp, v_ref)
        assert naive.rel_err(ev.q, q) <= 1e-12, i
        assert naive.rel_err(ev.adv, dense_adv(mdp, pi, q), scale=np.abs(q).max()) <= 1e-12, i
        assert ev.J == pytest.approx(float(mdp.rho @ v_ref), rel=1e-12, abs=1e-14)
        vis = fastppo.visitation(mdp, pi, backend=backend, full_output=True)
        assert naive.rel_err(vis.visits, n_ref) <= 1e-12, i
        assert vis.length == pytest.approx(n_ref.sum(), rel=1e-13)
        np.testing.assert_allclose(vis.d, n_ref / n_ref.sum(), rtol=1e-12, atol=1e-15)
        np.testing.assert_array_equal(fastppo.visitation(mdp, pi, backend=backend), vis.d)
        mu = np.random.default_rng(i).random(mdp.n_states)
        mu /= mu.sum()
        _, n_mu = naive.episodic(mdp, pi, reg, mu=mu)
        d_mu = fastppo.visitation(mdp, pi, mu, backend=backend)
        np.testing.assert_allclose(d_mu, n_mu / n_mu.sum(), rtol=1e-12, atol=1e-15)


def test_visitation_needs_a_start_off_the_terminal_states():
    mdp = random_dag(0)
    mu = mdp.terminal / mdp.terminal.sum()
    with pytest.raises(ValueError, match="all its mass on terminal states"):
        fastppo.visitation(mdp, mdp.uniform_policy(), mu)


def _fd_episodic_gradient(mdp, logits, reg, mu, h=1e-5):
    def J(theta):
        v, _ = naive.episodic(mdp, naive.softmax(mdp, theta), reg)
        return float(mu @ v)

    g = np.empty(mdp.n_pairs)
    for k in range(mdp.n_pairs):
        up, dn = logits.copy(), logits.copy()
        up[k] += h
        dn[k] -= h
        g[k] = (J(up) - J(dn)) / (2 * h)
    return g


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("reg", [None, fastppo.ReverseKL(0.3), fastppo.ForwardKL(0.2)],
                         ids=lambda r: repr(r))
def test_gradient_matches_finite_differences(backend, reg):
    """∂Ṽ(μ)/∂θ = n(s) π [Ã − τ(f' − Σ π f')] at γ = 1, against central differences of
    μᵀ v by dense solves; zero in terminal states."""
    for i, mdp in enumerate(dags()[:3] + dags()[4:]):
        rng = np.random.default_rng(40 + i)
        logits = rng.normal(size=mdp.n_pairs)
        mu = rng.random(mdp.n_states)
        mu /= mu.sum()
        g = fastppo.gradient(mdp, logits, reg, mu, backend=backend)
        fd = _fd_episodic_gradient(mdp, logits, reg, mu)
        assert naive.rel_err(g, fd) <= 1e-7, i
        assert (g[mdp.terminal[mdp.s_indices]] == 0).all()


def _optimal_values(mdp, reg):
    """Regularized optimal values by value iteration from 0 (exact on a DAG after depth + 1
    sweeps), per state by loops: max_a Q (τ = 0) or τ log Σ π_ref e^{Q/τ} (reverse KL)."""
    states, P, r = naive.dense(mdp)
    ref = naive.ref_policy(mdp, reg)
    tau = 0.0 if reg is None else reg.tau
    live = ~naive.terminal_states(mdp)
    v = np.zeros(mdp.n_states)
    for _ in range(mdp.n_states + 1):
        q = r + P @ v
        new = np.zeros(mdp.n_states)
        for s in np.flatnonzero(live):
            ks = range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1]))
            if tau == 0:
                new[s] = max(q[k] for k in ks)
            else:
                top = max(q[k] for k in ks)
                new[s] = top + tau * np.log(sum(ref[k] * np.exp((q[k] - top) / tau) for k in ks))
        v = new
    return v


@pytest.mark.parametrize("backend", ["numba", "cython"])
@pytest.mark.parametrize("reg", [None, fastppo.ReverseKL(0.3)], ids=lambda r: repr(r))
def test_solve_matches_backward_induction(backend, reg):
    for i, mdp in enumerate(dags()):
        res = fastppo.solve(mdp, reg, backend=backend)
        v = _optimal_values(mdp, reg)
        assert res.converged
        assert naive.rel_err(res.v, v) <= 1e-10, i
        assert res.J == pytest.approx(float(mdp.rho @ v), rel=1e-10, abs=1e-12)
        # the policy returned achieves the optimum
        v_pi, _ = naive.episodic(mdp, mdp.to_pairs(res.policy), reg)
        assert naive.rel_err(v_pi, v) <= 1e-9, i


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_ppoclip_step_scale_and_first_step(backend):
    """At γ = 1 the scale-free step is η = step_scale / max_s n₀(s) (n₀ the visits of the
    initial policy from μ), and one SoftmaxPG step is η times the exact gradient."""
    mdp = random_dag(0)
    reg = fastppo.ReverseKL(0.3)
    init = np.random.default_rng(3).normal(size=mdp.n_pairs)
    ppo = fastppo.PPOClip(mdp, reg, init=init, step_scale=0.5, backend=backend)
    _, n0 = naive.episodic(mdp, naive.softmax(mdp, init), reg, mu=ppo.mu)
    assert ppo.lr == pytest.approx(0.5 / n0.max(), rel=1e-12)
    pg = fastppo.SoftmaxPG(mdp, reg, init=init, lr=0.1, backend=backend)
    pg.step()
    fd = _fd_episodic_gradient(mdp, init, reg, pg.mu)
    assert naive.rel_err(pg.logits - init, 0.1 * fd) <= 1e-7


@pytest.mark.parametrize("backend", ["numba", "cython"])
def test_ppoclip_converges_to_the_regularized_optimum(backend):
    task = fastppo.token_mdp(vocab=3, max_len=3, n_prompts=2, seed=1)
    reg = fastppo.ReverseKL(0.5, ref=task.ref)
    ppo = fastppo.PPOClip(task.mdp, reg, reference=True, backend=backend)
    res = ppo.run(300)
    gap = res.history["gap"]
    # rarely visited states (n from 1e-3 to 0.8) make the last digits slow: 1e-4 in 300
    assert gap[0] > 1 and 0 <= gap[-1] < 1e-4 * gap[0], (gap[0], gap[-1])
    assert np.all(np.diff(gap) <= 1e-12 * abs(ppo.reference))  # monotone ascent
    # the history's J is the exact regularized return of the iterate
    assert res.J == pytest.approx(fastppo.evaluate(task.mdp, ppo.pi, reg).J, rel=1e-12)


def test_sampled_ppo_on_an_episodic_token_mdp():
    """SampledPPO at γ = 1: the horizon is the longest episode, the target of k1 in the
    reward is solve's optimum, the history's exact J and J_plain are evaluate's, and the
    iterates approach the target."""
    task = fastppo.token_mdp(vocab=3, max_len=3, n_prompts=2, seed=1)
    mdp, reg = task.mdp, fastppo.ReverseKL(0.5, ref=task.ref)
    opt = fastppo.solve(mdp, reg)
    ppo = fastppo.SampledPPO(mdp, reg, n_envs=512, seed=0)
    assert ppo.horizon == task.max_len
    assert ppo.target.kind == "optimum"
    np.testing.assert_allclose(mdp.to_pairs(ppo.target.policy), mdp.to_pairs(opt.policy), atol=1e-10)
    res = ppo.run(200)
    assert res.J == pytest.approx(fastppo.evaluate(mdp, ppo.pi, reg).J, rel=1e-10)
    assert res.J_plain == pytest.approx(fastppo.evaluate(mdp, ppo.pi).J, rel=1e-10)
    # deterministic transitions: at the optimum every path's KL-penalised return is V*
    # (path consistency), so the sampling noise vanishes there and the iterates close in
    tv = res.history["tv_target"]
    assert tv[-1] < 0.01 * tv[0], (tv[0], tv[-1])
    assert 0 <= opt.J - res.J < 1e-3 * abs(opt.J)


@pytest.mark.parametrize("kw", [dict(kl_estimator="k3", kl_penalty="loss", advantage="dr_grpo",
                                      group_size=4, advantage_level="sequence"),
                                 dict(kl_estimator="k2", kl_penalty="loss"), dict(ent_coef=0.1)],
                         ids=["k3-loss-dr_grpo-sequence", "k2-loss", "k1-reward-entropy"])
def test_sampled_targets_at_gamma_one(kw):
    """SampledPPO's fixed-point targets at γ = 1: the expected update vanishes there, and
    they are the limit of the targets as γ → 1."""
    task = fastppo.token_mdp(vocab=3, max_len=3, n_prompts=2, seed=1)
    mdp, reg = task.mdp, fastppo.ReverseKL(0.5, ref=task.ref)
    t = fastppo.sampled_target(mdp, reg, **kw)
    assert t.kind == "fixed point" and t.converged
    assert np.max(np.abs(fastppo.expected_update(mdp, t.policy, reg, **kw))) < 1e-12
    near = fastppo.token_mdp(vocab=3, max_len=3, n_prompts=2, seed=1, gamma=1 - 1e-7)
    t_near = fastppo.sampled_target(near.mdp, fastppo.ReverseKL(0.5, ref=near.ref), **kw)
    live = ~mdp.terminal[mdp.s_indices]
    gap = np.abs(mdp.to_pairs(t.policy) - near.mdp.to_pairs(t_near.policy))[live]
    assert 0 < gap.max() < 1e-5


# ------------------------------------------------------------------ refusals
def _refusals(mdp, ref):
    pi = mdp.uniform_policy()
    return {
        "KLPenaltyPPO": lambda: fastppo.KLPenaltyPPO(mdp),
        "NPG": lambda: fastppo.NPG(mdp),
    }


@pytest.mark.parametrize("name", list(_refusals(random_dag(0), None)))
def test_entry_points_refuse_gamma_one(name):
    task = fastppo.token_mdp(2, 2, seed=0)
    with pytest.raises(NotImplementedError, match=rf"^{name} does not support gamma = 1 \(episodic "
                                                  r"MDPs\) yet: .* use gamma < 1"):
        _refusals(task.mdp, task.ref)[name]()


def test_visits_weighted_kl_is_the_response_level_kl():
    """Σ_s n(s) KL(π(·|s) ‖ π_ref(·|s)) (the over-optimization x-axis squared) is the KL
    between the distributions of whole responses, by enumerating every response."""
    task = fastppo.token_mdp(vocab=2, max_len=3, n_prompts=2, seed=4)
    mdp, ref = task.mdp, np.asarray(task.ref)
    pi, _ = random_policy(mdp, 7)
    states, P, _ = naive.dense(mdp)
    term = naive.terminal_states(mdp)

    def responses(s, p, q):  # (prob under π, prob under π_ref) of every path from s
        if term[s]:
            yield p, q
            return
        for k in range(int(mdp.a_indptr[s]), int(mdp.a_indptr[s + 1])):
            for t in np.flatnonzero(P[k]):
                yield from responses(t, p * pi[k] * P[k, t], q * ref[k] * P[k, t])

    kl = sum(p * np.log(p / q) for s0 in np.flatnonzero(mdp.rho)
             for p, q in responses(s0, mdp.rho[s0], mdp.rho[s0]))
    n = fastppo.visitation(mdp, pi, full_output=True).visits
    per_state = np.add.reduceat(pi * np.log(pi / ref), mdp.a_indptr[:-1])
    assert n @ per_state == pytest.approx(kl, rel=1e-12)
