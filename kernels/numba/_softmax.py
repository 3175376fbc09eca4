"""The segment softmax / log-sum-exp of the Numba kernels, and the exp and log it runs on.

One place computes π(·|s) = softmax θ(s, ·) for every kernel (``segment_softmax``,
``ppo_update``, ``ppo_minibatches``): :func:`softmax_lanes` (:func:`max_lanes`, then
:func:`exp_lanes`, then π = e·rz; ppo_update calls the two parts and fuses the last
product into its own pass), on a block of states laid out structure-of-arrays — ``x[a, l]`` is action ``a`` of the block's ``l``-th state — so
that the loops run across states, which LLVM vectorises (the reductions over one state's
actions are serial chains; across states they are independent lanes). Rows beyond a
state's action count, and lanes beyond the last state, hold ``PAD_LOGIT`` = −inf, which
the softmax maps to π = 0 exactly without changing the lane's max or sum, so a state of
any action count fits (ragged MDPs only pad more). :func:`softmax_states` runs it over a
range of states (:func:`load_lanes` / :func:`store_lanes` move values between the pair
order and the blocks; a block need not be full: its first ``n_lanes`` lanes are used).

The exp and log are polynomials in double arithmetic with explicit fused multiply-adds
(``fma``: one rounding, the same in every backend) and no fast-math (Numba's default
``fastmath=False``: LLVM neither contracts a·b + c into an fma nor reassociates; setup.py
gives GCC ``-ffp-contract=off`` and no ``-ffast-math``), so the Cython twin,
which performs the very same operations in the same order, agrees bit for bit; libm's
scalar calls do not vectorise here (llvmlite has no SVML).

- :func:`fexp`: Cody–Waite reduction x = n ln2 + r, |r| ≤ ln2/2 (ln2 split into a 32-bit
  head, so n·LN2_HI is exact), e^r = 1 + (r + r² P(r)) with P of degree 9 fitted to
  (e^r − 1 − r)/r² (Chebyshev, P(0) = 1/2; truncation error ≤ 3.4e-17 relative) and
  evaluated by Estrin's scheme, then e^x = 2^n (1 + u), u = e^r − 1, as
  fma(2^a, u, 2^a)·2^b with 2^n = 2^a 2^b exact powers of two (one rounding, in the fma,
  for normal results; below the normal range a second one in the last product). Relative
  error ≤ 2.5e-16 (about 1.1 ulp; 1.15 ulp measured) for normal results;
  subnormal results are within one subnormal step (4.9e-324) of e^x; e^x < 2^-1075
  (x < −745.13) is exactly 0, x > 709.78 gives inf, NaN stays NaN. :func:`fexp_neg` is the
  same function for x ≤ 0 (the softmax's arguments) with one power of two fewer.
- :func:`fexpm1_step`: e^d − 1 for |d| ≤ STEP_MAX = 1/4 (a logit's step inside
  ``ppo_update``) without reduction: d + d² S(d), S of degree 8 fitted to (e^d − 1 − d)/d²
  (Chebyshev, S(0) = 1/2; the fit's error on e^d − 1 is ≤ 2.9e-17·e^d), by Horner in two
  halves joined by d⁴; π e^δ = fma(π, fexpm1_step(δ, δ²), π) has relative error ≤ 2e-16
  (1.46e-16, 0.89 ulp, measured).
- :func:`fexpm1`: e^x − 1 for x ≤ 1 from the same reduction, 2^n (e^r − 1) + (2^n − 1),
  without the cancellation of e^x − 1 near 0: relative error ≤ 5e-16 on [−40, 1]; −1
  below −40 (where e^x < 2^-57).
- :func:`fexpm1_or_exp`: :func:`fexpm1` or :func:`fexp`, chosen per element, from one
  reduction; bit for bit either one (so their bounds hold).
- :func:`flog`: fdlibm's log (also musl's): x = 2^k (1 + f), √2/2 ≤ 1 + f < √2,
  s = f/(2 + f), log(1 + f) = f − f²/2 + s (f²/2 + R(s²)), R of degree 7 (fdlibm's Lg1..Lg7,
  |error| < 2^-58.45): error < 1 ulp for every positive double (subnormals are rescaled by
  2^54 first); log 0 = −inf, log inf = inf, NaN for x < 0 or NaN. :func:`flog_positive`
  is the same for 0 < x < inf without those edge cases.

Mirrors kernels/cython/_softmax.pxi.
"""
import math

import numpy as np
from llvmlite import ir
from numba import njit, types
from numba.extending import intrinsic

LANES = 32  # states per block: rows long enough for vectorised loops, blocks within L1
PAD_LOGIT = -math.inf  # logit of the padding rows and lanes: π = 0 exactly there

DBL_MIN = 2.2250738585072014e-308  # the smallest normal double
TWO54 = 18014398509481984.0  # 2^54: brings a subnormal into the normal range
TWO_M64 = 5.421010862427522e-20  # 2^-64
LOG2E = 1.4426950408889634
LN2_HI = 6.93147180369123816490e-01  # ln 2 to 32 bits: n·LN2_HI is exact for |n| < 2^21
LN2_LO = 1.90821492927058770002e-10  # ln 2 − LN2_HI
LN2 = 0.6931471805599453  # ln 2, rounded
SHIFTER = 6755399441055744.0  # 1.5·2^52: x + SHIFTER rounds x to an integer in the low bits
EXP_MIN = -746.0  # e^x rounds to 0 below −745.13
EXP_MAX = 710.0  # e^x overflows above 709.78
EXPM1_MIN = -40.0  # e^x − 1 rounds to −1 below −37.4
# P(r) ≈ (e^r − 1 − r)/r² on [−ln2/2, ln2/2], P0 + P1 r + ... + P9 r^9
P0, P1, P2, P3, P4 = (0.5, 0.16666666666666666, 0.041666666666651364, 0.008333333333332157,
                      0.0013888888905871347)
P5, P6, P7, P8, P9 = (0.0001984126985433077, 2.4801536409064087e-05, 2.7557280082684685e-06,
                      2.761379555451986e-07, 2.509554598170022e-08)
# S(d) ≈ (e^d − 1 − d)/d² on [−STEP_MAX, STEP_MAX], S0 + S1 d + ... + S8 d^8 (Chebyshev)
STEP_MAX = 0.25  # the largest logit step |δ| that fexpm1_step takes
S0, S1, S2 = 0.5, 0.16666666666665322, 0.04166666666666555
S3, S4, S5 = 0.008333333336202819, 0.0013888888891279828, 0.00019841253314374944
S6, S7, S8 = 2.4801573530729414e-05, 2.7592569930959876e-06, 2.758669229104366e-07
# fdlibm e_log.c: R(z) = LG1 z + LG2 z² + ... + LG7 z^7
LG1, LG2, LG3, LG4 = (6.666666666666735130e-01, 3.999999999940941908e-01,
                      2.857142874366239149e-01, 2.222219843214978396e-01)
LG5, LG6, LG7 = 1.818357216161805012e-01, 1.531383769920937332e-01, 1.479819860511658591e-01

# fexp_neg's and fexpm1_step's constants as an array k (see fexp_neg): EXP_MIN, LOG2E, SHIFTER,
# −LN2_HI, −LN2_LO, P0..P9, TWO_M64, then S0..S8
EXP_CONSTANTS = np.array([EXP_MIN, LOG2E, SHIFTER, -LN2_HI, -LN2_LO, P0, P1, P2, P3, P4, P5, P6,
                          P7, P8, P9, TWO_M64, S0, S1, S2, S3, S4, S5, S6, S7, S8])

U52 = np.uint64(52)
EXP_BIAS = np.uint64(1023)
EXP_BIAS_64 = np.uint64(1023 + 64)
MANTISSA = np.uint64(0x000FFFFFFFFFFFFF)
SQRT_HALF_HI = np.uint64(0x3FE6A09E00000000)  # √2/2 with its low word cleared, as fdlibm
LOG_OFFSET = np.uint64(0x3FF0000000000000 - 0x3FE6A09E00000000)
TWO52_BITS = np.uint64(0x4330000000000000)  # the bits of 2^52
TWO52_BIAS = 4503599627370496.0 + 1023.0  # 2^52 + the exponent bias


# ------------------------------------------------------------------ bit-level helpers
@intrinsic
def _bits(typingctx, x):
    """The IEEE bits of a double as uint64 (a bitcast, no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.uint64(types.float64), codegen


@intrinsic
def _double(typingctx, u):
    """The double with these IEEE bits."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.DoubleType())
    return types.float64(types.uint64), codegen


@intrinsic
def fma(typingctx, a, b, c):
    """a·b + c with one rounding (llvm.fma: vfmadd where the CPU has FMA, else libm's fma)."""
    def codegen(context, builder, signature, args):
        fnty = ir.FunctionType(ir.DoubleType(), [ir.DoubleType()] * 3)
        try:
            fn = builder.module.get_global("llvm.fma.f64")
        except KeyError:
            fn = ir.Function(builder.module, fnty, name="llvm.fma.f64")
        return builder.call(fn, args)
    return types.float64(types.float64, types.float64, types.float64), codegen


# ------------------------------------------------------------------------ exp and log
@njit(cache=True, inline="always", error_model="numpy")
def _pow2(t, bias):
    """2^{n + bias − 1023} for t = n + SHIFTER (n an integer): n + bias in the exponent
    field (int64 → double conversions do not vectorise on AVX2; this does)."""
    return _double((_bits(t) + bias) << U52)


@njit(cache=True, inline="always", error_model="numpy")
def _expm1_reduced(x):
    """(t, n, e^r − 1) with x = n ln2 + r, |r| ≤ ln2/2, t = n + SHIFTER (|x| ≤ 746).
    Estrin's scheme: the loops are latency-bound, and it halves Horner's chain."""
    t = fma(x, LOG2E, SHIFTER)
    n = t - SHIFTER
    r = fma(n, -LN2_LO, fma(n, -LN2_HI, x))
    r2 = r * r
    r4 = r2 * r2
    p = fma(fma(fma(P7, r, P6), r2, fma(P5, r, P4)), r4,
            fma(fma(P3, r, P2), r2, fma(P1, r, P0)))
    p = fma(fma(P9, r, P8), r4 * r4, p)
    return t, n, fma(r2, p, r)


@njit(cache=True, inline="always", error_model="numpy")
def fexp(x):
    """e^x (error bound: the module docstring)."""
    x = EXP_MIN if x < EXP_MIN else x
    x = EXP_MAX if x > EXP_MAX else x
    t, n, u = _expm1_reduced(x)
    n1 = (n * 0.5 + SHIFTER) - SHIFTER  # 2^n = 2^{n1} 2^{n − n1}, both factors normal
    scale = _pow2(n1 + SHIFTER, EXP_BIAS)
    return fma(scale, u, scale) * _pow2((n - n1) + SHIFTER, EXP_BIAS)


@njit(cache=True, inline="always", error_model="numpy")
def fexp_neg(x, k):
    """e^x for x ≤ 0 or NaN (the softmax's arguments): fexp with one power of two,
    2^n = 2^{n+64}·2^-64 (n ≥ −1077 here). Bit-identical to fexp.

    k: the constants, EXP_CONSTANTS or a copy made at run time (:func:`exp_constants`).
    Same values, same operations; but in a loop over a run-time copy LLVM loads each
    constant with one instruction instead of rematerialising it from the constant pool
    through a 64-bit address (two): about a fifth less time per exp in a Numba loop.
    """
    x = k[0] if x < k[0] else x
    t = fma(x, k[1], k[2])
    n = t - k[2]
    r = fma(n, k[4], fma(n, k[3], x))
    r2 = r * r
    r4 = r2 * r2
    p = fma(fma(fma(k[12], r, k[11]), r2, fma(k[10], r, k[9])), r4,
            fma(fma(k[8], r, k[7]), r2, fma(k[6], r, k[5])))
    p = fma(fma(k[14], r, k[13]), r4 * r4, p)
    u = fma(r2, p, r)
    scale = _pow2(t, EXP_BIAS_64)
    return fma(scale, u, scale) * k[15]


@njit(cache=True, inline="always", error_model="numpy")
def fexpm1_step(d, d2, k):
    """e^d − 1 for |d| ≤ STEP_MAX, d2 = d·d (k: as :func:`fexp_neg`): d + d2 S(d), no
    reduction; the step of a logit, for π e^δ = fma(π, fexpm1_step(δ, δ²), π) (error
    bound: the module docstring)."""
    lo = fma(fma(fma(k[19], d, k[18]), d, k[17]), d, k[16])
    hi = fma(fma(fma(fma(k[24], d, k[23]), d, k[22]), d, k[21]), d, k[20])
    return fma(d2, fma(hi, d2 * d2, lo), d)


@njit(cache=True, inline="always", error_model="numpy")
def exp_constants(out):
    """EXP_CONSTANTS copied at run time into out[:25] (for fexp_neg in a hot loop), returned.
    ``out`` should be a row of a scratch array the loop also writes to, so that LLVM cannot
    prove the constants unchanged and fold them back into the constant pool."""
    k = out[:EXP_CONSTANTS.shape[0]]
    for i in range(k.shape[0]):
        k[i] = EXP_CONSTANTS[i]
    return k


@njit(cache=True, inline="always", error_model="numpy")
def fexpm1(x):
    """e^x − 1 for x ≤ 1 (error bound: the module docstring); x > 1 is read as 1."""
    x = EXPM1_MIN if x < EXPM1_MIN else x
    x = 1.0 if x > 1.0 else x
    t, n, u = _expm1_reduced(x)
    scale = _pow2(t, EXP_BIAS)
    return fma(scale, u, scale - 1.0)


@njit(cache=True, inline="always", error_model="numpy")
def fexpm1_or_exp(x, minus_one):
    """e^x − 1 (as :func:`fexpm1`, for x ≤ 1) if ``minus_one``, else e^x (as :func:`fexp`),
    bit for bit: one reduction for both, so that a loop that needs either per element pays
    one exp."""
    floor = EXPM1_MIN if minus_one else EXP_MIN
    x = floor if x < floor else x
    x = EXP_MAX if x > EXP_MAX else x
    t, n, u = _expm1_reduced(x)
    n1 = (n * 0.5 + SHIFTER) - SHIFTER  # 2^n = 2^{n1} 2^{n − n1}, both factors normal
    scale = _pow2(n1 + SHIFTER, EXP_BIAS)
    rest = _pow2((n - n1) + SHIFTER, EXP_BIAS)
    whole = scale * rest  # 2^n exactly where minus_one (−58 ≤ n ≤ 2)
    return fma(whole, u, whole - 1.0) if minus_one else fma(scale, u, scale) * rest


@njit(cache=True, inline="always", error_model="numpy")
def flog(x):
    """log x (error bound: the module docstring)."""
    r = flog_positive(x)
    r = math.inf if x == math.inf else r
    r = -math.inf if x == 0.0 else r
    return r if x >= 0.0 else math.nan


@njit(cache=True, inline="always", error_model="numpy")
def flog_positive(x):
    """log x for 0 < x < inf, bit for bit :func:`flog` (other x: unspecified; no selects
    for 0, inf, x < 0 and NaN)."""
    return flog_or_log1p(x, 0.0, False)


@njit(cache=True, inline="always", error_model="numpy")
def flog1p_reduced(f):
    """log(1 + f) for √½ − 1 ≤ f ≤ √2 − 1: :func:`flog`'s polynomial with k = 0 applied to
    f itself, so no rounding of 1 + f enters (fdlibm's ``log1p`` there; error < 1 ulp)."""
    hfsq = (0.5 * f) * f
    s = f / (2.0 + f)
    z = s * s
    w = z * z
    t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    return ((s * (hfsq + (t2 + t1))) - hfsq) + f


@njit(cache=True, inline="always", error_model="numpy")
def flog_or_log1p(x, f, near):
    """log(1 + f) if ``near`` (bit for bit :func:`flog1p_reduced`, same range of f), else
    log x for 0 < x < inf (bit for bit :func:`flog_positive`): one polynomial for both, the
    argument and k selected before it (k = 0 makes flog's last steps flog1p_reduced's)."""
    sub = x < DBL_MIN
    scaled = x * TWO54
    y = scaled if sub else x
    bits = _bits(y) + LOG_OFFSET  # carries into the exponent once the mantissa passes √2
    k = (_double((bits >> U52) | TWO52_BITS) - TWO52_BIAS) - (54.0 if sub else 0.0)
    g = _double((bits & MANTISSA) + SQRT_HALF_HI) - 1.0
    k = 0.0 if near else k
    g = f if near else g
    hfsq = (0.5 * g) * g
    s = g / (2.0 + g)
    z = s * s
    w = z * z
    t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    return fma(k, LN2_HI, ((fma(s, hfsq + (t2 + t1), k * LN2_LO) - hfsq) + g))


# --------------------------------------------------------------------------- softmax
@njit(cache=True, inline="always", error_model="numpy")
def max_lanes(x, n_rows, n_lanes, m):
    """m[l] = max_a x[a, l] for the lanes l < n_lanes of x[:n_rows] (NaN in row 0 stays)."""
    for l in range(n_lanes):
        m[l] = x[0, l]
    for a in range(1, n_rows):
        for l in range(n_lanes):  # "+ 0.0" keeps the store unconditional (no masked stores)
            m[l] = x[a, l] if x[a, l] > m[l] else m[l] + 0.0


@njit(cache=True, inline="always", error_model="numpy")
def exp_lanes(x, n_rows, n_lanes, m, e, z, rz, k):
    """The unnormalised softmax of each lane given its max m: e = e^{x − m},
    z = Σ_a e^{x − m} (summed in row order) and rz = 1/z, so that π = e·rz; k: fexp_neg's
    constants."""
    for l in range(n_lanes):
        z[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            e[a, l] = fexp_neg(x[a, l] - m[l], k)
            z[l] += e[a, l]
    for l in range(n_lanes):
        rz[l] = 1.0 / z[l]


@njit(cache=True, inline="always", error_model="numpy")
def softmax_lanes(x, n_rows, n_lanes, p, m, z, rz):
    """Softmax of each lane l < n_lanes (column) of x[:n_rows]: p = e^{x − m}·rz, with m the
    lane's max, z = Σ_a e^{x − m} and rz = 1/z (log π = (x − m) − log z, and
    log Σ_a e^x = m + log z): :func:`max_lanes`, :func:`exp_lanes`, then p·rz (kernels that
    fuse the last product into a pass of their own, as ppo_update, call the first two).

    x, p : (≥ n_rows, ≥ n_lanes) float64 (p written); m, z, rz : (≥ n_lanes,) float64
    (written). Row 0 of every lane must be a real action (states are non-empty); PAD_LOGIT
    rows get p = 0 exactly. The lane count is a run-time value, not the constant LANES:
    LLVM's loop vectoriser then takes the loops over lanes (a constant count would have them
    unrolled first, and left scalar).
    """
    max_lanes(x, n_rows, n_lanes, m)
    exp_lanes(x, n_rows, n_lanes, m, p, z, rz, EXP_CONSTANTS)
    for a in range(n_rows):
        for l in range(n_lanes):
            p[a, l] = p[a, l] * rz[l]


@njit(cache=True, inline="always", error_model="numpy")
def max_actions(a_indptr, s0, s1):
    """The largest action count of the states s0 ≤ s < s1 (the rows of their blocks)."""
    n = 0
    for s in range(s0, s1):
        n = max(n, a_indptr[s + 1] - a_indptr[s])
    return n


@njit(cache=True, inline="always", error_model="numpy")
def load_lanes(a_indptr, s0, s1, n_lanes, values, pad, out):
    """out[a, l] = values[a_indptr[s0 + l] + a] for the lanes l < n_lanes of the states
    s0 ≤ s0 + l < s1, and ``pad`` in the rows beyond a state's action count and in the lanes
    beyond s1."""
    n_rows = out.shape[0]
    for l in range(n_lanes):
        n = 0
        if s0 + l < s1:
            lo = a_indptr[s0 + l]
            n = a_indptr[s0 + l + 1] - lo
            for a in range(n):
                out[a, l] = values[lo + a]
        for a in range(n, n_rows):
            out[a, l] = pad


@njit(cache=True, inline="always", error_model="numpy")
def store_lanes(a_indptr, s0, s1, block, out):
    """out[a_indptr[s0 + l] + a] = block[a, l] for the actions of the states s0 ≤ s0 + l < s1."""
    for l in range(s1 - s0):
        lo = a_indptr[s0 + l]
        for a in range(a_indptr[s0 + l + 1] - lo):
            out[lo + a] = block[a, l]


@njit(cache=True, inline="always", error_model="numpy")
def softmax_states(a_indptr, s0, s1, logits, pi_out, lse_out, block, lanes):
    """π(·|s) = softmax θ(s, ·) into pi_out and lse_out[s] = log Σ_a e^{θ(s, a)} (either
    skipped if empty), for the states s0 ≤ s < s1, LANES at a time.

    block : (2, ≥ max_actions(a_indptr, s0, s1), LANES) and lanes : (3, LANES) float64,
    scratch.
    """
    n_rows = max_actions(a_indptr, s0, s1)
    x, p = block[0], block[1]
    m, z, rz = lanes[0], lanes[1], lanes[2]
    for b0 in range(s0, s1, LANES):
        b1 = min(b0 + LANES, s1)
        load_lanes(a_indptr, b0, b1, b1 - b0, logits, PAD_LOGIT, x[:n_rows])
        softmax_lanes(x, n_rows, b1 - b0, p, m, z, rz)
        if pi_out.shape[0] > 0:
            store_lanes(a_indptr, b0, b1, p, pi_out)
        if lse_out.shape[0] > 0:
            for l in range(b1 - b0):
                lse_out[b0 + l] = m[l] + flog(z[l])


@njit(cache=True, error_model="numpy")
def elementary(x, exp_out, exp_neg_out, expm1_out, log_out):
    """fexp(x), fexp_neg(x if x ≤ 0 else 0), fexpm1(x) and flog(x) elementwise (tests).
    Mirrors kernels/cython/_info.pyx (``elementary``)."""
    for i in range(x.shape[0]):
        exp_out[i] = fexp(x[i])
        exp_neg_out[i] = fexp_neg(0.0 if x[i] > 0.0 else x[i], EXP_CONSTANTS)
        expm1_out[i] = fexpm1(x[i])
        log_out[i] = flog(x[i])


@njit(cache=True, error_model="numpy")
def stepped(pi, d, out):
    """π e^δ as ppo_update forms it between steps, fma(π, fexpm1_step(δ, δ²), π),
    elementwise (tests). Mirrors kernels/cython/_info.pyx (``stepped``)."""
    for i in range(d.shape[0]):
        out[i] = fma(pi[i], fexpm1_step(d[i], d[i] * d[i], EXP_CONSTANTS), pi[i])
