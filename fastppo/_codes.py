"""Integer codes that select a branch inside the kernels: Python's table.

Each backend keeps its own copy under the same names (``kernels/numba/_codes.py``,
``kernels/cython/_codes.pxi``); ``tests/test_backend_parity.py`` checks that the three
agree name by name. ``Regularizer.code`` (fastppo.regularizers) and the ``kl_kind`` of
the sampled PPO loss (fastppo.sampled) are numbered from these names.
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

KL_KINDS = {"k1": KL_K1, "k2": KL_K2, "k3": KL_K3}


def table():
    """{name: code} of every kernel code above (what the tests compare across backends)."""
    return {name: value for name, value in globals().items() if name.isupper() and isinstance(value, int)}
