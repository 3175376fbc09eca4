"""Packaging: compiled kernels importable, backends listed, Numba cache location
(the command line: test_cli.py)."""
import importlib
import io
import os
import subprocess
import sys

import pytest

import fastppo
from fastppo._backend import BACKENDS, STEMS, get_kernel


@pytest.mark.parametrize("stem", sorted(STEMS))
def test_twin_kernels_have_the_same_names(stem):
    cy = importlib.import_module(f"fastppo._kernels.cython.{stem}")
    nb = importlib.import_module(f"fastppo._kernels.numba.{stem}")
    for name in STEMS[stem]:
        assert callable(getattr(cy, name)), name
        assert name in nb.KERNELS, name
        # the Cython docstring starts with the call signature, ending in n_threads
        assert getattr(cy, name).__doc__.startswith(f"{name}(")
        assert "n_threads)" in " ".join(getattr(cy, name).__doc__.split())


def test_every_backend_resolves_every_kernel():
    for names in STEMS.values():
        for name in names:
            for backend in BACKENDS:
                assert callable(get_kernel(name, backend))


def test_show_backends_lists_all():
    buf = io.StringIO()
    fastppo.show_backends(file=buf)
    text = buf.getvalue()
    assert "numba   available" in text and "cython  available" in text
    assert ("OpenMP" in text) or ("serial build" in text)


def test_default_backend_is_the_compiled_one(monkeypatch):
    monkeypatch.delenv("FASTPPO_BACKEND", raising=False)
    assert fastppo.get_backend() == "cython"


def test_default_path_compiles_nothing_at_run_time(tmp_path):
    """A solve and PPO-Clip steps with default settings never import Numba (no JIT
    compilation before the first result: the cold start of ``fastppo run``)."""
    code = (
        "import sys, fastppo\n"
        "mdp = fastppo.garnet(300, 4, 3, gamma=0.95, seed=0)\n"
        "fastppo.solve(mdp)\n"
        "fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1)).run(3)\n"
        "print('numba' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "FASTPPO_BACKEND"}
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path,
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stdout + out.stderr


def test_backend_resolution_order(monkeypatch):
    monkeypatch.setenv("FASTPPO_BACKEND", "cython")
    assert fastppo.get_backend() == "cython"
    with fastppo.backend("numpy"):
        assert fastppo.get_backend() == "numpy"
    fastppo.set_backend("numba")
    try:
        assert fastppo.get_backend() == "numba"
    finally:
        fastppo.set_backend(None)
    monkeypatch.setenv("FASTPPO_BACKEND", "fortran")
    with pytest.raises(ValueError, match="backend must be one of 'numba', 'cython', 'numpy'; got 'fortran'"):
        fastppo.get_backend()


def test_numba_cache_dir_outside_package():
    import numba

    cache = numba.config.CACHE_DIR
    assert cache, "NUMBA_CACHE_DIR must be set (tests/conftest.py sets it)"
    pkg = os.path.dirname(fastppo.__file__)
    assert not os.path.abspath(cache).startswith(os.path.abspath(pkg))
