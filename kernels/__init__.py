"""Compiled kernels of fastppo, installed as ``fastppo._kernels``.

``numba/`` and ``cython/`` hold twin kernels with the same names and positional
signatures; ``fastppo._reference`` holds the NumPy versions. Kernels only loop:
inputs are canonical C-contiguous arrays, outputs are preallocated and passed last.
"""
