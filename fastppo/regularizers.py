r"""f-divergence regularizers.

At a state s the regularizer is τ · D_f(π(·|s) ‖ π_ref(·|s)) with

    D_f(p ‖ q) = Σ_a q_a f(p_a / q_a),    f convex, f(1) = 0.

====================  ====================================  ==================
class                 f(x)                                  D_f equals
====================  ====================================  ==================
``ReverseKL``         x log x                               KL(π ‖ π_ref)
``ForwardKL``         −log x                                KL(π_ref ‖ π)
``ChiSquare``         (x − 1)²                              χ²(π ‖ π_ref)
``Hellinger``         (√x − 1)²                             H²
``JensenShannon``     x log x − (x+1) log((x+1)/2)          2·JS
``AlphaDivergence``   (x^{1−α} − (1−α)x − α)/(α(α−1))       α-divergence
====================  ====================================  ==================

Each regularizer carries ``tau`` (τ ≥ 0), ``ref`` (π_ref, uniform over each
state's actions when None) and an integer ``code`` that selects f inside the
kernels, named in ``fastppo._codes`` (the kernels keep the same table:
``kernels/numba/_codes.py``, ``kernels/cython/_codes.pxi``). The NumPy forms below
are the readable spec of the per-pair terms those kernels compute
(``kernels/numba/_divergence.py``, ``kernels/cython/_divergence.pxi``):

    ref_f(p, q)          = q f(p/q)      (summed over a state: D_f)
    p_fprime(p, q)       = p f'(p/q)     (the gradient term; finite at p = 0 where the math is)
    fprime_inv(y)        = (f')^{-1}(y)  (the greedy step), and its derivative
    fprime_inv_deriv(y)  = 1 / f''((f')^{-1}(y))
    fprime_inv_tail(L)   = (f')^{-1}(−e^L), its asymptote for |y| beyond the double range
"""
import numbers

import numpy as np
from scipy.special import exprel, rel_entr, xlogy

from . import _codes

__all__ = ["Regularizer", "ReverseKL", "ForwardKL", "ChiSquare", "Hellinger",
           "JensenShannon", "AlphaDivergence"]


class Regularizer:
    """Base class: τ · D_f(π ‖ π_ref) for a generator f.

    Parameters
    ----------
    tau : float
        Weight τ ≥ 0 (τ = 0 gives the plain MDP).
    ref : array_like of shape (n_pairs,) or (n_states, n_actions), optional
        Reference policy π_ref with full support; uniform over each state's
        actions when None. Checked against the MDP when first used.
    """

    code = _codes.NONE
    name = "none"

    def __init__(self, tau, ref=None):
        if isinstance(tau, bool) or not isinstance(tau, numbers.Real):
            raise TypeError(f"tau must be a real number, got {type(tau).__name__}")
        if not np.isfinite(tau) or tau < 0:
            raise ValueError(f"tau must be finite and >= 0, got {tau}")
        self.tau = float(tau)
        self.ref = ref
        self.alpha = 0.0

    # generator and derivative on ratios x = p / q (vectorised)
    def f(self, x):
        raise NotImplementedError

    def fprime(self, x):
        raise NotImplementedError

    def fprime_inv(self, y):
        """(f')^{-1}(y), extended by 0 below the range of f' and +inf above it."""
        raise NotImplementedError

    def fprime_inv_deriv(self, y):
        """d/dy (f')^{-1}(y) = 1 / f''((f')^{-1}(y)), 0 below the range of f' and +inf above it."""
        raise NotImplementedError

    def fprime_inv_tail(self, log_neg_y):
        """(f')^{-1}(y) for y = −exp(log_neg_y) below the double range (|y| > 1e308): its
        asymptote (0 for the generators whose (f')^{-1} vanishes there first)."""
        return np.zeros(np.shape(log_neg_y))

    # per-pair terms (vectorised, exact limits at p = 0)
    def ref_f(self, p, q):
        """q · f(p/q)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return q * self.f(p / q)

    def p_fprime(self, p, q):
        """p · f'(p/q)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return p * self.fprime(p / q)

    def reference_policy(self, mdp):
        """π_ref as a flat (n_pairs,) array, checked: full support, sums to 1 per state."""
        from ._validation import check_policy

        if self.ref is None:
            return mdp.uniform_policy()
        ref = check_policy(mdp, self.ref, "ref")
        if (ref == 0).any():
            k = int(np.argmax(ref == 0))
            raise ValueError(f"ref must have full support: {mdp.pair_name(k)} has probability 0")
        return ref

    def __repr__(self):
        extra = f", alpha={self.alpha}" if self.code == AlphaDivergence.code else ""
        ref = "uniform" if self.ref is None else "given"
        return f"{type(self).__name__}(tau={self.tau}{extra}, ref={ref})"


class ReverseKL(Regularizer):
    """τ · KL(π ‖ π_ref), f(x) = x log x (the usual RLHF penalty)."""

    code, name = _codes.REVERSE_KL, "reverse-kl"

    def f(self, x):
        return xlogy(x, x)

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return np.log(x) + 1.0

    def ref_f(self, p, q):
        """p log(p/q) (0 at p = 0), to a few ulps also where p ≈ q."""
        p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
        with np.errstate(divide="ignore", invalid="ignore"):  # p = 0: selected away
            L = _log_ratio(np.minimum(p, q), np.maximum(p, q))
            return np.where(p > 0, np.where(p <= q, p * L, -p * L), 0.0)

    def p_fprime(self, p, q):
        return rel_entr(p, q) + p

    def fprime_inv(self, y):
        with np.errstate(over="ignore"):
            return np.exp(y - 1.0)

    def fprime_inv_deriv(self, y):
        return self.fprime_inv(y)


class ForwardKL(Regularizer):
    """τ · KL(π_ref ‖ π), f(x) = −log x."""

    code, name = _codes.FORWARD_KL, "forward-kl"

    def f(self, x):
        with np.errstate(divide="ignore"):
            return -np.log(x)

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return -1.0 / x

    def ref_f(self, p, q):
        """q log(q/p), finite for p down to 5e-324 (q/p itself may overflow)."""
        p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
        L = _log_ratio(np.minimum(p, q), np.maximum(p, q))
        return np.where(p > 0, np.where(p <= q, -q * L, q * L), np.inf)

    def p_fprime(self, p, q):
        return -np.asarray(q, dtype=np.float64) + 0.0 * p

    def fprime_inv(self, y):
        with np.errstate(divide="ignore"):
            return np.where(y < 0, -1.0 / np.minimum(y, -0.0), np.inf)

    def fprime_inv_deriv(self, y):
        with np.errstate(divide="ignore"):
            return np.where(y < 0, 1.0 / np.square(np.minimum(y, -0.0)), np.inf)

    def fprime_inv_tail(self, log_neg_y):
        return np.exp(-np.asarray(log_neg_y, dtype=np.float64))


class ChiSquare(Regularizer):
    """τ · χ²(π ‖ π_ref), f(x) = (x − 1)²."""

    code, name = _codes.CHI_SQUARE, "chi2"

    def f(self, x):
        return (x - 1.0) ** 2

    def fprime(self, x):
        return 2.0 * (x - 1.0)

    def fprime_inv(self, y):
        return np.maximum(1.0 + 0.5 * y, 0.0)

    def fprime_inv_deriv(self, y):
        return np.where(np.asarray(y) > -2.0, 0.5, 0.0)


class Hellinger(Regularizer):
    """τ · H²(π, π_ref), f(x) = (√x − 1)²."""

    code, name = _codes.HELLINGER, "hellinger"

    def f(self, x):
        return (np.sqrt(x) - 1.0) ** 2

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return 1.0 - 1.0 / np.sqrt(x)

    def p_fprime(self, p, q):
        return p - np.sqrt(p * q)

    def fprime_inv(self, y):
        with np.errstate(divide="ignore"):
            return np.where(y < 1, 1.0 / (1.0 - np.minimum(y, 1.0)) ** 2, np.inf)

    def fprime_inv_deriv(self, y):
        with np.errstate(divide="ignore"):
            return np.where(y < 1, 2.0 / (1.0 - np.minimum(y, 1.0)) ** 3, np.inf)

    def fprime_inv_tail(self, log_neg_y):
        return np.exp(-2.0 * np.asarray(log_neg_y, dtype=np.float64))


class JensenShannon(Regularizer):
    """τ · 2 JS(π, π_ref), f(x) = x log x − (x + 1) log((x + 1)/2)."""

    code, name = _codes.JENSEN_SHANNON, "js"

    def f(self, x):
        return xlogy(x, x) - (x + 1.0) * np.log((x + 1.0) / 2.0)

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return np.log(2.0 * x / (x + 1.0))

    def ref_f(self, p, q):
        return rel_entr(p, q) - rel_entr(p + q, 2.0 * q)

    def p_fprime(self, p, q):
        return rel_entr(p, 0.5 * (p + q))

    def fprime_inv(self, y):
        e = np.exp(np.minimum(y, np.log(2.0)))
        with np.errstate(divide="ignore"):
            return np.where(y < np.log(2.0), e / (2.0 - e), np.inf)

    def fprime_inv_deriv(self, y):
        e = np.exp(np.minimum(y, np.log(2.0)))
        with np.errstate(divide="ignore"):
            return np.where(y < np.log(2.0), 2.0 * e / ((2.0 - e) * (2.0 - e)), np.inf)


class AlphaDivergence(Regularizer):
    r"""τ · D_α(π ‖ π_ref), f(x) = (x^{1−α} − (1−α)x − α) / (α(α−1)), α ∉ {0, 1}.

    With this f (x^{1−α}, not x^α) α → 0 recovers reverse KL and α → 1 forward KL;
    α = 1/2 gives f = 2(√x − 1)², twice the :class:`Hellinger` divergence
    Σ(√π − √π_ref)² (4·H² in the ½-normalised convention).

    Parameters
    ----------
    tau : float
        Weight τ ≥ 0.
    alpha : float
        α, finite and not 0 or 1.
    ref : array_like of shape (n_pairs,) or (n_states, n_actions), optional
        Reference policy with full support; uniform when None.

    Notes
    -----
    The formula cancels catastrophically as α → 0 or 1 (x^{1−α} − (1−α)x − α is
    ~α times smaller than its terms) and near x = 1, so every per-pair term is
    computed in a form without cancellation, here and in both kernels alike:

    - ``ref_f``: with f_α(x) = x f_{1−α}(1/x), q f_α(p/q) = B f_a(x) where B is the
      larger of p and q, x ≤ 1 the ratio of the smaller to the larger, a = α or
      1 − α and b = 1 − a. With L = log x ≤ 0 (log1p near x = 1) and
      E(z) = (e^z − 1)/z (``scipy.special.exprel``), f_a(e^L) is the second divided
      difference of t ↦ e^{tL} at 0, b, 1:

          f_a(e^L) = L (e^{bL} E(aL) − E(bL)) = Σ_{k≥0} (1 + b + … + b^k) L^{k+2}/(k+2)!,

      summed as the series (≤ 20 terms) where |L|·max(1, |b|) ≤ 1, else in closed
      form with every exponent ≤ 0 (the product B e^{bL} = p^{1−α} q^α when b < 0,
      formed so that it does not overflow where it is finite).
    - ``p_fprime``: p f'(p/q) = p L E(−αL), L = log(p/q); (p − p^{1−α} q^α)/α once
      −αL > 1 (no cancellation there).
    - ``fprime_inv``: (f')^{-1}(y) = exp(−log1p(−αy)/α), derivative (f')^{-1}(y)/(1 − αy).

    Error bound (checked against 50-digit mpmath values in tests/test_regularizers.py
    for α ∈ {1e-20, 1e-16, 1e-8, 1e-4, 0.5, 1 − 1e-14, 2, −1}): ``ref_f`` and
    ``p_fprime`` have relative error ≤ 5e-15 (measured ≤ 1e-15) while p/q is within
    [1e-300, 1e300]; beyond that (p or π_ref down to subnormal) ≤ 1e-13, the extra
    being the rounding of 1 − α times |log(p/q)|; results below the normal range
    (< 2.2e-308) to 1e-320 absolute. (f')^{-1} and its derivative: relative error
    ≤ 4e-16·(4 + |log (f')^{-1}(y)|), the conditioning of exp. For α far outside
    [−1, 2] the closed form loses about log10 max(|α|, |1 − α|) digits more.
    """

    code, name = _codes.ALPHA, "alpha"

    def __init__(self, tau, alpha, ref=None):
        super().__init__(tau, ref)
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
            raise TypeError(f"alpha must be a real number, got {type(alpha).__name__}")
        if not np.isfinite(alpha):
            raise ValueError(f"alpha must be finite, got {alpha}")
        if alpha in (0, 1):
            raise ValueError("alpha must not be 0 or 1 (the limits are ReverseKL at 0 and ForwardKL at 1)")
        self.alpha = float(alpha)

    def f(self, x):
        return self.ref_f(x, np.ones_like(np.asarray(x, dtype=np.float64)))

    def fprime(self, x):
        a = self.alpha
        x = np.asarray(x, dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            L = np.log(x)
            return np.where(x > 0, L * exprel(-a * L), -np.inf if a > 0 else 1.0 / a)

    def ref_f(self, p, q):
        a = self.alpha
        p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
        at_zero = q / (1.0 - a) if a < 1.0 else np.full(q.shape, np.inf)
        return np.where(p > 0, _alpha_ref_f(a, np.where(p > 0, p, q), q), at_zero)

    def p_fprime(self, p, q):
        a = self.alpha
        p, q = np.broadcast_arrays(np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64))
        return np.where(p > 0, _alpha_p_fprime(a, np.where(p > 0, p, q), q), 0.0 if a < 1.0 else -np.inf)

    def fprime_inv(self, y):
        return self._fprime_inv(y)[0]

    def fprime_inv_deriv(self, y):
        return self._fprime_inv(y)[1]

    def fprime_inv_tail(self, log_neg_y):
        a = self.alpha
        log_neg_y = np.asarray(log_neg_y, dtype=np.float64)
        if a <= 0:
            return np.zeros(log_neg_y.shape)
        return np.exp(-(np.log(a) + log_neg_y) / a)

    def _fprime_inv(self, y):
        a = self.alpha
        u = -a * np.asarray(y, dtype=np.float64)
        inside = u > -1.0
        with np.errstate(all="ignore"):
            h = np.exp(-np.log1p(u) / a)
            dh = h / (1.0 + u)
        outside = np.inf if a > 0 else 0.0
        return np.where(inside, h, outside), np.where(inside, dh, outside)


# ------------------------------------------------ α-divergence terms (see AlphaDivergence)
_DBL_MIN = np.finfo(np.float64).tiny  # smallest normal double: ratios below it lose digits
SERIES_RADIUS = 1.0  # |log x|·max(1, |1 − α|) up to which f_α(x) is summed as a series
SERIES_TERMS = 20  # relative truncation error below 1e-19 inside the radius


def _log_ratio(small, big):
    """log(small/big) ≤ 0 for 0 < small ≤ big, to a few ulps (log1p near 1)."""
    with np.errstate(all="ignore"):
        r = small / big
        return np.where(r >= 0.5, np.log1p((small - big) / big),
                        np.where(r >= _DBL_MIN, np.log(r), np.log(small) - np.log(big)))


def _power_mean(alpha, p, q):
    """p^{1−α} q^α = p (q/p)^α, without overflow where it is finite (p, q > 0)."""
    with np.errstate(all="ignore"):
        r = q / p
        usable = (r >= _DBL_MIN) & (r < np.inf)
        t = r ** alpha
        h = r ** (0.5 * alpha)
        split = (p * h) * h  # (q/p)^α overflows: p (q/p)^{α/2} (q/p)^{α/2} may not
        h = p ** (0.5 * (1.0 - alpha))
        powers = (h * q ** alpha) * h
        logs = np.exp((1.0 - alpha) * np.log(p) + alpha * np.log(q))
    return np.where(usable & (t < np.inf), p * t, np.where(
        usable & np.isfinite(split), split, np.where(np.isfinite(powers) & (powers > 0), powers, logs)))


def _alpha_ref_f(alpha, p, q):
    """q f_α(p/q) for p, q > 0: B f_a(x) with x = min/max ≤ 1 (see AlphaDivergence)."""
    lower = p <= q
    small, big = np.where(lower, p, q), np.where(lower, q, p)
    a, b = np.where(lower, alpha, 1.0 - alpha), np.where(lower, 1.0 - alpha, alpha)
    L = _log_ratio(small, big)
    t = 0.5 * L * L  # Σ_{k≥0} (1 + b + ... + b^k) L^{k+2}/(k+2)!
    s, h, bk = t, np.ones_like(L), np.ones_like(L)
    for k in range(1, SERIES_TERMS + 1):
        t = t * L / (k + 2)
        bk = bk * b
        h = h + bk
        s = s + t * h
    with np.errstate(all="ignore"):
        closed = np.where(
            b < 0, _power_mean(alpha, p, q) * (L * (exprel(a * L) - exprel(-b * L))),
            np.where(a < 0, big * (L * ((small / big) * exprel(-a * L) - exprel(b * L))),
                     big * (L * (np.exp(b * L) * exprel(a * L) - exprel(b * L)))))
    return np.where(np.abs(L) * np.maximum(1.0, np.abs(b)) <= SERIES_RADIUS, big * s, closed)


def _alpha_p_fprime(alpha, p, q):
    """p f'_α(p/q) for p, q > 0: p L E(−αL); (p − p^{1−α} q^α)/α once −αL > 1."""
    lower = p <= q
    L = _log_ratio(np.minimum(p, q), np.maximum(p, q))
    L = np.where(lower, L, -L)
    z = -alpha * L
    with np.errstate(all="ignore"):
        return np.where(z <= 1.0, p * L * exprel(z), (p - _power_mean(alpha, p, q)) / alpha)


REGULARIZERS = {cls.name: cls for cls in
                (ReverseKL, ForwardKL, ChiSquare, Hellinger, JensenShannon, AlphaDivergence)}
BY_CODE = {cls.code: cls for cls in REGULARIZERS.values()}


def from_code(code, alpha):
    """The regularizer (τ = 1) whose kernel code is ``code`` (``_codes.NONE``: None)."""
    if code == _codes.NONE:
        return None
    cls = BY_CODE[code]
    return cls(1.0, alpha) if cls is AlphaDivergence else cls(1.0)
