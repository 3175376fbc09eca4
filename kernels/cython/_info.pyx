"""Build facts of the Cython kernels, and Python access to their shared inline code.

``openmp_enabled()``: whether the kernels were compiled with OpenMP. ``DivergenceCode`` and
``KLKind``: the kernel-code table of _codes.pxi as Python enums (the tests compare it with
fastppo/_codes.py and kernels/numba/_codes.py). ``divergence_terms``: the per-pair terms
of _divergence.pxi over arrays, for tests. ``elementary``: the polynomial exp / log of
_softmax.pxi over arrays, for tests. Mirrors kernels/numba/_divergence.py
(``divergence_terms``), kernels/numba/_softmax.py (``elementary``) and kernels/numba/_codes.py.
"""
from libc.stdint cimport int64_t

include "_codes.pxi"
include "_divergence.pxi"
include "_softmax.pxi"

cdef extern from *:
    """
    #ifndef FASTPPO_OPENMP
    #define FASTPPO_OPENMP 0
    #endif
    """
    int FASTPPO_OPENMP


def openmp_enabled():
    """openmp_enabled() -> bool: whether the kernels were compiled with OpenMP."""
    return bool(FASTPPO_OPENMP)


def divergence_terms(int code, double alpha, const double[::1] p, const double[::1] q,
                     const double[::1] y,                                           # IN
                     double[::1] ref_f_out, double[::1] p_fprime_out, double[::1] h_out,
                     double[::1] dh_out):                                           # OUT
    """divergence_terms(code, alpha, p, q, y, ref_f_out, p_fprime_out, h_out, dh_out)

    ref_f(p[i], q[i]), p_fprime(p[i], q[i]) and (h, h') = fprime_inv(y[i]) of _divergence.pxi."""
    cdef Py_ssize_t i
    cdef double dh
    with nogil:
        for i in range(p.shape[0]):
            ref_f_out[i] = ref_f(code, alpha, p[i], q[i])
            p_fprime_out[i] = p_fprime(code, alpha, p[i], q[i])
        for i in range(y.shape[0]):
            h_out[i] = fprime_inv(code, alpha, y[i], &dh)
            dh_out[i] = dh


def elementary(const double[::1] x,                                               # IN
               double[::1] exp_out, double[::1] exp_neg_out, double[::1] expm1_out,
               double[::1] log_out):                                          # OUT
    """elementary(x, exp_out, exp_neg_out, expm1_out, log_out)

    fexp(x), fexp_neg(x if x <= 0 else 0), fexpm1(x) and flog(x) of _softmax.pxi, elementwise."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(x.shape[0]):
            exp_out[i] = fexp(x[i])
            exp_neg_out[i] = fexp_neg(0.0 if x[i] > 0.0 else x[i])
            expm1_out[i] = fexpm1(x[i])
            log_out[i] = flog(x[i])


def stepped(const double[::1] pi, const double[::1] d,                        # IN
            double[::1] out):                                                # OUT
    """stepped(pi, d, out)

    pi e^d as ppo_update forms it between steps, fma(pi, fexpm1_step(d, d d), pi),
    elementwise."""
    cdef Py_ssize_t i
    with nogil:
        for i in range(d.shape[0]):
            out[i] = fma(pi[i], fexpm1_step(d[i], d[i] * d[i]), pi[i])
