"""Compile each kernel twice from one Python function: serial and parallel."""
import types

from numba import njit


def _renamed(f, suffix):
    g = types.FunctionType(f.__code__, f.__globals__, f.__name__ + suffix, f.__defaults__, f.__closure__)
    g.__qualname__ = f.__qualname__ + suffix  # distinct Numba cache files per variant
    g.__doc__ = f.__doc__
    return g


def twins(*funcs):
    """{name: (serial, parallel)} for plain Python kernel functions using prange."""
    return {
        f.__name__: (
            njit(cache=True, nogil=True)(_renamed(f, "_serial")),
            njit(cache=True, nogil=True, parallel=True)(_renamed(f, "_parallel")),
        )
        for f in funcs
    }


def serial(*funcs):
    """{name: (f, f)} for kernels that loop serially at any thread count."""
    jitted = {f.__name__: njit(cache=True, nogil=True)(f) for f in funcs}
    return {name: (f, f) for name, f in jitted.items()}
