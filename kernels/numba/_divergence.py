"""Per-pair f-divergence terms shared by the Numba kernels.

``code`` selects the generator f (see ``fastppo.regularizers``): 0 none,
1 reverse KL, 2 forward KL, 3 chi-square, 4 squared Hellinger,
5 Jensen-Shannon, 6 alpha. ``p`` is π(a|s), ``q`` is π_ref(a|s) > 0.
Mirrors kernels/cython/_divergence.pxd.
"""
import math

from numba import njit

NONE, REVERSE_KL, FORWARD_KL, CHI_SQUARE, HELLINGER, JENSEN_SHANNON, ALPHA = range(7)


@njit(cache=True, inline="always")
def ref_f(code, alpha, p, q):
    """q · f(p / q), with the limit at p = 0."""
    if code == REVERSE_KL:
        return p * math.log(p / q) if p > 0.0 else 0.0
    if code == FORWARD_KL:
        return q * math.log(q / p) if p > 0.0 else math.inf
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
            return (p ** (1.0 - alpha) * q ** alpha - (1.0 - alpha) * p - alpha * q) / (alpha * (alpha - 1.0))
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
            return (p - p ** (1.0 - alpha) * q ** alpha) / alpha
        return 0.0 if alpha < 1.0 else -math.inf
    return 0.0


@njit(cache=True, inline="always")
def fprime_one(code):
    """f'(1): shifts the bracket of the normaliser ν in the greedy step."""
    if code == REVERSE_KL:
        return 1.0
    if code == FORWARD_KL:
        return -1.0
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
        t = 1.0 - alpha * y
        if t > 0.0:
            h = t ** (-1.0 / alpha)
            return h, h / t
        if alpha > 0.0:
            return math.inf, math.inf
        return 0.0, 0.0
    return 0.0, 0.0
