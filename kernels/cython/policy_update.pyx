"""Per-state policy updates: the regularized greedy step and the fused PPO update.

``greedy_policy``: p(s) = argmax_p Σ_a p_a Q(s,a) − τ D_f(p ‖ π_ref(·|s)) and its value.
``ppo_update``: ``n_steps`` ascent steps on the clipped surrogate (+ β KL penalty),
    state by state in one pass.
Mirrors kernels/numba/policy_update.py (which documents the method).
"""
from cython.parallel cimport prange
from libc.math cimport copysign, sqrt
from libc.stdint cimport int64_t
from libc.stdlib cimport free, malloc

include "_codes.pxi"
include "_divergence.pxi"
include "_softmax.pxi"

cdef enum:
    TASK_BLOCKS = 32  # blocks of LANES states per parallel task
    PF_NONE = 0     # no tau term in the ascent (none, or folded into b: U_REVERSE, U_JS)
    PF_BLOCK = 1    # pi f' in the block pf, its lane sums in mean_f
    U_NONE = 0      # b = the clipped advantage
    U_REVERSE = 1   # b -= tau u, u = (theta - m) - log pi_ref (logq holds log_ref; u in b
                    # on entry, from _exp_u_lanes)
    U_JS = 2        # b -= tau u, u = (theta - m) - log(pi + pi_ref)
    U_CHI = 3       # pf = 2 pi (pi - pi_ref)/pi_ref and mean_f = sum_a pf (PF_BLOCK)
    U_HELLINGER = 4  # pf = pi - sqrt(pi pi_ref) and mean_f = sum_a pf (PF_BLOCK)
    U_ALPHA = 5     # pf = pi f'_alpha and mean_f (PF_BLOCK; logq holds log pi_ref)
    U_ALPHA_UNIT = 6  # U_ALPHA for 0.01 <= alpha < 1: pf from the power e^w in pw
                      # (_exp_alpha_lanes or _ascend_exp; logq holds alpha log pi_ref, logz
                      # z^(alpha - 1) on entry)

cdef double TINIEST = 5e-324  # the smallest positive double
# zs (the product of the normalisers since the last full softmax, each within e^(+-STEP_MAX))
# is kept within these bounds, so that e zs neither overflows nor underflows
cdef double ZS_MIN = 1e-100
cdef double ZS_MAX = 1e100
# the least alpha of U_ALPHA_UNIT: there pi f' = (pi - pi^(1 - alpha) pi_ref^alpha)/alpha, whose
# rounding near pi = pi_ref, a few ulp of pi, 1/alpha amplifies (below: U_ALPHA's expm1)
cdef double ALPHA_UNIT_MIN = 0.01


def greedy_policy(const int64_t[::1] a_indptr, const double[::1] q, const double[::1] ref,
                  int code, double alpha, double tau,                          # IN
                  double[::1] pi_out, double[::1] value_out, int n_threads):   # OUT
    """greedy_policy(a_indptr, q, ref, code, alpha, tau, pi_out, value_out, n_threads)"""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, s
    # dynamic, in chunks of 64 states: uneven action counts balance, at little scheduling cost
    for s in prange(n_states, nogil=True, schedule="dynamic", chunksize=64, num_threads=n_threads):
        _greedy_state(a_indptr[s], a_indptr[s + 1], q, ref, code, alpha, tau, pi_out, &value_out[s])


cdef void _greedy_state(int64_t lo, int64_t hi, const double[::1] q, const double[::1] ref,
                        int code, double alpha, double tau, double[::1] pi_out,
                        double* value) noexcept nogil:
    cdef int64_t k, best = lo
    cdef int it
    cdef double qmax = q[lo], qmin = q[lo], z, e, f1, a, b, t, y, F, dF, h, dh, new, step, val, div
    for k in range(lo + 1, hi):
        if q[k] > qmax:
            qmax = q[k]
            best = k
        if q[k] < qmin:
            qmin = q[k]
    if tau == 0.0 or code == NONE:
        for k in range(lo, hi):
            pi_out[k] = 0.0
        pi_out[best] = 1.0
        value[0] = qmax
        return
    if code == REVERSE_KL:  # closed form
        z = 0.0
        for k in range(lo, hi):
            e = ref[k] * exp((q[k] - qmax) / tau)
            pi_out[k] = e
            z = z + e
        for k in range(lo, hi):
            pi_out[k] = pi_out[k] / z
        value[0] = qmax + tau * log(z)
        return
    # nu = max Q + tau t; F(t) = sum_a ref_a h((Q_a - max Q)/tau - t) - 1 decreases in t
    f1 = fprime(code, alpha, 1.0)
    a = max(-fprime(code, alpha, 1.0 / ref[best]), (qmin - qmax) / tau - f1)  # F(a) >= 0
    b = -f1  # F(b) <= 0
    t = b
    for it in range(200):
        F = -1.0
        dF = 0.0
        for k in range(lo, hi):
            h = fprime_inv(code, alpha, (q[k] - qmax) / tau - t, &dh)
            F = F + ref[k] * h
            dF = dF - ref[k] * dh
        if F == 0.0:
            break
        if F > 0.0:
            a = t
        else:
            b = t
        new = 0.5 * (a + b)
        if isfinite(F) and dF < 0.0:
            step = t - F / dF
            if a < step < b:
                new = step
        if fabs(new - t) <= 1e-15 * max(1.0, fabs(t)):
            t = new
            break
        t = new
    z = 0.0
    for k in range(lo, hi):
        y = (q[k] - qmax) / tau - t
        if y == -INFINITY:  # |y| beyond the double range: h by its asymptote
            h = fprime_inv_tail(code, alpha, log(qmax - q[k]) - log(tau))
        else:
            h = fprime_inv(code, alpha, y, &dh)
        pi_out[k] = ref[k] * h
        z = z + pi_out[k]
    val = 0.0
    div = 0.0
    for k in range(lo, hi):
        pi_out[k] = pi_out[k] / z
        if pi_out[k] == 0.0 and ref_f(code, alpha, 0.0, ref[k]) == INFINITY:
            pi_out[k] = TINIEST  # the optimum has full support there: tau/gap underflowed
        val = val + pi_out[k] * q[k]
        div = div + ref_f(code, alpha, pi_out[k], ref[k])
    value[0] = val - tau * div


def ppo_update(const int64_t[::1] a_indptr, const double[::1] pi_old, const double[::1] adv,
               const double[::1] weight, const double[::1] ref, const double[::1] log_ref,
               int code, double alpha, double tau, double eps_low, double eps_high,
               double beta, double lr, int n_steps,                             # IN
               double[::1] theta,                                               # IN/OUT
               double[::1] pi_out, int64_t[::1] clipped_out, double[::1] gsq_out,
               double[::1] kl_out, int n_threads):                              # OUT
    """ppo_update(a_indptr, pi_old, adv, weight, ref, log_ref, code, alpha, tau, eps_low,
    eps_high, beta, lr, n_steps, theta, pi_out, clipped_out, gsq_out, kl_out, n_threads)

    log_ref = log pi_ref (-inf where pi_ref = 0) is read for reverse KL only, ref for the
    other f only (the caller forms log pi_ref once per run, not once per call).
    kl_out = KL(pi_new || softmax(theta on entry)) per state.
    pi_out may alias pi_old or adv: each block of states reads its pairs into local lanes
    before it writes any of them back (store_lanes, once), and blocks own disjoint pairs."""
    cdef Py_ssize_t n_states = a_indptr.shape[0] - 1, per_task = TASK_BLOCKS * LANES, c
    cdef Py_ssize_t n_tasks = (n_states + per_task - 1) // per_task
    cdef int failed = 0
    if n_states == 0:
        return
    for c in prange(n_tasks, nogil=True, schedule="static", num_threads=n_threads):
        if _ppo_states(&a_indptr[0], c * per_task, min((c + 1) * per_task, n_states),
                       &pi_old[0], &adv[0], &weight[0], &ref[0], &log_ref[0], code, alpha,
                       tau, eps_low, eps_high, beta, lr, n_steps, &theta[0], &pi_out[0],
                       &clipped_out[0], &gsq_out[0], &kl_out[0]) != 0:
            failed = 1
    if failed:
        raise MemoryError("ppo_update: could not allocate a block of states")


cdef int _ppo_states(const int64_t* a_indptr, Py_ssize_t s0, Py_ssize_t s1,
                     const double* pi_old, const double* adv, const double* weight,
                     const double* ref, const double* log_ref, int code, double alpha,
                     double tau, double eps_low, double eps_high, double beta, double lr,
                     int n_steps, double* theta, double* pi_out, int64_t* clipped_out,
                     double* gsq_out, double* kl_out) noexcept nogil:
    """ppo_update for the states s0 <= s < s1: LANES states at a time, every inner step on
    (n_rows, LANES) blocks, written back once (-1 if the blocks could not be allocated)."""
    cdef Py_ssize_t n_rows = max_actions(a_indptr, s0, s1), size, k, b0, b1, a, l, i
    cdef int step
    cdef bint regularized = tau != 0.0 and code != NONE
    cdef bint penalized = beta != 0.0
    cdef bint stepwise, fresh
    cdef int mode = PF_NONE, umode = U_NONE
    cdef double hi_ratio = 1.0 + eps_high, lo_ratio = 1.0 - eps_low, scale
    cdef double* swap
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
    stepwise = not penalized  # e^delta by fexpm1_step between steps (_ascend_exp)
    size = n_rows * LANES
    cdef double* buf = <double*> malloc((11 * size + 13 * LANES) * sizeof(double))
    cdef int64_t* clipped = <int64_t*> malloc(LANES * sizeof(int64_t))
    if buf == NULL or clipped == NULL:
        free(buf)
        free(clipped)
        return -1
    cdef double* th = buf
    cdef double* p = buf + size
    cdef double* b = buf + 2 * size
    cdef double* old = buf + 3 * size
    cdef double* thr = buf + 4 * size
    cdef double* av = buf + 5 * size
    cdef double* q = buf + 6 * size
    cdef double* pf = buf + 7 * size
    cdef double* logq = buf + 8 * size
    cdef double* x0 = buf + 9 * size  # theta - m on entry (the KL's pi_theta0)
    cdef double* pw = buf + 10 * size  # U_ALPHA_UNIT: the power e^w
    cdef double* m = buf + 11 * size
    cdef double* m_next = m + LANES
    cdef double* z = m_next + LANES
    cdef double* rz = z + LANES
    cdef double* logz = rz + LANES
    cdef double* w = logz + LANES
    cdef double* mean_b = w + LANES
    cdef double* mean_f = mean_b + LANES
    cdef double* gsq = mean_f + LANES
    cdef double* kl = gsq + LANES
    cdef double* logz0 = kl + LANES  # log z of theta on entry
    cdef double* over = logz0 + LANES  # pairs with |delta| > STEP_MAX per lane (_ascend_exp)
    cdef double* zs = over + LANES  # e^(theta - m) = e zs: the normalisers since the last exp
    for k in range((s1 - s0 + LANES - 1) // LANES):
        b0 = s0 + k * LANES
        b1 = min(b0 + LANES, s1)
        if umode == U_REVERSE:  # log pi_ref into logq in the same pass (-inf: a masked pair)
            _load_ppo_lanes(a_indptr, b0, b1, n_rows, theta, pi_old, adv, log_ref, -INFINITY,
                            th, old, av, logq, True)
        elif regularized:  # pi_ref into q in the same pass
            _load_ppo_lanes(a_indptr, b0, b1, n_rows, theta, pi_old, adv, ref, 0.0, th, old,
                            av, q, True)
        else:
            _load_ppo_lanes(a_indptr, b0, b1, n_rows, theta, pi_old, adv, ref, 0.0, th, old,
                            av, q, False)
        _thresholds(size, old, av, hi_ratio, lo_ratio, thr)
        for l in range(LANES):
            w[l] = weight[b0 + l] if b0 + l < b1 else 0.0
        if regularized:
            if code == ALPHA:  # -inf at pi_ref = 0 (masks the pair)
                scale = alpha if umode == U_ALPHA_UNIT else 1.0  # one flog call site
                for i in range(size):
                    logq[i] = scale * flog(q[i])
            elif code == FORWARD_KL:  # pi f' = -pi_ref does not depend on pi: once per block,
                for l in range(LANES):  # and tau pf in the block (the ascent's term)
                    mean_f[l] = 0.0
                for a in range(n_rows):
                    for l in range(LANES):
                        i = a * LANES + l
                        pf[i] = tau * -q[i]
                        mean_f[l] = mean_f[l] - q[i]
        # each step: softmax (exp_lanes, then pi = e rz inside _clip_lanes), the clipped
        # advantages b (minus tau u for the U_ modes), pi f' and its sum for PF_BLOCK, and
        # the ascent step, which (stepwise) forms the next softmax's e = pi e^delta itself
        # (_ascend_exp: a full softmax only where some |delta| > STEP_MAX), or (beta != 0)
        # takes the max of the new logits (the next softmax's shift, into m_next)
        max_lanes(th, n_rows, LANES, m)
        for a in range(n_rows):  # x0 = theta - m on entry: log pi_theta0 + log z0
            for l in range(LANES):
                i = a * LANES + l
                x0[i] = th[i] - m[l]
        fresh = True
        for step in range(n_steps + 1):
            if not fresh:  # e and z from _ascend_exp
                for l in range(LANES):
                    rz[l] = 1.0 / z[l]
            else:
                if umode == U_ALPHA_UNIT and step < n_steps:  # and the power e^w in pw
                    _exp_alpha_lanes(n_rows, th, m, logq, 1.0 - alpha, p, z, rz, pw)
                elif umode == U_REVERSE and step < n_steps:  # and u = (theta - m) - log pi_ref
                    _exp_u_lanes(n_rows, th, m, logq, p, z, rz, b)  # in b
                else:
                    exp_lanes(th, n_rows, LANES, m, p, z, rz)
                for l in range(LANES):
                    zs[l] = 1.0
            if step == 0:
                for l in range(LANES):
                    logz0[l] = flog(z[l])
            if step == n_steps:  # pi = e rz in _kl_lanes, fused with KL(pi || pi_theta0)
                break
            if umode == U_ALPHA or umode == U_ALPHA_UNIT:  # log sum_a e^(theta - m)
                for l in range(LANES):
                    logz[l] = flog(z[l] * zs[l])
            if umode == U_ALPHA_UNIT:  # z^(alpha - 1)
                for l in range(LANES):
                    logz[l] = fexp_neg(-(1.0 - alpha) * logz[l])
            _clip_step(umode, n_rows, p, rz, av, thr, b, mean_b, th, m, q, logq, tau, pf,
                       mean_f, logz, alpha, pw)
            if step == n_steps - 1:
                _count_clipped(n_rows, p, av, thr, clipped)
            if mode == PF_BLOCK:  # g = pi (b - (sum pi b - tau sum pf)) - tau pf
                for l in range(LANES):
                    mean_b[l] = mean_b[l] - tau * mean_f[l]
            if step == 0:
                for l in range(LANES):
                    gsq[l] = 0.0
            if stepwise:
                for l in range(LANES):
                    zs[l] = zs[l] * z[l]
                _ascend_exp_step(mode == PF_BLOCK, code == FORWARD_KL, step == 0,
                                 umode == U_REVERSE, umode == U_ALPHA_UNIT, n_rows, th, p, b,
                                 mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                                 1.0 - alpha)
                fresh = False
                for l in range(b1 - b0):  # a step beyond STEP_MAX, or zs far from 1
                    if over[l] != 0.0 or not (ZS_MIN <= zs[l] <= ZS_MAX):
                        fresh = True
                if fresh:  # a full softmax next, from the new max
                    max_lanes(th, n_rows, LANES, m)
            else:
                _ascend_step(mode == PF_BLOCK, code == FORWARD_KL, step == 0, n_rows, th, p, b,
                             mean_b, old, pf, w, tau, beta, lr, gsq, m_next)
                swap = m
                m = m_next
                m_next = swap
        for l in range(LANES):  # log(pi/pi_theta0) = ((theta - m) - x0) - (log z - log z0)
            logz[l] = flog(z[l] * zs[l]) - logz0[l]
        _kl_lanes(n_rows, p, rz, th, m, x0, logz, kl)
        store_lanes(a_indptr, b0, b1, th, theta)
        store_lanes(a_indptr, b0, b1, p, pi_out)
        for l in range(b1 - b0):
            clipped_out[b0 + l] = clipped[l]
            gsq_out[b0 + l] = gsq[l]
            kl_out[b0 + l] = kl[l]
    free(buf)
    free(clipped)
    return 0


cdef inline void _load_ppo_lanes(const int64_t* a_indptr, Py_ssize_t s0, Py_ssize_t s1,
                                Py_ssize_t n_rows, const double* theta, const double* pi_old,
                                const double* adv, const double* ref, double ref_pad,
                                double* th, double* old, double* av, double* q,
                                bint with_ref) noexcept nogil:
    """load_lanes of theta (padding PAD_LOGIT), pi_old and adv (padding 0), and of ref into
    q (padding ref_pad) if with_ref, in one pass."""
    cdef Py_ssize_t l, a, n, lo, i
    for l in range(LANES):
        n = 0
        if s0 + l < s1:
            lo = a_indptr[s0 + l]
            n = a_indptr[s0 + l + 1] - lo
            for a in range(n):
                i = a * LANES + l
                th[i] = theta[lo + a]
                old[i] = pi_old[lo + a]
                av[i] = adv[lo + a]
                if with_ref:
                    q[i] = ref[lo + a]
        for a in range(n, n_rows):
            i = a * LANES + l
            th[i] = PAD_LOGIT
            old[i] = 0.0
            av[i] = 0.0
            if with_ref:
                q[i] = ref_pad


cdef inline void _thresholds(Py_ssize_t size, cdptr old, cdptr av, double hi_ratio,
                             double lo_ratio, dptr thr) noexcept nogil:
    """The one bound t on pi each pair's clip can meet, negated where the advantage A < 0:
    the ratio r = pi/pi_old stays below 1 + eps_high where A > 0 (above 1 - eps_low where
    A < 0) as pi < t (pi > t, i.e. -pi < -t), so that the clip is active where
    copysign(pi, A) < thr; at pi_old = 0 (r = inf, or NaN at pi = 0) t = 0. (Where A = 0
    the clip does not matter: b = A = 0.)"""
    cdef Py_ssize_t i
    cdef double t
    for i in range(size):
        t = (old[i] * hi_ratio if av[i] > 0.0 else old[i] * lo_ratio) if old[i] > 0.0 else 0.0
        thr[i] = -t if av[i] < 0.0 else t

cdef inline void _clip_step(int umode, Py_ssize_t n_rows, dptr p, cdptr rz, cdptr av,
                            cdptr thr, dptr b, dptr mean_b, cdptr th, cdptr m, cdptr q,
                            cdptr logq, double tau, dptr pf, dptr mean_f, cdptr logz,
                            double alpha, cdptr pw) noexcept nogil:
    """_clip_lanes with a literal umode (one branch-free loop per mode)."""
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


cdef inline void _clip_lanes(Py_ssize_t n_rows, dptr p, cdptr rz, cdptr av, cdptr thr, dptr b,
                             dptr mean_b, cdptr th, cdptr m, cdptr q, cdptr logq, double tau,
                             dptr pf, dptr mean_f, cdptr logz, double alpha,
                             int umode, cdptr pw) noexcept nogil:
    """pi = e rz in place (p holds e = e^(theta - m)/zs from exp_lanes or _ascend_exp), b =
    the advantage where the clipped objective is active (else 0), minus tau u by umode
    (u = f'(pi/pi_ref) up to a constant per lane, which cancels in u - sum_a pi u: the
    ascent is then the plain pi (b - sum pi b)), mean_b = sum_a pi b per lane. u is 0 where
    it would be NaN or infinite (pi_ref = 0 for U_REVERSE, pi = 0 for U_JS): f' enters g
    times pi only. U_CHI, U_HELLINGER and U_ALPHA form pf = pi f'(pi/pi_ref) and
    mean_f = sum_a pf instead (padding rows, where pi_ref = 0, get 0), with
    log pi = (theta - m) - log (z zs) (logz);
    U_ALPHA_UNIT (ALPHA_UNIT_MIN <= alpha < 1) as (pi - pi^(1 - alpha) pi_ref^alpha)/alpha,
    the power e^w in pw and z^(alpha - 1) in logz on entry: no expm1 there, so where pi
    is near pi_ref this pf is accurate to a few ulp of pi/alpha, not relative to itself.
    U_JS takes flog_positive of pi + pi_ref (its u is masked where that is 0).
    (chi-square keeps pi f' = 2 pi (pi - pi_ref)/pi_ref: u = pi (2/pi_ref) overflows where
    pi_ref is subnormal.)"""
    cdef Py_ssize_t a, l, i
    cdef double A, pi, u, bb, t, logp, y, e, small, big
    cdef double at_zero = 0.0 if alpha < 1.0 else -INFINITY  # lim_(pi -> 0) pi f'
    cdef double inv_alpha = 1.0 / alpha, neg_inv_alpha = -1.0 / alpha
    cdef bint active
    for l in range(LANES):
        mean_b[l] = 0.0
        if umode == U_CHI or umode == U_HELLINGER or umode == U_ALPHA or umode == U_ALPHA_UNIT:
            mean_f[l] = 0.0
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            pi = p[i] * rz[l]
            p[i] = pi
            A = av[i]
            active = copysign(pi, A) < thr[i]  # thr signed like A (_thresholds)
            bb = A if active else 0.0
            if umode == U_REVERSE:  # f' = log(pi/pi_ref) + 1 = u + (1 - log z)
                u = b[i]  # (theta - m) - log pi_ref, from _exp_u_lanes
                bb = bb - tau * (u if logq[i] > -INFINITY else 0.0)
            elif umode == U_JS:  # f' = log(2 pi/(pi + pi_ref)) = u + (log 2 - log z)
                u = (th[i] - m[l]) - flog_positive(pi + q[i])  # masked below where pi = 0
                bb = bb - tau * (u if pi > 0.0 else 0.0)
            elif umode == U_CHI:
                t = ((2.0 * pi) * (pi - q[i])) / q[i]
                pf[i] = t if q[i] > 0.0 else 0.0
                mean_f[l] = mean_f[l] + pf[i]
            elif umode == U_HELLINGER:
                pf[i] = pi - sqrt(pi * q[i])
                mean_f[l] = mean_f[l] + pf[i]
            elif umode == U_ALPHA:
                # y = -alpha L, L = log(pi/pi_ref): pi f' = pi L E(y) = -pi (e^y - 1)/alpha
                # for y <= 1, and (pi - e^(log pi + y))/alpha beyond (no overflow of e^y)
                logp = (th[i] - m[l]) - logz[l]
                y = -alpha * (logp - logq[i])
                e = fexpm1_or_exp(y if y <= 1.0 else logp + y, y <= 1.0)
                small = (pi * e) * neg_inv_alpha
                big = (pi - e) * inv_alpha
                t = small if y <= 1.0 else big
                t = t if pi > 0.0 else at_zero
                pf[i] = t if q[i] > 0.0 else 0.0
                mean_f[l] = mean_f[l] + pf[i]
            elif umode == U_ALPHA_UNIT:  # pi f' = (pi - pi^(1 - alpha) pi_ref^alpha)/alpha
                t = (pi - pw[i] * logz[l]) * inv_alpha  # the power as pw logz
                t = t if pi > 0.0 else 0.0
                pf[i] = t if q[i] > 0.0 else 0.0
                mean_f[l] = mean_f[l] + pf[i]
            b[i] = bb
            mean_b[l] = mean_b[l] + pi * bb


cdef inline void _count_clipped(Py_ssize_t n_rows, cdptr p, cdptr av, cdptr thr,
                                int64_t* clipped) noexcept nogil:
    """clipped = the count of pairs with a nonzero advantage whose clipped objective is
    inactive, per lane, from pi (p, as _clip_lanes left it) and _clip_lanes' test."""
    cdef Py_ssize_t a, l, i
    cdef double A
    for l in range(LANES):
        clipped[l] = 0
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            A = av[i]
            clipped[l] = clipped[l] + (0 if (copysign(p[i], A) < thr[i]) | (A == 0.0) else 1)


cdef inline void _exp_alpha_lanes(Py_ssize_t n_rows, cdptr th, cdptr m, cdptr alogq,
                                  double one_minus_alpha, dptr e, dptr z, dptr rz,
                                  dptr power) noexcept nogil:
    """exp_lanes (e, z, rz), and for 0 < alpha < 1 (U_ALPHA_UNIT) from the same pass
    power = e^w with w = (1 - alpha)(theta - m) + alpha log pi_ref <= 0 (alogq), so that
    pi^(1 - alpha) pi_ref^alpha = power z^(alpha - 1) (pi = e^(theta - m)/z)."""
    cdef Py_ssize_t a, l, i
    cdef double x
    for l in range(LANES):
        z[l] = 0.0
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            x = th[i] - m[l]
            e[i] = fexp_neg(x)
            z[l] = z[l] + e[i]
            power[i] = fexp_neg(fma(one_minus_alpha, x, alogq[i]))
    for l in range(LANES):
        rz[l] = 1.0 / z[l]


cdef inline void _exp_u_lanes(Py_ssize_t n_rows, cdptr th, cdptr m, cdptr logq, dptr e,
                              dptr z, dptr rz, dptr u) noexcept nogil:
    """exp_lanes (e, z, rz), and for U_REVERSE from the same pass u = (theta - m) - log pi_ref
    (logq): the exp pass is bound by the FMA pipes, the subtraction is not."""
    cdef Py_ssize_t a, l, i
    cdef double x
    for l in range(LANES):
        z[l] = 0.0
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            x = th[i] - m[l]
            e[i] = fexp_neg(x)
            z[l] = z[l] + e[i]
            u[i] = x - logq[i]
    for l in range(LANES):
        rz[l] = 1.0 / z[l]


cdef inline void _ascend_step(bint block, bint scaled, bint first, Py_ssize_t n_rows, dptr th,
                              cdptr p, cdptr b, cdptr mean_b, cdptr old, cdptr pf, cdptr w,
                              double tau, double beta, double lr, dptr gsq,
                              dptr m_next) noexcept nogil:
    """_ascend with literal flags (one branch-free loop per combination)."""
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


cdef inline void _ascend(Py_ssize_t n_rows, dptr th, cdptr p, cdptr b, cdptr mean_b, cdptr old,
                         cdptr pf, cdptr w, double tau, double beta, double lr, dptr gsq,
                         dptr m_next, bint block, bint scaled, bint first) noexcept nogil:
    """theta += lr g on a block with the KL penalty (beta != 0; _ascend_exp otherwise),
    g = w [pi (b - sum pi b) - tau (pf - pi sum pf) + beta (pi_old - pi)] with
    mean_b = sum pi b - tau sum pf: pi (b - mean_b), minus tau pf if block (PF_BLOCK; pf
    holds tau pf already if scaled), plus the beta term; gsq += g^2 if first; m_next = the
    new max of theta per lane (the next softmax's shift)."""
    cdef Py_ssize_t a, l, i
    cdef double g, t, pi
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            pi = p[i]
            g = pi * (b[i] - mean_b[l])
            if block:
                g = g - (pf[i] if scaled else tau * pf[i])
            g = g + beta * (old[i] - pi)
            g = g * w[l]
            if first:
                gsq[l] = gsq[l] + g * g
            t = th[i] + lr * g
            th[i] = t
            m_next[l] = t if (a == 0) | (t > m_next[l]) else m_next[l] + 0.0


cdef inline void _ascend_exp_step(bint block, bint scaled, bint first, bint with_u,
                                  bint with_power, Py_ssize_t n_rows, dptr th, dptr p, dptr b,
                                  cdptr mean_b, cdptr pf, cdptr w, double tau, double lr,
                                  dptr gsq, cdptr m, cdptr logq, dptr z, dptr over, dptr pw,
                                  double one_minus_alpha) noexcept nogil:
    """_ascend_exp with literal flags (one branch-free loop per combination)."""
    if block and scaled:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, True, True, True, False, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, True, True, False, False, False)
    elif block and with_power:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, True, False, True, False, True)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, True, False, False, False, True)
    elif block:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, True, False, True, False, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, True, False, False, False, False)
    elif with_u:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, False, False, True, True, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, False, False, False, True, False)
    else:
        if first:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, False, False, True, False, False)
        else:
            _ascend_exp(n_rows, th, p, b, mean_b, pf, w, tau, lr, gsq, m, logq, z, over, pw,
                        one_minus_alpha, False, False, False, False, False)


cdef inline void _ascend_exp(Py_ssize_t n_rows, dptr th, dptr p, dptr b, cdptr mean_b,
                             cdptr pf, cdptr w, double tau, double lr, dptr gsq, cdptr m,
                             cdptr logq, dptr z, dptr over, dptr pw, double one_minus_alpha,
                             bint block, bint scaled, bint first, bint with_u,
                             bint with_power) noexcept nogil:
    """_ascend (beta = 0) fused with the next step's exp: theta += lr g, and e = pi e^delta
    (fexpm1_step; delta the new theta minus the old, as rounded, so that pi stays the
    softmax of the stored theta) into p with z = sum_a e per lane, so that the next pi is
    e / z without an exp of theta (the shift m stays; e^(theta - m) = e zs, zs the product
    of the normalisers since the last full softmax). Exact to the bound of fexpm1_step
    where |delta| <= STEP_MAX: over counts per lane the pairs where it is not (or delta is
    NaN), and such a block takes a full softmax. with_u (U_REVERSE): u = (theta - m) -
    log pi_ref into b, as _exp_u_lanes; with_power (U_ALPHA_UNIT): the power e^w times
    e^((1 - alpha) delta) in pw, as _exp_alpha_lanes."""
    cdef Py_ssize_t a, l, i
    cdef double g, t, pi, d, d2, e, dw
    cdef double step_max2 = STEP_MAX * STEP_MAX
    for l in range(LANES):
        z[l] = 0.0
        over[l] = 0.0
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            pi = p[i]
            g = pi * (b[i] - mean_b[l])
            if block:
                g = g - (pf[i] if scaled else tau * pf[i])
            g = g * w[l]
            if first:
                gsq[l] = gsq[l] + g * g
            t = th[i] + lr * g
            d = t - th[i]  # the step as stored (exact where |theta| >= |lr g|: Fast2Sum)
            d = d if th[i] > PAD_LOGIT else 0.0  # (padding: -inf - -inf)
            th[i] = t
            d2 = d * d
            over[l] = over[l] + (0.0 if d2 <= step_max2 else 1.0)
            e = fma(pi, fexpm1_step(d, d2), pi)
            p[i] = e
            z[l] = z[l] + e
            if with_u:
                b[i] = (t - m[l]) - logq[i]
            if with_power:
                dw = one_minus_alpha * d
                pw[i] = fma(pw[i], fexpm1_step(dw, dw * dw), pw[i])


cdef inline void _kl_lanes(Py_ssize_t n_rows, dptr p, cdptr rz, cdptr th, cdptr m,
                           cdptr x0, cdptr c, dptr kl) noexcept nogil:
    """pi = e rz in place (p holds e = e^(theta - m)/zs from exp_lanes or _ascend_exp) and
    kl = sum_a pi log(pi / pi0) per lane (0 where pi = 0), pi0 = softmax(theta0) the policy
    of the logits on entry, from the two log-softmaxes: log(pi / pi0) = ((theta - m) - x0)
    - c, with x0 = theta0 - m0 and c = log (z zs) - log z0 per lane (one flog per lane, not
    one per pair; each logit taken from its own lane max, so that logits far from 0 do not
    cancel)."""
    cdef Py_ssize_t a, l, i
    cdef double t, pi
    for l in range(LANES):
        kl[l] = 0.0
    for a in range(n_rows):
        for l in range(LANES):
            i = a * LANES + l
            pi = p[i] * rz[l]
            p[i] = pi
            t = pi * (((th[i] - m[l]) - x0[i]) - c[l])
            kl[l] = kl[l] + (t if pi > 0.0 else 0.0)
