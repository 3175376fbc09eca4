"""Per-state policy updates: the regularized greedy step and the fused PPO update.

``greedy_policy``: p(s) = argmax_p Σ_a p_a Q(s,a) − τ D_f(p ‖ π_ref(·|s)) and its value.
``ppo_update``: ``n_steps`` ascent steps on the clipped surrogate (+ β KL penalty),
    state by state in one pass.
Mirrors kernels/numba/policy_update.py (which documents the method).
"""
from cython.parallel cimport prange
from libc.stdint cimport int64_t

include "_divergence.pxi"


def greedy_policy(const int64_t[::1] a_indptr, const double[::1] q, const double[::1] ref,
                  int code, double alpha, double tau,                          # IN
                  double[::1] pi_out, double[::1] value_out, int n_threads):   # OUT
    """greedy_policy(a_indptr, q, ref, code, alpha, tau, pi_out, value_out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    for s in prange(n_states, nogil=True, schedule="dynamic", num_threads=n_threads):
        _greedy_state(a_indptr[s], a_indptr[s + 1], q, ref, code, alpha, tau, pi_out, &value_out[s])


cdef void _greedy_state(int64_t lo, int64_t hi, const double[::1] q, const double[::1] ref,
                        int code, double alpha, double tau, double[::1] pi_out,
                        double* value) noexcept nogil:
    cdef int64_t k, best = lo
    cdef int it
    cdef double qmax = q[lo], qmin = q[lo], z, e, shift, a, b, nu, F, dF, h, dh, new, step, val, div
    for k in range(lo + 1, hi):
        if q[k] > qmax:
            qmax = q[k]
            best = k
        if q[k] < qmin:
            qmin = q[k]
    if tau == 0.0 or code == 0:
        for k in range(lo, hi):
            pi_out[k] = 0.0
        pi_out[best] = 1.0
        value[0] = qmax
        return
    if code == 1:
        z = 0.0
        for k in range(lo, hi):
            e = ref[k] * exp((q[k] - qmax) / tau)
            pi_out[k] = e
            z = z + e
        for k in range(lo, hi):
            pi_out[k] = pi_out[k] / z
        value[0] = qmax + tau * log(z)
        return
    shift = tau * fprime_one(code)
    a = qmin - shift
    b = qmax - shift
    nu = b
    for it in range(200):
        F = -1.0
        dF = 0.0
        for k in range(lo, hi):
            h = fprime_inv(code, alpha, (q[k] - nu) / tau, &dh)
            F = F + ref[k] * h
            dF = dF - ref[k] * dh / tau
        if F == 0.0:
            break
        if F > 0.0:
            a = nu
        else:
            b = nu
        new = 0.5 * (a + b)
        if isfinite(F) and dF < 0.0:
            step = nu - F / dF
            if a < step < b:
                new = step
        if fabs(new - nu) <= 1e-15 * max(tau, fabs(nu)):  # (q − ν)/τ to 1e-15: scale-free
            nu = new
            break
        nu = new
    z = 0.0
    for k in range(lo, hi):
        h = fprime_inv(code, alpha, (q[k] - nu) / tau, &dh)
        pi_out[k] = ref[k] * h
        z = z + pi_out[k]
    val = 0.0
    div = 0.0
    for k in range(lo, hi):
        pi_out[k] = pi_out[k] / z
        val = val + pi_out[k] * q[k]
        div = div + ref_f(code, alpha, pi_out[k], ref[k])
    value[0] = val - tau * div


def ppo_update(const int64_t[::1] a_indptr, const double[::1] pi_old, const double[::1] adv,
               const double[::1] weight, const double[::1] ref, int code, double alpha,
               double tau, double eps_low, double eps_high, double beta, double lr,
               int n_steps,                                                     # IN
               double[::1] theta,                                               # IN/OUT
               double[::1] pi_out, int64_t[::1] clipped_out, double[::1] gsq_out,
               double[::1] kl_out, int n_threads):                              # OUT
    """ppo_update(a_indptr, pi_old, adv, weight, ref, code, alpha, tau, eps_low, eps_high,
    beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    cdef int64_t lo, hi, k, clipped
    cdef int step
    cdef double w, gsq, m, z, e, mean_b, mean_f, ratio, bk, g, kl
    for s in prange(n_states, nogil=True, schedule="static", num_threads=n_threads):
        lo = a_indptr[s]
        hi = a_indptr[s + 1]
        w = weight[s]
        clipped = 0
        gsq = 0.0
        for step in range(n_steps + 1):
            m = theta[lo]
            for k in range(lo + 1, hi):
                if theta[k] > m:
                    m = theta[k]
            z = 0.0
            for k in range(lo, hi):
                e = exp(theta[k] - m)
                pi_out[k] = e
                z = z + e
            for k in range(lo, hi):
                pi_out[k] = pi_out[k] / z
            if step == n_steps:
                break
            mean_b = 0.0
            mean_f = 0.0
            clipped = 0
            for k in range(lo, hi):
                ratio = pi_out[k] / pi_old[k]
                if (adv[k] > 0.0 and ratio < 1.0 + eps_high) or (adv[k] < 0.0 and ratio > 1.0 - eps_low):
                    mean_b = mean_b + pi_out[k] * adv[k]
                elif adv[k] != 0.0:
                    clipped = clipped + 1
                if tau != 0.0:
                    mean_f = mean_f + p_fprime(code, alpha, pi_out[k], ref[k])
            for k in range(lo, hi):
                ratio = pi_out[k] / pi_old[k]
                bk = 0.0
                if (adv[k] > 0.0 and ratio < 1.0 + eps_high) or (adv[k] < 0.0 and ratio > 1.0 - eps_low):
                    bk = adv[k]
                g = pi_out[k] * (bk - mean_b)
                if tau != 0.0:
                    g = g - tau * (p_fprime(code, alpha, pi_out[k], ref[k]) - pi_out[k] * mean_f)
                if beta != 0.0:
                    g = g + beta * (pi_old[k] - pi_out[k])
                g = g * w
                if step == 0:
                    gsq = gsq + g * g
                theta[k] = theta[k] + lr * g
        kl = 0.0
        for k in range(lo, hi):
            if pi_out[k] > 0.0:
                kl = kl + pi_out[k] * log(pi_out[k] / pi_old[k])
        clipped_out[s] = clipped
        gsq_out[s] = gsq
        kl_out[s] = kl
