"""pytest collects fastppo/ for doctests: skip the MPI module where mpi4py is missing
(pip install -e ".[test]" brings it; tests/test_distributed.py then says why it skips)."""
import importlib.util

collect_ignore = [] if importlib.util.find_spec("mpi4py") else ["fastppo/distributed.py"]
