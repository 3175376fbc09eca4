# Per-pair f-divergence terms shared by the Cython kernels.
# code: 0 none, 1 reverse KL, 2 forward KL, 3 chi-square, 4 squared Hellinger,
# 5 Jensen-Shannon, 6 alpha. p = pi(a|s), q = pi_ref(a|s) > 0.
# Mirrors kernels/numba/_divergence.py. Included (not cimported) by the kernels.
from libc.math cimport exp, fabs, isfinite, log, sqrt, pow, INFINITY


cdef inline double ref_f(int code, double alpha, double p, double q) noexcept nogil:
    """q * f(p / q), with the limit at p = 0."""
    cdef double t, d
    if code == 1:
        return p * log(p / q) if p > 0.0 else 0.0
    if code == 2:
        return q * log(q / p) if p > 0.0 else INFINITY
    if code == 3:
        return (p - q) * (p - q) / q
    if code == 4:
        d = sqrt(p) - sqrt(q)
        return d * d
    if code == 5:
        t = p * log(p / q) if p > 0.0 else 0.0
        return t - (p + q) * log((p + q) / (2.0 * q))
    if code == 6:
        if p > 0.0:
            return (pow(p, 1.0 - alpha) * pow(q, alpha) - (1.0 - alpha) * p - alpha * q) / (alpha * (alpha - 1.0))
        return q / (1.0 - alpha) if alpha < 1.0 else INFINITY
    return 0.0


cdef inline double p_fprime(int code, double alpha, double p, double q) noexcept nogil:
    """p * f'(p / q), with the limit at p = 0."""
    if code == 1:
        return p * (log(p / q) + 1.0) if p > 0.0 else 0.0
    if code == 2:
        return -q
    if code == 3:
        return 2.0 * p * (p - q) / q
    if code == 4:
        return p - sqrt(p * q)
    if code == 5:
        return p * log(2.0 * p / (p + q)) if p > 0.0 else 0.0
    if code == 6:
        if p > 0.0:
            return (p - pow(p, 1.0 - alpha) * pow(q, alpha)) / alpha
        return 0.0 if alpha < 1.0 else -INFINITY
    return 0.0


cdef inline double fprime_one(int code) noexcept nogil:
    """f'(1): shifts the bracket of the normaliser nu in the greedy step."""
    if code == 1:
        return 1.0
    if code == 2:
        return -1.0
    return 0.0


cdef inline double fprime_inv(int code, double alpha, double y, double* dh) noexcept nogil:
    """h(y) = (f')^{-1}(y), extended by 0 below and +inf above its range; h'(y) into dh."""
    cdef double h, t, e
    if code == 1:
        h = exp(y - 1.0)
        dh[0] = h
        return h
    if code == 2:
        if y < 0.0:
            dh[0] = 1.0 / (y * y)
            return -1.0 / y
        dh[0] = INFINITY
        return INFINITY
    if code == 3:
        if y > -2.0:
            dh[0] = 0.5
            return 1.0 + 0.5 * y
        dh[0] = 0.0
        return 0.0
    if code == 4:
        if y < 1.0:
            t = 1.0 / (1.0 - y)
            dh[0] = 2.0 * t * t * t
            return t * t
        dh[0] = INFINITY
        return INFINITY
    if code == 5:
        if y < log(2.0):
            e = exp(y)
            dh[0] = 2.0 * e / ((2.0 - e) * (2.0 - e))
            return e / (2.0 - e)
        dh[0] = INFINITY
        return INFINITY
    if code == 6:
        t = 1.0 - alpha * y
        if t > 0.0:
            h = pow(t, -1.0 / alpha)
            dh[0] = h / t
            return h
        if alpha > 0.0:
            dh[0] = INFINITY
            return INFINITY
        dh[0] = 0.0
        return 0.0
    dh[0] = 0.0
    return 0.0
