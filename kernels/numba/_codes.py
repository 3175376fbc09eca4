"""Integer codes that select a branch inside the Numba kernels.

The same names and values as ``fastppo/_codes.py`` (Python) and
``kernels/cython/_codes.pxi`` (Cython); ``tests/test_backend_parity.py`` checks
that the three agree. Mirrors kernels/cython/_codes.pxi.
"""
# f-divergence generator of the regularizer (0: none)
NONE = 0
REVERSE_KL = 1
FORWARD_KL = 2
CHI_SQUARE = 3
HELLINGER = 4
JENSEN_SHANNON = 5
ALPHA = 6

# KL-to-reference estimator in the sampled PPO loss (0: no KL term in the loss)
KL_NONE = 0
KL_K1 = 1
KL_K2 = 2
KL_K3 = 3
