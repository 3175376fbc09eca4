"""fastppo.distributed: `mpiexec -n 2` runs on localhost against one process (issue 16).

The MPI runs go through tests/mpi_scripts/distributed_check.py (see its docstring); they
are skipped, with the reason, only when mpi4py or mpiexec is missing.
"""
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fastppo

SCRIPT = Path(__file__).parent / "mpi_scripts" / "distributed_check.py"
TIMEOUT = 120  # seconds for one job (the JIT warms in the first)


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"  # the mpich wheel's, beside this Python
    return str(here) if here.exists() else shutil.which("mpiexec")


try:
    import mpi4py  # noqa: F401
except ImportError:
    mpi4py = None
MPIEXEC = _mpiexec()
_skip = pytest.mark.skipif(mpi4py is None or MPIEXEC is None,
                           reason="mpi4py or mpiexec missing (pip install mpi4py mpich)")


def needs_mpi(test):
    """An `mpiexec` job: skipped without MPI, marked slow (subprocesses; CI runs them)."""
    return pytest.mark.slow(_skip(test))


def _env(**extra):
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", HYDRA_LAUNCHER="fork", FASTPPO_BACKEND="cython",
               **extra)
    env.pop("FASTPPO_NUM_THREADS", None)
    return env


def mpirun(n, *args, timeout=TIMEOUT, launcher=False, env=None):
    """``mpiexec -n n python [-m fastppo.mpi_run] distributed_check.py args``: (process,
    seconds); ``env``: more environment variables."""
    watch = ["-m", "fastppo.mpi_run"] if launcher else []
    cmd = [MPIEXEC, "-n", str(n), sys.executable, *watch, str(SCRIPT), *map(str, args)]
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                       env=_env(**(env or {})), stdin=subprocess.DEVNULL)
    return p, time.monotonic() - t0


@pytest.fixture(scope="module")
def mdp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "garnet.npz"
    fastppo.garnet(60, 3, 4, gamma=0.9, seed=3).save(path)
    return path


@pytest.fixture(scope="module")
def slow_mdp_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("mpi") / "local.npz"
    fastppo.garnet(80, 2, 3, gamma=0.95, seed=5, locality=2).save(path)
    return path


def _ok(p):
    assert p.returncode == 0, f"exit {p.returncode}\nstdout:\n{p.stdout}\nstderr:\n{p.stderr}"


@needs_mpi
def test_two_ranks_match_one_process(mdp_file):
    p, _ = mpirun(2, "parity", mdp_file)
    _ok(p)
    assert "parity ok" in p.stdout


@needs_mpi
def test_two_ranks_match_one_process_slow_mixing(slow_mdp_file):
    # successors local in index: BiCGSTAB and GMRES run after the sweeps stall
    p, _ = mpirun(2, "parity", slow_mdp_file)
    _ok(p)
    assert "parity ok" in p.stdout


@needs_mpi
def test_two_ranks_match_one_process_on_row_sweeps(mdp_file):
    # one process's value sweeps on P_π's state rows (thresholds lowered to this MDP);
    # the ranks keep their products, whose x is exchanged
    p, _ = mpirun(2, "parity", mdp_file, env={"FASTPPO_CHECK_ROW_SWEEPS": "1"})
    _ok(p)
    assert "parity ok" in p.stdout


@needs_mpi
def test_reproducible_bit_for_bit_at_fixed_rank_count(mdp_file):
    a, _ = mpirun(2, "digest", mdp_file)
    b, _ = mpirun(2, "digest", mdp_file)
    _ok(a)
    _ok(b)
    digest = [line for line in a.stdout.splitlines() if line.startswith("digest")]
    assert len(digest) == 1 and digest[0] in b.stdout


@needs_mpi
def test_checkpoint_resumes_at_another_rank_count(mdp_file, tmp_path):
    ckpt = tmp_path / "run.npz"
    p, _ = mpirun(2, "save", mdp_file, ckpt)
    _ok(p)
    assert ckpt.exists()
    p, _ = mpirun(1, "resume", mdp_file, ckpt)  # 2 iterations on 2 ranks + 2 on 1 = 4 in one process
    _ok(p)
    assert "resume ok" in p.stdout
    p, _ = mpirun(2, "resume", mdp_file, ckpt)
    _ok(p)
    assert "resume ok" in p.stdout


@needs_mpi
def test_an_exception_on_a_rank_aborts_the_job_naming_it(mdp_file):
    p, seconds = mpirun(2, "raise", mdp_file, timeout=90)
    assert seconds < 60 and p.returncode != 0
    assert "fastppo.distributed: rank 1 failed: ValueError: a deliberate failure" in p.stderr


@needs_mpi
@pytest.mark.parametrize("mode, how", [("die", "exit status 3"), ("kill", "signal 9 (SIGKILL)")])
def test_a_rank_dying_mid_run_ends_the_job_naming_it(mdp_file, mode, how):
    # under the launcher, the watcher of rank 1 names it; the other rank, blocked in a
    # collective, is ended by mpiexec
    p, seconds = mpirun(2, mode, mdp_file, timeout=90, launcher=True)
    assert seconds < 60 and p.returncode != 0
    assert f"fastppo.distributed: rank 1 (pid " in p.stderr
    assert f") ended with {how}" in p.stderr


@needs_mpi
def test_a_rank_dying_without_the_launcher_still_ends_the_job(mdp_file):
    p, seconds = mpirun(2, "die", mdp_file, timeout=90)
    assert seconds < 60 and p.returncode != 0


def test_launcher_reports_a_child_status(tmp_path):
    from fastppo import mpi_run

    script = tmp_path / "exit.py"
    script.write_text("import os\nos._exit(4)\n")
    p = subprocess.run([sys.executable, "-m", "fastppo.mpi_run", str(script)], capture_output=True,
                       text=True, timeout=60, env=dict(os.environ, PMI_RANK="5"))
    assert p.returncode == 4
    assert "fastppo.distributed: rank 5 (pid" in p.stderr and "exit status 4" in p.stderr
    assert mpi_run.describe(-9) == "signal 9 (SIGKILL)"
    assert mpi_run.main([]) == 2


def test_import_fastppo_does_not_import_mpi4py():
    code = "import sys, fastppo; assert 'mpi4py' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@needs_mpi
def test_one_rank_checks(mdp_file):
    # partition, load / from_mdp / from_rows against fastppo, rejected blocks: in an MPI job
    # of one rank, so that this pytest process never initialises MPI
    cmd = [MPIEXEC, "-n", "1", sys.executable, str(SCRIPT.parent / "unit_checks.py"), str(mdp_file)]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT, env=_env(),
                       stdin=subprocess.DEVNULL)
    _ok(p)
    assert "unit ok" in p.stdout
