# The stored transition probabilities ``p_data``: float64 (the default), or float32 for
# compact storage (``MDP(..., dtype=np.float32)``). Every sum that reads them is a double
# (float * double is computed in double), so only the bytes read change.
# Included (not cimported) by every kernel module that reads p_data.
# Numba specialises its kernels on the array dtype by itself (kernels/numba).

ctypedef fused probability:
    float
    double
