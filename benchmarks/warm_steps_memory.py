"""Memory of the predicted warm starts (issue 16): the traced memory retained after each
PPO-Clip step and the peak inside it, with the steps in float32 (the default from
``solvers.FLOAT32_STEPS_FROM`` states on, ~5.2·10⁶; forced here at any size) and in
float64, one process.

    python benchmarks/warm_steps_memory.py --n-states 1000000 --iters 10
"""
import argparse
import time
import tracemalloc

import numpy as np

import fastppo
from fastppo import solvers


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-states", type=int, default=1_000_000)
    ap.add_argument("--iters", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    mdp = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0, dtype=np.float32)
    print(mdp, flush=True)
    default = solvers.FLOAT32_STEPS_FROM
    for label, threshold in (("float32 steps", 1), ("float64 steps", 1 << 62)):
        solvers.FLOAT32_STEPS_FROM = threshold
        tracemalloc.start()
        base = tracemalloc.get_traced_memory()[0]
        ppo = fastppo.PPOClip(mdp, fastppo.ForwardKL(0.1), n_threads=args.threads)
        print(label, flush=True)
        for _ in range(args.iters):
            tracemalloc.reset_peak()
            t0 = time.perf_counter()
            row = ppo.step()
            cur, peak = tracemalloc.get_traced_memory()
            print(f"  iter {row['iter']:2d}: passes {row['n_passes']:2d}  retained "
                  f"{(cur - base) / 2**20:8.1f} MiB  peak in step {(peak - base) / 2**20:8.1f} MiB"
                  f"  {time.perf_counter() - t0:6.1f} s", flush=True)
        tracemalloc.stop()
        del ppo
    solvers.FLOAT32_STEPS_FROM = default


if __name__ == "__main__":
    main()
