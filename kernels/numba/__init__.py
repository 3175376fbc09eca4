"""Numba kernels (twins of ``kernels/cython``)."""
