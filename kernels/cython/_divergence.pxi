# Per-pair f-divergence terms shared by the Cython kernels.
# code selects the generator f by the names of _codes.pxi (the table in
# fastppo.regularizers); p = pi(a|s), q = pi_ref(a|s) > 0. The alpha-divergence terms stay
# accurate as alpha -> 0 or 1 and for tiny p or q (the forms and their error bound:
# fastppo.regularizers.AlphaDivergence). Included (not cimported) by the kernels, after
# _codes.pxi. Mirrors kernels/numba/_divergence.py.
from libc.float cimport DBL_MIN
from libc.math cimport exp, expm1, fabs, fmax, isfinite, log, log1p, sqrt, pow, INFINITY

# |log x| * max(1, |1 - alpha|) up to which f_alpha(x) is summed as a series, and its terms
cdef double SQRT_HALF = 0.7071067811865476  # from here up to 1: log1p((small - big) / big)
cdef double SERIES_RADIUS = 1.0
cdef int SERIES_TERMS = 20


cdef inline double ref_f(int code, double alpha, double p, double q) noexcept nogil:
    """q * f(p / q), with the limit at p = 0."""
    cdef double t, d
    if code == REVERSE_KL:  # p log(p/q)
        if p > 0.0:
            return p * _log_ratio(p, q) if p <= q else -p * _log_ratio(q, p)
        return 0.0
    if code == FORWARD_KL:  # q log(q/p), finite for p down to 5e-324
        if p > 0.0:
            return -q * _log_ratio(p, q) if p <= q else q * _log_ratio(q, p)
        return INFINITY
    if code == CHI_SQUARE:
        return (p - q) * (p - q) / q
    if code == HELLINGER:
        d = sqrt(p) - sqrt(q)
        return d * d
    if code == JENSEN_SHANNON:
        t = p * log(p / q) if p > 0.0 else 0.0
        return t - (p + q) * log((p + q) / (2.0 * q))
    if code == ALPHA:
        if p > 0.0:
            return _alpha_ref_f(alpha, p, q)
        return q / (1.0 - alpha) if alpha < 1.0 else INFINITY
    return 0.0


cdef inline double p_fprime(int code, double alpha, double p, double q) noexcept nogil:
    """p * f'(p / q), with the limit at p = 0."""
    if code == REVERSE_KL:
        return p * (log(p / q) + 1.0) if p > 0.0 else 0.0
    if code == FORWARD_KL:
        return -q
    if code == CHI_SQUARE:
        return 2.0 * p * (p - q) / q
    if code == HELLINGER:
        return p - sqrt(p * q)
    if code == JENSEN_SHANNON:
        return p * log(2.0 * p / (p + q)) if p > 0.0 else 0.0
    if code == ALPHA:
        if p > 0.0:
            return _alpha_p_fprime(alpha, p, q)
        return 0.0 if alpha < 1.0 else -INFINITY
    return 0.0


cdef inline double fprime(int code, double alpha, double x) noexcept nogil:
    """f'(x) for x > 0 (the greedy step's bracket)."""
    cdef double L
    if code == REVERSE_KL:
        return log(x) + 1.0
    if code == FORWARD_KL:
        return -1.0 / x
    if code == CHI_SQUARE:
        return 2.0 * (x - 1.0)
    if code == HELLINGER:
        return 1.0 - 1.0 / sqrt(x)
    if code == JENSEN_SHANNON:
        return log(2.0 * x / (x + 1.0))
    if code == ALPHA:
        L = log(x)
        return L * _exprel(-alpha * L)
    return 0.0


cdef inline double fprime_inv(int code, double alpha, double y, double* dh) noexcept nogil:
    """h(y) = (f')^{-1}(y), extended by 0 below and +inf above its range; h'(y) into dh."""
    cdef double h, t, e, u
    if code == REVERSE_KL:
        h = exp(y - 1.0)
        dh[0] = h
        return h
    if code == FORWARD_KL:
        if y < 0.0:
            dh[0] = 1.0 / (y * y)
            return -1.0 / y
        dh[0] = INFINITY
        return INFINITY
    if code == CHI_SQUARE:
        if y > -2.0:
            dh[0] = 0.5
            return 1.0 + 0.5 * y
        dh[0] = 0.0
        return 0.0
    if code == HELLINGER:
        if y < 1.0:
            t = 1.0 / (1.0 - y)
            dh[0] = 2.0 * t * t * t
            return t * t
        dh[0] = INFINITY
        return INFINITY
    if code == JENSEN_SHANNON:
        if y < log(2.0):
            e = exp(y)
            dh[0] = 2.0 * e / ((2.0 - e) * (2.0 - e))
            return e / (2.0 - e)
        dh[0] = INFINITY
        return INFINITY
    if code == ALPHA:
        u = -alpha * y  # h = (1 + u)^(-1/alpha) = exp(-log1p(u)/alpha): no cancellation as alpha -> 0
        if u > -1.0:
            h = exp(-log1p(u) / alpha)
            dh[0] = h / (1.0 + u)
            return h
        if alpha > 0.0:
            dh[0] = INFINITY
            return INFINITY
        dh[0] = 0.0
        return 0.0
    dh[0] = 0.0
    return 0.0


cdef inline double fprime_inv_tail(int code, double alpha, double log_neg_y) noexcept nogil:
    """h(y) = (f')^(-1)(y) for y = -exp(log_neg_y) below the double range (|y| > 1e308):
    its asymptote, -1/y (forward KL), 1/y^2 (Hellinger), (-alpha y)^(-1/alpha) (alpha > 0), else 0."""
    if code == FORWARD_KL:
        return exp(-log_neg_y)
    if code == HELLINGER:
        return exp(-2.0 * log_neg_y)
    if code == ALPHA and alpha > 0.0:
        return exp(-(log(alpha) + log_neg_y) / alpha)
    return 0.0


# ---------------------------------------------------------- alpha-divergence helpers
cdef inline double _exprel(double z) noexcept nogil:
    """(e^z - 1)/z, 1 at z = 0."""
    return expm1(z) / z if z != 0.0 else 1.0


cdef inline double _log_ratio(double small, double big) noexcept nogil:
    """log(small/big) <= 0 for 0 < small <= big, to a few ulps (log1p near 1: small - big
    is exact there); the polynomial log of _softmax.pxi (no libm call per pair)."""
    cdef double r = small / big
    if r >= SQRT_HALF:
        return flog1p_reduced((small - big) / big)
    if r >= DBL_MIN:
        return flog(r)
    return flog(small) - flog(big)


cdef inline double _power_mean(double alpha, double p, double q) noexcept nogil:
    """p^(1-alpha) q^alpha = p (q/p)^alpha, without overflow where it is finite (p, q > 0)."""
    cdef double r = q / p, g, h
    if DBL_MIN <= r < INFINITY:
        g = pow(r, alpha)
        if g < INFINITY:
            return p * g
        h = pow(r, 0.5 * alpha)  # (q/p)^alpha overflows: p (q/p)^(alpha/2) (q/p)^(alpha/2) may not
        g = (p * h) * h
        if isfinite(g):
            return g
    h = pow(p, 0.5 * (1.0 - alpha))
    g = (h * pow(q, alpha)) * h
    if isfinite(g) and g > 0.0:
        return g
    return exp((1.0 - alpha) * log(p) + alpha * log(q))


cdef inline double _alpha_ref_f(double alpha, double p, double q) noexcept nogil:
    """q f_alpha(p/q) for p > 0, as big * f_a(small/big) (f_alpha(x) = x f_(1-alpha)(1/x)), so
    that x = small/big <= 1 and L = log x <= 0; f_a(e^L) = L (e^(bL) E(aL) - E(bL)),
    E(z) = (e^z - 1)/z, b = 1 - a, summed as a series near L = 0."""
    cdef double small, big, a, b, L, t, s, h, bk
    cdef int k
    if p <= q:
        small, big, a, b = p, q, alpha, 1.0 - alpha
    else:
        small, big, a, b = q, p, 1.0 - alpha, alpha
    L = _log_ratio(small, big)
    if fabs(L) * fmax(1.0, fabs(b)) <= SERIES_RADIUS:
        # f_a(e^L) = sum_{k>=0} (1 + b + ... + b^k) L^(k+2)/(k+2)!
        t = 0.5 * L * L
        s = t
        h = 1.0
        bk = 1.0
        for k in range(1, SERIES_TERMS + 1):
            t = t * L / (k + 2)
            bk = bk * b
            h = h + bk
            s = s + t * h
            if fabs(t) * (fabs(h) + fabs(bk)) <= 1e-17 * fabs(s):  # bounds the rest / 2
                break
        return big * s
    if b < 0.0:  # e^(bL) >= 1 may overflow: big e^(bL) = p^(1-alpha) q^alpha
        return _power_mean(alpha, p, q) * (L * (_exprel(a * L) - _exprel(-b * L)))
    if a < 0.0:  # e^(bL) E(aL) = e^L E(-aL) keeps every exponent <= 0
        return big * (L * ((small / big) * _exprel(-a * L) - _exprel(b * L)))
    return big * (L * (exp(b * L) * _exprel(a * L) - _exprel(b * L)))


cdef inline double _alpha_p_fprime(double alpha, double p, double q) noexcept nogil:
    """p f'_alpha(p/q) = p L E(-alpha L), L = log(p/q); (p - p^(1-alpha) q^alpha)/alpha once
    -alpha L > 1."""
    cdef double L = _log_ratio(p, q) if p <= q else -_log_ratio(q, p)
    cdef double z = -alpha * L
    if z <= 1.0:
        return p * L * _exprel(z)
    return (p - _power_mean(alpha, p, q)) / alpha
