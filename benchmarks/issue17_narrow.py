"""Issue 17, target 1: evaluate / visitation on the garnet with P's column indices as uint16
and as int32 (``fastppo._evaluator.NARROW_INDICES`` switched per call), and SciPy's bicgstab
on the assembled matrix (issue17.py's), interleaved in one process; medians of thread and
wall time.

Usage (from the repository root)::

    python benchmarks/issue17_narrow.py N_STATES REPEAT BACKEND
"""
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastppo
import fastppo._evaluator as E
from issue17 import assemble, bicgstab

S, R, be = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
mdp = fastppo.garnet(S, 10, 10, gamma=0.99, seed=0)
pi = fastppo.softmax(mdp, np.random.default_rng(1).standard_normal(mdp.n_pairs))
A, At, c = assemble(mdp, pi)
mu = mdp.rho
kw = dict(backend=be, n_threads=1)


def switched(f, on):
    def run():
        E.NARROW_INDICES = on
        return f()
    return run


def evaluate():
    return fastppo.evaluate(mdp, pi, **kw)


def visitation():
    return fastppo.visitation(mdp, pi, mu, full_output=True, **kw)


runs = {"evaluate uint16": switched(evaluate, True), "evaluate int32": switched(evaluate, False),
        "evaluate bicgstab": lambda: bicgstab(A, c),
        "visitation uint16": switched(visitation, True),
        "visitation int32": switched(visitation, False),
        "visitation bicgstab": lambda: bicgstab(At, mu)}
with threadpool_limits(1):
    for f in runs.values():
        f()
    thread = {k: [] for k in runs}
    wall = {k: [] for k in runs}
    for _ in range(R):
        for k, f in runs.items():
            t, w = time.thread_time(), time.perf_counter()
            f()
            thread[k].append(time.thread_time() - t)
            wall[k].append(time.perf_counter() - w)
E.NARROW_INDICES = True
med = {k: 1e3 * np.median(v) for k, v in thread.items()}
medw = {k: 1e3 * np.median(v) for k, v in wall.items()}
print(f"S={S} backend={be} repeat={R}")
for k in runs:
    print(f"  {k:22s} thread {med[k]:8.2f} ms  wall {medw[k]:8.2f} ms")
for op in ("evaluate", "visitation"):
    b, bw = med[f"{op} bicgstab"], medw[f"{op} bicgstab"]
    print(f"  {op}: vs bicgstab, uint16 {b / med[op + ' uint16']:.2f}x "
          f"(wall {bw / medw[op + ' uint16']:.2f}x), int32 {b / med[op + ' int32']:.2f}x "
          f"(wall {bw / medw[op + ' int32']:.2f}x)")
