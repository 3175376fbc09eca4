"""Run one MPI rank's Python script in a child process and say how it ended, naming the rank.

    mpiexec -n R python -m fastppo.mpi_run script.py [args ...]

An exception on a rank is already reported by ``fastppo.distributed`` (``rank r failed:
...``, then ``MPI_Abort``). A rank that ends without Python's help — ``os._exit``, a
signal, the kernel's out-of-memory killer — is reported by ``mpiexec`` by its process id
only (MPICH: "BAD TERMINATION ... PID 8355"; for a plain non-zero exit, nothing). Under
this launcher each rank is a child of a small watcher that prints

    fastppo.distributed: rank 1 (pid 8355) ended with exit status 3

and exits with the child's status, so ``mpiexec`` ends the whole job. The watcher does not
initialise MPI (the child inherits the launcher's environment and descriptors and is the
rank); on Linux the child is killed if the watcher is, so no rank is left behind.
"""
import ctypes
import os
import signal
import subprocess
import sys

__all__ = ["main"]

_RANK_VARIABLES = ("PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK")


def _rank():
    for name in _RANK_VARIABLES:
        if name in os.environ:
            return os.environ[name]
    return "?"


def _die_with_parent():
    """In the child before exec: SIGKILL when the watcher dies (Linux prctl)."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def describe(status):
    """'exit status N' or 'signal N (NAME)' for a Popen return code."""
    if status >= 0:
        return f"exit status {status}"
    try:
        name = signal.Signals(-status).name
    except ValueError:
        name = "unknown"
    return f"signal {-status} ({name})"


def main(argv=None):
    """Run ``python ARGV`` as this rank; returns its exit status (128 + N for signal N)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:
        sys.stderr.write("usage: mpiexec -n R python -m fastppo.mpi_run script.py [args ...]\n")
        return 2
    child = subprocess.Popen([sys.executable, *argv], close_fds=False,
                             preexec_fn=_die_with_parent if sys.platform == "linux" else None)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, lambda s, _frame: child.send_signal(s))
    status = child.wait()
    if status == 0:
        return 0
    sys.stderr.write(f"fastppo.distributed: rank {_rank()} (pid {child.pid}) ended with "
                     f"{describe(status)}\n")
    sys.stderr.flush()
    return status if status > 0 else 128 - status


if __name__ == "__main__":
    sys.exit(main())
