"""pytest collects every module under fastppo/ and tests/ for doctests: leave out the
scripts that mpiexec runs (tests/mpi_scripts) and fastppo/distributed.py, whose import
initialises MPI (tests/test_distributed.py runs it under mpiexec, never in this process)."""
collect_ignore = ["tests/mpi_scripts", "fastppo/distributed.py"]
