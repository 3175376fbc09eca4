"""Convergence study of deterministic PPO-Clip (arXiv 2512.16565 has no experiments).

For each MDP, runs exact PPO-Clip with forward-KL and reverse-KL regularization over a
one-factor-at-a-time grid around (τ = 0.1, ε = 0.2, K = 10): τ ∈ {0.05, 0.1, 0.2},
ε ∈ {0.1, 0.2, 0.4}, K ∈ {1, 5, 10} (above 20,000 states, for time: forward KL τ = 0.2,
ε = 0.4, K = 1 besides the base; reverse KL the base and τ = 0.2), and writes

- ``<out>/<mdp>.png``: log10(J* − J) against the outer iteration, one line per setting;
- ``<out>/rates.csv`` (appended, one row per finished run): per line, the fitted linear rate ρ (gap_n ≈ C ρ^n, least squares
  on log gap over 1e-10 < gap < 1e-2 · gap_0), the R² of that fit (1 = a straight line),
  iterations to gap 1e-8, and the final gap and gradient norm.

Theory: forward KL converges linearly from any start (a straight line); reverse KL
converges to a stationary point with a linear rate near the optimum; larger τ and larger
ε converge faster.

Run: ``python benchmarks/convergence_study.py [--out benchmarks/convergence] [--max-states 50000]``
"""
import argparse
import csv
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

import fastppo  # noqa: E402
from benchmarks.common import build_mdp  # noqa: E402 -- benchmarks/benchmarks/common.py

BASE = dict(tau=0.1, clip=0.2, inner_steps=10)
GRID = [dict(BASE, tau=t) for t in (0.05, 0.2)] + [dict(BASE, clip=c) for c in (0.1, 0.4)] + \
       [dict(BASE, inner_steps=k) for k in (1, 5)] + [BASE]
# above LARGE states (about 1 s per iteration at 50,000): one variation per factor
LARGE = 20_000
LARGE_GRID = {"forward-kl": [BASE, dict(BASE, tau=0.2), dict(BASE, clip=0.4), dict(BASE, inner_steps=1)],
              "reverse-kl": [BASE, dict(BASE, tau=0.2)]}


def mdps(max_states):
    out = {}
    for S in (5_000, 50_000):
        if S <= max_states:
            out[f"garnet{S}"] = lambda S=S: build_mdp("garnet", S)
    try:
        import gymnasium

        out["frozenlake8x8"] = lambda: fastppo.MDP.from_gymnasium(
            gymnasium.make("FrozenLake-v1", map_name="8x8"), 0.99)
        out["taxi"] = lambda: fastppo.MDP.from_gymnasium(gymnasium.make("Taxi-v4"), 0.99)
    except ImportError:
        print("gymnasium not installed: skipping FrozenLake and Taxi")
    return out


def fitted_rate(gap):
    gap = np.asarray(gap)
    ok = np.isfinite(gap) & (gap > 1e-10) & (gap < 1e-2 * gap[0])
    n = np.flatnonzero(ok)
    if n.size < 5:
        return np.nan, np.nan
    y = np.log(gap[n])
    slope, intercept = np.polyfit(n, y, 1)
    resid = y - (slope * n + intercept)
    r2 = 1.0 - resid.var() / y.var() if y.var() > 0 else 1.0
    return float(np.exp(slope)), float(r2)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "convergence"))
    p.add_argument("--max-states", type=int, default=50_000)
    p.add_argument("--iters", type=int, default=600)
    p.add_argument("--tol", type=float, default=1e-10)
    p.add_argument("--mdps", help="comma-separated subset, e.g. garnet50000,taxi")
    p.add_argument("--large-grid", choices=["reduced", "base"], default="reduced",
                   help="settings above 20,000 states: one variation per factor, or the base only")
    args = p.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    rates = os.path.join(args.out, "rates.csv")
    rows = []
    selected = mdps(args.max_states)
    if args.mdps:
        selected = {k: v for k, v in selected.items() if k in args.mdps.split(",")}
    for name, build in selected.items():
        mdp = build()
        print(f"\n{name}: {mdp}", flush=True)
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
        for ax, reg_cls in zip(axes, (fastppo.ForwardKL, fastppo.ReverseKL)):
            optimum = {}
            grid = GRID
            if mdp.n_states > LARGE:
                grid = LARGE_GRID[reg_cls.name] if args.large_grid == "reduced" else [BASE]
            for setting in grid:
                reg = reg_cls(setting["tau"])
                t0 = time.perf_counter()
                if setting["tau"] not in optimum:
                    optimum[setting["tau"]] = fastppo.solve(mdp, reg).J
                J_star = optimum[setting["tau"]]
                ppo = fastppo.PPOClip(mdp, reg, clip=setting["clip"],
                                      inner_steps=setting["inner_steps"], reference=J_star)
                res = ppo.run(args.iters, tol=args.tol)
                h = res.history
                gap = np.maximum(h["gap"], 1e-16)
                rate, r2 = fitted_rate(h["gap"])
                hit = np.flatnonzero(h["gap"] <= 1e-8)
                label = f"τ={setting['tau']}, ε={setting['clip']}, K={setting['inner_steps']}"
                ax.semilogy(h["iter"], gap, label=f"{label} (ρ={rate:.3f})")
                rows.append(dict(mdp=name, reg=reg.name, tau=setting["tau"], clip=setting["clip"],
                                 K=setting["inner_steps"], rate=rate, r2=r2,
                                 iters_to_1e8=int(h["iter"][hit[0]]) if hit.size else -1,
                                 final_gap=float(res.gap), final_grad_norm=float(h["grad_norm"][-1]),
                                 seconds=time.perf_counter() - t0))
                print("  " + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                                       for k, v in rows[-1].items()), flush=True)
                new = not os.path.exists(rates)
                with open(rates, "a", newline="") as f:  # appended run by run: partial runs keep rows
                    writer = csv.DictWriter(f, fieldnames=list(rows[-1]))
                    if new:
                        writer.writeheader()
                    writer.writerow(rows[-1])
            ax.set_title(f"{name}: PPO-Clip, {reg_cls.__name__}")
            ax.set_xlabel("outer iteration")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=7)
        axes[0].set_ylabel("J* − J")
        fig.tight_layout()
        fig.savefig(os.path.join(args.out, f"{name}.png"), dpi=80)
        plt.close(fig)
    print(f"\nappended {len(rows)} rows to {rates}; one PNG per MDP")


if __name__ == "__main__":
    main()
