"""Command line: ``fastppo run | solve | eval | compare | sweep | info`` (also ``python -m fastppo``).

``fastppo run`` with no arguments is the README's main job: exact PPO-Clip (forward
KL, τ = 0.1, ε = 0.2, K = 10) on a 50,000-state garnet, with a progress bar (on a
terminal) showing the iteration, J, the gap to the regularized optimum and the Krylov
products, then a summary; the result directory (``--out``, default ``fastppo-run/``) gets
``result.npz``, ``history.csv``, ``config.json``, ``convergence.png`` and a checkpoint.
Ctrl-C stops after the current iteration, saves, and exits with status 130;
``fastppo run --resume DIR [--iters N]`` continues bit for bit (``--iters`` counts all
outer iterations, including those already done).

User mistakes (bad spec, missing file, invalid parameter) print one line on stderr and
exit with status 2; a run that fails numerically (e.g. a step so large the logits
overflow) prints one line and exits with status 1.
"""
import argparse
import inspect
import json
import os
import signal
import sys
import threading
import time
import warnings

DEFAULT_MDP = "garnet:S=50000,A=10,b=10,seed=0"
REGS = "forward-kl, reverse-kl, chi2, hellinger, js, alpha:<a>, none"
# The parameters of one PPO-Clip run (the options of `fastppo run`, the keys of a sweep).
PARAMS = dict(mdp=DEFAULT_MDP, mdp_file=None, gamma=None, seed=None, reg="forward-kl", tau=0.1,
              clip=0.2, inner_steps=10, lr=None, step=1.0, iters=1000, tol=1e-8, backend=None,
              threads=None)
# what --resume cannot change (the rest: iters, tol)
FIXED_ON_RESUME = ("mdp", "mdp_file", "gamma", "seed", "reg", "tau", "clip", "inner_steps", "lr",
                   "step", "backend", "threads")


class UsageError(ValueError):
    """A user mistake: reported as one line, exit status 2."""


# ------------------------------------------------------------------- parsing specs
def parse_mdp(spec, gamma=None, seed=None):
    """An MDP from a spec like ``garnet:S=1000,A=4,b=5,seed=0`` or ``frozenlake8x8``.

    ``gamma`` and ``seed`` (when not None) override the spec's values.
    """
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
    if name not in builders and name not in gym:
        raise UsageError(f"unknown MDP {name!r}; choose from {', '.join([*builders, *gym])}")
    if seed is not None:
        if name not in builders or "seed" not in inspect.signature(builders[name]).parameters:
            raise UsageError(f"--seed: {name} MDPs are not random (they take no seed)")
        kw["seed"] = seed
    try:
        if name in builders:
            return builders[name](**kw)
        try:
            import gymnasium
        except ImportError:
            raise UsageError(f"--mdp {name} needs gymnasium: pip install gymnasium") from None
        env_id, env_kw = gym[name]
        return fastppo.MDP.from_gymnasium(gymnasium.make(env_id, **env_kw), kw.get("gamma", 0.99))
    except TypeError as exc:
        raise UsageError(f"bad MDP spec {spec!r}: {exc}") from None


def parse_reg(name, tau):
    """A regularizer from ``--reg`` and ``--tau`` (None for ``none``)."""
    import fastppo

    if name == "none":
        return None
    if name.startswith("alpha:"):
        try:
            return fastppo.AlphaDivergence(tau, float(name.split(":", 1)[1]))
        except ValueError as exc:
            if "could not convert" in str(exc):
                raise UsageError(f"bad --reg {name!r}: expected alpha:<number>") from None
            raise
    classes = {"forward-kl": fastppo.ForwardKL, "reverse-kl": fastppo.ReverseKL,
               "chi2": fastppo.ChiSquare, "hellinger": fastppo.Hellinger, "js": fastppo.JensenShannon}
    if name not in classes:
        raise UsageError(f"unknown --reg {name!r}; choose from {REGS}")
    return classes[name](tau)


def load_mdp(p, fallback=None):
    """The MDP of parameters ``p``: ``mdp_file``, else the ``mdp`` spec, else ``fallback``
    (a path to an ``.npz``), else the default spec."""
    import fastppo

    path = p.get("mdp_file") or (fallback if p.get("mdp") is None else None)
    if path:
        if not os.path.exists(path):
            raise UsageError(f"no such file: {path}")
        try:
            return fastppo.MDP.load(path)
        except (ValueError, OSError, KeyError) as exc:
            raise UsageError(f"cannot read an MDP from {path}: {exc}") from None
    return parse_mdp(p.get("mdp") or DEFAULT_MDP, p.get("gamma"), p.get("seed"))


def _clip(clip):
    clip = list(clip) if isinstance(clip, (list, tuple)) else [clip]
    if len(clip) not in (1, 2):
        raise UsageError(f"--clip takes one or two values, got {len(clip)}")
    return clip[0] if len(clip) == 1 else tuple(clip)


# ---------------------------------------------------------------- one PPO-Clip run
def execute(p, out, *, progress=False, checkpoint_every=None, should_stop=None, resume=False,
            config=None, say=None):
    """One PPO-Clip run with parameters ``p`` (keys of ``PARAMS``), saved to ``out``.

    Parameters
    ----------
    p : dict
        Run parameters; missing keys take the ``PARAMS`` defaults.
    out : str
        Result directory (see ``fastppo._io``); ``config.json`` is written first.
    progress : bool
        tqdm progress bar.
    checkpoint_every : int, optional
        Also save a checkpoint every this many outer iterations.
    should_stop : callable, optional
        Polled after each iteration; True stops the run (it is then saved).
    resume : bool
        Continue the checkpoint in ``out`` up to ``p["iters"]`` iterations in total.
    config : dict, optional
        Extra entries for ``config.json``.
    say : callable, optional
        Prints progress messages.

    Returns
    -------
    summary : dict
        mdp, reg, J, J_star, gap, iterations, converged, seconds, products, lr, out,
        interrupted.
    """
    import fastppo
    from . import _io

    say = say or (lambda *a: None)
    p = {**PARAMS, **p}
    if checkpoint_every is not None and checkpoint_every < 1:
        raise UsageError(f"--checkpoint-every must be >= 1, got {checkpoint_every}")
    if resume:
        ppo = fastppo.PPOClip.resume(out)
        mdp, reg, J_star = ppo.mdp, ppo.reg, ppo.reference
        say(f"resuming {out} at iteration {ppo.n_iter}: {mdp}, regularizer {reg}")
    else:
        mdp = load_mdp(p)
        reg = parse_reg(p["reg"], p["tau"])
        say(f"{mdp}\nregularizer {reg}, clip {_clip(p['clip'])}, K={p['inner_steps']}, backend "
            f"{fastppo.get_backend() if p['backend'] is None else p['backend']}")
        t0 = time.perf_counter()
        opt = fastppo.solve(mdp, reg, backend=p["backend"], n_threads=p["threads"])
        J_star = opt.J
        say(f"optimum J* = {J_star:.12g} ({opt.n_iter} policy-iteration steps, "
            f"{time.perf_counter() - t0:.2f} s)")
        ppo = fastppo.PPOClip(mdp, reg, clip=_clip(p["clip"]), inner_steps=p["inner_steps"],
                              lr=p["lr"], step=p["step"], reference=J_star, backend=p["backend"],
                              n_threads=p["threads"])
    os.makedirs(out, exist_ok=True)
    config = {"params": p, **(config or {}), "title": f"PPO-Clip, {mdp}\n{reg}"}
    _io.write_json(os.path.join(out, _io.CONFIG), {"fastppo_version": fastppo.__version__, **config})

    done = ppo.n_iter
    if done and ppo.history["gap"][-1] <= p["tol"]:
        done = p["iters"]  # converged before: nothing left to do

    def callback(solver, row):
        if checkpoint_every and solver.n_iter % checkpoint_every == 0:
            solver.save(out)
        return should_stop is not None and should_stop()

    t0 = time.perf_counter()
    res = ppo.run(max(p["iters"] - done, 0), tol=p["tol"], callback=callback, progress=progress)
    seconds = time.perf_counter() - t0
    h = res.history
    res["converged"] = bool(len(h) and h["gap"][-1] <= p["tol"])
    res.save(out, config)
    return dict(mdp=str(mdp), reg=str(reg), J=res.J, J_star=J_star, gap=res.gap,
                iterations=int(res.n_iter), converged=res.converged, seconds=seconds,
                products=int(h["n_matvec"].sum()), lr=ppo.lr, out=out,
                interrupted=bool(should_stop is not None and should_stop()))


# ------------------------------------------------------------------------ commands
def _params(args):
    """The run parameters given on the command line (None: not given)."""
    return {k: getattr(args, k, None) for k in PARAMS}


def _progress(args):
    """A progress bar on stderr: only for a terminal, and not with --no-progress/--quiet/--json."""
    return not (args.no_progress or args.quiet or args.json) and sys.stderr.isatty()


def _printer(args, out):
    return (lambda *a: None) if args.quiet or args.json else (lambda *a: print(*a, file=out))


def cmd_run(args, out):
    from . import _io

    given = {k: v for k, v in _params(args).items() if v is not None}
    if args.resume:
        bad = [k for k in FIXED_ON_RESUME if k in given] + (["out"] if args.out else [])
        if bad:
            raise UsageError(f"--resume continues the saved run in its directory: "
                             f"--{bad[0].replace('_', '-')} cannot be changed (only --iters, --tol)")
        cfg = os.path.join(args.resume, _io.CONFIG)
        if not os.path.exists(os.path.join(args.resume, _io.CHECKPOINT)) or not os.path.exists(cfg):
            raise UsageError(f"--resume {args.resume}: no checkpoint there (a directory written "
                             f"by fastppo run --out)")
        with open(cfg, encoding="utf-8") as f:
            saved = json.load(f).get("params")
        if saved is None:
            raise UsageError(f"--resume {args.resume}: not a fastppo run directory (its "
                             f"config.json has no run parameters)")
        given = {**saved, **given}
    folder = args.out or args.resume or "fastppo-run"
    say = _printer(args, out)
    stop = []

    def on_sigint(signum, frame):
        if stop:  # a second Ctrl-C aborts at once
            raise KeyboardInterrupt
        stop.append(signum)

    main_thread = threading.current_thread() is threading.main_thread()  # signals: main only
    previous = signal.signal(signal.SIGINT, on_sigint) if main_thread else None
    try:
        s = execute(given, folder, progress=_progress(args),
                    checkpoint_every=args.checkpoint_every, should_stop=lambda: bool(stop),
                    resume=bool(args.resume), config={"command": "run", "argv": args.argv}, say=say)
    finally:
        if main_thread:
            signal.signal(signal.SIGINT, previous)
    if args.json:
        print(json.dumps(s), file=out)
    else:
        n = max(s["iterations"], 1)
        say(f"\n{'iterations':>12}: {s['iterations']} ({'reached' if s['converged'] else 'did not reach'} "
            f"gap {given.get('tol', PARAMS['tol']):g})\n{'J':>12}: {s['J']:.12g}\n"
            f"{'gap J*-J':>12}: {s['gap']:.3e}\n"
            f"{'seconds':>12}: {s['seconds']:.2f} ({s['seconds'] / n * 1e3:.0f} ms/iteration)\n"
            f"{'products':>12}: {s['products']} ({s['products'] / n:.1f}/iteration)\n"
            f"{'lr':>12}: {s['lr']:.4g}\n{'saved':>12}: {folder}{os.sep} (result.npz, history.csv, "
            f"config.json, convergence.png, checkpoint)")
    if s["interrupted"]:
        print(f"fastppo: interrupted at iteration {s['iterations']}; saved to {folder} "
              f"(continue with: fastppo run --resume {folder})", file=sys.stderr)
        return 130
    return 0


def cmd_solve(args, out):
    import fastppo

    mdp = load_mdp(_params(args))
    reg = parse_reg(args.reg or PARAMS["reg"], PARAMS["tau"] if args.tau is None else args.tau)
    t0 = time.perf_counter()
    opt = fastppo.solve(mdp, reg, backend=args.backend, n_threads=args.threads)
    info = dict(mdp=str(mdp), reg=str(reg), J=opt.J, iterations=opt.n_iter,
                bellman_residual=opt.bellman_residual, products=opt.n_matvec,
                seconds=time.perf_counter() - t0)
    if args.json:
        print(json.dumps(info), file=out)
    elif not args.quiet:
        print("\n".join(f"{k:>16}: {v}" for k, v in info.items()), file=out)
    return 0


def cmd_eval(args, out):
    """J of a saved policy (a result directory, a result.npz or a .npy table)."""
    import numpy as np

    import fastppo
    from . import _io

    path = args.policy
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    if os.path.isdir(path):
        path = os.path.join(path, _io.RESULT)
    if not os.path.exists(path):
        raise UsageError(f"no such file: {path}")
    p = _params(args)
    saved = os.path.join(folder, _io.CONFIG)
    if os.path.exists(saved):  # a result directory: its MDP and regularizer are the defaults
        with open(saved, encoding="utf-8") as f:
            params = json.load(f).get("params", {})
        p = {**p, **{k: params.get(k) for k in ("reg", "tau") if p[k] is None}}
    fallback = os.path.join(folder, _io.MDP_FILE)
    mdp = load_mdp(p, fallback if os.path.exists(fallback) else None)
    reg = parse_reg(p["reg"] or PARAMS["reg"], PARAMS["tau"] if p["tau"] is None else p["tau"])
    try:
        if path.endswith(".npy"):
            pi = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as f:
                pi = f["policy"]
    except (ValueError, KeyError, OSError) as exc:
        raise UsageError(f"cannot read a policy from {path}: {exc}") from None
    ev = fastppo.evaluate(mdp, pi, reg, backend=args.backend, n_threads=args.threads)
    info = dict(mdp=str(mdp), reg=str(reg), J=ev.J)
    if args.gap:
        info["J_star"] = fastppo.solve(mdp, reg, backend=args.backend, n_threads=args.threads).J
        info["gap"] = info["J_star"] - ev.J
    if args.json:
        print(json.dumps(info), file=out)
    elif not args.quiet:
        print("\n".join(f"{k:>8}: {v}" for k, v in info.items()), file=out)
    return 0


METHODS = {"PPO-Clip": "PPOClip", "softmax PG": "SoftmaxPG", "NPG": "NPG",
           "KL-penalty PPO": "KLPenaltyPPO"}


def cmd_compare(args, out):
    """PPO-Clip, softmax PG, NPG and KL-penalty PPO on one MDP: one plot, one table."""
    import fastppo
    from . import _io

    p = {**PARAMS, **{k: v for k, v in _params(args).items() if v is not None}}
    mdp = load_mdp(p)
    reg = parse_reg(p["reg"], p["tau"])
    say = _printer(args, out)
    opt = fastppo.solve(mdp, reg, backend=p["backend"], n_threads=p["threads"])
    say(f"{mdp}\nregularizer {reg}; optimum J* = {opt.J:.12g}")
    common = dict(reference=opt.J, backend=p["backend"], n_threads=p["threads"])
    step = dict(lr=p["lr"], step=p["step"])  # NPG's step has another scale: its own default
    methods = {"PPO-Clip": fastppo.PPOClip(mdp, reg, clip=_clip(p["clip"]),
                                           inner_steps=p["inner_steps"], **step, **common),
               "softmax PG": fastppo.SoftmaxPG(mdp, reg, **step, **common),
               "NPG": fastppo.NPG(mdp, reg, **common),
               "KL-penalty PPO": fastppo.KLPenaltyPPO(mdp, reg, inner_steps=p["inner_steps"],
                                                      **step, **common)}
    rows, curves = [], []
    for name, method in methods.items():
        t0 = time.perf_counter()
        res = method.run(p["iters"], tol=p["tol"],
                         progress=_progress(args))
        h = res.history
        rows.append(dict(method=name, iterations=int(res.n_iter), J=res.J, gap=res.gap,
                         converged=bool(res.converged), seconds=time.perf_counter() - t0,
                         products=int(h["n_matvec"].sum()), lr=method.lr))
        curves.append((name, h))
    folder = args.out or "fastppo-compare"
    os.makedirs(folder, exist_ok=True)
    fields = list(rows[0])
    _io.write_csv(os.path.join(folder, "compare.csv"), rows, fields)
    for (name, h) in curves:
        _io.write_csv(os.path.join(folder, f"history-{METHODS[name]}.csv"), h, h.dtype.names)
    _io.plot_curves(os.path.join(folder, "compare.png"), curves, f"{mdp}\n{reg}")
    _io.write_json(os.path.join(folder, _io.CONFIG), {
        "fastppo_version": fastppo.__version__, "command": "compare", "argv": args.argv,
        "params": p, "J_star": opt.J})
    if args.json:
        print(json.dumps(rows), file=out)
    else:
        say(f"\n{'method':<16}{'iterations':>11}{'J':>20}{'gap':>11}{'seconds':>9}{'products':>10}")
        for r in rows:
            say(f"{r['method']:<16}{r['iterations']:>11}{r['J']:>20.12g}{r['gap']:>11.2e}"
                f"{r['seconds']:>9.2f}{r['products']:>10}")
        say(f"saved: {os.path.join(folder, 'compare.png')}, compare.csv, history-*.csv")
    return 0


def cmd_sweep(args, out):
    from .sweeps import sweep

    if not os.path.exists(args.config):
        raise UsageError(f"no such file: {args.config}")
    res = sweep(args.config, out=args.out, scheduler=args.scheduler, n_workers=args.workers,
                progress=_progress(args))
    if args.json:
        print(json.dumps(res.rows), file=out)
    elif not args.quiet:
        print(f"{len(res.rows)} runs: {res.n_skipped} done before (skipped), {res.n_run} run now, "
              f"{res.n_failed} failed\ntable: {res.csv}\nplots: {', '.join(res.plots)}", file=out)
        for r in res.rows:
            if r["status"] == "failed":
                print(f"failed: {r['run']} ({r['mdp']}): {r['error']}", file=out)
    return 1 if res.n_failed else 0


def cmd_info(args, out):
    import platform

    import fastppo

    fastppo.show_backends(file=out)
    versions = [f"python {platform.python_version()}"]
    for name in ("matplotlib", "tqdm", "dask", "distributed"):
        try:
            versions.append(f"{name} {__import__(name).__version__}")
        except ImportError:
            versions.append(f"{name} not installed")
    print("  " + ", ".join(versions), file=out)
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, not argparse's usage block
        raise UsageError(f"{message} (see: {self.prog} --help)")


def build_parser():
    p = _Parser(prog="fastppo", description="Exact PPO-Clip on sparse MDPs.")
    sub = p.add_subparsers(dest="command", required=True)
    out = argparse.ArgumentParser(add_help=False)
    out.add_argument("--json", action="store_true", help="print one JSON summary")
    out.add_argument("--quiet", action="store_true", help="print nothing but errors")
    problem = argparse.ArgumentParser(add_help=False)
    problem.add_argument("--mdp", help=f"MDP spec (default {DEFAULT_MDP}): garnet:S=..,A=..,b=..,"
                         "seed=..[,locality=..] | gridworld:H=..,W=.. | chain:S=.. | "
                         "token_tree:vocab=..,depth=.. | frozenlake | frozenlake8x8 | taxi | cliffwalking")
    problem.add_argument("--mdp-file", help="an MDP saved with MDP.save (.npz)")
    problem.add_argument("--gamma", type=float, help="discount (overrides the spec)")
    problem.add_argument("--seed", type=int, help="seed of a random MDP (overrides the spec)")
    problem.add_argument("--reg", help=f"{REGS} (default forward-kl)")
    problem.add_argument("--tau", type=float, help="regularization weight (default 0.1)")
    problem.add_argument("--backend", choices=["numba", "cython", "numpy"])
    problem.add_argument("--threads", type=int)
    method = argparse.ArgumentParser(add_help=False)
    method.add_argument("--clip", type=float, nargs="+", help="eps, or eps_low eps_high (default 0.2)")
    method.add_argument("--inner-steps", type=int, help="K (default 10)")
    method.add_argument("--lr", type=float, help="raw step size eta (default: scale-free --step)")
    method.add_argument("--step", type=float, help="scale-free step, used without --lr (default 1)")
    method.add_argument("--iters", type=int, help="total outer iterations (default 1000)")
    method.add_argument("--tol", type=float, help="stop at gap J* - J <= tol (default 1e-8)")
    method.add_argument("--no-progress", action="store_true")
    method.add_argument("--out", metavar="DIR", help="result directory (default fastppo-run, "
                        "for compare fastppo-compare)")

    run = sub.add_parser("run", parents=[problem, method, out], help="PPO-Clip solve with progress")
    run.add_argument("--checkpoint-every", type=int, metavar="N",
                     help="save a checkpoint every N iterations (always: at the end and on Ctrl-C)")
    run.add_argument("--resume", metavar="DIR", help="continue the run saved in DIR")
    run.set_defaults(func=cmd_run)
    solve = sub.add_parser("solve", parents=[problem, out], help="the regularized optimum")
    solve.set_defaults(func=cmd_solve)
    ev = sub.add_parser("eval", parents=[problem, out], help="J of a saved policy")
    ev.add_argument("policy", help="a result directory, its result.npz, or a policy table (.npy)")
    ev.add_argument("--gap", action="store_true", help="also solve for J* and print J* - J")
    ev.set_defaults(func=cmd_eval)
    cmp_ = sub.add_parser("compare", parents=[problem, method, out],
                          help="PPO-Clip vs softmax PG vs NPG vs KL-penalty PPO (one plot)")
    cmp_.set_defaults(func=cmd_compare)
    sw = sub.add_parser("sweep", parents=[out], help="a parameter grid on Dask (TOML config)")
    sw.add_argument("config", help="sweep configuration (.toml)")
    sw.add_argument("--out", metavar="DIR", help="sweep directory (default: the config's out)")
    sw.add_argument("--scheduler", metavar="ADDRESS", help="an existing Dask scheduler "
                    "(tcp://host:port); default: a LocalCluster on this machine")
    sw.add_argument("--workers", type=int, help="LocalCluster workers (default: the config's, or 2)")
    sw.add_argument("--no-progress", action="store_true")
    sw.set_defaults(func=cmd_sweep)
    info = sub.add_parser("info", help="backends, threads, OpenMP, versions")
    info.set_defaults(func=cmd_info)
    return p


def _warning_line(message, category, filename, lineno, file=None, line=None):
    print(f"fastppo: warning: {message}", file=sys.stderr if file is None else file)


def main(argv=None, out=None):
    """Run the command line; returns the exit status."""
    out = sys.stdout if out is None else out
    argv = sys.argv[1:] if argv is None else list(argv)
    showwarning, warnings.showwarning = warnings.showwarning, _warning_line
    try:
        args = build_parser().parse_args(argv)
        args.argv = argv
        if getattr(args, "clip", None) is not None:
            _clip(args.clip)
        return args.func(args, out)
    except (ValueError, TypeError, OSError) as exc:  # UsageError is a ValueError
        print(f"fastppo: error: {exc}", file=sys.stderr)
        return 2
    except (ArithmeticError, RuntimeError) as exc:  # FloatingPointError, ConvergenceError
        print(f"fastppo: error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fastppo: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.showwarning = showwarning


if __name__ == "__main__":
    sys.exit(main())
