"""Command line: ``fastppo run | solve | info`` (also ``python -m fastppo``).

``fastppo run`` with no arguments is the README's main job: exact PPO-Clip (forward
KL, τ = 0.1, ε = 0.2, K = 10) on a 50,000-state garnet, with a progress bar showing
the gap to the regularized optimum, then a summary. User mistakes print one line on
stderr and exit with status 2.
"""
import argparse
import json
import sys
import time

DEFAULT_MDP = "garnet:S=50000,A=10,b=10,seed=0"
REGS = "forward-kl, reverse-kl, chi2, hellinger, js, alpha:<a>, none"


class UsageError(Exception):
    """A user mistake: reported as one line, exit status 2."""


def parse_mdp(spec, gamma=None):
    """An MDP from a spec like ``garnet:S=1000,A=4,b=5,seed=0`` or ``frozenlake8x8``."""
    import fastppo

    name, _, rest = spec.partition(":")
    kw = {}
    for item in filter(None, rest.split(",")):
        key, eq, value = item.partition("=")
        if not eq:
            raise UsageError(f"bad MDP spec {spec!r}: expected key=value, got {item!r}")
        try:
            kw[key.strip()] = float(value) if "." in value or "e" in value.lower() else int(value)
        except ValueError:
            raise UsageError(f"bad MDP spec {spec!r}: {key}={value!r} is not a number") from None
    if gamma is not None:
        kw["gamma"] = gamma
    aliases = {"S": "n_states", "A": "n_actions", "b": "branching", "H": "height", "W": "width"}
    kw = {aliases.get(k, k): v for k, v in kw.items()}
    builders = {"garnet": fastppo.garnet, "gridworld": fastppo.gridworld,
                "chain": fastppo.chain, "token_tree": fastppo.token_tree}
    gym = {"frozenlake": ("FrozenLake-v1", {"map_name": "4x4"}),
           "frozenlake8x8": ("FrozenLake-v1", {"map_name": "8x8"}),
           "taxi": ("Taxi-v4", {}), "cliffwalking": ("CliffWalking-v1", {})}
    try:
        if name in builders:
            return builders[name](**kw)
        if name in gym:
            try:
                import gymnasium
            except ImportError:
                raise UsageError(f"--mdp {name} needs gymnasium: pip install gymnasium") from None
            env_id, env_kw = gym[name]
            return fastppo.MDP.from_gymnasium(gymnasium.make(env_id, **env_kw), kw.get("gamma", 0.99))
    except TypeError as exc:
        raise UsageError(f"bad MDP spec {spec!r}: {exc}") from None
    raise UsageError(f"unknown MDP {name!r}; choose from {', '.join([*builders, *gym])}")


def parse_reg(name, tau):
    import fastppo

    if name == "none":
        return None
    if name.startswith("alpha:"):
        try:
            return fastppo.AlphaDivergence(tau, float(name.split(":", 1)[1]))
        except ValueError:
            raise UsageError(f"bad --reg {name!r}: expected alpha:<number>") from None
    classes = {"forward-kl": fastppo.ForwardKL, "reverse-kl": fastppo.ReverseKL,
               "chi2": fastppo.ChiSquare, "hellinger": fastppo.Hellinger, "js": fastppo.JensenShannon}
    if name not in classes:
        raise UsageError(f"unknown --reg {name!r}; choose from {REGS}")
    return classes[name](tau)


def _load_mdp(args):
    import fastppo

    if args.mdp_file:
        try:
            return fastppo.MDP.load(args.mdp_file)
        except FileNotFoundError:
            raise UsageError(f"no such file: {args.mdp_file}") from None
    return parse_mdp(args.mdp, args.gamma)


def cmd_run(args, out):
    import fastppo

    mdp = _load_mdp(args)
    reg = parse_reg(args.reg, args.tau)
    clip = args.clip[0] if len(args.clip) == 1 else tuple(args.clip)
    say = (lambda *a: None) if args.quiet or args.json else (lambda *a: print(*a, file=out))
    say(f"{mdp}\nregularizer {reg}, clip {clip}, K={args.inner_steps}, backend "
        f"{fastppo.get_backend() if args.backend is None else args.backend}")
    t0 = time.perf_counter()
    opt = fastppo.solve(mdp, reg, backend=args.backend, n_threads=args.threads)
    say(f"optimum J* = {opt.J:.12g} ({opt.n_iter} policy-iteration steps, "
        f"{time.perf_counter() - t0:.2f} s)")
    ppo = fastppo.PPOClip(mdp, reg, clip=clip, inner_steps=args.inner_steps, lr=args.lr,
                          step=args.step, reference=opt.J, backend=args.backend,
                          n_threads=args.threads)
    t0 = time.perf_counter()
    res = ppo.run(args.iters, tol=args.tol, progress=not (args.no_progress or args.quiet or args.json))
    seconds = time.perf_counter() - t0
    h = res.history
    summary = dict(mdp=str(mdp), reg=str(reg), J=res.J, J_star=opt.J, gap=res.gap,
                   iterations=int(res.n_iter), converged=bool(res.converged), seconds=seconds,
                   products=int(h["n_matvec"].sum()), lr=ppo.lr)
    if args.json:
        print(json.dumps(summary), file=out)
    else:
        say(f"\n{'iterations':>12}: {res.n_iter} ({'reached' if res.converged else 'did not reach'} "
            f"gap {args.tol:g})\n{'J':>12}: {res.J:.12g}\n{'gap J*-J':>12}: {res.gap:.3e}\n"
            f"{'seconds':>12}: {seconds:.2f} ({seconds / max(res.n_iter, 1) * 1e3:.0f} ms/iteration)\n"
            f"{'products':>12}: {summary['products']} "
            f"({summary['products'] / max(res.n_iter, 1):.1f}/iteration)\n{'lr':>12}: {ppo.lr:.4g}")
    return 0


def cmd_solve(args, out):
    import fastppo

    mdp = _load_mdp(args)
    reg = parse_reg(args.reg, args.tau)
    t0 = time.perf_counter()
    opt = fastppo.solve(mdp, reg, backend=args.backend, n_threads=args.threads)
    info = dict(mdp=str(mdp), reg=str(reg), J=opt.J, iterations=opt.n_iter,
                bellman_residual=opt.bellman_residual, products=opt.n_matvec,
                seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(info), file=out)
    else:
        print("\n".join(f"{k:>16}: {v}" for k, v in info.items()), file=out)
    return 0


def cmd_info(args, out):
    import fastppo

    fastppo.show_backends(file=out)
    return 0


def build_parser():
    p = argparse.ArgumentParser(prog="fastppo", description="Exact PPO-Clip on sparse MDPs.")
    sub = p.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--mdp", default=DEFAULT_MDP,
                        help="garnet:S=..,A=..,b=..,seed=..[,locality=..] | gridworld:H=..,W=.. | "
                             "chain:S=.. | token_tree:vocab=..,depth=.. | frozenlake | frozenlake8x8 | taxi")
    common.add_argument("--mdp-file", help="an MDP saved with MDP.save (.npz)")
    common.add_argument("--gamma", type=float, help="discount (overrides the spec)")
    common.add_argument("--reg", default="forward-kl", help=REGS)
    common.add_argument("--tau", type=float, default=0.1)
    common.add_argument("--backend", choices=["numba", "cython", "numpy"])
    common.add_argument("--threads", type=int)
    common.add_argument("--json", action="store_true", help="print one JSON summary")
    common.add_argument("--quiet", action="store_true")
    run = sub.add_parser("run", parents=[common], help="PPO-Clip solve with progress")
    run.add_argument("--clip", type=float, nargs="+", default=[0.2], help="eps or eps_low eps_high")
    run.add_argument("--inner-steps", type=int, default=10)
    run.add_argument("--lr", type=float, help="raw step size eta (default: scale-free --step)")
    run.add_argument("--step", type=float, default=1.0, help="scale-free step (used without --lr)")
    run.add_argument("--iters", type=int, default=1000)
    run.add_argument("--tol", type=float, default=1e-8, help="stop at gap J* - J <= tol")
    run.add_argument("--no-progress", action="store_true")
    run.set_defaults(func=cmd_run)
    solve = sub.add_parser("solve", parents=[common], help="the regularized optimum")
    solve.set_defaults(func=cmd_solve)
    info = sub.add_parser("info", help="backends, threads, OpenMP, versions")
    info.set_defaults(func=cmd_info)
    return p


def main(argv=None, out=None):
    out = sys.stdout if out is None else out
    args = build_parser().parse_args(argv)
    if getattr(args, "clip", None) is not None and len(args.clip) > 2:
        print("fastppo: error: --clip takes one or two values", file=sys.stderr)
        return 2
    try:
        return args.func(args, out)
    except UsageError as exc:
        print(f"fastppo: error: {exc}", file=sys.stderr)
        return 2
    except (ValueError, TypeError) as exc:
        print(f"fastppo: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("fastppo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
