"""Per-state policy updates: the regularized greedy step and the fused PPO update.

``greedy_policy``: p(s) = argmax_{p ∈ Δ} Σ_a p_a Q(s,a) − τ D_f(p ‖ π_ref(·|s)) and its
    value (the regularized Bellman operator). τ = 0: first argmax. Reverse KL:
    p ∝ π_ref exp(Q/τ). Other f: p_a = π_ref,a h((Q_a − ν)/τ), h = (f')^{-1}, with the
    normaliser ν = max Q + τ t found by safeguarded Newton in t (so that the arguments
    (Q_a − max Q)/τ − t stay exact however small τ is against Q) inside the bracket
    [max(−f'(1/π_ref,b), (min Q − max Q)/τ − f'(1)), −f'(1)], b an argmax of Q. Where
    (Q_a − max Q)/τ overflows, h is its asymptote; where f(0) = ∞ (forward KL, α > 1)
    the optimum has full support, and a probability that underflows is stored as the
    smallest double, 5e-324.
``ppo_update``: ``n_steps`` ascent steps θ ← θ + η g on the clipped surrogate (SPEC §1),
    plus an optional KL penalty β·KL(π_old ‖ π_θ); every state is independent, so all
    inner steps run state by state in one pass. Writes the final policy, and per state
    the clipped-pair count at the last step, ‖g‖² at the first step and KL(π_new ‖ π_θ0),
    π_θ0 = softmax(θ on entry) (π_old where, as in PPOClip, π_old is the softmax of the
    logits it starts from), from the log-softmaxes: one log per state, not per pair.
    Between steps the next softmax comes from the step itself, π_{k+1} ∝ π_k e^δ with δ
    each logit's step (:func:`fexpm1_step`, no range reduction; 0 < α < 1 steps its power
    π^{1−α} π_ref^α likewise), in each block of states whose every |δ| is ≤ 1/4 (β = 0);
    a full softmax of θ at the first step and wherever a step is larger. log π and the
    KL take log z times the normalisers since the last full softmax (zs).
Mirrors kernels/cython/policy_update.pyx.
"""
import math

import numpy as np
from numba import njit, prange

from ._codes import ALPHA, CHI_SQUARE, FORWARD_KL, HELLINGER, JENSEN_SHANNON, NONE, REVERSE_KL
from ._divergence import fprime, fprime_inv, fprime_inv_tail, p_fprime, ref_f
from ._jit import twins
from ._softmax import (LANES, PAD_LOGIT, STEP_MAX, exp_constants, exp_lanes, fexp_neg,
                       fexpm1_or_exp, fexpm1_step, flog, flog_positive, fma, max_actions,
                       max_lanes, store_lanes)

TASK_BLOCKS = 32  # blocks of LANES states per parallel task
GREEDY_CHUNK = 64  # states per parallel task of the greedy step

TINIEST = 5e-324  # the smallest positive double
# the least α of U_ALPHA_UNIT: there π f' = (π − π^{1−α} π_ref^α)/α, whose rounding near
# π = π_ref, a few ulp of π, 1/α amplifies (below: U_ALPHA's expm1)
ALPHA_UNIT_MIN = 0.01
# zs (the product of the normalisers since the last full softmax, each within e^{±STEP_MAX})
# is kept within these bounds, so that e·zs neither overflows nor underflows
ZS_MIN = 1e-100
ZS_MAX = 1e100

PF_NONE = 0  # no τ term in the ascent (none, or folded into b: U_REVERSE, U_JS)
PF_BLOCK = 1  # π f' in the block pf, its lane sums in mean_f
U_NONE = 0  # b = the clipped advantage
U_REVERSE = 1  # b −= τ u, u = (θ − m) − log π_ref (logq holds log_ref; u in b on entry,
               # from _exp_u_lanes)
U_JS = 2  # b −= τ u, u = (θ − m) − log(π + π_ref)
U_CHI = 3  # pf = 2π (π − π_ref)/π_ref and mean_f = Σ_a pf (PF_BLOCK)
U_HELLINGER = 4  # pf = π − √(π π_ref) and mean_f = Σ_a pf (PF_BLOCK)
U_ALPHA = 5  # pf = π f'_α and mean_f (PF_BLOCK; logq holds log π_ref)
U_ALPHA_UNIT = 6  # U_ALPHA for 0.01 ≤ α < 1: pf from the power e^w in pw (_exp_alpha_lanes or
                  # _ascend_exp; logq holds α log π_ref, logz z^{α−1} on entry)


def greedy_policy(a_indptr, q, ref, code, alpha, tau, pi_out, value_out):
    n_states = a_indptr.shape[0] - 1
    # tasks of GREEDY_CHUNK states (numba's parallel_chunksize does not cache): uneven
    # action counts balance over many small tasks
    for c in prange((n_states + GREEDY_CHUNK - 1) // GREEDY_CHUNK):
        for s in range(c * GREEDY_CHUNK, min(n_states, (c + 1) * GREEDY_CHUNK)):
            lo, hi = a_indptr[s], a_indptr[s + 1]
            qmax = q[lo]
            qmin = q[lo]
            best = lo
            for k in range(lo + 1, hi):
                if q[k] > qmax:
                    qmax = q[k]
                    best = k
                qmin = min(qmin, q[k])
            if tau == 0.0 or code == NONE:
                for k in range(lo, hi):
                    pi_out[k] = 0.0
                pi_out[best] = 1.0
                value_out[s] = qmax
                continue
            if code == REVERSE_KL:  # closed form
                z = 0.0
                for k in range(lo, hi):
                    e = ref[k] * math.exp((q[k] - qmax) / tau)
                    pi_out[k] = e
                    z += e
                for k in range(lo, hi):
                    pi_out[k] /= z
                value_out[s] = qmax + tau * math.log(z)
                continue
            # ν = max Q + τ t; F(t) = Σ_a π_ref,a h((Q_a − max Q)/τ − t) − 1 decreases in t
            f1 = fprime(code, alpha, 1.0)
            a = max(-fprime(code, alpha, 1.0 / ref[best]), (qmin - qmax) / tau - f1)  # F(a) >= 0
            b = -f1  # F(b) <= 0
            t = b
            for _ in range(200):
                F = -1.0
                dF = 0.0
                for k in range(lo, hi):
                    h, dh = fprime_inv(code, alpha, (q[k] - qmax) / tau - t)
                    F += ref[k] * h
                    dF -= ref[k] * dh
                if F == 0.0:
                    break
                if F > 0.0:
                    a = t
                else:
                    b = t
                new = 0.5 * (a + b)
                if math.isfinite(F) and dF < 0.0:
                    step = t - F / dF
                    if a < step < b:
                        new = step
                if abs(new - t) <= 1e-15 * max(1.0, abs(t)):
                    t = new
                    break
                t = new
            z = 0.0
            for k in range(lo, hi):
                y = (q[k] - qmax) / tau - t
                if y == -math.inf:  # |y| beyond the double range: h by its asymptote
                    h = fprime_inv_tail(code, alpha, math.log(qmax - q[k]) - math.log(tau))
                else:
                    h, dh = fprime_inv(code, alpha, y)
                pi_out[k] = ref[k] * h
                z += pi_out[k]
            val = 0.0
            div = 0.0
            for k in range(lo, hi):
                pi_out[k] /= z
                if pi_out[k] == 0.0 and ref_f(code, alpha, 0.0, ref[k]) == math.inf:
                    pi_out[k] = TINIEST  # the optimum has full support there: τ/gap underflowed
                val += pi_out[k] * q[k]
                div += ref_f(code, alpha, pi_out[k], ref[k])
            value_out[s] = val - tau * div


def ppo_update(a_indptr, pi_old, adv, weight, ref, log_ref, code, alpha, tau, eps_low,
               eps_high, beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out):
    """pi_out may alias pi_old or adv: each block of states reads its pairs into local
    lanes before it writes any of them back (once), and blocks own disjoint pairs.
    log_ref = log π_ref (−inf where π_ref = 0) is read for reverse KL only, ref for the
    other f only (the caller forms log π_ref once per run, not once per call)."""
    n_states = a_indptr.shape[0] - 1
    per_task = TASK_BLOCKS * LANES
    for c in prange((n_states + per_task - 1) // per_task):
        _ppo_states(a_indptr, c * per_task, min((c + 1) * per_task, n_states), pi_old, adv,
                    weight, ref, log_ref, code, alpha, tau, eps_low, eps_high, beta, lr, n_steps,
                    theta, pi_out, clipped_out, gsq_out, kl_out)


@njit(cache=True, nogil=True, error_model="numpy")
def _ppo_states(a_indptr, s0, s1, pi_old, adv, weight, ref, log_ref, code, alpha, tau, eps_low,
                eps_high, beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out):
    """ppo_update for the states s0 ≤ s < s1: LANES states at a time, every inner step on
    (n_rows, LANES) blocks (see _softmax), written back once."""
    n_rows = max_actions(a_indptr, s0, s1)
    block = np.empty((10, n_rows, LANES))
    th, p, b, old, thr, av, q, pf, x0, pw = (block[0], block[1], block[2], block[3], block[4],
                                              block[5], block[6], block[7], block[8], block[9])
    logq = np.empty((n_rows, LANES) if tau != 0.0 and (code == REVERSE_KL or code == ALPHA)
                    else (0, LANES))  # log π_ref (α log π_ref for U_ALPHA_UNIT)
    lanes = np.empty((14, LANES))
    m, m_next, z, rz, logz, w, mean_b, mean_f, gsq, kl, logz0, over, zs = (
        lanes[0], lanes[1], lanes[2], lanes[3], lanes[4], lanes[5], lanes[6], lanes[7],
        lanes[8], lanes[9], lanes[10], lanes[12], lanes[13])  # logz0: log z of θ on entry;
    # zs: e^{θ − m} = e·zs, the product of the normalisers since the last full softmax
    clipped = np.empty(LANES, dtype=np.int64)
    k = exp_constants(lanes[11])
    n_lanes = th.shape[1]
    regularized = tau != 0.0 and code != NONE
    penalized = beta != 0.0
    mode = PF_NONE
    umode = U_NONE
    if regularized:
        if code == REVERSE_KL:
            umode = U_REVERSE
        elif code == JENSEN_SHANNON:
            umode = U_JS
        else:
            mode = PF_BLOCK
            umode = (U_CHI if code == CHI_SQUARE else U_HELLINGER if code == HELLINGER
                     else U_ALPHA_UNIT if code == ALPHA and ALPHA_UNIT_MIN <= alpha < 1.0
                     else U_ALPHA if code == ALPHA else U_NONE)
    stepwise = not penalized  # e^δ by fexpm1_step between steps (_ascend_exp)
    hi_ratio = 1.0 + eps_high
    lo_ratio = 1.0 - eps_low
    for b0 in range(s0, s1, LANES):
        b1 = min(b0 + LANES, s1)
        if umode == U_REVERSE:  # log π_ref into logq in the same pass (−inf: a masked pair)
            _load_ppo_lanes(a_indptr, b0, b1, n_lanes, theta, pi_old, adv, log_ref, -math.inf,
                            th, old, av, logq, True)
        elif regularized:  # π_ref into q in the same pass
            _load_ppo_lanes(a_indptr, b0, b1, n_lanes, theta, pi_old, adv, ref, 0.0, th, old,
                            av, q, True)
        else:
            _load_ppo_lanes(a_indptr, b0, b1, n_lanes, theta, pi_old, adv, ref, 0.0, th, old,
                            av, q, False)
        # the one bound t on π each pair's clip can meet, negated where Ã < 0: r = π/π_old
        # stays below 1 + ε_high where Ã > 0 (above 1 − ε_low where Ã < 0) as π < t (π > t,
        # i.e. −π < −t), so that the clip is active where copysign(π, Ã) < thr; at
        # π_old = 0 (r = inf, or NaN at π = 0) t = 0. (Where Ã = 0 the clip does not
        # matter: b = Ã = 0.)
        for a in range(n_rows):
            for l in range(n_lanes):
                o = old[a, l]
                t = (o * hi_ratio if av[a, l] > 0.0 else o * lo_ratio) if o > 0.0 else 0.0
                thr[a, l] = -t if av[a, l] < 0.0 else t
        for l in range(n_lanes):
            w[l] = weight[b0 + l] if b0 + l < b1 else 0.0
        if regularized:
            if code == ALPHA:  # −inf at π_ref = 0 (masks the pair)
                scale = alpha if umode == U_ALPHA_UNIT else 1.0  # one flog call site
                for a in range(n_rows):
                    for l in range(n_lanes):
                        logq[a, l] = scale * flog(q[a, l])
            elif code == FORWARD_KL:  # π f' = −π_ref does not depend on π: once per block,
                for l in range(n_lanes):  # and τ π f' in the block (the ascent's term)
                    mean_f[l] = 0.0
                for a in range(n_rows):
                    for l in range(n_lanes):
                        pf[a, l] = tau * -q[a, l]
                        mean_f[l] = mean_f[l] - q[a, l]
        # each step: softmax (exp_lanes, then π = e·rz inside _clip_lanes), the clipped
        # advantages b (minus τ u for the U_ modes), π f' and its sum for PF_BLOCK, and the
        # ascent step, which (``stepwise``) forms the next softmax's e = π e^δ itself
        # (_ascend_exp: a full softmax only where some |δ| > STEP_MAX), or (β ≠ 0) takes
        # the max of the new logits (the next softmax's shift, into m_next)
        max_lanes(th, n_rows, n_lanes, m)
        for a in range(n_rows):  # x0 = θ − m on entry: log π_θ0 + log z0
            for l in range(n_lanes):
                x0[a, l] = th[a, l] - m[l]
        fresh = True
        for step in range(n_steps + 1):
            if not fresh:  # e and z from _ascend_exp
                for l in range(n_lanes):
                    rz[l] = 1.0 / z[l]
            else:
                if umode == U_ALPHA_UNIT and step < n_steps:  # and the power e^w in pw
                    _exp_alpha_lanes(n_rows, th, m, logq, 1.0 - alpha, p, z, rz, pw, k)
                elif umode == U_REVERSE and step < n_steps:  # and u = (θ − m) − log π_ref
                    _exp_u_lanes(n_rows, th, m, logq, p, z, rz, b, k)  # in b
                else:
                    exp_lanes(th, n_rows, n_lanes, m, p, z, rz, k)
                for l in range(n_lanes):
                    zs[l] = 1.0
            if step == 0:
                for l in range(n_lanes):
                    logz0[l] = flog(z[l])
            if step == n_steps:  # π = e·rz below, fused with KL(π ‖ π_θ0)
                break
            if umode == U_ALPHA or umode == U_ALPHA_UNIT:  # log Σ_a e^{θ − m}
                for l in range(n_lanes):
                    logz[l] = flog(z[l] * zs[l])
            if umode == U_ALPHA_UNIT:  # z^{α−1}
                for l in range(n_lanes):
                    logz[l] = fexp_neg(-(1.0 - alpha) * logz[l], k)
            _clip_step(umode, n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f,
                       logz, alpha, pw)
            if step == n_steps - 1:
                _count_clipped(n_rows, p, av, thr, clipped)
            if mode == PF_BLOCK:  # g = π (b − (Σπb − τ Σpf)) − τ pf
                for l in range(n_lanes):
                    mean_b[l] = mean_b[l] - tau * mean_f[l]
            if step == 0:
                for l in range(n_lanes):
                    gsq[l] = 0.0
            if stepwise:
                for l in range(n_lanes):
                    zs[l] = zs[l] * z[l]
                _ascend_exp_step(mode == PF_BLOCK, code == FORWARD_KL, step == 0,
                                 umode == U_REVERSE, umode == U_ALPHA_UNIT, n_rows, th, p, b,
                                 mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw, 1.0 - alpha,
                                 k)
                fresh = False
                for l in range(b1 - b0):  # a step beyond STEP_MAX, or zs far from 1
                    if over[l] != 0.0 or not (ZS_MIN <= zs[l] <= ZS_MAX):
                        fresh = True
                if fresh:  # a full softmax next, from the new max
                    max_lanes(th, n_rows, n_lanes, m)
            else:
                _ascend_step(mode == PF_BLOCK, code == FORWARD_KL, step == 0, n_rows, th, p, b,
                             mean_b, old, pf, w, tau, beta, lr, gsq, m_next)
                for l in range(n_lanes):  # the new shift (the ascent read the current one)
                    m[l] = m_next[l]
        for l in range(n_lanes):  # log(π/π_θ0) = ((θ − m) − x0) − (log z − log z0)
            logz[l] = flog(z[l] * zs[l]) - logz0[l]
        _kl_lanes(n_rows, p, rz, th, m, x0, logz, kl)
        store_lanes(a_indptr, b0, b1, th, theta)
        store_lanes(a_indptr, b0, b1, p, pi_out)
        for l in range(b1 - b0):
            clipped_out[b0 + l] = clipped[l]
            gsq_out[b0 + l] = gsq[l]
            kl_out[b0 + l] = kl[l]


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _load_ppo_lanes(a_indptr, s0, s1, n_lanes, theta, pi_old, adv, ref, ref_pad, th, old, av,
                    q, with_ref):
    """load_lanes of θ (padding PAD_LOGIT), π_old and Ã (padding 0), and of ref into q
    (padding ref_pad) if ``with_ref`` (a literal), in one pass."""
    n_rows = th.shape[0]
    for l in range(n_lanes):
        n = 0
        if s0 + l < s1:
            lo = a_indptr[s0 + l]
            n = a_indptr[s0 + l + 1] - lo
            for a in range(n):
                th[a, l] = theta[lo + a]
                old[a, l] = pi_old[lo + a]
                av[a, l] = adv[lo + a]
                if with_ref:
                    q[a, l] = ref[lo + a]
        for a in range(n, n_rows):
            th[a, l] = PAD_LOGIT
            old[a, l] = 0.0
            av[a, l] = 0.0
            if with_ref:
                q[a, l] = ref_pad


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _exp_u_lanes(n_rows, th, m, logq, e, z, rz, u, k):
    """:func:`exp_lanes` (e, z, rz), and for U_REVERSE from the same pass
    u = (θ − m) − log π_ref (logq): the exp pass is bound by the FMA pipes, the subtraction
    is not."""
    n_lanes = th.shape[1]
    for l in range(n_lanes):
        z[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            x = th[a, l] - m[l]
            e[a, l] = fexp_neg(x, k)
            z[l] += e[a, l]
            u[a, l] = x - logq[a, l]
    for l in range(n_lanes):
        rz[l] = 1.0 / z[l]


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _exp_alpha_lanes(n_rows, th, m, alogq, one_minus_alpha, e, z, rz, power, k):
    """:func:`exp_lanes` (e, z, rz), and for 0 < α < 1 (U_ALPHA_UNIT) from the same pass
    power = e^w with w = (1 − α)(θ − m) + α log π_ref ≤ 0 (alogq), so that
    π^{1−α} π_ref^α = power·z^{α−1} (π = e^{θ − m}/z): two independent exps per pair, in
    one loop."""
    n_lanes = th.shape[1]
    for l in range(n_lanes):
        z[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            x = th[a, l] - m[l]
            e[a, l] = fexp_neg(x, k)
            z[l] += e[a, l]
            power[a, l] = fexp_neg(fma(one_minus_alpha, x, alogq[a, l]), k)
    for l in range(n_lanes):
        rz[l] = 1.0 / z[l]


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _ascend_exp_step(block, scaled, first, with_u, with_power, n_rows, th, p, b, mean_b, pf, w,
                     tau, lr, gsq, m, logq, z, over, pw, one_minus_alpha, k):
    """:func:`_ascend_exp` with literal flags (one branch-free loop per combination)."""
    if block and scaled:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, True, True, True, False, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, True, True, False, False, False)
    elif block and with_power:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, True, False, True, False, True)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, True, False, False, False, True)
    elif block:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, True, False, True, False, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, True, False, False, False, False)
    elif with_u:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, False, False, True, True, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, False, False, False, True, False)
    else:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, False, False, True, False, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, k, False, False, False, False, False)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                one_minus_alpha, k, block, scaled, first, with_u, with_power):
    """:func:`_ascend` (β = 0) fused with the next step's exp: θ += lr·g, and e = π e^δ
    (:func:`fexpm1_step`; δ the new θ minus the old, as rounded, so that π stays the softmax
    of the stored θ) into p with z = Σ_a e per lane, so that the next π is
    e/z without an exp of θ (the shift m stays; e^{θ − m} = e·zs, zs the product of the
    normalisers since the last full softmax). Exact to fexpm1_step's bound where
    |δ| ≤ STEP_MAX: ``over`` counts per lane the pairs where it is not (or δ is NaN), and
    such a block takes a full softmax. ``with_u`` (U_REVERSE): u = (θ − m) − log π_ref into
    b, as :func:`_exp_u_lanes`; ``with_power`` (U_ALPHA_UNIT): the power e^w times
    e^{(1−α)δ} in pw, as :func:`_exp_alpha_lanes`."""
    n_lanes = th.shape[1]
    step_max2 = STEP_MAX * STEP_MAX
    for l in range(n_lanes):
        z[l] = 0.0
        over[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            pi = p[a, l]
            g = pi * (b[a, l] - mean_b[l])
            if block:
                g = g - (pf[a, l] if scaled else tau * pf[a, l])
            g = g * w[l]
            if first:
                gsq[l] += g * g
            t = th[a, l] + lr * g
            d = t - th[a, l]  # the step as stored (exact where |θ| ≥ |lr·g|: Fast2Sum)
            d = d if th[a, l] > PAD_LOGIT else 0.0  # (padding: −inf − −inf)
            th[a, l] = t
            d2 = d * d
            over[l] += 0.0 if d2 <= step_max2 else 1.0
            e = fma(pi, fexpm1_step(d, d2, k), pi)
            p[a, l] = e
            z[l] += e
            if with_u:
                b[a, l] = (t - m[l]) - logq[a, l]
            if with_power:
                dw = one_minus_alpha * d
                pw[a, l] = fma(pw[a, l], fexpm1_step(dw, dw * dw, k), pw[a, l])


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _kl_lanes(n_rows, p, rz, th, m, x0, c, kl):
    """π = e·rz in place (p holds e = e^{θ − m}/zs from exp_lanes or _ascend_exp) and
    kl = Σ_a π log(π/π_θ0) per lane (0 where π = 0), π_θ0 = softmax(θ0) the policy of the
    logits on entry, from the two log-softmaxes: log(π/π_θ0) = ((θ − m) − x0) − c, with
    x0 = θ0 − m0 and c = log(z·zs) − log z0 per lane (one flog per lane, not one per pair;
    each logit taken from its own lane max, so that logits far from 0 do not cancel)."""
    n_lanes = p.shape[1]
    for l in range(n_lanes):
        kl[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            pi = p[a, l] * rz[l]
            p[a, l] = pi
            t = pi * (((th[a, l] - m[l]) - x0[a, l]) - c[l])
            kl[l] += t if pi > 0.0 else 0.0


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _clip_step(umode, n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
               alpha, pw):
    """:func:`_clip_lanes` with a literal ``umode`` (one branch-free loop per mode)."""
    if umode == U_NONE:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_NONE, pw)
    elif umode == U_REVERSE:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_REVERSE, pw)
    elif umode == U_JS:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_JS, pw)
    elif umode == U_CHI:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_CHI, pw)
    elif umode == U_HELLINGER:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_HELLINGER, pw)
    elif umode == U_ALPHA_UNIT:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_ALPHA_UNIT, pw)
    else:
        _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz,
                    alpha, U_ALPHA, pw)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _clip_lanes(n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf, mean_f, logz, alpha,
                umode, pw):
    """π = e·rz in place (p holds e = e^{θ − m}/zs from exp_lanes or _ascend_exp), b = the
    advantage where the clipped objective is active (else 0), minus τ u by ``umode``
    (u = f'(π/π_ref) up to a constant per lane, which cancels in u − Σ_a π u: the ascent is
    then the plain π (b − Σπb)), mean_b = Σ_a π b per lane. u is 0 where it would be NaN or
    infinite (π_ref = 0 for U_REVERSE, π = 0 for U_JS): f' enters g times π only. U_CHI,
    U_HELLINGER and U_ALPHA form pf = π f'(π/π_ref) and mean_f = Σ_a pf instead (padding
    rows, where π_ref = 0, get 0), with log π = (θ − m) − log(z·zs) (logz); U_ALPHA_UNIT
    (ALPHA_UNIT_MIN ≤ α < 1) as (π − π^{1−α} π_ref^α)/α, the power from
    :func:`_exp_alpha_lanes` or :func:`_ascend_exp` (in pw and logz on entry): no expm1
    there, so where π is near π_ref this pf is accurate to a few ulp of π/α, not relative
    to itself. U_JS takes
    flog_positive of π + π_ref (its u is masked where that is 0). (χ² keeps
    π f' = 2π (π − π_ref)/π_ref: u = π (2/π_ref) overflows where π_ref is subnormal.)
    Called with literal flags, so that each call compiles to one branch-free loop."""
    n_lanes = p.shape[1]
    at_zero = 0.0 if alpha < 1.0 else -math.inf  # lim_{π→0} π f'(π/π_ref)
    inv_alpha = 1.0 / alpha
    neg_inv_alpha = -1.0 / alpha
    for l in range(n_lanes):
        mean_b[l] = 0.0
        if umode == U_CHI or umode == U_HELLINGER or umode == U_ALPHA or umode == U_ALPHA_UNIT:
            mean_f[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            pi = p[a, l] * rz[l]
            p[a, l] = pi
            A = av[a, l]
            active = math.copysign(pi, A) < thr[a, l]  # thr signed like Ã
            bb = A if active else 0.0
            if umode == U_REVERSE:  # f' = log(π/π_ref) + 1 = u + (1 − log z)
                u = b[a, l]  # (θ − m) − log π_ref, from _exp_u_lanes
                bb = bb - tau * (u if logq[a, l] > -math.inf else 0.0)
            elif umode == U_JS:  # f' = log(2π/(π + π_ref)) = u + (log 2 − log z)
                u = (th[a, l] - m[l]) - flog_positive(pi + q[a, l])  # masked below at π = 0
                bb = bb - tau * (u if pi > 0.0 else 0.0)
            elif umode == U_CHI:
                t = ((2.0 * pi) * (pi - q[a, l])) / q[a, l]
                pf[a, l] = t if q[a, l] > 0.0 else 0.0
                mean_f[l] += pf[a, l]
            elif umode == U_HELLINGER:
                pf[a, l] = pi - math.sqrt(pi * q[a, l])
                mean_f[l] += pf[a, l]
            elif umode == U_ALPHA:
                # y = −αL, L = log(π/π_ref): π f' = π L E(y) = −π (e^y − 1)/α for y ≤ 1,
                # and (π − e^{log π + y})/α beyond (no overflow of e^y): one exp per pair
                logp = (th[a, l] - m[l]) - logz[l]
                y = -alpha * (logp - logq[a, l])
                e = fexpm1_or_exp(y if y <= 1.0 else logp + y, y <= 1.0)
                small = (pi * e) * neg_inv_alpha
                big = (pi - e) * inv_alpha
                t = small if y <= 1.0 else big
                t = t if pi > 0.0 else at_zero
                pf[a, l] = t if q[a, l] > 0.0 else 0.0
                mean_f[l] += pf[a, l]
            elif umode == U_ALPHA_UNIT:  # π f' = (π − π^{1−α} π_ref^α)/α
                t = (pi - pw[a, l] * logz[l]) * inv_alpha  # the power as pw·logz
                t = t if pi > 0.0 else 0.0
                pf[a, l] = t if q[a, l] > 0.0 else 0.0
                mean_f[l] += pf[a, l]
            b[a, l] = bb
            mean_b[l] += pi * bb


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _count_clipped(n_rows, p, av, thr, clipped):
    """clipped = the count of pairs with a nonzero advantage whose clipped objective is
    inactive, per lane, from π (p, as :func:`_clip_lanes` left it) and its test."""
    n_lanes = p.shape[1]
    for l in range(n_lanes):
        clipped[l] = 0
    for a in range(n_rows):
        for l in range(n_lanes):
            A = av[a, l]
            clipped[l] += 0 if (math.copysign(p[a, l], A) < thr[a, l]) | (A == 0.0) else 1


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _ascend_step(block, scaled, first, n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq,
                 m_next):
    """:func:`_ascend` with literal flags (one branch-free loop per combination)."""
    if block and scaled:
        if first:
            _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next,
                    True, True, True)
        else:
            _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next,
                    True, True, False)
    elif block:
        if first:
            _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next,
                    True, False, True)
        else:
            _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next,
                    True, False, False)
    else:
        if first:
            _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next,
                    False, False, True)
        else:
            _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next,
                    False, False, False)


@njit(cache=True, nogil=True, inline="always", error_model="numpy")
def _ascend(n_rows, th, p, b, mean_b, old, pf, w, tau, beta, lr, gsq, m_next, block, scaled,
            first):
    """θ += lr·g on a block with the KL penalty (β ≠ 0; :func:`_ascend_exp` otherwise),
    g = w π (b − Σπb) − τ (pf − π Σpf) + β (π_old − π) (SPEC §1), with mean_b = Σπb − τ Σpf,
    and m_next = the new max of θ per lane (the next softmax's shift): g = π (b − mean_b),
    minus τ pf if ``block`` (PF_BLOCK; pf holds τ pf already if ``scaled``), plus the β term;
    ``first``: gsq += g² per lane. Called with literal flags, so that each call compiles to
    one branch-free loop."""
    n_lanes = th.shape[1]
    for a in range(n_rows):
        for l in range(n_lanes):
            pi = p[a, l]
            g = pi * (b[a, l] - mean_b[l])
            if block:
                g = g - (pf[a, l] if scaled else tau * pf[a, l])
            g = g + beta * (old[a, l] - pi)
            g = g * w[l]
            if first:
                gsq[l] += g * g
            t = th[a, l] + lr * g
            th[a, l] = t
            m_next[l] = t if (a == 0) | (t > m_next[l]) else m_next[l] + 0.0


KERNELS = twins(greedy_policy, ppo_update)
