"""Nanoseconds per pair per inner step of the ``ppo_update`` kernel, per f-divergence.

One call of ``ppo_update`` runs K inner ascent steps over every pair (SPEC §1); this
script reports median(call time) / (n_pairs · K) for τ = 0 and for each f-divergence
(τ = 0.1, α = 0.5 for the α-divergence), both compiled backends, interleaved in one
process (backend and divergence order rotate every repeat, so that load on a shared
machine spreads over all of them). The MDP is the README's: garnet S = 50,000, A = 10,
b = 10; the policy, advantages and weights are fixed-seed (π_old = softmax of N(0, 1)
logits, Ã = N(0, 1) centred per state, weights d/(1 − γ) with d uniform, lr scaled so that
a step moves θ by O(0.1)); θ is reset before every call (outside the timing).

Run ``python benchmarks/ppo_update_ns.py`` (``--threads 2``, ``--repeat 41``,
``--states``, ``--steps`` to change; ``--backends numba``); prints one table row per
divergence in RESULTS.md's format, and the cost of ``np.exp`` per element in the same run
(about 8-9 ns on an idle AVX2 core), the yardstick that tells a loaded machine apart.
"""
import argparse
import time

import numpy as np

from fastppo import _codes
from fastppo._backend import get_kernel

from benchmarks.common import build_mdp, describe_mdp  # benchmarks/benchmarks/common.py

CASES = [("τ = 0", _codes.NONE, 0.0), ("forward KL", _codes.FORWARD_KL, 0.0),
         ("reverse KL", _codes.REVERSE_KL, 0.0), ("χ²", _codes.CHI_SQUARE, 0.0),
         ("Hellinger", _codes.HELLINGER, 0.0), ("Jensen–Shannon", _codes.JENSEN_SHANNON, 0.0),
         ("α = 0.5", _codes.ALPHA, 0.5)]
TAU = 0.1
CLOCK = time.perf_counter


def problem(n_states, seed=0):
    """(mdp, pi_old, adv, weight, ref, theta0) of the benchmark (fixed seed)."""
    mdp = build_mdp("garnet", n_states)
    rng = np.random.default_rng(seed)
    a = mdp.a_indptr
    theta0 = rng.standard_normal(mdp.n_pairs)
    counts = np.diff(a)
    states = np.repeat(np.arange(mdp.n_states), counts)
    e = np.exp(theta0 - np.maximum.reduceat(theta0, a[:-1])[states])
    pi_old = e / np.add.reduceat(e, a[:-1])[states]
    adv = rng.standard_normal(mdp.n_pairs)
    adv -= np.add.reduceat(pi_old * adv, a[:-1])[states]
    weight = np.full(mdp.n_states, 1.0 / (mdp.n_states * (1.0 - mdp.gamma)))
    ref = np.repeat(1.0 / counts, counts)
    return mdp, pi_old, adv, weight, ref, theta0


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--states", type=int, default=50_000)
    ap.add_argument("--steps", type=int, default=10, help="inner steps K per call")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeat", type=int, default=21, help="timed calls per (backend, f)")
    ap.add_argument("--backends", default="numba,cython")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time.process_time instead of wall time (less sensitive to other "
                         "processes on a shared machine; 1 thread only)")
    args = ap.parse_args(argv)
    global CLOCK
    CLOCK = time.process_time if args.cpu_time else time.perf_counter
    backends = args.backends.split(",")
    mdp, pi_old, adv, weight, ref, theta0 = problem(args.states)
    lr = 0.1 * mdp.n_states * (1.0 - mdp.gamma)  # θ moves by O(0.1) per step
    n = mdp.n_pairs
    out = dict(pi=np.empty(n), clipped=np.empty(mdp.n_states, dtype=np.int64),
               gsq=np.empty(mdp.n_states), kl=np.empty(mdp.n_states))
    theta = np.empty(n)

    def call(backend, code, alpha):
        tau = 0.0 if code == _codes.NONE else TAU
        theta[:] = theta0
        t = CLOCK()
        get_kernel("ppo_update", backend)(
            mdp.a_indptr, pi_old, adv, weight, ref, code, alpha, tau, 0.2, 0.2, 0.0, lr,
            args.steps, theta, out["pi"], out["clipped"], out["gsq"], out["kl"], args.threads)
        return CLOCK() - t

    for backend in backends:  # compile / load, and check the backends agree
        for _, code, alpha in CASES:
            call(backend, code, alpha)
    times = {(b, c[0]): [] for b in backends for c in CASES}
    x, y = np.random.default_rng(1).standard_normal(n), np.empty(n)
    exp_times = []
    for r in range(args.repeat):
        t = CLOCK()
        np.exp(x, out=y)  # the yardstick: libm's exp per element, in the same run
        exp_times.append(CLOCK() - t)
        order = [(b, c) for b in backends for c in CASES]
        shift = r % len(order)
        for backend, (name, code, alpha) in order[shift:] + order[:shift]:
            times[backend, name].append(call(backend, code, alpha))
    print(f"ppo_update on {describe_mdp('garnet', args.states)}: {n:,} pairs, K = {args.steps}, "
          f"{args.threads} thread(s), τ = {TAU} (except τ = 0), median of {args.repeat} calls, "
          f"{'CPU' if args.cpu_time else 'wall'} time")
    print("| divergence | " + " | ".join(f"{b} ns/pair/step (ms/call)" for b in backends) + " |")
    print("|---|" + "---:|" * len(backends))
    for name, _, _ in CASES:
        cells = []
        for backend in backends:
            med = float(np.median(times[backend, name]))
            cells.append(f"{med / (n * args.steps) * 1e9:.2f} ({med * 1e3:.1f})")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print(f"np.exp in the same run: {np.median(exp_times) / n * 1e9:.2f} ns per element")


if __name__ == "__main__":
    main()
