# Integer codes that select a branch inside the Cython kernels.
# The same names and values as kernels/numba/_codes.py (Numba) and fastppo/_codes.py
# (Python); tests/test_backend_parity.py checks that the three agree, through the
# Python enums these declarations create (fastppo._kernels.cython._info.DivergenceCode,
# .KLKind). Included (not cimported) by every kernel module that needs a code, before
# _divergence.pxi. Mirrors kernels/numba/_codes.py.

cpdef enum DivergenceCode:
    # f-divergence generator of the regularizer (0: none)
    NONE = 0
    REVERSE_KL = 1
    FORWARD_KL = 2
    CHI_SQUARE = 3
    HELLINGER = 4
    JENSEN_SHANNON = 5
    ALPHA = 6

cpdef enum KLKind:
    # KL-to-reference estimator in the sampled PPO loss (0: no KL term in the loss)
    KL_NONE = 0
    KL_K1 = 1
    KL_K2 = 2
    KL_K3 = 3
