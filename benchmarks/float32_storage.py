"""Issue 16 item 1: float32 transition storage against float64, in one process.

``python benchmarks/float32_storage.py --n-states 1000000 --threads 2 --repeat 9``

Builds the garnet (A = 10, b = 10, γ = 0.99, seed 0) in both dtypes (the same MDP,
rounded), then prints: build time and the bytes of the transition arrays; the median time
of one fused product pass (``bellman_products``, both sides: one lockstep sweep) and of
one ``q_values`` pass, float64 and float32 interleaved so both see the same load; and the
exact evaluation of a softmax policy (products, time) with the distance of the float32
values to the float64 ones against the documented bound 2⁻²³ γ/(1 − γ) · max|v|.
"""
import argparse
import time

import numpy as np

import fastppo
from fastppo._backend import get_kernel, resolve_backend


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n-states", type=int, default=1_000_000)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeat", type=int, default=9)
    p.add_argument("--backend", default=None)
    args = p.parse_args()
    backend, nt = resolve_backend(args.backend), args.threads
    mdps = {}
    for dt in (np.float64, np.float32):
        t0 = time.perf_counter()
        m = fastppo.garnet(args.n_states, 10, 10, gamma=0.99, seed=0, dtype=dt)
        t = time.perf_counter() - t0
        nbytes = sum(getattr(m, n).nbytes for n in ("p_indptr", "p_indices", "p_data"))
        print(f"{np.dtype(dt).name}: {m}: built in {t:.1f} s; transition arrays "
              f"{nbytes / 2**30:.2f} GiB", flush=True)
        mdps[np.dtype(dt).name] = m
    S, L = args.n_states, mdps["float64"].n_pairs
    pi = fastppo.softmax(mdps["float64"], np.random.default_rng(1).standard_normal(L))
    x, y = np.random.default_rng(2).random(S), np.random.default_rng(3).random(S)
    outs = np.empty(S), np.empty(S), np.empty(L)
    buf = np.empty((max(2, nt), 2 * S))
    products, q_values = get_kernel("bellman_products", backend), get_kernel("q_values", backend)
    times = {name: {"products": [], "q_values": []} for name in mdps}
    for _ in range(args.repeat + 1):  # the first round warms the JIT and the caches
        for name, m in mdps.items():
            t0 = time.perf_counter()
            products(m.a_indptr, m.p_indptr, m.p_indices, m.p_data, pi, m.gamma, x, y, outs[0],
                     outs[1], np.empty(0), buf, nt)
            t1 = time.perf_counter()
            q_values(m.p_indptr, m.p_indices, m.p_data, m.r, m.gamma, x, outs[2], nt)
            t2 = time.perf_counter()
            times[name]["products"].append(t1 - t0)
            times[name]["q_values"].append(t2 - t1)
    for what in ("products", "q_values"):
        t64, t32 = (np.median(times[n][what][1:]) for n in ("float64", "float32"))
        print(f"{what:>9} ({backend}, {nt} thread(s), median of {args.repeat}): float64 "
              f"{t64 * 1e3:.1f} ms, float32 {t32 * 1e3:.1f} ms, ratio {t64 / t32:.2f}", flush=True)
    v = {}
    for name, m in mdps.items():
        t0 = time.perf_counter()
        ev = fastppo.evaluate(m, pi, backend=backend, n_threads=nt)
        d = fastppo.visitation(m, pi, backend=backend, n_threads=nt, full_output=True)
        print(f"{name}: evaluate {ev.n_matvec} products ({ev.method}), visitation "
              f"{d.n_matvec} ({d.method}); {time.perf_counter() - t0:.1f} s", flush=True)
        v[name] = ev.v
    g = 0.99
    gap = np.abs(v["float32"] - v["float64"]).max()
    bound = 2.0 ** -23 * g / (1 - g) * np.abs(v["float64"]).max()
    print(f"max |v32 - v64| = {gap:.3e}, bound 2^-23 γ/(1-γ) max|v| = {bound:.3e} "
          f"(max|v| = {np.abs(v['float64']).max():.3f})")


if __name__ == "__main__":
    main()
