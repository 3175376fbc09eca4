"""The README's sample-based tables: SampledPPO's variants against their own exact targets.

    python benchmarks/sampled_targets.py [--iters 200] [--seed 0]

Part 1, a 30-state garnet (γ = 0.9), τ = 0.5: where each KL placement (and an entropy
bonus) converges, measured by the d-weighted total variation to its own target
(``fastppo.sampled_target``) and, for comparison, to the reverse-KL optimum of
``fastppo.solve``: of the last iterate, and (in brackets) of the policy averaged over the
last half of the run, which removes most of the constant-step noise. Part 2: the advantage forms' gap to the optimum (their target at
τ = 0 and with k1 in the reward). Part 3: a token MDP (prompts, tokens, EOS, outcome
reward, bigram π_ref) with PPO, GRPO, Dr. GRPO and RLOO as practised. Default settings
unless stated; one seed; the time is the whole run (targets included) on one core.
"""
import argparse
import time

import numpy as np

import fastppo


def run(mdp, reg, iters, seed, **kw):
    """(SampledPPO, RunResult, seconds, the policy averaged over the last half of the run)."""
    t0 = time.perf_counter()
    ppo = fastppo.SampledPPO(mdp, reg, seed=seed, **kw)
    avg = np.zeros(mdp.n_pairs)

    def accumulate(method, row):
        if row["iter"] > iters - iters // 2:
            avg[:] += method.pi / (iters // 2)

    res = ppo.run(iters, callback=accumulate)
    return ppo, res, time.perf_counter() - t0, avg


def fmt(x, pct=False):
    if x is None or not np.isfinite(x):
        return "—"
    return f"{100 * x:.2g} %" if pct else f"{x:.2g}"


def garnet_placements(iters, seed):
    mdp = fastppo.garnet(30, 4, 3, gamma=0.9, seed=0)
    reg = fastppo.ReverseKL(0.5)
    opt = fastppo.solve(mdp, reg)
    rows = [("k1 in the reward (InstructGPT)", {}),
            ("k2 in the loss", dict(kl_estimator="k2", kl_penalty="loss")),
            ("k3 in the loss (GRPO)", dict(kl_estimator="k3", kl_penalty="loss")),
            ("k1 in the loss", dict(kl_estimator="k1", kl_penalty="loss")),
            ("k1 in the reward + entropy bonus 0.05", dict(ent_coef=0.05)),
            ("k3 in the reward", dict(kl_estimator="k3"))]
    print(f"garnet(30, 4, 3, gamma=0.9, seed=0), ReverseKL(0.5), {iters} iterations, seed {seed}\n")
    print("| KL placement | target | TV to own target | TV to reverse-KL optimum | (J* − J)/J* |")
    print("|---|---|---|---|---|")
    for name, kw in rows:
        ppo, res, sec, avg = run(mdp, reg, iters, seed, **kw)
        t = ppo.target
        what = "none: " + ppo.target_note.split(":")[1].split(",")[0].strip() if t is None else (
            f"{t.kind} ({t.divergence}, τ = {t.tau:.3g})" if t.kind == "fixed point" else
            "optimum, " + ("plain" if t.divergence == "none" else "regularized"))
        own = "—" if t is None else (f"{fmt(res.history['tv_target'][-1])} "
                                     f"({fmt(fastppo.tv_distance(mdp, avg, t))})")
        tv_opt = (f"{fmt(fastppo.tv_distance(mdp, res.policy, opt.policy))} "
                  f"({fmt(fastppo.tv_distance(mdp, avg, opt.policy))})")
        print(f"| {name} | {what} | {own} | {tv_opt} | "
              f"{fmt((opt.J - res.J) / abs(opt.J), pct=True)} |")


def garnet_advantages(iters, seed):
    mdp = fastppo.garnet(30, 4, 3, gamma=0.9, seed=0)
    print(f"\ngarnet(30, 4, 3, gamma=0.9, seed=0), {iters} iterations, seed {seed}: "
          f"(J* − J)/J* (TV to the target)\n")
    print("| advantage | τ = 0 | τ = 0.5, k1 in the reward |")
    print("|---|---|---|")
    for adv, kw in [("gae", {}), ("grpo", {}), ("dr_grpo", {}), ("rloo", {}),
                    ("dr_grpo", dict(advantage_level="sequence")),
                    ("reinforce", dict(lr=0.05))]:
        cells = []
        for reg in (None, fastppo.ReverseKL(0.5)):
            J_star = fastppo.solve(mdp, reg).J
            ppo, res, _, _ = run(mdp, reg, iters, seed, advantage=adv, **kw)
            if ppo.target is None:  # grpo: no fixed target; the gap to the optimum anyway
                cells.append(f"{fmt((J_star - res.J) / abs(J_star), pct=True)} (no target)")
            else:
                cells.append(f"{fmt(res.gap / abs(J_star), pct=True)} "
                             f"({fmt(res.history['tv_target'][-1])})")
        label = adv if not kw else f"{adv} ({', '.join(f'{k}={v}' for k, v in kw.items())})"
        print(f"| `{label}` | {cells[0]} | {cells[1]} |")


def token_example(iters, seed):
    task = fastppo.token_mdp(vocab=4, max_len=5, n_prompts=8, seed=0)  # gamma = 1
    mdp = task.mdp
    reg = fastppo.ReverseKL(0.5, ref=task.ref)
    print(f"\n{task}, ReverseKL(0.5, ref=task.ref), n_envs=1024, {iters} iterations, "
          f"seed {seed}\n")
    print("| method | target | TV to own target | J (reg.) | J (plain) | seconds |")
    print("|---|---|---|---|---|---|")
    opt = fastppo.solve(mdp, reg)
    loss = dict(kl_estimator="k3", kl_penalty="loss", lr=0.1)  # lr 0.5 diverges (k3's 1/π)
    rows = [("PPO (gae, k1 in the reward)", {}),
            ("GRPO (k3 in the loss, lr 0.1)", dict(advantage="grpo", **loss)),
            ("Dr. GRPO, per sequence (k3 in the loss, lr 0.1)",
             dict(advantage="dr_grpo", advantage_level="sequence", **loss)),
            ("RLOO, per sequence (k1 in the reward)",
             dict(advantage="rloo", advantage_level="sequence"))]
    for name, kw in rows:
        ppo, res, sec, avg = run(mdp, reg, iters, seed, n_envs=1024, **kw)
        t = ppo.target
        own = ("— (to the optimum: " + fmt(fastppo.tv_distance(mdp, res.policy, opt.policy)) + ")"
               if t is None else f"{fmt(res.history['tv_target'][-1])} ({fmt(fastppo.tv_distance(mdp, avg, t))})")
        what = "none (σ-scaling)" if t is None else (
            f"{t.kind} ({t.divergence}, τ = {t.tau:.3g}, weights γ^t)" if t.kind == "fixed point"
            else "regularized optimum")
        print(f"| {name} | {what} | {own} | {res.J:.4f} | {res.J_plain:.4f} | {sec:.0f} |")
    print(f"\nregularized optimum: J = {opt.J:.4f}, J (plain) = "
          f"{fastppo.evaluate(mdp, opt.policy).J:.4f}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iters", type=int, default=200)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--part", choices=("placements", "advantages", "tokens", "all"), default="all")
    args = parser.parse_args()
    if args.part in ("placements", "all"):
        garnet_placements(args.iters, args.seed)
    if args.part in ("advantages", "all"):
        garnet_advantages(args.iters, args.seed)
    if args.part in ("tokens", "all"):
        token_example(args.iters, args.seed)


if __name__ == "__main__":
    main()
