"""Packaging: compiled kernels importable, backends listed, Numba cache location, CLI."""
import importlib
import io
import json
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


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastppo", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))


def test_cli_run_json():
    r = _cli("run", "--mdp", "garnet:S=60,A=3,b=3,seed=1", "--iters", "400", "--tau", "0.5",
             "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["converged"] and out["gap"] <= 1e-8 and out["iterations"] <= 400


def test_cli_solve_and_info():
    r = _cli("solve", "--mdp", "chain:n_states=6", "--reg", "none", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["bellman_residual"] <= 1e-10
    r = _cli("info")
    assert r.returncode == 0 and "cython" in r.stdout


@pytest.mark.parametrize("args, message", [
    (["run", "--mdp", "bogus"], "unknown MDP 'bogus'"),
    (["run", "--mdp", "garnet:S=x"], "is not a number"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--reg", "kl"], "unknown --reg 'kl'"),
    (["run", "--mdp", "garnet:S=10,A=2,b=2", "--tau", "-1"], "tau must be finite and >= 0"),
    (["solve", "--mdp-file", "no/such/file.npz"], "no such file"),
    (["run", "--mdp", "garnet:S=10,A=2,b=20"], "branching"),
])
def test_cli_user_errors_are_one_line(args, message):
    r = _cli(*args)
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("fastppo: error:") and message in lines[0], r.stderr
