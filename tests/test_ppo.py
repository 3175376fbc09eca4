"""Deterministic PPO-Clip (``PPOClip``) and its baselines (``SoftmaxPG``, ``NPG``,
``KLPenaltyPPO``): the update against SPEC §1 computed by hand, clipping on the right
side, convergence to ``solve``'s optimum, backend parity of whole trajectories, the
history, run control, and every rejection path."""
import functools
import math

import numpy as np
import pytest

import fastppo
import naive
from conftest import random_mdp, random_policy
from fastppo import _codes
from fastppo._backend import get_kernel
from fastppo._evaluator import ppo_log_ref

FIELDS = ("iter", "J", "gap", "max_abs_adv", "clipfrac", "kl", "grad_norm", "n_matvec", "n_passes",
          "seconds")
REGS = {
    "none": lambda: None,
    "reverse_kl": lambda: fastppo.ReverseKL(0.4),
    "forward_kl": lambda: fastppo.ForwardKL(0.4),
    "chi2": lambda: fastppo.ChiSquare(0.4),
    "js": lambda: fastppo.JensenShannon(0.4),
    "alpha-1": lambda: fastppo.AlphaDivergence(0.4, -1.0),
}


@pytest.fixture(autouse=True)
def _serial_by_default():
    with fastppo.backend(n_threads=1):
        yield


@functools.lru_cache(maxsize=None)
def small(seed, rect, gamma=0.7, n_states=8):
    return random_mdp(seed, n_states=n_states, n_actions=3, gamma=gamma, rectangular=rect)


def random_mu(mdp, seed):
    mu = np.random.default_rng(seed).random(mdp.n_states) + 0.05
    return mu / mu.sum()


def rel(x, ref):
    x, ref = np.asarray(x, dtype=float), np.asarray(ref, dtype=float)
    return float(np.abs(x - ref).max() / max(np.abs(ref).max(), 1e-300))


def blocks(a_indptr):
    return [(int(a), int(b)) for a, b in zip(a_indptr[:-1], a_indptr[1:])]




def hand_steps(a_indptr, pi_old, adv, weight, ref, kind, tau, eps_low, eps_high, beta, lr,
               n_steps, theta):
    """SPEC §1's inner loop, state by state with explicit softmax, ratio and active set."""
    theta = np.array(theta, dtype=float)
    # π·f'(π/π_ref) per pair, from the SPEC §1 table in naive.py
    pf = (lambda p, ref: np.zeros_like(p)) if kind is None else functools.partial(naive.p_fprime, kind)
    for _ in range(n_steps):
        for s, (lo, hi) in enumerate(blocks(a_indptr)):
            p = np.exp(theta[lo:hi] - theta[lo:hi].max())
            p /= p.sum()
            r, a, old = p / pi_old[lo:hi], adv[lo:hi], pi_old[lo:hi]
            active = ((a > 0) & (r < 1 + eps_high)) | ((a < 0) & (r > 1 - eps_low))
            b = np.where(active, a, 0.0)
            f = pf(p, ref[lo:hi])
            g = p * (b - p @ b) - tau * (f - p * f.sum()) + beta * (old - p)
            theta[lo:hi] += lr * weight[s] * g
    return theta


def call_ppo_kernel(backend, a_indptr, pi_old, adv, weight, ref, code, tau, eps_low, eps_high,
                    beta, lr, n_steps, theta, n_threads=1):
    n_states, n_pairs = len(a_indptr) - 1, len(pi_old)
    theta = np.array(theta, dtype=float)
    pi_out, gsq, kl = np.empty(n_pairs), np.empty(n_states), np.empty(n_states)
    clipped = np.empty(n_states, dtype=np.int64)
    get_kernel("ppo_update", backend)(
        np.asarray(a_indptr, dtype=np.int64), np.asarray(pi_old, dtype=float),
        np.asarray(adv, dtype=float), np.asarray(weight, dtype=float),
        np.asarray(ref, dtype=float), ppo_log_ref(code, tau, np.asarray(ref, dtype=float)),
        code, 0.0, tau, eps_low, eps_high, beta, lr, n_steps, theta, pi_out, clipped, gsq, kl,
        n_threads)
    return theta, pi_out, clipped, gsq, kl


# ------------------------------------------------------- first step = exact gradient
@pytest.mark.parametrize("reg_name", list(REGS))
def test_first_inner_step_is_the_exact_gradient(backend, reg_name):
    for seed, rect in [(0, True), (1, False)]:
        mdp = small(seed, rect)
        _, logits = random_policy(mdp, 10 + seed, sharp=1.5)
        mu = random_mu(mdp, seed)
        reg = REGS[reg_name]()
        lr = 0.01
        ppo = fastppo.PPOClip(mdp, reg, inner_steps=1, lr=lr, init=logits, mu=mu, backend=backend)
        np.testing.assert_array_equal(ppo.mu, mu)
        row = ppo.step()
        g = fastppo.gradient(mdp, logits, reg, mu=ppo.mu, backend=backend)
        assert rel((ppo.logits - logits) / lr, g) <= 1e-10, (seed, rect)
        assert abs(row["grad_norm"] - np.linalg.norm(g)) <= 1e-10 * np.linalg.norm(g)
        assert row["clipfrac"] == 0.0  # K = 1: the only step is at ratio 1
        # with K = 10 the first of the inner steps is still the exact gradient (its norm is
        # recorded); the later ones differ
        ppo10 = fastppo.PPOClip(mdp, reg, inner_steps=10, lr=1.0, init=logits, mu=mu,
                                backend=backend)
        row10 = ppo10.step()
        assert abs(row10["grad_norm"] - np.linalg.norm(g)) <= 1e-10 * np.linalg.norm(g)
        assert rel(ppo10.logits - logits, g) > 1e-3


def test_default_weighting_mixes_rho_without_full_support(backend):
    base = small(2, False)
    rho = np.array(base.rho)
    rho[[1, 4]] = 0.0
    rho /= rho.sum()
    mdp = fastppo.MDP(base.a_indptr, base.a_indices, base.p_indptr, base.p_indices, base.p_data,
                      base.r, base.gamma, rho)
    ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.4), inner_steps=1, lr=0.01, backend=backend)
    np.testing.assert_allclose(ppo.mu, 0.5 * (rho + 1.0 / mdp.n_states), rtol=0, atol=1e-16)
    theta0 = ppo.logits.copy()
    ppo.step()
    g = fastppo.gradient(mdp, theta0, fastppo.ForwardKL(0.4), mu=ppo.mu, backend=backend)
    assert rel((ppo.logits - theta0) / 0.01, g) <= 1e-10
    uniform = fastppo.PPOClip(base, None, mu="uniform", backend=backend)
    np.testing.assert_array_equal(uniform.mu, np.full(base.n_states, 1.0 / base.n_states))


# ------------------------------------------------------------- the update by hand
# two states: pairs 0..2 and 3..6; ratios r = π_θ/π_old chosen around the clip range
A_INDPTR = np.array([0, 3, 7])
PI_OLD = np.array([0.5, 0.3, 0.2, 0.1, 0.2, 0.3, 0.4])
ADV = np.array([0.8, -0.3, -1.1, 0.6, -0.4, 0.0, 0.9])
WEIGHT = np.array([1.7, 0.6])
REF = np.array([0.2, 0.5, 0.3, 0.25, 0.25, 0.25, 0.25])
# multiply π_old by these factors (then renormalise) to set the ratios
SHIFT = np.log(np.array([1.5, 1.0, 0.5, 0.7, 1.4, 1.0, 1.6]))
THETA = np.log(PI_OLD) + SHIFT
EPS = 0.2


def _softmax(theta):
    out = np.empty_like(theta)
    for lo, hi in blocks(A_INDPTR):
        e = np.exp(theta[lo:hi] - theta[lo:hi].max())
        out[lo:hi] = e / e.sum()
    return out


def test_hand_setup_has_both_clips():
    """Guards the construction below: which pairs are clipped, on which side."""
    r = _softmax(THETA) / PI_OLD
    assert r[0] > 1 + EPS and ADV[0] > 0  # clipped from above (Ã > 0)
    assert r[2] < 1 - EPS and ADV[2] < 0  # clipped from below (Ã < 0)
    assert r[6] > 1 + EPS and ADV[6] > 0  # clipped from above
    assert 1 - EPS < r[1] < 1 + EPS and 1 - EPS < r[4] < 1 + EPS and r[3] < 1 - EPS
    assert ADV[3] > 0 and ADV[4] < 0  # active: r[3] is low but Ã > 0 pushes it up
    assert ADV[5] == 0.0  # neither active nor counted as clipped


def exact_kl(a_indptr, theta, theta0):
    """(KL(softmax θ ‖ softmax θ0), its tolerance) per state, at 50 digits: 1e-12 of
    Σ π |log(π/π0)| (the sum cancels: its condition), plus 8 ulp of the log-probabilities,
    8 eps Σ π (1 + |log π| + |log π0|) (each term's log ratio comes from rounded inputs)."""
    import mpmath as mp
    with mp.workdps(50):
        kls, scales = [], []
        for lo, hi in blocks(a_indptr):
            x, x0 = [mp.mpf(float(t)) for t in theta[lo:hi]], [mp.mpf(float(t)) for t in theta0[lo:hi]]
            lz, lz0 = mp.log(mp.fsum(mp.exp(t) for t in x)), mp.log(mp.fsum(mp.exp(t) for t in x0))
            terms = [mp.exp(t - lz) * ((t - lz) - (t0 - lz0)) for t, t0 in zip(x, x0)]
            logs = [mp.exp(t - lz) * (1 + abs(t - lz) + abs(t0 - lz0)) for t, t0 in zip(x, x0)]
            kls.append(float(mp.fsum(terms)))
            scales.append(float(1e-12 * mp.fsum(abs(t) for t in terms)
                                + 8 * np.finfo(float).eps * mp.fsum(logs)))
    return np.array(kls), np.array(scales)


@pytest.mark.parametrize("kind,code,tau", [(None, _codes.NONE, 0.0), ("ForwardKL", _codes.FORWARD_KL, 0.3),
                                           ("ReverseKL", _codes.REVERSE_KL, 0.3),
                                           ("ChiSquare", _codes.CHI_SQUARE, 0.3)])
def test_clipped_pairs_move_only_by_centering_and_regularizer(backend, n_threads, kind, code, tau):
    lr = 0.1
    theta, pi_out, clipped, gsq, kl = call_ppo_kernel(
        backend, A_INDPTR, PI_OLD, ADV, WEIGHT, REF, code, tau, EPS, EPS, 0.0, lr, 1, THETA,
        n_threads)
    p = _softmax(THETA)
    # by hand: B = Ã on active pairs (1, 3, 4), 0 on clipped pairs (0, 2, 6) and on pair 5
    B = np.array([0.0, ADV[1], 0.0, ADV[3], ADV[4], 0.0, 0.0])
    mean_b = np.array([p[0:3] @ B[0:3]] * 3 + [p[3:7] @ B[3:7]] * 4)
    w = np.repeat(WEIGHT, [3, 4])
    if kind is None:
        reg_term = np.zeros(7)
    elif kind == "ForwardKL":  # −τ(π f' − π Σ π f') = τ (π_ref − π)
        reg_term = tau * (REF - p)
    elif kind == "ReverseKL":  # −τ π (log(π/π_ref) − KL(π ‖ π_ref))
        lg = np.log(p / REF)
        kls = np.array([p[0:3] @ lg[0:3]] * 3 + [p[3:7] @ lg[3:7]] * 4)
        reg_term = -tau * p * (lg - kls)
    else:  # χ²: π f' = 2π(π/π_ref − 1)
        pf = 2 * p * (p / REF - 1)
        sums = np.array([pf[0:3].sum()] * 3 + [pf[3:7].sum()] * 4)
        reg_term = -tau * (pf - p * sums)
    g = w * (p * (B - mean_b) + reg_term)
    np.testing.assert_allclose(theta - THETA, lr * g, rtol=0, atol=1e-15)
    # the clipped pairs: only the centering (− π Σ π B) and the τ term, no π Ã
    for k in (0, 2, 6):
        assert abs((theta[k] - THETA[k]) - lr * w[k] * (-p[k] * mean_b[k] + reg_term[k])) <= 1e-15
    # the same as the generic hand loop
    np.testing.assert_allclose(theta, hand_steps(A_INDPTR, PI_OLD, ADV, WEIGHT, REF, kind, tau,
                                                 EPS, EPS, 0.0, lr, 1, THETA), rtol=0, atol=1e-15)
    np.testing.assert_array_equal(clipped, [2, 1])
    np.testing.assert_allclose(gsq, [np.sum(g[0:3] ** 2), np.sum(g[3:7] ** 2)], rtol=1e-14)
    new = _softmax(theta)
    np.testing.assert_allclose(pi_out, new, rtol=1e-14, atol=0)
    # the KL of the update: from the policy of the logits on entry (here not π_old, which
    # the clip reads; PPOClip passes π_old = softmax(θ)), against the defining sum at 50
    # digits, relative to Σ π |log(π/π0)| (the sum cancels: KL ≈ 3e-6 from terms ≈ 1e-3)
    kls, tol = exact_kl(A_INDPTR, theta, THETA)
    assert np.all(np.abs(kl - kls) <= tol), (kl, kls)


@pytest.mark.parametrize("offset", [0.0, 1e6, -1e9])
def test_kl_output_is_the_update_kl(backend, n_threads, offset):
    """kl_out = KL(π_new ‖ π_old) for π_old = softmax(θ) on entry (as PPOClip passes it),
    against the defining sum at 50 digits (tolerance: exact_kl), also for logits
    far from 0 (a per-state offset: the kernels take every logit from its lane max), small
    steps (KL ≈ 1e-8, the sum cancelling) and pairs with π_old = 0 (logit 800 below)."""
    mdp = small(11, False, n_states=70)
    rng = np.random.default_rng(12)
    theta0 = 2.0 * rng.standard_normal(mdp.n_pairs) + offset * rng.random(mdp.n_states)[
        np.repeat(np.arange(mdp.n_states), np.diff(mdp.a_indptr))]
    theta0[::7] -= 800.0  # e^-800 underflows: π_old = 0 there
    theta0[mdp.a_indptr[:-1]] += 801.0  # and never on the first pair of a state
    pi_old = fastppo.softmax(mdp, theta0, backend="numpy")
    adv, weight = rng.standard_normal(mdp.n_pairs), rng.random(mdp.n_states) + 0.1
    for lr in (1e-4, 0.5):
        theta, pi_new, _, _, kl = call_ppo_kernel(backend, mdp.a_indptr, pi_old, adv, weight,
                                                   pi_old, _codes.NONE, 0.0, 0.2, 0.2, 0.0, lr,
                                                   4, theta0, n_threads)
        kls, tol = exact_kl(mdp.a_indptr, theta, theta0)
        assert np.all(np.abs(kl - kls) <= tol), (lr, np.abs(kl - kls).max())
        assert kls.max() > 0 and np.isfinite(kl).all()  # the logits moved


def test_kl_penalty_term_by_hand(backend):
    """β (π_old − π) is the gradient of −β KL(π_old ‖ π_θ); several steps, no clip."""
    lr, beta = 0.05, 2.5
    theta = call_ppo_kernel(backend, A_INDPTR, PI_OLD, ADV, WEIGHT, REF, _codes.FORWARD_KL, 0.3, np.inf, np.inf,
                            beta, lr, 4, THETA)[0]
    want = hand_steps(A_INDPTR, PI_OLD, ADV, WEIGHT, REF, "ForwardKL", 0.3, np.inf, np.inf,
                      beta, lr, 4, THETA)
    np.testing.assert_allclose(theta, want, rtol=0, atol=1e-14)
    without = hand_steps(A_INDPTR, PI_OLD, ADV, WEIGHT, REF, "ForwardKL", 0.3, np.inf, np.inf,
                         0.0, lr, 4, THETA)
    assert np.abs(without - want).max() > 1e-3


def test_many_inner_steps_by_hand(backend, n_threads):
    theta = call_ppo_kernel(backend, A_INDPTR, PI_OLD, ADV, WEIGHT, REF, _codes.REVERSE_KL, 0.3, 0.1, 0.3, 0.0,
                            0.4, 25, THETA, n_threads)[0]
    want = hand_steps(A_INDPTR, PI_OLD, ADV, WEIGHT, REF, "ReverseKL", 0.3, 0.1, 0.3, 0.0, 0.4,
                      25, THETA)
    np.testing.assert_allclose(theta, want, rtol=0, atol=1e-13)


# ------------------------------------------------------------ asymmetric clip range
def test_each_side_stops_at_its_own_bound(backend):
    """One state pushed up only (Ã = (1, 0, 0)), one pushed down only (Ã = (−1, 0, 0)):
    with τ = 0 each climbs until its own side binds, then the update is exactly zero."""
    a_indptr = np.array([0, 3, 6])
    pi_old = np.full(6, 1.0 / 3.0)
    adv = np.array([1.0, 0.0, 0.0, -1.0, 0.0, 0.0])
    weight = np.ones(2)
    lr = 5e-3  # |Δ log ratio| ≤ 2 max|Δθ| ≤ 4 lr max|Ã| per step
    eps_low, eps_high = 0.1, 0.3
    out = call_ppo_kernel(backend, a_indptr, pi_old, adv, weight, pi_old, _codes.NONE, 0.0, eps_low,
                          eps_high, 0.0, lr, 1000, np.zeros(6))
    ratio = out[1] / pi_old
    slack = math.exp(4 * lr)
    assert 1 + eps_high <= ratio[0] < (1 + eps_high) * slack
    assert (1 - eps_low) / slack < ratio[3] <= 1 - eps_low
    np.testing.assert_array_equal(out[2], [1, 1])  # both pairs end clipped
    more = call_ppo_kernel(backend, a_indptr, pi_old, adv, weight, pi_old, _codes.NONE, 0.0, eps_low,
                           eps_high, 0.0, lr, 2000, np.zeros(6))
    np.testing.assert_array_equal(more[0], out[0])  # stopped: later steps are exact zeros


def bandit(gamma=0.5):
    """One state, three actions, r = (1, 0, 0): Ã under the uniform policy is (2, −1, −1)/3."""
    return fastppo.MDP.from_sa_pairs([0, 0, 0], [0, 1, 2], np.ones((3, 1)), [1.0, 0.0, 0.0], gamma)


@pytest.mark.parametrize("clip,ratios", [((0.1, 0.3), (1.3, 0.85)), ((0.3, 0.1), (1.6, 0.7)),
                                         (0.2, (1.4, 0.8))])
def test_asymmetric_clip_in_ppoclip(backend, clip, ratios):
    """π_θ(b) = π_θ(c) by symmetry, so r_b = (3 − r_a)/2. The Ã < 0 pairs bind at 1 − ε_low,
    the Ã > 0 pair at 1 + ε_high; whichever binds last ends on its bound. (0.1, 0.3): b, c
    stop at 0.9 first, a goes on to 1.3 (so b, c end at 0.85). (0.3, 0.1): a binds at 1.1
    but the centering still lifts it until b, c reach 0.7 (a ends at 1.6); likewise 0.2."""
    lr = 1e-3  # per-state step lr·d/(1−γ) = 2e-3
    ppo = fastppo.PPOClip(bandit(), None, clip=clip, inner_steps=5000, lr=lr, backend=backend)
    assert (ppo.eps_low, ppo.eps_high) == ((clip, clip) if np.ndim(clip) == 0 else clip)
    row = ppo.step()
    r = ppo.pi * 3.0
    slack = math.exp(4 * lr * 2.0)
    assert abs(r[1] - r[2]) <= 1e-12
    if math.isclose(ratios[0], 1 + ppo.eps_high):
        assert ratios[0] <= r[0] < ratios[0] * slack
    else:
        assert ratios[1] / slack < r[1] <= ratios[1]
    np.testing.assert_allclose(r, [ratios[0], ratios[1], ratios[1]], rtol=4 * (slack - 1))
    assert row["clipfrac"] == 1.0


# ------------------------------------------------------------------ convergence
CONVERGE = [  # (reg, tau, seed, rectangular, step): settings that converge
    ("forward_kl", 0.5, 2, True, 1.0), ("forward_kl", 0.5, 3, False, 1.0),
    ("forward_kl", 0.5, 1, True, 0.5), ("reverse_kl", 1.0, 2, True, 1.0),
    ("reverse_kl", 1.0, 3, False, 1.0),
]


def make(name, tau):
    return {"forward_kl": fastppo.ForwardKL, "reverse_kl": fastppo.ReverseKL}[name](tau)


@pytest.mark.parametrize("name,tau,seed,rect,step", CONVERGE)
def test_ppoclip_converges_to_the_optimum(backend, name, tau, seed, rect, step):
    mdp = small(seed, rect)
    reg = make(name, tau)
    res = fastppo.PPOClip(mdp, reg, step_scale=step, reference=True, backend=backend).run(500, tol=1e-9)
    star = fastppo.solve(mdp, reg, backend=backend)
    assert res.reference == star.J
    assert res.converged and res.n_iter < 500
    assert res.history["gap"][-1] <= 1e-9
    assert abs(star.J - res.J) <= 1e-8 and res.gap >= -1e-10
    assert (res.history["gap"][:-1] > 1e-9).all()  # it stopped at the first iteration below tol


# ---------------------------------------------------------------- backend parity
PARITY = [(fastppo.ForwardKL(0.5), 0.2, 3, False), (fastppo.ReverseKL(0.3), (0.1, 0.3), 0, True),
          (None, 0.2, 1, False)]


@functools.lru_cache(maxsize=None)
def trajectory(case, backend, n_threads):
    reg, clip, seed, rect = PARITY[case]
    mdp = small(seed, rect)
    ppo = fastppo.PPOClip(mdp, reg, clip=clip, step_scale=2.0, mu=random_mu(mdp, 5),
                          init=random_policy(mdp, 9)[1], backend=backend, n_threads=n_threads)
    res = ppo.run(12)
    return mdp.to_pairs(res.logits), res.history


@pytest.mark.parametrize("case", range(len(PARITY)))
def test_backends_follow_the_same_trajectory(backend, n_threads, case):
    ref_logits, ref_hist = trajectory(case, "numpy", 1)
    assert (ref_hist["clipfrac"] > 0).any()  # the clip branch is exercised
    logits, hist = trajectory(case, backend, n_threads)
    assert np.abs(logits - ref_logits).max() <= 1e-10 * max(1.0, np.abs(ref_logits).max())
    np.testing.assert_allclose(hist["J"], ref_hist["J"], rtol=1e-12, atol=0)
    np.testing.assert_array_equal(hist["clipfrac"], ref_hist["clipfrac"])


@pytest.mark.parametrize("alias", ["pi_old", "adv"])
@pytest.mark.parametrize("reg_name", ["none", "forward_kl", "reverse_kl", "js"])
def test_ppo_update_output_may_alias_pi_old_or_adv(backend, n_threads, alias, reg_name):
    # PPOClip writes π_new over Ã: the kernel must read every pair before it writes it
    mdp = small(5, False, n_states=40)
    rng = np.random.default_rng(6)
    pi_old = random_policy(mdp, 7)[0]
    adv, weight = rng.standard_normal(mdp.n_pairs), rng.random(mdp.n_states) + 0.1
    reg = REGS[reg_name]()
    code = _codes.NONE if reg is None else reg.code
    tau = 0.0 if reg is None else 0.4
    ref = random_policy(mdp, 8)[0]
    theta0 = np.log(pi_old) + 0.1 * rng.standard_normal(mdp.n_pairs)
    expected = call_ppo_kernel(backend, mdp.a_indptr, pi_old, adv, weight, ref, code, tau, 0.2,
                               0.2, 0.0, 0.5, 5, theta0, n_threads)
    inputs = {"pi_old": pi_old.copy(), "adv": adv.copy()}
    theta = theta0.copy()
    pi_out = inputs[alias]
    clipped = np.empty(mdp.n_states, dtype=np.int64)
    gsq, kl = np.empty(mdp.n_states), np.empty(mdp.n_states)
    get_kernel("ppo_update", backend)(mdp.a_indptr, inputs["pi_old"], inputs["adv"], weight, ref,
                                      ppo_log_ref(code, tau, ref), code, 0.0, tau, 0.2, 0.2, 0.0,
                                      0.5, 5, theta, pi_out, clipped, gsq, kl, n_threads)
    for got, want in zip((theta, pi_out, clipped, gsq, kl), expected):
        np.testing.assert_array_equal(got, want)


def test_ppo_log_ref_is_formed_once_and_only_for_reverse_kl():
    # the kernels read log π_ref for reverse KL only; elsewhere π_ref itself is passed (no copy)
    ref = np.array([0.5, 0.0, 0.5])
    assert ppo_log_ref(_codes.FORWARD_KL, 0.1, ref) is ref
    assert ppo_log_ref(_codes.REVERSE_KL, 0.0, ref) is ref
    np.testing.assert_array_equal(ppo_log_ref(_codes.REVERSE_KL, 0.1, ref),
                                  [np.log(0.5), -np.inf, np.log(0.5)])
    mdp = small(2, True)
    ppo = fastppo.PPOClip(mdp, fastppo.ReverseKL(0.1), backend="numpy")
    np.testing.assert_array_equal(ppo._log_ref, np.log(ppo._ref))


def test_ppo_clip_step_holds_four_per_pair_arrays(backend, monkeypatch, request):
    # at peak, a step holds θ, π_old, π_ref and one array that is the sweep rows, then Ã
    # (in place), then π_new: tracemalloc sees NumPy's allocations; n_pairs ≫ n_states so
    # the per-state vectors, the kernels' blocks (Numba's ppo_update: ~300 KB at 120
    # actions) and the visitation start's samples of π (DESIGN_PAIRS, a fixed number)
    # weigh little beside one per-pair array
    if backend == "numpy":
        pytest.skip("the NumPy reference computes with per-pair temporaries by design")
    tracemalloc = pytest.importorskip("tracemalloc")
    # the kept buffers from NumPy's allocator, which tracemalloc sees (not huge pages)
    monkeypatch.setattr(fastppo._memory, "HUGE_BYTES", 1 << 62)
    monkeypatch.setattr(fastppo.solvers, "DESIGN_PAIRS", 1 << 10)
    fastppo.solvers.design_pairs.cache_clear()
    request.addfinalizer(fastppo.solvers.design_pairs.cache_clear)
    mdp = fastppo.garnet(2000, 120, 3, gamma=0.9, seed=3)
    pair_bytes = 8 * mdp.n_pairs
    fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend=backend).run(2)  # compiles (numba)
    fastppo.release_buffers()  # the kept buffers are made under tracemalloc
    tracemalloc.start()
    try:
        ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), backend=backend)
        ppo.step()
        for _ in range(2):
            tracemalloc.reset_peak()
            ppo.step()
            peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert ppo.history["n_passes"][-1] > 1  # the step ran its sweeps
    assert 4 * pair_bytes <= peak < 4.5 * pair_bytes, f"{peak / pair_bytes:.2f} per-pair arrays"


# ---------------------------------------------------------------------- history
def test_history_fields(backend):
    mdp = small(2, True)
    reg = fastppo.ForwardKL(0.5)
    mu = random_mu(mdp, 3)
    seen, policies = [], []
    ppo = fastppo.PPOClip(mdp, reg, step_scale=0.25, mu=mu, reference=True, backend=backend)
    policies.append(ppo.pi.copy())
    logits = [ppo.logits.copy()]

    def callback(solver, row):
        assert solver is ppo
        seen.append(dict(row))
        policies.append(solver.pi.copy())
        logits.append(solver.logits.copy())

    res = ppo.run(10, callback=callback)
    h = res.history
    assert h.dtype.names == FIELDS and len(h) == 10 == res.n_iter
    np.testing.assert_array_equal(h, ppo.history)
    np.testing.assert_array_equal(h["iter"], np.arange(1, 11))
    np.testing.assert_array_equal(h["gap"], res.reference - h["J"])
    assert (h["gap"] >= -1e-10).all()
    assert (np.diff(h["J"]) > 0).all()  # small steps, forward KL: monotone
    for n in range(10):  # row n+1 describes the update π_n → π_{n+1}
        old, new = policies[n], policies[n + 1]
        ev = fastppo.evaluate(mdp, old, reg, backend="numpy", tol=1e-15)
        # the run's solves stop at relative residual 1e-12: ‖Δv‖∞ ≤ ‖A⁻¹‖∞ ‖r‖₂
        # ≤ 1e-12 (1+γ)/(1−γ) ‖v‖₂
        bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(ev.v)
        assert abs(h["J"][n] - ev.J) <= bound
        assert abs(h["max_abs_adv"][n] - np.abs(ev.adv).max()) <= 1e-12
        d = naive.visitation(mdp, old, mu)
        kl = sum(d[s] * (new[lo:hi] @ np.log(new[lo:hi] / old[lo:hi]))
                 for s, (lo, hi) in enumerate(blocks(mdp.a_indptr)))
        assert h["kl"][n] > 0 and abs(h["kl"][n] - kl) <= 1e-10 * kl
        g = naive.gradient(mdp, logits[n], reg, mu)
        assert abs(h["grad_norm"][n] - np.linalg.norm(g)) <= 1e-10 * np.linalg.norm(g)
        assert seen[n]["iter"] == n + 1 and seen[n]["J"] == h["J"][n]
    assert ((h["clipfrac"] >= 0) & (h["clipfrac"] <= 1)).all()
    np.testing.assert_allclose(h["clipfrac"] * mdp.n_pairs, np.round(h["clipfrac"] * mdp.n_pairs),
                               rtol=0, atol=1e-12)
    assert (h["n_matvec"] >= 2).all()
    # a lockstep sweep is one pass serving two products; Q̃ comes from the last sweep's rows
    assert ((h["n_passes"] >= 1) & (h["n_passes"] < h["n_matvec"])).all()
    assert np.isfinite(h["seconds"]).all() and (h["seconds"] > 0).all()
    final = fastppo.evaluate(mdp, policies[-1], reg, tol=1e-15)
    bound = 1e-12 * (1 + mdp.gamma) / (1 - mdp.gamma) * np.linalg.norm(final.v)  # as above
    assert abs(res.J - final.J) <= bound and res.gap == res.reference - res.J
    assert res.policy.shape == (mdp.n_states, mdp.n_actions)
    np.testing.assert_allclose(mdp.to_pairs(res.policy), policies[-1], rtol=0, atol=0)
    np.testing.assert_allclose(fastppo.softmax(mdp, res.logits), res.policy, rtol=1e-15)
    assert not res.converged and "RunResult(" in repr(res)
    # long after convergence π_new ≈ π_old and Σ π log(π/π_old) rounds to ±1e-17: KL stays ≥ 0
    h = fastppo.PPOClip(mdp, reg, reference=True, backend=backend).run(40).history
    assert h["gap"][-1] <= 2 * bound and (h["kl"] >= 0).all()  # J* and J: two solves and h["kl"][-10:].max() <= 1e-15


def test_history_without_reference_and_to_pandas():
    mdp = small(1, False)
    res = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.5)).run(3)
    assert res.reference is None and np.isnan(res.history["gap"]).all() and np.isnan(res.gap)
    assert mdp.to_table(res.logits).shape == (mdp.n_pairs,)
    pd = pytest.importorskip("pandas")
    df = res.to_pandas()
    assert isinstance(df, pd.DataFrame) and tuple(df.columns) == FIELDS and len(df) == 3


def test_step_matches_hand_computation_with_exact_quantities():
    """A whole outer iteration (K = 6, clip active) against SPEC's loop fed with the dense
    brute-force Ã_old and d_old of ``naive.py``."""
    mdp = small(4, False)
    reg = fastppo.ReverseKL(0.3)
    mu = random_mu(mdp, 4)
    _, init = random_policy(mdp, 4, sharp=1.0)
    lr = 3.0
    ppo = fastppo.PPOClip(mdp, reg, clip=(0.15, 0.25), inner_steps=6, lr=lr, mu=mu, init=init)
    row = ppo.step()
    pi_old = naive.softmax(mdp, init)
    adv = naive.evaluate(mdp, pi_old, reg)[2]
    w = naive.visitation(mdp, pi_old, mu) / (1 - mdp.gamma)
    want = hand_steps(mdp.a_indptr, pi_old, adv, w, mdp.uniform_policy(), "ReverseKL", 0.3, 0.15,
                      0.25, 0.0, lr, 6, init)
    assert np.abs(ppo.logits - want).max() <= 1e-10
    assert row["clipfrac"] > 0


# ------------------------------------------------------------------ run control
def test_warm_start_saves_products():
    mdp = fastppo.garnet(300, 4, 4, gamma=0.95, seed=3)
    reg = fastppo.ForwardKL(0.1)
    warm = fastppo.PPOClip(mdp, reg, warm_start=True).run(8)
    cold = fastppo.PPOClip(mdp, reg, warm_start=False).run(8)
    assert warm.history["n_matvec"].sum() < cold.history["n_matvec"].sum()
    assert warm.history["n_matvec"][1:].sum() < cold.history["n_matvec"][1:].sum()
    assert np.abs(mdp.to_pairs(warm.logits) - mdp.to_pairs(cold.logits)).max() <= 1e-9


def test_callback_and_tol_stop_the_run():
    mdp = small(2, True)
    reg = fastppo.ForwardKL(0.5)
    ppo = fastppo.PPOClip(mdp, reg, reference=True)
    res = ppo.run(50, callback=lambda solver, row: row["iter"] == 3)
    assert res.n_iter == 3 and len(res.history) == 3 and not res.converged
    res = ppo.run(2, callback=lambda solver, row: False)  # continues where it stopped
    np.testing.assert_array_equal(res.history["iter"], [1, 2, 3, 4, 5])
    assert ppo.run(0).n_iter == 5
    res = ppo.run(100, tol=1e-6)
    assert res.converged and res.history["gap"][-1] <= 1e-6 < res.history["gap"][-2]
    # without a reference, tol applies to the gradient norm
    ppo = fastppo.PPOClip(mdp, reg)
    res = ppo.run(100, tol=1e-4)
    g = res.history["grad_norm"]
    assert res.converged and g[-1] <= 1e-4 < g[-2]


def test_progress_bar(capsys):
    mdp = small(1, False)
    res = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.5), reference=True).run(3, progress=True)
    assert res.n_iter == 3
    err = capsys.readouterr().err
    assert "PPOClip" in err and "3/3" in err
    fastppo.NPG(mdp, None).run(2, progress=True)
    assert "NPG" in capsys.readouterr().err


# ------------------------------------------------------------------- baselines
def test_softmax_pg_update_is_lr_times_gradient(backend):
    mdp = small(3, False)
    reg = fastppo.ReverseKL(0.3)
    mu = random_mu(mdp, 1)
    lr = 0.05
    pg = fastppo.SoftmaxPG(mdp, reg, lr=lr, mu=mu, init=random_policy(mdp, 2)[1], backend=backend)
    assert pg.inner_steps == 1 and pg.eps_low == pg.eps_high == np.inf
    for _ in range(3):
        theta = pg.logits.copy()
        row = pg.step()
        g = fastppo.gradient(mdp, theta, reg, mu=mu, backend=backend)
        assert rel((pg.logits - theta) / lr, g) <= 1e-10
        assert row["clipfrac"] == 0.0


def test_npg_converges(backend):
    mdp = small(2, False)
    for reg, step, n in [(fastppo.ReverseKL(1.0), 1.0, 10), (fastppo.ForwardKL(0.5), 0.2, 100),
                         (None, 1.0, 60)]:
        res = fastppo.NPG(mdp, reg, step_scale=step, reference=True, backend=backend).run(n, tol=1e-9)
        assert res.converged and abs(res.J - res.reference) <= 1e-8, reg
    assert fastppo.NPG(mdp, None, step_scale=2.0).lr == 2.0 / (1.0 - mdp.gamma)  # as documented
    assert fastppo.NPG(mdp, fastppo.ForwardKL(0.5), step_scale=2.0).lr == 4.0
    # reverse KL with η = 1/τ is soft policy iteration: π_new ∝ π_ref exp(Q̃/τ)
    reg = fastppo.ReverseKL(1.0)
    npg = fastppo.NPG(mdp, reg, backend=backend)
    assert npg.lr == 1.0
    ev = fastppo.evaluate(mdp, npg.pi, reg)
    npg.step()
    q = mdp.to_pairs(ev.q)
    e = [np.exp(q[lo:hi] - q[lo:hi].max()) for lo, hi in blocks(mdp.a_indptr)]
    want = np.concatenate([x / x.sum() for x in e])
    assert np.abs(npg.pi - want).max() <= 1e-13


def test_kl_penalty_ppo_converges(backend):
    for name, tau, seed, rect, _ in CONVERGE[:2] + CONVERGE[3:4]:
        mdp = small(seed, rect)
        res = fastppo.KLPenaltyPPO(mdp, make(name, tau), reference=True,
                                   backend=backend).run(500, tol=1e-9)
        assert res.converged and abs(res.J - res.reference) <= 1e-8, (name, seed)


def test_kl_penalty_beta_adapts():
    mdp = small(2, True)
    reg = fastppo.ForwardKL(0.5)

    def run(**kw):
        rows = []
        solver = fastppo.KLPenaltyPPO(mdp, reg, **kw)
        solver.run(6, callback=lambda s, row: rows.append(row))
        return solver, rows

    # KL always above 1.5·target: doubles (a small lr keeps the stability cap out of reach)
    solver, rows = run(kl_target=1e-12, beta=0.5, lr=1e-3)
    assert [r["beta"] for r in rows] == [0.5 * 2 ** n for n in range(6)] and solver.beta == 32.0
    solver, rows = run(kl_target=1e3, beta=0.5)  # always below target/1.5: halves
    assert [r["beta"] for r in rows] == [0.5 / 2 ** n for n in range(6)] and solver.beta == 2 ** -7
    # KL exactly on target: unchanged (the first iteration is deterministic)
    kl1 = run(kl_target=0.01, beta=1.0)[1][0]["kl"]
    solver = fastppo.KLPenaltyPPO(mdp, reg, kl_target=kl1, beta=1.0)
    solver.step()
    assert solver.beta == 1.0
    # a natural run follows the rule at every iteration
    solver, rows = run(kl_target=0.003, beta=1.0, step_scale=0.1)  # stability cap ≈ 10: not reached
    for a, b in zip(rows, rows[1:] + [{"beta": solver.beta}]):
        want = a["beta"] * (2.0 if a["kl"] > 0.0045 else 0.5 if a["kl"] < 0.002 else 1.0)
        assert b["beta"] == want
    assert len({r["beta"] for r in rows}) > 1
    # β really enters the update: a larger β keeps the new policy closer to the old one
    # (while β·η·d/(1−γ) stays small enough for the explicit inner steps to be stable)
    kls = [fastppo.KLPenaltyPPO(mdp, reg, beta=b, step_scale=0.2).step()["kl"] for b in (0.0, 1.0, 3.0)]
    assert kls[0] > 1.5 * kls[1] > 3 * kls[2] > 0


# ------------------------------------------------------------------ bad input
def test_bad_parameters():
    mdp = small(0, True)
    reg = fastppo.ForwardKL(0.5)
    for clip in (0, -0.2, np.nan):
        with pytest.raises(ValueError, match="clip must be > 0"):
            fastppo.PPOClip(mdp, reg, clip=clip)
    for clip in ((0.2,), (0.1, 0.2, 0.3)):
        with pytest.raises(ValueError, match=r"clip must be a float or a pair \(eps_low, eps_hi"):
            fastppo.PPOClip(mdp, reg, clip=clip)
    with pytest.raises(ValueError, match=r"clip\[0\] \(eps_low\) must be > 0"):
        fastppo.PPOClip(mdp, reg, clip=(0.0, 0.2))
    with pytest.raises(ValueError, match=r"clip\[1\] \(eps_high\) must be > 0"):
        fastppo.PPOClip(mdp, reg, clip=(0.2, -1.0))
    with pytest.raises(ValueError, match="inner_steps must be >= 1, got 0"):
        fastppo.PPOClip(mdp, reg, inner_steps=0)
    with pytest.raises(TypeError, match="inner_steps must be an integer"):
        fastppo.PPOClip(mdp, reg, inner_steps=2.0)
    with pytest.raises(ValueError, match="tau must be finite and >= 0, got -0.1"):
        fastppo.PPOClip(mdp, fastppo.ReverseKL(-0.1))
    for lr in (0.0, -1.0, np.inf):
        with pytest.raises(ValueError, match="lr must be > 0"):
            fastppo.PPOClip(mdp, reg, lr=lr)
    for cls in (fastppo.PPOClip, fastppo.NPG, fastppo.SoftmaxPG, fastppo.KLPenaltyPPO):
        with pytest.raises(ValueError, match="step_scale must be > 0"):
            cls(mdp, reg, step_scale=0.0)
    mu = np.full(mdp.n_states, 1.0 / (mdp.n_states - 1))
    mu[3] = 0.0
    with pytest.raises(ValueError, match=r"mu must have full support .*mu\[3\] = 0"):
        fastppo.PPOClip(mdp, reg, mu=mu)
    with pytest.raises(ValueError, match="mu must sum to 1"):
        fastppo.PPOClip(mdp, reg, mu=np.ones(mdp.n_states))
    with pytest.raises(ValueError, match=r"init must be finite: pair \(s=0, a=1\)"):
        fastppo.PPOClip(mdp, reg, init=np.where(np.arange(mdp.n_pairs) == 1, np.nan, 0.0))
    with pytest.raises(ValueError, match="tol must be > 0"):
        fastppo.PPOClip(mdp, reg, lin_tol=0.0)
    with pytest.raises(ValueError, match="kl_target must be > 0"):
        fastppo.KLPenaltyPPO(mdp, reg, kl_target=0.0)
    with pytest.raises(ValueError, match="beta must be >= 0"):
        fastppo.KLPenaltyPPO(mdp, reg, beta=-1.0)
    with pytest.raises(TypeError, match="unexpected keyword arguments: clip"):
        fastppo.NPG(mdp, reg, clip=0.2)
    with pytest.raises(TypeError, match="reg must be a fastppo regularizer"):
        fastppo.PPOClip(mdp, "forward_kl")
    ppo = fastppo.PPOClip(mdp, reg)
    with pytest.raises(ValueError, match="n_iter must be >= 0, got -1"):
        ppo.run(-1)
    with pytest.raises(TypeError, match="n_iter must be an integer"):
        ppo.run(2.5)
    for tol in (0.0, -1e-9, np.nan):
        with pytest.raises(ValueError, match="tol must be > 0"):
            ppo.run(3, tol=tol)
    with pytest.raises(TypeError, match="tol must be a real number"):
        ppo.run(3, tol="1e-9")
    assert ppo.n_iter == 0  # nothing ran


@pytest.mark.parametrize("cls", [fastppo.PPOClip, fastppo.SoftmaxPG, fastppo.KLPenaltyPPO])
@pytest.mark.parametrize("reg_name", ["none", "forward_kl", "reverse_kl", "chi2"])
def test_huge_lr_stops_with_floating_point_error(backend, cls, reg_name):
    mdp = small(1, True)
    solver = cls(mdp, REGS[reg_name](), lr=1e300, backend=backend)
    with pytest.raises(FloatingPointError, match=f"{cls.__name__}: .* at iteration 1 "):
        solver.run(5)
    assert solver.n_iter == 0 and len(solver.history) == 0


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_non_finite_logits_and_bad_init_stop_with_floating_point_error(backend):
    mdp = small(1, True)
    # logits that overflow during the update
    ppo = fastppo.PPOClip(mdp, None, lr=1e308, init=np.full(mdp.n_pairs, 1.7e308), backend=backend)
    with pytest.raises(FloatingPointError, match=r"non-finite logits at iteration 1 \(pair"):
        ppo.run(3)
    # init logits whose softmax underflows (π = 0 makes the ratio 0/0)
    for row in ([1e308, 0.0, -1e308], [900.0, 0.0, 0.0]):
        init = np.tile(row, mdp.n_states)
        for cls in (fastppo.PPOClip, fastppo.NPG):
            solver = cls(mdp, fastppo.ForwardKL(0.5), init=init, backend=backend)
            with pytest.raises(FloatingPointError, match=r"underflowed to 0 at iteration 1 .*init"):
                solver.run(3)


def test_floating_point_error_names_a_later_iteration():
    """NPG with η = 1/τ (step_scale=1) overshoots for forward KL (its τ π_ref/π term is huge where
    π is small); the error names the iteration where the policy left the range of doubles."""
    mdp = small(1, True)
    npg = fastppo.NPG(mdp, fastppo.ForwardKL(0.5), step_scale=1.0)
    with pytest.raises(FloatingPointError, match="iteration ") as info:
        npg.run(20)
    n = npg.n_iter + 1
    assert n >= 2 and f"at iteration {n} " in str(info.value)
    assert len(npg.history) == n - 1 and np.isfinite(npg.history["J"]).all()


def test_npg_without_regularizer_tolerates_zero_probabilities():
    """τ = 0 NPG never divides by π: a huge step is policy iteration, not an error."""
    mdp = small(1, True)
    res = fastppo.NPG(mdp, None, lr=1e300, reference=True).run(6)
    assert (res.policy == 0).any() and abs(res.J - res.reference) <= 1e-12


def test_kl_penalty_beta_capped_at_stability_limit():
    mdp = small(2, True)
    solver = fastppo.KLPenaltyPPO(mdp, fastppo.ForwardKL(0.5), kl_target=1e-12, beta=1e6)
    for _ in range(8):
        d = solver._d.copy()
        row = solver.step()
        cap = (1.0 - mdp.gamma) / (solver.lr * d.max())
        assert row["beta"] == pytest.approx(cap, rel=1e-12)  # β = 1e6 (or doubled) is capped
    assert np.isfinite(solver.logits).all() and solver.history["gap"].size == 8


def test_npg_default_step_converges_for_forward_kl():
    mdp = small(1, True)
    res = fastppo.NPG(mdp, fastppo.ForwardKL(0.5), reference=True).run(300, tol=1e-10)
    assert res.converged and res.gap <= 1e-10
    assert res.history["grad_norm"][-1] < res.history["grad_norm"][0]


def test_stall_warning():
    """A step far too large for τ makes PPO-Clip's inner steps cycle: warn, don't hang silently."""
    mdp = small(1, True)
    with pytest.warns(fastppo.ConvergenceWarning, match="stalled"):
        fastppo.PPOClip(mdp, fastppo.ForwardKL(0.5), step_scale=3.0).run(200)
