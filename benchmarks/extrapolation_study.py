"""Products (and times) of ``fastppo.evaluate`` and ``fastppo.solve`` with the value
system's sweeps extrapolated by the residual's mid-range against its mean.

    python benchmarks/extrapolation_study.py [--sizes 10000 50000] [--repeat 3]

Both rules run in one process, interleaved (times are medians of ``--repeat`` runs, one
thread); π = softmax(N(0, 1) logits) of the suite (``get_policy``).
"""
import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import fastppo
from fastppo import _krylov
from benchmarks.common import build_mdp, get_logits

RULES = {
    "mid-range": lambda r, space=_krylov.LOCAL: 0.5 * (space.min(r) + space.max(r)),
    "mean": lambda r, space=_krylov.LOCAL: space.sum(r) / space.size(r),
}


def run(rule, call, repeat):
    _krylov.extrapolation = RULES[rule]
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        out = call()
        times.append(time.perf_counter() - t)
    return out, float(np.median(times))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 50_000])
    p.add_argument("--families", nargs="+", default=["garnet", "local", "grid", "queue", "pendulum"])
    p.add_argument("--solve", nargs="*", default=["garnet", "queue"])
    p.add_argument("--repeat", type=int, default=3)
    a = p.parse_args(argv)
    with threadpool_limits(1):
        for n in a.sizes:
            for family in a.families:
                mdp = build_mdp(family, n)
                pi = fastppo.softmax(mdp, np.asarray(get_logits(family, n)))
                calls = {"evaluate": lambda: fastppo.evaluate(mdp, pi, n_threads=1)}
                if family in a.solve:
                    calls["solve"] = lambda: fastppo.solve(mdp, n_threads=1)
                for op, call in calls.items():
                    row = []
                    for rule in RULES:
                        out, t = run(rule, call, a.repeat)
                        extra = (f" {out.n_iter} it" if op == "solve"
                                 else f" {getattr(out, 'method', '')}")
                        row.append(f"{rule} {out.n_matvec} products{extra} {1e3 * t:.0f} ms")
                    print(f"{family:8s} {mdp.n_states:6d} {op:8s} | " + " | ".join(row), flush=True)
    _krylov.extrapolation = RULES["mid-range"]


if __name__ == "__main__":
    main()
