"""Fewer passes over P (issue 12): the fused product kernel, Q̃ from the rows of the last
sweep, pass counts, visitation bit for bit across thread counts, and warm starts predicted
from the last solutions.

- ``bellman_products`` against the dense references of ``naive.py`` on every backend, 1 and
  2 threads, rectangular and ragged MDPs, policies with zeros and compact rows
  (deterministic policies), each side alone and both together; bit for bit equal to
  ``bellman_matvec`` / ``bellman_rmatvec`` for the same scatter chunks;
- the evaluator's lockstep solve: one pass per sweep, Q̃ without a pass of its own (and equal
  to ``q_values`` bit for bit), counts in ``n_passes`` and ``n_matvec``;
- ``predicted_start``: exact on a linear recurrence, falls back on a rough trajectory;
  fitted on the newest step of what drives the solutions (PPO-Clip's visitation: the
  policy's step), exact where the solutions move linearly with it and the steps' own fit
  is not, left for the own fit where it does not fit; PPO-Clip with predicted starts has
  the iterates of cold solves and needs fewer passes.
"""
import warnings

import numpy as np
import pytest

import fastppo
import fastppo.solvers as solvers
from fastppo import _krylov
import naive
from conftest import random_mdp, random_policy
from fastppo._backend import get_kernel
from fastppo._errors import UsageError
from fastppo._evaluator import Evaluator, policy_rows

EMPTY = np.empty(0)


def policies(mdp, seed):
    """(label, π): stochastic, with exact zeros, and deterministic (compact rows)."""
    pi = random_policy(mdp, seed, sharp=2.0)[0]
    zeros = pi.copy()
    for s in range(0, mdp.n_states, 2):
        lo, hi = mdp.a_indptr[s], mdp.a_indptr[s + 1]
        if hi - lo > 1:
            zeros[lo] = 0.0
            zeros[lo:hi] /= zeros[lo:hi].sum()
    det = np.zeros(mdp.n_pairs)
    det[mdp.a_indptr[1:] - 1] = 1.0  # the last action everywhere
    return [("stochastic", pi), ("zeros", zeros), ("deterministic", det)]


def products(kernel, rows_args, n_states, n_pairs, x, y, want_rows, chunks, n_threads):
    """(out_x, out_y, rows) of one bellman_products call (NaN where not written)."""
    out_x, out_y = np.full(n_states, np.nan), np.full(n_states, np.nan)
    rows = np.full(n_pairs, np.nan) if want_rows else EMPTY
    kernel(*rows_args, EMPTY if x is None else x, EMPTY if y is None else y,
           EMPTY if x is None else out_x, EMPTY if y is None else out_y, rows,
           np.full((chunks, 2 * n_states), np.nan), n_threads)
    return out_x, out_y, rows


@pytest.mark.parametrize("rect", [True, False], ids=["rectangular", "ragged"])
def test_bellman_products_match_dense_references(backend, n_threads, rect):
    mdp = random_mdp(21, n_states=17, n_actions=4, gamma=0.93, rectangular=rect, density=0.3)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=mdp.n_states), rng.normal(size=mdp.n_states)
    _, P, _ = naive.dense(mdp)
    k = get_kernel("bellman_products", backend)
    for label, pi in policies(mdp, 4):
        M = naive.P_pi(mdp, pi)
        want_x = x - mdp.gamma * M @ x
        want_y = y - mdp.gamma * M.T @ y
        compact = policy_rows(mdp, pi)
        assert (compact[0] is not mdp.a_indptr) == (label == "deterministic")
        args = (*compact, mdp.gamma)
        n_rows = compact[1].shape[0] - 1
        used = np.flatnonzero(pi) if label == "deterministic" else np.arange(mdp.n_pairs)
        for chunks in (1, 2, 3):
            for sides in ("xy", "x", "y"):
                ox, oy, rows = products(k, args, mdp.n_states, n_rows, x if "x" in sides else None,
                                        y if "y" in sides else None, "x" in sides, chunks, n_threads)
                what = f"{label} chunks={chunks} sides={sides}"
                if "x" in sides:
                    assert naive.rel_err(ox, want_x) <= 1e-12, what
                    # rows = P x for every pair of the rows, π = 0 ones included
                    assert naive.rel_err(rows, P[used] @ x) <= 1e-12, what
                else:
                    assert np.isnan(ox).all(), what
                if "y" in sides:
                    assert naive.rel_err(oy, want_y) <= 1e-12, what
                else:
                    assert np.isnan(oy).all(), what


@pytest.mark.parametrize("rect", [True, False], ids=["rectangular", "ragged"])
def test_float32_corrections_match_dense_references(n_threads, rect):
    """The mixed path's call: float32 x gathered (kept beside the sums when both sides run)
    and float32 scatter buffers. The gathers are exact, so out_x is the float64 product
    of the float32 values; the float32 sums leave out_y within float32 round-off. Numba
    and Cython agree bit for bit."""
    mdp = random_mdp(23, n_states=19, n_actions=3, gamma=0.9, rectangular=rect, density=0.3)
    rng = np.random.default_rng(7)
    x32, y = rng.normal(size=mdp.n_states).astype(np.float32), rng.normal(size=mdp.n_states)
    pi = policies(mdp, 8)[1][1]  # with zeros
    M = naive.P_pi(mdp, pi)
    x = x32.astype(np.float64)
    want_x, want_y = x - mdp.gamma * M @ x, y - mdp.gamma * M.T @ y
    args = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma)
    for chunks in (1, 2, 3):
        for sides in ("xy", "x", "y"):
            got = []
            for which in ("numba", "cython"):
                out_x, out_y = np.full(mdp.n_states, np.nan), np.full(mdp.n_states, np.nan)
                get_kernel("bellman_products", which)(
                    *args, x32 if "x" in sides else EMPTY, y if "y" in sides else EMPTY,
                    out_x if "x" in sides else EMPTY, out_y if "y" in sides else EMPTY, EMPTY,
                    np.full((chunks, 2 * mdp.n_states), np.nan, dtype=np.float32), n_threads)
                got.append(np.concatenate([out_x, out_y]))
                what = f"{which} chunks={chunks} sides={sides}"
                if "x" in sides:
                    assert naive.rel_err(out_x, want_x) <= 1e-12, what
                if "y" in sides:
                    assert naive.rel_err(out_y, want_y) <= 1e-6, what
            np.testing.assert_array_equal(*got)


@pytest.mark.parametrize("rect", [True, False], ids=["rectangular", "ragged"])
def test_fused_pass_equals_separate_kernels_bit_for_bit(backend, n_threads, rect):
    """The same sums in the same order: out_x is bellman_matvec's, out_y bellman_rmatvec's
    for the same number of scatter chunks, rows those of q_values (r = 0, γ = 1)."""
    mdp = random_mdp(22, n_states=23, n_actions=3, gamma=0.9, rectangular=rect, density=0.3)
    rng = np.random.default_rng(5)
    x, y = rng.normal(size=mdp.n_states), rng.normal(size=mdp.n_states)
    k = {name: get_kernel(name, backend)
         for name in ("bellman_products", "bellman_matvec", "bellman_rmatvec", "q_values")}
    for _, pi in policies(mdp, 6)[:2]:
        args = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma)
        mx, my, q = np.empty(mdp.n_states), np.empty(mdp.n_states), np.empty(mdp.n_pairs)
        k["bellman_matvec"](*args, x, mx, n_threads)
        k["q_values"](mdp.p_indptr, mdp.p_indices, mdp.p_data, np.zeros(mdp.n_pairs), 1.0, x, q,
                      n_threads)
        for chunks in (1, 2, 4):
            k["bellman_rmatvec"](*args, y, my, np.empty((chunks, mdp.n_states)), n_threads)
            ox, oy, rows = products(k["bellman_products"], args, mdp.n_states, mdp.n_pairs, x, y,
                                    True, chunks, n_threads)
            np.testing.assert_array_equal(ox, mx)
            np.testing.assert_array_equal(oy, my)
            np.testing.assert_array_equal(rows, q)


@pytest.mark.parametrize("which", ["numba", "cython"])
def test_visitation_is_bit_identical_on_one_and_two_threads(which):
    """The scatter chunks do not depend on the thread count (max(2, n_threads)), so the
    transposed products, and every solve made of them, are the same bit for bit."""
    mdp = fastppo.garnet(400, 4, 5, gamma=0.95, seed=1)
    slow = fastppo.garnet(300, 3, 3, gamma=0.99, seed=0, locality=3)
    # "auto" finishes slow systems on the assembled matrix: force BiCGSTAB on the products
    for m, method in ((mdp, "auto"), (slow, "bicgstab")):
        pi = random_policy(m, 2)[0]
        mu = np.random.default_rng(3).dirichlet(np.ones(m.n_states))
        out = []
        for n_threads in (1, 2):
            E = Evaluator(m, fastppo.ForwardKL(0.2), which, n_threads, method=method)
            E.load(pi)
            ev, vis = E.evaluation_and_visitation(mu)
            out.append((ev.v, ev.q, vis.d, E.visitation(mu).d, vis.method))
        for a, b in zip(*out):
            np.testing.assert_array_equal(a, b)
    assert "bicgstab" in out[0][-1]


def test_lockstep_solve_passes_and_q_from_the_last_sweep(backend, n_threads):
    mdp = fastppo.garnet(300, 4, 5, gamma=0.95, seed=4)
    reg = fastppo.ForwardKL(0.2)
    mu = mdp.rho
    pi = random_policy(mdp, 8)[0]
    E = Evaluator(mdp, reg, backend, n_threads)
    E.load(pi)
    before = E.n_passes
    ev, vis = E.evaluation_and_visitation(mu)
    assert ev.method == vis.method == "richardson"
    # one pass per lockstep sweep and per solo sweep; Q̃ from the rows: no pass of its own
    assert ev.n_passes == vis.n_passes == max(ev.n_matvec, vis.n_matvec) == E.n_passes - before
    alone = E.evaluation()
    assert alone.n_passes == alone.n_matvec + 1  # the products alone, then q_values
    np.testing.assert_array_equal(ev.q, alone.q)  # the same numbers, bit for bit
    v, q, _ = naive.evaluate(mdp, pi, reg)
    assert naive.rel_err(ev.q, q) <= 1e-10 and naive.rel_err(ev.v, v) <= 1e-10
    assert naive.rel_err(vis.d, naive.visitation(mdp, pi, mu)) <= 1e-10
    assert E.visitation(mu).n_passes == vis.n_matvec
    # a deterministic policy reads compact rows, which hold no Q̃ of the other pairs
    # (no regularizer: forward KL is infinite there)
    mdp = fastppo.garnet(300, 4, 30, gamma=0.95, seed=4)  # fast mixing with one action
    det = np.zeros(mdp.n_pairs)
    det[mdp.a_indptr[:-1]] = 1.0
    E = Evaluator(mdp, None, backend, n_threads)
    E.load(det)
    ev, vis = E.evaluation_and_visitation(mu)
    assert ev.method == vis.method == "richardson"
    assert ev.n_passes == max(ev.n_matvec, vis.n_matvec) + 1
    assert naive.rel_err(ev.q, naive.evaluate(mdp, det)[1]) <= 1e-10
    assert naive.rel_err(vis.d, naive.visitation(mdp, det, mu)) <= 1e-10


def test_q_from_rows_follows_the_solution_scale(backend):
    """Rewards of any scale: the sweeps run on b / 2^e, and Q̃ = r + γ 2^e rows is still
    r + γ P v bit for bit."""
    base = fastppo.garnet(120, 3, 4, gamma=0.9, seed=6)
    pi = random_policy(base, 1)[0]
    for c in (1e-200, 3.0, 1e250):
        mdp = fastppo.MDP(base.a_indptr, base.a_indices, base.p_indptr, base.p_indices,
                          base.p_data, base.r * c, base.gamma)
        E = Evaluator(mdp, None, backend, 1)
        E.load(pi)
        ev, _ = E.evaluation_and_visitation(mdp.rho)
        q = np.empty(mdp.n_pairs)
        get_kernel("q_values", backend)(mdp.p_indptr, mdp.p_indices, mdp.p_data, mdp.r,
                                        mdp.gamma, ev.v, q, 1)
        np.testing.assert_array_equal(ev.q, q)
        # Ã from the same pass over the pairs (q_advantages) as from q afterwards
        adv = np.empty(mdp.n_pairs)
        get_kernel("advantages", backend)(mdp.a_indptr, pi, q, adv, 1)
        np.testing.assert_array_equal(ev.adv, adv)


# ------------------------------------------------------------- predicted warm starts
def trajectory(n, modes, seed=0, size=200):
    """x_k = x_∞ + Σ_j λ_j^k u_j, k = 0..n−1: what linearly converging iterates look like."""
    rng = np.random.default_rng(seed)
    x_inf = rng.normal(size=size)
    us = [rng.normal(size=size) for _ in modes]
    return [x_inf + sum(lam ** k * u for lam, u in zip(modes, us)) for k in range(n)]


def steps_of(xs):
    """(x, steps newest first, sketches) of the solutions xs (oldest first)."""
    t = solvers._Trajectory()
    for x in xs:
        t.push(x)
    return t


def test_predicted_start_is_exact_on_a_linear_recurrence():
    modes = (0.9, 0.7, -0.5)
    xs = trajectory(solvers.WARM_STEPS + 5, modes)
    t = steps_of(xs[:-1])
    assert len(t.steps) == solvers.WARM_STEPS and len(t.sketches) == solvers.WARM_STEPS
    np.testing.assert_array_equal(t.steps[0], xs[-2] - xs[-3])
    start = t.start()
    scale = np.abs(xs[-1] - xs[-2]).max()
    assert np.abs(start - xs[-1]).max() <= 1e-9 * scale  # three modes: m = 11 ≥ 3 fits them
    assert np.abs(xs[-2] - xs[-1]).max() == scale  # the plain warm start is off by a full step
    # fewer steps than modes: better than the last solution, not exact
    t = steps_of(xs[-4:-1])  # two steps: one coefficient
    err = np.abs(t.start() - xs[-1]).max()
    assert 1e-9 * scale < err < scale


def test_steps_kept_within_the_memory_budget(monkeypatch):
    """At most WARM_BYTES of steps per system (the 10⁷-state runs), never fewer than two."""
    xs = trajectory(solvers.WARM_STEPS + 5, (0.9, 0.7, -0.5))
    step_bytes = xs[0].nbytes  # float64 below FLOAT32_STEPS_FROM states
    for budget, kept in ((5 * step_bytes, 5), (5 * step_bytes - 1, 4), (0, 2),
                         (10**12, solvers.WARM_STEPS)):
        monkeypatch.setattr(solvers, "WARM_BYTES", budget)
        t = steps_of(xs)
        assert len(t.steps) == len(t.sketches) == kept
        np.testing.assert_array_equal(t.steps[-1], xs[-kept] - xs[-kept - 1])  # the newest


def test_predicted_start_falls_back_when_the_path_is_rough():
    rng = np.random.default_rng(1)
    u, w = rng.normal(size=100), rng.normal(size=100)
    xs = [rng.normal(size=100)]
    for step in (u, u + 1e-8 * w, w):  # a turn that two nearly parallel steps cannot fit
        xs.append(xs[-1] + step)
    t = steps_of(xs)
    assert t.start() is t.x  # the fit extrapolates ~1e8 w − 1e8 u: far longer than a step
    assert steps_of(xs[:1]).start() is xs[0] and steps_of(xs[:2]).start() is xs[1]
    assert solvers._Trajectory().start() is None
    # steps near the top of the doubles (a resumed checkpoint with an absurd v_warm):
    # the fit overflows, and the start falls back to x without a warning
    for big in (1e300, 1e307):
        far = xs[0] + big * u / np.abs(u).max()
        t = steps_of([xs[0], far, far + w, far + 2 * w])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            start = t.start()
        assert np.isfinite(start).all()


def test_predicted_start_fits_the_newest_step_of_what_drives_the_solutions():
    """Solutions that move linearly with a driver (x = L u, as d with π to first order)
    whose steps follow no recurrence: a fit on the driver's newest step, known before the
    solve, predicts the next solution; the solutions' own fit cannot."""
    rng = np.random.default_rng(3)
    basis = rng.normal(size=(3, 40))  # the driver's steps lie in 3 dimensions
    L = rng.normal(size=(200, 40))
    us = np.cumsum(rng.normal(size=(10, 3)) @ basis, axis=0)  # u_0 .. u_9, steps at random
    xs = [L @ u for u in us]
    t = solvers._Trajectory()
    for k, x in enumerate(xs[:-1]):
        t.push(x, design=None if k == 0 else solvers.sketch(us[k] - us[k - 1]))
    newest = solvers.sketch(us[-1] - us[-2])
    scale = np.abs(xs[-1] - xs[-2]).max()
    assert np.abs(t.start(newest) - xs[-1]).max() <= 1e-9 * scale
    assert np.abs(t.start() - xs[-1]).max() > 0.01 * scale  # the own fit extrapolates
    # a newest step its design cannot fit (a sample of π that missed it, or one at random)
    # leaves the own fit, bit for bit
    for missed in (np.zeros_like(newest), rng.normal(size=newest.shape)):
        np.testing.assert_array_equal(t.start(missed), t.start())
    # a step without its design: the own fit
    t.push(xs[-1])
    np.testing.assert_array_equal(t.start(newest), t.start())


def test_visitation_starts_fitted_on_the_policy_save_passes_not_accuracy(monkeypatch):
    mdp = fastppo.garnet(400, 5, 5, gamma=0.97, seed=7)
    reg = fastppo.ForwardKL(0.1)
    fitted = fastppo.PPOClip(mdp, reg).run(60)
    with monkeypatch.context() as m:
        m.setattr(solvers.PPOClip, "_visit_design", lambda self: None)
        own = fastppo.PPOClip(mdp, reg).run(60)
    bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(fitted.v)
    np.testing.assert_allclose(fitted.logits, own.logits, rtol=0, atol=1e-9)
    assert np.abs(fitted.history["J"] - own.history["J"]).max() <= bound
    assert fitted.history["n_passes"][20:].sum() < own.history["n_passes"][20:].sum()


def test_predicted_starts_save_passes_not_accuracy(monkeypatch):
    mdp = fastppo.garnet(400, 5, 5, gamma=0.97, seed=7)
    reg = fastppo.ForwardKL(0.1)
    predicted = fastppo.PPOClip(mdp, reg).run(40)
    cold = fastppo.PPOClip(mdp, reg, warm_start=False).run(40)
    monkeypatch.setattr(solvers, "predicted_start", lambda x, steps, sketches, design=None, residuals=None: x)
    last = fastppo.PPOClip(mdp, reg).run(40)  # warm starts from the last solutions only
    # each solve is accurate to its relative residual 1e-12, whatever its start:
    # |ΔJ| ≤ ‖Δv‖₂ ≤ 1e-12 (1+γ)/(1−γ) ‖v‖₂
    bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(predicted.v)
    for res in (cold, last):
        np.testing.assert_allclose(predicted.logits, res.logits, rtol=0, atol=1e-9)
        assert np.abs(predicted.history["J"] - res.history["J"]).max() <= bound
    h, h_last = predicted.history, last.history
    assert h["n_passes"][20:].sum() < 0.7 * h_last["n_passes"][20:].sum()
    assert h_last["n_passes"].sum() < cold.history["n_passes"].sum()


def test_float32_steps_above_the_threshold(monkeypatch, tmp_path):
    """From FLOAT32_STEPS_FROM states on the steps are kept in float32 (half the memory at
    10⁷ states): the starts change by rounding only, every solve is still certified, most
    of the passes the predicted starts save stay, and a checkpoint resumes bit for bit."""
    mdp = fastppo.garnet(400, 5, 5, gamma=0.97, seed=7)
    reg = fastppo.ForwardKL(0.1)
    with monkeypatch.context() as m:
        m.setattr(solvers, "predicted_start", lambda x, steps, sketches, design=None, residuals=None: x)
        last_only = fastppo.PPOClip(mdp, reg).run(40).history["n_passes"][20:].sum()
    exact = fastppo.PPOClip(mdp, reg).run(40)
    monkeypatch.setattr(solvers, "FLOAT32_STEPS_FROM", 1)
    ppo = fastppo.PPOClip(mdp, reg)
    ppo.run(20)
    assert all(dx.dtype == np.float32 for t in (ppo._vs, ppo._ds) for dx in t.steps)
    assert len(ppo._vs.steps) == solvers.WARM_STEPS
    ppo.save(tmp_path)
    rest = ppo.run(20)
    assert len(rest.history) == len(exact.history) == 40
    resumed = fastppo.PPOClip.resume(tmp_path).run(20)
    np.testing.assert_array_equal(resumed.logits, rest.logits)
    np.testing.assert_array_equal(resumed.history["n_passes"], rest.history["n_passes"])
    bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(exact.v)
    np.testing.assert_allclose(rest.logits, exact.logits, rtol=0, atol=1e-9)
    assert np.abs(rest.history["J"] - exact.history["J"]).max() <= bound
    # the rounding of 12 steps costs passes (float64 187, float32 240, the last solution
    # alone 636 over iterations 21–40): ≥ 85 % of the saving is kept
    saved = last_only - rest.history["n_passes"][20:].sum()
    assert saved >= 0.85 * (last_only - exact.history["n_passes"][20:].sum())


# ------------------------------------------------------------- mixed precision
@pytest.mark.parametrize("which", ["numba", "cython"])
@pytest.mark.parametrize("rect", [True, False], ids=["rectangular", "ragged"])
def test_float32_corrections_are_certified_in_float64(which, n_threads, rect):
    """Sweeps on float32 corrections (forced on small MDPs): every converged solve holds a
    true float64 residual ≤ 1e-12 (recomputed here), and matches np.linalg.solve."""
    mdp = random_mdp(31, n_states=40, n_actions=3, gamma=0.97, rectangular=rect, density=0.3)
    reg = fastppo.ForwardKL(0.3)
    mu = np.random.default_rng(2).dirichlet(np.ones(mdp.n_states))
    pi = random_policy(mdp, 5)[0]
    approximate = []
    E = Evaluator(mdp, reg, which, n_threads, mixed=True)
    real = E._corrections
    E._corrections = lambda *args: approximate.append(1) or real(*args)
    E.load(pi)
    ev, vis = E.evaluation_and_visitation(mu)
    assert len(approximate) > 0  # from a cold start, most sweeps are on corrections
    # the true residuals, by dense products
    M = np.eye(mdp.n_states) - mdp.gamma * naive.P_pi(mdp, pi)
    c = naive.r_pi(mdp, pi) - reg.tau * naive.divergence(mdp, pi, reg)
    y = vis.d / (1 - mdp.gamma)
    assert np.linalg.norm(c - M @ ev.v) <= 1e-12 * np.linalg.norm(c)
    assert np.linalg.norm(mu - M.T @ y) <= 1e-12 * np.linalg.norm(mu)
    assert naive.rel_err(ev.v, np.linalg.solve(M, c)) <= 1e-10
    assert naive.rel_err(vis.d, (1 - mdp.gamma) * np.linalg.solve(M.T, mu)) <= 1e-10
    assert naive.rel_err(ev.q, naive.evaluate(mdp, pi, reg)[1]) <= 1e-10
    exact = Evaluator(mdp, reg, which, n_threads, mixed=False)
    exact.load(pi)
    ev0, vis0 = exact.evaluation_and_visitation(mu)
    assert ev.n_passes <= ev0.n_passes + 2  # a certificate at most per system


@pytest.mark.parametrize("predict_last", [True, False])
def test_float32_corrections_in_a_ppo_run(monkeypatch, predict_last):
    """PPO-Clip with the lockstep solves on float32 corrections has the iterates of the
    exact sweeps (to the solves' accuracy). Late in the run, once the predicted warm
    starts are within 1e5 tol, the sweeps stay on corrections but for the product
    predicted to meet tol (``PREDICT_LAST``): as many passes as the exact sweeps, and
    corrections in nearly every solve (a solve whose products are all predicted to meet
    tol has none); without the prediction every late product is exact."""
    monkeypatch.setattr(_krylov, "PREDICT_LAST", predict_last)
    mdp = fastppo.garnet(300, 5, 8, gamma=0.97, seed=3)
    reg = fastppo.ForwardKL(0.1)
    exact = fastppo.PPOClip(mdp, reg)
    mixed = fastppo.PPOClip(mdp, reg)
    E = mixed._E = Evaluator(mdp, reg, mixed.backend, mixed.n_threads, mixed=True)
    approximate, real = [], E._corrections
    E._corrections = lambda *args: approximate.append(mixed.n_iter) or real(*args)
    a, b = exact.run(40), mixed.run(40)
    np.testing.assert_allclose(a.logits, b.logits, rtol=0, atol=1e-9)
    bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(a.v)
    assert np.abs(a.history["J"] - b.history["J"]).max() <= bound
    if predict_last:
        late = np.bincount(approximate, minlength=40)[20:]
        assert (late > 0).mean() >= 0.9  # corrections in nearly every late solve
        assert b.history["n_passes"][20:].mean() <= a.history["n_passes"][20:].mean() + 0.5
    else:
        assert approximate and max(approximate) < 30  # warm starts within 1e5 tol: exact sweeps


# ------------------------------------------------------------- lin_tol="adaptive"
def iterates(ppo, tol=1e-8, max_iter=400):
    """The policies of a run to gap ≤ tol (the run's own stopping rule), oldest first."""
    policies = []
    while ppo.n_iter < max_iter:
        policies.append(ppo.pi.copy())
        if ppo.step()["gap"] <= tol:
            return policies
    raise AssertionError("no convergence")


def test_adaptive_lin_tol_has_the_gaps_of_the_default():
    """Every iterate of both runs re-evaluated at 1e-13: the gaps agree to 1e-3 relative
    (or 1e-12 |J*|), both runs stop at the same iteration ± 1, with fewer passes."""
    mdp = fastppo.garnet(300, 5, 5, gamma=0.97, seed=11)
    reg = fastppo.ForwardKL(0.1)
    J_star = fastppo.solve(mdp, reg).J
    runs = {tol: fastppo.PPOClip(mdp, reg, reference=J_star, lin_tol=tol)
            for tol in (1e-12, "adaptive")}
    policies = {tol: iterates(ppo) for tol, ppo in runs.items()}
    n_default, n_adaptive = (len(p) for p in policies.values())
    assert abs(n_default - n_adaptive) <= 1
    gaps = {tol: np.array([J_star - fastppo.evaluate(mdp, pi, reg, tol=1e-13).J for pi in p])
            for tol, p in policies.items()}
    n = min(n_default, n_adaptive)
    a, b = gaps[1e-12][:n], gaps["adaptive"][:n]
    assert (np.abs(a - b) <= np.maximum(1e-3 * np.abs(a), 1e-12 * abs(J_star))).all()
    # the recorded gaps are those of the re-evaluation to the same accuracy
    h = runs["adaptive"].history["gap"]
    assert (np.abs(h - gaps["adaptive"]) <= np.maximum(1e-3 * np.abs(h), 1e-12 * abs(J_star))).all()
    passes = {tol: ppo.history["n_passes"].sum() for tol, ppo in runs.items()}
    assert passes["adaptive"] < 0.9 * passes[1e-12]


def test_adaptive_lin_tol_is_checked_and_saved(tmp_path):
    mdp = fastppo.garnet(50, 3, 3, gamma=0.9, seed=1)
    with pytest.raises(ValueError, match="lin_tol must be a positive float or 'adaptive', got 'fast'"):
        fastppo.PPOClip(mdp, lin_tol="fast")
    with pytest.raises(ValueError, match="lin_tol must be > 0"):
        fastppo.PPOClip(mdp, lin_tol=0.0)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), lin_tol="adaptive")
    ppo.run(5)
    ppo.save(tmp_path)
    resumed = fastppo.PPOClip.resume(tmp_path)
    assert resumed.lin_tol == "adaptive"
    full = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), lin_tol="adaptive").run(10)
    np.testing.assert_array_equal(resumed.run(5).logits, full.logits)


@pytest.mark.parametrize("n_states", [1 << 10, 1 << 17], ids=["plain-loops", "prefetching"])
def test_products_on_both_sides_of_the_prefetch_threshold(n_states):
    """From PREFETCH_STATES states on the compiled products prefetch, below they run loops
    without: both paths against a product written differently (a SciPy CSR of P_π), and the
    two compiled twins equal bit for bit (the same sums in the same order)."""
    import scipy.sparse as sp

    from fastppo._kernels.numba._prefetch import PREFETCH_STATES

    assert (n_states >= PREFETCH_STATES) == (n_states == 1 << 17)
    mdp = fastppo.garnet(n_states, 2, 3, gamma=0.9, seed=1)
    pi = random_policy(mdp, 7, sharp=2.0)[0]
    rng = np.random.default_rng(8)
    x, y = rng.normal(size=n_states), rng.normal(size=n_states)
    P = sp.csr_array((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, n_states))
    Pi = sp.csr_array((pi, np.arange(mdp.n_pairs), mdp.a_indptr), shape=(n_states, mdp.n_pairs))
    P_pi = (Pi @ P).tocsr()
    want_x, want_y, want_q = x - mdp.gamma * (P_pi @ x), y - mdp.gamma * (P_pi.T @ y), P @ x
    args = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma)
    got = {}
    for which in ("numba", "cython"):
        k = {name: get_kernel(name, which)
             for name in ("bellman_products", "bellman_matvec", "bellman_rmatvec", "q_values")}
        mx, my, q = np.empty(n_states), np.empty(n_states), np.empty(mdp.n_pairs)
        k["bellman_matvec"](*args, x, mx, 1)
        k["bellman_rmatvec"](*args, y, my, np.empty((2, n_states)), 1)
        k["q_values"](mdp.p_indptr, mdp.p_indices, mdp.p_data, np.zeros(mdp.n_pairs), 1.0, x, q, 1)
        np.testing.assert_allclose(mx, want_x, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(my, want_y, rtol=1e-13, atol=1e-13)
        np.testing.assert_allclose(q, want_q, rtol=1e-13, atol=1e-13)
        got[which] = [mx, my, q]
        for sides in ("x", "y", "xy"):
            ox, oy, rows = products(k["bellman_products"], args, n_states, mdp.n_pairs,
                                    x if "x" in sides else None, y if "y" in sides else None,
                                    "x" in sides, 2, 1)
            if "x" in sides:
                np.testing.assert_array_equal(ox, mx)
                np.testing.assert_array_equal(rows, q)
            if "y" in sides:
                np.testing.assert_array_equal(oy, my)
    for a, b in zip(got["numba"], got["cython"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("which", ["numba", "cython", "numpy"])
def test_evaluate_takes_q_from_the_rows_of_its_last_sweep(which, monkeypatch):
    """evaluate's sweeps keep P x per pair on the product predicted to meet tol
    (``_evaluator.LAST_ROWS``): when it does, Q̃ and Ã come from its rows, one pass fewer,
    the same bits as with a pass of ``q_values``; when the prediction misses (policy 3 on
    the garnet) or the sweeps hand over (a slow-mixing MDP), Q̃ comes from a pass; both
    against the dense reference."""
    import fastppo._evaluator as evaluator

    mdp = fastppo.garnet(300, 4, 5, gamma=0.95, seed=4)
    slow = fastppo.garnet(300, 3, 3, gamma=0.99, seed=0, locality=3)
    saved = []
    for m, seed in ((mdp, 1), (mdp, 3), (slow, 3)):
        pi = random_policy(m, seed)[0]
        out = {}
        for on in (True, False):
            monkeypatch.setattr(evaluator, "LAST_ROWS", on)
            out[on] = fastppo.evaluate(m, pi, backend=which, n_threads=1)
        for name in ("v", "q", "adv"):
            np.testing.assert_array_equal(getattr(out[True], name), getattr(out[False], name))
        assert out[True].J == out[False].J and out[True].n_matvec == out[False].n_matvec
        saved.append(out[False].n_passes - out[True].n_passes)
        v, q, adv = naive.evaluate(m, pi)
        assert naive.rel_err(out[True].q, q) <= 1e-9 and naive.rel_err(out[True].adv, adv) <= 1e-9
    assert out[True].method != "richardson"  # the slow MDP's sweeps handed over
    assert saved == [1, 0, 0]


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_sketch_and_start_by_blocks(monkeypatch, dtype):
    """The CountSketch and the predicted start, computed per block of CHUNK entries (no
    vector-sized temporaries at 10⁷ states), against one unblocked NumPy expression."""
    xs = [x.astype(dtype) for x in trajectory(solvers.WARM_STEPS + 3, (0.9, 0.7, -0.5),
                                              size=1000)]
    bucket, sign = solvers._count_sketch(1000)
    assert bucket.dtype == np.uint16 and sign.dtype == np.int8
    assert set(np.unique(sign)) == {-1, 1} and bucket.max() < solvers.SKETCH_ROWS
    x = xs[-1]
    whole = np.bincount(bucket.astype(np.intp), weights=sign * x.astype(np.float64),
                        minlength=solvers.SKETCH_ROWS)
    np.testing.assert_array_equal(solvers.sketch(x), whole)  # one block: the same sums
    t = steps_of(xs)
    starts = {}
    for chunk in (solvers.CHUNK, 7):
        monkeypatch.setattr(solvers, "CHUNK", chunk)
        np.testing.assert_allclose(solvers.sketch(x), whole, rtol=1e-12,
                                   atol=1e-13 * np.abs(x).sum())
        starts[chunk] = solvers.predicted_start(t.x, t.steps, t.sketches)
    # the same sketches: elementwise in the same order, the blocks do not change a bit
    assert starts[7] is not t.x
    np.testing.assert_array_equal(starts[7], starts[solvers.CHUNK])


# ------------------------------------------------- the value start fitted on residuals
@pytest.fixture
def small_probes(monkeypatch):
    """Probes on small MDPs too (PROBE_MIN 8: garnet(2000, ...) probes 19 states)."""
    monkeypatch.setattr(solvers, "PROBE_MIN", 8)


def test_value_residuals_are_those_of_the_kept_solutions(small_probes):
    """What the value start is fitted on: for each kept solution v_j (x, x − Δ_1, ...), its
    residual b − (I − γP_π) v_j under the newly loaded policy at the probe states, from
    v_j and Q̃_j kept there; against dense P_π assembled by explicit loops."""
    mdp = fastppo.garnet(2000, 3, 3, gamma=0.95, seed=4)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1))
    ppo.run(6)
    states, pairs, starts = ppo._probe
    assert states.shape[0] == 2000 // (8 * (solvers.WARM_STEPS + 1))
    assert len(ppo._vs.probes) == len(ppo._vs.steps) + 1 == 6
    E = ppo._evaluator
    E.load(ppo.pi)  # the next policy, as _evaluate loads it before the start
    got = ppo._value_residuals(ppo._vs.probes)
    P_pi = np.zeros((mdp.n_states, mdp.n_states))
    for s in range(mdp.n_states):
        for k in range(mdp.a_indptr[s], mdp.a_indptr[s + 1]):
            for j in range(mdp.p_indptr[k], mdp.p_indptr[k + 1]):
                P_pi[s, mdp.p_indices[j]] += ppo.pi[k] * mdp.p_data[j]
    b = E.regularized_reward()
    v = ppo._vs.x
    for j, row in enumerate(got):
        expected = b - (v - mdp.gamma * (P_pi @ v))
        np.testing.assert_allclose(row, expected[states], rtol=0,
                                   atol=1e-12 * np.abs(b).max())
        if j < len(ppo._vs.steps):
            v = v - ppo._vs.steps[j]


def test_residual_fitted_value_starts_save_passes_not_accuracy(monkeypatch):
    """Late iterations take fewer passes with the value start fitted on residuals than with
    the extrapolation alone, and the iterates are the same to the solves' accuracy."""
    mdp = fastppo.garnet(10_000, 4, 4, gamma=0.99, seed=1)  # 96 probe states
    reg = fastppo.ForwardKL(0.1)
    fitted = fastppo.PPOClip(mdp, reg)
    assert fitted._probe[0].shape[0] == 96
    fitted = fitted.run(40)
    monkeypatch.setattr(solvers, "probe_points", lambda a_indptr: None)
    extrapolated = fastppo.PPOClip(mdp, reg).run(40)
    bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(fitted.v)
    np.testing.assert_allclose(fitted.logits, extrapolated.logits, rtol=0, atol=1e-9)
    assert np.abs(fitted.history["J"] - extrapolated.history["J"]).max() <= bound
    # 247 against 266 passes (cython and numba)
    passes = [r.history["n_passes"][20:].sum() for r in (fitted, extrapolated)]
    assert passes[0] < 0.95 * passes[1], passes


def test_probes_resume_bit_for_bit_and_are_checked(small_probes, tmp_path):
    """The probes are checkpointed (v_probe0 for v_warm, v_probe1.. for the solutions
    behind it): a resume continues bit for bit; a damaged probe is named in the error."""
    mdp = fastppo.garnet(2000, 3, 3, gamma=0.95, seed=4)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1))
    ppo.run(16)
    ppo.save(tmp_path)
    rest = ppo.run(8)
    path = tmp_path / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as f:
        saved = {k: f[k] for k in f.files}
    names = {f"v_probe{i}" for i in range(solvers.WARM_STEPS + 1)}
    assert names <= set(saved)
    resumed = fastppo.PPOClip.resume(tmp_path).run(8)
    np.testing.assert_array_equal(resumed.logits, rest.logits)
    np.testing.assert_array_equal(resumed.history["n_passes"], rest.history["n_passes"])
    size = saved["v_probe0"].shape[0]
    for changes, message in (
            ({"v_probe3": np.zeros(3)},
             rf"v_probe3 must have shape \({size},\) \(the probed states and pairs\)"),
            ({"v_probe2": np.full(size, np.nan)}, "v_probe2 must be finite"),
            ({"v_warm": None, **{f"v_step{i}": None for i in range(1, 13)}},
             r"v_probe0 without its solution")):
        damaged = {**saved, **changes}
        with open(path, "wb") as f:
            np.savez(f, **{k: v for k, v in damaged.items() if v is not None})
        with pytest.raises(UsageError, match=message):
            fastppo.PPOClip.resume(tmp_path)


def test_residual_fit_recovers_an_affine_residual_and_keeps_a_better_fit():
    """_residual_fit: where ρ_0 = Σ c_i (ρ_i − ρ_{i−1}) holds exactly it finds c (the start's
    sampled residual vanishes); a fit that predicts the held-out (odd) probes better than
    the one fitted on the even ones is kept as it is."""
    rng = np.random.default_rng(5)
    diffs = rng.normal(size=(4, 300))
    c = np.array([0.7, -0.2, 1.5, 0.3])
    rows = np.cumsum(np.vstack([diffs.T @ c, diffs]), axis=0)  # ρ_0, ρ_0 + D_1, ...
    got, miss = solvers._residual_fit(rows, None)
    np.testing.assert_allclose(got, c, rtol=1e-10)
    assert miss < 1e-12
    spoiled = rows.copy()
    spoiled[0, ::2] += rng.normal(size=150)  # the even probes no longer fit any c
    given = (c, 0.0)
    assert solvers._residual_fit(spoiled, given) is given


def test_ppoclip_keeps_its_solutions_one_sweep_ahead(monkeypatch):
    """PPO-Clip's warm starts come from Ṽ and d one sweep past each certified solve
    (``v_ahead``, with Q̃ at the probe pairs, and ``d_ahead``), while the update takes the
    certified Ã and d: the same iterates as with the certified solutions kept (to the
    solves' accuracy), in fewer passes late in the run."""
    mdp = fastppo.garnet(2000, 5, 8, gamma=0.97, seed=3)
    reg = fastppo.ForwardKL(0.1)
    ahead = fastppo.PPOClip(mdp, reg).run(60)
    real = Evaluator.evaluation_and_visitation
    monkeypatch.setattr(Evaluator, "evaluation_and_visitation",
                        lambda self, *args, ahead=False, **kwargs: real(self, *args, **kwargs))
    certified = fastppo.PPOClip(mdp, reg).run(60)
    np.testing.assert_allclose(ahead.logits, certified.logits, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ahead.history["J"], certified.history["J"], rtol=1e-11)
    late = slice(30, None)
    assert ahead.history["n_passes"][late].sum() < certified.history["n_passes"][late].sum()


@pytest.mark.parametrize("which", ["numba", "cython", "numpy"])
def test_value_ahead_carries_its_q_at_the_probe_pairs(which):
    """``ahead``: the Evaluation's ``v_ahead`` is Ṽ one sweep on, and ``q_probe_ahead``
    Q̃ of it, r + γ P v_ahead, at ``probe_pairs`` (for the residual fit of the next start)."""
    mdp = random_mdp(26, n_states=40, n_actions=3, gamma=0.95, rectangular=False, density=0.3)
    pi = random_policy(mdp, 4)[0]
    E = Evaluator(mdp, fastppo.ForwardKL(0.2), which, 1)
    E.probe_pairs = np.sort(np.random.default_rng(3).choice(mdp.n_pairs, 17, replace=False))
    E.load(pi)
    ev, vis = E.evaluation_and_visitation(np.full(mdp.n_states, 1 / mdp.n_states), ahead=True)
    assert "v_ahead" in ev and "d_ahead" in vis
    rows = np.array([mdp.p_data[mdp.p_indptr[k]:mdp.p_indptr[k + 1]] @
                     ev.v_ahead[mdp.p_indices[mdp.p_indptr[k]:mdp.p_indptr[k + 1]]]
                     for k in E.probe_pairs])
    want = mdp.r[E.probe_pairs] + mdp.gamma * rows
    assert naive.rel_err(ev.q_probe_ahead, want) <= 1e-13
    assert not np.array_equal(ev.v_ahead, ev.v)
