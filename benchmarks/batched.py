"""Batched evaluation (issue 14 item 5): K members at once against one ``evaluate``.

    python benchmarks/batched.py [--n-states 50000] [--families garnet] [-K 8]
                                 [--repeat 7] [--backend NAME] [--n-threads 1]

On the benchmark MDP (``benchmarks/benchmarks/common.py``: A = 10, b = 10, γ = 0.99) with
0.1·reverse KL (the asv evaluate suite's regularizer), times side by side, in one run:

- ``one``: ``evaluate(mdp, pi_0, reg)`` (one stochastic policy);
- ``K policies``: ``evaluate_batch(mdp, pis, reg)``, K stochastic policies
  (softmax of N(0, 1) logits, seeds 1 … K);
- ``K rewards``: ``evaluate_batch(mdp, pi_0, reg, r=R)``, K reward vectors
  (r + 0.1·std(r)·z, z ~ N(0, 1) per pair);
- ``K separate``: K calls of ``evaluate`` on the K policies;
- ``visitation`` and ``visitation_batch`` of the K policies;
- one product: ``bellman_matvec`` and ``bellman_matvec_batch`` on K columns.

Every repeat runs all cases once, in an order rotated per repeat (the machine is shared:
noise hits all cases alike); the table gives medians and the ratio of medians to ``one``
(to one ``visitation`` for the visitation rows, one product for the product rows).
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "benchmarks"))
from common import build_mdp, describe_mdp  # noqa: E402

import fastppo  # noqa: E402
from fastppo._backend import get_kernel, resolve_backend  # noqa: E402
from fastppo._evaluator import policy_rows  # noqa: E402
from fastppo.batched import interleaved  # noqa: E402


def cases(mdp, K, backend, n_threads):
    reg = fastppo.ReverseKL(0.1)
    opts = dict(backend=backend, n_threads=n_threads)
    pis = np.stack([fastppo.softmax(mdp, np.random.default_rng(1 + m).standard_normal(mdp.n_pairs),
                                    backend="numpy") for m in range(K)])
    z = np.random.default_rng(0).standard_normal((K, mdp.n_pairs))
    R = mdp.r + 0.1 * mdp.r.std() * z
    S = mdp.n_states
    x1, xk = np.random.default_rng(2).random(S), interleaved(S, K)
    xk[:] = np.random.default_rng(2).random((S, K))
    o1, ok = np.empty(S), np.empty((S, K))
    rows = policy_rows(mdp, pis[0])
    members = np.arange(K)
    mv, mvb = get_kernel("bellman_matvec", backend), get_kernel("bellman_matvec_batch", backend)
    a, pp, pj, pd = mdp.a_indptr, mdp.p_indptr, mdp.p_indices, mdp.p_data
    return {
        "one evaluate": (lambda: fastppo.evaluate(mdp, pis[0], reg, **opts), "one evaluate"),
        f"K={K} policies": (lambda: fastppo.evaluate_batch(mdp, pis, reg, **opts), "one evaluate"),
        f"K={K} rewards": (lambda: fastppo.evaluate_batch(mdp, pis[0], reg, r=R, **opts),
                           "one evaluate"),
        f"K={K} separate evaluates": (lambda: [fastppo.evaluate(mdp, p, reg, **opts) for p in pis],
                                      "one evaluate"),
        "one visitation": (lambda: fastppo.visitation(mdp, pis[0], **opts), "one visitation"),
        f"visitation_batch K={K}": (lambda: fastppo.visitation_batch(mdp, pis, **opts),
                                    "one visitation"),
        "one product": (lambda: mv(*rows, mdp.gamma, x1, o1, n_threads), "one product"),
        f"batched product K={K}": (lambda: mvb(a, pp, pj, pd, pis, members, mdp.gamma, xk, ok,
                                               n_threads), "one product"),
    }, (pis, R, reg, opts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-states", type=int, default=50_000)
    ap.add_argument("--families", nargs="+", default=["garnet"])
    ap.add_argument("-K", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backend", default=None, help="default: the library's default backend")
    ap.add_argument("--n-threads", type=int, default=1)
    args = ap.parse_args()
    for family in args.families:
        mdp = build_mdp(family, args.n_states)
        backend = resolve_backend(args.backend)
        table, (pis, R, reg, opts) = cases(mdp, args.K, backend, args.n_threads)
        for func, _ in table.values():  # JIT, page-in
            func()
        times = {name: [] for name in table}
        names = list(table)
        for rep in range(args.repeat):
            for name in names[rep % len(names):] + names[:rep % len(names)]:
                t0 = time.perf_counter()
                table[name][0]()
                times[name].append(time.perf_counter() - t0)
        one = fastppo.evaluate(mdp, pis[0], reg, **opts)
        bp = fastppo.evaluate_batch(mdp, pis, reg, **opts)
        br = fastppo.evaluate_batch(mdp, pis[0], reg, r=R, **opts)
        products = {"one evaluate": f"{one.n_matvec}",
                    f"K={args.K} policies": f"{bp.n_passes} batched (members {min(bp.n_matvec)}-{max(bp.n_matvec)})",
                    f"K={args.K} rewards": f"{br.n_passes} batched (members {min(br.n_matvec)}-{max(br.n_matvec)})"}
        print(f"\n{describe_mdp(family, args.n_states)}, {mdp.p_data.shape[0]:,} transitions; "
              f"K = {args.K}, 0.1·reverse KL, backend {backend}, {args.n_threads} thread(s), "
              f"medians of {args.repeat} interleaved repeats\n")
        print("| case | median | × reference | reference | products |")
        print("|---|---|---|---|---|")
        med = {name: statistics.median(t) for name, t in times.items()}
        for name in names:
            ref = table[name][1]
            print(f"| {name} | {1e3 * med[name]:.1f} ms | {med[name] / med[ref]:.2f} | {ref} | "
                  f"{products.get(name, '')} |")


if __name__ == "__main__":
    main()
