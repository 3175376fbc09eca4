"""Strong scaling of fastppo.distributed (issue 16 item 4).

    python benchmarks/mpi_scaling.py make FILE [N_STATES]          # one process: write a garnet
    mpiexec -n R python benchmarks/mpi_scaling.py run FILE [REPEAT]  # time it on R ranks

``run`` times, on the MDP in FILE (a garnet A = 10, b = 10, γ = 0.99 by default): one
product pair (I − γP_π)x and (I − γP_πᵀ)y (the work of one lockstep Richardson sweep), an
exact evaluation + visitation of the uniform policy, and one warm-started PPO-Clip outer
iteration (3rd), each the median of REPEAT runs, barrier-synchronised, timed on rank 0.
It prints the bytes each rank moves per product (the MPI payloads, not the wire traffic
of MPICH's algorithms). Threads per rank: FASTPPO_NUM_THREADS (and NUMBA_NUM_THREADS at least as many).
"""
import sys
import time

import numpy as np


def make(path, n_states):
    import fastppo

    fastppo.garnet(n_states, 10, 10, gamma=0.99, seed=0).save(path)


def run(path, repeat):
    import fastppo
    from fastppo import distributed as D

    M = D.DistributedMDP.load(path)
    comm, R = M.comm, M.size
    reg = fastppo.ReverseKL(0.01)
    E = D._evaluator(M, reg, None, None, 1e-10)
    pi = M._block.uniform_policy()
    E.load(pi)
    x = np.random.default_rng(M.rank).random(M.n_local)
    a, b = np.empty(M.n_local), np.empty(M.n_local)

    def timed(f):
        ts = []
        for _ in range(repeat):
            comm.Barrier()
            t0 = time.perf_counter()
            f()
            comm.Barrier()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts))

    E.products(x, x, a, b)  # warm the JIT
    t_prod = timed(lambda: E.products(x, x, a, b))
    t_eval = timed(lambda: E.evaluation_and_visitation(M.rho))
    run = D.PPOClip(M, reg, lin_tol=1e-10)
    run.run(2)
    t_ppo = timed(run.step)
    n_mv = int(run.history["n_matvec"][-1])
    plain = ""
    if R == 1:  # the same products by fastppo's own Evaluator, no MPI
        from fastppo._evaluator import Evaluator

        mdp = fastppo.MDP.load(path, mmap_mode="r")
        P = Evaluator(mdp, reg, E.backend, E.n_threads)
        P.load(mdp.uniform_policy())
        P.products(x, x, a, b)
        plain = f"  (fastppo.Evaluator, no MPI: product pair {timed(lambda: P.products(x, x, a, b)) * 1e3:.2f} ms)"
    S, n = M.n_states, M.n_local
    moved = 8 * (S - n) * 2  # Allgatherv receives the other blocks; Reduce_scatter sends them
    if M.rank == 0:
        print(f"R={R} threads/rank={E.n_threads} S={S:,} nnz={M.nnz:,}  "
              f"product pair {t_prod * 1e3:.2f} ms  eval+visit {t_eval * 1e3:.1f} ms  "
              f"PPO-Clip iteration {t_ppo * 1e3:.1f} ms ({n_mv} products)  "
              f"bytes moved per product pair per rank {moved / 1e6:.2f} MB{plain}")


if __name__ == "__main__":
    if sys.argv[1] == "make":
        make(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200_000)
    else:
        run(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 7)
