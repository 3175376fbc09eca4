"""A solver inside a pipeline: warm-started ``solve`` after a small reward change, and the
cost of ``MDP.with_rewards`` against rebuilding the MDP and against one evaluation.

    python benchmarks/warm_start.py [--sizes 50000] [--families garnet local grid]
                                    [--change additive multiplicative] [--timing-size 20000]
                                    [--repeat 7]

**Warm starts** (products, deterministic, so no repeats): for each MDP of the benchmark
families (``benchmarks/benchmarks/common.py``) and each regularizer (none, 0.1·reverse KL),
``old = solve(mdp)``, then the rewards change by 1 %:

- ``additive``: r + 0.01·std(r)·z, z ~ N(0, 1) per pair (every pair moves by 1 % of the
  reward spread);
- ``multiplicative``: r·(1 + 0.01·z) (every reward moves by 1 % of itself; zero rewards
  stay zero);

and ``new = mdp.with_rewards(r')`` is solved cold, warm from ``v0=old.v``, warm from
``pi0=old.policy``, and warm from both. ``floor`` is one exact evaluation (tol 1e-13, as
``solve``'s last one) of the new optimal policy started from ``old.v``: what a warm start
that guessed the new policy outright would still pay. ``GMRES floor``: the same
evaluation by GMRES without restarts (a basis of up to 300 vectors), which minimises the
residual over the Krylov space of old.v: no method built from products with I − γP_π
and started from ``old.v`` reaches 1e-13 in fewer products. Ratios are warm / cold
products.

**with_rewards** (times, medians of ``--repeat`` interleaved runs): ``mdp.with_rewards(r)``,
``MDP(...)`` rebuilt from the same arrays (every array checked and copied), and one
``evaluate`` of the uniform policy (numba, one thread), on the garnet of ``--timing-size``
states.
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

REGS = {"none": None, "reverse-kl-0.1": fastppo.ReverseKL(0.1)}
GMRES_BASIS = 300  # GMRES floor: the Krylov basis kept before a restart


def changed(mdp, kind, seed=1):
    z = np.random.default_rng(seed).standard_normal(mdp.n_pairs)
    if kind == "additive":
        return mdp.with_rewards(mdp.r + 0.01 * mdp.r.std() * z)
    if kind == "multiplicative":
        return mdp.with_rewards(mdp.r * (1.0 + 0.01 * z))
    raise ValueError(kind)


def warm_rows(sizes, families, kinds):
    print("| S | family | change | reg | cold | v0 | pi0 | v0 + pi0 | floor | GMRES floor |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for n in sizes:
        for family in families:
            mdp = build_mdp(family, n)
            for reg_name, reg in REGS.items():
                old = fastppo.solve(mdp, reg)
                for kind in kinds:
                    new = changed(mdp, kind)
                    cold = fastppo.solve(new, reg)
                    runs = {"v0": dict(v0=old.v), "pi0": dict(pi0=old.policy),
                            "both": dict(v0=old.v, pi0=old.policy)}
                    cells = []
                    for kw in runs.values():
                        warm = fastppo.solve(new, reg, **kw)
                        err = float(np.max(np.abs(warm.v - cold.v)) / np.max(np.abs(cold.v)))
                        assert err < 1e-10, err
                        cells.append(f"{warm.n_matvec} ({warm.n_matvec / cold.n_matvec:.2f})")
                    floor = fastppo.evaluate(new, cold.policy, reg, v0=old.v, tol=1e-13).n_matvec
                    # the fewest products of any Krylov method from old.v (GMRES minimises
                    # the residual over the Krylov space; unrestarted below GMRES_BASIS)
                    gm = fastppo.evaluate(new, cold.policy, reg, v0=old.v, tol=1e-13,
                                          method="gmres", restart=GMRES_BASIS).n_matvec
                    print(f"| {n:,} | {family} | {kind} | {reg_name} | {cold.n_matvec} "
                          f"({cold.n_iter} it) | {' | '.join(cells)} | {floor} "
                          f"({floor / cold.n_matvec:.2f}) | {gm} ({gm / cold.n_matvec:.2f}) |",
                          flush=True)


def timing(n, repeat):
    mdp = build_mdp("garnet", n)
    r = mdp.r + 0.01
    pi = mdp.uniform_policy()
    ops = {
        "with_rewards": lambda: mdp.with_rewards(r),
        "MDP(...) rebuilt": lambda: fastppo.MDP(mdp.a_indptr, mdp.a_indices, mdp.p_indptr,
                                                mdp.p_indices, mdp.p_data, r, mdp.gamma, mdp.rho),
        "evaluate (numba, 1 thread)": lambda: fastppo.evaluate(mdp, pi, backend="numba",
                                                               n_threads=1),
    }
    for op in ops.values():
        op()  # compile / warm
    times = {name: [] for name in ops}
    for _ in range(repeat):
        for name, op in ops.items():
            t0 = time.perf_counter()
            op()
            times[name].append(time.perf_counter() - t0)
    print(f"\n{describe_mdp('garnet', n)}: nnz = {mdp.p_data.size:,}, median of {repeat}")
    print("| operation | ms |\n|---|---|")
    for name, t in times.items():
        print(f"| {name} | {1e3 * statistics.median(t):.3g} |")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", type=int, nargs="+", default=[50_000])
    p.add_argument("--families", nargs="+", default=["garnet", "local", "grid"])
    p.add_argument("--change", nargs="+", default=["additive", "multiplicative"])
    p.add_argument("--timing-size", type=int, default=20_000)
    p.add_argument("--repeat", type=int, default=7)
    args = p.parse_args(argv)
    warm_rows(args.sizes, args.families, args.change)
    if args.timing_size:
        timing(args.timing_size, args.repeat)


if __name__ == "__main__":
    main()
