"""A single solve's Richardson sweeps in one pass each (issue 17, target 1).

``row_sweep`` makes a whole sweep, x + r with r = b − (x − γ W x), and r's sums, on a CSR W
of at most 2¹⁶ states: P_πᵀ's entries for the visitation (written by its first sweep,
``transposed_sweep``). ``pair_sweep`` makes the value system's sweeps on P's own rows by
state, each entry weighted by its pair's π as it is read (``MDP._pair_codes``): row_sweep's
sums on P_π's state rows, without writing them. Checked against loops in the kernels'
order (bit for bit), the dense P, np.linalg.solve, twins and thread counts;
``_evaluator.ROW_SWEEP_STATES`` and ``ROW_SWEEP_ENTRIES`` lowered so that small MDPs take
the path.
"""
import numpy as np
import pytest

import fastppo
import fastppo._evaluator as evaluator
import naive
from conftest import gather_rows_cases, random_policy
from fastppo._backend import get_kernel
from fastppo._evaluator import Evaluator

COMPILED = ["numba", "cython"]


def eight_sums(indptr, sources, weights, x, i):
    """Row i of W x in the kernels' eight partial sums (tests/test_transposed.py)."""
    start, stop = indptr[i], indptr[i + 1]
    full = start + (stop - start) // 8 * 8
    a = [0.0] * 8
    for e in range(start, stop):
        lane = (e - start) % 8 if e < full else 0
        a[lane] = a[lane] + weights[e] * x[sources[e]]
    return ((a[0] + a[1]) + (a[2] + a[3])) + ((a[4] + a[5]) + (a[6] + a[7]))


@pytest.fixture
def small_rows(monkeypatch):
    """Row sweeps from one state and one entry per state on."""
    monkeypatch.setattr(evaluator, "ROW_SWEEP_STATES", 1)
    monkeypatch.setattr(evaluator, "ROW_SWEEP_ENTRIES", 1)


def state_rows(mdp, pi):
    return (mdp.p_indptr[mdp.a_indptr], mdp._transitions.narrow_indices(mdp.n_states),
            np.repeat(pi, np.diff(mdp.p_indptr)) * mdp.p_data)


@pytest.mark.parametrize("prefetch", [False, True], ids=lambda f: f"prefetch{int(f)}")
@pytest.mark.parametrize("shift", [0.0, 0.3])
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_row_sweep_is_a_sweep_in_eight_sums_with_its_chunks_sums(which, n_threads, shift,
                                                                 prefetch):
    """x + shift stored, then the sweep, bit for bit; the sums per chunk in order, then
    over the chunks in order; prefetching the rows changes no bit."""
    mdp = fastppo.garnet(61, 3, 11, gamma=0.9, seed=3)
    pi = random_policy(mdp, 4)[0]
    rng = np.random.default_rng(5)
    b, x = rng.normal(size=mdp.n_states), rng.normal(size=mdp.n_states)
    rows = state_rows(mdp, pi)
    xs = x + shift  # stored
    r = np.array([b[i] - (xs[i] - mdp.gamma * eight_sums(*rows, xs, i)) for i in range(mdp.n_states)])
    for n_chunks in (1, 4, mdp.n_states + 3):  # more chunks than rows: some empty
        out, stats = np.full(mdp.n_states, np.nan), np.full((n_chunks, 4), np.nan)
        x_in = x.copy()
        sums = get_kernel("row_sweep", which)(*rows, mdp.gamma, b, x_in, shift, out, stats,
                                              prefetch, n_threads)
        np.testing.assert_array_equal(x_in, xs)
        np.testing.assert_array_equal(out, xs + r)
        expect = [0.0, 0.0, np.inf, -np.inf]
        for c in range(n_chunks):
            part = r[c * mdp.n_states // n_chunks:(c + 1) * mdp.n_states // n_chunks]
            total = squares = 0.0
            for v in part:  # in order
                total, squares = total + v, squares + v * v
            least, most = (part.min(), part.max()) if part.size else (np.inf, -np.inf)
            np.testing.assert_array_equal(stats[c], [total, squares, least, most])
            expect = [expect[0] + total, expect[1] + squares, min(expect[2], least),
                      max(expect[3], most)]
        np.testing.assert_array_equal(sums, expect)


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED + ["numpy"])
def test_pair_sweep_is_row_sweep_on_the_state_rows(which, n_threads):
    """P's rows weighted by π as they are read: the bits of row_sweep on P_π's state rows
    (π(k) P[j] stored), with states of 1 to 20 pairs (the permute takes up to 16, a
    gather more) and π with exact zeros."""
    rng = np.random.default_rng(5)
    for mdp, pi in _pair_cases(rng):
        b, x = rng.normal(size=mdp.n_states), rng.normal(size=mdp.n_states)
        rows = state_rows(mdp, pi)
        expect = [np.empty(mdp.n_states), np.empty((3, 4))]
        sums = get_kernel("row_sweep", which)(*rows, mdp.gamma, b, x.copy(), 0.3, *expect,
                                              False, n_threads)
        out, stats = np.full(mdp.n_states, np.nan), np.full((3, 4), np.nan)
        got = get_kernel("pair_sweep", which)(rows[0], mdp.a_indptr, mdp._pair_codes,
                                              rows[1], mdp.p_data, pi, mdp.gamma, b,
                                              x.copy(), 0.3, out, stats, n_threads)
        np.testing.assert_array_equal(out, expect[0])
        np.testing.assert_array_equal(stats, expect[1])
        assert got == sums


def _pair_cases(rng):
    """(MDP, π) of a garnet and of an MDP whose states have 1 to 20 pairs (the permute takes
    up to 16, a gather more), each with a random π and one with exact zeros."""
    counts = np.array([1, 3, 8, 9, 16, 17, 20, 2] * 5)
    mdps = (fastppo.garnet(61, 3, 11, gamma=0.9, seed=3),
            fastppo.MDP.from_sa_pairs(*_pairs(counts, rng), gamma=0.9))
    for mdp in mdps:
        for pi in (random_policy(mdp, 4)[0], _with_zeros(random_policy(mdp, 6)[0], mdp)):
            yield mdp, pi


def _pairs(counts, rng):
    """(s_indices, a_indices, P, R) of an MDP whose state s has counts[s] actions, each with
    one to eleven successors."""
    n = counts.shape[0]
    s_idx = np.repeat(np.arange(n), counts)
    a_idx = np.concatenate([np.arange(c) for c in counts])
    P = np.zeros((s_idx.shape[0], n))
    for k in range(s_idx.shape[0]):
        succ = rng.choice(n, size=rng.integers(1, 12), replace=False)
        P[k, succ] = rng.dirichlet(np.ones(succ.shape[0]))
    return s_idx, a_idx, P, rng.normal(size=s_idx.shape[0])


def _with_zeros(pi, mdp):
    """π with its first pair of every other state set to 0 (renormalised)."""
    pi = pi.copy()
    first = mdp.a_indptr[:-1:2]
    pi[first[np.diff(mdp.a_indptr)[::2] > 1]] = 0.0
    return pi / np.repeat(np.add.reduceat(pi, mdp.a_indptr[:-1]), np.diff(mdp.a_indptr))


def test_pair_codes_are_each_entrys_pair_among_its_states():
    mdp = fastppo.garnet(30, 4, 5, gamma=0.9, seed=1)
    codes = mdp._pair_codes
    states = mdp.s_indices
    for k in range(mdp.n_pairs):
        lo, hi = mdp.p_indptr[k], mdp.p_indptr[k + 1]
        assert (codes[lo:hi] == k - mdp.a_indptr[states[k]]).all()
    assert codes.dtype == np.uint8 and not codes.flags.writeable
    wide = fastppo.MDP.from_sa_pairs(np.zeros(257, dtype=int), np.arange(257),
                                  np.ones((257, 1)), np.zeros(257), gamma=0.9)
    assert wide._pair_codes is None  # more than 256 pairs in a state: no pair sweeps


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED + ["numpy"])
def test_transposed_sweep_writes_p_pi_transposed_and_sweeps_on_it(which, n_threads):
    mdp = fastppo.garnet(61, 3, 11, gamma=0.9, seed=3)
    pi = random_policy(mdp, 4)[0]
    rng = np.random.default_rng(5)
    b, x = rng.normal(size=mdp.n_states), rng.normal(size=mdp.n_states)
    t_indptr, pairs, sources, data = mdp._transitions.transposed_pattern(mdp.n_states,
                                                                         mdp.s_indices)
    tw = np.full(data.shape[0], np.nan)
    get_kernel("transposed_weights", which)(pairs, data, pi, tw, n_threads)
    expect = [np.empty(mdp.n_states), np.empty((3, 4))]
    sums = get_kernel("row_sweep", which)(t_indptr, sources, tw, mdp.gamma, b, x.copy(), 0.3,
                                          *expect, False, n_threads)
    weights, out, stats = np.full(tw.shape, np.nan), np.empty(mdp.n_states), np.empty((3, 4))
    got = get_kernel("transposed_sweep", which)(t_indptr, pairs, sources, data, pi, mdp.gamma,
                                                b, x.copy(), 0.3, out, weights, stats,
                                                n_threads)
    np.testing.assert_array_equal(weights, tw)
    np.testing.assert_array_equal(out, expect[0])
    np.testing.assert_array_equal(stats, expect[1])
    assert got == sums


@pytest.mark.parametrize("zeros", [False, True], ids=["full", "zeros"])
@pytest.mark.parametrize("gamma", [0.99, 0.9999])
@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED)
def test_evaluations_on_row_sweeps_are_certified_and_agree(which, n_threads, gamma, zeros,
                                                           monkeypatch, small_rows):
    mdp = fastppo.garnet(400, 4, 6, gamma=gamma, seed=9)
    pi = random_policy(mdp, 10)[0]
    if zeros:  # one action of every other state never taken
        pi = pi.reshape(mdp.n_states, 4)
        pi[::2, 0] = 0.0
        pi = (pi / pi.sum(axis=1, keepdims=True)).ravel()
    A = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    v_ref, q_ref, adv_ref = naive.evaluate(mdp, pi)
    out = {}
    for threshold in (1, None):
        monkeypatch.setattr(evaluator, "ROW_SWEEP_STATES", threshold)
        E = Evaluator(mdp, None, which, n_threads)
        E.load(pi)
        system = E._value_system()
        assert (system.sweep is not None) == (threshold is not None)
        out[threshold] = E.evaluation()
    ev, plain = out[1], out[None]
    # the stopping rule: tol (1e-12), or the round-off floor 10 eps (1 + γ) / (1 − γ)
    target = max(1e-12, 10 * np.finfo(float).eps * (1 + gamma) / (1 - gamma)) * (1 + 1e-3)
    c = naive.r_pi(mdp, pi)
    assert ev.residual <= target
    assert np.linalg.norm(c - A @ ev.v) / np.linalg.norm(c) <= target
    assert ev.method == "richardson"
    # on garnets the sweeps converge, and the last product (with P v per pair) serves Q̃:
    # no pass of q_values where the last was predicted (so for the full policy at
    # γ = 0.99); one where tol was met by a sweep not predicted to meet it
    extra = ev.n_passes - ev.n_matvec
    assert extra in (0, 1) and (extra == 0 or gamma > 0.999 or zeros)
    assert abs(ev.n_matvec - plain.n_matvec) <= 1
    bound = 1e-10 / (1.0 - gamma) * 1e-2
    assert naive.rel_err(ev.v, v_ref) <= bound and naive.rel_err(ev.q, q_ref) <= bound
    np.testing.assert_allclose(ev.adv, adv_ref, rtol=0, atol=bound * np.abs(q_ref).max())
    sums = np.add.reduceat(pi * ev.adv, mdp.a_indptr[:-1])
    assert np.abs(sums).max() <= 1e-12 * np.abs(ev.q).max()
    np.testing.assert_allclose(ev.v, plain.v, rtol=1e-10 if gamma > 0.999 else 1e-12)


@pytest.mark.parametrize("gamma", [0.99, 0.9999])
@pytest.mark.parametrize("which", COMPILED)
def test_visitations_on_row_sweeps_are_certified_and_agree(which, gamma, monkeypatch,
                                                           small_rows):
    mdp = fastppo.garnet(400, 4, 6, gamma=gamma, seed=9)
    pi = random_policy(mdp, 10)[0]
    mu = np.random.default_rng(11).dirichlet(np.ones(mdp.n_states))
    A = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", 1)
    out = {}
    for threshold in (1, None):
        monkeypatch.setattr(evaluator, "ROW_SWEEP_STATES", threshold)
        E = Evaluator(mdp, None, which, 1)
        E.load(pi)
        assert (E._visit_system(mu, None)[0].sweep is not None) == (threshold is not None)
        out[threshold] = E.visitation(mu)
    vis, plain = out[1], out[None]
    # the first sweep writes P_πᵀ's entries (no pass of its own), the path without makes
    # them by a pass of transposed_weights
    assert vis.n_passes == vis.n_matvec and plain.n_passes == plain.n_matvec + 1
    target = max(1e-12, 10 * np.finfo(float).eps * (1 + gamma) / (1 - gamma)) * (1 + 1e-3)
    y = vis.d / (1.0 - mdp.gamma)
    assert vis.residual <= target
    assert np.linalg.norm(mu - A.T @ y) / np.linalg.norm(mu) <= target
    assert vis.method == "richardson" and abs(vis.n_matvec - plain.n_matvec) <= 1
    assert naive.rel_err(vis.d, naive.visitation(mdp, pi, mu)) <= 1e-10 / (1.0 - gamma) * 1e-2
    np.testing.assert_allclose(vis.d, plain.d, rtol=1e-10, atol=1e-15)


def test_row_sweeps_give_the_same_bits_on_both_twins_and_thread_counts(small_rows, monkeypatch):
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", 1)
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=12)
    pi = random_policy(mdp, 13)[0]
    out = {(b, n): (fastppo.evaluate(mdp, pi, backend=b, n_threads=n),
                    fastppo.visitation(mdp, pi, backend=b, n_threads=n))
           for b in COMPILED for n in (1, 2)}
    first_ev, first_d = out["cython", 1]
    for ev, d in out.values():
        for name in ("v", "q", "adv"):
            np.testing.assert_array_equal(getattr(ev, name), getattr(first_ev, name))
        np.testing.assert_array_equal(d, first_d)


def test_lockstep_solves_make_no_rows(small_rows, monkeypatch):
    """PPO-Clip's lockstep solves take fused passes on P's own rows: P_πᵀ's entries are not
    made for them (that would cost a pass per policy)."""
    monkeypatch.setattr(evaluator, "TRANSPOSED_STATES", 1)
    mdp = fastppo.garnet(300, 3, 5, gamma=0.95, seed=12)
    E = Evaluator(mdp, None, "cython", 1)
    E.load(random_policy(mdp, 13)[0])
    ev, vis = E.evaluation_and_visitation(mdp.rho)
    assert E._transposed is None
    assert ev.n_passes == vis.n_passes == E.n_passes
    E.visitation(mdp.rho)  # a single solve makes P_πᵀ's entries on its first sweep
    assert E._transposed


def test_where_row_sweeps_apply(monkeypatch):
    mdp, pi, cases = gather_rows_cases()
    monkeypatch.setattr(evaluator, "ROW_SWEEP_STATES", 1)
    grid = fastppo.gridworld(20, 20, gamma=0.95)  # 12 entries a state: short rows
    for m, which, policy, applies in ((mdp, "cython", pi, False), (grid, "cython", None, False)):
        E = Evaluator(m, None, which, 1)
        E.load(random_policy(m, 16)[0] if policy is None else policy)
        assert E._row_sweeps_apply() == applies  # below ROW_SWEEP_ENTRIES (32) a state
    monkeypatch.setattr(evaluator, "ROW_SWEEP_ENTRIES", 1)
    for m, which, policy, applies in cases:
        E = Evaluator(m, None, which, 1)
        E.load(policy)
        assert E._row_sweeps_apply() == applies, (which, m.p_data.dtype)
    for threshold in (None, mdp.n_states + 1):
        monkeypatch.setattr(evaluator, "ROW_SWEEP_STATES", threshold)
        E = Evaluator(mdp, None, "cython", 1)
        E.load(pi)
        assert not E._row_sweeps_apply()


@pytest.mark.parametrize("n_threads", [1, 2], ids=lambda n: f"threads{n}")
@pytest.mark.parametrize("which", COMPILED + ["numpy"])
def test_q_products_is_bellman_products_then_q_advantages(which, n_threads):
    """The last product of a value solve with Q̃ and Ã: the bits of bellman_products' value
    side with its rows, then q_advantages of them (π with exact zeros; 1 to 20 pairs)."""
    rng = np.random.default_rng(7)
    for mdp, pi in _pair_cases(rng):
        x, scale = rng.normal(size=mdp.n_states), mdp.gamma * 2.0 ** 5
        L, S = mdp.n_pairs, mdp.n_states
        cols = mdp._transitions.narrow_indices(S)
        rows, out = np.empty(L), np.empty(S)
        get_kernel("bellman_products", which)(mdp.a_indptr, mdp.p_indptr, cols, mdp.p_data,
                                              pi, mdp.gamma, x, np.empty(0), out, np.empty(0),
                                              rows, np.empty((2, S)), n_threads)
        q, adv = np.empty(L), np.empty(L)
        get_kernel("q_advantages", which)(mdp.a_indptr, pi, rows, mdp.r, scale, q, adv,
                                          n_threads)
        got = [np.full(S, np.nan), np.full(L, np.nan), np.full(L, np.nan)]
        get_kernel("q_products", which)(mdp.a_indptr, mdp.p_indptr, cols, mdp.p_data, pi,
                                        mdp.gamma, x, mdp.r, scale, *got, n_threads)
        for a, b in zip(got, (out, q, adv)):
            np.testing.assert_array_equal(a, b)


def test_an_evaluation_takes_q_and_advantages_from_its_last_product():
    """evaluate's Q̃ and Ã from the last sweep's product (q_products) are those of the
    rows' path (Q̃ into a caller's buffer: bellman_products, then q_advantages), bit for
    bit, with the same passes; and they satisfy Σ_a π Ã = 0 and Q̃ = r + γ P v."""
    mdp = fastppo.garnet(6000, 6, 6, gamma=0.95, seed=2)
    pi = random_policy(mdp, 3)[0]
    for which in COMPILED:
        fused, rows = Evaluator(mdp, None, which, 1), Evaluator(mdp, None, which, 1)
        fused.load(pi)
        rows.load(pi)
        assert fused._row_sweeps_apply()
        a = fused.evaluation()
        b = rows.evaluation(q_out=np.empty(mdp.n_pairs))
        for name in ("v", "q", "adv"):
            np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
        assert a.n_passes == b.n_passes and a.method == "richardson"
        sums = np.add.reduceat(pi * a.adv, mdp.a_indptr[:-1])
        assert np.abs(sums).max() <= 1e-12 * np.abs(a.q).max()
        np.testing.assert_allclose(a.q, mdp.r + mdp.gamma * (mdp.P @ a.v), rtol=0,
                                   atol=1e-12 * np.abs(a.q).max())
