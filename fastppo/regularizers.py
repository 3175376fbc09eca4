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
compiled kernels. The NumPy forms below (``ref_f``, ``p_fprime``) are the
readable spec of the per-pair terms those kernels compute:

    ref_f(p, q)    = q f(p/q)      (summed over a state: D_f)
    p_fprime(p, q) = p f'(p/q)     (the gradient term; finite at p = 0 where the math is)
"""
import numbers

import numpy as np

__all__ = ["Regularizer", "ReverseKL", "ForwardKL", "ChiSquare", "Hellinger",
           "JensenShannon", "AlphaDivergence"]


def _xlogy(x, y):
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(x > 0, x * np.log(np.where(x > 0, y, 1.0)), 0.0)


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

    code = 0
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

    code, name = 1, "reverse-kl"

    def f(self, x):
        return _xlogy(x, x)

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return np.log(x) + 1.0

    def ref_f(self, p, q):
        return _xlogy(p, p / q)

    def p_fprime(self, p, q):
        return _xlogy(p, p / q) + p

    def fprime_inv(self, y):
        return np.exp(y - 1.0)


class ForwardKL(Regularizer):
    """τ · KL(π_ref ‖ π), f(x) = −log x."""

    code, name = 2, "forward-kl"

    def f(self, x):
        with np.errstate(divide="ignore"):
            return -np.log(x)

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return -1.0 / x

    def p_fprime(self, p, q):
        return -np.asarray(q, dtype=np.float64) + 0.0 * p

    def fprime_inv(self, y):
        with np.errstate(divide="ignore"):
            return np.where(y < 0, -1.0 / np.minimum(y, -0.0), np.inf)


class ChiSquare(Regularizer):
    """τ · χ²(π ‖ π_ref), f(x) = (x − 1)²."""

    code, name = 3, "chi2"

    def f(self, x):
        return (x - 1.0) ** 2

    def fprime(self, x):
        return 2.0 * (x - 1.0)

    def fprime_inv(self, y):
        return np.maximum(1.0 + 0.5 * y, 0.0)


class Hellinger(Regularizer):
    """τ · H²(π, π_ref), f(x) = (√x − 1)²."""

    code, name = 4, "hellinger"

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


class JensenShannon(Regularizer):
    """τ · 2 JS(π, π_ref), f(x) = x log x − (x + 1) log((x + 1)/2)."""

    code, name = 5, "js"

    def f(self, x):
        return _xlogy(x, x) - (x + 1.0) * np.log((x + 1.0) / 2.0)

    def fprime(self, x):
        with np.errstate(divide="ignore"):
            return np.log(2.0 * x / (x + 1.0))

    def ref_f(self, p, q):
        return _xlogy(p, p / q) - (p + q) * np.log((p + q) / (2.0 * q))

    def p_fprime(self, p, q):
        return _xlogy(p, 2.0 * p / (p + q))

    def fprime_inv(self, y):
        e = np.exp(np.minimum(y, np.log(2.0)))
        with np.errstate(divide="ignore"):
            return np.where(y < np.log(2.0), e / (2.0 - e), np.inf)


class AlphaDivergence(Regularizer):
    """τ · D_α(π ‖ π_ref), f(x) = (x^{1−α} − (1−α)x − α) / (α(α−1)), α ∉ {0, 1}.

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
    """

    code, name = 6, "alpha"

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
        a = self.alpha
        with np.errstate(divide="ignore"):
            return (np.power(x, 1.0 - a) - (1.0 - a) * x - a) / (a * (a - 1.0))

    def fprime(self, x):
        a = self.alpha
        with np.errstate(divide="ignore"):
            return (1.0 - np.power(x, -a)) / a

    def p_fprime(self, p, q):
        a = self.alpha
        with np.errstate(divide="ignore"):
            return (p - np.power(p, 1.0 - a) * np.power(q, a)) / a

    def fprime_inv(self, y):
        a = self.alpha
        t = 1.0 - a * y
        with np.errstate(divide="ignore", invalid="ignore"):
            x = np.power(np.maximum(t, 0.0), -1.0 / a)
        return np.where(t > 0, x, np.inf if a > 0 else 0.0)

REGULARIZERS = {cls.name: cls for cls in
                (ReverseKL, ForwardKL, ChiSquare, Hellinger, JensenShannon, AlphaDivergence)}
BY_CODE = {cls.code: cls for cls in REGULARIZERS.values()}


def from_code(code, alpha):
    """The regularizer (τ = 1) whose kernel code is ``code`` (0: None)."""
    if code == 0:
        return None
    cls = BY_CODE[code]
    return cls(1.0, alpha) if cls is AlphaDivergence else cls(1.0)
