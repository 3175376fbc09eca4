"""Cython kernels (twins of ``kernels/numba``), compiled by setup.py."""
