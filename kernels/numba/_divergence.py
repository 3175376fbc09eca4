"""Per-pair f-divergence terms shared by the Numba kernels.

``code`` selects the generator f by the names of ``_codes`` (the table in
``fastppo.regularizers``); ``p`` is π(a|s), ``q`` is π_ref(a|s) > 0. The α-divergence
terms are written so that they stay accurate as α → 0 or 1 and for tiny p or q (the
forms and their error bound: ``fastppo.regularizers.AlphaDivergence``).
``divergence_terms`` evaluates the four terms on arrays, for tests.
Mirrors kernels/cython/_divergence.pxi.
"""
import math

from numba import njit

from ._codes import ALPHA, CHI_SQUARE, FORWARD_KL, HELLINGER, JENSEN_SHANNON, REVERSE_KL
from ._softmax import flog, flog1p_reduced

DBL_MIN = 2.2250738585072014e-308  # smallest normal double: ratios below it lose digits
SQRT_HALF = 0.7071067811865476  # from here up to 1, log(small/big) is log1p((small − big)/big)
SERIES_RADIUS = 1.0  # |log x|·max(1, |1 − α|) up to which f_α(x) is summed as a series
SERIES_TERMS = 20  # at most: enough for a relative truncation error below 1e-19 inside the radius


@njit(cache=True, inline="always")
def ref_f(code, alpha, p, q):
    """q · f(p / q), with the limit at p = 0."""
    if code == REVERSE_KL:  # p log(p/q)
        if p > 0.0:
            return p * _log_ratio(p, q) if p <= q else -p * _log_ratio(q, p)
        return 0.0
    if code == FORWARD_KL:  # q log(q/p), finite for p down to 5e-324
        if p > 0.0:
            return -q * _log_ratio(p, q) if p <= q else q * _log_ratio(q, p)
        return math.inf
    if code == CHI_SQUARE:
        return (p - q) * (p - q) / q
    if code == HELLINGER:
        d = math.sqrt(p) - math.sqrt(q)
        return d * d
    if code == JENSEN_SHANNON:
        t = p * math.log(p / q) if p > 0.0 else 0.0
        return t - (p + q) * math.log((p + q) / (2.0 * q))
    if code == ALPHA:
        if p > 0.0:
            return _alpha_ref_f(alpha, p, q)
        return q / (1.0 - alpha) if alpha < 1.0 else math.inf
    return 0.0


@njit(cache=True, inline="always")
def p_fprime(code, alpha, p, q):
    """p · f'(p / q), with the limit at p = 0."""
    if code == REVERSE_KL:
        return p * (math.log(p / q) + 1.0) if p > 0.0 else 0.0
    if code == FORWARD_KL:
        return -q
    if code == CHI_SQUARE:
        return 2.0 * p * (p - q) / q
    if code == HELLINGER:
        return p - math.sqrt(p * q)
    if code == JENSEN_SHANNON:
        return p * math.log(2.0 * p / (p + q)) if p > 0.0 else 0.0
    if code == ALPHA:
        if p > 0.0:
            return _alpha_p_fprime(alpha, p, q)
        return 0.0 if alpha < 1.0 else -math.inf
    return 0.0


@njit(cache=True, inline="always")
def fprime(code, alpha, x):
    """f'(x) for x > 0 (the greedy step's bracket)."""
    if code == REVERSE_KL:
        return math.log(x) + 1.0
    if code == FORWARD_KL:
        return -1.0 / x
    if code == CHI_SQUARE:
        return 2.0 * (x - 1.0)
    if code == HELLINGER:
        return 1.0 - 1.0 / math.sqrt(x)
    if code == JENSEN_SHANNON:
        return math.log(2.0 * x / (x + 1.0))
    if code == ALPHA:
        L = math.log(x)
        return L * _exprel(-alpha * L)
    return 0.0


@njit(cache=True, inline="always")
def fprime_inv(code, alpha, y):
    """(h(y), h'(y)) with h = (f')^{-1} extended by 0 below and +inf above its range."""
    if code == REVERSE_KL:
        h = math.exp(y - 1.0)
        return h, h
    if code == FORWARD_KL:
        if y < 0.0:
            return -1.0 / y, 1.0 / (y * y)
        return math.inf, math.inf
    if code == CHI_SQUARE:
        if y > -2.0:
            return 1.0 + 0.5 * y, 0.5
        return 0.0, 0.0
    if code == HELLINGER:
        if y < 1.0:
            t = 1.0 / (1.0 - y)
            return t * t, 2.0 * t * t * t
        return math.inf, math.inf
    if code == JENSEN_SHANNON:
        if y < math.log(2.0):
            e = math.exp(y)
            return e / (2.0 - e), 2.0 * e / ((2.0 - e) * (2.0 - e))
        return math.inf, math.inf
    if code == ALPHA:
        u = -alpha * y  # h = (1 + u)^{-1/α} = exp(−log1p(u)/α): no cancellation as α → 0
        if u > -1.0:
            h = math.exp(-math.log1p(u) / alpha)
            return h, h / (1.0 + u)
        if alpha > 0.0:
            return math.inf, math.inf
        return 0.0, 0.0
    return 0.0, 0.0


@njit(cache=True, inline="always")
def fprime_inv_tail(code, alpha, log_neg_y):
    """h(y) = (f')^{-1}(y) for y = −exp(log_neg_y) below the double range (|y| > 1e308):
    its asymptote, −1/y (forward KL), 1/y² (Hellinger), (−αy)^{−1/α} (α > 0), else 0."""
    if code == FORWARD_KL:
        return math.exp(-log_neg_y)
    if code == HELLINGER:
        return math.exp(-2.0 * log_neg_y)
    if code == ALPHA and alpha > 0.0:
        return math.exp(-(math.log(alpha) + log_neg_y) / alpha)
    return 0.0


# ------------------------------------------------------------ α-divergence helpers
@njit(cache=True)
def _exprel(z):
    """(e^z − 1)/z, 1 at z = 0."""
    return math.expm1(z) / z if z != 0.0 else 1.0


@njit(cache=True)
def _log_ratio(small, big):
    """log(small/big) ≤ 0 for 0 < small ≤ big, to a few ulps (log1p near 1: small − big
    is exact there). The polynomial log of ``_softmax``: no libm call per pair."""
    r = small / big
    if r >= SQRT_HALF:
        return flog1p_reduced((small - big) / big)
    if r >= DBL_MIN:
        return flog(r)
    return flog(small) - flog(big)


@njit(cache=True)
def _power_mean(alpha, p, q):
    """p^{1−α} q^α = p (q/p)^α, without overflow where it is finite (p, q > 0)."""
    r = q / p
    if DBL_MIN <= r < math.inf:
        g = r ** alpha
        if g < math.inf:
            return p * g
        h = r ** (0.5 * alpha)  # (q/p)^α overflows: p (q/p)^{α/2} (q/p)^{α/2} may not
        g = (p * h) * h
        if math.isfinite(g):
            return g
    h = p ** (0.5 * (1.0 - alpha))
    g = (h * q ** alpha) * h
    if math.isfinite(g) and g > 0.0:
        return g
    return math.exp((1.0 - alpha) * math.log(p) + alpha * math.log(q))


@njit(cache=True)
def _alpha_ref_f(alpha, p, q):
    """q f_α(p/q) for p > 0, as big · f_a(small/big) (f_α(x) = x f_{1−α}(1/x)), so that
    x = small/big ≤ 1 and L = log x ≤ 0; f_a(e^L) = L (e^{bL} E(aL) − E(bL)),
    E(z) = (e^z − 1)/z, b = 1 − a, summed as a series near L = 0."""
    if p <= q:
        small, big, a, b = p, q, alpha, 1.0 - alpha
    else:
        small, big, a, b = q, p, 1.0 - alpha, alpha
    L = _log_ratio(small, big)
    if abs(L) * max(1.0, abs(b)) <= SERIES_RADIUS:
        # f_a(e^L) = Σ_{k≥0} (1 + b + ... + b^k) L^{k+2}/(k+2)!
        t = 0.5 * L * L
        s = t
        h = 1.0
        bk = 1.0
        for k in range(1, SERIES_TERMS + 1):
            t = t * L / (k + 2)
            bk = bk * b
            h = h + bk
            s = s + t * h
            if abs(t) * (abs(h) + abs(bk)) <= 1e-17 * abs(s):  # bounds the rest / 2
                break
        return big * s
    if b < 0.0:  # e^{bL} ≥ 1 may overflow: big e^{bL} = p^{1−α} q^α
        return _power_mean(alpha, p, q) * (L * (_exprel(a * L) - _exprel(-b * L)))
    if a < 0.0:  # e^{bL} E(aL) = e^L E(−aL) keeps every exponent ≤ 0
        return big * (L * ((small / big) * _exprel(-a * L) - _exprel(b * L)))
    return big * (L * (math.exp(b * L) * _exprel(a * L) - _exprel(b * L)))


@njit(cache=True)
def _alpha_p_fprime(alpha, p, q):
    """p f'_α(p/q) = p L E(−αL), L = log(p/q); (p − p^{1−α} q^α)/α once −αL > 1."""
    L = _log_ratio(p, q) if p <= q else -_log_ratio(q, p)
    z = -alpha * L
    if z <= 1.0:
        return p * L * _exprel(z)
    return (p - _power_mean(alpha, p, q)) / alpha


@njit(cache=True)
def divergence_terms(code, alpha, p, q, y, ref_f_out, p_fprime_out, h_out, dh_out):
    """ref_f(p[i], q[i]), p_fprime(p[i], q[i]) and fprime_inv(y[i]) over arrays (tests)."""
    for i in range(p.shape[0]):
        ref_f_out[i] = ref_f(code, alpha, p[i], q[i])
        p_fprime_out[i] = p_fprime(code, alpha, p[i], q[i])
    for i in range(y.shape[0]):
        h_out[i], dh_out[i] = fprime_inv(code, alpha, y[i])
