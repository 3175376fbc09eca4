"""Per-state policy updates: the regularized greedy step and the fused PPO update.

``greedy_policy``: p(s) = argmax_{p ∈ Δ} Σ_a p_a Q(s,a) − τ D_f(p ‖ π_ref(·|s)) and its
    value (the regularized Bellman operator). τ = 0: first argmax. Reverse KL:
    p ∝ π_ref exp(Q/τ). Other f: p_a = π_ref,a h((Q_a − ν)/τ), h = (f')^{-1}, with the
    normaliser ν found by safeguarded Newton inside the bracket
    [min Q − τ f'(1), max Q − τ f'(1)].
``ppo_update``: ``n_steps`` ascent steps θ ← θ + η g on the clipped surrogate (SPEC §1),
    plus an optional KL penalty β·KL(π_old ‖ π_θ); every state is independent, so all
    inner steps run state by state in one pass. Writes the final policy, and per state
    the clipped-pair count at the last step, ‖g‖² at the first step and KL(π_new ‖ π_old).
Mirrors kernels/cython/policy_update.pyx.
"""
import math

from numba import prange

from ._divergence import fprime_inv, fprime_one, p_fprime, ref_f
from ._jit import twins


def greedy_policy(a_indptr, q, ref, code, alpha, tau, pi_out, value_out):
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        qmax = q[lo]
        qmin = q[lo]
        best = lo
        for k in range(lo + 1, hi):
            if q[k] > qmax:
                qmax = q[k]
                best = k
            qmin = min(qmin, q[k])
        if tau == 0.0 or code == 0:
            for k in range(lo, hi):
                pi_out[k] = 0.0
            pi_out[best] = 1.0
            value_out[s] = qmax
            continue
        if code == 1:  # reverse KL: closed form
            z = 0.0
            for k in range(lo, hi):
                e = ref[k] * math.exp((q[k] - qmax) / tau)
                pi_out[k] = e
                z += e
            for k in range(lo, hi):
                pi_out[k] /= z
            value_out[s] = qmax + tau * math.log(z)
            continue
        shift = tau * fprime_one(code)
        a = qmin - shift  # F(a) >= 1
        b = qmax - shift  # F(b) <= 1
        nu = b
        for _ in range(200):
            F = -1.0
            dF = 0.0
            for k in range(lo, hi):
                h, dh = fprime_inv(code, alpha, (q[k] - nu) / tau)
                F += ref[k] * h
                dF -= ref[k] * dh / tau
            if F == 0.0:
                break
            if F > 0.0:
                a = nu
            else:
                b = nu
            new = 0.5 * (a + b)
            if math.isfinite(F) and dF < 0.0:
                step = nu - F / dF
                if a < step < b:
                    new = step
            if abs(new - nu) <= 1e-15 * max(tau, abs(nu)):  # (q − ν)/τ to 1e-15: scale-free
                nu = new
                break
            nu = new
        z = 0.0
        for k in range(lo, hi):
            h, dh = fprime_inv(code, alpha, (q[k] - nu) / tau)
            pi_out[k] = ref[k] * h
            z += pi_out[k]
        val = 0.0
        div = 0.0
        for k in range(lo, hi):
            pi_out[k] /= z
            val += pi_out[k] * q[k]
            div += ref_f(code, alpha, pi_out[k], ref[k])
        value_out[s] = val - tau * div


def ppo_update(a_indptr, pi_old, adv, weight, ref, code, alpha, tau, eps_low, eps_high,
               beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out):
    for s in prange(a_indptr.shape[0] - 1):
        lo, hi = a_indptr[s], a_indptr[s + 1]
        w = weight[s]
        clipped = 0
        gsq = 0.0
        for step in range(n_steps + 1):
            m = theta[lo]
            for k in range(lo + 1, hi):
                m = max(m, theta[k])
            z = 0.0
            for k in range(lo, hi):
                e = math.exp(theta[k] - m)
                pi_out[k] = e
                z += e
            for k in range(lo, hi):
                pi_out[k] /= z
            if step == n_steps:
                break
            mean_b = 0.0
            mean_f = 0.0
            clipped = 0
            for k in range(lo, hi):
                ratio = pi_out[k] / pi_old[k]
                if (adv[k] > 0.0 and ratio < 1.0 + eps_high) or (adv[k] < 0.0 and ratio > 1.0 - eps_low):
                    mean_b += pi_out[k] * adv[k]
                elif adv[k] != 0.0:
                    clipped += 1
                if tau != 0.0:
                    mean_f += p_fprime(code, alpha, pi_out[k], ref[k])
            for k in range(lo, hi):
                ratio = pi_out[k] / pi_old[k]
                b = 0.0
                if (adv[k] > 0.0 and ratio < 1.0 + eps_high) or (adv[k] < 0.0 and ratio > 1.0 - eps_low):
                    b = adv[k]
                g = pi_out[k] * (b - mean_b)
                if tau != 0.0:
                    g -= tau * (p_fprime(code, alpha, pi_out[k], ref[k]) - pi_out[k] * mean_f)
                if beta != 0.0:
                    g += beta * (pi_old[k] - pi_out[k])
                g *= w
                if step == 0:
                    gsq += g * g
                theta[k] += lr * g
        kl = 0.0
        for k in range(lo, hi):
            if pi_out[k] > 0.0:
                kl += pi_out[k] * math.log(pi_out[k] / pi_old[k])
        clipped_out[s] = clipped
        gsq_out[s] = gsq
        kl_out[s] = kl


KERNELS = twins(greedy_policy, ppo_update)
