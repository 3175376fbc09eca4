"""Issue 17, target 1: what one product costs, per entry of P, in one process.

Usage (from the repository root)::

    python benchmarks/issue17_products.py [--n-states 10000] [--repeat 15] [--other SO]

On ``fastppo.garnet(S, 10, 10, gamma=0.99, seed=0)`` and the issue's policy
(π = softmax(θ), θ ~ N(0, 1)): SciPy's CSR products with the assembled I − γP_π and its
transpose (``A @ x``, ``Aᵀ @ x``; issue17.py's bicgstab runs on them), and fastppo's
``bellman_matvec`` / ``bellman_rmatvec`` on both compiled backends with P's column indices
as int32 and as uint16 (``Transitions.narrow_indices``), one thread. ``--other``: also the
products of another build's ``linear`` extension module (a path to its .so), e.g. main's.

A solve runs its products back to back on the same P, so each round times the last 8 of
10 consecutive calls of one contender (thread time); rounds interleave the contenders, and
the medians over ``--repeat`` rounds are printed, in ms and ns per entry of P (S·A·b).
"""
import argparse
import importlib.util
import time

import numpy as np
import scipy.sparse as sp

import fastppo
from fastppo._backend import get_kernel

BURST, WARM = 10, 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-states", type=int, default=10_000)
    ap.add_argument("--repeat", type=int, default=15)
    ap.add_argument("--other", help="path of another build's linear extension module")
    args = ap.parse_args(argv)
    S = args.n_states
    mdp = fastppo.garnet(S, 10, 10, gamma=0.99, seed=0)
    pi = fastppo.softmax(mdp, np.random.default_rng(1).standard_normal(mdp.n_pairs))
    P = sp.csr_array((mdp.p_data, mdp.p_indices, mdp.p_indptr), shape=(mdp.n_pairs, S))
    Pi = sp.csr_array((pi, np.arange(mdp.n_pairs), mdp.a_indptr), shape=(S, mdp.n_pairs))
    A = (sp.eye_array(S, format="csr") - mdp.gamma * (Pi @ P)).tocsr()
    At = A.T.tocsr()
    x = np.random.default_rng(2).standard_normal(S)
    out, buf = np.empty(S), np.empty((2, 2 * S))
    wide = (mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data, pi, mdp.gamma)
    indices = {"int32": wide}
    narrow = mdp._transitions.narrow_indices(S)
    if narrow is not None:
        indices["uint16"] = (*wide[:2], narrow, *wide[3:])
    runs = {"scipy A @ x": lambda: A @ x, "scipy At @ x": lambda: At @ x}
    for which in ("cython", "numba"):
        mv, rmv = get_kernel("bellman_matvec", which), get_kernel("bellman_rmatvec", which)
        for tag, rows in indices.items():
            runs[f"{which} matvec {tag}"] = lambda mv=mv, rows=rows: mv(*rows, x, out, 1)
            runs[f"{which} rmatvec {tag}"] = lambda rmv=rmv, rows=rows: rmv(*rows, x, out, buf, 1)
    if args.other:
        spec = importlib.util.spec_from_file_location("linear", args.other)
        other = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(other)
        runs["other matvec int32"] = lambda: other.bellman_matvec(*wide, x, out, 1)
        runs["other rmatvec int32"] = lambda: other.bellman_rmatvec(*wide, x, out, buf, 1)
    times = {name: [] for name in runs}
    for _ in range(args.repeat):
        for name, f in runs.items():
            for _ in range(WARM):
                f()
            t = time.thread_time_ns()
            for _ in range(BURST - WARM):
                f()
            times[name].append((time.thread_time_ns() - t) / (BURST - WARM))
    nnz = mdp.p_indices.shape[0]
    print(f"garnet S={S:,}: {nnz:,} entries of P, {A.nnz:,} of A; one thread, "
          f"medians of {args.repeat} rounds")
    for name, t in times.items():
        m = float(np.median(t))
        print(f"  {name:24s} {m / 1e6:8.3f} ms  {m / nnz:6.3f} ns per entry")


if __name__ == "__main__":
    main()
