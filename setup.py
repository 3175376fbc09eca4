"""Build the Cython kernels in kernels/cython as fastppo._kernels.cython.<stem>.

OpenMP is used when a probe compile with -fopenmp succeeds; otherwise the
kernels are built serial (``fastppo.show_backends()`` reports which). The kernels are
compiled for the building machine's CPU (``-march=native``, as Numba compiles for the
running one) when the compiler accepts it; ``FASTPPO_PORTABLE=1`` builds for the generic
target instead (same results, slower). Always ``-ffp-contract=off`` (no implicit fused
multiply-adds: the kernels spell out every ``fma``, so that they round exactly as the
Numba twins), ``-fno-math-errno`` and ``-fno-trapping-math`` (neither changes a result:
they let GCC vectorise sqrt and branch-free selects), and never ``-ffast-math`` (which
reassociates, and can link crtfastmath.o, which flushes subnormals process-wide).
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _compiles(flag, source):
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text(source)
        cc = os.environ.get("CC", "cc")
        cmd = [cc, flag, str(src), "-o", str(Path(tmp) / "probe")]
        try:
            return subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            return False


def _openmp_flags():
    if os.environ.get("FASTPPO_NO_OPENMP") == "1" or sys.platform == "win32":
        return []
    ok = _compiles("-fopenmp", "#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
    return ["-fopenmp"] if ok else []


def _float_flags():
    if sys.platform == "win32":
        return []
    flags = ["-ffp-contract=off", "-fno-math-errno", "-fno-trapping-math"]
    if os.environ.get("FASTPPO_PORTABLE") != "1" and _compiles("-march=native", "int main(void){return 0;}\n"):
        flags.append("-march=native")
    return flags


omp = _openmp_flags()
jobs = os.cpu_count() or 1  # the kernels translate and compile in parallel
debug = os.environ.get("FASTPPO_CYTHON_DEBUG") == "1"
stems = sorted(p.stem for p in Path("kernels/cython").glob("*.pyx"))
extensions = [
    Extension(
        f"fastppo._kernels.cython.{stem}",
        [f"kernels/cython/{stem}.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[
            ("NPY_NO_DEPRECATED_API", "NPY_1_9_API_VERSION"),
            ("FASTPPO_OPENMP", int(bool(omp))),
        ],
        extra_compile_args=["-O3", *_float_flags(), *omp],
        extra_link_args=omp,
    )
    for stem in stems
]
setup(
    options={"build_ext": {"parallel": jobs}},
    ext_modules=cythonize(
        extensions,
        nthreads=jobs,
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": debug,
            "cdivision": True,
            "initializedcheck": debug,
        },
    )
)
