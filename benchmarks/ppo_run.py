"""Iterations and seconds for exact PPO-Clip to reach a gap of 1e-8, per backend.

Garnet S = 50,000, A = 10, b = 10, γ = 0.99, forward KL τ = 0.1, ε = 0.2, K = 10,
default scale-free step. Also runs the numba backend without warm starts to count the
products warm starts save. Run: ``python benchmarks/ppo_run.py [--n-states 50000]``.
"""
import argparse
import time

import numpy as np

import fastppo
from benchmarks.common import build_mdp  # benchmarks/benchmarks/common.py


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--n-states", type=int, default=50_000)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--backends", default="numba,cython,numpy")
    p.add_argument("--per-iteration", type=int, metavar="N",
                   help="only time N outer iterations per backend at 1 and 2 threads (median)")
    args = p.parse_args()
    mdp = build_mdp("garnet", args.n_states)
    reg = fastppo.ForwardKL(0.1)
    print(f"{mdp}; ForwardKL(0.1), clip 0.2, K=10; threads={args.threads or 'default'}")
    t0 = time.perf_counter()
    opt = fastppo.solve(mdp, reg, n_threads=args.threads)
    print(f"solve: J*={opt.J:.12g}, {opt.n_iter} PI steps, {opt.n_matvec} products, "
          f"{time.perf_counter() - t0:.2f} s")
    fastppo.PPOClip(fastppo.garnet(200, 10, 10, seed=1), reg).run(2)  # JIT warm-up
    if args.per_iteration:
        print(f"{'backend':>8} {'threads':>7} {'median ms/iteration':>20} (over iterations 2..{args.per_iteration + 1})")
        for backend in args.backends.split(","):
            for nt in (1, 2):
                ppo = fastppo.PPOClip(mdp, reg, backend=backend, n_threads=nt)
                h = ppo.run(args.per_iteration + 1).history
                print(f"{backend:>8} {nt:>7} {np.median(h['seconds'][1:]) * 1e3:>20.0f}", flush=True)
        return
    runs = [(b, True) for b in args.backends.split(",")] + [("numba", False)]
    print(f"{'backend':>8} {'warm':>5} {'iters':>6} {'seconds':>8} {'ms/iter':>8} "
          f"{'products':>9} {'prod/iter':>9} {'final gap':>10}")
    for backend, warm in runs:
        ppo = fastppo.PPOClip(mdp, reg, reference=opt.J, backend=backend, n_threads=args.threads,
                              warm_start=warm)
        t0 = time.perf_counter()
        res = ppo.run(2000, tol=1e-8)
        sec = time.perf_counter() - t0
        h = res.history
        print(f"{backend:>8} {str(warm):>5} {res.n_iter:>6} {sec:>8.1f} {sec / res.n_iter * 1e3:>8.0f} "
              f"{h['n_matvec'].sum():>9} {h['n_matvec'].mean():>9.1f} {res.gap:>10.2e}", flush=True)
        if backend == "numba" and warm:
            late = h["n_matvec"][-20:].mean()
            print(f"{'':>8} products per iteration: first {h['n_matvec'][0]}, last 20 mean {late:.1f}")
            gap = np.maximum(h["gap"], 1e-300)
            ok = (gap < 1e-2 * gap[0]) & (gap > 1e-10)
            n = np.flatnonzero(ok)
            if n.size > 5:
                print(f"{'':>8} fitted linear rate (1e-10 < gap < 1e-2 gap0): "
                      f"{np.exp(np.polyfit(n, np.log(gap[n]), 1)[0]):.4f} per iteration")


if __name__ == "__main__":
    main()
