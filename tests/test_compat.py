"""fastppo.compat: QuantEcon's DiscreteDP and pymdptoolbox's solvers, against the peers' own
documented examples, the peers themselves and a dense np.linalg.solve reference."""
import re
import warnings

import numpy as np
import pytest
import scipy.sparse as sp

from fastppo.compat import mdptoolbox as fmdp
from fastppo.compat.quantecon import DiscreteDP, DPSolveResult

qe = pytest.importorskip("quantecon")
mdptoolbox = pytest.importorskip("mdptoolbox")
import mdptoolbox.example  # noqa: E402
import mdptoolbox.mdp  # noqa: E402
from quantecon.markov import DiscreteDP as QEDiscreteDP  # noqa: E402
from quantecon.markov import random_discrete_dp  # noqa: E402

from test_docs import documented  # noqa: E402


# ------------------------------------------------------------ dense references
def dense_optimum(P, R, beta):
    """v*, sigma* of a dense product-form model (P (S, A, S), R (S, A), -inf = infeasible):
    policy iteration on np.linalg.solve, written with explicit arrays."""
    S, A = R.shape
    sigma = np.argmax(R, axis=1)
    for _ in range(1000):
        Ps, rs = P[np.arange(S), sigma], R[np.arange(S), sigma]
        v = np.linalg.solve(np.eye(S) - beta * Ps, rs)
        q = R + beta * P @ v
        new = sigma.copy()
        better = q.max(axis=1) > q[np.arange(S), sigma] + 1e-12 * max(1.0, np.abs(v).max())
        new[better] = np.argmax(q, axis=1)[better]
        if np.array_equal(new, sigma):
            return v, sigma
        sigma = new
    raise AssertionError("dense policy iteration did not converge")


def dense_value(P, R, beta, sigma):
    S = R.shape[0]
    return np.linalg.solve(np.eye(S) - beta * P[np.arange(S), sigma], R[np.arange(S), sigma])


def product_form(R, Q, s, a, n, m):
    """Dense (n, m, n) / (n, m) arrays of a state-action-pair model, -inf where infeasible."""
    Rp, Qp = np.full((n, m), -np.inf), np.zeros((n, m, n))
    Rp[s, a] = R
    Qp[s, a] = Q.toarray() if sp.issparse(Q) else Q
    return Rp, Qp


def assert_close(x, y, tol=1e-10):
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    np.testing.assert_allclose(x, y, rtol=0, atol=tol * max(1.0, np.abs(y).max()))


# ------------------------------------------------------- QuantEcon's own examples
def puterman():
    """QuantEcon's DiscreteDP docstring example (Puterman 2005, Section 3.1): both forms."""
    R = [[5, 10], [-1, -float("inf")]]
    Q = [[(0.5, 0.5), (0, 1)], [(0, 1), (0.5, 0.5)]]
    sa = ([5, 10, -1], [(0.5, 0.5), (0, 1), (0, 1)], [0, 0, 1], [0, 1, 0])
    return {"product": ((R, Q, 0.95), {}),
            "sa_pairs": ((sa[0], sa[1], 0.95, sa[2], sa[3]), {}),
            "sa_pairs_sparse": ((sa[0], sp.csr_matrix(np.array(sa[1], dtype=float)), 0.95, sa[2], sa[3]), {})}


def growth_model(B=10, M=5, alpha=0.5, beta=0.9):
    """The stochastic growth model of QuantEcon's lecture "Discrete State Dynamic
    Programming" (SimpleOG): s = B + M + 1 states, consume s - a, store a <= min(s, M)."""
    n, m = B + M + 1, M + 1
    R, Q = np.empty((n, m)), np.zeros((n, m, n))
    for a in range(m):
        Q[:, a, a:a + B + 1] = 1.0 / (B + 1)
    for s in range(n):
        for a in range(m):
            R[s, a] = (s - a) ** alpha if a <= s else -np.inf
    return R, Q, beta


def qe_models():
    """(name, args) of QuantEcon models: docstring example, growth model (product form and
    sparse state-action pairs, as in the lecture), and random_discrete_dp instances."""
    out = [(f"puterman_{k}", args) for k, (args, _) in puterman().items()]
    R, Q, beta = growth_model()
    out.append(("growth_product", (R, Q, beta)))
    s, a = np.nonzero(R > -np.inf)
    out.append(("growth_sa_sparse", (R[s, a], sp.csr_matrix(Q[s, a]), beta, s, a)))
    perm = np.random.default_rng(0).permutation(s.size)  # pairs in any order
    out.append(("growth_sa_shuffled", (R[s, a][perm], Q[s, a][perm], beta, s[perm], a[perm])))
    out.append(("growth_sa_label_gaps", (R[s, a], Q[s, a], beta, s, 2 * a + 1)))  # labels 1, 3, 5, ...
    for seed in range(3):
        ddp = random_discrete_dp(30, 4, beta=0.95, k=5, random_state=seed, sparse=True,
                                 sa_pair=True)
        out.append((f"random_sparse_{seed}", (ddp.R, ddp.Q, ddp.beta, ddp.s_indices, ddp.a_indices)))
    return out


QE_MODELS = dict(qe_models())


def dense_of(args):
    """(P (n, m, n), R (n, m), beta) of QuantEcon args of either form."""
    if len(args) == 3:
        R, Q, beta = args
        return np.asarray(Q, dtype=float), np.asarray(R, dtype=float), beta
    R, Q, beta, s, a = args
    s, a = np.asarray(s), np.asarray(a)
    Q = Q if sp.issparse(Q) else np.asarray(Q, dtype=float)
    n = Q.shape[1]
    Rp, Qp = product_form(np.asarray(R, dtype=float), Q, s, a, n, int(a.max()) + 1)
    return Qp, Rp, beta


@pytest.mark.parametrize("name", list(QE_MODELS))
@pytest.mark.parametrize("method", ["policy_iteration", "pi", "value_iteration", "vi",
                                    "modified_policy_iteration", "mpi"])
def test_quantecon_solve_matches_quantecon_and_dense_reference(name, method):
    args = QE_MODELS[name]
    ours = DiscreteDP(*args).solve(method=method, epsilon=1e-3)
    theirs = QEDiscreteDP(*args).solve(method=method, epsilon=1e-3)
    P, R, beta = dense_of(args)
    v_ref, sigma_ref = dense_optimum(P, R, beta)
    np.testing.assert_array_equal(ours.sigma, theirs.sigma)
    np.testing.assert_array_equal(ours.sigma, sigma_ref)
    assert_close(ours.v, v_ref, 1e-10)
    if method in ("policy_iteration", "pi"):
        assert_close(ours.v, theirs.v, 1e-10)  # QuantEcon's policy iteration is exact
    else:  # QuantEcon's guarantee: within epsilon / 2 of v*
        assert np.abs(ours.v - theirs.v).max() <= 1e-3 / 2
    assert set(ours) == set(theirs)  # the same fields, per method
    assert ours.method == theirs.method and ours.max_iter == theirs.max_iter
    assert ours.get("epsilon") == theirs.get("epsilon") and ours.get("k") == theirs.get("k")
    assert isinstance(ours.mc, qe.MarkovChain)
    mc_P = ours.mc.P.toarray() if sp.issparse(ours.mc.P) else ours.mc.P
    assert_close(mc_P, P[np.arange(len(v_ref)), ours.sigma], 1e-15)
    assert isinstance(ours.num_iter, int) and ours.num_iter >= 1
    assert ours.sigma.dtype == theirs.sigma.dtype


def test_quantecon_docstring_numbers():
    """QuantEcon's documented output for its Puterman example, for every form."""
    for args, _ in puterman().values():
        ddp = DiscreteDP(*args)
        for method in ("policy_iteration", "value_iteration", "modified_policy_iteration"):
            res = ddp.solve(method=method, v_init=[0, 0], epsilon=0.01)
            np.testing.assert_array_equal(res.sigma, [0, 0])
            # exact -60/7 and -20; QuantEcon's value iteration reports [-8.5665053, -19.99507673]
            assert_close(res.v, [-60 / 7, -20.0], 1e-12)
        assert ddp.num_states == 2 and ddp.num_sa_pairs == 3


@pytest.mark.parametrize("name", list(QE_MODELS))
def test_quantecon_operators_match_quantecon(name):
    args = QE_MODELS[name]
    ours, theirs = DiscreteDP(*args), QEDiscreteDP(*args)
    P, R, beta = dense_of(args)
    n = ours.num_states
    rng = np.random.default_rng(1)
    feasible = [np.flatnonzero(R[s] > -np.inf) for s in range(n)]
    for _ in range(3):
        sigma = np.array([rng.choice(f) for f in feasible])
        v_ref = dense_value(P, R, beta, sigma)
        assert_close(ours.evaluate_policy(sigma), v_ref, 1e-10)
        assert_close(ours.evaluate_policy(sigma), theirs.evaluate_policy(sigma), 1e-10)
        r_ours, q_ours = ours.RQ_sigma(sigma)
        r_theirs, q_theirs = theirs.RQ_sigma(sigma)
        assert_close(r_ours, r_theirs, 0)
        assert sp.issparse(q_ours) == sp.issparse(q_theirs)
        dense = lambda x: x.toarray() if sp.issparse(x) else np.asarray(x)  # noqa: E731
        assert_close(dense(q_ours), dense(q_theirs), 0)
        v = rng.normal(size=n) * 10
        assert_close(ours.T_sigma(sigma)(v), theirs.T_sigma(sigma)(v), 1e-13)
        q = R + beta * P @ v  # explicit reference of the Bellman operator
        assert_close(ours.bellman_operator(v), q.max(axis=1), 1e-13)
        assert_close(ours.bellman_operator(v), theirs.bellman_operator(v), 1e-13)
        np.testing.assert_array_equal(ours.compute_greedy(v), theirs.compute_greedy(v))
        np.testing.assert_array_equal(ours.compute_greedy(v), np.argmax(q, axis=1))
        Tv, out_sigma = np.empty(n), np.empty(n, dtype=int)
        assert ours.bellman_operator(v, Tv=Tv, sigma=out_sigma) is Tv
        np.testing.assert_array_equal(out_sigma, np.argmax(q, axis=1))


def test_quantecon_greedy_ties_go_to_the_lowest_label():
    R = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 2.0]])
    Q = np.full((2, 3, 2), 0.5)
    ours, theirs = DiscreteDP(R, Q, 0.5), QEDiscreteDP(R, Q, 0.5)
    v = np.zeros(2)
    np.testing.assert_array_equal(ours.compute_greedy(v), [0, 1])
    np.testing.assert_array_equal(ours.compute_greedy(v), theirs.compute_greedy(v))


def test_quantecon_infeasible_sigma_is_an_error_naming_the_state():
    R, Q, beta = growth_model()
    ddp = DiscreteDP(R, Q, beta)
    sigma = np.zeros(ddp.num_states, dtype=int)
    sigma[2] = 3  # store 3 with 2 in hand: infeasible (reward -inf)
    with pytest.raises(ValueError, match=r"sigma\[2\] = 3 is not an action of state 2 \(its actions: 0, 1, 2\)"):
        ddp.evaluate_policy(sigma)
    with pytest.raises(ValueError, match=r"sigma\[2\] = 3 is not an action of state 2"):
        ddp.RQ_sigma(sigma)
    assert ddp.num_sa_pairs == QEDiscreteDP(R, Q, beta).num_sa_pairs == int(np.isfinite(R).sum())


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: DiscreteDP([[1.0]], [[[1.0]]], 1.0), ValueError, r"beta must be in \[0, 1\), got 1\.0"),
    (lambda: DiscreteDP([[1.0]], [[[1.0]]], -0.1), ValueError, r"beta must be in \[0, 1\)"),
    (lambda: DiscreteDP([[1.0]], [1.0], 0.9), ValueError, r"Q must be 2- or 3-dimensional"),
    (lambda: DiscreteDP(1.0, [[[1.0]]], 0.9), ValueError, r"R must be 1- or 2-dimensional"),
    (lambda: DiscreteDP([1.0, 2.0], [[1.0]], 0.9, [0], [0]), ValueError, r"shapes of R and Q"),
    (lambda: DiscreteDP([1.0], [[1.0]], 0.9, None, [0]), ValueError, r"s_indices must be supplied"),
    (lambda: DiscreteDP([1.0], [[1.0]], 0.9, [0], None), ValueError, r"a_indices must be supplied"),
    (lambda: DiscreteDP([[1.0, 2.0]], [[[1.0]]], 0.9), ValueError, r"shapes of R and Q"),
    (lambda: DiscreteDP([[-np.inf, 1.0], [-np.inf, -np.inf]], np.full((2, 2, 2), 0.5), 0.9), ValueError,
     r"state 1 has no feasible action: every reward of it is -inf"),
    (lambda: DiscreteDP([[1.0]], [[[1.0]]], 0.9).solve(method="newton"), ValueError, r"invalid method"),
    (lambda: DiscreteDP([[1.0]], [[[1.0]]], 0.9).solve(v_init=[0, 0]), ValueError,
     r"v_init must have shape \(1,\), got \(2,\)"),
    (lambda: DiscreteDP([[1.0]], [[[1.0]]], 0.9).compute_greedy([0.0, 1.0]), ValueError,
     r"v must have shape \(1,\), got \(2,\)"),
    (lambda: DiscreteDP([[1.0]], [[[1.0]]], 0.9).evaluate_policy([0.0]), TypeError,
     r"sigma must be an integer array|dtype float64"),
])
def test_quantecon_rejections(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_quantecon_result_object():
    res = DiscreteDP(*QE_MODELS["puterman_product"]).solve()
    assert isinstance(res, DPSolveResult) and res.v is res["v"]
    assert "sigma: array([0, 0])" in repr(res)
    with pytest.raises(AttributeError):
        res.missing


def test_quantecon_max_iter_caps_policy_iteration():
    from fastppo import ConvergenceError

    R, Q, beta = growth_model()
    with pytest.raises(ConvergenceError):
        DiscreteDP(R, Q, beta).solve(method="pi", max_iter=1)
    DiscreteDP(R, Q, beta).solve(method="vi", max_iter=1)  # recorded only: still exact


# ------------------------------------------------------ pymdptoolbox's own examples
def toolbox_models():
    """(P, R, discount) of pymdptoolbox's examples: forest (dense and sparse P), small, the
    sparse-list small of the ValueIteration docstring, rand dense ((A, S, S) rewards) and rand
    sparse (lists of sparse (S, S) P and R)."""
    np.random.seed(0)  # pymdptoolbox's rand draws from the global generator
    out = {
        "forest_0.9": (*mdptoolbox.example.forest(), 0.9),
        "forest_0.96": (*mdptoolbox.example.forest(), 0.96),
        "forest_sparse": (*mdptoolbox.example.forest(S=10, is_sparse=True), 0.9),
        "small": (*mdptoolbox.example.small(), 0.9),
        "small_sparse_list": ([sp.csr_matrix([[0.5, 0.5], [0.8, 0.2]]), sp.csr_matrix([[0, 1], [0.1, 0.9]])],
                              np.array([[5, 10], [-1, 2]]), 0.9),
        "rand_dense": (*mdptoolbox.example.rand(10, 3), 0.9),
        "rand_sparse": (*mdptoolbox.example.rand(40, 4, is_sparse=True), 0.9),
    }
    return out


TOOLBOX = toolbox_models()


def toolbox_dense(P, R):
    """(P (S, A, S), R (S, A)) by explicit loops over pymdptoolbox's layouts."""
    mats = [m.toarray() if sp.issparse(m) else np.asarray(m, dtype=float) for m in P]
    A, S = len(mats), mats[0].shape[0]
    Pd = np.stack(mats, axis=1)
    Rd = np.empty((S, A))
    for a in range(A):
        Ra = R[a] if isinstance(R, (list, tuple)) or np.ndim(R) == 3 else None
        for s in range(S):
            if Ra is None:
                Rd[s, a] = R[s, a]
            else:
                Ra_d = Ra.toarray() if sp.issparse(Ra) else np.asarray(Ra)
                Rd[s, a] = sum(mats[a][s, t] * Ra_d[s, t] for t in range(S))
    return Pd, Rd


def run_quiet(make, *args, **kw):
    """``make(*args, **kw)``, run; pymdptoolbox's own SparseEfficiencyWarnings silenced."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
        solver = make(*args, **kw)
        solver.run()
    return solver


@pytest.mark.parametrize("name", list(TOOLBOX))
@pytest.mark.parametrize("cls", ["PolicyIteration", "PolicyIterationModified", "ValueIteration",
                                 "ValueIterationGS"])
def test_mdptoolbox_solvers_match_pymdptoolbox_and_dense_reference(name, cls):
    P, R, discount = TOOLBOX[name]
    ours = run_quiet(getattr(fmdp, cls), P, R, discount)
    Pd, Rd = toolbox_dense(P, R)
    v_ref, sigma_ref = dense_optimum(Pd, Rd, discount)
    assert isinstance(ours.V, tuple) and isinstance(ours.policy, tuple)
    assert all(type(x) is float for x in ours.V) and all(type(a) is int for a in ours.policy)
    assert type(ours.iter) is int and ours.iter >= 1 and ours.time >= 0
    assert ours.policy == tuple(sigma_ref.tolist())
    assert_close(ours.V, v_ref, 1e-10)
    if cls == "ValueIterationGS" and sp.issparse(P[0]):
        pytest.skip("checked against the dense reference only: pymdptoolbox 4.0b3's "
                    "ValueIterationGS fails on sparse P under NumPy 2 (float() of an array)")
    theirs = run_quiet(getattr(mdptoolbox.mdp, cls), P, R, discount)
    assert ours.policy == theirs.policy
    if cls == "PolicyIteration":  # pymdptoolbox's matrix policy iteration is exact
        assert_close(ours.V, theirs.V, 1e-10)
    else:
        # span-stopped: pymdptoolbox's V may be far from V*, but V* lies within the
        # MacQueen bounds of any V: TV + γ/(1−γ) [min(TV − V), max(TV − V)]
        V = np.array(theirs.V)
        TV = (Rd + discount * Pd @ V).max(axis=1)
        c = discount / (1 - discount)
        slack = 1e-10 * np.abs(v_ref).max()
        assert np.all(TV + c * (TV - V).min() - slack <= np.array(ours.V))
        assert np.all(np.array(ours.V) <= TV + c * (TV - V).max() + slack)
    assert (ours.S, ours.A) == (theirs.S, theirs.A)
    for a in range(ours.A):
        assert_close(ours.R[a], theirs.R[a], 1e-14)


def test_mdptoolbox_docstring_numbers():
    """pymdptoolbox's documented results (PolicyIteration on forest() at 0.9 is exact)."""
    P, R = mdptoolbox.example.forest()
    pi = fmdp.PolicyIteration(P, R, 0.9)
    assert pi.V is None and pi.policy is None
    pi.run()
    assert_close(pi.V, (26.244000000000014, 29.484000000000016, 33.484000000000016), 1e-12)
    assert pi.policy == (0, 0, 0)
    for cls in (fmdp.PolicyIterationModified, fmdp.ValueIteration, fmdp.ValueIterationGS):
        s = cls(P, R, 0.9)
        s.run()
        assert s.policy == (0, 0, 0)
        assert_close(s.V, pi.V, 1e-12)
    P, R = mdptoolbox.example.small()
    vi = fmdp.ValueIteration(P, R, 0.9)
    assert vi.verbose is False
    vi.run()
    assert vi.policy == (1, 0)
    # exact: 42.44, 36.05; pymdptoolbox's value iteration stops at 40.05, 33.65
    assert_close(vi.V, (42.44186046511628, 36.04651162790698), 1e-12)


def test_mdptoolbox_small_with_per_action_reward_vectors():
    """Regression: R as a list of A per-action (S,) vectors, S == A, read per action."""
    P, R = mdptoolbox.example.small()
    per_action = [R[:, a].astype(float) for a in range(2)]
    s = fmdp.PolicyIteration(P, per_action, 0.9)
    s.run()
    assert_close(s.V, (42.44186046511628, 36.04651162790698), 1e-12)  # not 67.7, 71.7


@pytest.mark.parametrize("call, exc, msg", [
    (lambda: fmdp.PolicyIteration(*mdptoolbox.example.small(), 1.0), ValueError, r"discount must be in \[0, 1\)"),
    (lambda: fmdp.PolicyIteration(*mdptoolbox.example.small(), 0.9, eval_type=2), ValueError, r"'eval_type' should be"),
    (lambda: fmdp.PolicyIteration(*mdptoolbox.example.small(), 0.9, policy0=[0, 2]), ValueError,
     r"policy0\[1\] = 2 is not an action of state 1 \(its actions: 0, 1\)"),
    (lambda: fmdp.PolicyIteration(*mdptoolbox.example.small(), 0.9, policy0=[0.5, 1]), TypeError,
     r"policy0 must be an integer array of shape \(2,\)"),
    (lambda: fmdp.PolicyIteration(*mdptoolbox.example.small(), 0.9, max_iter=0), ValueError, r"max_iter must be >= 1"),
    (lambda: fmdp.ValueIteration(*mdptoolbox.example.small(), 0.9, epsilon=0), ValueError, r"epsilon must be > 0"),
    (lambda: fmdp.ValueIteration(*mdptoolbox.example.small(), 0.9, initial_value=[1, 2, 3]), ValueError,
     r"The initial value must be a vector of length S"),
])
def test_mdptoolbox_rejections(call, exc, msg):
    with pytest.raises(exc, match=msg):
        call()


def test_mdptoolbox_accepted_and_ignored_arguments():
    P, R = mdptoolbox.example.forest()
    ref = run_quiet(fmdp.PolicyIteration, P, R, 0.9)
    for s in (fmdp.PolicyIteration(P, R, 0.9, policy0=[1, 1, 1], eval_type="iterative", skip_check=True),
              fmdp.PolicyIteration(P, R, 0.9, policy0=np.array([[1.0], [0.0], [1.0]]), eval_type=1),
              fmdp.ValueIteration(P, R, 0.9, epsilon=0.5, max_iter=2, initial_value=[1.0, 2.0, 3.0]),
              fmdp.PolicyIterationModified(P, R, 0.9, epsilon=1e-6, max_iter=1)):
        s.setVerbose()
        s.run()
        assert s.V == ref.V and s.policy == ref.policy


# ------------------------------------------------------------------ docstrings
@pytest.mark.parametrize("obj", [DiscreteDP, DiscreteDP.solve, DiscreteDP.RQ_sigma,
                                 DiscreteDP.bellman_operator, fmdp.PolicyIteration,
                                 fmdp.PolicyIterationModified, fmdp.ValueIteration],
                         ids=lambda o: o.__qualname__)
def test_compat_parameters_documented(obj):
    import inspect

    fn = obj.__init__ if inspect.isclass(obj) else obj
    doc = obj.__doc__
    params = [p for p in inspect.signature(fn).parameters if p not in ("self",)]
    names = set()
    for part in re.split(r"(?=\n\s*Parameters\n)", doc or ""):
        names |= documented(part)
    missing = [p for p in params if p not in names]
    assert not missing, f"{obj.__qualname__}: undocumented parameters {missing}"


def test_readme_switching_examples_print_what_the_readme_says():
    import contextlib
    import io
    import pathlib

    readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
    section = readme.split("## Switching from QuantEcon or pymdptoolbox")[1].split("\n## ")[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 2
    printed = []
    for code in blocks:
        out = io.StringIO()
        with contextlib.redirect_stdout(out), warnings.catch_warnings():
            warnings.simplefilter("ignore", sp.SparseEfficiencyWarning)
            exec(compile(code, "README.md", "exec"), {})
        printed.append(out.getvalue().strip())
    assert printed[0] == "[0 0] [ -8.57142857 -20.        ]"
    assert re.fullmatch(r"\(0, 0, 0\) \(74\.6496\d*, 78\.1056\d*, 82\.1056\d*\)", printed[1]), printed[1]
    for code, shown in zip(blocks, printed):  # the README's comment is the printed line
        assert shown.split(" (")[0] in code
