"""Batched evaluation (issue 14 item 5): K members at once against one ``evaluate``.

    python benchmarks/batched.py [--n-states 50000] [--families garnet] [-K 8]
                                 [--repeat 7] [--backend NAME] [--n-threads 1]
                                 [--breakdown]

On the benchmark MDP (``benchmarks/benchmarks/common.py``: A = 10, b = 10, γ = 0.99) with
0.1·reverse KL (the asv evaluate suite's regularizer), times side by side, in one run:

- ``one``: ``evaluate(mdp, pi_0, reg)`` (one stochastic policy);
- ``K policies``: ``evaluate_batch(mdp, pis, reg)``, K stochastic policies
  (softmax of N(0, 1) logits, seeds 1 … K);
- ``K rewards``: ``evaluate_batch(mdp, pi_0, reg, r=R)``, K reward vectors
  (r + 0.1·std(r)·z, z ~ N(0, 1) per pair);
- ``K separate``: K calls of ``evaluate`` on the K policies;
- ``visitation`` and ``visitation_batch`` of the K policies;
- one product: ``bellman_matvec``, ``bellman_matvec_batch`` on K columns (K policies) and
  ``bellman_matvec_shared`` on K columns (one policy's P_π entries, ``shared_weights``).

Every repeat runs all cases once, in an order rotated per repeat (the machine is shared:
noise hits all cases alike); the table gives medians and the ratio of medians to ``one``
(to one ``visitation`` for the visitation rows, one product for the product rows).

``--breakdown``: where the time of ``evaluate_batch`` goes, in CPU time of the calling
thread (``time.thread_time``, one thread; less sensitive than wall time to the other
processes of a shared machine), medians of the interleaved repeats: the whole calls, one
product of each kind (× the passes each call made), the input checks, the regularized
rewards c_m = r_{m,π_m} − τ D_f(π_m), the Q̃ and Ã tables, and the vector operations of one
Richardson sweep on the (S, K) iterate as ``fastppo.batched._sweeps`` runs them (× the
sweeps).
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
from fastppo import _validation  # noqa: E402
from fastppo import batched as _batched  # noqa: E402
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
    # (in this thread's scratch, which evaluate_batch of the same policy refills alike)
    mvs, shared = (get_kernel("bellman_matvec_shared", backend),
                   _batched._Members(mdp, pis[:1], backend, n_threads).shared_rows())
    os_ = interleaved(S, K)
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
        f"shared product K={K}": (lambda: mvs(*shared, mdp.gamma, xk, os_, n_threads), "one product"),
    }, (pis, R, reg, opts)


def breakdown(mdp, K, backend, n_threads, repeat):
    """Print the CPU-time breakdown of ``evaluate_batch`` (module docstring)."""
    (table, (pis, R, reg, opts)) = cases(mdp, K, backend, n_threads)
    S, gamma = mdp.n_states, mdp.gamma
    code, alpha, tau, ref = _batched.regularizer_args(mdp, reg)
    one_pi = pis[:1]
    x, b, ax = interleaved(S, K), np.random.default_rng(3).random((S, K)), interleaved(S, K)
    x[:] = np.random.default_rng(4).random((S, K))
    stats, shift = np.empty((4, K)), gamma / (1.0 - gamma)
    residual_kernel = get_kernel("sweep_residual_batch", backend)
    update_kernel = get_kernel("sweep_update_batch", backend)

    def sweep_vector_ops():  # as fastppo.batched._sweeps, one sweep of K members
        residual_kernel(b, ax, stats, n_threads)  # (ax drifts call to call, harmlessly)
        np.sqrt(stats[0])
        update_kernel(x, ax, shift * (stats[3] / x.shape[0]), n_threads)

    q, adv = np.empty((K, mdp.n_pairs)), np.empty((K, mdp.n_pairs))
    vt = interleaved(S, K)
    vt[:] = np.random.default_rng(5).random((S, K))
    r_of = np.arange(K, dtype=np.int64)
    qk, ak = get_kernel("q_values_batch", backend), get_kernel("advantages", backend)

    def q_adv():
        qk(mdp.p_indptr, mdp.p_indices, mdp.p_data, pis, r_of, gamma, vt, q, n_threads)
        for m in range(K):
            ak(mdp.a_indptr, pis[m], q[m], adv[m], n_threads)

    mem_one = _batched._Members(mdp, one_pi, backend, n_threads)
    prod_one = mem_one.batch_product(False, list(range(K)))
    parts = {
        "one evaluate": table["one evaluate"][0],
        f"K={K} policies": table[f"K={K} policies"][0],
        f"K={K} rewards": table[f"K={K} rewards"][0],
        "one product": table["one product"][0],
        "batched product, K policies": table[f"batched product K={K}"][0],
        "batched product, one policy": lambda: prod_one(x, ax),
        "P_π entries of one policy": lambda: _batched._Members(
            mdp, one_pi, backend, n_threads).shared_rows(),
        "checks of K policies": lambda: _validation.policy_batch(mdp, pis),
        "checks of K rewards": lambda: _validation.reward_batch(mdp, R),
        "c_m of K policies": lambda: _batched._regularized_rewards(
            mdp, pis, None, ref, code, alpha, tau, backend, n_threads),
        "c_m of one policy, K rewards": lambda: _batched._regularized_rewards(
            mdp, one_pi, R, ref, code, alpha, tau, backend, n_threads),
        "Q and A tables of K members": q_adv,
        "vector ops of one sweep": sweep_vector_ops,
    }
    for f in parts.values():
        f()
    times = {name: [] for name in parts}
    names = list(parts)
    for rep in range(repeat):
        for name in names[rep % len(names):] + names[:rep % len(names)]:
            t0 = time.thread_time()
            parts[name]()
            times[name].append(time.thread_time() - t0)
    med = {name: 1e3 * statistics.median(t) for name, t in times.items()}
    one = fastppo.evaluate(mdp, pis[0], reg, **opts)
    bp = fastppo.evaluate_batch(mdp, pis, reg, **opts)
    br = fastppo.evaluate_batch(mdp, pis[0], reg, r=R, **opts)
    print(f"\nCPU time (thread_time) of the parts, medians of {repeat} interleaved repeats, "
          f"backend {backend}, {n_threads} thread(s); products: one evaluate {one.n_matvec}, "
          f"K policies {bp.n_passes} passes, K rewards {br.n_passes} passes\n")
    print("| part | ms | × one product |")
    print("|---|---|---|")
    for name, t in med.items():
        print(f"| {name} | {t:.1f} | {t / med['one product']:.2f} |")
    for label, total, n_passes, product, extra in (
            ("one evaluate", med["one evaluate"], one.n_matvec, med["one product"], 0.0),
            (f"K={K} policies", med[f"K={K} policies"], bp.n_passes,
             med["batched product, K policies"],
             med["checks of K policies"] + med["c_m of K policies"]
             + med["Q and A tables of K members"] + bp.n_passes * med["vector ops of one sweep"]),
            (f"K={K} rewards", med[f"K={K} rewards"], br.n_passes,
             med["batched product, one policy"],
             med["checks of K rewards"] + med["c_m of one policy, K rewards"] + med["P_π entries of one policy"]
             + med["Q and A tables of K members"] + br.n_passes * med["vector ops of one sweep"])):
        print(f"\n{label}: {total:.0f} ms = products {n_passes} × {product:.1f} = "
              f"{n_passes * product:.0f} ms ({n_passes * product / total:.0%})"
              + (f" + listed parts {extra:.0f} ms ({extra / total:.0%})" if extra else "")
              + f" + the rest {total - n_passes * product - extra:.0f} ms; "
              f"× one evaluate {total / med['one evaluate']:.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--n-states", type=int, default=50_000)
    ap.add_argument("--families", nargs="+", default=["garnet"])
    ap.add_argument("-K", type=int, default=8)
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--backend", default=None, help="default: the library's default backend")
    ap.add_argument("--n-threads", type=int, default=1)
    ap.add_argument("--breakdown", action="store_true",
                    help="CPU-time breakdown of evaluate_batch instead of the table")
    args = ap.parse_args()
    for family in args.families:
        mdp = build_mdp(family, args.n_states)
        backend = resolve_backend(args.backend)
        if args.breakdown:
            print(describe_mdp(family, args.n_states))
            breakdown(mdp, args.K, backend, args.n_threads, args.repeat)
            continue
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
