"""Nanoseconds per pair per inner step of the ``ppo_update`` kernel, per f-divergence.

One call of ``ppo_update`` runs K inner ascent steps over every pair (SPEC §1); this
script reports median(call time) / (n_pairs · K) for τ = 0 and for each f-divergence
(τ = 0.1, α = 0.5 for the α-divergence), both compiled backends, interleaved in one
process (backend and divergence order rotate every repeat, so that load on a shared
machine spreads over all of them). The MDP is the README's: garnet S = 50,000, A = 10,
b = 10; the inputs are the asv suite's (``benchmarks/benchmarks/bench_ppo_update.py``,
``common.ppo_update_inputs``: fixed seeds, some pairs clip); θ is reset before every call
(outside the timing).

Run ``python benchmarks/ppo_update_ns.py`` (``--threads 2``, ``--repeat 41``,
``--states``, ``--steps`` to change; ``--backends numba``,
``--divergences none,forward-kl``); prints one table row per
divergence in RESULTS.md's format, and the cost of ``np.exp`` per element in the same run
(about 8-9 ns on an idle AVX2 core), the yardstick that tells a loaded machine apart.
"""
import argparse
import time

import numpy as np

from benchmarks.bench_ppo_update import ppo_update_call  # benchmarks/benchmarks/
from benchmarks.common import PPO_STEPS, PPO_TAU, describe_mdp, get_mdp

CASES = [("τ = 0", "none"), ("forward KL", "forward-kl"), ("reverse KL", "reverse-kl"),
         ("χ²", "chi-square"), ("Hellinger", "hellinger"), ("Jensen–Shannon", "jensen-shannon"),
         ("α = 0.5", "alpha-0.5")]

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=50_000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=PPO_STEPS,
                    help="inner steps K per call (two runs with different K separate the "
                         "cost per step from the cost per call)")
    ap.add_argument("--repeat", type=int, default=21, help="timed calls per (backend, f)")
    ap.add_argument("--backends", default="numba,cython")
    ap.add_argument("--divergences", default=",".join(key for _, key in CASES),
                    help="comma-separated subset of: " + ", ".join(key for _, key in CASES))
    ap.add_argument("--cpu-time", action="store_true",
                    help="time.process_time instead of wall time (less sensitive to other "
                         "processes on a shared machine; 1 thread only)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.cpu_time else time.perf_counter
    backends = args.backends.split(",")
    cases = [(name, key) for name, key in CASES if key in args.divergences.split(",")]
    n = get_mdp("garnet", args.states).n_pairs
    calls = {(b, key): ppo_update_call(b, "garnet", args.states, key, args.threads, args.steps)
             for b in backends for _, key in cases}

    def timed(backend, key):
        reset, call = calls[backend, key]
        reset()
        t = clock()
        call()
        return clock() - t

    for key in calls:  # compile / load
        timed(*key)
    times = {key: [] for key in calls}
    x, y = np.random.default_rng(1).standard_normal(n), np.empty(n)
    exp_times = []
    order = list(calls)
    for r in range(args.repeat):
        t = clock()
        np.exp(x, out=y)  # the yardstick: libm's exp per element, in the same run
        exp_times.append(clock() - t)
        shift = r % len(order)
        for key in order[shift:] + order[:shift]:
            times[key].append(timed(*key))
    print(f"ppo_update on {describe_mdp('garnet', args.states)}: {n:,} pairs, K = {args.steps}, "
          f"{args.threads} thread(s), τ = {PPO_TAU} (except τ = 0), median of {args.repeat} calls, "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    print("| divergence | " + " | ".join(f"{b} ns/pair/step (ms/call)" for b in backends) + " |")
    print("|---|" + "---:|" * len(backends))
    for name, key in cases:
        cells = []
        for backend in backends:
            med = float(np.median(times[backend, key]))
            cells.append(f"{med / (n * args.steps) * 1e9:.2f} ({med * 1e3:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"np.exp in the same run: {np.median(exp_times) / n * 1e9:.2f} ns per element")


if __name__ == "__main__":
    main()
