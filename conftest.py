"""pytest collects every module under fastppo/ and tests/ for doctests: leave out the
scripts that mpiexec runs (tests/mpi_scripts), and the MPI module where mpi4py is missing
(pip install -e ".[test]" brings it; tests/test_distributed.py then says why it skips)."""
import importlib.util

collect_ignore = ["tests/mpi_scripts"]
if importlib.util.find_spec("mpi4py") is None:
    collect_ignore.append("fastppo/distributed.py")
