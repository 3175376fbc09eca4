# The segment softmax / log-sum-exp of the Cython kernels, and the exp and log it runs on.
#
# One place computes pi(.|s) = softmax theta(s, .) for every kernel (segment_softmax,
# ppo_update, ppo_minibatches): softmax_lanes, on a block of LANES states laid out
# structure-of-arrays (x[a * LANES + l] is action a of the block's l-th state), so that
# the loops run across states and GCC vectorises them. Rows beyond a state's action count,
# and lanes beyond the last state, hold PAD_LOGIT = -inf (pi = 0 exactly there); a block
# need not be full (its first n_lanes lanes are used). softmax_states runs it over a range
# of states. fexp, fexp_neg, fexpm1, fexpm1_or_exp, flog and flog_positive perform
# the very same operations, in the same order, with the same explicit fma, as
# kernels/numba/_softmax.py (their error bounds are stated there), so the two backends
# agree bit for bit; setup.py compiles with -ffp-contract=off (no implicit fma) and never
# with -ffast-math. Included (not cimported) by the kernels. Mirrors kernels/numba/_softmax.py.
from libc.math cimport fma, INFINITY, NAN
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport malloc, free

cdef extern from *:
    """
    #include <stdint.h>
    #include <string.h>
    #define FASTPPO_LANES 32
    #define FASTPPO_DBL_MIN 2.2250738585072014e-308
    #define FASTPPO_TWO54 18014398509481984.0
    #define FASTPPO_TWO_M64 5.421010862427522e-20
    #define FASTPPO_LOG2E 1.4426950408889634
    #define FASTPPO_LN2_HI 6.93147180369123816490e-01
    #define FASTPPO_LN2_LO 1.90821492927058770002e-10
    #define FASTPPO_LN2 0.6931471805599453
    #define FASTPPO_SHIFTER 6755399441055744.0
    #define FASTPPO_EXP_MIN (-746.0)
    #define FASTPPO_EXP_MAX 710.0
    #define FASTPPO_EXPM1_MIN (-40.0)
    #define FASTPPO_P0 0.5
    #define FASTPPO_P1 0.16666666666666666
    #define FASTPPO_P2 0.041666666666651364
    #define FASTPPO_P3 0.008333333333332157
    #define FASTPPO_P4 0.0013888888905871347
    #define FASTPPO_P5 0.0001984126985433077
    #define FASTPPO_P6 2.4801536409064087e-05
    #define FASTPPO_P7 2.7557280082684685e-06
    #define FASTPPO_P8 2.761379555451986e-07
    #define FASTPPO_P9 2.509554598170022e-08
    #define FASTPPO_LG1 6.666666666666735130e-01
    #define FASTPPO_LG2 3.999999999940941908e-01
    #define FASTPPO_LG3 2.857142874366239149e-01
    #define FASTPPO_LG4 2.222219843214978396e-01
    #define FASTPPO_LG5 1.818357216161805012e-01
    #define FASTPPO_LG6 1.531383769920937332e-01
    #define FASTPPO_LG7 1.479819860511658591e-01
    #define FASTPPO_STEP_MAX 0.25
    #define FASTPPO_S0 0.5
    #define FASTPPO_S1 0.16666666666665322
    #define FASTPPO_S2 0.04166666666666555
    #define FASTPPO_S3 0.008333333336202819
    #define FASTPPO_S4 0.0013888888891279828
    #define FASTPPO_S5 0.00019841253314374944
    #define FASTPPO_S6 2.4801573530729414e-05
    #define FASTPPO_S7 2.7592569930959876e-06
    #define FASTPPO_S8 2.758669229104366e-07
    #define FASTPPO_EXP_BIAS ((uint64_t)1023)
    #define FASTPPO_EXP_BIAS_64 ((uint64_t)(1023 + 64))
    #define FASTPPO_MANTISSA ((uint64_t)0x000FFFFFFFFFFFFFULL)
    #define FASTPPO_SQRT_HALF_HI ((uint64_t)0x3FE6A09E00000000ULL)
    #define FASTPPO_LOG_OFFSET ((uint64_t)(0x3FF0000000000000ULL - 0x3FE6A09E00000000ULL))
    #define FASTPPO_TWO52_BITS ((uint64_t)0x4330000000000000ULL)
    #define FASTPPO_TWO52_BIAS (4503599627370496.0 + 1023.0)
    static inline uint64_t fastppo_bits(double x) { uint64_t u; memcpy(&u, &x, sizeof u); return u; }
    static inline double fastppo_double(uint64_t u) { double x; memcpy(&x, &u, sizeof x); return x; }
    """
    const int LANES "FASTPPO_LANES"
    const double DBL_MIN "FASTPPO_DBL_MIN"
    const double TWO54 "FASTPPO_TWO54"
    const double TWO_M64 "FASTPPO_TWO_M64"
    const double LOG2E "FASTPPO_LOG2E"
    const double LN2_HI "FASTPPO_LN2_HI"
    const double LN2_LO "FASTPPO_LN2_LO"
    const double LN2 "FASTPPO_LN2"
    const double SHIFTER "FASTPPO_SHIFTER"
    const double EXP_MIN "FASTPPO_EXP_MIN"
    const double EXP_MAX "FASTPPO_EXP_MAX"
    const double EXPM1_MIN "FASTPPO_EXPM1_MIN"
    const double P0 "FASTPPO_P0"
    const double P1 "FASTPPO_P1"
    const double P2 "FASTPPO_P2"
    const double P3 "FASTPPO_P3"
    const double P4 "FASTPPO_P4"
    const double P5 "FASTPPO_P5"
    const double P6 "FASTPPO_P6"
    const double P7 "FASTPPO_P7"
    const double P8 "FASTPPO_P8"
    const double P9 "FASTPPO_P9"
    const double LG1 "FASTPPO_LG1"
    const double LG2 "FASTPPO_LG2"
    const double LG3 "FASTPPO_LG3"
    const double LG4 "FASTPPO_LG4"
    const double LG5 "FASTPPO_LG5"
    const double LG6 "FASTPPO_LG6"
    const double LG7 "FASTPPO_LG7"
    const double STEP_MAX "FASTPPO_STEP_MAX"
    const double S0 "FASTPPO_S0"
    const double S1 "FASTPPO_S1"
    const double S2 "FASTPPO_S2"
    const double S3 "FASTPPO_S3"
    const double S4 "FASTPPO_S4"
    const double S5 "FASTPPO_S5"
    const double S6 "FASTPPO_S6"
    const double S7 "FASTPPO_S7"
    const double S8 "FASTPPO_S8"
    const uint64_t EXP_BIAS "FASTPPO_EXP_BIAS"
    const uint64_t EXP_BIAS_64 "FASTPPO_EXP_BIAS_64"
    const uint64_t MANTISSA "FASTPPO_MANTISSA"
    const uint64_t SQRT_HALF_HI "FASTPPO_SQRT_HALF_HI"
    const uint64_t LOG_OFFSET "FASTPPO_LOG_OFFSET"
    const uint64_t TWO52_BITS "FASTPPO_TWO52_BITS"
    const double TWO52_BIAS "FASTPPO_TWO52_BIAS"
    uint64_t _bits "fastppo_bits"(double x) noexcept nogil
    double _double "fastppo_double"(uint64_t u) noexcept nogil
    # a pointer that aliases no other pointer argument (GCC vectorises without run-time checks)
    ctypedef double* dptr "double * __restrict__"
    ctypedef const double* cdptr "const double * __restrict__"

cdef double PAD_LOGIT = -INFINITY


# ---------------------------------------------------------------------- exp and log
cdef inline double _pow2(double t, uint64_t bias) noexcept nogil:
    """2^(n + bias - 1023) for t = n + SHIFTER (n an integer)."""
    return _double((_bits(t) + bias) << 52)


cdef inline double _expm1_reduced(double x, double* t, double* n) noexcept nogil:
    """e^r - 1 with x = n ln2 + r, |r| <= ln2/2, t = n + SHIFTER (|x| <= 746); Estrin."""
    cdef double r, r2, r4, p
    t[0] = fma(x, LOG2E, SHIFTER)
    n[0] = t[0] - SHIFTER
    r = fma(n[0], -LN2_LO, fma(n[0], -LN2_HI, x))
    r2 = r * r
    r4 = r2 * r2
    p = fma(fma(fma(P7, r, P6), r2, fma(P5, r, P4)), r4,
            fma(fma(P3, r, P2), r2, fma(P1, r, P0)))
    p = fma(fma(P9, r, P8), r4 * r4, p)
    return fma(r2, p, r)


cdef inline double fexp(double x) noexcept nogil:
    """e^x."""
    cdef double t, n, u, n1, scale
    x = EXP_MIN if x < EXP_MIN else x
    x = EXP_MAX if x > EXP_MAX else x
    u = _expm1_reduced(x, &t, &n)
    n1 = (n * 0.5 + SHIFTER) - SHIFTER  # 2^n = 2^n1 2^(n - n1), both factors normal
    scale = _pow2(n1 + SHIFTER, EXP_BIAS)
    return fma(scale, u, scale) * _pow2((n - n1) + SHIFTER, EXP_BIAS)


cdef inline double fexp_neg(double x) noexcept nogil:
    """e^x for x <= 0 or NaN: fexp with one power of two, 2^n = 2^(n+64) 2^-64."""
    cdef double t, n, u, scale
    x = EXP_MIN if x < EXP_MIN else x
    u = _expm1_reduced(x, &t, &n)
    scale = _pow2(t, EXP_BIAS_64)
    return fma(scale, u, scale) * TWO_M64


cdef inline double fexpm1(double x) noexcept nogil:
    """e^x - 1 for x <= 1 (x > 1 is read as 1)."""
    cdef double t, n, u, scale
    x = EXPM1_MIN if x < EXPM1_MIN else x
    x = 1.0 if x > 1.0 else x
    u = _expm1_reduced(x, &t, &n)
    scale = _pow2(t, EXP_BIAS)
    return fma(scale, u, scale - 1.0)


cdef inline double fexpm1_or_exp(double x, bint minus_one) noexcept nogil:
    """e^x - 1 (as fexpm1, for x <= 1) if minus_one, else e^x (as fexp), bit for bit: one
    reduction for both, so that a loop that needs either per element pays one exp."""
    cdef double t, n, u, n1, scale, rest, whole
    cdef double floor = EXPM1_MIN if minus_one else EXP_MIN
    x = floor if x < floor else x
    x = EXP_MAX if x > EXP_MAX else x
    u = _expm1_reduced(x, &t, &n)
    n1 = (n * 0.5 + SHIFTER) - SHIFTER  # 2^n = 2^n1 2^(n - n1), both factors normal
    scale = _pow2(n1 + SHIFTER, EXP_BIAS)
    rest = _pow2((n - n1) + SHIFTER, EXP_BIAS)
    whole = scale * rest  # 2^n exactly where minus_one (-58 <= n <= 2)
    return fma(whole, u, whole - 1.0) if minus_one else fma(scale, u, scale) * rest


cdef inline double fexpm1_step(double d, double d2) noexcept nogil:
    """e^d - 1 for |d| <= STEP_MAX, d2 = d d: d + d2 S(d), S of degree 8 (no reduction)."""
    cdef double lo = fma(fma(fma(S3, d, S2), d, S1), d, S0)
    cdef double hi = fma(fma(fma(fma(S8, d, S7), d, S6), d, S5), d, S4)
    return fma(d2, fma(hi, d2 * d2, lo), d)


cdef inline double flog(double x) noexcept nogil:
    """log x (fdlibm)."""
    cdef bint sub = x < DBL_MIN
    cdef double scaled = x * TWO54  # computed, then selected: no floating-point operation
    cdef double y = scaled if sub else x  # inside a branch, so that GCC vectorises the loop
    cdef uint64_t bits = _bits(y) + LOG_OFFSET
    cdef double k = (_double((bits >> 52) | TWO52_BITS) - TWO52_BIAS) - (54.0 if sub else 0.0)
    cdef double f = _double((bits & MANTISSA) + SQRT_HALF_HI) - 1.0
    cdef double hfsq = (0.5 * f) * f
    cdef double s = f / (2.0 + f)
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    cdef double t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    cdef double r = fma(k, LN2_HI, ((fma(s, hfsq + (t2 + t1), k * LN2_LO) - hfsq) + f))
    r = INFINITY if x == INFINITY else r
    r = -INFINITY if x == 0.0 else r
    return r if x >= 0.0 else NAN


cdef inline double flog_positive(double x) noexcept nogil:
    """log x for 0 < x < inf, bit for bit flog (other x: unspecified): flog without its
    selects for 0, inf and x < 0 (a copy, not a call: GCC inlines both into vectorised loops)."""
    cdef bint sub = x < DBL_MIN
    cdef double scaled = x * TWO54  # computed, then selected: no floating-point operation
    cdef double y = scaled if sub else x  # inside a branch, so that GCC vectorises the loop
    cdef uint64_t bits = _bits(y) + LOG_OFFSET
    cdef double k = (_double((bits >> 52) | TWO52_BITS) - TWO52_BIAS) - (54.0 if sub else 0.0)
    cdef double f = _double((bits & MANTISSA) + SQRT_HALF_HI) - 1.0
    cdef double hfsq = (0.5 * f) * f
    cdef double s = f / (2.0 + f)
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    cdef double t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    return fma(k, LN2_HI, ((fma(s, hfsq + (t2 + t1), k * LN2_LO) - hfsq) + f))


cdef inline double flog1p_reduced(double f) noexcept nogil:
    """log(1 + f) for sqrt(1/2) - 1 <= f <= sqrt(2) - 1: flog's polynomial with k = 0
    applied to f itself (fdlibm's log1p there; error < 1 ulp)."""
    cdef double hfsq = (0.5 * f) * f
    cdef double s = f / (2.0 + f)
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    cdef double t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    return ((s * (hfsq + (t2 + t1))) - hfsq) + f


cdef inline double flog_or_log1p(double x, double f, bint near) noexcept nogil:
    """log(1 + f) if near (bit for bit flog1p_reduced, same range of f), else log x for
    0 < x < inf (bit for bit flog_positive): one polynomial for both, the argument and k
    selected before it (k = 0 makes flog's last steps those of flog1p_reduced)."""
    cdef bint sub = x < DBL_MIN
    cdef double scaled = x * TWO54
    cdef double y = scaled if sub else x
    cdef uint64_t bits = _bits(y) + LOG_OFFSET
    cdef double k = (_double((bits >> 52) | TWO52_BITS) - TWO52_BIAS) - (54.0 if sub else 0.0)
    cdef double g = _double((bits & MANTISSA) + SQRT_HALF_HI) - 1.0
    k = 0.0 if near else k
    g = f if near else g
    cdef double hfsq = (0.5 * g) * g
    cdef double s = g / (2.0 + g)
    cdef double z = s * s
    cdef double w = z * z
    cdef double t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    cdef double t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    return fma(k, LN2_HI, ((fma(s, hfsq + (t2 + t1), k * LN2_LO) - hfsq) + g))


# -------------------------------------------------------------------------- softmax
cdef inline void max_lanes(cdptr x, Py_ssize_t n_rows, Py_ssize_t n_lanes,
                           dptr m) noexcept nogil:
    """m[l] = max_a x[a, l] for the lanes l < n_lanes of the (n_rows, LANES) block x."""
    cdef Py_ssize_t a, l
    for l in range(n_lanes):
        m[l] = x[l]
    for a in range(1, n_rows):
        for l in range(n_lanes):
            m[l] = x[a * LANES + l] if x[a * LANES + l] > m[l] else m[l] + 0.0


cdef inline void exp_lanes(cdptr x, Py_ssize_t n_rows, Py_ssize_t n_lanes, cdptr m, dptr e,
                           dptr z, dptr rz) noexcept nogil:
    """The unnormalised softmax given the lane max m: e = e^(x - m), z = sum_a e (in row
    order), rz = 1/z, so that pi = e rz."""
    cdef Py_ssize_t a, l
    for l in range(n_lanes):
        z[l] = 0.0
    for a in range(n_rows):
        for l in range(n_lanes):
            e[a * LANES + l] = fexp_neg(x[a * LANES + l] - m[l])
            z[l] = z[l] + e[a * LANES + l]
    for l in range(n_lanes):
        rz[l] = 1.0 / z[l]


cdef inline void softmax_lanes(cdptr x, Py_ssize_t n_rows, Py_ssize_t n_lanes, dptr p, dptr m,
                               dptr z, dptr rz) noexcept nogil:
    """Softmax of each lane l < n_lanes of the (n_rows, LANES) block x: p = e^(x - m) rz, m the
    lane's max, z = sum_a e^(x - m), rz = 1/z (max_lanes, exp_lanes, then p rz). Row 0 of
    every lane must be a real action."""
    cdef Py_ssize_t a, l
    max_lanes(x, n_rows, n_lanes, m)
    exp_lanes(x, n_rows, n_lanes, m, p, z, rz)
    for a in range(n_rows):
        for l in range(n_lanes):
            p[a * LANES + l] = p[a * LANES + l] * rz[l]


cdef inline Py_ssize_t max_actions(const int64_t* a_indptr, Py_ssize_t s0,
                                   Py_ssize_t s1) noexcept nogil:
    """The largest action count of the states s0 <= s < s1 (the rows of their blocks)."""
    cdef Py_ssize_t s, n = 0
    for s in range(s0, s1):
        if a_indptr[s + 1] - a_indptr[s] > n:
            n = a_indptr[s + 1] - a_indptr[s]
    return n


cdef inline void load_lanes(const int64_t* a_indptr, Py_ssize_t s0, Py_ssize_t s1,
                            Py_ssize_t n_lanes, const double* values, double pad,
                            Py_ssize_t n_rows, double* out) noexcept nogil:
    """out[a, l] = values[a_indptr[s0 + l] + a] for the lanes l < n_lanes of the states
    s0 <= s0 + l < s1, pad in the rows beyond a state's action count and in the lanes beyond s1."""
    cdef Py_ssize_t l, a, n, lo
    for l in range(n_lanes):
        n = 0
        if s0 + l < s1:
            lo = a_indptr[s0 + l]
            n = a_indptr[s0 + l + 1] - lo
            for a in range(n):
                out[a * LANES + l] = values[lo + a]
        for a in range(n, n_rows):
            out[a * LANES + l] = pad


cdef inline void store_lanes(const int64_t* a_indptr, Py_ssize_t s0, Py_ssize_t s1,
                             const double* block, double* out) noexcept nogil:
    """out[a_indptr[s0 + l] + a] = block[a, l] for the actions of the states s0 <= s0 + l < s1."""
    cdef Py_ssize_t l, a, lo
    for l in range(s1 - s0):
        lo = a_indptr[s0 + l]
        for a in range(a_indptr[s0 + l + 1] - lo):
            out[lo + a] = block[a * LANES + l]


cdef inline void softmax_states(const int64_t* a_indptr, Py_ssize_t s0, Py_ssize_t s1,
                                const double* logits, double* pi_out, double* lse_out,
                                double* scratch) noexcept nogil:
    """pi(.|s) = softmax theta(s, .) into pi_out and lse_out[s] = log sum_a e^theta(s, a)
    (either skipped if NULL), for the states s0 <= s < s1, LANES at a time. scratch: room for
    (2 max_actions(a_indptr, s0, s1) + 3) LANES doubles."""
    cdef Py_ssize_t n_rows = max_actions(a_indptr, s0, s1), k, b0, b1, l
    cdef double* x = scratch
    cdef double* p = scratch + n_rows * LANES
    cdef double* m = scratch + 2 * n_rows * LANES
    cdef double* z = m + LANES
    cdef double* rz = z + LANES
    for k in range((s1 - s0 + LANES - 1) // LANES):
        b0 = s0 + k * LANES
        b1 = min(b0 + LANES, s1)
        load_lanes(a_indptr, b0, b1, b1 - b0, logits, PAD_LOGIT, n_rows, x)
        softmax_lanes(x, n_rows, b1 - b0, p, m, z, rz)
        if pi_out != NULL:
            store_lanes(a_indptr, b0, b1, p, pi_out)
        if lse_out != NULL:
            for l in range(b1 - b0):
                lse_out[b0 + l] = m[l] + flog(z[l])
