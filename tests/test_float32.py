"""Compact float32 storage of the transition probabilities (issue 16, item 1).

An MDP built with ``dtype=np.float32`` stores ``p_data`` as float32; everything else,
and every sum, stays float64. The MDP solved is the stored one with each row divided by
its float64 sum (float32 rows sum to 1 only to ~6e-8; the solvers need P 1 = 1). So the
references here are (a) the dense brute force of tests/naive.py on those normalised
numbers, and (b) the same normalised MDP stored in float64 (:func:`normalised`): both
must agree with the float32 results to the solvers' tolerance, on every backend. The
distance to the float64 MDP the float32 one was rounded from is bounded by
2⁻²³ γ / (1 − γ) · ‖v‖∞ (each row moves by at most 2⁻²³ in ℓ1 norm).
"""
import numpy as np
import pytest
import scipy.sparse as sp

import fastppo
import fastppo.generators as generators
from fastppo import _validation as V
from fastppo._backend import get_kernel
from conftest import BACKENDS, random_mdp, random_policy
import naive

EPS32 = 2.0 ** -24  # unit roundoff of float32


def as32(mdp):
    """The float32 MDP rounded from ``mdp``."""
    return fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data,
                       mdp.r, mdp.gamma, mdp.rho, dtype=np.float32)


def as64(mdp32):
    """The float32 MDP's numbers stored as float64 (float32 input, default dtype), rows
    not normalised."""
    return fastppo.MDP(mdp32.a_indptr, mdp32.a_indices, mdp32.p_indptr, mdp32.p_indices,
                       mdp32.p_data, mdp32.r, mdp32.gamma, mdp32.rho)


def normalised(mdp32):
    """The MDP a float32 one stands for, in float64: each row divided by its float64 sum
    (by a loop over the rows, not the kernels' way)."""
    data = np.empty(mdp32.p_data.shape[0])
    for k in range(mdp32.n_pairs):
        lo, hi = int(mdp32.p_indptr[k]), int(mdp32.p_indptr[k + 1])
        row = [float(x) for x in mdp32.p_data[lo:hi]]
        total = sum(row)
        data[lo:hi] = [x / total for x in row]
    return fastppo.MDP(mdp32.a_indptr, mdp32.a_indices, mdp32.p_indptr, mdp32.p_indices, data,
                       mdp32.r, mdp32.gamma, mdp32.rho)


def bound(mdp, v64):
    """The documented bound on ‖v32 − v64‖∞ (plus the solvers' tolerance)."""
    return 2 * EPS32 * mdp.gamma / (1 - mdp.gamma) * np.abs(v64).max() * (1 + 1e-6) + 1e-10


@pytest.fixture(scope="module")
def pair():
    """(float64 MDP, its float32 rounding): random, non-rectangular, γ = 0.95."""
    mdp = random_mdp(3, n_states=15, n_actions=3, gamma=0.95, rectangular=False)
    return mdp, as32(mdp)


# ----------------------------------------------------------------- construction
def test_storage_dtypes(pair):
    mdp, m32 = pair
    assert m32.p_data.dtype == np.float32 and mdp.p_data.dtype == np.float64
    assert m32.p_indices.dtype == np.int32 and m32.p_indptr.dtype == np.int64
    for name in ("a_indptr", "a_indices", "r", "rho"):
        assert getattr(m32, name).dtype == getattr(mdp, name).dtype
    np.testing.assert_array_equal(m32.p_data, mdp.p_data.astype(np.float32))
    assert "dtype=float32" in repr(m32) and "dtype" not in repr(mdp)


def test_float32_input_is_not_down_cast_unasked(pair):
    _, m32 = pair
    m = as64(m32)  # float32 input, default dtype: float64, the same numbers
    assert m.p_data.dtype == np.float64
    np.testing.assert_array_equal(m.p_data, m32.p_data)
    # float32 rows keep the float32 tolerance when read as float64; float64 input does not
    with pytest.raises(ValueError, match="transition probabilities sum to"):
        fastppo.MDP(m32.a_indptr, m32.a_indices, m32.p_indptr, m32.p_indices,
                    m32.p_data.astype(np.float64), m32.r, m32.gamma)


@pytest.mark.parametrize("build", ["from_sa_pairs", "from_dense", "from_sparse",
                                   "from_mdptoolbox"])
def test_constructors_take_dtype(build):
    rng = np.random.default_rng(0)
    S, A = 6, 2
    P = rng.random((S, A, S)) * (rng.random((S, A, S)) < 0.6) + 0.01
    P /= P.sum(axis=2, keepdims=True)
    R = rng.normal(size=(S, A))
    s, a = np.divmod(np.arange(S * A), A)
    args = {"from_sa_pairs": (s, a, P.reshape(S * A, S), R.reshape(-1)),
            "from_dense": (P, R),
            "from_sparse": (sp.csr_array(P.reshape(S * A, S).astype(np.float32)), R),
            "from_mdptoolbox": (P.transpose(1, 0, 2), R)}[build]
    m32 = getattr(fastppo.MDP, build)(*args, gamma=0.9, dtype=np.float32)
    m64 = fastppo.MDP.from_dense(P, R, 0.9)
    assert m32.p_data.dtype == np.float32
    np.testing.assert_array_equal(m32.p_indices, m64.p_indices)
    np.testing.assert_array_equal(m32.p_data, m64.p_data.astype(np.float32))


def test_gymnasium_and_generators_take_dtype():
    P = {0: {0: [(0.3, 0, 1.0, False), (0.7, 1, 0.0, True)]}, 1: {0: [(1.0, 1, 0.0, False)]}}
    assert fastppo.MDP.from_gymnasium(P, 0.9, dtype=np.float32).p_data.dtype == np.float32
    for m in (fastppo.gridworld(3, 4, dtype=np.float32), fastppo.chain(dtype=np.float32),
              generators.queue2d((3, 3), dtype=np.float32),
              generators.pendulum(5, 5, 3, dtype=np.float32),
              fastppo.token_tree(3, 2, dtype=np.float32)):
        assert m.p_data.dtype == np.float32


def test_garnet_float32_is_the_float64_garnet_rounded():
    for kw in ({}, {"locality": 2}):
        m64 = fastppo.garnet(500, 3, 4, gamma=0.9, seed=7, **kw)
        m32 = fastppo.garnet(500, 3, 4, gamma=0.9, seed=7, dtype=np.float32, **kw)
        np.testing.assert_array_equal(m32.p_indices, m64.p_indices)
        np.testing.assert_array_equal(m32.r, m64.r)
        np.testing.assert_array_equal(m32.p_data, m64.p_data.astype(np.float32))


@pytest.mark.parametrize("locality", [None, 3])
def test_garnet_chunks_do_not_change_the_stream(monkeypatch, locality):
    whole = fastppo.garnet(301, 3, 5, seed=11, locality=locality)  # one chunk
    monkeypatch.setattr(generators, "GARNET_CHUNK", 64)  # 15 chunks, the last one short
    chunked = fastppo.garnet(301, 3, 5, seed=11, locality=locality)
    assert chunked == whole


def test_garnet_windows_with_locality_hold():
    m = fastppo.garnet(400, 3, 4, seed=2, locality=3)
    s = np.repeat(m.s_indices, 4)
    offset = (m.p_indices.astype(np.int64) - s + 3) % 400
    assert offset.max() <= 6


# ----------------------------------------------------------------- validation
def test_dtype_argument_is_checked():
    mdp = random_mdp(0, n_states=4)
    args = (mdp.a_indptr, mdp.a_indices, mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r, 0.9)
    with pytest.raises(ValueError, match="dtype must be numpy.float64 or numpy.float32.*float16"):
        fastppo.MDP(*args, dtype=np.float16)
    with pytest.raises(ValueError, match="dtype must be numpy.float64 or numpy.float32.*int64"):
        fastppo.garnet(10, 2, 2, dtype=np.int64)
    with pytest.raises(TypeError, match="dtype must be numpy.float64 or numpy.float32"):
        fastppo.MDP(*args, dtype="no such dtype")


def _one_row_off(by, dtype):
    P = np.array([[0.25, 0.75], [0.5, 0.5]], dtype=np.float64)
    P[1, 1] += by
    return fastppo.MDP.from_sa_pairs([0, 1], [0, 0], P.astype(dtype), [0.0, 1.0], 0.9,
                                     dtype=dtype)


def test_row_sum_tolerance_of_float32_rows():
    assert V.ROW_SUM_TOL_FLOAT32 > V.ROW_SUM_TOL + EPS32  # input slack plus rounding
    _one_row_off(4e-8, np.float32)  # within 1e-7
    with pytest.raises(ValueError, match=r"pair \(s=1, a=0\): transition probabilities sum to"):
        _one_row_off(4e-7, np.float32)
    with pytest.raises(ValueError, match=r"pair \(s=1, a=0\): transition probabilities sum to"):
        _one_row_off(4e-8, np.float64)  # float64 keeps its 1e-8


def test_negative_and_non_finite_float32_entries_are_named(pair):
    _, m32 = pair
    data = m32.p_data.copy()
    data[5] = -data[5]
    with pytest.raises(ValueError, match="negative transition probability"):
        fastppo.MDP(m32.a_indptr, m32.a_indices, m32.p_indptr, m32.p_indices, data, m32.r, 0.9,
                    dtype=np.float32)
    data[5] = np.nan
    with pytest.raises(ValueError, match="is not finite"):
        fastppo.MDP(m32.a_indptr, m32.a_indices, m32.p_indptr, m32.p_indices, data, m32.r, 0.9,
                    dtype=np.float32)


def test_save_load_keeps_float32(pair, tmp_path):
    _, m32 = pair
    path = tmp_path / "m.npz"
    m32.save(path)
    for mode in (None, "r"):
        back = fastppo.MDP.load(path, mmap_mode=mode)
        assert back.p_data.dtype == np.float32 and back == m32
    derived = m32.with_rewards(2 * m32.r).with_gamma(0.5)
    assert derived.p_data is m32.p_data


# ----------------------------------------------------------------- kernels
@pytest.mark.parametrize("backend", BACKENDS)
def test_product_kernels_read_float32_as_float64(pair, backend):
    # the same kernel on float32 storage and on its normalised rows in float64
    _, m32 = pair
    m64 = normalised(m32)
    rng = np.random.default_rng(1)
    pi, _ = random_policy(m32, 2)
    x, y = rng.normal(size=m32.n_states), rng.normal(size=m32.n_states)
    S, L = m32.n_states, m32.n_pairs
    out = {}
    for m in (m32, m64):
        args = (m.a_indptr, m.p_indptr, m.p_indices, m.p_data, pi, m.gamma)
        o = {"mv": np.empty(S), "rmv": np.empty(S), "q": np.empty(L),
             "px": np.empty(S), "py": np.empty(S), "rows": np.empty(L)}
        get_kernel("bellman_matvec", backend)(*args, x, o["mv"], 2)
        get_kernel("bellman_rmatvec", backend)(*args, x, o["rmv"], np.empty((2, S)), 2)
        get_kernel("q_values", backend)(m.p_indptr, m.p_indices, m.p_data, m.r, m.gamma, x,
                                        o["q"], 2)
        get_kernel("bellman_products", backend)(*args, x, y, o["px"], o["py"], o["rows"],
                                                np.empty((2, 2 * S)), 2)
        out[m.p_data.dtype] = o
    for key, got in out[np.dtype(np.float32)].items():
        np.testing.assert_allclose(got, out[np.dtype(np.float64)][key], rtol=1e-14, atol=1e-14,
                                   err_msg=key)
    # and against the dense brute force of the MDP it stands for
    _, P, _ = naive.dense(m64)
    Ppi = naive.P_pi(m64, pi)
    np.testing.assert_allclose(out[np.dtype(np.float32)]["mv"], x - m32.gamma * Ppi @ x,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out[np.dtype(np.float32)]["py"], y - m32.gamma * Ppi.T @ y,
                               rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(out[np.dtype(np.float32)]["rows"], P @ x, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("backend", BACKENDS)
def test_kernels_see_stochastic_rows(backend):
    # P 1 = 1 to float64 round-off although the stored float32 rows sum to 1 only ~6e-8
    m32 = fastppo.garnet(300, 4, 7, gamma=0.9, seed=4, dtype=np.float32)
    sums = np.add.reduceat(m32.p_data.astype(np.float64), m32.p_indptr[:-1])
    assert np.abs(sums - 1).max() > 1e-9  # the rows are not stochastic as stored
    ones, pi = np.ones(m32.n_states), m32.uniform_policy()
    q, out = np.empty(m32.n_pairs), np.empty(m32.n_states)
    get_kernel("q_values", backend)(m32.p_indptr, m32.p_indices, m32.p_data,
                                    np.zeros(m32.n_pairs), 1.0, ones, q, 1)
    np.testing.assert_allclose(q, 1.0, rtol=0, atol=4e-16)
    get_kernel("bellman_rmatvec", backend)(m32.a_indptr, m32.p_indptr, m32.p_indices,
                                           m32.p_data, pi, 1.0, ones, out,
                                           np.empty((1, m32.n_states)), 1)
    assert abs(out.sum()) < 1e-12  # mass: 1ᵀ P_πᵀ 1 = S


def test_richardson_is_not_slowed_by_float32_rows():
    # the lockstep sweeps reach 1e-12 as on the float64 MDP (no fall to the assembled solvers)
    m64 = fastppo.garnet(3000, 4, 6, gamma=0.99, seed=9)
    m32 = fastppo.garnet(3000, 4, 6, gamma=0.99, seed=9, dtype=np.float32)
    pi, _ = random_policy(m64, 1)
    for which in ("evaluate", "visitation"):
        r64 = getattr(fastppo, which)(m64, pi, **({} if which == "evaluate" else {"full_output": True}))
        r32 = getattr(fastppo, which)(m32, pi, **({} if which == "evaluate" else {"full_output": True}))
        assert r32.method == r64.method == "richardson", which
        assert r32.n_matvec <= r64.n_matvec + 2, which


@pytest.mark.parametrize("backend", BACKENDS)
def test_products_with_float32_corrections_and_float32_storage(pair, backend):
    # bellman_products' float32 x / buf (mixed sweeps) combined with float32 storage
    _, m32 = pair
    m64 = normalised(m32)
    pi, _ = random_policy(m32, 4)
    rng = np.random.default_rng(5)
    S = m32.n_states
    x, y = rng.normal(size=S).astype(np.float32), rng.normal(size=S)
    got = {}
    for m in (m32, m64):
        px, py = np.empty(S), np.empty(S)
        get_kernel("bellman_products", backend)(
            m.a_indptr, m.p_indptr, m.p_indices, m.p_data, pi, m.gamma, x, y, px, py,
            np.empty(0), np.empty((2, 2 * S), dtype=np.float32), 1)
        got[m.p_data.dtype] = px, py
    np.testing.assert_allclose(got[np.dtype(np.float32)][0], got[np.dtype(np.float64)][0],
                               rtol=1e-6, atol=1e-6)  # float32 x
    np.testing.assert_allclose(got[np.dtype(np.float32)][1], got[np.dtype(np.float64)][1],
                               rtol=1e-6, atol=1e-6)  # float32 scatter sums


@pytest.mark.parametrize("backend", BACKENDS)
def test_compact_rows_keep_float32(pair, backend):
    from fastppo._evaluator import policy_rows
    _, m32 = pair
    sigma = np.zeros(m32.n_pairs)
    sigma[m32.a_indptr[:-1]] = 1.0  # deterministic: compact rows are gathered
    a, p, idx, data, w = policy_rows(m32, sigma, backend=backend)
    assert data.dtype == np.float32 and data.shape[0] < m32.p_data.shape[0]
    expect = np.concatenate([m32.p_data[m32.p_indptr[k]:m32.p_indptr[k + 1]]
                             for k in m32.a_indptr[:-1]])
    np.testing.assert_array_equal(data, expect)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rollouts_on_float32_storage_agree_across_backends(backend):
    m32 = fastppo.garnet(40, 3, 4, gamma=0.9, seed=3, dtype=np.float32)
    pi = m32.uniform_policy()
    rng = np.random.default_rng(0)
    n_envs, T = 6, 8
    u_a, u_n = rng.random((n_envs, T)), rng.random((n_envs, T))
    start = rng.integers(0, m32.n_states, n_envs)

    def run(which):
        outs = [np.empty((n_envs, T), dtype=d) for d in
                (np.int64, np.int64, np.int64, np.int64, np.float64, np.float64, np.uint8, np.uint8)]
        get_kernel("rollout", which)(m32.a_indptr, pi, np.log(pi), m32.r, m32.p_indptr,
                                     m32.p_indices, m32.p_data, m32.terminal.astype(np.uint8),
                                     start, u_a, u_n, *outs, 1)
        return outs

    for a, b in zip(run(backend), run("numpy")):
        np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------- end to end
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("method", ["auto", "gmres", "lu", "bicgstab"])
def test_evaluate_and_visitation_solve_the_stored_mdp(pair, backend, method):
    mdp, m32 = pair
    exact = normalised(m32)
    pi, _ = random_policy(m32, 6)
    reg = fastppo.ReverseKL(0.3)
    ev = fastppo.evaluate(m32, pi, reg, method=method, backend=backend)
    v, q, adv = naive.evaluate(exact, pi, reg)
    np.testing.assert_allclose(ev.v, v, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mdp.to_pairs(ev.q), q, rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(mdp.to_pairs(ev.adv), adv, rtol=1e-10, atol=1e-10)
    d = fastppo.visitation(m32, pi, method=method, backend=backend)
    np.testing.assert_allclose(d, naive.visitation(exact, pi), rtol=1e-10, atol=1e-12)
    # the distance to the float64 MDP it was rounded from: within the documented bound
    v64 = naive.evaluate(mdp, pi, reg)[0]
    gap = np.abs(ev.v - v64).max()
    assert 0 < gap <= bound(mdp, v64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_gradient_of_the_stored_mdp(pair, backend):
    _, m32 = pair
    _, logits = random_policy(m32, 8)
    reg = fastppo.ForwardKL(0.2)
    g32 = fastppo.gradient(m32, logits, reg, backend=backend)
    g64 = fastppo.gradient(normalised(m32), logits, reg, backend=backend)
    np.testing.assert_allclose(g32, g64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("backend", BACKENDS)
def test_solve_the_stored_mdp(pair, backend):
    mdp, m32 = pair
    res = fastppo.solve(m32, backend=backend)
    assert res.converged
    # the Bellman optimality equation of the MDP it stands for, by dense brute force
    states, P, r = naive.dense(normalised(m32))
    q = r + m32.gamma * P @ res.v
    best = np.full(m32.n_states, -np.inf)
    np.maximum.at(best, states, q)
    np.testing.assert_allclose(res.v, best, rtol=1e-10, atol=1e-10)
    ref = fastppo.solve(normalised(m32), backend=backend)
    np.testing.assert_allclose(res.v, ref.v, rtol=1e-10, atol=1e-10)
    v64 = fastppo.solve(mdp, backend=backend).v
    assert np.abs(res.v - v64).max() <= bound(mdp, v64)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ppo_clip_on_the_stored_mdp(pair, backend):
    _, m32 = pair
    reg = fastppo.ReverseKL(0.1)
    runs = [fastppo.PPOClip(m, reg, inner_steps=3, backend=backend).run(4)
            for m in (m32, normalised(m32))]
    np.testing.assert_allclose(runs[0].policy, runs[1].policy, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(runs[0].history["J"], runs[1].history["J"], rtol=1e-10)


def test_episodic_float32_matches_float64():
    m64 = fastppo.token_tree(3, 3, gamma=1.0, seed=1)
    m32 = fastppo.token_tree(3, 3, gamma=1.0, seed=1, dtype=np.float32)
    pi, _ = random_policy(m64, 3)
    for backend in BACKENDS:
        np.testing.assert_allclose(fastppo.evaluate(m32, pi, backend=backend).v,
                                   fastppo.evaluate(m64, pi, backend=backend).v, rtol=1e-12)
        np.testing.assert_allclose(fastppo.visitation(m32, pi, backend=backend),
                                   fastppo.visitation(m64, pi, backend=backend), rtol=1e-12)


# ----------------------------------------------------------------- unsupported paths
def test_batched_evaluation_rejects_float32(pair):
    _, m32 = pair
    pis = np.stack([random_policy(m32, s)[0] for s in range(2)])
    with pytest.raises(ValueError, match="evaluate_batch does not support float32"):
        fastppo.evaluate_batch(m32, pis)
    with pytest.raises(ValueError, match="visitation_batch does not support float32"):
        fastppo.visitation_batch(m32, pis)
