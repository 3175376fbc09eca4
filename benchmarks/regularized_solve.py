"""Regularized `solve` (forward KL 0.1) on the local garnet or the gridworld at 50k states,
one thread: the wall and CPU medians of a few calls, J, steps and products (issue 17,
target 4). Run it under two installs to compare commits, pinned to one core so that both
use one thread whatever their defaults::

    taskset -c 0 python benchmarks/regularized_solve.py local 3
    taskset -c 0 python benchmarks/regularized_solve.py grid 3
"""
import sys
import time

import numpy as np

import fastppo


def main(family="local", repeat=3):
    mdp = (fastppo.garnet(50_000, 10, 10, gamma=0.99, seed=0, locality=50) if family == "local"
           else fastppo.gridworld(200, 250, gamma=0.99))
    fastppo.solve(fastppo.garnet(200, 10, 10, seed=1), fastppo.ForwardKL(0.1), n_threads=1)
    times = []
    for _ in range(repeat):
        t, c = time.perf_counter(), time.process_time()
        res = fastppo.solve(mdp, fastppo.ForwardKL(0.1), n_threads=1)
        times.append((time.perf_counter() - t, time.process_time() - c))
    wall, cpu = np.median(times, axis=0)
    print(f"{family}: solve ForwardKL(0.1) wall {wall:.2f} s CPU {cpu:.2f} s, J {res.J:.12g}, "
          f"{res.n_iter} steps, {res.n_matvec} products", flush=True)


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "local", int(sys.argv[2]) if len(sys.argv) > 2 else 3)
