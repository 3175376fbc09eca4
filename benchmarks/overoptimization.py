"""The over-optimization curve of RLHF (Gao et al. 2022), computed exactly on a token MDP.

    python benchmarks/overoptimization.py [--out docs/overoptimization.png]

A token MDP (γ = 1, outcome reward with interaction terms: the gold reward), preference
pairs sampled from π_ref and labelled by Bradley–Terry on the gold reward, a linear proxy
fitted to them (``fastppo.reward_model``: token counts and length, which cannot represent
the interactions). Then, with no sampling:

* the proxy's KL-regularized optimum π_τ = argmax_π J_proxy(π) − τ Σ_s n^π(s) KL(π‖π_ref)
  for τ on a log grid (:func:`fastppo.solve` on the proxy MDP);
* the iterates of exact PPO-Clip (:class:`fastppo.PPOClip`) on the proxy at the smallest τ,
  from π_ref;

each at x = √(Σ_s n^π(s) KL(π(·|s) ‖ π_ref(·|s))) (n^π the expected visits per episode:
the square root of the response-level KL, Gao et al.'s x-axis), with its gold and proxy
returns Σ_p ρ(p) V^π(p) (plain rewards) measured from π_ref's. Prints the table and saves
the plot.
"""
import argparse
import time

import numpy as np

import fastppo
from fastppo import reward_model


def response_kl(mdp, pi, ref):
    """Σ_s n^π(s) KL(π(·|s) ‖ π_ref(·|s)): the expected KL of a whole response."""
    n = fastppo.visitation(mdp, pi, full_output=True).visits
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(pi > 0, pi * np.log(pi / ref), 0.0)
    return float(n @ np.add.reduceat(terms, mdp.a_indptr[:-1]))


def point(task, proxy, pi):
    """(√KL, gold return, proxy return) of a flat policy."""
    return (np.sqrt(max(response_kl(task.mdp, pi, task.ref), 0.0)),
            fastppo.evaluate(task.mdp, pi).J, fastppo.evaluate(proxy.mdp, pi).J)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab", type=int, default=4)
    parser.add_argument("--max-len", type=int, default=6)
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--interaction", type=float, default=3.0,
                        help="std of the gold reward's interaction terms (outside the proxy's span)")
    parser.add_argument("--pairs", type=int, default=500, help="preference pairs")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ppo-iters", type=int, default=400)
    parser.add_argument("--out", default="docs/overoptimization.png")
    args = parser.parse_args()

    t0 = time.perf_counter()
    task = fastppo.token_mdp(args.vocab, args.max_len, args.prompts, seed=args.seed,
                             interaction=args.interaction)
    prefs = reward_model.preference_pairs(task, task.ref, args.pairs, seed=args.seed)
    fit = reward_model.fit_proxy(task, prefs)
    proxy = task.with_reward(fit.reward)
    mdp, ref = task.mdp, np.asarray(task.ref)
    print(f"{task}; {args.pairs} preference pairs from pi_ref, proxy accuracy "
          f"{fit.accuracy:.3f} on them")
    _, gold0, proxy0 = point(task, proxy, ref)
    gold_star = fastppo.solve(mdp).J
    print(f"pi_ref: gold {gold0:.4f}, proxy {proxy0:.4f}; best gold return {gold_star:.4f}\n")

    taus = np.geomspace(0.02, 5.0, 19)
    curve = []
    print("| tau | sqrt(KL) | gold - gold(pi_ref) | proxy - proxy(pi_ref) |")
    print("|---|---|---|---|")
    for tau in taus[::-1]:
        opt = fastppo.solve(proxy.mdp, fastppo.ReverseKL(tau, ref=task.ref))
        x, g, p = point(task, proxy, mdp.to_pairs(opt.policy))
        curve.append((tau, x, g - gold0, p - proxy0))
        print(f"| {tau:.3g} | {x:.3f} | {g - gold0:+.4f} | {p - proxy0:+.4f} |")
    curve = np.array(curve)

    ppo = fastppo.PPOClip(proxy.mdp, fastppo.ReverseKL(taus[0], ref=task.ref))
    iterates = [point(task, proxy, ppo.pi)]

    def record(method, row):
        iterates.append(point(task, proxy, method.pi))

    ppo.run(args.ppo_iters, callback=record)
    iterates = np.array(iterates)
    iterates[:, 1:] -= (gold0, proxy0)
    best = int(np.argmax(curve[:, 2]))
    print(f"\nthe gold return peaks at tau = {curve[best, 0]:.3g} (sqrt(KL) = {curve[best, 1]:.3f}, "
          f"+{curve[best, 2]:.4f}); at tau = {taus[0]:.3g}: {curve[-1, 2]:+.4f} gold for "
          f"{curve[-1, 3]:+.4f} proxy")
    print(f"PPO-Clip on the proxy (tau = {taus[0]:.3g}), {args.ppo_iters} iterations: sqrt(KL) "
          f"{iterates[-1, 0]:.3f}, gold {iterates[-1, 1]:+.4f}, proxy {iterates[-1, 2]:+.4f}; "
          f"its gold peak {iterates[:, 1].max():+.4f} at sqrt(KL) = "
          f"{iterates[int(np.argmax(iterates[:, 1])), 0]:.3f}")
    print(f"({time.perf_counter() - t0:.1f} s)")

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    ax.plot(curve[:, 1], curve[:, 3], "o-", color="tab:blue", ms=3,
            label="proxy, KL-regularized optimum (τ varies)")
    ax.plot(curve[:, 1], curve[:, 2], "o-", color="tab:orange", ms=3,
            label="gold, KL-regularized optimum (τ varies)")
    ax.plot(iterates[:, 0], iterates[:, 2], "--", color="tab:blue", lw=1,
            label=f"proxy, PPO-Clip iterates (τ = {taus[0]:g})")
    ax.plot(iterates[:, 0], iterates[:, 1], "--", color="tab:orange", lw=1,
            label=f"gold, PPO-Clip iterates (τ = {taus[0]:g})")
    ax.axhline(0.0, color="gray", lw=0.5)
    ax.set_xlabel("√(Σ_s n(s) KL(π(·|s) ‖ π_ref(·|s)))")
    ax.set_ylabel("return − return of π_ref")
    ax.set_title(f"Over-optimization, exact: token MDP (V={task.vocab}, L={task.max_len}, "
                 f"{task.n_prompts} prompts)", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
