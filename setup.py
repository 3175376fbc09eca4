"""Build the Cython kernels in kernels/cython as fastppo._kernels.cython.<stem>.

OpenMP is used when a probe compile with -fopenmp succeeds; otherwise the
kernels are built serial (``fastppo.show_backends()`` reports which).
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup


def _openmp_flags():
    if os.environ.get("FASTPPO_NO_OPENMP") == "1" or sys.platform == "win32":
        return []
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "probe.c"
        src.write_text("#include <omp.h>\nint main(void){return omp_get_max_threads() < 1;}\n")
        cc = os.environ.get("CC", "cc")
        cmd = [cc, "-fopenmp", str(src), "-o", str(Path(tmp) / "probe")]
        try:
            ok = subprocess.run(cmd, capture_output=True).returncode == 0
        except OSError:
            ok = False
    return ["-fopenmp"] if ok else []


omp = _openmp_flags()
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
        extra_compile_args=["-O3", *omp],
        extra_link_args=omp,
    )
    for stem in stems
]
setup(
    ext_modules=cythonize(
        extensions,
        compiler_directives={
            "language_level": 3,
            "boundscheck": debug,
            "wraparound": debug,
            "cdivision": True,
            "initializedcheck": debug,
        },
    )
)
