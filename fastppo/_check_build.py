"""A clear error when the compiled Cython kernels are missing (scikit-learn's idea)."""


def raise_build_error(exc):
    raise ImportError(
        f"{exc}\nThe Cython kernels of fastppo are not built. Install with "
        "`pip install .` (or `pip install -e .` for development) from the source "
        "tree, which compiles them; or use backend='numba' or 'numpy'."
    ) from exc
