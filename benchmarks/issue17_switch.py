"""Issue 17, target 1: `evaluate` / `visitation` with one of the evaluator's switches on and off
(per call), and SciPy's bicgstab on the assembled matrix (issue17.py's), interleaved in one
process (each of ours right after a SciPy run, on and off first in turn); medians of thread
and wall time, products and passes, and the true relative residual ‖b − A x‖/‖b‖ of each
result. The first call of each (this process's first on the
MDP, which makes the uint16 column indices) is timed apart.

SWITCH is one of:
- ``narrow``: P's column indices as uint16 or int32 (``fastppo._evaluator.NARROW_INDICES``);
- ``extrapolation``: the value sweeps' part along 1 by the residual's mean or mid-range
  (``fastppo._krylov.MEAN_EXTRAPOLATION``; visitation is the same either way);
- ``rows``: single solves' sweeps in one pass each on P_π's state rows (``row_sweep``), or a
  product and vector operations each (``fastppo._evaluator.ROW_SWEEP_STATES``).

Usage (from the repository root)::

    python benchmarks/issue17_switch.py SWITCH N_STATES REPEAT BACKEND [FAMILY]
"""
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastppo
import fastppo._evaluator as E
import fastppo._krylov as K
from benchmarks.common import build_mdp
from issue17 import assemble, bicgstab, relres

# per switch: the module, its attribute, its value on and off, and the two labels
SWITCHES = {"narrow": (E, "NARROW_INDICES", True, False, "uint16", "int32"),
            "extrapolation": (K, "MEAN_EXTRAPOLATION", True, False, "mean", "midrange"),
            "rows": (E, "ROW_SWEEP_STATES", E.ROW_SWEEP_STATES, None, "rows", "products")}

name, S, R, be = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
family = sys.argv[5] if len(sys.argv) > 5 else "garnet"
module, attr, on_value, off_value, on, off = SWITCHES[name]
mdp = build_mdp(family, S)  # issue17.py's (garnet: A = 10, b = 10, γ = 0.99, seed 0)
pi = fastppo.softmax(mdp, np.random.default_rng(1).standard_normal(mdp.n_pairs))
A, At, c = assemble(mdp, pi)
mu = mdp.rho
kw = dict(backend=be, n_threads=1)


def switched(f, value):
    def run():
        setattr(module, attr, value)
        return f()
    return run


def evaluate():
    return fastppo.evaluate(mdp, pi, **kw)


def visitation():
    return fastppo.visitation(mdp, pi, mu, full_output=True, **kw)


runs = {f"evaluate {on}": switched(evaluate, on_value),
        f"evaluate {off}": switched(evaluate, off_value),
        "evaluate bicgstab": lambda: bicgstab(A, c),
        f"visitation {on}": switched(visitation, on_value),
        f"visitation {off}": switched(visitation, off_value),
        "visitation bicgstab": lambda: bicgstab(At, mu)}
with threadpool_limits(1):
    first, out = {}, {}
    for k, f in runs.items():
        t = time.perf_counter()
        out[k] = f()
        first[k] = time.perf_counter() - t
    thread = {k: [] for k in runs}
    wall = {k: [] for k in runs}
    for i in range(R):
        # each of ours right after a SciPy run (whose arrays evict ours, as in issue17.py),
        # on and off in turn first
        order = []
        for op in ("evaluate", "visitation"):
            pair = (f"{op} {on}", f"{op} {off}")
            for k in (pair if i % 2 == 0 else pair[::-1]):
                order += [f"{op} bicgstab", k]
        for k in order:
            t, w = time.thread_time(), time.perf_counter()
            runs[k]()
            thread[k].append(time.thread_time() - t)
            wall[k].append(time.perf_counter() - w)
setattr(module, attr, on_value)
med = {k: 1e3 * np.median(v) for k, v in thread.items()}
medw = {k: 1e3 * np.median(v) for k, v in wall.items()}
print(f"{family} S={mdp.n_states} backend={be} repeat={R} {attr}={on_value} / {off_value}")
for k in runs:
    o = out[k]
    if k.startswith("evaluate"):
        x, M, b = (o if "bicgstab" in k else o.v), A, c
    else:
        x, M, b = (o if "bicgstab" in k else o.d / (1 - mdp.gamma)), At, mu
    extra = "" if "bicgstab" in k else f"  {o.method} {o.n_matvec} products {o.n_passes} passes"
    print(f"  {k:22s} thread {med[k]:8.2f} ms  wall {medw[k]:8.2f} ms  first {1e3 * first[k]:8.2f} ms"
          f"  residual {relres(M, x, b):.2e}{extra}")
for op in ("evaluate", "visitation"):
    b, bw = med[f"{op} bicgstab"], medw[f"{op} bicgstab"]
    print(f"  {op}: vs bicgstab, {on} {b / med[f'{op} {on}']:.2f}x "
          f"(wall {bw / medw[f'{op} {on}']:.2f}x), {off} {b / med[f'{op} {off}']:.2f}x "
          f"(wall {bw / medw[f'{op} {off}']:.2f}x)")
