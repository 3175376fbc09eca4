"""Build facts of the Cython kernels."""

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
